"""Concepts: how a layer's output is split into latent concepts, and how relevance is masked to one of them.

A :class:`Concept` answers four questions for a layer: which part of the gradient (relevance) flow belongs
to given concept ids (:meth:`Concept.mask`, :meth:`Concept.mask_rf`), how much relevance each concept
received (:meth:`Concept.attribute`), how samples rank for each concept (:meth:`Concept.reference_sampling`)
and which neurons make up a concept's spatial extent (:meth:`Concept.get_rf_indices`).
:class:`ChannelConcept` treats every channel (conv) or unit (linear) as one concept, as in the CRP paper
(Achtibat et al., Nature Machine Intelligence 2023, Sec. 4.1).
"""
from abc import ABC, abstractmethod
from typing import Callable, Dict, Iterable, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from crp._utils.checks import check_choice, check_id_shape, check_type, check_value
from crp._utils.text import id_list

__all__ = ["Concept", "ChannelConcept", "RowMask", "ChannelMask", "NeuronMask", "channel_peaks"]

ConceptIds = Union[int, Sequence[int]]
NeuronMap = Dict[int, Union[int, Sequence[int]]]
MaskFn = Callable[[torch.Tensor], torch.Tensor]


class RowMask(ABC):
    """A multiplicative mask on one row (sample) of a batched gradient.

    Calling it returns a new tensor: the gradient with row ``batch_id`` multiplied by :meth:`row_mask`; the
    incoming gradient is never edited in place. :class:`crp.hooks.MaskHook` combines several row masks into
    one multiplication.

    Parameters
    ----------
    batch_id : int
        The row of the batch the mask applies to.
    layer_name : str, optional
        The layer the mask belongs to, used in error messages.
    """

    def __init__(self, batch_id: int, layer_name: Optional[str] = None) -> None:
        self.batch_id = int(batch_id)
        self.layer_name = layer_name

    @abstractmethod
    def row_mask(self, row_shape: torch.Size, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """Return the mask for one row, broadcastable to ``row_shape`` (the gradient without batch axis)."""

    def check_rows(self, n_rows: int) -> None:
        """Raise an IndexError if ``batch_id`` is not a row of a gradient with ``n_rows`` rows."""
        if not 0 <= self.batch_id < n_rows:
            raise IndexError(
                f"mask for {self._name()}: batch_id {self.batch_id} is out of range for a gradient of {n_rows} rows."
            )

    def __call__(self, grad: torch.Tensor) -> torch.Tensor:
        self.check_rows(len(grad))
        factor = torch.ones_like(grad)
        factor[self.batch_id] = self.row_mask(grad.shape[1:], grad.dtype, grad.device)
        return grad * factor

    def _name(self) -> str:
        return "a layer" if self.layer_name is None else f"layer {self.layer_name!r}"


class ChannelMask(RowMask):
    """Keep only the given channels (axis 1) of one row; an empty list masks the whole row."""

    def __init__(self, batch_id: int, channels: Union[int, Iterable[int]], layer_name: Optional[str] = None) -> None:
        super().__init__(batch_id, layer_name)
        array = np.atleast_1d(np.asarray(channels, dtype=np.int64))
        check_id_shape(array.shape, "concept_ids")
        self.channels = [int(c) for c in array]

    def row_mask(self, row_shape: torch.Size, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        n_channels = row_shape[0]
        bad = [c for c in self.channels if not 0 <= c < n_channels]
        if bad:
            raise IndexError(
                f"concept ids {id_list(bad)} are out of range for {self._name()} with {n_channels} channels; "
                f"use ids in [0, {n_channels - 1}]."
            )
        mask = torch.zeros(n_channels, dtype=dtype, device=device)
        mask[self.channels] = 1
        return mask.view(n_channels, *([1] * (len(row_shape) - 1)))


class NeuronMask(RowMask):
    """Keep only chosen neurons of chosen channels of one row.

    Neurons are flat indices into a channel's spatial extent: for an output of shape ``(C, H, W)`` they run
    from 0 to ``H * W - 1`` in row-major order.
    """

    def __init__(self, batch_id: int, c_n_map: NeuronMap, layer_name: Optional[str] = None) -> None:
        super().__init__(batch_id, layer_name)
        self.c_n_map = {
            int(channel): [int(n) for n in np.atleast_1d(np.asarray(neurons, dtype=np.int64))]
            for channel, neurons in c_n_map.items()
        }

    def row_mask(self, row_shape: torch.Size, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        n_channels, n_neurons = row_shape[0], int(np.prod(row_shape[1:], dtype=np.int64))
        mask = torch.zeros(n_channels, n_neurons, dtype=dtype, device=device)
        for channel, neurons in self.c_n_map.items():
            if not 0 <= channel < n_channels:
                raise IndexError(
                    f"channel {channel} is out of range for {self._name()} with {n_channels} channels; "
                    f"use channels in [0, {n_channels - 1}]."
                )
            bad = [n for n in neurons if not 0 <= n < n_neurons]
            if bad:
                raise IndexError(
                    f"neuron ids {id_list(bad)} of channel {channel} are out of range for {self._name()} with "
                    f"{n_neurons} neurons per channel; use flat indices in [0, {n_neurons - 1}]."
                )
            mask[channel, neurons] = 1
        return mask.view(row_shape)


class Concept(ABC):
    """Base class of concept definitions for one or more layers.

    Subclasses decide what a concept is (a channel, a neuron, a direction, ...). The mask factories are
    used by :class:`crp.attribution.CondAttribution` as ``mask_map``; the others by
    :class:`crp.visualization.FeatureVisualization` and :class:`crp.attribution.AttributionGraph`.
    """

    @abstractmethod
    def mask(self, batch_id: int, concept_ids: ConceptIds, layer_name: Optional[str] = None) -> MaskFn:
        """Return a function that keeps only the relevance of ``concept_ids`` in row ``batch_id``.

        A concept without settings may make it a static method, as :class:`ChannelConcept` does (zennit-crp's
        ``ChannelConcept.mask`` is passed around unbound); concepts with settings (a concept axis, a number of
        heads) need the instance.
        """

    @abstractmethod
    def mask_rf(self, batch_id: int, c_n_map: NeuronMap, layer_name: Optional[str] = None) -> MaskFn:
        """Return a function that keeps only the relevance of single neurons of concepts in row ``batch_id``."""

    @abstractmethod
    def attribute(
        self, relevance: torch.Tensor, mask: Optional[torch.Tensor] = None, layer_name: Optional[str] = None,
        abs_norm: bool = True,
    ) -> torch.Tensor:
        """Return the relevance of every concept, shape ``(N, n_concepts)``."""

    @abstractmethod
    def reference_sampling(
        self, relevance: torch.Tensor, layer_name: Optional[str] = None, max_target: str = "sum",
        abs_norm: bool = True,
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Rank the samples of a batch for every concept; return sample order, values and neuron indices."""

    @abstractmethod
    def get_rf_indices(self, output_shape: Sequence[int], layer_name: Optional[str] = None) -> np.ndarray:
        """Return the flat indices of the neurons of one concept for an output of shape ``output_shape``."""

    def scores(self, relevance: torch.Tensor, layer_name: Optional[str] = None, max_target: str = "sum",
               abs_norm: bool = True) -> Tuple[torch.Tensor, torch.Tensor]:
        """Score every concept of every sample: values and most relevant (active) neuron indices, each ``(N, C)``.

        The rows are in batch order; this is :meth:`reference_sampling` without the sorting, which
        FeatureVisualization's top-k ranking does not need. The default un-sorts what
        :meth:`reference_sampling` returns; subclasses may compute it directly.
        """
        order, values, neurons = self.reference_sampling(relevance, layer_name, max_target, abs_norm)
        return torch.empty_like(values).scatter_(0, order, values), torch.empty_like(neurons).scatter_(0, order,
                                                                                                        neurons)


class ChannelConcept(Concept):
    """Every channel of a convolutional output ``(N, C, ...)`` or unit of a linear output ``(N, C)`` is a concept."""

    @staticmethod
    def mask(batch_id: int, concept_ids: ConceptIds, layer_name: Optional[str] = None) -> MaskFn:
        """Mask all but the channels ``concept_ids`` (an int or a list; ``[]`` masks all) of row ``batch_id``.

        Returns
        -------
        ChannelMask
            A callable ``grad -> masked grad`` that returns a new tensor.
        """
        return ChannelMask(batch_id, concept_ids, layer_name)

    @staticmethod
    def mask_rf(batch_id: int, c_n_map: NeuronMap, layer_name: Optional[str] = None) -> MaskFn:
        """Mask all but single neurons: ``c_n_map`` maps channels to flat neuron indices (or one index).

        Returns
        -------
        NeuronMask
            A callable ``grad -> masked grad`` that returns a new tensor.
        """
        return NeuronMask(batch_id, c_n_map, layer_name)

    def attribute(
        self, relevance: torch.Tensor, mask: Optional[torch.Tensor] = None,
        layer_name: Optional[str] = None,  # noqa: ARG002 - part of the Concept interface
        abs_norm: bool = True,
    ) -> torch.Tensor:
        """Sum the relevance of every channel over its spatial extent.

        Parameters
        ----------
        relevance : torch.Tensor
            Relevance of shape ``(N, C, ...)``.
        mask : torch.Tensor, optional
            Multiplied with ``relevance`` first (e.g. to restrict to a region).
        layer_name : str, optional
            Unused; part of the :class:`Concept` interface.
        abs_norm : bool
            Divide every row by the sum of its absolute values (plus 1e-10).

        Returns
        -------
        torch.Tensor
            Channel relevances of shape ``(N, C)``.
        """
        _check_batched(relevance, "relevance")
        if mask is not None:
            relevance = relevance * mask
        per_channel = relevance.reshape(*relevance.shape[:2], -1).sum(-1)
        return _abs_normalize(per_channel) if abs_norm else per_channel

    def reference_sampling(
        self, relevance: torch.Tensor,
        layer_name: Optional[str] = None,  # noqa: ARG002 - part of the Concept interface
        max_target: str = "sum", abs_norm: bool = True,
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Sort the samples of a batch by their relevance (or activation) for every channel.

        Parameters
        ----------
        relevance : torch.Tensor
            Relevance or activation of shape ``(N, C, ...)``.
        layer_name : str, optional
            Unused; part of the :class:`Concept` interface.
        max_target : {"sum", "max"}
            Rank by the channel's summed value or by its largest neuron.
        abs_norm : bool
            Normalize every sample's channel values by their absolute sum first.

        Returns
        -------
        sample_order, values, neurons : torch.Tensor
            Each of shape ``(N, C)``: column ``c`` lists the batch indices sorted by decreasing value for
            channel ``c`` (ties keep the lower index first), the sorted values, and for each the flat index of
            the channel's most relevant neuron in that sample.
        """
        values, neurons = _channel_scores(relevance, max_target, abs_norm)
        values, order = torch.sort(values, dim=0, descending=True, stable=True)
        return order, values, neurons.gather(0, order)

    def scores(self, relevance: torch.Tensor, layer_name: Optional[str] = None, max_target: str = "sum",
               abs_norm: bool = True) -> Tuple[torch.Tensor, torch.Tensor]:
        """Score every channel of every sample, in batch order (see :meth:`Concept.scores`).

        Computed directly, in one pass for every channel's peak and its index, unless a subclass overrides
        :meth:`reference_sampling`, which then defines the scores.
        """
        if type(self).reference_sampling is not ChannelConcept.reference_sampling:
            return super().scores(relevance, layer_name, max_target, abs_norm)
        return _channel_scores(relevance, max_target, abs_norm)

    def get_rf_indices(
        self, output_shape: Sequence[int],
        layer_name: Optional[str] = None,  # noqa: ARG002 - part of the Concept interface
    ) -> np.ndarray:
        """Return the flat neuron indices of one channel: ``[0]`` for a linear output ``(C,)``, else all of them.

        For an output of shape ``(C, H, W)`` these are ``0 .. H * W - 1``.
        """
        if len(output_shape) == 1:
            return np.array([0])
        return np.arange(int(np.prod(output_shape[1:])))


def _channel_scores(relevance: torch.Tensor, max_target: str, abs_norm: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    """Every channel's summed (or peak) value and its peak neuron, ``(N, C)`` each, in batch order."""
    _check_batched(relevance, "relevance")
    check_choice(max_target, ("sum", "max"), name="max_target")
    flat = relevance.reshape(*relevance.shape[:2], -1)
    peak, neurons = channel_peaks(flat)
    values = flat.sum(-1) if max_target == "sum" else peak
    return (_abs_normalize(values) if abs_norm else values), neurons


def channel_peaks(flat: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Return the first maximum of every ``(row, concept)`` of ``flat`` ``(n, C, neurons)`` and its index.

    A single neuron is its own peak.

    Large maps are searched in two steps: the maximum of every block of ``_BLOCK`` neurons (a plain reduction,
    several times faster than one that also tracks indices), then the index inside the first block that holds
    the maximum. The result is that of ``flat.max(-1)``, NaN included.
    """
    n = flat.shape[-1]
    if n == 1:
        return flat[..., 0], torch.zeros(flat.shape[:2], dtype=torch.int64, device=flat.device)
    if n < _TWO_STEP_FROM:
        return flat.max(-1)
    blocks = n // _BLOCK
    body = flat[..., :blocks * _BLOCK].unflatten(-1, (blocks, _BLOCK))
    peak, block = body.amax(-1).max(-1)
    inside = body.gather(-2, block[..., None, None].expand(*block.shape, 1, _BLOCK)).squeeze(-2).max(-1).indices
    index = block * _BLOCK + inside
    if blocks * _BLOCK < n:  # the neurons after the last whole block; ties stay with the earlier maximum
        tail_peak, tail_index = flat[..., blocks * _BLOCK:].max(-1)
        later = (tail_peak > peak) | (tail_peak.isnan() & ~peak.isnan())
        peak, index = torch.where(later, tail_peak, peak), torch.where(later, tail_index + blocks * _BLOCK, index)
    return peak, index


#: Neurons per block of the two-step peak search, and the map size from which it is used.
_BLOCK, _TWO_STEP_FROM = 64, 2048


def _abs_normalize(values: torch.Tensor) -> torch.Tensor:
    return values / (values.abs().sum(-1, keepdim=True) + 1e-10)


def _check_batched(relevance: torch.Tensor, name: str) -> None:
    check_type(relevance, torch.Tensor, name=name, expected="a tensor of shape (N, C, ...)")
    check_value(relevance.dim() >= 2, relevance, name=name, expected="a tensor of shape (N, C, ...)",
                fix="Add the batch axis, e.g. relevance[None].")
