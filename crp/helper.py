"""Small utilities: layer lookup, output shapes, normalizations, and loading FeatureVisualization results.

The loaders read this library's result store and folders written by zennit-crp 0.6 alike.
"""
from crp._features.results import (
    find_files,
    load_maximization,
    load_receptive_field,
    load_stat_targets,
    load_statistics,
)
from crp._utils.modules import get_layer_names, get_output_shapes
from crp._utils.star import lazy_getattr, star_names
from crp._utils.tensors import abs_norm, max_norm

__all__ = [
    "get_layer_names", "get_output_shapes", "abs_norm", "max_norm", "load_maximization", "load_statistics",
    "load_stat_targets", "load_receptive_field", "find_files",
]
# with zennit-crp 0.6, `from crp.helper import *` also gave the names its module imported
__all__ += star_names(__name__)
__getattr__ = lazy_getattr(__name__)
