"""Feature visualization: find the reference samples of every concept and draw them with conditional heatmaps.

This module holds :class:`FeatureVisualization` and its default engine (the run loop over the dataset, resume,
the store); zennit-crp's flow lives in :mod:`crp._features.zennit_flow`, the reference images in
:mod:`crp._features.references`, what they share in :mod:`crp._features.base`.

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
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union, cast

import numpy as np
import torch
from zennit.core import Composite

from crp._attribution.concepts import Concept
from crp._attribution.engine import CondAttribution
from crp._attribution.probes import check_device
from crp._features.cache import Cache
from crp._features.dataset import SampleRange, collate, unwrap_loader
from crp._features.distributed import (
    RankFailedError,
    RankGroup,
    Round,
    plan_rounds,
    weights_digest,
    world_size_from_environment,
)
from crp._features.fingerprint import dataset_fingerprint, json_roundtrip, run_config, same_items
from crp._features.ranking import ModeSettings, Rankings
from crp._features.references import References
from crp._features.results_objects import Maximization, Statistics
from crp._features.shards import merge_shards
from crp._features.store import (
    LegacyStore,
    ResultStore,
)
from crp._features.zennit_flow import ZennitFlow
from crp._utils.checks import check_bool, check_int, check_positive_int
from crp._utils.lock import FolderLock
from crp._utils.modules import check_layer_names
from crp._utils.progress import tqdm
from crp._utils.transfer import to_device

__all__ = ["FeatureVisualization"]

logger = logging.getLogger(__name__)

LayerMap = Mapping[str, Concept]


class FeatureVisualization(ZennitFlow, References):
    """Relevance and Activation Maximization over a dataset, and reference images of concepts.

    Parameters
    ----------
    attribution : CondAttribution
        Computes the relevances; its model is analyzed.
    dataset : torch.utils.data.Dataset or torch.utils.data.DataLoader
        ``dataset[i]`` returns ``(sample, target)``: a tensor (without batch axis) and an int (or any target,
        see :meth:`multitarget_to_single`). Of a DataLoader, its dataset is used (read in index order: a
        warning says so if the loader shuffles or collates otherwise), and its batch size is :meth:`run`'s
        default.
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
        dataset, self.loader_batch_size = unwrap_loader(dataset)
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
    # analysis

    def run(  # noqa: PLR0917 (zennit-crp's positional signature)
        self, composite: Optional[Composite], data_start: int = 0, data_end: Optional[int] = None,
        batch_size: Optional[int] = None, checkpoint: int = 500,
        on_device: Optional[Union[str, torch.device]] = None, *, resume: bool = False, num_workers: int = 0,
        verbose: bool = True, distributed: bool = True,
    ) -> Union[List[Path], Dict[str, List[str]]]:
        """Find the top-k samples of every concept by relevance and activation, overall and per target.

        Every sample is explained once per target with ``{"y": [target]}`` (one forward and one backward pass
        per batch, ``exclude_parallel=False``; no input heatmap is needed, so the backward pass ends at the
        lowest layers of the layer map); the relevance and the activation at every layer of the layer map are
        ranked per concept with the concept's ``reference_sampling``. Results are identical for any
        ``batch_size``, ``checkpoint`` spacing or interruption and resume; ties go to the lower dataset index.

        In a job of several processes (started with ``torchrun --nproc-per-node N``, or any launcher that sets
        ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT``), every process calls ``run`` with the same
        arguments and the processes share the work: the range is analyzed in rounds of ``N * checkpoint`` batches,
        each process its contiguous part with its own DataLoader, and at the end of every round process 0 gathers
        the results, merges them and saves the checkpoint. The process group is the one initialized, else one made
        here from the environment (``gloo`` for a CPU model, ``nccl`` for CUDA, objects through a ``gloo`` group)
        and destroyed at the end. The stored results are those of one process, byte for byte, for any number of
        processes, ``batch_size`` and ``checkpoint`` spacing; a stopped job resumes with any number of
        processes. Only process 0 writes into (and locks) ``path``, shows the progress bar, and decides
        ``resume``; every process returns its file list. The processes' configurations (model, weights, dataset
        class and length, layer map, composite, settings, data range, ``batch_size``, ``checkpoint``) are compared
        before any work; a process that fails or ends stops the others at the next checkpoint with a
        ``RuntimeError`` naming it, and the last checkpoint stays. Without a process group, jobs can analyze
        shards of the data into folders of their own and :meth:`merge` them.

        Parameters
        ----------
        composite : zennit.core.Composite or None
            Rules of the relevance propagation (None: gradient).
        data_start, data_end : int
            Analyze ``dataset[data_start:data_end]`` (``data_end`` None: to the end).
        batch_size : int, optional
            Samples per batch; by default the batch size of the DataLoader given as ``dataset``, else 32.
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
        distributed : bool
            In a job of several processes (see above), share the work with the others. False: this process
            analyzes the whole range alone (e.g. when only one process of a training job calls ``run``).

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
        ValueError
            In a distributed job, on every process, if the processes were given different configurations.
        RuntimeError
            In a distributed job, if a process failed or ended (the error names it), or if zennit-crp's flow
            (see the class notes) would run: it does not split the data among processes.
        """
        data_start, data_end = self._check_data_range(data_start, data_end)
        if batch_size is None:
            batch_size = getattr(self, "loader_batch_size", None) or 32
        batch_size = check_positive_int(batch_size, name="batch_size")
        checkpoint = check_positive_int(checkpoint, name="checkpoint")
        num_workers = check_int(num_workers, name="num_workers", minimum=0)
        check_device(on_device)
        seams = self.overridden_seams()
        world_size = world_size_from_environment() if check_bool(distributed, name="distributed") else 1
        if seams:
            if world_size > 1:
                raise RuntimeError(f"this FeatureVisualization overrides {seams} and runs zennit-crp's flow, which "
                                   f"does not split the data among the {world_size} processes of this distributed "
                                   f"job; run it in one process, or without the overrides.")
            if resume:
                raise ValueError(f"resume=True needs the default engine, but this FeatureVisualization overrides "
                                 f"{seams} and runs zennit-crp's flow, which cannot resume; run without resume.")
            checkpoints = self.run_distributed(composite, data_start, data_end, batch_size, checkpoint, on_device)
            return self.collect_results(checkpoints)
        options: Dict[str, Any] = {"batch_size": batch_size, "checkpoint": checkpoint, "on_device": on_device,
                                   "resume": resume, "num_workers": num_workers, "verbose": verbose}
        if world_size > 1:
            with RankGroup(self.device) as group:
                return self._run_ranks(group, composite, (data_start, data_end), **options)
        with FolderLock(self.path, description="FeatureVisualization results"):
            return self._run_default(composite, (data_start, data_end), **options)

    @classmethod
    def merge(cls, shards: Sequence[Union[str, Path]], path: Union[str, Path]) -> List[Path]:
        """Merge the results of runs over disjoint parts of a dataset into the results of one run.

        Jobs without a process group (a job array, separate machines) each run a shard, e.g.
        ``fv.run(composite, data_start, data_end)`` with a ``path`` of their own; ``merge`` writes the store that one
        run over the whole range writes, byte for byte. The shards are compared
        with each other, not with a model: no model or dataset is needed. Also ``python -m crp merge OUT SHARD...``.

        Parameters
        ----------
        shards : sequence of str or os.PathLike
            The ``path`` folders of the runs, in any order.
        path : str or os.PathLike
            Folder of the merged results: new, empty, or holding results of the same merge (replaced). A
            FeatureVisualization with this ``path`` reads them.

        Returns
        -------
        list of pathlib.Path
            The manifest and the result files.

        Raises
        ------
        ValueError
            If a shard is not a complete run (still running, stopped, or no store), the shards differ in anything
            but the data range (model, dataset, layer map, composite, settings), or their ranges overlap or leave a
            gap. The message names the shard and the fix; nothing is written.
        FileExistsError
            If ``path`` is a shard, or holds anything but results of the same merge; nothing is written.

        Examples
        --------
        >>> FeatureVisualization.merge(["shard-0", "shard-1", "shard-2"], "results")  # doctest: +SKIP
        """
        return merge_shards(shards, path)

    def _run_default(self, composite: Optional[Composite], data_range: Tuple[int, int], *, batch_size: int,
                     checkpoint: int, on_device, resume: bool, num_workers: int, verbose: bool) -> List[Path]:
        """Run the default engine: all layers and both modes ranked at once, checkpoints in the resumable store."""
        data_start, data_end = data_range
        store = ResultStore(self.path)
        config = self._config(composite, data_start, data_end)
        analysis, next_index = self._begin(store, config, resume, on_device)
        if analysis is None:
            return store.verify()
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

    def _run_ranks(self, group: RankGroup, composite: Optional[Composite], data_range: Tuple[int, int], *,
                   batch_size: int, checkpoint: int, on_device, resume: bool, num_workers: int,
                   verbose: bool) -> List[Path]:
        """Run the default engine on every rank of a process group (see :mod:`crp._features.distributed`).

        Each rank analyzes its part of a round of ``world_size * checkpoint`` batches; at the end of the round
        rank 0 gathers the ranks' results, merges them into its own and saves the checkpoint.
        """
        data_start, data_end = data_range
        config = self._config(composite, data_start, data_end)
        group.check_same({**json_roundtrip(config), "batch_size": batch_size, "checkpoint": checkpoint,
                          "model weights": weights_digest(self.attribution.model)})
        store = ResultStore(self.path)
        lock = FolderLock(self.path, description="FeatureVisualization results")
        held: Dict[str, Optional[Rankings]] = {}

        def begin() -> Tuple[int, bool]:
            lock.acquire()
            held["analysis"], start = self._begin(store, config, resume, on_device)
            return start, held["analysis"] is None

        try:
            next_index, complete = self._from_rank_0(group, begin)
            if complete:
                return self._from_rank_0(group, store.verify)
            rounds = plan_rounds(next_index, data_end, batch_size, checkpoint, group.world_size)
            loader = self._rank_loader([batch for r in rounds for batch in r.batches[group.rank]], num_workers)
            bar = tqdm(total=data_end - data_start, initial=next_index - data_start, unit="sample",
                       disable=not verbose or group.rank != 0, desc="FeatureVisualization", dynamic_ncols=True)
            files: List[Path] = []
            with bar, self.attribution.context(composite):
                batches = iter(loader)
                for part in rounds:
                    # rank 0 adds its share to the results so far; the others start every round empty
                    mine = cast(Rankings, held["analysis"]) if group.rank == 0 else \
                        Rankings(self.layer_map, self._mode_settings())
                    failure = self._analyze_share(mine, batches, len(part.batches[group.rank]), on_device, bar=bar,
                                                  world_size=group.world_size, until=part.stop - data_start)
                    files = self._merge_round(group, part, mine, failure, store=store, config=config,
                                              on_device=on_device)
                    bar.update(part.stop - data_start - bar.n)
            return files
        finally:
            lock.release()

    def _analyze_share(self, analysis: Rankings, batches: Iterator, count: int, on_device, *, bar: tqdm,
                       world_size: int, until: int) -> Optional[Exception]:
        """Analyze this rank's next ``count`` batches; return the error that stopped it, if any."""
        try:
            for _ in range(count):
                indices, data, targets = next(batches)
                self._analyze_batch(analysis, indices, data, targets, on_device)
                bar.update(max(0, min(len(indices) * world_size, until - bar.n)))  # all ranks' rate, estimated
        except Exception as error:  # noqa: BLE001 - reported to every rank at the checkpoint, then raised here
            return error
        return None

    def _merge_round(self, group: RankGroup, part: Round, mine: Rankings, failure: Optional[Exception], *,
                     store: ResultStore, config: Dict[str, Any], on_device) -> List[Path]:
        """Gather the ranks' results of a round on rank 0, merge them into its own and save the checkpoint."""
        group.barrier(f"the checkpoint at dataset index {part.stop}")
        if failure is not None:
            payload: Any = ("failed", f"{type(failure).__name__}: {failure}")
        else:
            payload = None if group.rank == 0 else ("done", mine.to_arrays(), mine.targets(), mine.counts())
        parts = group.gather(payload)

        def save() -> List[Path]:  # on rank 0, which gathered the parts
            failed = [f"rank {rank} ({message[1]})" for rank, message in enumerate(cast(List[Any], parts))
                      if message is not None and message[0] == "failed"]
            if failed:
                kept = f"next index {store.next_index}" if store.exists() else "none was written yet"
                raise RankFailedError(
                    f"{', '.join(failed)} failed before the checkpoint at dataset index {part.stop}; the last "
                    f"checkpoint in {self.path} stays ({kept}). Fix the cause and run again with resume=True (any "
                    f"number of processes).")
            device = self._results_device(on_device)
            for message in cast(List[Any], parts)[1:]:
                if message[1]:  # a rank without samples in this round has no results
                    mine.merge(Rankings.from_arrays(self.layer_map, message[1], message[2], message[3],
                                                    settings=self._mode_settings(), device=device))
            return self._save(store, mine, config, part.stop, complete=part.stop == config["data_end"])

        try:
            return self._from_rank_0(group, save)
        except RankFailedError:
            if failure is not None:
                raise failure from None  # this rank's own error, with its traceback
            raise

    @staticmethod
    def _from_rank_0(group: RankGroup, step: Callable[[], Any]) -> Any:
        """Run ``step`` on rank 0 and return its result on every rank; if it raises, every rank raises."""
        outcome: Any = None
        error: Optional[Exception] = None
        if group.rank == 0:
            try:
                outcome = ("ok", step())
            except Exception as caught:  # noqa: BLE001 - told to the other ranks, then raised
                error, outcome = caught, ("error", f"{type(caught).__name__}: {caught}")
        outcome = group.broadcast(outcome)
        if error is not None:
            raise error
        if outcome[0] == "error":
            raise RankFailedError(f"rank 0 stopped the distributed run, so rank {group.rank} stops too: {outcome[1]}")
        return outcome[1]

    def _config(self, composite: Optional[Composite], data_start: int, data_end: int) -> Dict[str, Any]:
        """Everything that determines the results; a store of another configuration is not overwritten."""
        return run_config(
            model=self.attribution.model, dataset=self.dataset, layer_map=self.layer_map, composite=composite,
            settings=self._settings_config(),
            data_range=(data_start, data_end), preprocess_fn=self.preprocess_fn,
            multitarget=type(self).multitarget_to_single if self._has_multitarget() else None)

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
        if stored and not same_items(stored, self.dataset):
            warnings.warn(
                f"dataset items {stored['indices']} differ from those the interrupted run in {self.path} analyzed; "
                f"if the dataset changed, the resumed results mix two datasets: run again without resume=True (or "
                f"into another path). Datasets with random transforms always differ.", stacklevel=3)

    def _load_checkpoint(self, store: ResultStore, on_device) -> Rankings:
        layers, targets, counts = store.checkpoint(verify=True)
        device = self._results_device(on_device)
        return Rankings.from_arrays(self.layer_map, layers, targets, counts, settings=self._mode_settings(),
                                    device=device)

    def _results_device(self, on_device) -> torch.device:
        return torch.device(on_device) if on_device else self.device

    def _loader(self, start: int, stop: int, batch_size: int, num_workers: int) -> torch.utils.data.DataLoader:
        return torch.utils.data.DataLoader(
            SampleRange(self.dataset, start, stop), batch_size=batch_size, shuffle=False, num_workers=num_workers,
            collate_fn=collate, pin_memory=self.device.type == "cuda",
        )

    def _rank_loader(self, batches: Sequence[range], num_workers: int) -> torch.utils.data.DataLoader:
        """Return a loader of the given batches of dataset indices, as ``(indices, samples, targets)``."""
        return torch.utils.data.DataLoader(
            SampleRange(self.dataset, 0, len(self.dataset)), batch_sampler=[list(batch) for batch in batches],
            num_workers=num_workers, collate_fn=collate, pin_memory=self.device.type == "cuda",
        )

    def _analyze_batch(self, analysis: Rankings, indices: torch.Tensor, data: torch.Tensor,
                       targets: List[Any], on_device) -> None:
        """One forward and backward pass over the batch; rank relevances and activations of every layer."""
        rows, row_targets = self._expand_targets(indices, targets)
        if not rows:
            return
        data = self.preprocess_data(data.to(self.device, non_blocking=True)).detach()
        if len(rows) == len(data) and rows == list(range(len(data))):
            x = data.requires_grad_()
        else:
            x = data[to_device(np.asarray(rows), data.device)].requires_grad_()
        conditions = [{self.attribution.MODEL_OUTPUT_NAME: [t]} for t in row_targets]
        # no input heatmap is needed: the backward pass stops at the lowest layer of the layer map
        result = self.attribution(x, conditions, record_layer=list(self.layer_map), on_device=on_device,
                                  exclude_parallel=False, heatmap=False)
        first = np.unique(np.asarray(rows), return_index=True)[1]  # every sample's first row
        # host data from the DataLoader: the rankings' bookkeeping needs nothing from the device
        row_indices, row_targets_np = indices.cpu().numpy()[rows], np.asarray(row_targets, dtype=np.int64)
        missing = [layer for layer in self.layer_map if layer not in result.relevances]
        if missing:
            raise RuntimeError(f"layers {missing} of layer_map were not reached by the forward pass; choose layers "
                               f"the model runs.")
        analysis.update("relevance", self.outputs_to_rank(x, result.relevances), row_indices, row_targets_np)
        activations = self.outputs_to_rank(x, result.activations)
        if len(first) < len(rows):
            activations = {layer: a[to_device(first, a.device)] for layer, a in activations.items()}
            analysis.update("activation", activations, row_indices[first], row_targets_np[first])
        else:
            analysis.update("activation", activations, row_indices, row_targets_np)

    def outputs_to_rank(self, data: torch.Tensor,  # noqa: ARG002 (the seam's argument, for subclasses)
                        outputs: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """Return the relevances (or activations) of a batch at the layers of the layer map as :meth:`run` ranks them.

        A seam for subclasses; the default returns ``outputs`` unchanged.
        :class:`crp.transformers.TextFeatureVisualization` marks padded tokens here, so that they are never ranked.

        Parameters
        ----------
        data : torch.Tensor
            The batch the model was given, one row per row of the outputs (after :meth:`preprocess_data`).
        outputs : dict of str to torch.Tensor
            ``{layer_name: tensor}`` of the batch.

        Returns
        -------
        dict of str to torch.Tensor
        """
        return outputs

    def _save(self, store: ResultStore, analysis: Rankings, config: Dict[str, Any], next_index: int,
              complete: bool) -> List[Path]:
        fingerprint = dataset_fingerprint(self.dataset, sorted({config["data_start"], next_index - 1}))
        files = store.save(analysis.to_arrays(), analysis.targets(), analysis.counts(), config,
                           next_index=next_index, complete=complete, dataset_fingerprint=fingerprint,
                           sample_sizes=analysis.sample_sizes())
        logger.info("saved results up to dataset index %d to %s", next_index, store.path)
        return files
