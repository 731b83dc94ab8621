"""Transformers: AttnLRP rules on zennit, and CRP on vision transformers and language models.

AttnLRP (Achtibat et al., "AttnLRP: Attention-Aware Layer-Wise Relevance Propagation for Transformers", ICML
2024) gives the operations of a transformer that zennit has no rule for (softmax attention, the products
inside attention and gated MLPs, LayerNorm and RMSNorm, elementwise nonlinearities, sums) relevance rules in
zennit's convention. :class:`AttnLRP` (or :class:`CPLRP`) is the composite; :class:`TransformerRules` adds the
rules to any zennit composite. :class:`LanguageModel` and :class:`VisionModel` adapt supported models to CRP,
:class:`TokenAttribution` explains language models token by token, and :class:`TokenConcept` and
:class:`HeadConcept` are the concepts of layers with a token axis (:class:`PatchConcept` those of a ViT, ranked
at its patch tokens). :class:`TextFeatureVisualization` finds the
reference tokens of such concepts over a dataset of token sequences (:class:`TokenDataset`), as
:class:`TokenWindow` objects that :func:`text_html` and :func:`plot_text_grid` draw;
:class:`VisionFeatureVisualization` crops a ViT's reference images to patches. Hugging Face ``transformers`` is
an optional dependency (``pip install concept-relevance-propagation[transformers]``); it is not imported here.

The implementation lives in :mod:`crp._transformers`.
"""
from crp._transformers.adapters import LAYER_KINDS, LanguageModel, Tap, VisionModel
from crp._transformers.attribution import CPLRP, AttnLRP, TokenAttribution
from crp._transformers.concepts import AxisMask, HeadConcept, PatchConcept, TokenConcept, TokenMask
from crp._transformers.features import (
    TextFeatureVisualization,
    TokenDataset,
    TokenWindow,
    VisionFeatureVisualization,
    patch_box,
    split_tokens,
)
from crp._transformers.hooks import FastEpsilon
from crp._transformers.render import plot_text_grid, text_html, token_colour
from crp._transformers.rules import (
    VARIANTS,
    GradientOps,
    LRPOps,
    add,
    affine,
    identity,
    layer_norm,
    matmul,
    multiply,
    softmax,
)
from crp._transformers.support import ROLES, SUPPORTED_MODELS, TransformerRules, check_supported

__all__ = [
    "AttnLRP", "CPLRP", "TransformerRules", "FastEpsilon", "LanguageModel", "VisionModel", "Tap", "LAYER_KINDS",
    "TokenAttribution", "TokenConcept", "HeadConcept", "PatchConcept", "AxisMask", "TokenMask",
    "softmax", "matmul", "multiply", "add", "affine", "identity", "layer_norm", "GradientOps", "LRPOps", "VARIANTS",
    "ROLES", "SUPPORTED_MODELS", "check_supported",
    "TextFeatureVisualization", "VisionFeatureVisualization", "TokenDataset", "TokenWindow", "split_tokens",
    "patch_box", "text_html", "plot_text_grid", "token_colour",
]
