"""The LLaMA family (Llama, Qwen2, Qwen3 of Hugging Face transformers): the forwards of its modules.

The forwards follow ``transformers.models.llama.modeling_llama`` for the explanation case: no cache, eval mode,
the padding mask of :class:`crp._transformers.forwards.TokenContext` (with the sliding window of an attention
module that has one), Qwen3's norms of queries and keys where present.
"""
import functools

import torch

from crp._transformers.forwards import HostModule, Setup, TokenContext, attend

__all__ = ["model_forward", "layer_forward", "attention_forward", "mlp_forward", "rotate"]


def model_forward(model: HostModule, setup: Setup,  # noqa: ARG001 (the installed forwards' signature)
                  embeddings: torch.Tensor, *, padding: torch.Tensor) -> torch.Tensor:
    """``LlamaModel``: rotary angles for positions ``0 .. T - 1``, the decoder layers, the final norm."""
    positions = torch.arange(embeddings.shape[1], device=embeddings.device)[None]
    context = TokenContext(padding, rotary=model.rotary_emb(embeddings, positions))
    hidden = embeddings
    for layer in model.layers[: model.config.num_hidden_layers]:
        hidden = layer(hidden, context=context)
    return model.norm(hidden)


def layer_forward(layer: HostModule, setup: Setup, hidden: torch.Tensor, *, context: TokenContext) -> torch.Tensor:
    """``LlamaDecoderLayer``: pre-norm attention and MLP, each added to the residual stream."""
    hidden = setup.ops.add(hidden, layer.self_attn(layer.input_layernorm(hidden), context=context))
    return setup.ops.add(hidden, layer.mlp(layer.post_attention_layernorm(hidden)))


def rotate(tensor: torch.Tensor, *, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Apply the rotary position embedding ``x cos + rotate_half(x) sin`` (linear in ``x``)."""
    half = tensor.shape[-1] // 2
    rotated = torch.cat((-tensor[..., half:], tensor[..., :half]), dim=-1)
    return tensor * cos + rotated * sin


def _repeat_kv(tensor: torch.Tensor, groups: int) -> torch.Tensor:
    if groups == 1:
        return tensor
    batch, heads, length, dim = tensor.shape
    return tensor[:, :, None].expand(batch, heads, groups, length, dim).reshape(batch, heads * groups, length, dim)


def attention_forward(attention: HostModule, setup: Setup, hidden: torch.Tensor, *,
                      context: TokenContext) -> torch.Tensor:
    """``LlamaAttention`` (and Qwen2's, Qwen3's): projections, rotary embedding, causal attention, ``o_proj``.

    Keys and values are repeated for grouped-query attention; the heads pass the heads' tap before ``o_proj``.
    """
    shape = (*hidden.shape[:-1], -1, attention.head_dim)
    query, key = attention.q_proj(hidden).view(shape), attention.k_proj(hidden).view(shape)
    value = attention.v_proj(hidden).view(shape)
    if getattr(attention, "q_norm", None) is not None:
        query, key = attention.q_norm(query), attention.k_norm(key)
    query, key, value = (t.transpose(1, 2) for t in (query, key, value))
    if context.rotary is None:
        raise ValueError("the LLaMA attention needs the rotary angles of its model's forward; call the model.")
    cos, sin = context.rotary
    rotation = functools.partial(rotate, cos=cos.unsqueeze(1), sin=sin.unsqueeze(1))
    query, key = setup.ops.affine(rotation, query), setup.ops.affine(rotation, key)
    key, value = (_repeat_kv(t, attention.num_key_value_groups) for t in (key, value))
    mask = context.mask(query.dtype, getattr(attention, "sliding_window", None))
    heads = attend(query, key, value, ops=setup.ops, scaling=attention.scaling, mask=mask)
    heads = setup.head_tap(attention)(heads)
    return attention.o_proj(heads.reshape(*hidden.shape[:-1], -1))


def mlp_forward(mlp: HostModule, setup: Setup, hidden: torch.Tensor) -> torch.Tensor:
    """``LlamaMLP``: ``down_proj(act(gate_proj(x)) * up_proj(x))`` with the neurons' tap before ``down_proj``.

    Under CP-LRP the gate is a constant, so all relevance of a neuron takes the ``up_proj`` path.
    """
    gate = mlp.act_fn(mlp.gate_proj(hidden))
    if setup.ops.constant_gate:
        gate = gate.detach()
    neurons = setup.neuron_tap(mlp)(setup.ops.multiply(gate, mlp.up_proj(hidden)))
    return mlp.down_proj(neurons)
