"""Faithfulness evaluation of heatmaps: pixel flipping, region perturbation and concept faithfulness.

A heatmap is faithful if removing the pixels it ranks most relevant destroys the prediction fastest.
:class:`PixelFlipping` (and :class:`RegionPerturbation` for ``k x k`` patches) removes pixels of each input in
the order of any attribution (LRP, CRP conditional heatmaps, any tensor), fills them by inpainting, noise or a
baseline, and returns per-sample score curves with their area under the curve (:class:`FlippingResult`).
:class:`ConceptFaithfulness` does the same for a concept: it perturbs in the order of the concept's conditional
heatmap and tracks the concept's relevance or activation at its layer. Plots live in
:mod:`crp.evaluation.plot` (matplotlib is imported only there, when a plot is drawn).
"""

from .base import PerturbationMetric
from .concept import ConceptFaithfulness, concept_faithfulness, top_concepts
from .flipping import PixelFlipping, RegionPerturbation, compare_orders
from .inpainting import harmonic_inpaint, telea_inpaint
from .ordering import ORDERS
from .perturbation import (
    PERTURBATIONS,
    Constant,
    FillPerturbation,
    Inpainting,
    Mean,
    Perturbation,
    RandomUniform,
    TeleaInpainting,
    get_perturbation,
    register_perturbation,
)
from .result import FlippingResult, area_under_curve
from .schedule import quadratic_per_step, region_counts
from .scores import SCORES

__all__ = [
    "PerturbationMetric",
    "PixelFlipping",
    "RegionPerturbation",
    "compare_orders",
    "ConceptFaithfulness",
    "concept_faithfulness",
    "top_concepts",
    "FlippingResult",
    "area_under_curve",
    "Perturbation",
    "FillPerturbation",
    "Inpainting",
    "TeleaInpainting",
    "RandomUniform",
    "Constant",
    "Mean",
    "PERTURBATIONS",
    "register_perturbation",
    "get_perturbation",
    "ORDERS",
    "SCORES",
    "harmonic_inpaint",
    "telea_inpaint",
    "quadratic_per_step",
    "region_counts",
]
