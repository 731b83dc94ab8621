"""zennit-crp's flow of FeatureVisualization: ``run_distributed``, the ``analyze_*`` seams, checkpoints.

Research code built on zennit-crp overrides these methods (or the result objects' ``analyze_layer`` and
friends); :meth:`ZennitFlow.overridden_seams` finds such overrides, and ``FeatureVisualization.run`` then runs
this flow instead of the default engine: :class:`crp.hooks.FeatVisHook` on every layer of the layer map hands
activations and relevances to :meth:`ZennitFlow.analyze_activation` and :meth:`ZennitFlow.analyze_relevance`,
which rank them with the result objects, and checkpoints are written and collected in zennit-crp's layout.
"""
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

import numpy as np
import torch
from zennit.composites import NameMapComposite
from zennit.core import Composite

from crp._attribution.concepts import Concept
from crp._features.base import FeatureVisualizationBase
from crp._features.hooks import FeatVisHook
from crp._features.results_objects import Maximization, Statistics
from crp._features.store import ResultStore
from crp._utils.checks import check_positive_int
from crp._utils.lock import FolderLock
from crp._utils.progress import tqdm

__all__ = ["ZennitFlow"]

#: zennit-crp's seams of FeatureVisualization and of its result objects; overriding one runs zennit-crp's flow.
_FV_SEAMS = ("run_distributed", "collect_results", "analyze_relevance", "analyze_activation", "_save_results")
_RESULT_SEAMS = ("analyze_layer", "concatenate_with_results", "sort_result_array", "_save_results",
                 "collect_results", "delete_result_arrays")


class ZennitFlow(FeatureVisualizationBase):
    """zennit-crp's analysis flow, a part of :class:`crp.visualization.FeatureVisualization` (see there)."""

    def overridden_seams(self) -> List[str]:
        """Return the zennit-crp seams this object overrides; :meth:`run` follows zennit-crp's flow if any.

        Returns
        -------
        list of str
            Overridden methods of this class (e.g. ``"analyze_activation"``) and of the result objects (e.g.
            ``"ActMax.analyze_layer"``); settings (``max_target``, ``abs_norm``, ``SAMPLE_SIZE``) are no seams:
            the default engine follows them.
        """
        seams = [name for name in _FV_SEAMS if getattr(type(self), name) is not getattr(ZennitFlow, name)]
        for name in ("RelMax", "ActMax", "RelStats", "ActStats"):
            results = getattr(self, name)
            base = Maximization if name.endswith("Max") else Statistics
            seams += [f"{name}.{method}" for method in _RESULT_SEAMS
                      if getattr(type(results), method, None) is not getattr(base, method)]
        self._result_objects()  # types and modes are right
        return seams

    def run_distributed(self, composite: Optional[Composite], data_start: int, data_end: int,  # noqa: PLR0917
                        batch_size: int = 16, checkpoint: int = 500,
                        on_device: Optional[Union[str, torch.device]] = None) -> Dict[str, List[str]]:
        """Analyze ``dataset[data_start:data_end]`` in zennit-crp's flow.

        :class:`crp.hooks.FeatVisHook` on every layer of the layer map passes activations and relevances to
        :meth:`analyze_activation` and :meth:`analyze_relevance`; every ``checkpoint`` batches,
        :meth:`_save_results` writes the results so far.

        Parameters
        ----------
        composite : zennit.core.Composite or None
            Rules of the relevance propagation.
        data_start, data_end : int
            The dataset range (``data_end`` exclusive).
        batch_size : int
            Samples per batch.
        checkpoint : int
            Batches between checkpoints.
        on_device : str or torch.device, optional
            Where activations and relevances are analyzed.

        Returns
        -------
        dict of str to list of str
            ``saved_checkpoints``: the file prefixes of the checkpoints of ``"r_max"``, ``"a_max"``,
            ``"r_stats"`` and ``"a_stats"``, for :meth:`collect_results`.
        """
        data_start, data_end = self._check_data_range(data_start, data_end)
        batch_size = check_positive_int(batch_size, name="batch_size")
        checkpoint = check_positive_int(checkpoint, name="checkpoint")
        if ResultStore(self.path).exists():
            raise FileExistsError(f"{self.path} holds results of the default engine; zennit-crp's flow writes its "
                                  f"own layout: run into another path.")
        self.saved_checkpoints = {"r_max": [], "a_max": [], "r_stats": [], "a_stats": []}
        dict_inputs: Dict[str, Any] = {}
        hooks = NameMapComposite([([name], FeatVisHook(self, concept, name, dict_inputs, on_device))
                                  for name, concept in self.layer_map.items()])
        samples = np.arange(data_start, data_end)
        last_checkpoint = data_start
        lock = FolderLock(self.path, description="FeatureVisualization results")
        with lock, self.attribution.context(composite), hooks.context(self.attribution.model):
            for batch, start in enumerate(tqdm(range(0, len(samples), batch_size), desc="FeatureVisualization")):
                indices = samples[start:start + batch_size]
                data, targets = self.get_data_concurrently(indices, preprocessing=True)
                rows, row_targets = self._expand_targets(torch.as_tensor(indices), list(targets))
                if not rows:
                    continue
                dict_inputs["sample_indices"], dict_inputs["targets"] = indices[rows], np.asarray(row_targets)
                conditions = [{self.attribution.MODEL_OUTPUT_NAME: [target]} for target in row_targets]
                self.attribution(data[torch.as_tensor(rows)].detach().requires_grad_(), conditions,
                                 exclude_parallel=False)
                if batch % checkpoint == checkpoint - 1:
                    self._save_results((last_checkpoint, int(indices[-1]) + 1))
                    last_checkpoint = int(indices[-1]) + 1
        if last_checkpoint < data_end:
            self._save_results((last_checkpoint, data_end))
        return self.saved_checkpoints

    @torch.no_grad()
    def analyze_relevance(self, rel: torch.Tensor, layer_name: str, concept: Concept, data_indices: np.ndarray,
                          targets: np.ndarray) -> None:
        """Rank one batch's relevance at a layer: ``RelMax.analyze_layer``, then ``RelStats.analyze_layer``."""
        ranked = self.RelMax.analyze_layer(rel, concept, layer_name, data_indices, targets)
        _check_ranked(ranked, rel, "RelMax.analyze_layer")
        self.RelStats.analyze_layer(*ranked, layer_name)

    @torch.no_grad()
    def analyze_activation(self, act: torch.Tensor, layer_name: str, concept: Concept, data_indices: np.ndarray,
                           targets: np.ndarray) -> None:
        """Rank one batch's activation at a layer, once per sample (its first explained target)."""
        data_indices, targets = np.asarray(data_indices), np.asarray(targets)
        first = np.unique(data_indices, return_index=True)[1]
        ranked = self.ActMax.analyze_layer(act[torch.as_tensor(first, device=act.device)], concept, layer_name,
                                           data_indices[first], targets[first])
        _check_ranked(ranked, act[:len(first)], "ActMax.analyze_layer")
        self.ActStats.analyze_layer(*ranked, layer_name)

    def _save_results(self, d_index: Optional[Tuple[int, int]] = None) -> None:
        """Write a checkpoint of all four result objects (dataset indices ``d_index``) and note its files."""
        for key, results in zip(("r_max", "a_max", "r_stats", "a_stats"),
                                (self.RelMax, self.ActMax, self.RelStats, self.ActStats)):
            self.saved_checkpoints.setdefault(key, []).extend(results._save_results(d_index))

    def collect_results(self, checkpoints: Mapping[str, List[str]],
                        d_index: Optional[Tuple[int, int]] = None) -> Dict[str, List[str]]:
        """Merge the checkpoints of :meth:`run_distributed` (of one or many runs over disjoint ranges).

        Parameters
        ----------
        checkpoints : dict of str to list of str
            ``{"r_max": [...], "a_max": [...], "r_stats": [...], "a_stats": [...]}`` file prefixes.
        d_index : (int, int), optional
            Name the merged results as a checkpoint of these indices (None: the final results).

        Returns
        -------
        dict of str to list of str
            The files written per kind, as zennit-crp returned them.
        """
        missing = [key for key in ("r_max", "a_max", "r_stats", "a_stats") if key not in checkpoints]
        if missing:
            raise KeyError(f"checkpoints has no entry for {missing}; pass what run_distributed returned.")
        return {key: results.collect_results(list(checkpoints[key]), d_index)
                for key, results in zip(("r_max", "a_max", "r_stats", "a_stats"),
                                        (self.RelMax, self.ActMax, self.RelStats, self.ActStats))}


def _check_ranked(ranked: Any, rel: torch.Tensor, method: str) -> None:
    """Refuse what an overridden ``analyze_layer`` returns unless it is four ``(n, C)`` tensors."""
    ok = isinstance(ranked, (tuple, list)) and len(ranked) == 4 and all(isinstance(r, torch.Tensor) for r in ranked)
    shapes = [tuple(r.shape) for r in ranked] if ok else []
    if not ok or len(set(shapes)) != 1 or len(shapes[0]) != 2 or shapes[0][0] != len(rel):
        got = shapes if ok else type(ranked).__name__
        raise TypeError(f"{method} must return four tensors (d_c_sorted, rel_c_sorted, rf_c_sorted, t_c_sorted) of "
                        f"shape (n, C) with n = {len(rel)} rows of the batch, got {got}.")
