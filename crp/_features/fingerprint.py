"""What identifies a FeatureVisualization run: its configuration, and a fingerprint of the dataset it read.

A store remembers both; a run into a store of another configuration is refused, and a resumed run warns when
the items analyzed before have changed.
"""
import hashlib
import json
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

from crp._attribution.concepts import Concept
from crp._features.cache import describe
from crp._features.dataset import split_item

__all__ = ["run_config", "dataset_fingerprint", "combine_fingerprints", "same_items", "json_roundtrip"]


def run_config(*, model: torch.nn.Module, dataset: Any, layer_map: Mapping[str, Concept], composite: Any,
               settings: Mapping[str, Any], data_range: Tuple[int, int], preprocess_fn: Optional[Callable],
               multitarget: Optional[Callable]) -> Dict[str, Any]:
    """Everything that determines a run's results, as a JSON-serializable dict.

    Parameters
    ----------
    model : torch.nn.Module
        The model (its class and parameter shapes are recorded).
    dataset : Dataset
        The dataset (its class and length).
    layer_map : dict of str to Concept
        The analyzed layers and their concepts.
    composite : zennit.core.Composite or None
        The rules.
    settings : dict
        The ranking settings (``k``, ``max_target``, ``abs_norm``).
    data_range : (int, int)
        The analyzed dataset indices ``[start, stop)``.
    preprocess_fn, multitarget : callable or None
        The preprocessing and an overridden ``multitarget_to_single``.

    Returns
    -------
    dict
        The configuration.
    """
    return {
        **dict(settings), "data_start": data_range[0], "data_end": data_range[1],
        "dataset": {"class": type(dataset).__qualname__, "length": len(dataset)},
        "layers": {name: describe(concept) for name, concept in layer_map.items()},
        "composite": describe(composite),
        "model": {"class": type(model).__qualname__,
                  "parameters": [[n, list(p.shape)] for n, p in model.named_parameters()]},
        "preprocess_fn": describe(preprocess_fn),
        "multitarget_to_single": describe(multitarget) if multitarget is not None else None,
    }


def dataset_fingerprint(dataset: Any, indices: Sequence[int]) -> Dict[str, Any]:
    """SHA-256 of the dataset items at ``indices`` (samples and targets), to recognize the dataset on resume.

    Returns
    -------
    dict
        ``{"indices": [...], "items": [SHA-256 of each item], "sha256": SHA-256 of the items' digests}``; the
        per-item digests let shards of one dataset be merged (:func:`combine_fingerprints`).
    """
    items = []
    for index in indices:
        digest = hashlib.sha256()
        sample, target = split_item(index, dataset[index])
        digest.update(np.ascontiguousarray(sample.detach().cpu().numpy()).tobytes())
        digest.update(repr(target.tolist() if isinstance(target, torch.Tensor) else target).encode())
        items.append(digest.hexdigest())
    return _fingerprint([int(i) for i in indices], items)


def combine_fingerprints(fingerprints: Sequence[Optional[Mapping[str, Any]]],
                         indices: Sequence[int]) -> Optional[Dict[str, Any]]:
    """Return the fingerprint of the items at ``indices``, made from the per-item digests of other fingerprints.

    Returns None if an index is in none of them (or they were written without per-item digests).
    """
    known: Dict[int, str] = {}
    for fingerprint in fingerprints:
        if fingerprint and isinstance(fingerprint.get("items"), list):
            known.update(zip(fingerprint["indices"], fingerprint["items"]))
    if not all(int(i) in known for i in indices):
        return None
    return _fingerprint([int(i) for i in indices], [known[int(i)] for i in indices])


def same_items(stored: Mapping[str, Any], dataset: Any) -> bool:
    """Whether ``dataset`` has the items a stored fingerprint describes (one without per-item digests: True)."""
    if "items" not in stored:
        return True  # written before per-item digests: nothing to compare with
    return dataset_fingerprint(dataset, stored["indices"]) == dict(stored)


def _fingerprint(indices: List[int], items: List[str]) -> Dict[str, Any]:
    combined = hashlib.sha256("".join(items).encode()).hexdigest()
    return {"indices": indices, "items": items, "sha256": combined}


def json_roundtrip(value: Any) -> Any:
    """``value`` as it reads back from JSON (tuples become lists), to compare with a stored configuration."""
    return json.loads(json.dumps(value, sort_keys=True))
