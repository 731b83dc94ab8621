"""Faithfulness evaluation of heatmaps: pixel flipping, region perturbation and concept faithfulness.

A heatmap is faithful if removing the pixels it ranks most relevant destroys the prediction fastest.
:class:`PixelFlipping` (and :class:`RegionPerturbation` for ``k x k`` patches) removes pixels of each input in
the order of any attribution (LRP, CRP conditional heatmaps, any tensor), fills them by inpainting, noise or a
baseline, and returns per-sample score curves with their area under the curve (:class:`FlippingResult`).
:class:`ConceptFaithfulness` does the same for a concept: it perturbs in the order of the concept's conditional
heatmap and tracks the concept's relevance or activation at its layer. Plots live in
:mod:`crp.evaluation.plot` (matplotlib is imported only there, when a plot is drawn).
"""

from crp._evaluation.base import PerturbationMetric
from crp._evaluation.concept import ConceptFaithfulness, concept_faithfulness, top_concepts
from crp._evaluation.flipping import PixelFlipping, RegionPerturbation, compare_orders
from crp._evaluation.inpainting import harmonic_inpaint, telea_inpaint
from crp._evaluation.ordering import ORDERS
from crp._evaluation.perturbation import (
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
from crp._evaluation.result import FlippingResult, area_under_curve
from crp._evaluation.schedule import quadratic_per_step, region_counts
from crp._evaluation.scores import SCORES

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
