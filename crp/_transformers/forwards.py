"""What the supported forwards share: their set-up, the per-call context, attention, norms and activations.

Every supported module gets a forward written in the operations of :class:`crp._transformers.rules.GradientOps`
(plain gradients) or :class:`crp._transformers.rules.LRPOps` (AttnLRP rules); both compute the values of the
original forward. Sub-modules are always called as modules, so zennit's rules and crp's probes on them fire.
The family modules (:mod:`~crp._transformers.gpt2`, :mod:`~crp._transformers.llama`,
:mod:`~crp._transformers.vit`) build on the pieces here.
"""
import functools
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import torch
from torch import nn

from crp._transformers.rules import GradientOps

__all__ = [
    "HostModule", "Setup", "TokenContext", "attend", "split_heads", "layer_norm_forward", "identity_forward",
]

#: A module of Hugging Face ``transformers`` or ``torchvision`` whose attributes the forwards read by name
#: (``module.c_attn``, ``module.head_dim``, ...). Neither package is imported here, and torch types every
#: attribute of an ``nn.Module`` as ``Tensor | Module``, so these modules are typed by duck.
HostModule = Any


def _same(tensor: torch.Tensor) -> torch.Tensor:
    return tensor


@dataclass
class Setup:
    """What an installed forward needs besides its module: the operations and the taps.

    Attributes
    ----------
    ops : GradientOps
        The operations (plain gradients or rules).
    heads : dict of nn.Module to nn.Module
        Attention module -> the tap its heads pass through before the output projection, shape ``(N, T, H, D)``.
    neurons : dict of nn.Module to nn.Module
        MLP module -> the tap its hidden neurons pass through before the down projection, shape ``(N, T, C)``.
    """

    ops: GradientOps
    heads: Mapping[nn.Module, Callable] = field(default_factory=dict)
    neurons: Mapping[nn.Module, Callable] = field(default_factory=dict)

    def head_tap(self, module: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
        """Return the tap of ``module``'s heads (the identity where there is none)."""
        return self.heads.get(module, _same)

    def neuron_tap(self, module: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
        """Return the tap of ``module``'s neurons (the identity where there is none)."""
        return self.neurons.get(module, _same)


class TokenContext:
    """What the blocks of one forward call share: which tokens are real, the rotary angles, the attention masks.

    Parameters
    ----------
    padding : torch.Tensor
        ``(N, T)`` bool, True for real tokens, False for padding.
    rotary : tuple of torch.Tensor, optional
        ``(cos, sin)`` of the rotary embedding, each ``(N or 1, T, D)``.
    """

    def __init__(self, padding: torch.Tensor, rotary: Optional[Tuple[torch.Tensor, torch.Tensor]] = None) -> None:
        self.padding, self.rotary = padding, rotary
        self._masks: Dict[tuple, torch.Tensor] = {}

    def mask(self, dtype: torch.dtype, window: Optional[int] = None) -> torch.Tensor:
        """Return the additive causal mask ``(N, 1, T, T)`` (cached per dtype and window).

        It is 0 where a query may attend to a key, the dtype's minimum elsewhere (later tokens, padded keys, keys
        ``window`` or more tokens back).
        """
        key = (dtype, window)
        if key not in self._masks:
            length = self.padding.shape[1]
            index = torch.arange(length, device=self.padding.device)
            allowed = index[None, :] <= index[:, None]
            if window is not None:
                allowed = allowed & (index[:, None] - index[None, :] < window)
            allowed = allowed[None, None] & self.padding[:, None, None, :]
            zeros = torch.zeros(allowed.shape, dtype=dtype, device=self.padding.device)
            self._masks[key] = zeros.masked_fill(~allowed, torch.finfo(dtype).min)
        return self._masks[key]


def split_heads(tensor: torch.Tensor, head_dim: int) -> torch.Tensor:
    """``(N, T, H * D)`` -> ``(N, H, T, D)``."""
    return tensor.view(*tensor.shape[:-1], -1, head_dim).transpose(1, 2)


def _scale_and_mask(scores: torch.Tensor, *, scaling: float, mask: Optional[torch.Tensor]) -> torch.Tensor:
    scores = scores * scaling
    return scores if mask is None else scores + mask


def attend(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, *, ops: GradientOps, scaling: float,
           mask: Optional[torch.Tensor]) -> torch.Tensor:
    """Scaled dot-product attention of ``(N, H, T, D)`` queries, keys and values; returns ``(N, T, H, D)``.

    The scores ``q k^T`` and the output ``A v`` are products of two input-dependent factors (``ops.matmul``);
    the scaling and the additive mask pass relevance unchanged (a constant factor; a mask that is 0 wherever
    the softmax gives a weight above 0); the softmax has its own rule. With ``ops.constant_attention`` (CP-LRP)
    the weights are constants and all relevance takes the value path. Dropout is left out: the supported
    models are explained in eval mode only.
    """
    if ops.constant_attention:
        query, key = query.detach(), key.detach()
    scores = ops.matmul(query, key.transpose(-1, -2))
    scores = ops.identity(functools.partial(_scale_and_mask, scaling=scaling, mask=mask), scores)
    weights = ops.softmax(scores, -1)
    return ops.matmul(weights, value).transpose(1, 2)


def layer_norm_forward(module: nn.LayerNorm, setup: Setup, hidden: torch.Tensor) -> torch.Tensor:
    """``nn.LayerNorm`` over the last axis (the standard deviation held constant under the rules)."""
    return setup.ops.layer_norm(hidden, module.weight, module.bias, eps=module.eps)


def identity_forward(module: nn.Module, setup: Setup, hidden: torch.Tensor) -> torch.Tensor:
    """Run an elementwise module (activation, RMSNorm) with its class's own forward and the identity rule."""
    return setup.ops.identity(functools.partial(type(module).forward, module), hidden)
