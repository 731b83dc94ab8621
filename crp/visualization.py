"""Feature visualization: Relevance and Activation Maximization over a dataset, and reference images.

The engine lives in :mod:`crp._features` (run loop, top-k state, result store, image cache).
"""
from crp._features.engine import FeatureVisualization
from crp._features.store import CorruptStoreError
from crp._utils.star import lazy_getattr, star_names

__all__ = ["FeatureVisualization", "CorruptStoreError"]
# with zennit-crp 0.6, `from crp.visualization import *` also gave the names its module imported
__all__ += star_names(__name__)
__getattr__ = lazy_getattr(__name__)
