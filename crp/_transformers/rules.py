"""AttnLRP rules for the operations of a transformer that zennit has no rule for, in zennit's convention.

In zennit's convention the gradient that arrives at a tensor is its relevance. Each rule is a
:class:`torch.autograd.Function` whose forward computes the usual value and whose backward turns the relevance
``R`` of its output ``y`` into the relevance of its inputs, following Achtibat et al., "AttnLRP:
Attention-Aware Layer-Wise Relevance Propagation for Transformers" (ICML 2024, Sec. 3):

``softmax``
    ``R_x = x * (R - y * sum(R))``: the linearization of the softmax at its input ``x`` with the bias term
    left out, i.e. ``x * J^T (R / y)`` (AttnLRP Prop. 3.1). Non-finite inputs (masked positions) get none.
``matmul``, ``multiply``
    The uniform rule for a product of two input-dependent factors: every term ``a_ik b_kj`` of an output
    ``y_ij`` gets ``a_ik b_kj / y_ij * R_ij`` (the epsilon rule over the sum), split in equal halves between
    its two factors (AttnLRP Prop. 3.2). For an elementwise product each factor gets ``R / 2``. A factor that
    does not require gradients (a constant, as the attention weights in CP-LRP) takes no share: the other
    factor gets all of it.
``add``, ``affine``, ``layer_norm``
    The epsilon rule (with a tiny epsilon, i.e. the z-rule) for affine maps ``y = f(x)``:
    ``R_x = x * J_f^T (R / y)``; a constant summand (a position embedding, a bias) absorbs its share. The
    LayerNorm is treated as affine by holding its standard deviation constant (AttnLRP Sec. 3.3.3).
``identity``
    ``R_x = R`` for elementwise nonlinearities (GELU, SiLU, ...) and for the RMSNorm with its root mean
    square held constant (AttnLRP Eq. 9).

:class:`GradientOps` and :class:`LRPOps` are the two sets of operations the supported forwards
(:mod:`crp._transformers.forwards`) are written in: with plain gradients, and with these rules.
"""
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch.autograd import Function

from crp._utils.checks import check_choice, check_type

__all__ = [
    "VARIANTS", "stabilize", "softmax_value", "softmax", "matmul", "multiply", "add", "affine", "identity",
    "layer_norm", "GradientOps", "LRPOps",
]

#: The rule variants: AttnLRP, and CP-LRP (attention weights and MLP gates treated as constants).
VARIANTS = ("attnlrp", "cp-lrp")


def stabilize(value: torch.Tensor, epsilon: float) -> torch.Tensor:
    """``value`` moved away from zero by ``epsilon`` in the direction of its sign (``+0.0`` counts as positive).

    ``epsilon`` is raised to the smallest normal number of ``value``'s dtype, so that it never rounds to zero.
    """
    epsilon = max(float(epsilon), torch.finfo(value.dtype).tiny)
    shift = torch.copysign(torch.tensor(epsilon, dtype=value.dtype, device=value.device), value)
    return shift.add_(value)


def _sum_to(tensor: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Sum ``tensor`` over the axes along which a tensor of ``shape`` was broadcast to it."""
    if tensor.shape == shape:
        return tensor
    extra = tensor.dim() - len(shape)
    tensor = tensor.sum(dim=tuple(range(extra))) if extra > 0 else tensor
    axes = tuple(axis for axis, size in enumerate(shape) if size == 1 and tensor.shape[axis] != 1)
    return tensor.sum(dim=axes, keepdim=True) if axes else tensor


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


def softmax_value(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Compute the softmax of ``x`` along ``dim`` in at least float32; return it in ``x``'s dtype."""
    return torch.softmax(x, dim=dim, dtype=_compute_dtype(x.dtype)).to(x.dtype)


def _reciprocal(value: torch.Tensor, epsilon: float) -> torch.Tensor:
    return stabilize(value, epsilon).reciprocal_()


# Every rule prepares in its forward what does not depend on the relevance (reciprocals of outputs, weights of
# inputs), so that the backward is a few passes: generate() runs many backward passes after one forward.


class _Softmax(Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, dim: int) -> torch.Tensor:
        y = softmax_value(x, dim)
        ctx.save_for_backward(torch.where(torch.isfinite(x), x, torch.zeros_like(x)), y)
        ctx.dim = dim
        return y

    @staticmethod
    def backward(ctx, relevance: torch.Tensor):
        x, y = ctx.saved_tensors
        return (relevance - y * relevance.sum(ctx.dim, keepdim=True)).mul_(x), None


class _Product(Function):
    @staticmethod
    def forward(ctx, a: torch.Tensor, b: torch.Tensor, elementwise: bool, epsilon: float) -> torch.Tensor:
        y = a * b if elementwise else torch.matmul(a, b)
        ctx.elementwise, ctx.shapes = elementwise, (a.shape, b.shape)
        if elementwise:
            ctx.save_for_backward()
        else:
            ctx.save_for_backward(a, b, _reciprocal(y, epsilon))
        return y

    @staticmethod
    def backward(ctx, relevance: torch.Tensor):
        need_a, need_b = ctx.needs_input_grad[:2]
        share = 0.5 if need_a and need_b else 1.0
        shape_a, shape_b = ctx.shapes
        if ctx.elementwise:
            return (_sum_to(share * relevance, shape_a) if need_a else None,
                    _sum_to(share * relevance, shape_b) if need_b else None, None, None)
        a, b, inverse = ctx.saved_tensors
        ratio = relevance * inverse
        rel_a = _sum_to(torch.matmul(ratio, b.transpose(-1, -2)).mul_(a).mul_(share), shape_a) if need_a else None
        rel_b = _sum_to(torch.matmul(a.transpose(-1, -2), ratio).mul_(b).mul_(share), shape_b) if need_b else None
        return rel_a, rel_b, None, None


class _Add(Function):
    @staticmethod
    def forward(ctx, a: torch.Tensor, b: torch.Tensor, epsilon: float) -> torch.Tensor:
        y = a + b
        inverse = _reciprocal(y, epsilon)
        need_a, need_b = ctx.needs_input_grad[:2]
        ctx.shapes = a.shape, b.shape
        ctx.save_for_backward(a * inverse if need_a else None, b * inverse if need_b else None)
        return y

    @staticmethod
    def backward(ctx, relevance: torch.Tensor):
        share_a, share_b = ctx.saved_tensors
        shape_a, shape_b = ctx.shapes
        return (None if share_a is None else _sum_to(relevance * share_a, shape_a),
                None if share_b is None else _sum_to(relevance * share_b, shape_b), None)


class _Affine(Function):
    @staticmethod
    def forward(ctx, fn: Callable[..., torch.Tensor], epsilon: float, *inputs: torch.Tensor) -> torch.Tensor:
        y = fn(*inputs)
        ctx.save_for_backward(*inputs, _reciprocal(y, epsilon))
        ctx.fn = fn
        return y

    @staticmethod
    def backward(ctx, relevance: torch.Tensor):
        *inputs, inverse = ctx.saved_tensors
        needs = ctx.needs_input_grad[2:]
        with torch.enable_grad():
            leaves = [x.detach().requires_grad_(need) for x, need in zip(inputs, needs)]
            wanted = [leaf for leaf, need in zip(leaves, needs) if need]
            grads = torch.autograd.grad(ctx.fn(*leaves), wanted, relevance * inverse) if wanted else ()
        pending = iter(grads)
        relevances = [next(pending) * x if need else None for x, need in zip(inputs, needs)]  # grads may be shared
        return (None, None, *relevances)


class _Identity(Function):
    @staticmethod
    def forward(ctx, fn: Callable[[torch.Tensor], torch.Tensor],  # noqa: ARG004 (torch's Function signature)
                x: torch.Tensor) -> torch.Tensor:
        y = fn(x)
        if y.shape != x.shape:
            raise ValueError(f"the identity rule needs an elementwise function, but it maps shape {tuple(x.shape)} "
                             f"to {tuple(y.shape)}.")
        return y.clone() if y is x else y

    @staticmethod
    def backward(ctx, relevance: torch.Tensor):  # noqa: ARG004 (torch's Function signature)
        return None, relevance


class _LayerNorm(Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: Optional[torch.Tensor],  # noqa: PLR0917 (Function.apply is positional)
                bias: Optional[torch.Tensor], eps: float,
                epsilon: float) -> torch.Tensor:
        y, _, rstd = torch.native_layer_norm(x, x.shape[-1:], weight, bias, eps)
        scale = _reciprocal(y, epsilon).mul_(rstd)  # rstd = 1 / std, held constant
        if weight is not None:
            scale = scale.mul_(weight)
        ctx.save_for_backward(x, scale)
        return y

    @staticmethod
    def backward(ctx, relevance: torch.Tensor):
        x, scale = ctx.saved_tensors
        u = relevance * scale
        return u.sub_(u.mean(-1, keepdim=True)).mul_(x), None, None, None, None


# ----------------------------------------------------------------------------------------------------------------
# the rules as functions


def softmax(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Softmax of ``x`` along ``dim`` with the AttnLRP softmax rule ``R_x = x * (R - y * sum(R))``."""
    return _Softmax.apply(x, dim)


def matmul(a: torch.Tensor, b: torch.Tensor, *, epsilon: float = 1e-12) -> torch.Tensor:
    """Multiply ``a @ b`` with the uniform rule: every term's relevance split in halves between its factors.

    A factor that does not require gradients takes no share. ``epsilon`` stabilizes the division by the output.
    """
    return _Product.apply(a, b, False, epsilon)


def multiply(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Multiply ``a * b`` (elementwise, broadcasting) with the uniform rule: each factor gets half the relevance.

    A factor gets all of it if the other does not require gradients.
    """
    return _Product.apply(a, b, True, 0.0)


def add(a: torch.Tensor, b: torch.Tensor, *, epsilon: float = 1e-12) -> torch.Tensor:
    """Add ``a + b`` with the epsilon rule: ``R_a = a * R / (a + b)``, ``R_b = b * R / (a + b)``."""
    return _Add.apply(a, b, epsilon)


def affine(fn: Callable[..., torch.Tensor], *inputs: torch.Tensor, epsilon: float = 1e-12) -> torch.Tensor:
    """``fn(*inputs)`` with the epsilon rule ``R_x = x * J^T (R / y)`` for a function affine in its inputs.

    Parameters
    ----------
    fn : callable
        Affine in every input (e.g. a rotation with constant angles, a projection with a bias); it is called
        again in the backward pass to take its vector-Jacobian product.
    *inputs : torch.Tensor
        Its inputs.
    epsilon : float
        Stabilizer of the division by the output.
    """
    return _Affine.apply(fn, epsilon, *inputs)


def identity(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """``fn(x)`` for an elementwise ``fn`` with the identity rule ``R_x = R``."""
    return _Identity.apply(fn, x)


def layer_norm(x: torch.Tensor, weight: Optional[torch.Tensor], bias: Optional[torch.Tensor], *, eps: float = 1e-5,
               epsilon: float = 1e-12) -> torch.Tensor:
    """LayerNorm over the last axis with its standard deviation held constant and the epsilon rule for the rest.

    ``y = w * (x - mean(x)) / std(x) + b`` is affine in ``x`` once ``std(x)`` is a constant, so
    ``R_x = x * (u - mean(u))`` with ``u = w * R / (y * std(x))``.
    """
    return _LayerNorm.apply(x, weight, bias, eps, epsilon)


# ----------------------------------------------------------------------------------------------------------------
# the operations the supported forwards are written in


class GradientOps:
    """The operations of the supported forwards, with their plain autograd gradients.

    The forwards in :mod:`crp._transformers.forwards` compute every operation that needs a rule through one of
    these methods; :class:`LRPOps` gives them the AttnLRP rules. Both compute the same values.
    """

    #: Treat the attention weights as constants (CP-LRP).
    constant_attention = False
    #: Treat the gate of a gated MLP as a constant (CP-LRP).
    constant_gate = False

    def add(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Add two tensors (residual connections, position embeddings)."""
        return a + b

    def affine(self, fn: Callable[..., torch.Tensor], *inputs: torch.Tensor) -> torch.Tensor:
        """Apply a function affine in its inputs (rotary embeddings, projections without a module)."""
        return fn(*inputs)

    def identity(self, fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """Apply an elementwise function (activations, RMSNorm, scaling and masking of attention scores)."""
        return fn(x)

    def matmul(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Multiply two input-dependent tensors as matrices."""
        return torch.matmul(a, b)

    def multiply(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Multiply two tensors elementwise (the gate of a gated MLP)."""
        return a * b

    def softmax(self, x: torch.Tensor, dim: int = -1) -> torch.Tensor:
        """Compute the softmax of the attention scores."""
        return softmax_value(x, dim)

    def layer_norm(self, x: torch.Tensor, weight: Optional[torch.Tensor], bias: Optional[torch.Tensor], *,
                   eps: float) -> torch.Tensor:
        """LayerNorm over the last axis."""
        return F.layer_norm(x, x.shape[-1:], weight, bias, eps)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class LRPOps(GradientOps):
    """The operations of the supported forwards with the AttnLRP (or CP-LRP) rules of this module.

    Parameters
    ----------
    variant : {"attnlrp", "cp-lrp"}
        ``"attnlrp"`` propagates through the softmax and both factors of every product; ``"cp-lrp"`` treats the
        attention weights and the gates of gated MLPs as constants (Ali et al., "XAI for Transformers: Better
        Explanations through Conservative Propagation", ICML 2022), so all relevance takes the value path.
    epsilon : float
        Stabilizer of the epsilon rules of sums, products and affine maps (not of the Linear layers, whose rules
        come from the zennit composite).
    """

    def __init__(self, variant: str = "attnlrp", *, epsilon: float = 1e-12) -> None:
        self.variant = check_choice(variant, VARIANTS, name="variant")
        self.epsilon = float(check_type(epsilon, (int, float), name="epsilon", expected="a small positive float"))
        self.constant_attention = self.constant_gate = variant == "cp-lrp"

    def add(self, a, b):  # noqa: D102 (documented in GradientOps)
        return add(a, b, epsilon=self.epsilon)

    def affine(self, fn, *inputs):  # noqa: D102
        return affine(fn, *inputs, epsilon=self.epsilon)

    def identity(self, fn, x):  # noqa: D102
        return identity(fn, x)

    def matmul(self, a, b):  # noqa: D102
        return matmul(a, b, epsilon=self.epsilon)

    def multiply(self, a, b):  # noqa: D102
        return multiply(a, b)

    def softmax(self, x, dim=-1):  # noqa: D102
        return softmax(x, dim)

    def layer_norm(self, x, weight, bias, *, eps):  # noqa: D102
        return layer_norm(x, weight, bias, eps=eps, epsilon=self.epsilon)

    def __repr__(self) -> str:
        return f"LRPOps(variant={self.variant!r}, epsilon={self.epsilon!r})"

