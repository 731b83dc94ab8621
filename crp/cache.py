"""Caches of reference images, keyed on everything that determines them.

The implementation lives in :mod:`crp._features.cache`.
"""
from crp._features.cache import Cache, CacheKey, ImageCache

__all__ = ["Cache", "ImageCache", "CacheKey"]
