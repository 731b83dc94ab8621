"""Hooks that condition the backward relevance flow at a module's output, on zennit's hook protocol.

The implementation lives in :mod:`crp._attribution.hooks`.
"""
from crp._attribution.hooks import MaskHook

__all__ = ["MaskHook"]
