"""Caches of reference images, keyed by everything that changes them.

A :class:`CacheKey` names the results the images were drawn from, the layer, the mode, the concept class,
the receptive-field flag, how heatmaps were started, the plot function, the preprocessing and the composite
*with its rules' parameters and its canonizers* (:func:`describe`). Its :meth:`CacheKey.digest` is stable
across processes, so changing any of these never returns stale images. :class:`ImageCache` stores the images
as PNG files, one folder per key; :class:`Cache` is the base for other storage.
"""
import functools
import hashlib
import json
import math
import numbers
import os
import types
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Sequence, Tuple, Union

import numpy as np
import torch

from crp._utils.files import write_atomic
from crp._utils.text import one_line

__all__ = ["Cache", "ImageCache", "CacheKey", "CorruptCacheError", "describe"]

RefDict = Dict[Any, Any]
Range = Tuple[int, int]

# attributes holding run-time state rather than configuration (zennit hooks and canonizers)
_SKIP_ATTRIBUTES = {"stored_tensors", "tensor_handles", "handles", "hook_refs", "module", "model", "active"}
_MAX_DEPTH = 40


def describe(obj: Any, _depth: int = 0, _seen: frozenset = frozenset()) -> Any:
    """Return a JSON-serializable description of a configuration object (a composite, a rule, a function).

    Objects are described by their class and public attributes, functions by their qualified name, default
    arguments and closure values (zennit keeps rule parameters such as ``epsilon`` in closures), types by
    their qualified name, tensors by shape and a digest of their values. Modules are named but not walked.
    Equal descriptions mean equal configurations for zennit's composites, rules and canonizers.

    Parameters
    ----------
    obj : object
        The object to describe.

    Returns
    -------
    object
        Nested dicts, lists, strings and numbers.
    """
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, numbers.Integral):
        return int(obj)
    if isinstance(obj, numbers.Real):
        try:
            value = float(obj)
        except (TypeError, ValueError):  # a Real that cannot convert itself (e.g. gmpy2's mpq)
            return repr(obj)
        return repr(value) if not math.isfinite(value) else value
    if isinstance(obj, types.ModuleType):
        return {"module": obj.__name__}
    if _depth > _MAX_DEPTH or id(obj) in _seen:
        return f"<{_qualname(type(obj))}>"
    seen, depth = _seen | {id(obj)}, _depth + 1
    if isinstance(obj, type):
        return {"type": _qualname(obj)}
    if isinstance(obj, torch.Tensor) or isinstance(obj, np.ndarray):
        array = obj.detach().cpu().numpy() if isinstance(obj, torch.Tensor) else obj
        return {"array": list(array.shape), "dtype": str(array.dtype),
                "sha256": hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()[:16]}
    if isinstance(obj, (list, tuple, set, frozenset)):
        items = [describe(item, depth, seen) for item in obj]
        return sorted(items, key=json.dumps) if isinstance(obj, (set, frozenset)) else items
    if isinstance(obj, dict):
        return {str(key): describe(value, depth, seen) for key, value in sorted(obj.items(), key=lambda kv: str(kv[0]))}
    if isinstance(obj, torch.nn.Module):
        return {"module": _qualname(type(obj))}
    return _describe_callable_or_object(obj, depth, seen)


def _describe_callable_or_object(obj: Any, depth: int, seen: frozenset) -> Any:
    if isinstance(obj, functools.partial):
        return {"partial": describe(obj.func, depth, seen), "args": describe(obj.args, depth, seen),
                "keywords": describe(obj.keywords, depth, seen)}
    if isinstance(obj, types.MethodType):
        return {"method": _qualname(obj.__func__)}
    if isinstance(obj, (types.FunctionType, types.BuiltinFunctionType)):
        result: Dict[str, Any] = {"function": _qualname(obj)}
        defaults, kwdefaults = getattr(obj, "__defaults__", None), getattr(obj, "__kwdefaults__", None)
        closure = getattr(obj, "__closure__", None)  # builtins have none of the three
        if defaults:
            result["defaults"] = describe(defaults, depth, seen)
        if kwdefaults:
            result["kwdefaults"] = describe(kwdefaults, depth, seen)
        if closure:
            result["closure"] = [describe(_cell(cell), depth, seen) for cell in closure]
        return result
    attributes = {key: value for key, value in getattr(obj, "__dict__", {}).items()
                  if not key.startswith("_") and key not in _SKIP_ATTRIBUTES
                  and not isinstance(value, types.MethodType)}
    return {"class": _qualname(type(obj)), "attributes": describe(attributes, depth, seen)}


def _png_writer(image: Any) -> Callable[[Path], None]:
    """Return a ``save(path)`` that writes the PIL image ``image`` as an optimized PNG."""
    return lambda path: image.save(path, format="PNG", optimize=True)


def _cell(cell) -> Any:
    try:
        return cell.cell_contents
    except ValueError:  # empty cell
        return None


def _qualname(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', getattr(obj, '__name__', repr(obj)))}"


@dataclass(frozen=True)
class CacheKey:
    """Everything that determines a set of reference images.

    Parameters
    ----------
    func_name : str
        ``"get_max_reference"`` or ``"get_stats_reference"``.
    layer_name : str
    mode : str
        ``"relevance"`` or ``"activation"``.
    rf : bool
        Heatmaps restricted to the most relevant neuron.
    plot : object
        :func:`describe` of the plot function.
    composite : object
        :func:`describe` of the composite (None for no heatmaps).
    extra : dict
        Further settings: the results' fingerprint, the concept class, preprocessing, how heatmaps start.
    """

    func_name: str
    layer_name: str
    mode: str
    rf: bool
    plot: Any = None
    composite: Any = None
    extra: Dict[str, Any] = field(default_factory=dict)

    @property
    def plot_name(self) -> str:
        """Short name of the plot function (the last part of its qualified name)."""
        plot = self.plot if isinstance(self.plot, dict) else {}
        name = plot.get("function") or (plot.get("partial") or {}).get("function") or plot.get("class") or "plot"
        return str(name).rsplit(".", 1)[-1].replace("<", "").replace(">", "")

    def describe(self) -> Dict[str, Any]:
        """Return the key as a JSON-serializable dict."""
        return asdict(self)

    def digest(self) -> str:
        """Stable SHA-256 hex digest of :meth:`describe`."""
        text = json.dumps(self.describe(), sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()


class CorruptCacheError(ValueError):
    """A cached file is truncated or corrupt (e.g. written by a process that was killed, or a full disk).

    Its message names the file and the fix: delete the file or the cache folder, or pass ``overwrite=True``.
    """


class Cache(ABC):
    """Storage of reference images (the values returned by a plot function) per :class:`CacheKey` and rank.

    Subclasses implement :meth:`save`, :meth:`load` and :meth:`extend_dict`; the values they accept are what
    the plot functions they are used with return.

    Parameters
    ----------
    path : str or os.PathLike
        Folder of the cache.
    """

    def __init__(self, path: Union[str, os.PathLike] = "cache") -> None:
        self.path = Path(path)

    @abstractmethod
    def save(self, ref_c: RefDict, key: CacheKey, r_range: Range) -> None:
        """Store ``ref_c`` (``{id: value}``) whose values hold the references of ranks ``range(*r_range)``."""

    @abstractmethod
    def load(self, ids: Sequence[Any], key: CacheKey, r_range: Range) -> Tuple[RefDict, Dict[Any, Range]]:
        """Return the cached references of ``ids`` for ranks ``range(*r_range)`` and, per id, the range not found.

        An id whose references are cached only up to rank ``r`` appears in both: with the ranks found, and
        with ``(r, r_range[1])`` in the second dict.
        """

    @abstractmethod
    def extend_dict(self, ref_original: RefDict, ref_addition: RefDict) -> RefDict:
        """Append the references of ``ref_addition`` to those of ``ref_original`` (same ids); return it."""


class ImageCache(Cache):
    """Cache lists (or tuples of lists) of PIL images as PNG files.

    Files are ``{path}/{func_name}/{plot_name}/{mode}_{digest[:16]}/{layer}/{id}_{tuple_index}_{rank}.png``;
    each key folder holds ``key.json``, the full description of its key. Files are written atomically.

    Parameters
    ----------
    path : str or os.PathLike
        Folder of the cache.
    """

    def folder(self, key: CacheKey) -> Path:
        """Return the folder of the images of ``key``."""
        return self.path / key.func_name / key.plot_name / f"{key.mode}_{key.digest()[:16]}" / key.layer_name

    def save(self, ref_c: RefDict, key: CacheKey, r_range: Range) -> None:
        from PIL import Image

        folder = self.folder(key)
        folder.mkdir(parents=True, exist_ok=True)
        key_file = folder.parent / "key.json"
        if not key_file.exists():
            text = json.dumps(key.describe(), indent=1, default=str)
            write_atomic(key_file, lambda temporary: temporary.write_text(text))
        for concept_id, value in ref_c.items():
            groups = value if isinstance(value, tuple) else (value,)
            for tuple_index, images in enumerate(groups):
                for image, rank in zip(images, range(*r_range)):
                    if not isinstance(image, Image.Image):
                        raise TypeError(f"ImageCache saves PIL images, but the plot function returned "
                                        f"{type(image).__name__} for id {concept_id!r}; use a plot function that "
                                        f"returns PIL images (e.g. vis_img_heatmap) or another Cache.")
                    write_atomic(folder / f"{concept_id}_{tuple_index}_{rank}.png", _png_writer(image))

    def load(self, ids: Sequence[Any], key: CacheKey, r_range: Range) -> Tuple[RefDict, Dict[Any, Range]]:
        folder = self.folder(key)
        found: RefDict = {}
        missing: Dict[Any, Range] = {}
        for concept_id in ids:
            groups = []
            for tuple_index in (0, 1):
                images, first_missing = self._load_list(folder, concept_id, tuple_index, r_range)
                if images:
                    groups.append((images, first_missing))
            if not groups:
                missing[concept_id] = (r_range[0], r_range[1])
                continue
            stop = min(len(images) for images, _ in groups)
            lists = [images[:stop] for images, _ in groups]
            found[concept_id] = tuple(lists) if len(lists) == 2 else lists[0]
            if r_range[0] + stop < r_range[1]:
                missing[concept_id] = (r_range[0] + stop, r_range[1])
        return found, missing

    def extend_dict(self, ref_original: RefDict, ref_addition: RefDict) -> RefDict:
        for concept_id, value in ref_addition.items():
            if concept_id not in ref_original:
                ref_original[concept_id] = value
            elif isinstance(value, tuple):
                ref_original[concept_id] = tuple(list(a) + list(b) for a, b in zip(ref_original[concept_id], value))
            elif isinstance(value, list):
                ref_original[concept_id] = list(ref_original[concept_id]) + value
            else:
                raise TypeError(f"cannot extend the references of id {concept_id!r}: expected a list or a tuple of "
                                f"lists, got {type(value).__name__}.")
        return ref_original

    def _load_list(self, folder: Path, concept_id: Any, tuple_index: int, r_range: Range) -> Tuple[List[Any], bool]:
        images: List[Any] = []
        for rank in range(*r_range):
            file = folder / f"{concept_id}_{tuple_index}_{rank}.png"
            if not file.is_file():
                return images, True
            images.append(_read_png(file, self.path))
        return images, False


def _read_png(file: Path, cache_root: Path) -> Any:
    """Return the image in ``file``; a truncated or corrupt file raises a :class:`CorruptCacheError` naming it."""
    from PIL import Image

    try:
        with Image.open(file) as image:
            image.load()
            return image.copy()
    except (OSError, SyntaxError, ValueError, EOFError) as error:  # PIL's ways of saying a file is broken
        reason = one_line(error)
        raise CorruptCacheError(
            f"cached reference image {str(file)!r} is truncated or corrupt ({reason}); delete it (or the whole "
            f"cache folder {str(cache_root)!r}), or pass overwrite=True, to draw the references again."
        ) from error
