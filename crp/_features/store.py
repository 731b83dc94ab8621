"""Result stores of :class:`crp.visualization.FeatureVisualization`.

A compact, resumable store, and a reader for the folders written by zennit-crp 0.6.

Layout of a :class:`ResultStore` at ``path``::

    path/manifest.json                      configuration, progress, targets, counts, file list
    path/results-<digest>/{layer}.max.npy     (2, R, C): top samples of every concept (RelMax, ActMax)
    path/results-<digest>/{layer}.stats.npy   (2, N, C): top samples per target (RelStats, ActStats)

Both hold records of :data:`RECORD` (``index`` int32: dataset index, ``value`` float32: relevance or
activation, ``neuron`` int32: flat index of the most relevant neuron; -1, NaN, -1 in empty slots). Axis 0 is
the mode (relevance, activation), then the rank (``max``, ``R = min(k, samples)``) or the rows of all targets
one after another (``stats``), then the concept. The rows of target ``manifest["targets"][i]`` are
``offsets[i]:offsets[i + 1]`` with ``offsets = manifest["stats_offsets"]`` (see :func:`stats_offsets`): each
target has ``min(k, its samples)`` rows (the larger count of the two modes), so no target is padded to the
size of the largest one. ``manifest["counts"]`` has the number of samples per mode, overall and per target.
Two files per layer, readable with ``numpy.load`` (no pickle, memory-mappable):
``np.load(".../conv1.max.npy")["index"][0]`` are conv1's RelMax samples. Every checkpoint
writes a new ``results-*`` folder (each file through a temporary file and :func:`os.replace`), then replaces
the manifest atomically, then deletes the old folder: a process killed at any point leaves a consistent store.
The folder is named by a digest of the manifest's content, so equal results make equal stores, byte for byte,
whatever the number of checkpoints, processes or batches that led to them.

zennit-crp 0.6 wrote one ``.npy`` per layer and array (``RelMax_sum_normed/{layer}_data.npy``) and per class
(``RelStats_sum_normed/{layer}/{class}_data.npy``); :class:`LegacyStore` reads such folders.
"""
import hashlib
import json
import os
import re
import shutil
import sys
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

import crp
from crp._utils.files import write_atomic

__all__ = [
    "ResultReader", "ResultStore", "LegacyStore", "CorruptStoreError", "open_results", "open_result_folder",
    "legacy_folder_name", "stats_offsets", "check_mode", "pack_records", "record_fields", "save_triple",
    "load_triple", "remove_triple", "store_folder_names", "MODES", "KINDS", "FIELDS", "RECORD", "TRIPLE_SUFFIXES",
]

#: zennit-crp 0.6's files of one ranking: ``{prefix}data.npy`` (dataset indices), ``rel.npy`` (values),
#: ``rf.npy`` (neurons).
TRIPLE_SUFFIXES = ("data", "rel", "rf")

#: The two rankings, axis 0 of every array: by conditional relevance and by activation.
MODES = ("relevance", "activation")
#: One entry of a ranking: dataset index, value, most relevant (active) neuron.
RECORD = np.dtype([("index", "<i4"), ("value", "<f4"), ("neuron", "<i4")])
#: The fields of :data:`RECORD`.
FIELDS = ("index", "value", "neuron")
Fields = Mapping[str, np.ndarray]
KINDS = ("max", "stats")
FORMAT = "crp.FeatureVisualization"
FORMAT_VERSION = 2
MANIFEST = "manifest.json"
#: The file crp writes first into every ``results-*`` folder it creates: only such folders are ever deleted.
GENERATION_MARKER = ".crp-generation"
#: Hex digits of the content digest that names a ``results-*`` folder.
DIRECTORY_DIGITS = 16
# results-<content digest>, or results-<6-digit counter> as earlier versions of this format named them
_GENERATION = re.compile(r"^results-([0-9a-f]{16}|\d{6})$")
_LEGACY = re.compile(r"^(Rel|Act)(Max|Stats)_(sum|max)_(normed|unnormed)$")

PathLike = Union[str, os.PathLike]
Triple = Tuple[np.ndarray, np.ndarray, np.ndarray]


class CorruptStoreError(ValueError):
    """A store file is truncated, corrupt, or does not match the manifest."""


def stats_offsets(counts: Mapping[str, Sequence[int]], k: Union[int, Mapping[str, int]]) -> np.ndarray:
    """Where each target's rows start in the ``stats`` arrays: ``T + 1`` offsets (int64).

    A target has as many rows as the mode that keeps more of its samples: ``min(k, samples)`` per mode.

    Parameters
    ----------
    counts : dict
        ``{mode: [samples overall, samples of target 0, ...]}`` for both :data:`MODES`.
    k : int or dict of str to int
        Samples kept per concept and target, for all modes or per mode.
    """
    sizes = {mode: int(k[mode] if isinstance(k, Mapping) else k) for mode in MODES}
    per_target = np.max([np.minimum(np.asarray(counts[mode][1:], dtype=np.int64), sizes[mode]) for mode in MODES],
                        axis=0)
    return np.concatenate([[0], np.cumsum(per_target)]).astype(np.int64)


def legacy_folder_name(mode: str, kind: str, max_target: str, abs_norm: bool) -> str:
    """zennit-crp 0.6's sub-folder name, e.g. ``RelMax_sum_normed`` for ``("relevance", "max", "sum", True)``."""
    check_mode(mode)
    prefix = "Rel" if mode == "relevance" else "Act"
    middle = {"max": "Max", "stats": "Stats"}[kind]
    return f"{prefix}{middle}_{max_target}_{'normed' if abs_norm else 'unnormed'}"


class ResultReader(ABC):
    """Read access to reference samples: the top samples per concept, overall and per target class."""

    @abstractmethod
    def maximization(self, layer: str, mode: str) -> Triple:
        """Return ``(indices, values, neurons)``, each ``(n, C)``, sorted by rank (n = min(k, samples))."""

    @abstractmethod
    def statistics(self, layer: str, mode: str, target: int) -> Triple:
        """Return ``(indices, values, neurons)`` of the samples of class ``target``, each ``(n, C)``."""

    @abstractmethod
    def targets(self, mode: str) -> np.ndarray:
        """Return the target classes with statistics, as int64."""

    def mean_values(self, layer: str, mode: str, concept: int, mean_n: int) -> Tuple[np.ndarray, np.ndarray]:
        """Return the targets and, per target, the mean of the top ``mean_n`` values of ``concept`` (float32)."""
        targets = self.targets(mode)
        means = np.zeros(len(targets), np.float32)
        for i, target in enumerate(targets):
            values = self.statistics(layer, mode, int(target))[1]
            means[i] = np.asarray(values[:mean_n, concept]).mean(dtype=np.float32)
        return targets, means


class LegacyStore(ResultReader):
    """Reader for result folders in zennit-crp 0.6's layout.

    They are written by zennit-crp, or by this library's zennit-crp style ``run_distributed`` /
    ``collect_results``.

    Parameters
    ----------
    path : str or os.PathLike
        The ``path`` given to zennit-crp's FeatureVisualization (holding ``RelMax_sum_normed`` etc.).
    max_target, abs_norm
        Select the sub-folders (``{Rel,Act}{Max,Stats}_{max_target}_{normed,unnormed}``).
    folders : dict, optional
        ``{(mode, kind): folder}`` where the result objects of the modes have different settings; overrides
        ``max_target`` and ``abs_norm`` for the pairs it names.
    """

    def __init__(self, path: PathLike, max_target: str = "sum", abs_norm: bool = True, *,
                 folders: Optional[Mapping[Tuple[str, str], PathLike]] = None) -> None:
        self.path, self.max_target, self.abs_norm = Path(path), max_target, abs_norm
        self.folders = {key: Path(value) for key, value in (folders or {}).items()}

    def folder(self, mode: str, kind: str) -> Path:
        """Return the folder of ``mode`` (relevance, activation) and ``kind`` (max, stats)."""
        return self.folders.get((mode, kind)) or self.path / legacy_folder_name(mode, kind, self.max_target,
                                                                                 self.abs_norm)

    def maximization(self, layer: str, mode: str) -> Triple:
        folder = self.folder(mode, "max")
        return load_triple(folder / f"{layer}_")

    def statistics(self, layer: str, mode: str, target: int) -> Triple:
        folder = self.folder(mode, "stats") / layer
        if not (folder / f"{int(target)}_data.npy").exists() and self.folder(mode, "stats").exists():
            raise KeyError(f"no statistics for target {target!r} in {folder}; targets are "
                           f"{self.targets(mode).tolist()}.")
        return load_triple(folder / f"{int(target)}_")

    def targets(self, mode: str) -> np.ndarray:
        file = self.folder(mode, "stats") / "targets.npy"
        array = _np_load(file, mmap=False)
        try:
            return np.asarray(array).astype(np.int64)  # zennit-crp may have saved them as strings
        except ValueError:
            raise CorruptStoreError(f"{file} does not hold integer targets: {array!r}.") from None

    @staticmethod
    def found(path: PathLike) -> bool:
        """Whether ``path`` holds zennit-crp 0.6 result folders."""
        path = Path(path)
        return path.is_dir() and any(_LEGACY.match(p.name) and p.is_dir() for p in path.iterdir())


class ResultStore(ResultReader):
    """The compact, resumable store (see the module docstring for its layout).

    Parameters
    ----------
    path : str or os.PathLike
        Folder of the store; created on the first save.
    """

    def __init__(self, path: PathLike) -> None:
        self.path = Path(path)
        self._manifest: Optional[Dict[str, Any]] = None

    # ------------------------------------------------------------------------------------------------------
    # reading

    def exists(self) -> bool:
        """Whether the folder holds a manifest."""
        return (self.path / MANIFEST).is_file()

    @property
    def manifest(self) -> Dict[str, Any]:
        """The parsed manifest; FileNotFoundError if there is none, CorruptStoreError if it is unreadable."""
        if self._manifest is None:
            self._manifest = self._read_manifest()
        return self._manifest

    @property
    def config(self) -> Dict[str, Any]:
        """The configuration of the run that wrote the store (compared on resume)."""
        return self.manifest["config"]

    @property
    def next_index(self) -> int:
        """The first dataset index not yet included."""
        return int(self.manifest["next_index"])

    @property
    def complete(self) -> bool:
        """Whether the run that wrote the store has finished."""
        return bool(self.manifest["complete"])

    @property
    def dataset_fingerprint(self) -> Optional[Dict[str, Any]]:
        """The identification of the data analyzed so far, as given to :meth:`save`."""
        return self.manifest.get("dataset_fingerprint")

    def progress(self) -> Dict[str, Any]:
        """Return the configuration and progress: what identifies the results in the store (e.g. for a cache key)."""
        return {"config": self.config, "next_index": self.next_index, "complete": self.complete}

    def verify(self) -> List[Path]:
        """Check every file of the current checkpoint against its size and checksum; return the files.

        Raises
        ------
        CorruptStoreError
            Naming the first file that does not match.
        """
        for layer in self.manifest["layers"]:
            self.layer_arrays(layer, mmap=True, verify=True)
        return self.saved_files()

    def checkpoint(self, *, verify: bool = True) -> Tuple[Dict[str, Dict[str, Dict[str, np.ndarray]]], List[int],
                                                         Dict[str, List[int]]]:
        """Read everything needed to resume: ``({layer: {kind: fields}}, targets, counts)``.

        ``fields`` are :data:`FIELDS` arrays as passed to :meth:`save`; every file is checked against its
        checksum when ``verify``.
        """
        layers = {layer: {kind: record_fields(array) for kind, array in
                          self.layer_arrays(layer, mmap=False, verify=verify).items()}
                  for layer in self.manifest["layers"]}
        return layers, list(self.manifest["targets"]), {m: list(c) for m, c in self.manifest["counts"].items()}

    def layer_arrays(self, layer: str, mmap: bool = True, verify: bool = True) -> Dict[str, np.ndarray]:
        """Return the record arrays ``{"max": (2, R, C), "stats": (2, N, C)}`` of ``layer``.

        Parameters
        ----------
        mmap : bool
            Memory-map the files instead of reading them.
        verify : bool
            Check each file's SHA-256 against the manifest. A file is hashed once per process (and again only
            if its size or modification time changes), so repeated reads cost a ``stat``.
        """
        layers = self.manifest["layers"]
        if layer not in layers:
            raise KeyError(f"layer {layer!r} has no results in {self.path}; stored layers: {list(layers)}.")
        arrays = {}
        for kind, entry in layers[layer]["files"].items():
            file = self.path / self.manifest["directory"] / entry["name"]
            array = _np_load(file, mmap)
            _check_file(file, array, entry, RECORD, verify)
            arrays[kind] = array
        return arrays

    def sample_size(self, mode: str, kind: str) -> int:
        """Return the samples kept per concept in ``mode`` overall (``kind="max"``) or per target (``"stats"``)."""
        sizes = self.manifest.get("sample_sizes") or {}
        return int(sizes.get(mode, {}).get(kind, self.manifest["k"]))

    def maximization(self, layer: str, mode: str) -> Triple:
        m = check_mode(mode)
        rows = min(self.sample_size(mode, "max"), self.manifest["counts"][mode][0])
        return _triple(self.layer_arrays(layer)["max"][m, :rows])

    def statistics(self, layer: str, mode: str, target: int) -> Triple:
        m = check_mode(mode)
        targets = self.manifest["targets"]
        count = self.manifest["counts"][mode]
        if int(target) not in targets or count[1 + targets.index(int(target))] == 0:
            raise KeyError(f"no {mode} statistics for target {target!r} in {self.path}; targets are "
                           f"{self.targets(mode).tolist()}.")
        group = targets.index(int(target))
        start = self.manifest["stats_offsets"][group]
        rows = min(self.sample_size(mode, "stats"), count[1 + group])
        return _triple(self.layer_arrays(layer)["stats"][m, start:start + rows])

    def targets(self, mode: str) -> np.ndarray:
        check_mode(mode)
        counts = self.manifest["counts"][mode][1:]
        return np.asarray([t for t, c in zip(self.manifest["targets"], counts) if c > 0], dtype=np.int64)

    def mean_values(self, layer: str, mode: str, concept: int, mean_n: int) -> Tuple[np.ndarray, np.ndarray]:
        m = check_mode(mode)
        stats = self.layer_arrays(layer)["stats"]
        counts = np.asarray(self.manifest["counts"][mode][1:])
        offsets = self.manifest["stats_offsets"]
        seen = np.flatnonzero(counts > 0)
        means = np.zeros(len(seen), np.float32)
        for i, group in enumerate(seen):
            rows = min(mean_n, self.sample_size(mode, "stats"), int(counts[group]))
            start = offsets[group]
            means[i] = np.asarray(stats[m, start:start + rows, concept]["value"]).mean(dtype=np.float32)
        return np.asarray(self.manifest["targets"], dtype=np.int64)[seen], means

    # ------------------------------------------------------------------------------------------------------
    # writing

    def save(self, layers: Mapping[str, Mapping[str, Any]], targets: List[int],
             counts: Mapping[str, List[int]], config: Mapping[str, Any], *, next_index: int, complete: bool,
             dataset_fingerprint: Optional[Mapping[str, Any]] = None,
             sample_sizes: Optional[Mapping[str, Mapping[str, int]]] = None) -> List[Path]:
        """Write a checkpoint atomically; return the paths of the manifest and the array files.

        Parameters
        ----------
        layers : dict
            ``{layer: {"max": ..., "stats": ...}}`` record arrays (:data:`RECORD`) of shape ``(2, R, C)`` and
            ``(2, N, C)``, ``N = stats_offsets(counts, k)[-1]``, or dicts of their :data:`FIELDS` arrays.
        targets : list of int
            The target of every entry of the stats' axis 1.
        counts : dict
            ``{mode: [samples overall, samples of target 0, ...]}``.
        config : dict
            JSON-serializable configuration of the run with at least ``"k"``; compared on resume.
        next_index : int
            First dataset index not yet included.
        complete : bool
            Whether the run has finished.
        dataset_fingerprint : dict, optional
            JSON-serializable identification of the data analyzed so far, kept in the manifest.
        sample_sizes : dict, optional
            ``{mode: {"max": k, "stats": k}}`` where the modes keep different numbers of samples; by default
            ``config["k"]`` everywhere.
        """
        k = int(config.get("k", 0))
        sizes = {mode: {kind: int((sample_sizes or {}).get(mode, {}).get(kind, k)) for kind in KINDS}
                 for mode in MODES}
        offsets = stats_offsets(counts, {mode: sizes[mode]["stats"] for mode in MODES})
        layers = {layer: {kind: _as_records(arrays[kind]) for kind in KINDS} for layer, arrays in layers.items()}
        for layer, arrays in layers.items():
            if np.shape(arrays["stats"])[:2] != (len(MODES), offsets[-1]):
                raise ValueError(f"the stats of layer {layer!r} have shape {np.shape(arrays['stats'])}; with these "
                                 f"counts and k they need ({len(MODES)}, {offsets[-1]}, C).")
        records = {layer: {kind: np.ascontiguousarray(arrays[kind], dtype=RECORD) for kind in KINDS}
                   for layer, arrays in layers.items()}
        layer_entries = {
            layer: {"n_concepts": int(arrays["max"].shape[-1]),
                    "files": {kind: {"name": f"{layer}.{kind}.npy", "shape": list(array.shape),
                                     "sha256": _digest(array)} for kind, array in arrays.items()}}
            for layer, arrays in records.items()}
        manifest = {
            "format": FORMAT, "format_version": FORMAT_VERSION, "crp_version": crp.__version__,
            "config": dict(config), "next_index": int(next_index), "complete": bool(complete), "k": k,
            "sample_sizes": sizes, "modes": list(MODES), "record": [list(item) for item in RECORD.descr],
            "axes": {"max": ["mode", "rank", "concept"], "stats": ["mode", "row", "concept"]},
            "targets": [int(t) for t in targets], "counts": {m: [int(c) for c in counts[m]] for m in MODES},
            "stats_offsets": offsets.tolist(),
            "dataset_fingerprint": None if dataset_fingerprint is None else dict(dataset_fingerprint),
            "layers": layer_entries,
        }
        # the folder is named by its content: the same results give the same store, byte for byte, however many
        # checkpoints (processes, batches) led to them
        content = hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()[:DIRECTORY_DIGITS]
        directory = f"results-{content}"
        manifest = {**manifest, "directory": directory}
        self.path.mkdir(parents=True, exist_ok=True)
        folder = self.path / directory
        current = self._read_manifest()["directory"] if self.exists() else None
        files = [folder / f"{layer}.{kind}.npy" for layer, arrays in records.items() for kind in arrays]
        if directory != current:
            if folder.exists() and not _written_by_crp(folder):
                raise FileExistsError(f"{folder} exists and was not written by crp; nothing was saved. Move it out "
                                      f"of {self.path} and run again.")
            if folder.exists():
                shutil.rmtree(folder)  # an interrupted save's folder (it carries the marker)
            folder.mkdir()
            (folder / GENERATION_MARKER).write_text(f"written by crp {crp.__version__}\n")
            for layer, arrays in records.items():
                for kind, array in arrays.items():
                    _atomic_save(folder / f"{layer}.{kind}.npy", array)
        write_atomic(self.path / MANIFEST, lambda temporary: temporary.write_text(json.dumps(manifest, indent=1)))
        self._manifest = manifest
        self.remove_stale()
        return [self.path / MANIFEST] + files

    def remove_stale(self) -> None:
        """Delete what interrupted saves left behind.

        These are ``results-*`` folders crp wrote (they carry its marker) that the manifest does not point to,
        and temporary files of the manifest. Folders and files that crp did not write are never touched, whatever
        their names.
        """
        current = self.manifest["directory"] if self.exists() else None
        for folder in self.path.glob("results-*"):
            if _GENERATION.match(folder.name) and folder.name != current and _written_by_crp(folder):
                shutil.rmtree(folder)
        for temporary in self.path.glob(f".{MANIFEST}.*.tmp"):
            if temporary.is_file() and not temporary.is_symlink():
                temporary.unlink()

    def saved_files(self) -> List[Path]:
        """Return the manifest and the array files of the current checkpoint."""
        folder = self.path / self.manifest["directory"]
        return [self.path / MANIFEST] + [folder / entry["name"] for layer in self.manifest["layers"].values()
                                         for entry in layer["files"].values()]

    def _read_manifest(self) -> Dict[str, Any]:
        file = self.path / MANIFEST
        if not file.is_file():
            raise FileNotFoundError(f"no results in {self.path} (no {MANIFEST}); call FeatureVisualization.run "
                                    f"first.")
        try:
            manifest = json.loads(file.read_text())
        except (ValueError, UnicodeDecodeError) as error:
            raise CorruptStoreError(f"{file} is not valid JSON ({error}); the store is corrupt. Delete the "
                                    f"folder and run again.") from None
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise CorruptStoreError(f"{file} is not a crp FeatureVisualization manifest.")
        if manifest.get("format_version", 0) != FORMAT_VERSION:
            advice = "Update crp." if manifest.get("format_version", 0) > FORMAT_VERSION else \
                "It was written by a development version before the first release; run FeatureVisualization again."
            raise CorruptStoreError(f"{file} has format version {manifest.get('format_version')}; this crp reads "
                                    f"version {FORMAT_VERSION}. {advice}")
        _check_manifest_paths(file, manifest)
        return manifest


def open_results(path: PathLike, max_target: str = "sum", abs_norm: bool = True, *,
                 folders: Optional[Mapping[Tuple[str, str], PathLike]] = None) -> ResultReader:
    """Return a reader for the results at ``path``: a :class:`ResultStore` or folders in zennit-crp's layout.

    zennit-crp's folders are named by ``max_target`` and ``abs_norm``, or given by ``folders`` (see
    :class:`LegacyStore`).

    Raises
    ------
    FileNotFoundError
        If ``path`` holds neither.
    """
    store = ResultStore(path)
    if store.exists():
        return store
    if LegacyStore.found(path):
        return LegacyStore(path, max_target, abs_norm, folders=folders)
    raise FileNotFoundError(f"no FeatureVisualization results in {Path(path)}; call FeatureVisualization.run "
                            f"first (or pass the path of earlier results).")


def open_result_folder(path_folder: PathLike) -> Tuple[ResultReader, Optional[str], Optional[str]]:
    """Resolve a zennit-crp style result folder such as ``{path}/RelMax_sum_normed``.

    Returns the reader, and the mode and kind (``"max"`` or ``"stats"``) named by the folder. A folder that is
    itself a :class:`ResultStore` returns ``(store, None, None)``.
    """
    folder = Path(path_folder)
    if ResultStore(folder).exists():
        return ResultStore(folder), None, None
    match = _LEGACY.match(folder.name)
    if match is None:
        raise FileNotFoundError(
            f"{folder} is neither a result store nor a folder named like 'RelMax_sum_normed'; pass "
            f"FeatureVisualization(...).RelMax.PATH (or the store path itself)."
        )
    mode = "relevance" if match.group(1) == "Rel" else "activation"
    kind = "max" if match.group(2) == "Max" else "stats"
    max_target, abs_norm = match.group(3), match.group(4) == "normed"
    store = ResultStore(folder.parent)
    if store.exists():
        named = store_folder_names(store.config)
        if folder.name not in named:
            raise FileNotFoundError(f"{folder.parent} holds the results named {sorted(named)}, not those named by "
                                    f"{folder.name!r}; pass one of those (e.g. fv.RelMax.PATH).")
        return store, mode, kind
    return LegacyStore(folder.parent, max_target, abs_norm), mode, kind


# ----------------------------------------------------------------------------------------------------------
# helpers

def store_folder_names(config: Mapping[str, Any]) -> List[str]:
    """Return the zennit-crp folder names (``RelMax_sum_normed`` ...) that stand for a store's results.

    These are the folders of the result objects of the run with configuration ``config``.
    """
    modes = config.get("modes")
    if modes:
        return [modes[mode]["folders"][kind] for mode in MODES for kind in KINDS]
    return [legacy_folder_name(mode, kind, config.get("max_target", "sum"), bool(config.get("abs_norm", True)))
            for mode in MODES for kind in KINDS]


def check_mode(mode: str) -> int:
    """Return the position of ``mode`` in :data:`MODES` (axis 0 of every array); ValueError for others."""
    if mode not in MODES:
        raise ValueError(f"mode must be 'relevance' or 'activation', got {mode!r}.")
    return MODES.index(mode)


def pack_records(fields: Fields) -> np.ndarray:
    """Pack int32 ``index``, float32 ``value`` and int32 ``neuron`` arrays of one shape into :data:`RECORD`."""
    index, value, neuron = (np.asarray(fields[name]) for name in FIELDS)
    if sys.byteorder != "little":  # RECORD is little-endian; build it field by field
        records = np.empty(index.shape, RECORD)
        records["index"], records["value"], records["neuron"] = index, value, neuron
        return records
    packed = np.stack([index.astype(np.int32, copy=False), value.astype(np.float32, copy=False).view(np.int32),
                       neuron.astype(np.int32, copy=False)], -1)  # (..., 3) int32, contiguous
    return packed.view(RECORD)[..., 0]


def record_fields(records: np.ndarray) -> Dict[str, np.ndarray]:
    """Return the :data:`FIELDS` of a :data:`RECORD` array as separate arrays."""
    return {name: np.asarray(records[name]) for name in FIELDS}


def save_triple(prefix: PathLike, indices: np.ndarray, values: np.ndarray, neurons: np.ndarray) -> str:
    """Write one ranking in zennit-crp 0.6's layout and return the prefix, as zennit-crp did.

    The files are ``{prefix}data.npy``, ``rel.npy`` and ``rf.npy``, each written atomically.
    """
    for suffix, array in zip(TRIPLE_SUFFIXES, (indices, values, neurons)):
        _atomic_save(Path(f"{prefix}{suffix}.npy"), np.asarray(array))
    return str(prefix)


def load_triple(prefix: PathLike) -> Triple:
    """Read one ranking written by :func:`save_triple` (or by zennit-crp 0.6)."""
    return _load_triple([Path(f"{prefix}{suffix}.npy") for suffix in TRIPLE_SUFFIXES])


def remove_triple(prefix: PathLike) -> None:
    """Delete the files of one ranking (those that exist)."""
    for suffix in TRIPLE_SUFFIXES:
        Path(f"{prefix}{suffix}.npy").unlink(missing_ok=True)


def _as_records(array: Any) -> np.ndarray:
    return pack_records(array) if isinstance(array, Mapping) else np.asarray(array)


def _triple(records: np.ndarray) -> Triple:
    """Dataset indices (int64), values (float32) and neurons (int64) of records, as plain arrays."""
    return (np.asarray(records["index"], dtype=np.int64), np.array(records["value"], dtype=np.float32),
            np.asarray(records["neuron"], dtype=np.int64))


def _written_by_crp(folder: Path) -> bool:
    """Whether ``folder`` is a real folder (not a link) that carries crp's generation marker."""
    return folder.is_dir() and not folder.is_symlink() and (folder / GENERATION_MARKER).is_file()


def _np_load(file: Path, mmap: bool) -> np.ndarray:
    if not file.is_file():
        raise FileNotFoundError(f"{file} is missing; call FeatureVisualization.run first (or the store is "
                                f"incomplete).")
    try:
        return np.load(file, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        # numpy's own message may advise allow_pickle=True, which would run code from the file: never echo it
        reason = "it holds no plain array" if "pickle" in str(error) else str(error)
        raise CorruptStoreError(f"{file} is truncated or corrupt ({reason}). Nothing was changed; delete the "
                                f"results and run again.") from None


def _load_triple(files: List[Path]) -> Triple:
    index, value, neuron = (_np_load(file, mmap=True) for file in files)
    if not index.shape == value.shape == neuron.shape:
        raise CorruptStoreError(f"{files[0].parent}: the data/rel/rf arrays have different shapes "
                                f"{index.shape}, {value.shape}, {neuron.shape}.")
    return index, value, neuron


def _check_file(file: Path, array: np.ndarray, entry: Mapping[str, Any], dtype, verify: bool) -> None:
    if list(array.shape) != entry["shape"] or array.dtype != np.dtype(dtype):
        raise CorruptStoreError(f"{file} holds {array.dtype} {list(array.shape)}, but the manifest lists "
                                f"{np.dtype(dtype)} {entry['shape']}; the store is corrupt.")
    if not verify:
        return
    status = file.stat()
    key = (str(file.resolve()), status.st_size, status.st_mtime_ns)
    if _VERIFIED.get(key) == entry["sha256"]:
        return
    if _digest(np.asarray(array)) != entry["sha256"]:
        raise CorruptStoreError(f"{file} does not match its checksum in the manifest; the file is corrupt. "
                                f"Nothing was changed; delete the results and run again.")
    _VERIFIED[key] = entry["sha256"]


#: Files whose checksum this process has verified: (resolved path, size, mtime in ns) -> SHA-256.
_VERIFIED: Dict[Tuple[str, int, int], str] = {}


def _check_manifest_paths(file: Path, manifest: Mapping[str, Any]) -> None:
    """Refuse a manifest whose folder or file names would lead out of the store (read-only traversal)."""
    directory = manifest.get("directory")
    if not isinstance(directory, str) or not _GENERATION.match(directory):
        raise CorruptStoreError(f"{file} names the results folder {directory!r}, not one of the form "
                                f"'results-<16 hex digits>' inside the store; the manifest is corrupt or was edited. "
                                f"Nothing is read from it; delete the folder and run again.")
    for layer, entry in (manifest.get("layers") or {}).items():
        for kind, item in (entry.get("files") or {}).items():
            name = item.get("name") if isinstance(item, Mapping) else None
            if name != f"{layer}.{kind}.npy" or Path(name).name != name or "/" in layer or layer.startswith("."):
                raise CorruptStoreError(f"{file} lists the file {name!r} for layer {layer!r}; store files are "
                                        f"named '<layer>.<kind>.npy' inside the store. The manifest is corrupt or "
                                        f"was edited; nothing is read from it. Delete the folder and run again.")


def _digest(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).data.cast("B")).hexdigest()


def _atomic_save(file: Path, array: np.ndarray) -> None:
    def save(temporary: Path) -> None:
        with open(temporary, "wb") as stream:  # a path would get ".npy" appended
            np.save(stream, array, allow_pickle=False)

    write_atomic(file, save)
