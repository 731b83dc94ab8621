"""Relevance and Activation Maximization with per-class statistics, accumulated batch by batch.

For every layer and every concept, :class:`Maximization` keeps the ``k`` dataset samples with the largest
relevance (RelMax) or activation (ActMax) of the concept, overall and separately for every explained target
class, together with the index of the concept's most relevant (most active) neuron in each sample, which
locates its receptive field (Achtibat et al., Nature Machine Intelligence 2023, Sec. 4.2). How a layer's
output is scored per concept is the concept's :meth:`crp.concepts.Concept.reference_sampling`.

All rankings are :class:`crp.topk.TopK` accumulators: deterministic (ties go to the lower dataset index),
independent of batch size and order, and mergeable.
"""
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

from crp.concepts import Concept
from crp.store import RECORD
from crp.topk import TopK

__all__ = ["Maximization", "MODES", "empty_records"]

#: The two rankings: by conditional relevance and by activation.
MODES = ("relevance", "activation")

Arrays = Dict[str, np.ndarray]


class Maximization:
    """Top-``k`` reference samples of every concept of every layer, overall and per target, for both modes.

    Memory is bounded and does not grow with the dataset. Per layer with ``C`` concepts, each mode holds
    ``k * C`` entries for the overall ranking and ``(k + slack) * C`` per target seen, at 12 bytes an entry.
    Example: VGG16 on ImageNet with all 13 convolutional layers (4,224 channels), 1,000 classes, ``k=40``
    and ``slack=0`` needs ``2 modes * 1,000 * 40 * 4,224 * 12 B = 4.1 GB`` for the per-class statistics
    (adding the three linear layers, 9,192 units more, makes it 12.9 GB); the overall ranking is 1,000 times
    smaller. Fewer layers or a smaller ``k`` reduce it proportionally.

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
    slack : int
        Extra slots per target group, see :class:`crp.topk.TopK`.
    """

    def __init__(self, layer_map: Mapping[str, Concept], k: int = 40, max_target: str = "sum",
                 abs_norm: bool = True, slack: int = 0) -> None:
        if max_target not in ("sum", "max"):
            raise ValueError(f"max_target must be 'sum' or 'max', got {max_target!r}.")
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be a positive int, got {k!r}.")
        self.layer_map = dict(layer_map)
        self.k, self.max_target, self.abs_norm, self.slack = int(k), max_target, bool(abs_norm), int(slack)
        #: ``{layer: {mode: (overall TopK, per-target TopK)}}``, created at the first update of a layer.
        self.accumulators: Dict[str, Dict[str, Tuple[TopK, TopK]]] = {}

    def update(self, layer: str, mode: str, output: torch.Tensor, indices: torch.Tensor,
               targets: torch.Tensor) -> None:
        """Rank the rows of one batch for every concept of ``layer`` and merge them into the results.

        Parameters
        ----------
        layer : str
            A layer of the layer map.
        mode : {"relevance", "activation"}
            Which ranking the rows belong to.
        output : torch.Tensor
            Relevance (or activation) at the layer's output, ``(n, C, ...)``.
        indices : torch.Tensor
            ``(n,)`` dataset index of every row.
        targets : torch.Tensor
            ``(n,)`` target class of every row (the class the relevance was computed for).
        """
        concept = self.layer_map[layer]
        order, values, neurons = concept.reference_sampling(output, layer, self.max_target, self.abs_norm)
        values = torch.empty_like(values).scatter_(0, order, values)  # back to row order
        neurons = torch.empty_like(neurons).scatter_(0, order, neurons)
        overall, per_target = self._accumulators(layer, mode, values.shape[1])
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
        for layer, modes in other.accumulators.items():
            for mode, (overall, per_target) in modes.items():
                mine = self._accumulators(layer, mode, overall.n_columns)
                mine[0].merge(overall)
                mine[1].merge(per_target)
        return self

    def targets(self) -> List[int]:
        """All target classes seen in any layer and mode, sorted."""
        return sorted({g for modes in self.accumulators.values() for pair in modes.values() for g in pair[1].groups})

    def counts(self) -> Dict[str, List[int]]:
        """Rows seen per mode: ``[all, target_0, target_1, ...]`` in the order of :meth:`targets`."""
        targets = self.targets()
        result = {}
        for mode in MODES:
            pair = next((modes[mode] for modes in self.accumulators.values() if mode in modes), None)
            if pair is None:
                result[mode] = [0] * (1 + len(targets))
            else:
                result[mode] = [pair[0].count()] + [pair[1].count(t) for t in targets]
        return result

    def to_arrays(self) -> Dict[str, Arrays]:
        """Export every layer as record arrays (fields ``index``, ``value``, ``neuron``, see :data:`RECORD`).

        Returns
        -------
        dict
            ``{layer: {"max": (2, R, C), "stats": (2, T, S, C)}}``: axis 0 is the mode (:data:`MODES`); ``max``
            ranks all samples, ``stats`` those of each target of :meth:`targets`; then rank and concept.
            ``R = min(k, samples)`` and ``S = min(k, samples of the largest target)``; empty slots hold index -1,
            value NaN, neuron -1.
        """
        targets = self.targets()
        layers = {}
        for layer, modes in self.accumulators.items():
            pairs = [modes.get(mode) for mode in MODES]
            n_columns = next(p for p in pairs if p is not None)[0].n_columns
            rows_max = max(p[0].rows() for p in pairs if p is not None)
            rows_stats = max(p[1].rows() for p in pairs if p is not None)
            result = {"max": empty_records((len(MODES), rows_max, n_columns)),
                      "stats": empty_records((len(MODES), len(targets), rows_stats, n_columns))}
            for m, pair in enumerate(pairs):
                if pair is not None:
                    _fill_mode(result, m, pair, targets)
            layers[layer] = result
        return layers

    @classmethod
    def from_arrays(cls, layer_map: Mapping[str, Concept], layers: Mapping[str, Arrays], targets: Sequence[int],
                    counts: Mapping[str, Sequence[int]], k: int = 40, max_target: str = "sum", abs_norm: bool = True,
                    slack: int = 0, device: Optional[torch.device] = None) -> "Maximization":
        """Rebuild the results from :meth:`to_arrays`, :meth:`targets` and :meth:`counts` (e.g. a checkpoint)."""
        result = cls(layer_map, k, max_target, abs_norm, slack)
        labels = np.asarray(targets, dtype=np.int64)
        for layer, arrays in layers.items():
            result.accumulators[layer] = {}
            for m, mode in enumerate(MODES):
                count = np.asarray(counts[mode], dtype=np.int64)
                overall = TopK.from_arrays({"labels": np.zeros(1, np.int64), "counts": count[:1],
                                            **_fields(arrays["max"][m][None])}, k=k, device=device)
                seen = count[1:] > 0
                per_target = TopK.from_arrays({"labels": labels[seen], "counts": count[1:][seen],
                                               **_fields(arrays["stats"][m][seen])}, k=k, slack=slack, device=device)
                result.accumulators[layer][mode] = (overall, per_target)
        return result

    def _accumulators(self, layer: str, mode: str, n_columns: int) -> Tuple[TopK, TopK]:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}.")
        modes = self.accumulators.setdefault(layer, {})
        if mode not in modes:
            modes[mode] = (TopK(self.k, n_columns), TopK(self.k, n_columns, slack=self.slack))
        pair = modes[mode]
        if pair[0].n_columns != n_columns:
            raise ValueError(f"layer {layer!r} had {pair[0].n_columns} concepts before and now {n_columns}; every "
                             f"sample must give the layer an output of the same number of concepts.")
        return pair


def empty_records(shape: Tuple[int, ...]) -> np.ndarray:
    """A record array of ``shape`` with every slot empty (index -1, value NaN, neuron -1)."""
    records = np.empty(shape, dtype=RECORD)
    records["index"], records["value"], records["neuron"] = -1, np.nan, -1
    return records


def _fields(records: np.ndarray) -> Arrays:
    return {name: np.asarray(records[name]) for name in ("index", "value", "neuron")}


def _fill_mode(arrays: Arrays, m: int, pair: Tuple[TopK, TopK], targets: List[int]) -> None:
    """Write one mode's overall and per-target results into the layer's record arrays at ``[m]``."""
    overall, per_target = pair
    exported = overall.to_arrays()
    if len(exported["labels"]):
        rows = exported["index"].shape[1]
        for name in ("index", "value", "neuron"):
            arrays["max"][name][m, :rows] = exported[name][0]
    exported = per_target.to_arrays()
    position = {t: i for i, t in enumerate(targets)}
    rows = exported["index"].shape[1]
    for g, label in enumerate(exported["labels"].tolist()):
        for name in ("index", "value", "neuron"):
            arrays["stats"][name][m, position[label], :rows] = exported[name][g]
