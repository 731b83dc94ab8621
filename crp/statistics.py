"""Per-target statistics: the top reference samples of every concept per explained class (``RelStats``,
``ActStats``).

zennit-crp 0.6's ``Statistics`` with its signature, attributes and seams; the implementation lives in
:mod:`crp._features`.
"""
from crp._features.results_objects import Statistics

__all__ = ["Statistics"]
