"""Hooks that condition the backward relevance flow at a module's output.

:class:`MaskHook` follows zennit's hook protocol (``copy``, ``register``, ``remove``), so it can be placed by
any zennit :class:`~zennit.core.Composite`, e.g. ``NameMapComposite([(["features.11"], MaskHook([...]))])``.
It works with zennit 0.5 and 1.0: its forward hook accepts both ``(module, input, output)`` and
``(module, args, kwargs, output)``.
"""
import functools
import weakref
from typing import Callable, List, Optional, Sequence

import torch
from zennit.core import RemovableHandle, RemovableHandleList

from crp._attribution.concepts import RowMask

__all__ = ["MaskHook"]

GradFn = Callable[[torch.Tensor], torch.Tensor]


class MaskHook:
    """Apply mask functions to the gradient (relevance) arriving at a module's output.

    Parameters
    ----------
    fn_list : sequence of callable, optional
        Functions ``grad -> grad``, applied in order. They must return new tensors. Instances of
        :class:`crp.concepts.RowMask` (what :meth:`ChannelConcept.mask` returns) are combined into one
        multiplication. Copies made by :meth:`copy` share this list, so masks can be changed between
        backward passes without re-registering.
    on_grad : callable, optional
        Called as ``on_grad(module, grad)`` with the gradient *before* any mask is applied.
    """

    def __init__(self, fn_list: Optional[Sequence[GradFn]] = None,
                 on_grad: Optional[Callable[[torch.nn.Module, torch.Tensor], None]] = None) -> None:
        self.fn_list: List[GradFn] = fn_list if isinstance(fn_list, list) else list(fn_list or ())
        self.on_grad = on_grad

    def post_forward(self, module: torch.nn.Module, *args) -> Optional[torch.Tensor]:
        """Forward hook: register the masking gradient hook on the output tensor.

        Accepts ``(input, output)`` (torch, zennit 0.5) and ``(args, kwargs, output)`` (zennit 1.0).
        """
        output = args[-1]
        if isinstance(output, tuple):
            output = output[0]
        if isinstance(output, torch.Tensor) and output.requires_grad:
            hook_ref = weakref.ref(self)

            @functools.wraps(type(self).backward)  # not the bound method: the tensor must not keep ``self`` alive
            def wrapper(grad: torch.Tensor) -> Optional[torch.Tensor]:
                hook = hook_ref()
                return None if hook is None else hook.backward(module, grad)

            output.register_hook(wrapper)
        return None

    def backward(self, module: torch.nn.Module, grad: torch.Tensor) -> torch.Tensor:
        """Return the masked gradient as a new tensor (the incoming one is left unchanged)."""
        if self.on_grad is not None:
            self.on_grad(module, grad)
        return apply_masks(self.fn_list, grad)

    def copy(self) -> "MaskHook":
        """Return a hook that shares this hook's mask list and callback."""
        return self.__class__(self.fn_list, self.on_grad)

    def remove(self) -> None:
        """Do nothing when zennit removes the hook's handles; masks stay with the owner of ``fn_list``."""

    def register(self, module: torch.nn.Module) -> RemovableHandleList:
        """Register the forward hook on ``module``; return zennit handles that undo it."""
        return RemovableHandleList([
            RemovableHandle(self),
            module.register_forward_hook(self.post_forward),
        ])


def apply_masks(fn_list: Sequence[GradFn], grad: torch.Tensor) -> torch.Tensor:
    """Apply mask functions to ``grad``; :class:`RowMask` instances are merged into a single product.

    Parameters
    ----------
    fn_list : sequence of callable
        Mask functions ``grad -> grad``.
    grad : torch.Tensor
        The batched gradient.

    Returns
    -------
    torch.Tensor
        A new tensor unless ``fn_list`` is empty, in which case ``grad`` itself.
    """
    row_masks = [fn for fn in fn_list if isinstance(fn, RowMask)]
    if row_masks:
        factor = torch.ones_like(grad)
        for fn in row_masks:
            fn.check_rows(len(grad))
            factor[fn.batch_id] *= fn.row_mask(grad.shape[1:], grad.dtype, grad.device)
        grad = grad * factor
    for other in fn_list:
        if not isinstance(other, RowMask):
            grad = other(grad)
    return grad
