"""Relevance and Activation Maximization with per-class statistics, accumulated batch by batch.

For every layer and every concept, :class:`Rankings` keeps the ``k`` dataset samples with the largest
relevance (RelMax) or activation (ActMax) of the concept, overall and separately for every explained target
class, together with the index of the concept's most relevant (most active) neuron in each sample, which
locates its receptive field (Achtibat et al., Nature Machine Intelligence 2023, Sec. 4.2). How a layer's
output is scored per concept is the concept's :meth:`crp.concepts.Concept.scores`. Each mode has its own
settings (:class:`ModeSettings`): how values are computed and how many samples are kept, overall and per
target, as zennit-crp's ``RelMax``/``RelStats``/``ActMax``/``ActStats`` objects each had.

The concepts of all layers are the columns of one :class:`crp._features.topk.TopK` per mode for the overall ranking and
one per mode for the per-target rankings: deterministic (ties go to the lower dataset index), independent of
batch size and order, and mergeable.
"""
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from crp._attribution.concepts import Concept
from crp._features.store import FIELDS, MODES, check_mode, stats_offsets
from crp._features.topk import MAX_INDEX, TopK, encode_keys
from crp._utils.transfer import to_device

__all__ = ["Rankings", "ModeSettings"]

#: The :data:`crp._features.store.FIELDS` arrays of one kind, and both kinds of one layer.
Fields = Dict[str, np.ndarray]
LayerFields = Dict[str, Fields]
#: Host data of one int per row (dataset indices, targets).
HostInts = Union[np.ndarray, torch.Tensor, Sequence[int]]


@dataclass(frozen=True)
class ModeSettings:
    """How one mode (relevance or activation) ranks samples.

    Attributes
    ----------
    max_target : {"sum", "max"}
        Rank by a concept's summed value or by its largest neuron.
    abs_norm : bool
        Divide each sample's concept values by their absolute sum over the layer first.
    k_max : int
        Samples kept per concept overall (zennit-crp's ``RelMax.SAMPLE_SIZE``).
    k_stats : int
        Samples kept per concept and target (``RelStats.SAMPLE_SIZE``).
    """

    max_target: str = "sum"
    abs_norm: bool = True
    k_max: int = 40
    k_stats: int = 40

    def as_dict(self) -> Dict[str, object]:
        """Return the settings as a JSON-serializable dict."""
        return {"max_target": self.max_target, "abs_norm": self.abs_norm, "k_max": self.k_max,
                "k_stats": self.k_stats}


class Rankings:
    """Top-``k`` reference samples of every concept of every layer, overall and per target, for both modes.

    Memory is bounded and does not grow with the dataset: per mode, ``k * C`` entries for the overall ranking
    and at most ``(k + slack) * C`` per target seen (less while every target has fewer than ``k / 2`` samples),
    at 12 bytes an entry, ``C`` being the number of concepts of all layers. Example: VGG16 on ImageNet with all
    13 convolutional layers (4,224 channels), 1,000 classes, ``k=40`` and the default ``slack=10`` needs at most
    ``2 modes * 1,000 * (40 + 10) * 4,224 * 12 B = 5.1 GB`` for the per-class statistics (4.1 GB with
    ``slack=0``; with the three linear layers, 9,192 units more, 16.1 GB); the overall ranking is 1,000 times
    smaller. Fewer layers or a smaller ``k`` reduce it proportionally. Writing a checkpoint needs another
    ``2 * N * C * 12`` bytes for the exported arrays (the size of the stored results), where ``N``, the sum over
    targets of ``min(k, samples of the target)``, is at most the number of samples and at most ``T * k``; they
    are joined into one block on the device and copied to the host in one transfer, which takes that much
    again on each side while it lasts. Between checkpoints nothing is copied to the host.

    Parameters
    ----------
    layer_map : dict of str to Concept
        The layers to analyze and how their outputs are split into concepts.
    settings : dict of str to ModeSettings
        The settings of each of the two modes (:data:`crp._features.store.MODES`).
    slack : int, optional
        Extra slots per target, see :class:`crp._features.topk.TopK`: once the targets have ``k`` samples each,
        every update costs about ``1 / slack`` of a full re-ranking of the targets it touches. Default
        ``k_stats // 4``.
    """

    def __init__(self, layer_map: Mapping[str, Concept], settings: Mapping[str, ModeSettings], *,
                 slack: Optional[int] = None) -> None:
        missing = [mode for mode in MODES if mode not in settings]
        if missing:
            raise KeyError(f"settings has no entry for the modes {missing}.")
        self.layer_map = dict(layer_map)
        self.settings = {mode: settings[mode] for mode in MODES}
        self.slack = slack
        #: Number of concepts of every layer, in layer_map order; known after the first update.
        self.n_concepts: Dict[str, int] = {}
        #: ``{mode: (overall TopK, per-target TopK)}`` over the concepts of all layers (columns).
        self.accumulators: Dict[str, Tuple[TopK, TopK]] = {}

    def update(self, mode: str, outputs: Mapping[str, torch.Tensor], indices: HostInts, targets: HostInts) -> None:
        """Rank the rows of one batch for every concept of every layer and merge them into the results.

        Nothing is read back from the device: the bookkeeping runs on the host from ``indices`` and
        ``targets``, which should therefore be host data (numpy arrays, lists or CPU tensors; device tensors
        are copied to the host first).

        Parameters
        ----------
        mode : {"relevance", "activation"}
            Which ranking the rows belong to.
        outputs : dict of str to torch.Tensor
            Relevance (or activation) at every layer's output, ``(n, C, ...)``.
        indices : numpy.ndarray, torch.Tensor or sequence of int
            ``(n,)`` dataset index of every row.
        targets : numpy.ndarray, torch.Tensor or sequence of int
            ``(n,)`` target class of every row (the class the relevance was computed for).
        """
        setting = self.settings[mode]
        scored = [concept.scores(outputs[layer], layer, setting.max_target, setting.abs_norm)
                  for layer, concept in self.layer_map.items()]
        self._set_columns([values.shape[1] for values, _ in scored])
        values = torch.cat([values for values, _ in scored], 1) if len(scored) > 1 else scored[0][0]
        neurons = torch.cat([neurons for _, neurons in scored], 1) if len(scored) > 1 else scored[0][1]
        overall, per_target = self._accumulators(mode)
        host_indices = indices.detach().cpu().numpy() if isinstance(indices, torch.Tensor) else np.asarray(indices)
        if host_indices.size and (host_indices.min() < 0 or host_indices.max() > MAX_INDEX):
            raise ValueError(f"indices must lie in [0, {MAX_INDEX}], got values in [{int(host_indices.min())}, "
                             f"{int(host_indices.max())}].")
        keys = encode_keys(values, to_device(host_indices.astype(np.int64), values.device))
        neurons = neurons.to(torch.int32)
        overall.add_keys(keys, neurons)
        per_target.add_keys(keys, neurons, targets)

    def merge(self, other: "Rankings") -> "Rankings":
        """Merge the results of ``other`` (e.g. of a disjoint part of the dataset) into these; return ``self``."""
        if other.settings != self.settings:
            raise ValueError(f"can only merge results with the same settings; got {other.settings} and "
                             f"{self.settings}.")
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

    def to_arrays(self) -> Dict[str, LayerFields]:
        """Export every layer as arrays of the store's fields (int32 ``index``, float32 ``value``, int32 ``neuron``).

        Returns
        -------
        dict
            ``{layer: {"max": fields, "stats": fields}}``, each field of shape ``(2, R, C)`` and ``(2, N, C)``:
            axis 0 is the mode (``MODES``); ``max``
            ranks all samples (``R = min(k, samples)``), ``stats`` the samples of each target of
            :meth:`targets`, one target after another: the rows of target ``i`` are
            ``offsets[i]:offsets[i + 1]`` with ``offsets = stats_offsets(counts(), k)`` (see
            :func:`crp._features.store.stats_offsets`). Then the concept. Empty slots hold index -1, value NaN,
            neuron -1.
        """
        if not any(mode in self.accumulators for mode in MODES):
            return {}
        targets, counts = self.targets(), self.counts()
        rows_max = max(min(self.settings[mode].k_max, counts[mode][0]) for mode in MODES)
        rows_stats = np.diff(stats_offsets(counts, self.stats_sizes())).tolist()
        parts: Dict[str, List[Dict[str, torch.Tensor]]] = {"max": [], "stats": []}
        for mode in MODES:
            overall, per_target = self.accumulators.get(mode) or (_Empty(self._total()), _Empty(self._total()))
            parts["max"].append(overall.to_tensors([0], [rows_max]))
            parts["stats"].append(per_target.to_tensors(targets, rows_stats))
        joined = _to_host(parts)
        return {layer: {kind: {name: field[..., columns] for name, field in fields.items()}
                        for kind, fields in joined.items()}
                for layer, columns in self._columns().items()}

    def stats_sizes(self) -> Dict[str, int]:
        """Return the samples kept per concept and target, per mode (a target's rows: the larger count)."""
        return {mode: setting.k_stats for mode, setting in self.settings.items()}

    def sample_sizes(self) -> Dict[str, Dict[str, int]]:
        """``{mode: {"max": k_max, "stats": k_stats}}``, as the store records them."""
        return {mode: {"max": s.k_max, "stats": s.k_stats} for mode, s in self.settings.items()}

    @classmethod
    def from_arrays(cls, layer_map: Mapping[str, Concept], layers: Mapping[str, LayerFields], targets: Sequence[int],
                    counts: Mapping[str, Sequence[int]], *, settings: Mapping[str, ModeSettings],
                    slack: Optional[int] = None, device: Optional[torch.device] = None) -> "Rankings":
        """Rebuild the results from :meth:`to_arrays`, :meth:`targets` and :meth:`counts` (e.g. a checkpoint)."""
        result = cls(layer_map, settings, slack=slack)
        missing = [layer for layer in layer_map if layer not in layers]
        if missing:
            raise KeyError(f"the arrays have no results for layers {missing}.")
        result._set_columns([layers[layer]["max"]["index"].shape[-1] for layer in layer_map])
        joined = {kind: {name: np.concatenate([np.asarray(layers[layer][kind][name]) for layer in layer_map], -1)
                         for name in FIELDS} for kind in ("max", "stats")}
        labels = np.asarray(targets, dtype=np.int64)
        offsets = stats_offsets(counts, result.stats_sizes())
        for m, mode in enumerate(MODES):
            setting = result.settings[mode]
            count = np.asarray(counts[mode], dtype=np.int64)
            rows_max = min(setting.k_max, int(count[0]))
            overall = TopK.from_arrays({"labels": np.zeros(1, np.int64), "counts": count[:1],
                                        **{name: f[m][None, :rows_max] for name, f in joined["max"].items()}},
                                       k=setting.k_max, device=device)
            seen = np.flatnonzero(count[1:] > 0)
            rows = [np.arange(offsets[g], offsets[g] + min(setting.k_stats, int(count[1 + g]))) for g in seen]
            chosen = np.concatenate(rows) if rows else np.zeros(0, np.int64)
            per_target = TopK.from_arrays({"labels": labels[seen], "counts": count[1:][seen],
                                           "offsets": np.cumsum([0] + [len(r) for r in rows]),
                                           **{name: f[m][chosen] for name, f in joined["stats"].items()}},
                                          k=setting.k_stats, slack=result._slack(mode), device=device)
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
        check_mode(mode)
        if mode not in self.accumulators:
            total, setting = self._total(), self.settings[mode]
            # the overall ranking is one group: room for k more rows halves its cut-backs for little memory
            self.accumulators[mode] = (TopK(setting.k_max, total, slack=setting.k_max),
                                       TopK(setting.k_stats, total, slack=self._slack(mode)))
        return self.accumulators[mode]

    def _slack(self, mode: str) -> int:
        return self.settings[mode].k_stats // 4 if self.slack is None else int(self.slack)


def _to_host(parts: Dict[str, List[Dict[str, torch.Tensor]]]) -> Dict[str, Fields]:
    """Stack the modes' exported fields of every kind, copied to the host in one transfer (one sync a checkpoint).

    Every field holds 4-byte entries; they travel as one int32 tensor, ordered kind, field, mode, so that each
    stacked field is a view of the host copy (the modes of a kind export the same shape).
    """
    order = [(kind, name) for kind in parts for name in FIELDS]
    tensors = [part[name] for kind, name in order for part in parts[kind]]
    device = next((t.device for t in tensors if t.device.type != "cpu"), torch.device("cpu"))
    flat = torch.cat([t.to(device).reshape(-1).view(torch.int32) for t in tensors]).cpu().numpy()
    joined: Dict[str, Fields] = {kind: {} for kind in parts}
    at = 0
    for kind, name in order:
        shape = (len(parts[kind]), *parts[kind][0][name].shape)
        size = int(np.prod(shape))
        joined[kind][name] = flat[at:at + size].view(_FIELD_DTYPES[name]).reshape(shape)
        at += size
    return joined


#: The numpy type of every exported field.
_FIELD_DTYPES = {"index": np.int32, "value": np.float32, "neuron": np.int32}


class _Empty:
    """Stands in for the accumulator of a mode without rows: exports only empty slots."""

    def __init__(self, n_columns: int) -> None:
        self.n_columns = n_columns

    def to_tensors(self, labels: Sequence[int], rows: Sequence[int]) -> Dict[str, torch.Tensor]:  # noqa: ARG002 (TopK's)
        shape = (int(sum(rows)), self.n_columns)
        return {"index": torch.full(shape, -1, dtype=torch.int32), "value": torch.full(shape, float("nan")),
                "neuron": torch.full(shape, -1, dtype=torch.int32)}
