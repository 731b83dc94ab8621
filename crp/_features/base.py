"""What every part of FeatureVisualization shares: its state, access to the dataset, and reading its results.

:class:`FeatureVisualizationBase` holds the attributes set by ``FeatureVisualization.__init__`` and the methods
the default engine (:mod:`crp._features.engine`), zennit-crp's flow (:mod:`crp._features.zennit_flow`) and the
reference images (:mod:`crp._features.references`) all use.
"""
import numbers
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from crp._attribution.concepts import Concept
from crp._attribution.engine import CondAttribution
from crp._features.cache import Cache
from crp._features.dataset import int_target, split_item
from crp._features.memory import suggest_batch_size
from crp._features.results_objects import Maximization, Statistics
from crp._features.store import ResultReader, open_results
from crp._utils.checks import check_id_shape
from crp._utils.text import id_list, short_repr

__all__ = ["FeatureVisualizationBase"]


class FeatureVisualizationBase:
    """State and shared steps of :class:`crp.visualization.FeatureVisualization` (see there)."""

    attribution: CondAttribution
    dataset: Any
    layer_map: Dict[str, Concept]
    preprocess_fn: Optional[Callable]
    max_target: str
    abs_norm: bool
    top_k: int
    path: Path
    device: torch.device
    Cache: Optional[Cache]
    RelMax: Maximization
    ActMax: Maximization
    RelStats: Statistics
    ActStats: Statistics
    saved_checkpoints: Dict[str, List[str]]
    loader_batch_size: Optional[int]

    # ------------------------------------------------------------------------------------------------------
    # data

    def preprocess_data(self, data: torch.Tensor) -> torch.Tensor:
        """Apply ``preprocess_fn`` (if any) to a batch."""
        return self.preprocess_fn(data) if callable(self.preprocess_fn) else data

    def get_data_sample(self, index: int, preprocessing: bool = True) -> Tuple[torch.Tensor, Any]:
        """Return dataset sample ``index`` as a batch of one on ``device`` (requiring gradients) and its target.

        Parameters
        ----------
        index : int
        preprocessing : bool
            Apply :meth:`preprocess_data` (for the model) or not (for plotting).
        """
        sample, target = split_item(index, self.dataset[index])
        data = sample.to(self.device).unsqueeze(0)
        if preprocessing:
            data = self.preprocess_data(data)
        return data.detach().requires_grad_(), target

    def get_data_concurrently(self, indices: Union[Sequence[int], np.ndarray],
                              preprocessing: bool = False) -> Tuple[torch.Tensor, list]:
        """Return the samples ``indices`` as one batch on ``device`` and their targets (name kept from zennit-crp)."""
        items = [split_item(int(i), self.dataset[int(i)]) for i in indices]
        data = torch.stack([sample for sample, _ in items]).to(self.device)
        if preprocessing:
            data = self.preprocess_data(data)
        return data.detach().requires_grad_(), [target for _, target in items]

    def suggest_batch_size(self, composite: Optional[Any] = None, *, memory: Optional[int] = None,
                           fraction: float = 0.5, maximum: int = 1024) -> int:
        """Return a batch size for :meth:`run` whose memory fits (see :mod:`crp._features.memory`).

        The memory of a batch is measured (CUDA) or estimated from tensor sizes (CPU) on the first sample of the
        dataset, for batches of one and two samples; it grows linearly with the batch size, once per sample and
        target.

        Parameters
        ----------
        composite : zennit.core.Composite, optional
            The rules :meth:`run` will use.
        memory : int, optional
            Bytes to fit into; default ``fraction`` of the free memory of the device (CUDA) or of the system.
        fraction : float
            Part of the free memory to use when ``memory`` is not given.
        maximum : int
            The largest batch size suggested.

        Returns
        -------
        int
            At least 1.
        """
        sample, target = self.get_data_sample(0, preprocessing=True)
        targets = max(1, len(list(self.multitarget_to_single(target)))) if self._has_multitarget() else 1
        return suggest_batch_size(self.attribution, sample, composite, memory=memory, fraction=fraction,
                                  targets=targets, maximum=maximum)

    def multitarget_to_single(self, multi_target) -> Iterable[int]:
        """Turn a sample's multi-label target into the single targets it is explained for.

        Override it for multi-label datasets: each sample is then explained once per returned target (RelMax
        and relevance statistics get one entry per target; activations count each sample once, under its first
        target). By default targets must be ints.
        """
        raise NotImplementedError

    def _has_multitarget(self) -> bool:
        return type(self).multitarget_to_single is not FeatureVisualizationBase.multitarget_to_single

    def _expand_targets(self, indices: torch.Tensor, targets: List[Any]) -> Tuple[List[int], List[int]]:
        """Return, per explained row, the row's sample position in the batch and its single target."""
        rows, row_targets = [], []
        for position, (index, target) in enumerate(zip(indices.tolist(), targets)):
            if self._has_multitarget():
                singles = [int_target(t, index) for t in self.multitarget_to_single(target)]
            else:
                singles = [int_target(target, index)]
            rows.extend([position] * len(singles))
            row_targets.extend(singles)
        return rows, row_targets

    def _explained_targets(self, target, index) -> List[int]:
        if self._has_multitarget():
            return [int_target(t, index) for t in self.multitarget_to_single(target)]
        return [int_target(target, index)]

    def _check_data_range(self, data_start, data_end) -> Tuple[int, int]:
        size = len(self.dataset)
        data_end = size if data_end is None else data_end
        for name, value in (("data_start", data_start), ("data_end", data_end)):
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise TypeError(f"{name} must be an int, got {value!r}.")
        if not 0 <= data_start < data_end <= size:
            raise ValueError(f"need 0 <= data_start < data_end <= len(dataset) = {size}, got data_start="
                             f"{data_start}, data_end={data_end}.")
        return int(data_start), int(data_end)

    def _result_objects(self) -> Dict[str, Tuple[Maximization, Statistics]]:
        """Return the result objects of each mode, checked."""
        pairs = {"relevance": (self.RelMax, self.RelStats), "activation": (self.ActMax, self.ActStats)}
        for mode, (ranking, stats) in pairs.items():
            prefix = "Rel" if mode == "relevance" else "Act"
            for name, value, kind in ((f"{prefix}Max", ranking, Maximization), (f"{prefix}Stats", stats, Statistics)):
                if not isinstance(value, kind):
                    raise TypeError(f"FeatureVisualization.{name} must be a crp.{kind.__module__.split('.')[-1]}."
                                    f"{kind.__name__} (or a subclass), got {type(value).__name__}.")
                if value.mode != mode:
                    raise ValueError(f"FeatureVisualization.{name} must have mode={mode!r}, got {value.mode!r}.")
        return pairs

    @property
    def results(self) -> ResultReader:
        """Reader of the results at ``path``.

        This library's store, or folders in zennit-crp's layout at the ``PATH`` of the result objects.
        """
        folders = {(results.mode, results.KIND): results.PATH
                   for results in (self.RelMax, self.ActMax, self.RelStats, self.ActStats)}
        return open_results(self.path, self.max_target, self.abs_norm, folders=folders)

    def _concept_ids(self, concept_ids, layer_name: str, n_concepts: int) -> List[int]:
        described = short_repr(concept_ids)
        if isinstance(concept_ids, (torch.Tensor, np.ndarray)):
            check_id_shape(tuple(concept_ids.shape), "concept_ids")
            concept_ids = concept_ids.tolist()
        ids = [concept_ids] if not isinstance(concept_ids, Iterable) or isinstance(concept_ids, str) \
            else list(concept_ids)
        if ids and all(isinstance(c, (list, tuple)) for c in ids):
            check_id_shape((len(ids), len(ids[0])), "concept_ids")
        bad = [c for c in ids if isinstance(c, bool) or not isinstance(c, numbers.Integral)]
        if bad or not ids:
            raise TypeError(f"concept ids must be ints (or a non-empty list of ints), got {described}.")
        out_of_range = [int(c) for c in ids if not 0 <= int(c) < n_concepts]
        if out_of_range:
            raise IndexError(f"concept ids {id_list(out_of_range)} are out of range for layer {layer_name!r} with "
                             f"{n_concepts} concepts; use ids in [0, {n_concepts - 1}].")
        return [int(c) for c in ids]

    def _check_layer(self, layer_name: str) -> Concept:
        if layer_name not in self.layer_map:
            raise KeyError(f"layer {layer_name!r} is not in the layer_map; analyzed layers: {list(self.layer_map)}.")
        return self.layer_map[layer_name]

