"""The result of a faithfulness evaluation and the area under its curves."""

from dataclasses import dataclass, field
from typing import Optional, Tuple

import numpy as np

__all__ = ["FlippingResult", "area_under_curve"]


def area_under_curve(scores: np.ndarray, fractions: np.ndarray) -> np.ndarray:
    """Area under each score curve over the fraction perturbed (trapezoidal rule).

    Parameters
    ----------
    scores : numpy.ndarray
        Curves of shape ``(..., S + 1)``.
    fractions : numpy.ndarray
        The x axis, shape ``(S + 1,)``: the fraction of the input perturbed after each step, from 0.

    Returns
    -------
    numpy.ndarray
        The areas, shape ``scores.shape[:-1]``; a curve that covers the whole input has the mean score as area.

    Raises
    ------
    ValueError
        If the last axis of ``scores`` does not match ``fractions`` or there are fewer than two points.
    """
    scores, fractions = np.asarray(scores, dtype=np.float64), np.asarray(fractions, dtype=np.float64)
    if fractions.ndim != 1 or scores.shape[-1:] != fractions.shape or fractions.size < 2:
        raise ValueError(
            f"`scores` of shape {scores.shape} and `fractions` of shape {fractions.shape} do not match: "
            "the last axis of `scores` must equal the length of `fractions`, at least 2."
        )
    return np.trapezoid(scores, x=fractions, axis=-1)


@dataclass(frozen=True)
class FlippingResult:
    """Score curves of a perturbation experiment, one row per evaluated heatmap.

    Attributes
    ----------
    scores : numpy.ndarray
        Shape ``(M, S + 1)``: the tracked score before any perturbation and after each of the ``S`` steps.
    fractions : numpy.ndarray
        Shape ``(S + 1,)``: the fraction of the pixels perturbed after each step (0 first).
    auc : numpy.ndarray
        Shape ``(M,)``: :func:`area_under_curve` of each row over ``fractions``.
    pixels_per_step : numpy.ndarray
        Shape ``(S,)``: the number of pixels perturbed in each step.
    targets : numpy.ndarray
        Shape ``(M,)``: the class whose score (or, for concepts, whose relevance) is tracked.
    samples : numpy.ndarray
        Shape ``(M,)``: the index of each row's input sample.
    order : str
        The perturbation order ("morf", "lrf", "random" or a callable's name).
    perturbation : str
        The perturbation's name.
    region_size : tuple of int
        ``(height, width)`` of one perturbed region.
    score : str
        What is tracked ("logit", "probability", ..., or for concepts "relevance" or "activation").
    concepts : numpy.ndarray, optional
        Shape ``(M,)``: for concept faithfulness, the concept tracked in each row.
    layer : str, optional
        For concept faithfulness, the concept's layer.
    """

    scores: np.ndarray
    fractions: np.ndarray
    auc: np.ndarray
    pixels_per_step: np.ndarray
    targets: np.ndarray
    samples: np.ndarray
    order: str
    perturbation: str
    region_size: Tuple[int, int]
    score: str
    concepts: Optional[np.ndarray] = field(default=None)
    layer: Optional[str] = field(default=None)

    @property
    def steps(self) -> int:
        """The number of perturbation steps ``S``."""
        return len(self.fractions) - 1

    def relative_scores(self) -> np.ndarray:
        """Return the curves divided by their unperturbed score, shape ``(M, S + 1)`` (NaN where that score is 0)."""
        first = self.scores[:, :1]
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(first != 0, self.scores / np.where(first != 0, first, 1.0), np.nan)
