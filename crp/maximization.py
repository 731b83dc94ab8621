"""Relevance and Activation Maximization: the top reference samples of every concept (``RelMax``, ``ActMax``).

zennit-crp 0.6's ``Maximization`` with its signature, attributes and seams; the implementation lives in
:mod:`crp._features` (one top-k accumulator, :mod:`crp._features.topk`).
"""
from crp._features.results_objects import Maximization
from crp._utils.star import lazy_getattr, star_names

__all__ = ["Maximization"]
# with zennit-crp 0.6, `from crp.maximization import *` also gave the names its module imported
__all__ += star_names(__name__)
__getattr__ = lazy_getattr(__name__)
