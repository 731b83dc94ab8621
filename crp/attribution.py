"""Conditional attributions: LRP heatmaps restricted to the relevance that flows through chosen concepts.

:class:`CondAttribution` implements Concept Relevance Propagation (Achtibat et al., "From attribution maps
to human-understandable explanations through Concept Relevance Propagation", Nature Machine Intelligence 5,
2023, Eq. 6-8); :class:`AttributionGraph` decomposes a concept into the lower-level concepts it is built from.
The implementation lives in :mod:`crp._attribution` (engine) and :mod:`crp._graph` (attribution graph).
"""
from crp._attribution.engine import CondAttribution, attrResult
from crp._graph.attribution_graph import AttributionGraph, attrGraphResult

__all__ = ["CondAttribution", "attrResult", "AttributionGraph", "attrGraphResult"]
