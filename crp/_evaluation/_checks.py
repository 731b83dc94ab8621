"""Validation and coercion of the arguments shared by the faithfulness metrics.

Every function here turns one flexible argument into its canonical form or raises an exception that names
the argument, echoes the offending value or shape and says what would fix it. They build on the checks every
room shares (:mod:`crp._utils.checks`): a wrong type raises a TypeError, a wrong value a ValueError. Messages of
this room quote argument names in backticks.
"""

from numbers import Integral
from typing import Any, Callable, Dict, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from crp._utils.checks import check_callable, check_positive_int, check_type, check_value

__all__ = [
    "RegionSize",
    "TargetsLike",
    "check_inputs",
    "check_attributions",
    "check_targets",
    "check_region_size",
    "check_region_fit",
    "check_scores",
    "named_or_callable",
]

#: Side of a square region, or its ``(height, width)``.
RegionSize = Union[int, Tuple[int, int]]
#: One class index for all samples, one per sample, or ``None`` for the predicted class.
TargetsLike = Union[None, int, Sequence[int], np.ndarray, torch.Tensor]


def check_inputs(inputs: object) -> torch.Tensor:
    """Check that ``inputs`` is a finite floating-point batch of images of shape ``(N, C, H, W)``.

    Parameters
    ----------
    inputs : object
        The candidate input batch.

    Returns
    -------
    torch.Tensor
        The inputs, detached.

    Raises
    ------
    TypeError
        If ``inputs`` is not a floating-point tensor.
    ValueError
        If ``inputs`` is not 4-D, is empty or holds NaN or infinite values.
    """
    if not isinstance(inputs, torch.Tensor) or not inputs.is_floating_point():
        kind = inputs.dtype if isinstance(inputs, torch.Tensor) else type(inputs).__name__
        raise TypeError(f"`inputs` must be a floating-point torch.Tensor of shape (N, C, H, W), got {kind}.")
    if inputs.dim() != 4 or inputs.shape[0] == 0:
        raise ValueError(
            f"`inputs` must have shape (N, C, H, W) with N >= 1, got shape {tuple(inputs.shape)}; "
            "add a batch dimension with `inputs[None]` for a single image."
        )
    if not torch.isfinite(inputs).all():
        raise ValueError(f"`inputs` of shape {tuple(inputs.shape)} contains NaN or infinite values.")
    return inputs.detach()


def check_attributions(attributions: object, inputs: torch.Tensor) -> torch.Tensor:
    """Bring ``attributions`` to shape ``(N, H, W)`` on the inputs' device, summing over channels.

    Parameters
    ----------
    attributions : object
        A tensor or array of shape ``(N, H, W)``, ``(N, 1, H, W)`` or ``(N, C, H, W)``.
    inputs : torch.Tensor
        The checked inputs of shape ``(N, C, H, W)``.

    Returns
    -------
    torch.Tensor
        The attributions of shape ``(N, H, W)`` in the inputs' dtype and device.

    Raises
    ------
    TypeError
        If ``attributions`` is neither a tensor nor an array.
    ValueError
        If the shape does not match the inputs or if it contains NaN or infinite values.
    """
    if isinstance(attributions, np.ndarray):
        attributions = torch.from_numpy(attributions)
    if not isinstance(attributions, torch.Tensor):
        raise TypeError(f"`attributions` must be a torch.Tensor or numpy array, got {type(attributions).__name__}.")
    n, c, h, w = inputs.shape
    shape = tuple(attributions.shape)
    if shape not in ((n, h, w), (n, 1, h, w), (n, c, h, w)):
        raise ValueError(
            f"`attributions` of shape {shape} does not match `inputs` of shape {tuple(inputs.shape)}; "
            f"expected ({n}, {h}, {w}), ({n}, 1, {h}, {w}) or ({n}, {c}, {h}, {w})."
        )
    if not torch.isfinite(attributions).all():
        raise ValueError(f"`attributions` of shape {shape} contains NaN or infinite values.")
    attributions = attributions.detach().to(device=inputs.device, dtype=inputs.dtype)
    return attributions.sum(1) if attributions.dim() == 4 else attributions


def check_targets(targets: TargetsLike, n: int, n_classes: Optional[int] = None) -> Optional[torch.Tensor]:
    """Bring ``targets`` to a ``(N,)`` int64 tensor (on the CPU), or keep ``None``.

    Parameters
    ----------
    targets : None, int, sequence of int, numpy.ndarray or torch.Tensor
        One class index for all samples, one per sample, or ``None``.
    n : int
        The number of samples.
    n_classes : int, optional
        The number of model outputs; when given, targets must lie in ``[0, n_classes)``.

    Returns
    -------
    torch.Tensor or None
        The targets of shape ``(N,)``, or ``None`` if ``targets`` is ``None``.

    Raises
    ------
    ValueError
        If the targets are not integers, do not have one entry per sample or lie outside the outputs.
    """
    if targets is None:
        return None
    if isinstance(targets, Integral) and not isinstance(targets, bool):
        targets = [int(targets)] * n
    tensor = torch.as_tensor(np.asarray(targets.cpu() if isinstance(targets, torch.Tensor) else targets))
    if tensor.dtype.is_floating_point or tensor.dtype == torch.bool or tensor.dtype.is_complex:
        raise ValueError(f"`targets` must hold integer class indices, got dtype {tensor.dtype}.")
    if tuple(tensor.shape) != (n,):
        raise ValueError(f"`targets` of shape {tuple(tensor.shape)} does not match the {n} samples of `inputs`.")
    tensor = tensor.long()
    if n_classes is not None and ((tensor < 0).any() or (tensor >= n_classes).any()):
        raise ValueError(
            f"`targets` {tensor.tolist()} must lie in [0, {n_classes}) for a model with {n_classes} outputs."
        )
    return tensor


def check_region_size(region_size: object) -> Tuple[int, int]:
    """Return ``region_size`` as ``(height, width)``, both at least 1.

    Parameters
    ----------
    region_size : int or tuple of int
        Side of square regions or ``(height, width)``.

    Returns
    -------
    tuple of int
        ``(height, width)`` of one region.

    Raises
    ------
    TypeError
        If ``region_size`` is neither an integer nor a pair of integers.
    ValueError
        If it is a sequence of another length, or a side is smaller than 1.
    """
    expected = "an int >= 1 or a pair (height, width) of them"
    pair: Any = (region_size, region_size) if isinstance(region_size, Integral) else region_size
    check_type(pair, (tuple, list), name="`region_size`", expected=expected)
    check_value(len(pair) == 2, region_size, name="`region_size`", expected=expected)
    return check_positive_int(pair[0], name="`region_size`"), check_positive_int(pair[1], name="`region_size`")


def check_region_fit(region: Tuple[int, int], inputs: torch.Tensor) -> None:
    """Raise unless regions of size ``region`` tile the inputs' height and width exactly.

    Parameters
    ----------
    region : tuple of int
        ``(height, width)`` of one region.
    inputs : torch.Tensor
        The inputs of shape ``(N, C, H, W)``.

    Raises
    ------
    ValueError
        If the region does not divide the height or the width.
    """
    height, width = inputs.shape[-2:]
    if height % region[0] or width % region[1]:
        raise ValueError(
            f"`region_size` {region} does not tile `inputs` of shape {tuple(inputs.shape)}: the height {height} and "
            f"width {width} must be multiples of the region's height and width; pick a divisor or crop the inputs."
        )


def named_or_callable(spec: Any, registry: Dict[str, Callable], argument: str) -> Tuple[str, Callable]:
    """Coerce a choice given by name (a key of ``registry``) or as a callable into ``(name, callable)``.

    Parameters
    ----------
    spec : str or callable
        The choice.
    registry : dict of str to callable
        The choices by name.
    argument : str
        The argument's name, for the messages.

    Returns
    -------
    tuple of (str, callable)
        The name (the callable's ``__name__`` for a callable) and the callable.

    Raises
    ------
    TypeError
        If ``spec`` is neither a string nor a callable.
    ValueError
        If ``spec`` is a string that is not a key of ``registry``.
    """
    expected = f"one of {sorted(registry)} or a callable"
    if isinstance(spec, str):
        check_value(spec in registry, spec, name=f"`{argument}`", expected=expected)
        return spec, registry[spec]
    check_callable(spec, name=f"`{argument}`", expected=expected)
    return getattr(spec, "__name__", type(spec).__name__), spec


def check_scores(scores: object, n_rows: int) -> torch.Tensor:
    """Check that a score function returned one value per input and return them as float64 on the CPU.

    Parameters
    ----------
    scores : object
        What the score function returned.
    n_rows : int
        The number of inputs it scored.

    Returns
    -------
    torch.Tensor
        float64 scores of shape ``(n_rows,)`` on the CPU.

    Raises
    ------
    ValueError
        If ``scores`` is not a tensor of shape ``(n_rows,)``.
    """
    if not isinstance(scores, torch.Tensor) or tuple(scores.shape) != (n_rows,):
        shape = tuple(scores.shape) if isinstance(scores, torch.Tensor) else type(scores).__name__
        raise ValueError(
            f"`score` must return one value per input, shape ({n_rows},), got {shape}; "
            "reduce the model output to the target's score."
        )
    return scores.detach().to("cpu", torch.float64)
