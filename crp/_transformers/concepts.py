"""Concepts of layers with a token axis: neurons of ``(N, T, C)`` outputs, attention heads, token positions.

A transformer's layer outputs have a token axis after the batch axis, so :class:`crp.concepts.ChannelConcept`
(channels on axis 1) would take tokens for concepts. :class:`TokenConcept` takes the concepts from another
axis (by default the last: MLP neurons, residual-stream dimensions) and every token as one of a concept's
"neurons", so that ``mask_rf`` restricts a concept to chosen token positions (the transformer analogue of a
receptive field) and :meth:`TokenConcept.reference_sampling` ranks (sample, token) pairs for Relevance
Maximization. :class:`HeadConcept` makes every attention head one concept.
"""
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from crp._attribution.concepts import Concept, RowMask
from crp._utils.checks import check_choice, check_int, check_value

__all__ = ["TokenConcept", "HeadConcept", "PatchConcept", "AxisMask", "TokenMask"]

ConceptIds = Union[int, Sequence[int]]
TokenMap = Dict[int, Union[int, Sequence[int]]]


def _ids(values) -> List[int]:
    return [int(v) for v in np.atleast_1d(np.asarray(values, dtype=np.int64))]


class _AxisRowMask(RowMask):
    """A row mask along the concept axis of a row with a token axis (row axis 0)."""

    def __init__(self, batch_id: int, *, axis: int, groups: Optional[int], layer_name: Optional[str],
                 noun: str) -> None:
        super().__init__(batch_id, layer_name)
        self.axis, self.groups, self.noun = axis, groups, noun

    def _shape(self, row_shape: torch.Size) -> Tuple[Tuple[int, ...], int]:
        """Return the row's shape with the concept axis split off where concepts group the last axis, and that axis."""
        shape = tuple(row_shape)
        if self.groups is not None:
            if shape[-1] % self.groups:
                raise IndexError(f"{self._name()} has {shape[-1]} features on its last axis, which do not split "
                                 f"into {self.groups} {self.noun}s; give the layer's number of {self.noun}s.")
            shape = (*shape[:-1], self.groups, shape[-1] // self.groups)
            return shape, len(shape) - 2
        axis = self.axis - 1 if self.axis > 0 else self.axis
        if not -len(shape) <= axis < len(shape):
            raise IndexError(f"{self._name()} has outputs of shape (N, {', '.join(map(str, shape))}) without a "
                             f"concept axis {self.axis}; choose the concept axis of this layer.")
        return shape, axis % len(shape)

    def _check(self, ids: List[int], size: int, noun: str) -> None:
        bad = [i for i in ids if not -size <= i < size]
        if bad:
            raise IndexError(f"{noun} ids {bad} are out of range for {self._name()} with {size} {noun}s; use ids in "
                             f"[0, {size - 1}].")


class AxisMask(_AxisRowMask):
    """Keep the concepts ``concept_ids`` along the concept axis of one row, at every token."""

    def __init__(self, batch_id: int, concept_ids: ConceptIds, *, axis: int = -1, groups: Optional[int] = None,
                 layer_name: Optional[str] = None, noun: str = "concept") -> None:
        super().__init__(batch_id, axis=axis, groups=groups, layer_name=layer_name, noun=noun)
        self.concept_ids = _ids(concept_ids)

    def row_mask(self, row_shape: torch.Size, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """Return a mask broadcastable to ``row_shape``: 1 at the kept concepts."""
        shape, axis = self._shape(row_shape)
        self._check(self.concept_ids, shape[axis], self.noun)
        mask = torch.zeros(shape[axis], dtype=dtype, device=device)
        mask[self.concept_ids] = 1
        view = [1] * len(shape)
        view[axis] = shape[axis]
        mask = mask.view(view)
        return mask.expand(shape).reshape(row_shape) if self.groups is not None else mask


class TokenMask(_AxisRowMask):
    """Keep chosen concepts at chosen token positions of one row: ``{concept: token positions}``."""

    def __init__(self, batch_id: int, c_n_map: TokenMap, *, axis: int = -1, groups: Optional[int] = None,
                 layer_name: Optional[str] = None, noun: str = "concept") -> None:
        super().__init__(batch_id, axis=axis, groups=groups, layer_name=layer_name, noun=noun)
        self.c_n_map = {int(concept): _ids(tokens) for concept, tokens in c_n_map.items()}

    def row_mask(self, row_shape: torch.Size, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """Return a mask broadcastable to ``row_shape``: 1 at the kept (token, concept) pairs."""
        shape, axis = self._shape(row_shape)
        if axis == 0:
            raise IndexError(f"the concepts of {self._name()} are its tokens; restrict them with mask, not mask_rf.")
        n_tokens, n_concepts = shape[0], shape[axis]
        mask = torch.zeros(n_tokens, n_concepts, dtype=dtype, device=device)
        self._check(list(self.c_n_map), n_concepts, self.noun)
        for concept, tokens in self.c_n_map.items():
            bad = [t for t in tokens if not -n_tokens <= t < n_tokens]
            if bad:
                raise IndexError(f"token positions {bad} of {self.noun} {concept} are out of range for "
                                 f"{self._name()} with {n_tokens} tokens; use positions in [0, {n_tokens - 1}].")
            mask[tokens, concept] = 1
        view = [1] * len(shape)
        view[0], view[axis] = n_tokens, n_concepts
        mask = mask.view(view)
        return mask.expand(shape).reshape(row_shape) if self.groups is not None else mask


class TokenConcept(Concept):
    """Every index along one axis of a layer output ``(N, T, ...)`` is a concept; its tokens are its neurons.

    Parameters
    ----------
    axis : int
        The concept axis of the layer output, counted with the batch axis: -1 (the default) for MLP neurons and
        residual-stream dimensions of ``(N, T, C)`` outputs; 1 makes every token position a concept (all
        dimensions at that token).

    Examples
    --------
    >>> concept = TokenConcept()
    >>> conditions = [{"neurons.1": [7], "y": [target]}]              # neuron 7 at every token
    >>> conditions = [{"neurons.1": {7: [3, 4]}, "y": [target]}]      # neuron 7 at tokens 3 and 4 only
    >>> attribution(embeddings, conditions, AttnLRP(), mask_map=concept.mask_rf)
    """

    noun = "concept"

    def __init__(self, axis: int = -1) -> None:
        check_int(axis, name="axis")
        check_value(axis != 0, axis, name="axis", expected="a concept axis other than the batch axis 0")
        self.axis = axis

    def _groups(self) -> Optional[int]:
        return None

    def mask(self, batch_id: int, concept_ids: ConceptIds, layer_name: Optional[str] = None) -> AxisMask:
        """Keep the concepts ``concept_ids`` (an int or a list; ``[]`` masks all) at every token of row ``batch_id``."""
        return AxisMask(batch_id, concept_ids, axis=self.axis, groups=self._groups(), layer_name=layer_name,
                        noun=self.noun)

    def mask_rf(self, batch_id: int, c_n_map: TokenMap, layer_name: Optional[str] = None) -> TokenMask:
        """Keep concepts only at chosen token positions: ``c_n_map`` maps a concept to positions (or one)."""
        return TokenMask(batch_id, c_n_map, axis=self.axis, groups=self._groups(), layer_name=layer_name,
                         noun=self.noun)

    def per_token(self, relevance: torch.Tensor) -> torch.Tensor:
        """``(N, T, n_concepts)``: every concept's relevance (or activation) at every token, summed over the rest."""
        if not isinstance(relevance, torch.Tensor) or relevance.dim() < 3:
            shape = tuple(relevance.shape) if isinstance(relevance, torch.Tensor) else type(relevance).__name__
            raise ValueError(f"relevance must be a tensor of shape (N, T, ...) with a token axis, got {shape}.")
        groups = self._groups()
        if groups is not None:
            relevance = relevance.reshape(*relevance.shape[:-1], groups, -1)
            axis = relevance.dim() - 2
        else:
            axis = self.axis % relevance.dim()
        if axis == 1:
            return torch.diag_embed(relevance.reshape(*relevance.shape[:2], -1).sum(-1))
        moved = relevance.movedim(axis, -1)
        if moved.dim() == 3:  # (N, T, C) already: nothing to sum (and no copy)
            return moved
        return moved.reshape(moved.shape[0], moved.shape[1], -1, moved.shape[-1]).sum(2)

    def attribute(self, relevance: torch.Tensor, mask: Optional[torch.Tensor] = None,
                  layer_name: Optional[str] = None,  # noqa: ARG002 - part of the Concept interface
                  abs_norm: bool = True) -> torch.Tensor:
        """Sum the relevance of every concept over tokens, ``(N, n_concepts)``.

        Parameters
        ----------
        relevance : torch.Tensor
            ``(N, T, ...)``.
        mask : torch.Tensor, optional
            Multiplied with ``relevance`` first (e.g. to restrict to some tokens).
        layer_name : str, optional
            Unused; part of the :class:`crp.concepts.Concept` interface.
        abs_norm : bool
            Divide every row by the sum of its absolute values (plus 1e-10).
        """
        if mask is not None:
            relevance = relevance * mask
        values = self.per_token(relevance).sum(1)
        return values / (values.abs().sum(-1, keepdim=True) + 1e-10) if abs_norm else values

    def reference_sampling(self, relevance: torch.Tensor,
                           layer_name: Optional[str] = None,  # noqa: ARG002 - part of the Concept interface
                           max_target: str = "sum", abs_norm: bool = True
                           ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Sort the samples of a batch by their relevance (or activation) for every concept.

        Parameters
        ----------
        relevance : torch.Tensor
            ``(N, T, ...)``.
        layer_name : str, optional
            Unused; part of the :class:`crp.concepts.Concept` interface.
        max_target : {"sum", "max"}
            Rank by the concept's value summed over tokens, or at its largest token.
        abs_norm : bool
            Normalize every sample's concept values by their absolute sum first.

        Returns
        -------
        sample_order, values, tokens : torch.Tensor
            Each ``(N, n_concepts)``: column ``c`` lists the batch indices by decreasing value for concept ``c``
            (ties keep the lower index first), the sorted values, and each sample's token position with the
            largest value of the concept (its "neuron", see :meth:`get_rf_indices`).

        Notes
        -----
        Tokens whose values are all ``-inf`` are absent: never chosen and adding nothing to a sum.
        :class:`crp.transformers.TextFeatureVisualization` marks padded tokens so.
        """
        values, tokens = self.scores(relevance, layer_name, max_target, abs_norm)
        values, order = torch.sort(values, dim=0, descending=True, stable=True)
        return order, values, tokens.gather(0, order)

    def scores(self, relevance: torch.Tensor,
               layer_name: Optional[str] = None,  # noqa: ARG002 - part of the Concept interface
               max_target: str = "sum", abs_norm: bool = True) -> Tuple[torch.Tensor, torch.Tensor]:
        """Score every concept of every sample: its value and its token, each ``(N, n_concepts)``, in batch order.

        The arguments are those of :meth:`reference_sampling`; the token is the one with the concept's largest
        value (the first of equal ones). Padded tokens marked with ``-inf`` are left out.
        """
        check_choice(max_target, ("sum", "max"), name="max_target")
        per_token = self._ranked_per_token(relevance)
        top, tokens = first_max(per_token)
        if max_target == "sum":  # -inf (padding) counts 0; NaN and +inf stay what they are
            values = torch.nan_to_num(per_token, nan=float("nan"), posinf=float("inf"), neginf=0.0).sum(1)
        else:
            values = top
        if abs_norm:
            values = values / (values.abs().sum(-1, keepdim=True) + 1e-10)
        return values, tokens

    def _ranked_per_token(self, relevance: torch.Tensor) -> torch.Tensor:
        """:meth:`per_token` as :meth:`scores` ranks it: tokens marked ``-inf`` are left out."""
        return self.per_token(relevance)

    def get_rf_indices(self, output_shape: Sequence[int],
                       layer_name: Optional[str] = None,  # noqa: ARG002 - part of the Concept interface
                       ) -> np.ndarray:
        """Return the "neurons" of a concept: the token positions ``0 .. T - 1`` of an output of shape ``(T, ...)``."""
        return np.arange(int(output_shape[0]))


class PatchConcept(TokenConcept):
    """A :class:`TokenConcept` of a ViT layer, ranked at the patch tokens only: the class token is left out.

    The class token (token 0 of torchvision's ViT) has no place in the image; the patch tokens have, as the
    positions of a CNN's feature map do. Ranking a neuron's (sample, token) pairs over the patch tokens makes its
    Relevance Maximization references show where in an image it is used, and :class:`VisionFeatureVisualization`
    crops them to that patch. A concept's relevance (:meth:`attribute`) is its relevance at the patch tokens.
    Masks are those of :class:`TokenConcept`: ``mask`` keeps the neuron at every token, ``mask_rf`` at chosen
    tokens.

    Parameters
    ----------
    axis : int
        The concept axis, as in :class:`TokenConcept`.
    class_tokens : int
        The leading tokens that are not patches: 1 for the class token; more for models with register tokens.
    """

    def __init__(self, axis: int = -1, class_tokens: int = 1) -> None:
        super().__init__(axis)
        check_value(axis != 1, axis, name="axis", expected="a concept axis other than the token axis 1")
        self.class_tokens = check_int(class_tokens, name="class_tokens", minimum=0)

    def per_token(self, relevance: torch.Tensor) -> torch.Tensor:
        """``(N, T, n_concepts)`` as :meth:`TokenConcept.per_token`, zero at the class tokens."""
        return self._at_class_tokens(super().per_token(relevance), 0.0)

    def _ranked_per_token(self, relevance: torch.Tensor) -> torch.Tensor:
        return self._at_class_tokens(super().per_token(relevance), float("-inf"))

    def _at_class_tokens(self, values: torch.Tensor, fill: float) -> torch.Tensor:
        if values.shape[1] <= self.class_tokens:
            raise ValueError(f"the layer has {values.shape[1]} tokens, none of them a patch after {self.class_tokens} "
                             f"class tokens; give class_tokens the number of leading non-patch tokens.")
        head = torch.full_like(values[:, :self.class_tokens], fill)
        return torch.cat([head, values[:, self.class_tokens:]], dim=1)


def first_max(per_token: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Return the largest value over axis 1 of ``(N, T, C)`` and its first position, each ``(N, C)``.

    ``per_token.max(1)`` without its slow index search on CPU (about twice as fast there): the maximum is one
    reduction; its first position is the least of ``position + T * (value != maximum)``, a second reduction over
    small ints. A column holding NaN (whose maximum is NaN) gets position 0.
    """
    top = per_token.amax(1, keepdim=True)
    n_tokens = per_token.shape[1]
    dtype = torch.uint8 if 2 * n_tokens <= 2 ** 8 else torch.int16 if 2 * n_tokens <= 2 ** 15 else torch.int64
    positions = torch.arange(n_tokens, device=per_token.device, dtype=dtype).view(1, -1, 1)
    miss = (per_token != top) & ~top.isnan()
    return top.squeeze(1), miss.to(dtype).mul_(n_tokens).add_(positions).amin(1).long()


class HeadConcept(TokenConcept):
    """Every attention head is a concept: the heads' output ``(N, T, H, D)`` before the output projection.

    :class:`crp.transformers.LanguageModel` and :class:`crp.transformers.VisionModel` record it at their taps
    ``heads.<i>``. For an output that holds the heads side by side, ``(N, T, H * D)``, give ``n_heads``.

    Parameters
    ----------
    n_heads : int, optional
        Split the last axis into this many heads; None for ``(N, T, H, D)`` outputs.
    """

    noun = "head"

    def __init__(self, n_heads: Optional[int] = None) -> None:
        super().__init__(axis=2)
        self.n_heads = None if n_heads is None else check_int(n_heads, name="n_heads", minimum=1)

    def _groups(self) -> Optional[int]:
        return self.n_heads
