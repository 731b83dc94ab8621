"""Caches of reference images, keyed on everything that determines them.

The implementation lives in :mod:`crp._features.cache`.
"""
from crp._features.cache import Cache, CacheKey, CorruptCacheError, ImageCache
from crp._utils.star import lazy_getattr, star_names

__all__ = ["Cache", "ImageCache", "CacheKey", "CorruptCacheError"]
# with zennit-crp 0.6, `from crp.cache import *` also gave the names its module imported
__all__ += star_names(__name__)
__getattr__ = lazy_getattr(__name__)
