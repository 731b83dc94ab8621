"""Reference images of FeatureVisualization: samples with their conditional heatmaps, ranks, the image cache.

:class:`References` is the part of :class:`crp.visualization.FeatureVisualization` that reads the results and
draws reference samples (``get_max_reference``, ``get_stats_reference``, ``compute_stats``,
``precompute_ref``), with zennit-crp's seams ``_load_ref_and_attribution`` and ``_attribution_on_reference``.
"""
import numbers
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from zennit.core import Composite

from crp._features.base import FeatureVisualizationBase
from crp._features.cache import Cache, CacheKey, describe
from crp._features.store import ResultReader, ResultStore, check_mode
from crp._image.render import vis_img_heatmap, vis_opaque_img
from crp._utils.checks import check_positive_int
from crp._utils.progress import tqdm

__all__ = [
    "References", "Range", "PlotFn", "check_plot_fn", "check_range", "rank_rows", "results_fingerprint",
    "cached_references",
]

#: Ranks ``start .. stop - 1`` of the reference samples.
Range = Tuple[int, int]
#: A plot function ``(samples, heatmaps, rf) -> images``.
PlotFn = Callable[[torch.Tensor, torch.Tensor, bool], Any]


def check_plot_fn(plot_fn) -> None:
    if plot_fn is not None and not callable(plot_fn):
        raise TypeError(f"plot_fn must be a function (samples, heatmaps, rf) -> images, or None for the raw tensors; "
                        f"got {plot_fn!r}.")


def check_range(r_range) -> Range:
    ok = isinstance(r_range, (tuple, list)) and len(r_range) == 2 and all(
        isinstance(r, numbers.Integral) and not isinstance(r, bool) for r in r_range)
    if not ok or not 0 <= r_range[0] < r_range[1]:
        raise ValueError(f"r_range must be a pair of ints (start, stop) with 0 <= start < stop, got {r_range!r}; "
                         f"e.g. (0, 8) for the top 8 samples.")
    return int(r_range[0]), int(r_range[1])


def rank_rows(indices: np.ndarray, ranks: Range, what: str) -> slice:
    if ranks[0] >= len(indices):
        raise ValueError(f"r_range starts at rank {ranks[0]}, but the {what} holds {len(indices)} samples; "
                         f"choose a range below {len(indices)}.")
    return slice(ranks[0], min(ranks[1], len(indices)))


def results_fingerprint(reader: ResultReader, path: Path) -> Any:
    """Return what identifies the results references are drawn from.

    The store's configuration and progress, or the modification time of a zennit-crp folder.
    """
    if isinstance(reader, ResultStore):
        return reader.progress()
    return {"legacy": str(path.resolve()), "mtime_ns": max(p.stat().st_mtime_ns for p in path.iterdir())}


def cached_references(cache: Optional[Cache], ids: List[Any], *, key: CacheKey, r_range: Range,
                      compute: Callable[[Any, Range], Any], overwrite: bool, verbose: bool = False,
                      desc: str = "references") -> Dict[Any, Any]:
    """Return the references of ``ids`` at ranks ``r_range``.

    They are loaded from ``cache`` where it has them, else computed with ``compute(ref_id, ranks)`` and stored;
    everything is computed without a cache or with ``overwrite``. With ``verbose``, a progress bar counts the
    computed ones.
    """
    if cache is None:
        return {ref_id: compute(ref_id, r_range)
                for ref_id in tqdm(ids, desc=desc, unit="concept", disable=not verbose, dynamic_ncols=True)}
    if overwrite:
        found: Dict[Any, Any] = {}
        missing = {ref_id: r_range for ref_id in ids}
    else:
        found, missing = cache.load(ids, key, r_range)
    bar = tqdm(missing.items(), desc=desc, unit="concept", disable=not verbose or not missing, dynamic_ncols=True)
    for ref_id, ranks in bar:
        value = compute(ref_id, ranks)
        cache.save({ref_id: value}, key, ranks)
        found = cache.extend_dict(found, {ref_id: value})
    return {ref_id: found[ref_id] for ref_id in ids if ref_id in found}


class References(FeatureVisualizationBase):
    """Reference samples and their heatmaps, a part of :class:`crp.visualization.FeatureVisualization` (see there)."""

    def get_max_reference(  # noqa: PLR0917 (zennit-crp's positional signature)
        self, concept_ids: Union[int, Sequence[int]], layer_name: str, mode: str = "relevance",
        r_range: Range = (0, 8), composite: Optional[Composite] = None, rf: bool = False,
        plot_fn: Optional[PlotFn] = vis_img_heatmap, batch_size: int = 32, *, full_backward: bool = False,
        overwrite: bool = False, verbose: bool = True,
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
        verbose : bool
            Show a progress bar over the concepts whose references are computed (not those from the cache).

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
                            overwrite=overwrite, rf=rf, verbose=verbose, desc=f"references of {layer_name}")

    def get_stats_reference(  # noqa: PLR0917 (zennit-crp's positional signature)
        self, concept_id: int, layer_name: str, targets: Union[int, Sequence[int]], mode: str = "relevance",
        r_range: Range = (0, 8), composite: Optional[Composite] = None, rf: bool = False,
        plot_fn: Optional[PlotFn] = vis_img_heatmap, batch_size: int = 32, *, full_backward: bool = False,
        overwrite: bool = False, verbose: bool = True,
    ) -> Dict[str, Any]:
        """Return the reference samples of one concept among the samples of given targets.

        The arguments are those of :meth:`get_max_reference`; ``targets`` are target classes (see
        :meth:`compute_stats`). With ``full_backward`` the heatmaps start at the given target; ``verbose``
        shows a progress bar over the targets whose references are computed.

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
                            overwrite=overwrite, rf=rf, verbose=verbose,
                            desc=f"references of {layer_name} #{concept_id}")

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
                                             full_backward=full_backward, verbose=False)
                self._save_plots(raw, plot_list, func_name="get_max_reference", layer_name=layer_name, mode=mode,
                                 r_range=r_range, composite=composite, rf=rf, full_backward=full_backward)
                if not stats:
                    continue
                targets, _ = self.compute_stats(concept_id, layer_name, mode, top_N, mean_N)
                raw_stats = self.get_stats_reference(concept_id, layer_name, [int(t) for t in targets], mode,
                                                     r_range, composite, rf, None, batch_size,
                                                     full_backward=full_backward, verbose=False)
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

    def _cache_key(self, func_name: str, layer_name: str, mode: str, *, rf: bool, plot_fn, composite,
                   full_backward: bool) -> CacheKey:
        identity = {
            "results": results_fingerprint(self.results, self.path), "concept": describe(self.layer_map[layer_name]),
            "preprocess_fn": describe(self.preprocess_fn), "full_backward": bool(full_backward),
            "max_target": self.max_target, "abs_norm": self.abs_norm,
        }
        return CacheKey(func_name, layer_name, mode, bool(rf), describe(plot_fn), describe(composite), identity)

    def _cached(self, ids: List[Any], key: CacheKey, r_range: Range, *, compute, composite, plot_fn,
                overwrite: bool, rf: bool, verbose: bool = False, desc: str = "references") -> Dict[Any, Any]:
        """Load references from the cache; compute, store and add the missing ranks."""
        if rf and composite is None:
            warnings.warn("rf=True needs a composite: the receptive field is only used for heatmaps; pass a zennit "
                          "composite.", stacklevel=3)
        use_cache = self.Cache is not None and plot_fn is not None and composite is not None
        return cached_references(self.Cache if use_cache else None, ids, key=key, r_range=r_range, compute=compute,
                                 overwrite=overwrite, verbose=verbose, desc=desc)

    def _reference(self, d_indices: np.ndarray, c_id: int, n_indices: np.ndarray, *, layer_name: str, composite,
                   rf: bool, plot_fn, batch_size: int, full_backward: bool, target: Optional[int]):
        """:meth:`_load_ref_and_attribution`, with this library's ``full_backward`` where it is asked for."""
        if not full_backward:
            return self._load_ref_and_attribution(d_indices, c_id, n_indices, layer_name, composite, rf, plot_fn,
                                                  batch_size)
        overridden = [name for name in ("_load_ref_and_attribution", "_attribution_on_reference")
                      if getattr(type(self), name) is not getattr(References, name)]
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
