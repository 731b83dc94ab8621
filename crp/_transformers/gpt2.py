"""GPT-2 (Hugging Face transformers 4.5x and 5.x): the forwards of its modules, written in crp's operations.

The forwards follow ``transformers.models.gpt2.modeling_gpt2`` for the explanation case: no cache, no cross
attention, eval mode, the padding mask of :class:`crp._transformers.forwards.TokenContext`.
"""
import torch

from crp._transformers.forwards import HostModule, Setup, TokenContext, attend, split_heads

__all__ = ["model_forward", "block_forward", "attention_forward", "mlp_forward", "attention_scaling"]


def model_forward(model: HostModule, setup: Setup, embeddings: torch.Tensor, *, padding: torch.Tensor) -> torch.Tensor:
    """``GPT2Model``: token embeddings ``(N, T, E)`` plus position embeddings, the blocks, the final norm."""
    positions = torch.arange(embeddings.shape[1], device=embeddings.device)
    hidden = setup.ops.add(embeddings, model.wpe(positions).to(embeddings.dtype))
    hidden = model.drop(hidden)
    context = TokenContext(padding)
    for block in model.h:
        hidden = block(hidden, context=context)
    return model.ln_f(hidden)


def block_forward(block: HostModule, setup: Setup, hidden: torch.Tensor, *, context: TokenContext) -> torch.Tensor:
    """``GPT2Block``: pre-norm attention and MLP, each added to the residual stream."""
    hidden = setup.ops.add(block.attn(block.ln_1(hidden), context=context), hidden)
    return setup.ops.add(hidden, block.mlp(block.ln_2(hidden)))


def attention_scaling(attention: HostModule) -> float:
    """Return the factor of GPT-2's attention scores: ``1 / sqrt(head_dim)`` and ``1 / (layer_idx + 1)`` where set."""
    scaling = attention.head_dim ** -0.5 if attention.scale_attn_weights else 1.0
    if attention.scale_attn_by_inverse_layer_idx:
        scaling /= float(attention.layer_idx + 1)
    return scaling


def attention_forward(attention: HostModule, setup: Setup, hidden: torch.Tensor, *,
                      context: TokenContext) -> torch.Tensor:
    """``GPT2Attention``: the packed projection ``c_attn``, causal attention, the heads' tap, ``c_proj``."""
    query, key, value = attention.c_attn(hidden).split(attention.split_size, dim=2)
    query, key, value = (split_heads(t, attention.head_dim) for t in (query, key, value))
    heads = attend(query, key, value, ops=setup.ops, scaling=attention_scaling(attention),
                   mask=context.mask(query.dtype))
    heads = setup.head_tap(attention)(heads)
    return attention.resid_dropout(attention.c_proj(heads.reshape(*heads.shape[:2], -1)))


def mlp_forward(mlp: HostModule, setup: Setup, hidden: torch.Tensor) -> torch.Tensor:
    """``GPT2MLP``: ``c_fc``, the activation, the neurons' tap, ``c_proj``."""
    neurons = setup.neuron_tap(mlp)(mlp.act(mlp.c_fc(hidden)))
    return mlp.dropout(mlp.c_proj(neurons))
