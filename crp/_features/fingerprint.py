"""What identifies a FeatureVisualization run: its configuration, and a fingerprint of the dataset it read.

A store remembers both; a run into a store of another configuration is refused, and a resumed run warns when
the items analyzed before have changed.
"""
import hashlib
import json
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

from crp._attribution.concepts import Concept
from crp._features.cache import describe
from crp._features.dataset import split_item

__all__ = ["run_config", "dataset_fingerprint", "json_roundtrip"]


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
    """SHA-256 of the dataset items at ``indices`` (samples and targets), to recognize the dataset on resume."""
    digest = hashlib.sha256()
    for index in indices:
        sample, target = split_item(index, dataset[index])
        digest.update(np.ascontiguousarray(sample.detach().cpu().numpy()).tobytes())
        digest.update(repr(target.tolist() if isinstance(target, torch.Tensor) else target).encode())
    return {"indices": [int(i) for i in indices], "sha256": digest.hexdigest()}


def json_roundtrip(value: Any) -> Any:
    """``value`` as it reads back from JSON (tuples become lists), to compare with a stored configuration."""
    return json.loads(json.dumps(value, sort_keys=True))
