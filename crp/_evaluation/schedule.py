"""How many regions are perturbed after each step of a perturbation curve.

A schedule is the cumulative count of perturbed regions after each step, starting with 0 for the
unperturbed input: ``counts[0] = 0 < counts[1] < ... < counts[S] <= n_regions``.
"""

from numbers import Integral
from typing import Optional, Sequence, Union

import numpy as np
import torch

from crp._utils.checks import check_positive_int, check_type, check_value

__all__ = ["PerStep", "check_schedule", "region_counts", "quadratic_per_step"]

#: A constant number of regions per step, or one number per step.
PerStep = Union[int, Sequence[int], np.ndarray]

DEFAULT_STEPS = 100


def region_counts(n_regions: int, steps: Optional[int] = None, per_step: Optional[PerStep] = None) -> np.ndarray:
    """Cumulative number of perturbed regions after each step.

    Parameters
    ----------
    n_regions : int
        The number of regions in one input.
    steps : int, optional
        The number of steps, spread as evenly as the regions allow. With neither ``steps`` nor ``per_step``,
        ``min(100, n_regions)`` steps.
    per_step : int or sequence of int, optional
        Regions perturbed in each step: a constant (the last step takes the remainder) or one count per step
        (which may stop before all regions are perturbed). Exclusive with ``steps``.

    Returns
    -------
    numpy.ndarray
        Strictly increasing int64 counts of shape ``(S + 1,)`` starting at 0.

    Raises
    ------
    ValueError
        If both ``steps`` and ``per_step`` are given, if a count is not a positive integer, if ``steps`` exceeds
        ``n_regions`` or if the schedule perturbs more than ``n_regions`` regions.
    """
    check_schedule(steps, per_step)
    if per_step is None:
        return _even_counts(n_regions, DEFAULT_STEPS if steps is None else steps, steps is None)
    if isinstance(per_step, Integral) and not isinstance(per_step, bool):
        size = check_positive_int(per_step, name="`per_step`")
        return np.minimum(np.arange(0, -(-n_regions // size) + 1) * size, n_regions).astype(np.int64)
    return _explicit_counts(n_regions, per_step)


def check_schedule(steps: object, per_step: object) -> None:
    """Check the form of ``steps`` and ``per_step`` before the number of regions is known.

    Parameters
    ----------
    steps : object
        ``None`` or the number of steps.
    per_step : object
        ``None``, a constant or a sequence of regions per step.

    Raises
    ------
    ValueError
        If both are given or either is malformed (see :func:`region_counts`).
    """
    if steps is not None and per_step is not None:
        raise ValueError(f"give either `steps` ({steps!r}) or `per_step` ({per_step!r}), not both.")
    if steps is not None:
        check_positive_int(steps, name="`steps`")
    elif isinstance(per_step, Integral) and not isinstance(per_step, bool):
        check_positive_int(per_step, name="`per_step`")
    elif per_step is not None:
        _explicit_counts(np.iinfo(np.int64).max, per_step)


def _even_counts(n_regions: int, steps: object, clip: bool) -> np.ndarray:
    """Return the counts for ``steps`` evenly spread steps (clipped to ``n_regions`` if ``clip``)."""
    steps = check_positive_int(steps, name="`steps`")
    if clip:
        steps = min(steps, n_regions)
    if steps > n_regions:
        raise ValueError(f"`steps` {steps} exceeds the {n_regions} regions of one input; use at most {n_regions}.")
    return np.arange(steps + 1, dtype=np.int64) * n_regions // steps


def _explicit_counts(n_regions: int, per_step: object) -> np.ndarray:
    """Return the counts for an explicit list of regions per step."""
    expected = "an int >= 1 or a non-empty 1-D sequence of them"
    check_type(per_step, (list, tuple, range, np.ndarray, torch.Tensor), name="`per_step`", expected=expected)
    sizes = np.asarray(per_step)
    ok = sizes.ndim == 1 and sizes.size > 0 and sizes.dtype.kind in "iu" and bool((sizes >= 1).all())
    check_value(ok, per_step, name="`per_step`", expected=expected)
    if sizes.sum() > n_regions:
        raise ValueError(
            f"`per_step` perturbs {int(sizes.sum())} regions in all, more than the {n_regions} regions of one input."
        )
    return np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)


def quadratic_per_step(n_regions: int) -> np.ndarray:
    """Regions per step that grow linearly, so that the perturbed count grows quadratically.

    Step ``j`` perturbs ``2 j - 1`` regions (1, 3, 5, ...), the last step the remainder; the schedule starts
    with fine steps where the curve usually falls fastest.

    Parameters
    ----------
    n_regions : int
        The number of regions in one input.

    Returns
    -------
    numpy.ndarray
        Regions per step, summing to ``n_regions``.
    """
    n_regions = check_positive_int(n_regions, name="`n_regions`")
    counts = np.minimum(np.arange(int(np.ceil(np.sqrt(n_regions))) + 1) ** 2, n_regions)
    return np.diff(counts).astype(np.int64)
