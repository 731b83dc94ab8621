"""Concepts: how a layer's output is split into concepts, masked per concept and ranked for references.

The implementation lives in :mod:`crp._attribution.concepts`.
"""
from crp._attribution.concepts import ChannelConcept, ChannelMask, Concept, NeuronMask, RowMask

__all__ = ["Concept", "ChannelConcept", "RowMask", "ChannelMask", "NeuronMask"]
