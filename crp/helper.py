"""Small utilities around models and relevances: layer lookup, output shapes, normalizations."""
import contextlib
import os
import secrets
from pathlib import Path
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Type, Union

import torch

from crp.conditions import check_layer_names

__all__ = ["get_layer_names", "get_output_shapes", "abs_norm", "max_norm", "write_atomic", "preserved_tensors"]


def get_layer_names(model: torch.nn.Module, types: Sequence[Type[torch.nn.Module]]) -> List[str]:
    """Return the names of all sub-modules of ``model`` that are instances of one of ``types``, in model order.

    Parameters
    ----------
    model : torch.nn.Module
        The model to search.
    types : sequence of type
        Module classes, e.g. ``[torch.nn.Conv2d, torch.nn.Linear]``.

    Returns
    -------
    list of str
        Names as in ``model.named_modules()``.
    """
    types = tuple(types)
    bad = [t for t in types if not (isinstance(t, type) and issubclass(t, torch.nn.Module))]
    if bad:
        raise TypeError(f"types must be torch.nn.Module subclasses, got {bad}; e.g. pass [torch.nn.Conv2d].")
    return [name for name, module in model.named_modules() if isinstance(module, types)]


def get_output_shapes(
    model: torch.nn.Module, single_sample: torch.Tensor, record_layers: Iterable[str]
) -> Dict[str, torch.Size]:
    """Return the output shape (without batch axis) of each layer in ``record_layers`` for one forward pass.

    Parameters
    ----------
    model : torch.nn.Module
        The model.
    single_sample : torch.Tensor
        A batch (usually of one sample) the model accepts.
    record_layers : iterable of str
        Layer names.

    Returns
    -------
    dict
        ``{layer_name: torch.Size}``; layers the forward pass does not reach are missing.
    """
    names = list(record_layers)
    modules = check_layer_names(model, names, "record_layers")
    shapes: Dict[str, torch.Size] = {}
    handles = []
    try:
        for name in names:
            def hook(module, inputs, output, name=name):
                shapes[name] = output.shape[1:]
            handles.append(modules[name].register_forward_hook(hook))
        with torch.no_grad():
            model(single_sample)
    finally:
        for handle in handles:
            handle.remove()
    return shapes


def abs_norm(rel: torch.Tensor, stabilize: float = 1e-10) -> torch.Tensor:
    """Divide ``rel`` by the sum of its absolute values (plus ``stabilize``)."""
    return rel / (rel.abs().sum() + stabilize)


def max_norm(rel: torch.Tensor, stabilize: float = 1e-10) -> torch.Tensor:
    """Divide ``rel`` by its maximum (plus ``stabilize``)."""
    return rel / (rel.max() + stabilize)


def write_atomic(path: Union[str, os.PathLike], save: Callable[[Path], None]) -> None:
    """Write a file atomically: ``save(temporary)`` writes a hidden file beside ``path``, which then replaces it.

    Readers see the old file or the complete new one, never a partial one; the temporary file is removed if
    ``save`` fails. The folder is created if needed, and the file gets the permissions of a normal ``open``.

    Parameters
    ----------
    path : str or os.PathLike
        The file to write.
    save : callable
        Called with the temporary path; must create the file there.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    try:
        save(temporary)
        os.replace(temporary, path)
    finally:
        if temporary.exists():
            temporary.unlink()


@contextlib.contextmanager
def preserved_tensors(model: torch.nn.Module) -> Iterator[None]:
    """Restore every module's parameter and buffer objects on exit, and drop attributes that shadow them.

    Canonizers and rules swap parameters for the duration of a pass; zennit 1.0 does so with
    ``load_state_dict(assign=True)`` and instance attributes that can outlive the composite (its
    ``MergeBatchNorm`` then leaves merged weights in ``state_dict()``). This guard puts back the very objects
    the model held before, whatever happened inside. Tensor data edited in place is not restored.
    """
    saved = []
    for module in model.modules():
        shadows = {k: module.__dict__[k] for k in (*module._parameters, *module._buffers) if k in module.__dict__}
        saved.append((module, dict(module._parameters), dict(module._buffers), shadows))
    try:
        yield
    finally:
        for module, parameters, buffers, shadows in saved:
            for name in (*parameters, *buffers):
                if name in module.__dict__ and name not in shadows:
                    del module.__dict__[name]
            module.__dict__.update(shadows)
            module._parameters.clear()
            module._parameters.update(parameters)
            module._buffers.clear()
            module._buffers.update(buffers)


# ----------------------------------------------------------------------------------------------------------
# loading FeatureVisualization results (the crp store, and folders written by zennit-crp 0.6)

def _result_folder(path_folder, kind: str, mode: Optional[str]):
    """Reader and mode for ``path_folder`` (``{path}/RelMax_sum_normed`` style, or a store root with ``mode``)."""
    from crp.store import open_result_folder

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
    import numpy as np

    file = Path(path_folder) / f"{layer_name}.npy"
    if not file.is_file():
        raise FileNotFoundError(f"no receptive field of layer {layer_name!r}: {file} does not exist.")
    return np.load(file, mmap_mode="r", allow_pickle=False)


__all__ += ["load_maximization", "load_statistics", "load_stat_targets", "load_receptive_field"]
