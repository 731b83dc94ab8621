"""Reference images of FeatureVisualization: argument checks, rank ranges, and the image cache around them."""
import numbers
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

from crp._features.cache import Cache, CacheKey
from crp._features.store import ResultReader, ResultStore

__all__ = ["Range", "check_plot_fn", "check_range", "rank_rows", "results_fingerprint", "cached_references"]

#: Ranks ``start .. stop - 1`` of the reference samples.
Range = Tuple[int, int]


def check_plot_fn(plot_fn) -> None:
    if plot_fn is not None and not callable(plot_fn):
        raise TypeError(f"plot_fn must be a function (samples, heatmaps, rf) -> images, or None for the raw tensors; "
                        f"got {plot_fn!r}.")


def check_range(r_range) -> Range:
    ok = isinstance(r_range, (tuple, list)) and len(r_range) == 2 and all(
        isinstance(r, numbers.Integral) and not isinstance(r, bool) for r in r_range)
    if not ok or not 0 <= r_range[0] < r_range[1]:
        raise ValueError(f"r_range must be a pair of ints (start, stop) with 0 <= start < stop, got {r_range!r}; "
                         f"e.g. (0, 8) for the top 8 samples.")
    return int(r_range[0]), int(r_range[1])


def rank_rows(indices: np.ndarray, ranks: Range, what: str) -> slice:
    if ranks[0] >= len(indices):
        raise ValueError(f"r_range starts at rank {ranks[0]}, but the {what} holds {len(indices)} samples; "
                         f"choose a range below {len(indices)}.")
    return slice(ranks[0], min(ranks[1], len(indices)))


def results_fingerprint(reader: ResultReader, path: Path) -> Any:
    """Return what identifies the results references are drawn from.

    The store's configuration and progress, or the modification time of a zennit-crp folder.
    """
    if isinstance(reader, ResultStore):
        return reader.progress()
    return {"legacy": str(path.resolve()), "mtime_ns": max(p.stat().st_mtime_ns for p in path.iterdir())}


def cached_references(cache: Optional[Cache], ids: List[Any], *, key: CacheKey, r_range: Range,
                      compute: Callable[[Any, Range], Any], overwrite: bool) -> Dict[Any, Any]:
    """Return the references of ``ids`` at ranks ``r_range``.

    They are loaded from ``cache`` where it has them, else computed with ``compute(ref_id, ranks)`` and stored;
    everything is computed without a cache or with ``overwrite``.
    """
    if cache is None:
        return {ref_id: compute(ref_id, r_range) for ref_id in ids}
    if overwrite:
        found: Dict[Any, Any] = {}
        missing = {ref_id: r_range for ref_id in ids}
    else:
        found, missing = cache.load(ids, key, r_range)
    for ref_id, ranks in missing.items():
        value = compute(ref_id, ranks)
        cache.save({ref_id: value}, key, ranks)
        found = cache.extend_dict(found, {ref_id: value})
    return {ref_id: found[ref_id] for ref_id in ids if ref_id in found}
