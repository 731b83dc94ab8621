"""Feature visualization: Relevance and Activation Maximization over a dataset, and reference images.

The engine lives in :mod:`crp._features` (run loop, top-k state, result store, image cache).
"""
from crp._features.engine import FeatureVisualization
from crp._features.store import CorruptStoreError

__all__ = ["FeatureVisualization", "CorruptStoreError"]
