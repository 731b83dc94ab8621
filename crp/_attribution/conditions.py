"""Coercion and validation of the flexible arguments of CRP: layer names, concept ids, conditions.

Every user-facing argument that accepts several forms is turned into one canonical form here, or rejected
with an error that names the argument, echoes the value and says what fixes it.
"""
import numbers
from typing import Dict, List, Tuple, Union

import numpy as np
import torch

__all__ = ["Ids", "Condition", "canonical_ids", "canonical_conditions", "broadcast_rows"]

#: Canonical concept ids: a list of ints (channels) or a dict of channel -> list of flat neuron indices.
Ids = Union[List[int], Dict[int, List[int]]]
#: A canonical condition: layer name (or the model output name) -> ids.
Condition = Dict[str, Ids]


def _int_list(value, where: str) -> List[int]:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    if isinstance(value, (bool, np.bool_)) or isinstance(value, (str, bytes, float)):
        raise TypeError(f"{where}: expected an int or a list of ints, got {value!r}.")
    array = np.atleast_1d(np.asarray(value))
    if array.size and not np.issubdtype(array.dtype, np.integer):
        raise TypeError(f"{where}: expected an int or a list of ints, got {value!r}.")
    return [int(v) for v in array.ravel()]


def canonical_ids(value, where: str) -> Ids:
    """Turn an int, a sequence of ints, or a dict ``{channel: neurons}`` into canonical ids."""
    if isinstance(value, dict):
        return {int(_int_list(channel, where)[0]): _int_list(neurons, where) for channel, neurons in value.items()}
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return [int(value)]
    return _int_list(value, where)


def canonical_conditions(conditions, output_name: str) -> List[Condition]:
    """Validate ``conditions`` (a list of dicts) and return them with canonical ids.

    A single dict is accepted as a list of one condition.
    """
    if isinstance(conditions, dict):
        conditions = [conditions]
    if not isinstance(conditions, (list, tuple)) or not conditions:
        raise ValueError(
            f"conditions must be a non-empty list of dicts such as [{{'layer': [0], {output_name!r}: [1]}}], "
            f"got {conditions!r}."
        )
    result = []
    for index, condition in enumerate(conditions):
        if not isinstance(condition, dict):
            raise TypeError(f"conditions[{index}] must be a dict of layer name -> concept ids, got {condition!r}.")
        result.append({
            str(name): canonical_ids(ids, f"conditions[{index}][{name!r}]") for name, ids in condition.items()
        })
    for index, condition in enumerate(result):
        targets = condition.get(output_name)
        if isinstance(targets, dict):
            raise TypeError(f"conditions[{index}][{output_name!r}] must be an int or a list of ints, got a dict.")
    return result


def broadcast_rows(n_data: int, n_conditions: int) -> Tuple[np.ndarray, np.ndarray]:
    """Pair samples with conditions; return the sample index and the condition index of every output row.

    One sample and K conditions give K rows; N samples and one condition N rows; N samples and N conditions
    are paired; otherwise every sample gets every condition (N * K rows, sample-major).
    """
    if n_data == n_conditions or n_conditions == 1 or n_data == 1:
        n_rows = max(n_data, n_conditions)
        samples = np.arange(n_rows) if n_data > 1 else np.zeros(n_rows, dtype=np.int64)
        conds = np.arange(n_rows) if n_conditions > 1 else np.zeros(n_rows, dtype=np.int64)
        return samples, conds
    return np.repeat(np.arange(n_data), n_conditions), np.tile(np.arange(n_conditions), n_data)
