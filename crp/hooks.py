"""Hooks on zennit's protocol: ``MaskHook`` conditions the relevance at a module's output; ``FeatVisHook`` hands
a layer's activation and relevance to FeatureVisualization (zennit-crp's seam).

The implementations live in :mod:`crp._attribution.hooks` and :mod:`crp._features.hooks`.
"""
from crp._attribution.hooks import MaskHook
from crp._features.hooks import FeatVisHook

__all__ = ["MaskHook", "FeatVisHook"]
