"""The model graph (which layer feeds which), the attribution graph of concepts, and its plot.

The implementation lives in :mod:`crp._graph`.
"""
from crp._graph.attribution_graph import AttributionGraph, attrGraphResult
from crp._graph.plot import collect_reference_images, layout_attribution_graph, plot_attribution_graph
from crp._graph.tracing import TRACE_METHODS, GraphNode, ModelGraph, dump_pytorch_graph, trace_model_graph
from crp._utils.star import lazy_getattr, star_names

__all__ = [
    "trace_model_graph", "ModelGraph", "GraphNode", "dump_pytorch_graph", "TRACE_METHODS", "AttributionGraph",
    "attrGraphResult",
    "plot_attribution_graph", "layout_attribution_graph", "collect_reference_images",
]
# with zennit-crp 0.6, `from crp.graph import *` also gave the names its module imported
__all__ += star_names(__name__)
__getattr__ = lazy_getattr(__name__)
