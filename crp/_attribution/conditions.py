"""Coercion and validation of the flexible arguments of CRP: layer names, concept ids, conditions.

Every user-facing argument that accepts several forms is turned into one canonical form here, or rejected
with an error that names the argument, echoes the value and says what fixes it.
"""
import numbers
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from crp._utils.checks import check_id_shape, check_type
from crp._utils.modules import check_layer_names
from crp._utils.text import short_repr

__all__ = [
    "Ids", "Condition", "MaskMap", "InitRel", "Request", "prepare_request", "check_data", "layers_of",
    "canonical_ids", "canonical_conditions", "broadcast_rows",
]

#: Canonical concept ids: a list of ints (channels) or a dict of channel -> list of flat neuron indices.
Ids = Union[List[int], Dict[int, List[int]]]
#: A canonical condition: layer name (or the model output name) -> ids.
Condition = Dict[str, Ids]


def _int_list(value, where: str) -> List[int]:
    described = short_repr(value)
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    if isinstance(value, (bool, np.bool_)) or isinstance(value, (str, bytes, float)):
        raise TypeError(f"{where}: expected an int or a list of ints, got {described}.")
    try:
        array = np.atleast_1d(np.asarray(value))
    except ValueError:  # a ragged nested list
        raise TypeError(f"{where}: expected an int or a 1-D list of ints, got {described}.") from None
    check_id_shape(array.shape, where)
    if array.size and not np.issubdtype(array.dtype, np.integer):
        raise TypeError(f"{where}: expected an int or a list of ints, got {described}.")
    return [int(v) for v in array]


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


MaskMap = Union[Callable, Dict[str, Callable]]
InitRel = Union[None, numbers.Real, torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]


def layers_of(condition: Condition, output_name: str) -> List[str]:
    """Return the layers a condition conditions (its keys but the model output)."""
    return [name for name in condition if name != output_name]


@dataclass
class Request:
    """Validated, canonical arguments of one attribution call.

    Attributes
    ----------
    conditions : list of Condition
        The canonical conditions.
    cond_layers : list of str
        Every layer some condition conditions, in order of first mention.
    record_layers : list of str
        Every layer that is recorded: the requested ones, the conditioned ones and the start layer.
    start_layer : str or None
        Where the backward pass starts (None: the model output).
    mask_map : callable or dict of str to callable
        The mask factory (per layer).
    init_rel : None, number, tensor or callable
        The initial relevance.
    output_name : str
        The key of the model output in a condition.
    """

    conditions: List[Condition]
    cond_layers: List[str]
    record_layers: List[str]
    start_layer: Optional[str]
    mask_map: MaskMap
    init_rel: InitRel
    output_name: str

    def targets(self, rows: Sequence[Condition]) -> Optional[List[Any]]:
        """Return the targets of every row (None where a row has none).

        None if no row has targets or a start layer is used.
        """
        if self.start_layer is not None:
            return None
        targets = [condition.get(self.output_name) for condition in rows]
        return None if all(t is None for t in targets) else targets

    def masks_for(self, rows: Sequence[Condition]) -> Dict[str, List[Callable]]:
        """Return the mask functions of every recorded layer for ``rows`` (row ``i`` of the batch is ``rows[i]``)."""
        masks: Dict[str, List[Callable]] = {name: [] for name in self.record_layers}
        for row, condition in enumerate(rows):
            for name in self.cond_layers:
                if name in condition:
                    factory = self.mask_map[name] if isinstance(self.mask_map, dict) else self.mask_map
                    masks[name].append(factory(row, condition[name], name))
        return masks


def prepare_request(model: torch.nn.Module, data, conditions, *, record_layer, mask_map, start_layer, init_rel,
                    output_name: str) -> Request:
    """Validate the arguments of an attribution call and return them in canonical form.

    The arguments are those of :meth:`crp.attribution.CondAttribution.__call__`.
    """
    check_data(data)
    if output_name in dict(model.named_modules()):
        raise ValueError(f"the model has a module named {output_name!r}, which is the key for the model output in "
                         f"conditions; set attribution.MODEL_OUTPUT_NAME to another string.")
    conditions = canonical_conditions(conditions, output_name)
    record_layers = [record_layer] if isinstance(record_layer, str) else list(record_layer)
    cond_layers = list(dict.fromkeys(name for c in conditions for name in layers_of(c, output_name)))
    check_layer_names(model, cond_layers, "conditions")
    check_layer_names(model, record_layers, "record_layer")
    if start_layer is not None:
        check_layer_names(model, [start_layer], "start_layer")
    _check_mask_map(model, mask_map, cond_layers)
    _check_targets_given(conditions, start_layer=start_layer, init_rel=init_rel, output_name=output_name)
    layers = list(dict.fromkeys(record_layers + cond_layers + ([start_layer] if start_layer else [])))
    return Request(conditions, cond_layers, layers, start_layer, mask_map, init_rel, output_name)


def check_data(data) -> None:
    """Raise unless ``data`` is a batch of samples that requires gradients."""
    check_type(data, torch.Tensor, name="data", expected="a torch.Tensor")
    if not (data.is_floating_point() or data.is_complex()):
        raise TypeError(f"data must be a floating-point tensor to receive relevance (gradients), got dtype "
                        f"{data.dtype}; convert it first, e.g. data = data.float().requires_grad_().")
    if not data.requires_grad:
        raise ValueError("data must require gradients to receive relevance: call data.requires_grad_() first.")
    if data.dim() == 0 or len(data) == 0:
        raise ValueError(f"data must be a batch of at least one sample, got shape {tuple(data.shape)}.")


def _check_mask_map(model: torch.nn.Module, mask_map, cond_layers: List[str]) -> None:
    if isinstance(mask_map, dict):
        check_layer_names(model, list(mask_map), "mask_map")
        missing = [name for name in cond_layers if name not in mask_map]
        if missing:
            raise KeyError(f"mask_map has no entry for the conditioned layers {missing}; add them or pass "
                           f"one callable for all layers.")
    elif not callable(mask_map):
        raise TypeError(f"mask_map must be a callable or a dict of layer name -> callable, got {mask_map!r}.")


def _check_targets_given(conditions: List[Condition], *, start_layer, init_rel, output_name: str) -> None:
    has_targets = [output_name in c for c in conditions]
    if start_layer is not None:
        if any(has_targets):
            warnings.warn(
                f"the condition on {output_name!r} is ignored because the backward pass starts at "
                f"start_layer={start_layer!r}; remove start_layer to explain the output.", stacklevel=5)
    elif init_rel is None and not all(has_targets):
        raise ValueError(
            f"every condition needs a target {output_name!r} (e.g. {{..., {output_name!r}: [3]}}) unless "
            f"start_layer or init_rel is given."
        )
