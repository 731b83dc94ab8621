"""Relevance and Activation Maximization with per-class statistics, accumulated batch by batch.

For every layer and every concept, :class:`Maximization` keeps the ``k`` dataset samples with the largest
relevance (RelMax) or activation (ActMax) of the concept, overall and separately for every explained target
class, together with the index of the concept's most relevant (most active) neuron in each sample, which
locates its receptive field (Achtibat et al., Nature Machine Intelligence 2023, Sec. 4.2). How a layer's
output is scored per concept is the concept's :meth:`crp.concepts.Concept.reference_sampling`.

The concepts of all layers are the columns of one :class:`crp._features.topk.TopK` per mode for the overall ranking and
one per mode for the per-target rankings: deterministic (ties go to the lower dataset index), independent of
batch size and order, and mergeable.
"""
import sys
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

from crp._attribution.concepts import ChannelConcept, Concept
from crp._features.store import RECORD, stats_offsets
from crp._features.topk import TopK

__all__ = ["Maximization", "MODES", "concept_values"]

#: The two rankings: by conditional relevance and by activation.
MODES = ("relevance", "activation")

Arrays = Dict[str, np.ndarray]


def concept_values(concept: Concept, output: torch.Tensor, layer: str, max_target: str,
                   abs_norm: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    """Score every concept of every row: values and most relevant (active) neuron indices, each ``(n, C)``.

    The result is that of ``concept.reference_sampling`` in row order. For :class:`ChannelConcept` (unless a
    subclass overrides ``reference_sampling``) it is computed directly, with one pass for the peak and its
    index, and without sorting.
    """
    if isinstance(concept, ChannelConcept) and type(concept).reference_sampling is ChannelConcept.reference_sampling:
        if not isinstance(output, torch.Tensor) or output.dim() < 2:
            return concept.reference_sampling(output, layer, max_target, abs_norm)  # raises the concept's error
        flat = output.reshape(*output.shape[:2], -1)
        peak, neurons = _peaks(flat)
        values = flat.sum(-1) if max_target == "sum" else peak
        if abs_norm:
            values = values / (values.abs().sum(-1, keepdim=True) + 1e-10)
        return values, neurons
    order, values, neurons = concept.reference_sampling(output, layer, max_target, abs_norm)
    return torch.empty_like(values).scatter_(0, order, values), torch.empty_like(neurons).scatter_(0, order, neurons)


def _peaks(flat: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """The first maximum of every ``(row, concept)`` of ``flat`` ``(n, C, neurons)`` and its index; a single
    neuron is its own peak.

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


class Maximization:
    """Top-``k`` reference samples of every concept of every layer, overall and per target, for both modes.

    Memory is bounded and does not grow with the dataset: per mode, ``k * C`` entries for the overall ranking
    and at most ``(k + slack) * C`` per target seen (less while every target has fewer than ``k / 2`` samples),
    at 12 bytes an entry, ``C`` being the number of concepts of all layers. Example: VGG16 on ImageNet with all
    13 convolutional layers (4,224 channels), 1,000 classes, ``k=40`` and the default ``slack=10`` needs at most
    ``2 modes * 1,000 * (40 + 10) * 4,224 * 12 B = 5.1 GB`` for the per-class statistics (4.1 GB with
    ``slack=0``; with the three linear layers, 9,192 units more, 16.1 GB); the overall ranking is 1,000 times
    smaller. Fewer layers or a smaller ``k`` reduce it proportionally. Writing a checkpoint needs another
    ``2 * N * C * 12`` bytes for the exported arrays (the size of the stored results), where ``N``, the sum over
    targets of ``min(k, samples of the target)``, is at most the number of samples and at most ``T * k``.

    Parameters
    ----------
    layer_map : dict of str to Concept
        The layers to analyze and how their outputs are split into concepts.
    k : int
        Number of samples kept per concept (and per target).
    max_target : {"sum", "max"}
        Rank by a concept's summed relevance (activation) or by its largest neuron.
    abs_norm : bool
        Divide each sample's concept values by their absolute sum over the layer first.
    slack : int, optional
        Extra slots per target, see :class:`crp._features.topk.TopK`: once the targets have ``k`` samples each, every
        update costs about ``1 / slack`` of a full re-ranking of the targets it touches. Default ``k // 4``.
    """

    def __init__(self, layer_map: Mapping[str, Concept], k: int = 40, max_target: str = "sum",
                 abs_norm: bool = True, slack: Optional[int] = None) -> None:
        if max_target not in ("sum", "max"):
            raise ValueError(f"max_target must be 'sum' or 'max', got {max_target!r}.")
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be a positive int, got {k!r}.")
        self.layer_map = dict(layer_map)
        slack = int(k) // 4 if slack is None else slack
        self.k, self.max_target, self.abs_norm, self.slack = int(k), max_target, bool(abs_norm), int(slack)
        #: Number of concepts of every layer, in layer_map order; known after the first update.
        self.n_concepts: Dict[str, int] = {}
        #: ``{mode: (overall TopK, per-target TopK)}`` over the concepts of all layers (columns).
        self.accumulators: Dict[str, Tuple[TopK, TopK]] = {}

    def update(self, mode: str, outputs: Mapping[str, torch.Tensor], indices: torch.Tensor,
               targets: torch.Tensor) -> None:
        """Rank the rows of one batch for every concept of every layer and merge them into the results.

        Parameters
        ----------
        mode : {"relevance", "activation"}
            Which ranking the rows belong to.
        outputs : dict of str to torch.Tensor
            Relevance (or activation) at every layer's output, ``(n, C, ...)``.
        indices : torch.Tensor
            ``(n,)`` dataset index of every row.
        targets : torch.Tensor
            ``(n,)`` target class of every row (the class the relevance was computed for).
        """
        scored = [concept_values(concept, outputs[layer], layer, self.max_target, self.abs_norm)
                  for layer, concept in self.layer_map.items()]
        self._set_columns([values.shape[1] for values, _ in scored])
        values = torch.cat([values for values, _ in scored], 1)
        neurons = torch.cat([neurons for _, neurons in scored], 1)
        overall, per_target = self._accumulators(mode)
        indices = torch.as_tensor(indices, device=values.device)
        overall.add(values, indices, neurons)
        per_target.add(values, indices, neurons, torch.as_tensor(targets, device=values.device))

    def merge(self, other: "Maximization") -> "Maximization":
        """Merge the results of ``other`` (e.g. of a disjoint part of the dataset) into these; return ``self``."""
        if (other.k, other.max_target, other.abs_norm) != (self.k, self.max_target, self.abs_norm):
            raise ValueError(
                f"can only merge results with the same k, max_target and abs_norm; got "
                f"{(other.k, other.max_target, other.abs_norm)} and {(self.k, self.max_target, self.abs_norm)}."
            )
        if other.n_concepts:
            self._set_columns([other.n_concepts[layer] for layer in self.layer_map])
        for mode, (overall, per_target) in other.accumulators.items():
            mine = self._accumulators(mode)
            mine[0].merge(overall)
            mine[1].merge(per_target)
        return self

    def targets(self) -> List[int]:
        """All target classes seen in any mode, sorted."""
        return sorted({g for pair in self.accumulators.values() for g in pair[1].groups})

    def counts(self) -> Dict[str, List[int]]:
        """Rows seen per mode: ``[all, target_0, target_1, ...]`` in the order of :meth:`targets`."""
        targets = self.targets()
        result = {}
        for mode in MODES:
            pair = self.accumulators.get(mode)
            result[mode] = [0] * (1 + len(targets)) if pair is None else \
                [pair[0].count()] + [pair[1].count(t) for t in targets]
        return result

    def to_arrays(self) -> Dict[str, Arrays]:
        """Export every layer as record arrays (fields ``index``, ``value``, ``neuron``, see ``RECORD``).

        Returns
        -------
        dict
            ``{layer: {"max": (2, R, C), "stats": (2, N, C)}}``: axis 0 is the mode (``MODES``); ``max``
            ranks all samples (``R = min(k, samples)``), ``stats`` the samples of each target of
            :meth:`targets`, one target after another: the rows of target ``i`` are
            ``offsets[i]:offsets[i + 1]`` with ``offsets = stats_offsets(counts(), k)`` (see
            :func:`crp._features.store.stats_offsets`). Then the concept. Empty slots hold index -1, value NaN,
            neuron -1.
        """
        if not any(mode in self.accumulators for mode in MODES):
            return {}
        targets, counts = self.targets(), self.counts()
        rows_max = min(self.k, max(counts[mode][0] for mode in MODES))
        rows_stats = np.diff(stats_offsets(counts, self.k)).tolist()
        parts = {"max": [], "stats": []}
        for mode in MODES:
            overall, per_target = self.accumulators.get(mode) or (_Empty(self._total()), _Empty(self._total()))
            parts["max"].append(overall.to_tensors([0], [rows_max]))
            parts["stats"].append(per_target.to_tensors(targets, rows_stats))
        joined = {kind: {name: torch.stack([part[name].cpu() for part in exported])
                         for name in ("index", "value", "neuron")} for kind, exported in parts.items()}
        return {layer: {kind: _records(fields, columns) for kind, fields in joined.items()}
                for layer, columns in self._columns().items()}

    @classmethod
    def from_arrays(cls, layer_map: Mapping[str, Concept], layers: Mapping[str, Arrays], targets: Sequence[int],
                    counts: Mapping[str, Sequence[int]], k: int = 40, max_target: str = "sum", abs_norm: bool = True,
                    slack: Optional[int] = None, device: Optional[torch.device] = None) -> "Maximization":
        """Rebuild the results from :meth:`to_arrays`, :meth:`targets` and :meth:`counts` (e.g. a checkpoint)."""
        result = cls(layer_map, k, max_target, abs_norm, slack)
        slack = result.slack
        missing = [layer for layer in layer_map if layer not in layers]
        if missing:
            raise KeyError(f"the arrays have no results for layers {missing}.")
        result._set_columns([layers[layer]["max"].shape[-1] for layer in layer_map])
        joined = {kind: np.concatenate([np.asarray(layers[layer][kind]) for layer in layer_map], -1)
                  for kind in ("max", "stats")}
        labels = np.asarray(targets, dtype=np.int64)
        offsets = stats_offsets(counts, k)
        for m, mode in enumerate(MODES):
            count = np.asarray(counts[mode], dtype=np.int64)
            overall = TopK.from_arrays({"labels": np.zeros(1, np.int64), "counts": count[:1],
                                        **_fields(joined["max"][m][None])}, k=k, device=device)
            seen = np.flatnonzero(count[1:] > 0)
            rows = [np.arange(offsets[g], offsets[g + 1]) for g in seen]
            selected = joined["stats"][m][np.concatenate(rows) if rows else np.zeros(0, np.int64)]
            per_target = TopK.from_arrays({"labels": labels[seen], "counts": count[1:][seen],
                                           "offsets": np.cumsum([0] + [len(r) for r in rows]),
                                           **_fields(selected)}, k=k, slack=slack, device=device)
            result.accumulators[mode] = (overall, per_target)
        return result

    def _total(self) -> int:
        return sum(self.n_concepts.values())

    def _columns(self) -> Dict[str, slice]:
        bounds = np.cumsum([0] + [self.n_concepts[layer] for layer in self.layer_map])
        return {layer: slice(int(bounds[i]), int(bounds[i + 1])) for i, layer in enumerate(self.layer_map)}

    def _set_columns(self, sizes: List[int]) -> None:
        if not self.n_concepts:
            self.n_concepts = dict(zip(self.layer_map, (int(s) for s in sizes)))
            return
        for layer, size in zip(self.layer_map, sizes):
            if self.n_concepts[layer] != size:
                raise ValueError(f"layer {layer!r} had {self.n_concepts[layer]} concepts before and now {size}; "
                                 f"every sample must give the layer an output of the same number of concepts.")

    def _accumulators(self, mode: str) -> Tuple[TopK, TopK]:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}.")
        if mode not in self.accumulators:
            total = self._total()
            self.accumulators[mode] = (TopK(self.k, total), TopK(self.k, total, slack=self.slack))
        return self.accumulators[mode]


def _fields(records: np.ndarray) -> Arrays:
    return {name: np.asarray(records[name]) for name in ("index", "value", "neuron")}


class _Empty:
    """Stands in for the accumulator of a mode without rows: exports only empty slots."""

    def __init__(self, n_columns: int) -> None:
        self.n_columns = n_columns

    def to_tensors(self, labels: Sequence[int], rows: Sequence[int]) -> Dict[str, torch.Tensor]:
        shape = (int(sum(rows)), self.n_columns)
        return {"index": torch.full(shape, -1, dtype=torch.int32), "value": torch.full(shape, float("nan")),
                "neuron": torch.full(shape, -1, dtype=torch.int32)}


def _records(fields: Mapping[str, torch.Tensor], columns: slice) -> np.ndarray:
    """The ``columns`` of int32 ``index``, float32 ``value`` and int32 ``neuron`` tensors as one record array."""
    index, value, neuron = (fields[name][..., columns] for name in ("index", "value", "neuron"))
    if sys.byteorder != "little":  # RECORD is little-endian; build it field by field
        records = np.empty(index.shape, RECORD)
        records["index"], records["value"], records["neuron"] = index.numpy(), value.numpy(), neuron.numpy()
        return records
    packed = torch.stack([index, value.view(torch.int32), neuron], -1).numpy()  # (..., 3) int32, contiguous
    return packed.view(RECORD)[..., 0]
