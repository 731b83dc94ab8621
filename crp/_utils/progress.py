"""The progress bar class of every crp bar: a widget in Jupyter with ipywidgets, text elsewhere.

It is ``tqdm.auto.tqdm``, imported without the warning tqdm prints in a notebook kernel that lacks ipywidgets
("IProgress not found"): there the bars are text on stderr, which is what a library should fall back to quietly.
``TQDM_DISABLE=1`` in the environment switches every crp bar off, also those a call asks for with
``verbose=True`` (tqdm itself honours the variable only where ``disable`` is not passed).
"""
import os
import warnings

from tqdm import TqdmWarning

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="IProgress not found", category=TqdmWarning)
    from tqdm.auto import tqdm as _auto_tqdm

__all__ = ["tqdm"]


class tqdm(_auto_tqdm):  # noqa: N801 (tqdm's name, which zennit-crp's crp.visualization exported)
    """``tqdm.auto.tqdm`` that stays off while the environment sets ``TQDM_DISABLE`` to 1 (or true, yes, on)."""

    def __init__(self, *args, **kwargs) -> None:
        if os.environ.get("TQDM_DISABLE", "").strip().lower() in {"1", "true", "yes", "on"}:
            kwargs["disable"] = True
        super().__init__(*args, **kwargs)
