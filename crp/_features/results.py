"""Reading FeatureVisualization results by folder (the crp store, and folders written by zennit-crp 0.6)."""
from pathlib import Path
from typing import Optional

import numpy as np

from crp._features.store import open_result_folder

__all__ = ["load_maximization", "load_statistics", "load_stat_targets", "load_receptive_field"]

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

