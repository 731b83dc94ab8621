"""A zennit hook for the epsilon rule that costs one matrix product in the backward pass.

zennit's :class:`~zennit.rules.Epsilon` recomputes a layer's forward in the backward pass and differentiates
it, after autograd has computed (and discarded) the layer's plain input gradient: three matrix products per
layer. For a layer that is affine in its input the epsilon rule is
``R_x = x * W^T (R / stabilize(z))``, and ``W^T g`` is exactly the layer's plain input gradient of ``g``. So
:class:`FastEpsilon` only divides the relevance by the stabilized output before the layer's own backward and
multiplies the result by the input after it: the same relevance as zennit's ``Epsilon`` (without parameter
modifiers), for one matrix product. It follows zennit's hook protocol (``register``, ``copy``, ``remove``) and
torch's hook signatures, so it works with zennit 0.5 and 1.0.
"""
from typing import Optional

import torch
from torch.autograd import Function
from zennit.core import RemovableHandle, RemovableHandleList

from crp._transformers.rules import stabilize

__all__ = ["FastEpsilon"]


class _TimesInput(Function):
    """Identity; the backward multiplies the gradient by the input."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, gradient: torch.Tensor):
        (x,) = ctx.saved_tensors
        return gradient * x


class _OverOutput(Function):
    """Identity; the backward divides the relevance by the stabilized output."""

    @staticmethod
    def forward(ctx, z: torch.Tensor, epsilon: float) -> torch.Tensor:
        ctx.save_for_backward(stabilize(z, epsilon).reciprocal_())  # prepared once for many backward passes
        return z.view_as(z)

    @staticmethod
    def backward(ctx, relevance: torch.Tensor):
        (inverse,) = ctx.saved_tensors
        return relevance * inverse, None


class FastEpsilon:
    """The epsilon rule ``R_x = x * W^T (R / (z + epsilon * sign(z)))`` for layers affine in their input.

    Equal to zennit's ``Epsilon(epsilon)`` on Linear, GPT-2's Conv1D and convolution layers, computed with the
    layer's own input gradient (one matrix product) instead of a recomputed forward (three).

    Parameters
    ----------
    epsilon : float
        Stabilizer of the division by the output ``z`` (bias included).
    """

    def __init__(self, epsilon: float = 1e-6) -> None:
        self.epsilon = float(epsilon)

    def pre_forward(self, module: torch.nn.Module, args: tuple) -> Optional[tuple]:  # noqa: ARG002 (torch's hook)
        """Route the input through ``_TimesInput``."""
        if not args or not isinstance(args[0], torch.Tensor) or not args[0].requires_grad:
            return None
        return (_TimesInput.apply(args[0]), *args[1:])

    def post_forward(self, module: torch.nn.Module, args: tuple,  # noqa: ARG002 (torch's hook signature)
                     output) -> Optional[torch.Tensor]:
        """Route the output through ``_OverOutput``."""
        if not isinstance(output, torch.Tensor) or output.grad_fn is None:
            return None
        return _OverOutput.apply(output, self.epsilon)

    def copy(self) -> "FastEpsilon":
        """Return a hook with the same epsilon."""
        return FastEpsilon(self.epsilon)

    def remove(self) -> None:
        """Nothing to release: the hook keeps no tensors between passes."""

    def register(self, module: torch.nn.Module) -> RemovableHandleList:
        """Register the forward hooks on ``module``; return zennit handles that undo it."""
        return RemovableHandleList([
            RemovableHandle(self),
            module.register_forward_pre_hook(self.pre_forward),
            module.register_forward_hook(self.post_forward),
        ])

    def __repr__(self) -> str:
        return f"FastEpsilon(epsilon={self.epsilon!r})"
