"""Relevance and Activation Maximization state: the top reference samples of every concept.

The implementation lives in :mod:`crp._features.ranking` and :mod:`crp._features.topk`.
"""
from crp._features.ranking import Maximization

__all__ = ["Maximization"]
