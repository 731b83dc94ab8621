"""Progress of a command's steps: one bar over the named steps of ``demo`` and ``analyze``.

It runs beside the bars of the long steps themselves (the reference-sample search, the samples, pixel flipping).
"""
import contextlib
import logging
from typing import Iterator, Sequence

from crp._utils.progress import tqdm

__all__ = ["Steps"]

logger = logging.getLogger(__name__)


class Steps:
    """A progress bar over the steps of a command; the running step's name is shown beside it and logged.

    Parameters
    ----------
    names : sequence of str
        The steps, in the order they run (each :meth:`step` must name one of them).
    desc : str
        The bar's label.
    enabled : bool
        Show the bar (the log lines are written either way, at INFO level).
    """

    def __init__(self, names: Sequence[str], *, desc: str, enabled: bool) -> None:
        self.names = list(names)
        self.bar = tqdm(total=len(self.names), desc=desc, unit="step", disable=not enabled, dynamic_ncols=True,
                        leave=False)

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[None]:
        """Run one step: show its name while it runs, count it when it ends."""
        if name not in self.names:
            raise ValueError(f"step {name!r} is not one of {self.names}.")
        self.bar.set_postfix_str(name)
        logger.info("%s", name)
        yield
        self.bar.update()

    def close(self) -> None:
        """Remove the bar."""
        self.bar.close()

    def __enter__(self) -> "Steps":
        """Return the steps; the bar is removed when the block ends."""
        return self

    def __exit__(self, *exc: object) -> None:
        """Remove the bar, however the block ended."""
        self.close()
