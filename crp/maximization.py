"""Relevance and Activation Maximization: the top reference samples of every concept (``RelMax``, ``ActMax``).

zennit-crp 0.6's ``Maximization`` with its signature, attributes and seams; the implementation lives in
:mod:`crp._features` (one top-k accumulator, :mod:`crp._features.topk`).
"""
from crp._features.results_objects import Maximization

__all__ = ["Maximization"]
