"""Merge the stores of FeatureVisualization runs over disjoint parts of a dataset into the store of one run.

Jobs without a process group (a job array on a cluster, separate machines) each analyze a shard
``dataset[data_start:data_end]`` into a folder of their own; :func:`merge_shards` checks that the shards are
complete runs of one configuration whose ranges tile an interval without gap or overlap, and writes the store
that one run over the whole interval writes, byte for byte.
"""
from pathlib import Path
from typing import Any, Dict, List, Sequence

from crp._attribution.concepts import ChannelConcept, Concept
from crp._features.fingerprint import combine_fingerprints, json_roundtrip
from crp._features.ranking import ModeSettings, Rankings
from crp._features.store import MODES, LegacyStore, PathLike, ResultStore
from crp._utils.lock import FolderLock

__all__ = ["merge_shards"]

_RANGE_KEYS = ("data_start", "data_end")


def merge_shards(shards: Sequence[PathLike], path: PathLike) -> List[Path]:
    """Merge the stores ``shards`` into a new store at ``path``; return its manifest and result files.

    Parameters
    ----------
    shards : sequence of str or os.PathLike
        Folders written by :meth:`crp.visualization.FeatureVisualization.run` over disjoint data ranges, in any
        order.
    path : str or os.PathLike
        The merged store: a new or empty folder, or a store of the same merged result (replaced).

    Returns
    -------
    list of pathlib.Path
        The manifest and the result files.

    Raises
    ------
    ValueError
        If a shard is no complete store, the shards differ in anything but the data range, or their ranges
        overlap or leave a gap; nothing is written.
    FileExistsError
        If ``path`` is a shard, or a folder that holds anything but a store of the same merged result.
    """
    folders = _check_folders(shards, path)
    stores = sorted((_open_shard(folder) for folder in folders), key=lambda store: store.config["data_start"])
    config = _merged_config(stores)
    _check_output(Path(path), config)
    first = stores[0]
    settings = {mode: ModeSettings(**{key: first.config["modes"][mode][key] for key in
                                      ("max_target", "abs_norm", "k_max", "k_stats")}) for mode in MODES}
    # merging never scores outputs, so the concepts of the layers play no part: any Concept stands in for them
    layer_map: Dict[str, Concept] = {layer: ChannelConcept() for layer in first.manifest["layers"]}
    merged = Rankings(layer_map, settings)
    for store in stores:
        layers, targets, counts = store.checkpoint(verify=True)
        merged.merge(Rankings.from_arrays(layer_map, layers, targets, counts, settings=settings))
    start, end = config["data_start"], config["data_end"]
    fingerprint = combine_fingerprints([store.dataset_fingerprint for store in stores], sorted({start, end - 1}))
    with FolderLock(path, description="merged FeatureVisualization results"):
        _check_output(Path(path), config)  # again, now that no other writer can change it
        return ResultStore(path).save(merged.to_arrays(), merged.targets(), merged.counts(), config,
                                      next_index=end, complete=True, dataset_fingerprint=fingerprint,
                                      sample_sizes=merged.sample_sizes())


def _check_folders(shards: Sequence[PathLike], path: PathLike) -> List[Path]:
    if isinstance(shards, (str, bytes)) or not hasattr(shards, "__len__") or len(shards) == 0:
        raise TypeError(f"shards must be a non-empty list of store folders, got {shards!r}; pass e.g. "
                        f"['shard-0', 'shard-1'].")
    folders = [Path(shard) for shard in shards]
    resolved = [folder.resolve() for folder in folders]
    for i, folder in enumerate(resolved):
        if folder in resolved[:i]:
            raise ValueError(f"shard {str(folders[i])!r} is given twice; give every shard once.")
        if folder == Path(path).resolve():
            raise FileExistsError(f"the output {str(path)!r} is also a shard; merge into a new folder.")
    return folders


def _open_shard(folder: Path) -> ResultStore:
    store = ResultStore(folder)
    if not store.exists():
        what = "holds results in zennit-crp's layout, which cannot be merged" if LegacyStore.found(folder) else \
            "is no FeatureVisualization store (no manifest.json)"
        raise ValueError(f"shard {str(folder)!r} {what}; pass folders written by FeatureVisualization.run.")
    if not store.complete:
        config = store.config
        raise ValueError(
            f"shard {str(folder)!r} is incomplete: it holds dataset indices {config['data_start']}.."
            f"{store.next_index - 1} of [{config['data_start']}, {config['data_end']}) (the run was stopped or is "
            f"still running); finish it with FeatureVisualization.run(..., data_start={config['data_start']}, "
            f"data_end={config['data_end']}, resume=True) and merge again.")
    return store


def _merged_config(stores: List[ResultStore]) -> Dict[str, Any]:
    """Return the configuration of one run over all shards; raise if they differ or do not tile a range."""
    reference = {key: value for key, value in stores[0].config.items() if key not in _RANGE_KEYS}
    for store in stores[1:]:
        other = {key: value for key, value in store.config.items() if key not in _RANGE_KEYS}
        if other != reference:
            differing = sorted(key for key in set(other) | set(reference) if other.get(key) != reference.get(key))
            raise ValueError(
                f"shard {str(store.path)!r} was run with another configuration than {str(stores[0].path)!r} "
                f"(differs in {differing}); shards must come from the same model, dataset, layer_map, composite and "
                f"settings. Run the shard again with those, or leave it out.")
    for before, after in zip(stores, stores[1:]):
        _check_adjacent(before, after)
    return {**stores[0].config, "data_start": stores[0].config["data_start"], "data_end": stores[-1].config["data_end"]}


def _check_adjacent(before: ResultStore, after: ResultStore) -> None:
    end, start = before.config["data_end"], after.config["data_start"]
    if end > start:
        raise ValueError(
            f"shards {str(before.path)!r} [{before.config['data_start']}, {end}) and {str(after.path)!r} "
            f"[{start}, {after.config['data_end']}) overlap in dataset indices [{start}, "
            f"{min(end, after.config['data_end'])}); "
            f"shards must have disjoint ranges: leave one out, or run it again without the overlap.")
    if end < start:
        raise ValueError(
            f"dataset indices [{end}, {start}) are in no shard: {str(before.path)!r} ends at {end} and "
            f"{str(after.path)!r} starts at {start}; run the missing shard with data_start={end}, data_end={start} "
            f"and merge it too.")


def _check_output(path: Path, config: Dict[str, Any]) -> None:
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"the output {str(path)!r} is a file; merge into a new or empty folder.")
    if not path.is_dir() or not [p for p in path.iterdir() if p.name != ".crp-lock"]:
        return
    store = ResultStore(path)
    if not store.exists():
        raise FileExistsError(f"the output {str(path)!r} is not empty and holds no FeatureVisualization store; "
                              f"nothing was written. Merge into a new or empty folder.")
    if store.config != json_roundtrip(config):
        stored, wanted = store.config, json_roundtrip(config)
        differing = sorted(key for key in set(stored) | set(wanted) if stored.get(key) != wanted.get(key))
        raise FileExistsError(f"the output {str(path)!r} holds results of another configuration (differs in "
                              f"{differing}); nothing was written. Merge into a new folder, or delete this one.")

