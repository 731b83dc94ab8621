"""Reading FeatureVisualization results by folder (the crp store, and folders written by zennit-crp 0.6)."""
import os
from pathlib import Path
from typing import List, Optional, Tuple, Union

import numpy as np

from crp._features.store import ResultStore, open_result_folder, store_folder_names

__all__ = [
    "load_maximization", "load_statistics", "load_stat_targets", "load_receptive_field", "find_files",
]

PathLike = Union[str, os.PathLike]


def _result_folder(path_folder, kind: str, mode: Optional[str]):
    """Reader and mode for ``path_folder`` (``{path}/RelMax_sum_normed`` style, or a store root with ``mode``)."""
    reader, folder_mode, folder_kind = open_result_folder(path_folder)
    if folder_kind is not None and folder_kind != kind:
        raise ValueError(f"{path_folder} holds {'statistics' if folder_kind == 'stats' else 'maximization'} "
                         f"results; pass the {'RelStats/ActStats' if kind == 'stats' else 'RelMax/ActMax'} folder.")
    return reader, folder_mode or mode or "relevance"


def load_maximization(path_folder, layer_name: str, mode: Optional[str] = None):
    """Load the RelMax or ActMax results of a layer.

    Parameters
    ----------
    path_folder : str or os.PathLike
        ``FeatureVisualization(...).RelMax.PATH`` (or ``ActMax.PATH``), i.e. ``{path}/RelMax_sum_normed``; works
        for the crp store and for folders written by zennit-crp 0.6. A store root is accepted with ``mode``.
    layer_name : str
    mode : {"relevance", "activation"}, optional
        Only used when ``path_folder`` is a store root (default "relevance").

    Returns
    -------
    (numpy.ndarray, numpy.ndarray, numpy.ndarray)
        Dataset indices (int64), values (float32) and most relevant neuron indices (int64), each
        ``(min(k, samples), n_concepts)``, sorted by decreasing value.
    """
    reader, mode = _result_folder(path_folder, "max", mode)
    return reader.maximization(layer_name, mode)


def load_statistics(path_folder, layer_name: str, target: int, mode: Optional[str] = None):
    """Load the per-target results (``RelStats``/``ActStats``) of a layer for one target class.

    Parameters are those of :func:`load_maximization`, plus ``target``; returns the same three arrays,
    restricted to the samples explained for ``target``.
    """
    reader, mode = _result_folder(path_folder, "stats", mode)
    return reader.statistics(layer_name, mode, target)


def load_stat_targets(path_folder, mode: Optional[str] = None):
    """Return the target classes with statistics in ``path_folder`` (``RelStats.PATH``/``ActStats.PATH``) as int64."""
    reader, mode = _result_folder(path_folder, "stats", mode)
    return reader.targets(mode)


def load_receptive_field(path_folder, layer_name: str):
    """Load the receptive-field array ``{path_folder}/{layer_name}.npy`` (memory-mapped, without pickle)."""
    file = Path(path_folder) / f"{layer_name}.npy"
    if not file.is_file():
        raise FileNotFoundError(f"no receptive field of layer {layer_name!r}: {file} does not exist.")
    return np.load(file, mmap_mode="r", allow_pickle=False)


def find_files(path: Optional[PathLike] = None) -> Tuple[List[str], List[str], List[str], List[str], List[str]]:
    """Return the result folders in ``path`` by kind, as zennit-crp 0.6 did.

    Parameters
    ----------
    path : str or os.PathLike, optional
        A FeatureVisualization ``path``; by default the working directory.

    Returns
    -------
    tuple of five lists of str
        The folders whose names contain ``RelMax``, ``ActMax``, ``RelStats``, ``ActStats`` and ``RF``
        (sorted). For this library's store, whose results live in one folder, these are the ``PATH`` handles
        of ``FeatureVisualization.RelMax`` and friends, which the ``load_*`` functions accept.
    """
    root = Path.cwd() if path is None else Path(path)
    if not root.is_dir():
        raise NotADirectoryError(f"path {str(root)!r} is not a folder; pass the path of a FeatureVisualization.")
    kinds: Tuple[List[str], ...] = ([], [], [], [], [])
    names = sorted(entry.name for entry in root.iterdir() if entry.is_dir())
    store = ResultStore(root)
    if store.exists():  # the store has no such folders, but the PATHs of its result objects name them
        names += store_folder_names(store.config)
    for name in sorted(set(names)):
        for i, marker in enumerate(("RelMax", "ActMax", "RelStats", "ActStats", "RF")):
            if marker in name:
                kinds[i].append(str(root / name))
    return kinds[0], kinds[1], kinds[2], kinds[3], kinds[4]
