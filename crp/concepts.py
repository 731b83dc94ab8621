"""Concepts: how a layer's output is split into concepts, masked per concept and ranked for references.

The implementation lives in :mod:`crp._attribution.concepts`.
"""
from crp._attribution.concepts import ChannelConcept, ChannelMask, Concept, NeuronMask, RowMask
from crp._utils.star import lazy_getattr, star_names

__all__ = ["Concept", "ChannelConcept", "RowMask", "ChannelMask", "NeuronMask"]
# with zennit-crp 0.6, `from crp.concepts import *` also gave the names its module imported
__all__ += star_names(__name__)
__getattr__ = lazy_getattr(__name__)
