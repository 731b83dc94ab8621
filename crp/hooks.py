"""Hooks on zennit's protocol.

``MaskHook`` conditions the relevance at a module's output; ``FeatVisHook`` hands a layer's activation and
relevance to FeatureVisualization (zennit-crp's seam).

The implementations live in :mod:`crp._attribution.hooks` and :mod:`crp._features.hooks`.
"""
from crp._attribution.hooks import MaskHook
from crp._features.hooks import FeatVisHook
from crp._utils.star import lazy_getattr, star_names

__all__ = ["MaskHook", "FeatVisHook"]
# with zennit-crp 0.6, `from crp.hooks import *` also gave the names its module imported
__all__ += star_names(__name__)
__getattr__ = lazy_getattr(__name__)
