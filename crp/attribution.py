"""Conditional attributions: LRP heatmaps restricted to the relevance that flows through chosen concepts.

:class:`CondAttribution` implements Concept Relevance Propagation (Achtibat et al., "From attribution maps
to human-understandable explanations through Concept Relevance Propagation", Nature Machine Intelligence 5,
2023, Eq. 6-8); :class:`AttributionGraph` decomposes a concept into the lower-level concepts it is built from.
The implementation lives in :mod:`crp._attribution` (engine) and :mod:`crp._graph` (attribution graph).
"""
from crp._attribution.engine import CondAttribution, attrResult
from crp._graph.attribution_graph import AttributionGraph, attrGraphResult
from crp._utils.star import lazy_getattr, star_names

__all__ = ["CondAttribution", "attrResult", "AttributionGraph", "attrGraphResult"]
# with zennit-crp 0.6, `from crp.attribution import *` also gave the names its module imported
__all__ += star_names(__name__)
__getattr__ = lazy_getattr(__name__)
