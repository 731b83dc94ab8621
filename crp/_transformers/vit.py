"""torchvision's VisionTransformer: the forwards of its encoder, blocks, attention and MLP.

The forwards follow ``torchvision.models.vision_transformer`` in eval mode. ``nn.MultiheadAttention`` is not
called as a module: zennit's composites map it to the ``Pass`` rule (as an activation), which would bypass the
attention rules; its packed input projection (a parameter, not a module) gets the epsilon rule of crp's
operations, its output projection ``out_proj`` is called as a module and gets the composite's rule.
"""
import functools

import torch
import torch.nn.functional as F

from crp._transformers.forwards import HostModule, Setup, attend, split_heads

__all__ = ["encoder_forward", "block_forward", "attention_forward", "mlp_forward"]


def encoder_forward(encoder: HostModule, setup: Setup, hidden: torch.Tensor) -> torch.Tensor:
    """Run ``Encoder``: position embedding, the blocks, the final norm."""
    hidden = setup.ops.add(hidden, encoder.pos_embedding)
    return encoder.ln(encoder.layers(encoder.dropout(hidden)))


def block_forward(block: HostModule, setup: Setup, hidden: torch.Tensor) -> torch.Tensor:
    """``EncoderBlock``: pre-norm attention and MLP, each added to the residual stream."""
    attended = block.dropout(attention_forward(block.self_attention, setup, block.ln_1(hidden)))
    hidden = setup.ops.add(attended, hidden)
    return setup.ops.add(hidden, block.mlp(block.ln_2(hidden)))


def attention_forward(attention: HostModule, setup: Setup, hidden: torch.Tensor) -> torch.Tensor:
    """``nn.MultiheadAttention`` (batch first, self-attention): packed projection, attention, ``out_proj``.

    The heads pass the heads' tap before ``out_proj``.
    """
    head_dim = attention.embed_dim // attention.num_heads
    projection = functools.partial(F.linear, weight=attention.in_proj_weight, bias=attention.in_proj_bias)
    packed = setup.ops.affine(projection, hidden)
    query, key, value = (split_heads(t, head_dim) for t in packed.chunk(3, dim=-1))
    heads = attend(query, key, value, ops=setup.ops, scaling=head_dim ** -0.5, mask=None)
    heads = setup.head_tap(attention)(heads)
    return attention.out_proj(heads.reshape(*hidden.shape[:-1], -1))


def mlp_forward(mlp: HostModule, setup: Setup, hidden: torch.Tensor) -> torch.Tensor:
    """``MLPBlock`` (Linear, GELU, Dropout, Linear, Dropout) with the neurons' tap after the first dropout."""
    neurons = setup.neuron_tap(mlp)(mlp[2](mlp[1](mlp[0](hidden))))
    return mlp[4](mlp[3](neurons))
