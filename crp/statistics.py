"""Per-target statistics: the top reference samples of every concept per explained class.

These are ``RelStats`` and ``ActStats``.

zennit-crp 0.6's ``Statistics`` with its signature, attributes and seams; the implementation lives in
:mod:`crp._features`.
"""
from crp._features.results_objects import Statistics
from crp._utils.star import lazy_getattr, star_names

__all__ = ["Statistics"]
# with zennit-crp 0.6, `from crp.statistics import *` also gave the names its module imported
__all__ += star_names(__name__)
__getattr__ = lazy_getattr(__name__)
