"""Conditional attributions of language models (token ids or embeddings in, one value per token out), composites.

:class:`TokenAttribution` is :class:`crp.attribution.CondAttribution` for a
:class:`crp.transformers.LanguageModel`: it takes token ids (embedding them) or embeddings, an optional attention
mask, masks the last axis of a layer output by default (:class:`crp.transformers.TokenConcept`), and sums the
input relevance over the embedding into one value per token. :class:`AttnLRP` and :class:`CPLRP` are zennit
composites: the epsilon rule on every Linear and convolution plus :class:`crp.transformers.TransformerRules`.
"""
from typing import Dict, Iterator, List, Optional, Sequence, Union

import torch
from torch import nn
from zennit.composites import LayerMapComposite
from zennit.core import Composite
from zennit.types import Convolution

from crp._attribution.conditions import InitRel, MaskMap
from crp._attribution.engine import CondAttribution
from crp._attribution.passes import attrResult
from crp._transformers.adapters import LanguageModel, masked_embeddings
from crp._transformers.concepts import TokenConcept
from crp._transformers.hooks import FastEpsilon
from crp._transformers.support import TransformerRules

__all__ = ["TokenAttribution", "AttnLRP", "CPLRP"]

_TOKEN_MASK = TokenConcept().mask


class TokenAttribution(CondAttribution):
    """Conditional attributions of a :class:`crp.transformers.LanguageModel`, one heatmap value per token.

    Parameters
    ----------
    model : crp.transformers.LanguageModel
        The adapted language model.
    device, overwrite_data_grad, no_param_grad
        As in :class:`crp.attribution.CondAttribution`.

    Notes
    -----
    ``data`` is token ids ``(N, T)`` (embedded with :meth:`LanguageModel.embed`) or token embeddings
    ``(N, T, E)`` that require gradients; ``attention_mask`` (``(N, T)``, 1 for tokens, 0 for padding) zeroes the
    embeddings of padded tokens, which then get no relevance. The heatmap is the input relevance summed over the
    embedding, ``(rows, T)``. The default ``mask_map`` is :meth:`TokenConcept.mask`: concepts on the last axis
    of ``(N, T, C)`` outputs; pass ``HeadConcept().mask`` (or a dict) for attention heads.

    Examples
    --------
    >>> attribution = TokenAttribution(LanguageModel(model))
    >>> result = attribution(input_ids, [{"y": [next_token]}], AttnLRP(), attention_mask=attention_mask)
    >>> result.heatmap  # (N, T): the relevance of every token for the next-token logit
    """

    model: LanguageModel

    def __init__(self, model: LanguageModel, device: Optional[torch.device] = None,
                 overwrite_data_grad: bool = True, no_param_grad: bool = True) -> None:
        if not isinstance(model, LanguageModel):
            raise TypeError(f"model must be a crp.transformers.LanguageModel, got {type(model).__name__}. Wrap the "
                            f"Hugging Face model: TokenAttribution(LanguageModel(model)).")
        super().__init__(model, device, overwrite_data_grad, no_param_grad)

    def __call__(  # noqa: PLR0917 (CondAttribution's positional signature)
        self, data: torch.Tensor, conditions: List[Dict], composite: Optional[Composite] = None,
        record_layer: Sequence[str] = (), mask_map: MaskMap = _TOKEN_MASK, start_layer: Optional[str] = None,
        init_rel: InitRel = None, on_device: Optional[Union[str, torch.device]] = None, exclude_parallel: bool = True,
        *, heatmap: bool = True, attention_mask: Optional[torch.Tensor] = None,
    ) -> attrResult:
        """Compute conditional attributions as :meth:`crp.attribution.CondAttribution.__call__` does.

        ``data`` may be token ids, ``attention_mask`` marks the padding, and the heatmap has one value per token.
        """
        return super().__call__(self._embedded(data, attention_mask), conditions, composite, record_layer, mask_map,
                                start_layer, init_rel, on_device, exclude_parallel, heatmap=heatmap)

    def generate(  # noqa: PLR0917 (CondAttribution's positional signature)
        self, data: torch.Tensor, conditions: List[Dict], composite: Optional[Composite] = None,
        record_layer: Sequence[str] = (), mask_map: MaskMap = _TOKEN_MASK, start_layer: Optional[str] = None,
        init_rel: InitRel = None, batch_size: int = 10, on_device: Optional[Union[str, torch.device]] = None,
        exclude_parallel: bool = True, verbose: bool = True, *, attention_mask: Optional[torch.Tensor] = None,
    ) -> Iterator[attrResult]:
        """As :meth:`crp.attribution.CondAttribution.generate`, with token ids and ``attention_mask`` allowed."""
        return super().generate(self._embedded(data, attention_mask), conditions, composite, record_layer, mask_map,
                                start_layer, init_rel, batch_size, on_device, exclude_parallel, verbose)

    def heatmap_modifier(self, data: torch.Tensor,
                         on_device: Optional[Union[str, torch.device]] = None) -> torch.Tensor:
        """Sum the input relevance over the embedding: one value per token, ``(rows, T)``."""
        if data.grad is None:
            raise RuntimeError("the embeddings received no gradient; the backward pass did not reach the input.")
        heatmap = data.grad.detach()
        heatmap = heatmap.to(on_device) if on_device else heatmap
        return heatmap.sum(-1)

    def _embedded(self, data, attention_mask: Optional[torch.Tensor]) -> torch.Tensor:
        if isinstance(data, torch.Tensor) and not data.is_floating_point():
            return self.model.embed(data, attention_mask)
        if attention_mask is None:
            return data
        return masked_embeddings(data, attention_mask)


class AttnLRP(LayerMapComposite):
    """AttnLRP (Achtibat et al., ICML 2024) as a zennit composite for the supported transformers.

    The epsilon rule on every ``nn.Linear`` (with GPT-2's ``Conv1D``) and convolution (as
    :class:`crp.transformers.FastEpsilon`, equal to zennit's ``Epsilon`` at a third of its cost), and the rules
    of :class:`crp.transformers.TransformerRules` for attention, norms, activations, gated MLPs and sums.

    Parameters
    ----------
    epsilon : float
        Stabilizer of the epsilon rule of the Linear and convolutional layers.
    rule_epsilon : float
        Stabilizer of the epsilon rules inside the blocks (sums, products, affine maps).
    layer_map : list of (type, zennit.core.Hook), optional
        Rules that take precedence, e.g. ``[(torch.nn.Conv2d, Gamma(0.25))]``.
    canonizers : list of zennit.canonizers.Canonizer, optional
        Further canonizers, applied after the transformer rules.
    """

    variant = "attnlrp"

    def __init__(self, epsilon: float = 1e-6, *, rule_epsilon: float = 1e-12,
                 layer_map: Optional[list] = None, canonizers: Optional[list] = None) -> None:
        layer_map = list(layer_map or []) + [
            (Convolution, FastEpsilon(epsilon=epsilon)),
            (nn.Linear, FastEpsilon(epsilon=epsilon)),
        ]
        canonizers = [TransformerRules(self.variant, epsilon=rule_epsilon), *(canonizers or [])]
        super().__init__(layer_map=layer_map, canonizers=canonizers)


class CPLRP(AttnLRP):
    """CP-LRP (Ali et al., ICML 2022): :class:`AttnLRP` with the attention weights and MLP gates as constants."""

    variant = "cp-lrp"
