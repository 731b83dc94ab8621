"""Feature visualization: find the reference samples of every concept and draw them with conditional heatmaps.

:class:`FeatureVisualization` runs Relevance Maximization and Activation Maximization (Achtibat et al., "From
attribution maps to human-understandable explanations through Concept Relevance Propagation", Nature Machine
Intelligence 5, 2023, Sec. 4.2) over a dataset: one forward and one backward pass per (sample, target) yield
the relevance and activation of every concept of every chosen layer; the top-k samples per concept are kept
overall and per target class (:class:`crp.maximization.Maximization`) in a compact, resumable store
(:class:`crp._features.store.ResultStore`). Reference samples are then shown with their concept-conditional heatmaps,
optionally restricted to the receptive field of the concept's most relevant neuron, and cached
(:mod:`crp.cache`). The API follows zennit-crp 0.6.
"""
import logging
import numbers
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from tqdm import tqdm
from zennit.composites import NameMapComposite
from zennit.core import Composite

from crp._attribution.concepts import Concept
from crp._attribution.engine import CondAttribution
from crp._features.cache import Cache, CacheKey, describe
from crp._features.dataset import SampleRange, collate, int_target, split_item
from crp._features.fingerprint import dataset_fingerprint, json_roundtrip, run_config
from crp._features.hooks import FeatVisHook
from crp._features.ranking import ModeSettings, Rankings
from crp._features.references import (
    Range,
    cached_references,
    check_plot_fn,
    check_range,
    rank_rows,
    results_fingerprint,
)
from crp._features.results_objects import Maximization, Statistics
from crp._features.store import (
    LegacyStore,
    ResultReader,
    ResultStore,
    check_mode,
    open_results,
)
from crp._image.render import vis_img_heatmap, vis_opaque_img
from crp._utils.checks import check_int, check_positive_int
from crp._utils.modules import check_layer_names

__all__ = ["FeatureVisualization"]

logger = logging.getLogger(__name__)

LayerMap = Mapping[str, Concept]
#: zennit-crp's seams of FeatureVisualization and of its result objects; overriding one runs zennit-crp's flow.
_FV_SEAMS = ("run_distributed", "collect_results", "analyze_relevance", "analyze_activation", "_save_results")
_RESULT_SEAMS = ("analyze_layer", "concatenate_with_results", "sort_result_array", "_save_results",
                 "collect_results", "delete_result_arrays")
PlotFn = Callable[[torch.Tensor, torch.Tensor, bool], Any]


class FeatureVisualization:
    """Relevance and Activation Maximization over a dataset, and reference images of concepts.

    Parameters
    ----------
    attribution : CondAttribution
        Computes the relevances; its model is analyzed.
    dataset : torch.utils.data.Dataset
        ``dataset[i]`` returns ``(sample, target)``: a tensor (without batch axis) and an int (or any target,
        see :meth:`multitarget_to_single`).
    layer_map : dict of str to Concept
        Layers to analyze and their concept definitions, e.g. ``{"features.28": ChannelConcept()}``.
    preprocess_fn : callable, optional
        Applied to a batch of samples (on ``device``) before the model; the reference images are drawn from
        the samples before it.
    max_target : {"sum", "max"}
        Rank samples by a concept's summed relevance (activation) or by its largest neuron.
    abs_norm : bool
        Normalize each sample's concept relevances by their absolute sum over the layer before ranking.
    path : str or os.PathLike
        Folder of the results (:class:`crp._features.store.ResultStore`); it may also hold results written by
        zennit-crp 0.6, which :meth:`get_max_reference` and friends read.
    device : torch.device, optional
        Device of the data; by default that of ``attribution``.
    cache : crp.cache.Cache, optional
        Cache for reference images.
    top_k : int
        Number of reference samples kept per concept (and per target); zennit-crp kept 40. It sets the
        ``SAMPLE_SIZE`` of the four result objects.

    Attributes
    ----------
    RelMax, ActMax : crp.maximization.Maximization
        The overall rankings by relevance and by activation: their settings (``max_target``, ``abs_norm``,
        ``SAMPLE_SIZE``) decide what :meth:`run` keeps, and their ``PATH`` is accepted by the
        ``crp.helper.load_*`` functions. A subclass may replace them (e.g. ``abs_norm=False`` for activations)
        or subclass them, as with zennit-crp.
    RelStats, ActStats : crp.statistics.Statistics
        The per-target rankings, likewise.
    saved_checkpoints : dict of str to list of str
        The checkpoint files of zennit-crp's flow (:meth:`run_distributed`).

    Notes
    -----
    :meth:`run` has two engines that give the same results. The default one ranks all layers and both modes
    at once in a resumable store. When a subclass overrides one of zennit-crp's seams (:meth:`run_distributed`,
    :meth:`collect_results`, :meth:`analyze_relevance`, :meth:`analyze_activation`, :meth:`_save_results`,
    or a result object's ``analyze_layer`` and friends), :meth:`run` follows zennit-crp's flow through them:
    :meth:`run_distributed` with :class:`crp.hooks.FeatVisHook`, then :meth:`collect_results`, and the
    results are written in zennit-crp's layout, which every reader of this library reads too.
    """

    def __init__(  # noqa: PLR0917 (zennit-crp's positional signature)
        self, attribution: CondAttribution, dataset, layer_map: LayerMap, preprocess_fn: Optional[Callable] = None,
        max_target: str = "sum", abs_norm: bool = True, path: Union[str, Path] = "FeatureVisualization",
        device: Optional[torch.device] = None, cache: Optional[Cache] = None, *, top_k: int = 40,
    ) -> None:
        if not isinstance(attribution, CondAttribution):
            raise TypeError(f"attribution must be a crp.attribution.CondAttribution, got {type(attribution).__name__}.")
        if not (hasattr(dataset, "__getitem__") and hasattr(dataset, "__len__")):
            raise TypeError(f"dataset must support len() and indexing, got {type(dataset).__name__}.")
        self._check_layer_map(attribution.model, layer_map)
        if preprocess_fn is not None and not callable(preprocess_fn):
            raise TypeError(f"preprocess_fn must be callable or None, got {preprocess_fn!r}.")
        if max_target not in ("sum", "max"):
            raise ValueError(f"max_target must be 'sum' or 'max', got {max_target!r}.")
        if not isinstance(abs_norm, (bool, np.bool_)):
            raise TypeError(f"abs_norm must be a bool, got {abs_norm!r}.")
        if cache is not None and not isinstance(cache, Cache):
            raise TypeError(f"cache must be a crp.cache.Cache (e.g. ImageCache(path)) or None, got {cache!r}.")
        self.attribution, self.dataset, self.layer_map = attribution, dataset, dict(layer_map)
        self.preprocess_fn, self.max_target, self.abs_norm = preprocess_fn, max_target, bool(abs_norm)
        self.top_k = check_positive_int(top_k, name="top_k")
        self.path = Path(path)
        self.device = attribution.device if device is None else torch.device(device)
        self.Cache = cache
        self.RelMax = Maximization("relevance", max_target, self.abs_norm, self.path)
        self.ActMax = Maximization("activation", max_target, self.abs_norm, self.path)
        self.RelStats = Statistics("relevance", max_target, self.abs_norm, self.path)
        self.ActStats = Statistics("activation", max_target, self.abs_norm, self.path)
        for results in (self.RelMax, self.ActMax, self.RelStats, self.ActStats):
            results.SAMPLE_SIZE = self.top_k
        self.saved_checkpoints: Dict[str, List[str]] = {"r_max": [], "a_max": [], "r_stats": [], "a_stats": []}

    @staticmethod
    def _check_layer_map(model: torch.nn.Module, layer_map: LayerMap) -> None:
        if not isinstance(layer_map, Mapping) or not layer_map:
            raise TypeError(f"layer_map must be a non-empty dict of layer name -> Concept, got {layer_map!r}.")
        check_layer_names(model, list(layer_map), "layer_map")
        bad = {name: c for name, c in layer_map.items() if not isinstance(c, Concept)}
        if bad:
            raise TypeError(f"layer_map values must be crp.concepts.Concept instances (e.g. ChannelConcept(), not "
                            f"the class), got {bad!r}.")

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

    def multitarget_to_single(self, multi_target) -> Iterable[int]:
        """Turn a sample's multi-label target into the single targets it is explained for.

        Override it for multi-label datasets: each sample is then explained once per returned target (RelMax
        and relevance statistics get one entry per target; activations count each sample once, under its first
        target). By default targets must be ints.
        """
        raise NotImplementedError

    def _has_multitarget(self) -> bool:
        return type(self).multitarget_to_single is not FeatureVisualization.multitarget_to_single

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

    # ------------------------------------------------------------------------------------------------------
    # analysis

    def run(  # noqa: PLR0917 (zennit-crp's positional signature)
        self, composite: Optional[Composite], data_start: int = 0, data_end: Optional[int] = None,
        batch_size: int = 32, checkpoint: int = 500, on_device: Optional[Union[str, torch.device]] = None, *,
        resume: bool = False, num_workers: int = 0, verbose: bool = True,
    ) -> Union[List[Path], Dict[str, List[str]]]:
        """Find the top-k samples of every concept by relevance and activation, overall and per target.

        Every sample is explained once per target with ``{"y": [target]}`` (one forward and one backward pass
        per batch, ``exclude_parallel=False``; no input heatmap is needed, so the backward pass ends at the
        lowest layers of the layer map); the relevance and the activation at every layer of the layer map are
        ranked per concept with the concept's ``reference_sampling``. Results are identical for any
        ``batch_size``, ``checkpoint`` spacing or interruption and resume; ties go to the lower dataset index.

        Parameters
        ----------
        composite : zennit.core.Composite or None
            Rules of the relevance propagation (None: gradient).
        data_start, data_end : int
            Analyze ``dataset[data_start:data_end]`` (``data_end`` None: to the end).
        batch_size : int
            Samples per batch.
        checkpoint : int
            Save the results every ``checkpoint`` batches (as zennit-crp); a killed run loses at most these.
        on_device : str or torch.device, optional
            Where relevances are ranked and the results kept; by default the model's device.
        resume : bool
            Continue after the last checkpoint of an interrupted run with the same configuration (a finished
            run returns at once). Without it, the run starts over.
        num_workers : int
            Worker processes of the DataLoader.
        verbose : bool
            Show a progress bar (samples/s).

        Returns
        -------
        list of pathlib.Path or dict
            The manifest and the result files; where zennit-crp's flow runs (see the class notes), what
            :meth:`collect_results` returns, as in zennit-crp.

        Raises
        ------
        FileExistsError
            If ``path`` holds results of another configuration (or results in zennit-crp's layout).
        crp._features.store.CorruptStoreError
            If a checkpoint to resume from is corrupt (nothing is overwritten).
        """
        data_start, data_end = self._check_data_range(data_start, data_end)
        batch_size = check_positive_int(batch_size, name="batch_size")
        checkpoint = check_positive_int(checkpoint, name="checkpoint")
        num_workers = check_int(num_workers, name="num_workers", minimum=0)
        seams = self.overridden_seams()
        if seams:
            if resume:
                raise ValueError(f"resume=True needs the default engine, but this FeatureVisualization overrides "
                                 f"{seams} and runs zennit-crp's flow, which cannot resume; run without resume.")
            checkpoints = self.run_distributed(composite, data_start, data_end, batch_size, checkpoint, on_device)
            return self.collect_results(checkpoints)
        store = ResultStore(self.path)
        config = self._config(composite, data_start, data_end)
        analysis, next_index = self._begin(store, config, resume, on_device)
        if analysis is None:
            return store.saved_files()
        loader = self._loader(next_index, data_end, batch_size, num_workers)
        bar = tqdm(total=data_end - data_start, initial=next_index - data_start, unit="sample", disable=not verbose,
                   desc="FeatureVisualization", dynamic_ncols=True)
        with bar, self.attribution.context(composite):
            for batch, (indices, data, targets) in enumerate(loader):
                self._analyze_batch(analysis, indices, data, targets, on_device)
                next_index = int(indices[-1]) + 1
                bar.update(len(indices))
                if (batch + 1) % checkpoint == 0 and next_index < data_end:
                    self._save(store, analysis, config, next_index, complete=False)
        return self._save(store, analysis, config, data_end, complete=True)

    # ------------------------------------------------------------------------------------------------------
    # zennit-crp's flow: run_distributed, the analyze_* seams, checkpoints and their collection

    def overridden_seams(self) -> List[str]:
        """Return the zennit-crp seams this object overrides; :meth:`run` follows zennit-crp's flow if any.

        Returns
        -------
        list of str
            Overridden methods of this class (e.g. ``"analyze_activation"``) and of the result objects (e.g.
            ``"ActMax.analyze_layer"``); settings (``max_target``, ``abs_norm``, ``SAMPLE_SIZE``) are no seams:
            the default engine follows them.
        """
        seams = [name for name in _FV_SEAMS if getattr(type(self), name) is not getattr(FeatureVisualization, name)]
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
        with self.attribution.context(composite), hooks.context(self.attribution.model):
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

    def _config(self, composite: Optional[Composite], data_start: int, data_end: int) -> Dict[str, Any]:
        """Everything that determines the results; a store of another configuration is not overwritten."""
        return run_config(
            model=self.attribution.model, dataset=self.dataset, layer_map=self.layer_map, composite=composite,
            settings=self._settings_config(),
            data_range=(data_start, data_end), preprocess_fn=self.preprocess_fn,
            multitarget=type(self).multitarget_to_single if self._has_multitarget() else None)

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

    def _mode_settings(self) -> Dict[str, ModeSettings]:
        """Return what each mode's result objects decide: how samples are ranked and how many are kept."""
        return {mode: ModeSettings(ranking.max_target, ranking.abs_norm, ranking.sample_size(), stats.sample_size())
                for mode, (ranking, stats) in self._result_objects().items()}

    def _settings_config(self) -> Dict[str, Any]:
        settings = self._mode_settings()
        folders = {mode: {"max": ranking.sub_folder.name, "stats": stats.sub_folder.name}
                   for mode, (ranking, stats) in self._result_objects().items()}
        return {"k": max(max(s.k_max, s.k_stats) for s in settings.values()),
                "modes": {mode: {**s.as_dict(), "folders": folders[mode]} for mode, s in settings.items()}}

    def _begin(self, store: ResultStore, config: Dict[str, Any], resume: bool,
               on_device) -> Tuple[Optional[Rankings], int]:
        """Check the folder and return the results to continue (None if already complete) and the next index."""
        if not store.exists() and LegacyStore.found(self.path):
            raise FileExistsError(f"{self.path} holds results in zennit-crp's layout; run into another path (these "
                                  f"results stay readable with get_max_reference).")
        fresh = Rankings(self.layer_map, self._mode_settings())
        if not store.exists():
            return fresh, config["data_start"]
        stored = store.config
        wanted = json_roundtrip(config)
        if stored != wanted:
            differing = sorted(key for key in set(stored) | set(wanted) if stored.get(key) != wanted.get(key))
            raise FileExistsError(
                f"{self.path} holds results of a different configuration (differs in {differing}); use another "
                f"path or delete the folder. resume=True only continues a run with the same configuration."
            )
        if not resume:
            return fresh, config["data_start"]
        if store.complete:
            logger.info("results in %s are complete; nothing to do", self.path)
            return None, config["data_end"]
        logger.info("resuming at dataset index %d", store.next_index)
        self._check_fingerprint(store.dataset_fingerprint)
        return self._load_checkpoint(store, on_device), store.next_index

    def _check_fingerprint(self, stored: Optional[Dict[str, Any]]) -> None:
        """Warn if the items the interrupted run analyzed first and last have changed.

        The configuration only knows the dataset's class and length. A warning, not an error: random transforms
        change items too.
        """
        if stored and dataset_fingerprint(self.dataset, stored["indices"]) != stored:
            warnings.warn(
                f"dataset items {stored['indices']} differ from those the interrupted run in {self.path} analyzed; "
                f"if the dataset changed, the resumed results mix two datasets: run again without resume=True (or "
                f"into another path). Datasets with random transforms always differ.", stacklevel=3)

    def _load_checkpoint(self, store: ResultStore, on_device) -> Rankings:
        layers, targets, counts = store.checkpoint(verify=True)
        device = torch.device(on_device) if on_device else self.device
        return Rankings.from_arrays(self.layer_map, layers, targets, counts, settings=self._mode_settings(),
                                    device=device)

    def _loader(self, start: int, stop: int, batch_size: int, num_workers: int) -> torch.utils.data.DataLoader:
        return torch.utils.data.DataLoader(
            SampleRange(self.dataset, start, stop), batch_size=batch_size, shuffle=False, num_workers=num_workers,
            collate_fn=collate, pin_memory=self.device.type == "cuda",
        )

    def _analyze_batch(self, analysis: Rankings, indices: torch.Tensor, data: torch.Tensor,
                       targets: List[Any], on_device) -> None:
        """One forward and backward pass over the batch; rank relevances and activations of every layer."""
        rows, row_targets = self._expand_targets(indices, targets)
        if not rows:
            return
        data = self.preprocess_data(data.to(self.device, non_blocking=True)).detach()
        rows_t = torch.as_tensor(rows, device=data.device)
        x = (data if len(rows) == len(data) and rows == list(range(len(data))) else data[rows_t]).requires_grad_()
        conditions = [{self.attribution.MODEL_OUTPUT_NAME: [t]} for t in row_targets]
        # no input heatmap is needed: the backward pass stops at the lowest layer of the layer map
        result = self.attribution(x, conditions, record_layer=list(self.layer_map), on_device=on_device,
                                  exclude_parallel=False, heatmap=False)
        first = torch.as_tensor(np.unique(np.asarray(rows), return_index=True)[1])  # every sample's first row
        row_indices, row_targets_t = indices[rows], torch.as_tensor(row_targets)
        missing = [layer for layer in self.layer_map if layer not in result.relevances]
        if missing:
            raise RuntimeError(f"layers {missing} of layer_map were not reached by the forward pass; choose layers "
                               f"the model runs.")
        analysis.update("relevance", result.relevances, row_indices, row_targets_t)
        if len(first) < len(rows):
            activations = {layer: a[first.to(a.device)] for layer, a in result.activations.items()}
            analysis.update("activation", activations, row_indices[first], row_targets_t[first])
        else:
            analysis.update("activation", result.activations, row_indices, row_targets_t)

    def _save(self, store: ResultStore, analysis: Rankings, config: Dict[str, Any], next_index: int,
              complete: bool) -> List[Path]:
        fingerprint = dataset_fingerprint(self.dataset, sorted({config["data_start"], next_index - 1}))
        files = store.save(analysis.to_arrays(), analysis.targets(), analysis.counts(), config,
                           next_index=next_index, complete=complete, dataset_fingerprint=fingerprint,
                           sample_sizes=analysis.sample_sizes())
        logger.info("saved results up to dataset index %d to %s", next_index, store.path)
        return files

    # ------------------------------------------------------------------------------------------------------
    # results

    @property
    def results(self) -> ResultReader:
        """Reader of the results at ``path``.

        This library's store, or folders in zennit-crp's layout at the ``PATH`` of the result objects.
        """
        folders = {(results.mode, results.KIND): results.PATH
                   for results in (self.RelMax, self.ActMax, self.RelStats, self.ActStats)}
        return open_results(self.path, self.max_target, self.abs_norm, folders=folders)

    def _concept_ids(self, concept_ids, layer_name: str, n_concepts: int) -> List[int]:
        if isinstance(concept_ids, (torch.Tensor, np.ndarray)):
            concept_ids = concept_ids.tolist()
        ids = [concept_ids] if not isinstance(concept_ids, Iterable) or isinstance(concept_ids, str) \
            else list(concept_ids)
        bad = [c for c in ids if isinstance(c, bool) or not isinstance(c, numbers.Integral)]
        if bad or not ids:
            raise TypeError(f"concept ids must be ints (or a non-empty list of ints), got {concept_ids!r}.")
        out_of_range = [int(c) for c in ids if not 0 <= int(c) < n_concepts]
        if out_of_range:
            raise IndexError(f"concept ids {out_of_range} are out of range for layer {layer_name!r} with {n_concepts} "
                             f"concepts; use ids in [0, {n_concepts - 1}].")
        return [int(c) for c in ids]

    def _check_layer(self, layer_name: str) -> Concept:
        if layer_name not in self.layer_map:
            raise KeyError(f"layer {layer_name!r} is not in the layer_map; analyzed layers: {list(self.layer_map)}.")
        return self.layer_map[layer_name]

    def get_max_reference(  # noqa: PLR0917 (zennit-crp's positional signature)
        self, concept_ids: Union[int, Sequence[int]], layer_name: str, mode: str = "relevance",
        r_range: Range = (0, 8), composite: Optional[Composite] = None, rf: bool = False,
        plot_fn: Optional[PlotFn] = vis_img_heatmap, batch_size: int = 32, *, full_backward: bool = False,
        overwrite: bool = False,
    ) -> Dict[int, Any]:
        """Return the reference samples of concepts (RelMax or ActMax), drawn with their conditional heatmaps.

        Parameters
        ----------
        concept_ids : int or list of int
        layer_name : str
        mode : {"relevance", "activation"}
        r_range : (int, int)
            Ranks ``start .. stop - 1`` of the reference samples, e.g. ``(0, 8)`` for the top 8.
        composite : zennit.core.Composite, optional
            Compute the concept-conditional heatmap of every reference sample with it; without it the samples
            alone are returned.
        rf : bool
            Condition on the concept's most relevant (most active) neuron only, so that the heatmap shows its
            receptive field; uses the concept's ``mask_rf``.
        plot_fn : callable or None
            ``plot_fn(samples, heatmaps, rf)`` draws the references (samples before preprocessing); None returns
            ``(samples, heatmaps)``.
        batch_size : int
            Samples per heatmap pass.
        full_backward : bool
            Start the heatmaps at the model output with ``{layer: concept, "y": target}`` (target: the sample's
            own) instead of at the layer's activation (zennit-crp's choice, which can cut or invert heatmaps,
            zennit-crp issue 11).
        overwrite : bool
            Recompute images that are cached.

        Returns
        -------
        dict
            ``{concept_id: plot_fn(samples, heatmaps, rf)}`` (or the raw tensors, see ``plot_fn``).
        """
        self._check_layer(layer_name)
        check_mode(mode)
        r_range, batch_size = check_range(r_range), check_positive_int(batch_size, name="batch_size")
        check_plot_fn(plot_fn)
        indices, _, neurons = self.results.maximization(layer_name, mode)
        ids = self._concept_ids(concept_ids, layer_name, indices.shape[1])

        def compute(concept_id: int, ranks: Range):
            rows = rank_rows(indices, ranks, f"{mode} maximization of layer {layer_name!r}")
            return self._reference(indices[rows, concept_id], concept_id, neurons[rows, concept_id],
                                   layer_name=layer_name, composite=composite, rf=rf, plot_fn=plot_fn,
                                   batch_size=batch_size, full_backward=full_backward, target=None)

        key = self._cache_key("get_max_reference", layer_name, mode, rf=rf, plot_fn=plot_fn, composite=composite,
                              full_backward=full_backward)
        return self._cached(ids, key, r_range, compute=compute, composite=composite, plot_fn=plot_fn,
                            overwrite=overwrite, rf=rf)

    def get_stats_reference(  # noqa: PLR0917 (zennit-crp's positional signature)
        self, concept_id: int, layer_name: str, targets: Union[int, Sequence[int]], mode: str = "relevance",
        r_range: Range = (0, 8), composite: Optional[Composite] = None, rf: bool = False,
        plot_fn: Optional[PlotFn] = vis_img_heatmap, batch_size: int = 32, *, full_backward: bool = False,
        overwrite: bool = False,
    ) -> Dict[str, Any]:
        """Return the reference samples of one concept among the samples of given targets.

        The arguments are those of :meth:`get_max_reference`; ``targets`` are target classes (see
        :meth:`compute_stats`). With ``full_backward`` the heatmaps start at the given target.

        Returns
        -------
        dict
            ``{"{concept_id}:{target}": plot_fn(samples, heatmaps, rf)}``.
        """
        self._check_layer(layer_name)
        check_mode(mode)
        r_range, batch_size = check_range(r_range), check_positive_int(batch_size, name="batch_size")
        check_plot_fn(plot_fn)
        reader = self.results
        target_list = [targets] if not isinstance(targets, Iterable) else list(targets)
        n_concepts = reader.maximization(layer_name, mode)[0].shape[1]
        concept_id = self._concept_ids(concept_id, layer_name, n_concepts)[0]
        known = set(reader.targets(mode).tolist())
        unknown = [t for t in target_list if t not in known]
        if unknown or not target_list:
            raise KeyError(f"no {mode} statistics for targets {unknown or target_list}; targets with statistics: "
                           f"{sorted(known)}.")

        def compute(stat_id: str, ranks: Range):
            target = int(stat_id.rsplit(":", 1)[1])
            indices, _, neurons = reader.statistics(layer_name, mode, target)
            rows = rank_rows(indices, ranks, f"{mode} statistics of layer {layer_name!r}, target {target}")
            return self._reference(indices[rows, concept_id], concept_id, neurons[rows, concept_id],
                                   layer_name=layer_name, composite=composite, rf=rf, plot_fn=plot_fn,
                                   batch_size=batch_size, full_backward=full_backward, target=target)

        key = self._cache_key("get_stats_reference", layer_name, mode, rf=rf, plot_fn=plot_fn, composite=composite,
                              full_backward=full_backward)
        ids = [f"{concept_id}:{int(t)}" for t in target_list]
        return self._cached(ids, key, r_range, compute=compute, composite=composite, plot_fn=plot_fn,
                            overwrite=overwrite, rf=rf)

    def compute_stats(  # noqa: PLR0917 (zennit-crp's positional signature)
        self, concept_id: int, layer_name: str, mode: str = "relevance", top_N: int = 5, mean_N: int = 10,
        norm: bool = False,
    ) -> Tuple[np.ndarray, torch.Tensor]:
        """Return the targets for which a concept is most relevant (active), and their mean values.

        Parameters
        ----------
        concept_id : int
        layer_name : str
        mode : {"relevance", "activation"}
        top_N : int
            Number of targets returned.
        mean_N : int
            A target's value is the mean over its top ``mean_N`` reference samples.
        norm : bool
            Divide the values by the largest one.

        Returns
        -------
        (numpy.ndarray, torch.Tensor)
            Targets sorted by decreasing mean value (ties: lower target first) and the mean values.
        """
        self._check_layer(layer_name)
        check_mode(mode)
        top_N, mean_N = check_positive_int(top_N, name="top_N"), check_positive_int(mean_N, name="mean_N")
        reader = self.results
        n_concepts = reader.maximization(layer_name, mode)[0].shape[1]
        concept_id = self._concept_ids(concept_id, layer_name, n_concepts)[0]
        targets, means = reader.mean_values(layer_name, mode, concept_id, mean_N)
        order = np.argsort(-means, kind="stable")[:top_N]
        values = torch.from_numpy(means[order].copy())
        if norm and len(values) and values[0] != 0:  # a concept that never received relevance stays at zero
            values = values / values[0]
        return targets[order], values

    def precompute_ref(  # noqa: PLR0917 (zennit-crp's positional signature)
        self, layer_c_ind: Mapping[str, Sequence[int]], composite: Composite, rf: bool = True, stats: bool = False,
        top_N: int = 4, mean_N: int = 10, mode: str = "relevance", r_range: Range = (0, 8),
        plot_list: Sequence[PlotFn] = (vis_opaque_img,), batch_size: int = 32, *, full_backward: bool = False,
        verbose: bool = True,
    ) -> None:
        """Draw and cache the reference images of many concepts with every plot function of ``plot_list``.

        Parameters
        ----------
        layer_c_ind : dict of str to list of int
            Concept ids per layer.
        stats : bool
            Also the references of each concept's ``top_N`` targets (:meth:`compute_stats`).

        Other Parameters
        ----------------
        composite, rf, top_N, mean_N, mode, r_range, batch_size, full_backward, verbose
            As in :meth:`get_max_reference` and :meth:`compute_stats`; ``plot_list`` holds the plot functions.
        """
        if self.Cache is None:
            raise ValueError("precompute_ref stores images in a cache: pass cache=ImageCache(path) to "
                             "FeatureVisualization.")
        if composite is None:
            raise ValueError("precompute_ref needs a zennit composite to compute the heatmaps; got composite=None.")
        plot_list = list(plot_list)
        if not plot_list or not all(callable(fn) for fn in plot_list):
            raise TypeError(f"plot_list must be a non-empty list of plot functions, got {plot_list!r}.")
        for layer_name, concept_ids in layer_c_ind.items():
            for concept_id in tqdm(list(concept_ids), desc=str(layer_name), disable=not verbose, dynamic_ncols=True):
                raw = self.get_max_reference(concept_id, layer_name, mode, r_range, composite, rf, None, batch_size,
                                             full_backward=full_backward)
                self._save_plots(raw, plot_list, func_name="get_max_reference", layer_name=layer_name, mode=mode,
                                 r_range=r_range, composite=composite, rf=rf, full_backward=full_backward)
                if not stats:
                    continue
                targets, _ = self.compute_stats(concept_id, layer_name, mode, top_N, mean_N)
                raw_stats = self.get_stats_reference(concept_id, layer_name, [int(t) for t in targets], mode,
                                                     r_range, composite, rf, None, batch_size,
                                                     full_backward=full_backward)
                self._save_plots(raw_stats, plot_list, func_name="get_stats_reference", layer_name=layer_name,
                                 mode=mode, r_range=r_range, composite=composite, rf=rf, full_backward=full_backward)

    def _save_plots(self, raw: Dict[Any, Tuple[torch.Tensor, torch.Tensor]], plot_list, *, func_name, layer_name,
                    mode, r_range, composite, rf, full_backward) -> None:
        cache = self.Cache
        if cache is None:
            return
        for plot_fn in plot_list:
            key = self._cache_key(func_name, layer_name, mode, rf=rf, plot_fn=plot_fn, composite=composite,
                                  full_backward=full_backward)
            for ref_id, (samples, heatmaps) in raw.items():
                cache.save({ref_id: plot_fn(samples, heatmaps, rf)}, key, (r_range[0], r_range[0] + len(samples)))

    # ------------------------------------------------------------------------------------------------------
    # reference images

    def _cache_key(self, func_name: str, layer_name: str, mode: str, *, rf: bool, plot_fn, composite,
                   full_backward: bool) -> CacheKey:
        identity = {
            "results": results_fingerprint(self.results, self.path), "concept": describe(self.layer_map[layer_name]),
            "preprocess_fn": describe(self.preprocess_fn), "full_backward": bool(full_backward),
            "max_target": self.max_target, "abs_norm": self.abs_norm,
        }
        return CacheKey(func_name, layer_name, mode, bool(rf), describe(plot_fn), describe(composite), identity)

    def _cached(self, ids: List[Any], key: CacheKey, r_range: Range, *, compute, composite, plot_fn,
                overwrite: bool, rf: bool) -> Dict[Any, Any]:
        """Load references from the cache; compute, store and add the missing ranks."""
        if rf and composite is None:
            warnings.warn("rf=True needs a composite: the receptive field is only used for heatmaps; pass a zennit "
                          "composite.", stacklevel=3)
        use_cache = self.Cache is not None and plot_fn is not None and composite is not None
        return cached_references(self.Cache if use_cache else None, ids, key=key, r_range=r_range, compute=compute,
                                 overwrite=overwrite)

    def _reference(self, d_indices: np.ndarray, c_id: int, n_indices: np.ndarray, *, layer_name: str, composite,
                   rf: bool, plot_fn, batch_size: int, full_backward: bool, target: Optional[int]):
        """:meth:`_load_ref_and_attribution`, with this library's ``full_backward`` where it is asked for."""
        if not full_backward:
            return self._load_ref_and_attribution(d_indices, c_id, n_indices, layer_name, composite, rf, plot_fn,
                                                  batch_size)
        overridden = [name for name in ("_load_ref_and_attribution", "_attribution_on_reference")
                      if getattr(type(self), name) is not getattr(FeatureVisualization, name)]
        if overridden:
            raise ValueError(f"full_backward=True is not available where a subclass overrides {overridden} "
                             f"(zennit-crp's seams know no targets); call with full_backward=False.")
        return self._load_ref_and_attribution(d_indices, c_id, n_indices, layer_name, composite, rf, plot_fn,
                                              batch_size, full_backward=True, target=target)

    def _load_ref_and_attribution(self, d_indices: np.ndarray, c_id: int, n_indices: np.ndarray,  # noqa: PLR0917
                                  layer_name: str, composite: Optional[Composite], rf: bool, plot_fn: Optional[PlotFn],
                                  batch_size: int, *, full_backward: bool = False, target: Optional[int] = None):
        """Load the reference samples ``d_indices``; with a composite, compute and draw their heatmaps.

        zennit-crp's seam, with its signature (``n_indices``: the most relevant neuron of every sample, for
        ``rf``); a subclass may override it.

        Returns
        -------
        object
            The samples (without a composite), ``plot_fn(samples, heatmaps, rf)``, or ``(samples, heatmaps)``
            without a plot function; samples are those before preprocessing.
        """
        data, sample_targets = self.get_data_concurrently(d_indices, preprocessing=False)
        data = data.detach()
        if composite is None:
            return data.cpu()
        targets = None
        if full_backward:
            targets = [[target]] * len(data) if target is not None else [
                self._explained_targets(t, i) for t, i in zip(sample_targets, d_indices)]
        heatmaps = self._attribution_on_reference(self.preprocess_data(data).detach(), c_id, layer_name, composite,
                                                  rf, n_indices, batch_size, targets=targets)
        if callable(plot_fn):
            return plot_fn(data, heatmaps.detach(), rf)
        return data.cpu(), heatmaps.detach().cpu()

    def _explained_targets(self, target, index) -> List[int]:
        if self._has_multitarget():
            return [int_target(t, index) for t in self.multitarget_to_single(target)]
        return [int_target(target, index)]

    def _attribution_on_reference(self, data: torch.Tensor, concept_id: int, layer_name: str,  # noqa: PLR0917
                                  composite: Composite, rf: bool = False,
                                  neuron_ids: Union[Sequence[int], np.ndarray] = (),
                                  batch_size: int = 32, *, targets: Optional[List[List[int]]] = None) -> torch.Tensor:
        """Concept-conditional heatmaps of reference samples, ``batch_size`` at a time.

        zennit-crp's seam, with its signature. The relevance starts at the layer's activation (zennit-crp's
        choice), or at the model output for ``targets`` (one list of targets per sample, ``full_backward``);
        with ``rf`` only the neuron ``neuron_ids[i]`` of sample ``i`` is kept (the concept's ``mask_rf``).

        Returns
        -------
        torch.Tensor
            One heatmap per sample, on ``device``.
        """
        if rf and len(neuron_ids) != len(data):
            raise ValueError(f"neuron_ids must hold one neuron per sample with rf=True: got {len(neuron_ids)} for "
                             f"{len(data)} samples.")
        concept = self.layer_map[layer_name]
        output = self.attribution.MODEL_OUTPUT_NAME
        heatmaps = []
        for start in range(0, len(data), batch_size):
            stop = min(start + batch_size, len(data))
            x = data[start:stop].detach().requires_grad_()
            conditions: List[Dict[str, Any]]
            if rf:
                conditions = [{layer_name: {concept_id: [int(n)]}} for n in neuron_ids[start:stop]]
            else:
                conditions = [{layer_name: [concept_id]} for _ in range(stop - start)]
            if targets is not None:
                for condition, row_targets in zip(conditions, targets[start:stop]):
                    condition[output] = row_targets
            result = self.attribution(
                x, conditions, composite, mask_map=concept.mask_rf if rf else concept.mask,
                start_layer=None if targets is not None else layer_name, on_device=self.device,
                exclude_parallel=False,
            )
            heatmaps.append(result.heatmap)
        return torch.cat(heatmaps)


def _check_ranked(ranked: Any, rel: torch.Tensor, method: str) -> None:
    """Refuse what an overridden ``analyze_layer`` returns unless it is four ``(n, C)`` tensors."""
    ok = isinstance(ranked, (tuple, list)) and len(ranked) == 4 and all(isinstance(r, torch.Tensor) for r in ranked)
    shapes = [tuple(r.shape) for r in ranked] if ok else []
    if not ok or len(set(shapes)) != 1 or len(shapes[0]) != 2 or shapes[0][0] != len(rel):
        got = shapes if ok else type(ranked).__name__
        raise TypeError(f"{method} must return four tensors (d_c_sorted, rel_c_sorted, rf_c_sorted, t_c_sorted) of "
                        f"shape (n, C) with n = {len(rel)} rows of the batch, got {got}.")
