"""``python -m crp analyze``: a concept report of the user's own model and data.

:func:`run_analysis` loads a model (a torchvision architecture by name, or any ``module:callable``), its weights
(``torch.load(weights_only=True)``), a dataset (an image folder in torchvision's ``ImageFolder`` layout, or any
``module:callable``), builds a zennit composite by name with the canonizers the architecture needs, and writes
the same kind of report as the demo (:mod:`crp.app.concept_report`): heatmaps and the most relevant concepts of a
few samples with their conditional heatmaps and reference samples, the attribution graph of the top concept,
and pixel-flipping curves. Every user error raises :class:`AnalyzeError` with a one-line message naming the
fix.
"""
import difflib
import importlib
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from crp._features.dataset import unwrap_loader
from crp._features.distributed import RankGroup, world_size_from_environment
from crp._utils.checks import check_int, check_positive_int
from crp._utils.text import id_list, one_line
from crp.app.output import FV_FOLDER, OutputFolder, UserError
from crp.app.progress import Steps

__all__ = [
    "AnalyzeError", "AnalyzeOptions", "AnalysisResult", "AnalysisSetup", "DataSpec", "run_analysis", "prepare",
    "load_model", "load_weights", "load_data", "make_composite", "resolve_layers", "layer_table", "spread_indices",
    "format_analysis_summary", "torchvision_architectures", "Normalize", "CANONIZERS", "IMAGENET_MEAN", "IMAGENET_STD",
    "data_labels", "check_num_classes", "DEFAULT_BATCH_SIZE",
]

logger = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: Canonizer choices: "auto" picks by architecture (see :func:`make_composite`).
CANONIZERS = ("auto", "none", "merge-batchnorm", "resnet", "vgg")
#: Longest quote of an underlying error's message in an :class:`AnalyzeError`.
_REASON_LIMIT = 160
#: The steps of a run that show in its progress bar (each long one has a bar of its own too).
ANALYZE_STEPS = ("reference-sample search", "explaining samples", "attribution graph", "pixel flipping")
#: The largest batch size ``--batch-size auto`` picks.
AUTO_BATCH_MAXIMUM = 256
#: Images per forward and backward pass unless --batch-size or a DataLoader's batch size says otherwise.
DEFAULT_BATCH_SIZE = 32

PathLike = Union[str, os.PathLike]


class AnalyzeError(UserError):
    """A user error in the arguments of ``python -m crp analyze``; the message names the fix."""


@dataclass
class AnalyzeOptions:
    """The arguments of :func:`run_analysis` (those of ``python -m crp analyze``; see its ``--help``)."""

    model: str
    data: str
    weights: Optional[str] = None
    num_classes: Optional[int] = None
    image_size: int = 224
    mean: Optional[Sequence[float]] = None
    std: Optional[Sequence[float]] = None
    normalize: bool = True
    layers: Optional[Sequence[str]] = None
    composite: str = "epsilon_plus_flat"
    canonizer: str = "auto"
    device: str = "cpu"
    batch_size: Union[int, str, None] = None
    workers: int = 0
    samples: int = 4
    top_k: int = 4
    fv_samples: Optional[int] = 1000
    references: int = 6
    graph_width: Tuple[int, ...] = (3, 2)
    flip_samples: int = 16
    flip_steps: int = 32
    out: str = "crp_report"
    fresh: bool = False
    progress: bool = True
    checkpoint: int = 10


@dataclass
class AnalysisResult:
    """What :func:`run_analysis` wrote and found; ``files`` are relative to ``out_dir``.

    ``fv_status`` says what became of the reference-sample search of an earlier run: ``"reused"`` (complete,
    nothing computed), ``"continued"`` (an interrupted search continued) or ``"computed"`` (searched from the
    start); ``fv_reused`` whether it was used at all (reused or continued).
    """

    out_dir: Path
    model: str
    composite: str
    data: str
    dataset_size: int
    fv_samples: int
    fv_reused: bool
    layers: List[str]
    samples: List[Dict[str, Any]]
    graph: List[Tuple[str, int, str, int, float]]
    flipping_auc: Dict[str, float]
    files: List[str] = field(default_factory=list)
    seconds: float = 0.0
    fv_status: str = "computed"

    @property
    def report(self) -> Path:
        """The HTML report."""
        return self.out_dir / "report.html"


# ------------------------------------------------------------------------------------------------------------
# the model


def torchvision_architectures() -> List[str]:
    """Names of torchvision's image classification architectures (``torchvision.models.list_models``)."""
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def _import_callable(spec: str, option: str) -> Callable:
    """``module:callable`` -> the callable (imported from the working directory too)."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise AnalyzeError(f"{option} {spec!r} is not of the form module:callable; e.g. {option} mypackage.models:"
                           f"make_model.")
    added = "" not in sys.path and os.getcwd() not in sys.path
    if added:  # like `python -m`, import from the working directory (only while importing)
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise AnalyzeError(f"{option} {spec!r}: cannot import {module_name!r} ({error}); run from the folder that "
                           f"holds it or add that folder to PYTHONPATH.") from None
    finally:
        if added:
            sys.path.remove(os.getcwd())
    target: Any = module
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise AnalyzeError(f"{option} {spec!r}: module {module_name!r} has no attribute {attribute!r}; check "
                               f"the name after the colon.")
        target = getattr(target, part)
    if not callable(target):
        raise AnalyzeError(f"{option} {spec!r} is not callable; give a function or class that returns it.")
    return target


def load_model(spec: str, num_classes: Optional[int] = None) -> Tuple[torch.nn.Module, str]:
    """Build a model from a torchvision architecture name or ``module:callable``, with random weights.

    Parameters
    ----------
    spec : str
        E.g. ``"resnet18"``, ``"vgg16_bn"`` or ``"mypackage.models:make_model"``. A callable is called with
        ``num_classes=num_classes`` if that is given, else without arguments.
    num_classes : int, optional
        Number of outputs.

    Returns
    -------
    (torch.nn.Module, str)
        The model in eval mode and a short description.
    """
    if ":" in spec:
        factory = _import_callable(spec, "--model")
        try:
            model = factory(num_classes=num_classes) if num_classes is not None else factory()
        except TypeError as error:
            raise AnalyzeError(f"--model {spec!r} could not be called ({error}); it must take no arguments, or "
                               f"num_classes=N when --num-classes is given.") from None
        if not isinstance(model, torch.nn.Module):
            raise AnalyzeError(f"--model {spec!r} returned a {type(model).__name__}, not a torch.nn.Module.")
        return model.eval(), spec
    names = torchvision_architectures()
    if spec not in names:
        close = difflib.get_close_matches(spec, names, n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise AnalyzeError(f"--model {spec!r} is neither a torchvision architecture{hint} nor module:callable; "
                           f"e.g. --model resnet18 or --model mypackage.models:make_model.")
    import torchvision

    kwargs = {} if num_classes is None else {"num_classes": num_classes}
    if spec in ("googlenet", "inception_v3"):
        kwargs["aux_logits"] = False
        kwargs["init_weights"] = True
    return torchvision.models.get_model(spec, weights=None, **kwargs).eval(), spec


def load_weights(model: torch.nn.Module, path: PathLike, description: str) -> None:
    """Load a state dict saved with ``torch.save(model.state_dict(), path)`` (read with ``weights_only=True``).

    A dict holding the state dict under ``"state_dict"`` or ``"model"`` is accepted too, and a ``"module."``
    prefix (from ``DataParallel``) is removed.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise AnalyzeError(f"--weights {str(path)!r} does not exist; give the file written by "
                           f"torch.save(model.state_dict(), PATH).")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unreadable file gets the same advice
        reason = one_line(error, limit=_REASON_LIMIT)
        raise AnalyzeError(f"--weights {str(path)!r} cannot be read with torch.load(weights_only=True) ({reason}); "
                           f"save the model's state_dict with torch.save(model.state_dict(), PATH).") from None
    state = _state_dict(state, path)
    _check_fit(model, state, path, description)
    model.load_state_dict(state)


def _state_dict(state: Any, path: Path) -> Dict[str, torch.Tensor]:
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise AnalyzeError(f"--weights {str(path)!r} holds a {type(state).__name__}, not a state_dict of tensors; "
                           f"save it with torch.save(model.state_dict(), PATH).")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def _check_fit(model: torch.nn.Module, state: Dict[str, torch.Tensor], path: Path, description: str) -> None:
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [(k, tuple(state[k].shape), tuple(v.shape)) for k, v in expected.items()
              if k in state and tuple(state[k].shape) != tuple(v.shape)]
    problems = []
    if shapes:
        key, found, wanted = shapes[0]
        problems.append(f"{key} has shape {list(found)} in the file but {list(wanted)} in the model"
                        + (f" (and {len(shapes) - 1} more)" if len(shapes) > 1 else ""))
    if missing:
        problems.append(f"{len(missing)} parameters missing (e.g. {missing[0]})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
    if problems:
        raise AnalyzeError(f"--weights {str(path)!r} does not fit {description}: {'; '.join(problems)}; check "
                           f"--model and --num-classes.")


# ------------------------------------------------------------------------------------------------------------
# the data


class Normalize:
    """``(x - mean) / std`` per channel, for batches ``(N, C, H, W)`` on any device."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        self.mean, self.std = tuple(float(m) for m in mean), tuple(float(s) for s in std)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Return the normalized batch."""
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        return (x - mean) / std

    def __repr__(self) -> str:
        """Return ``Normalize(mean=..., std=...)``."""
        return f"Normalize(mean={self.mean}, std={self.std})"


class _CheckedImages(torch.utils.data.Dataset):
    """An ImageFolder whose unreadable files raise an AnalyzeError naming the file."""

    def __init__(self, folder: Any) -> None:
        self.folder = folder
        self.classes = folder.classes

    def __len__(self) -> int:
        return len(self.folder)

    def __getitem__(self, index: int):
        try:
            return self.folder[index]
        except (OSError, ValueError, SyntaxError) as error:
            path = self.folder.samples[index][0]
            reason = one_line(error, limit=_REASON_LIMIT)
            raise AnalyzeError(f"--data: cannot read image {path!r} ({reason}); remove or replace it.") from None


class _Spread(torch.utils.data.Dataset):
    """``count`` items spread evenly over a dataset (so a folder sorted by class gives every class)."""

    def __init__(self, dataset: Any, count: int) -> None:
        self.dataset = dataset
        self.indices = spread_indices(len(dataset), count)
        self.classes = getattr(dataset, "classes", None)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int):
        return self.dataset[int(self.indices[index])]


def spread_indices(size: int, count: int) -> List[int]:
    """``min(count, size)`` distinct indices spread evenly over ``range(size)``, first and last included."""
    count = min(count, size)
    if count <= 1:
        return [0][:count]
    return sorted({int(round(i)) for i in np.linspace(0, size - 1, count)})


@dataclass
class DataSpec:
    """A loaded dataset: items ``(image as shown, class)``, class names, the model's preprocessing."""

    dataset: Any
    class_names: Optional[List[str]]
    preprocess: Optional[Normalize]
    description: str
    identity: List[Any]
    loader_batch_size: Optional[int] = None


def load_data(spec: str, image_size: int = 224, mean: Optional[Sequence[float]] = None,
              std: Optional[Sequence[float]] = None, normalize: bool = True) -> DataSpec:
    """Load an image folder (torchvision ``ImageFolder``: ``spec/<class>/<image>``) or a ``module:callable`` dataset.

    Folder images are resized (shorter side) and centre-cropped to ``image_size`` and scaled to [0, 1]; the
    model sees them normalized with ``mean`` and ``std`` (default ImageNet's, unless ``normalize`` is False).
    A callable must return a dataset of ``(tensor (C, H, W), int)`` items; they are normalized only if ``mean``
    and ``std`` are given.
    """
    norm = _normalization(mean, std, normalize, default=Path(spec).expanduser().is_dir())
    path = Path(spec).expanduser()
    if path.is_dir():
        return _image_folder(path, image_size, norm)
    if ":" in spec and not path.exists():
        return _callable_data(spec, norm)
    what = "a file, not a folder" if path.exists() else "not an existing folder"
    raise AnalyzeError(f"--data {spec!r} is {what}; give an image folder (DIR/<class>/<image>.png) or "
                       f"module:callable returning a dataset.")


def _normalization(mean, std, normalize: bool, default: bool) -> Optional[Normalize]:
    if not normalize:
        return None
    if (mean is None) != (std is None):
        raise AnalyzeError("give --mean and --std together (three numbers each, e.g. --mean 0.5 0.5 0.5 --std 0.5 "
                           "0.5 0.5).")
    if mean is None:
        return Normalize(IMAGENET_MEAN, IMAGENET_STD) if default else None
    if len(mean) != len(std) or any(s <= 0 for s in std):
        raise AnalyzeError(f"--mean {list(mean)} and --std {list(std)} need one value per channel each, with "
                           f"positive std values.")
    return Normalize(mean, std)


def _image_folder(path: Path, image_size: int, norm: Optional[Normalize]) -> DataSpec:
    from torchvision import datasets, transforms

    transform = transforms.Compose([transforms.Resize(image_size), transforms.CenterCrop(image_size),
                                    transforms.ToTensor(), transforms.Lambda(_three_channels)])
    try:
        folder = datasets.ImageFolder(str(path), transform=transform)
    except FileNotFoundError:
        raise AnalyzeError(f"--data {str(path)!r} holds no images in class sub-folders; arrange it as "
                           f"{path}/<class>/<image>.png (.jpg, .png, ...: torchvision's ImageFolder).") from None
    except PermissionError as error:
        raise AnalyzeError(f"--data {str(path)!r} cannot be read ({error.strerror}: {error.filename}); check the "
                           f"permissions.") from None
    listing = [(str(Path(p).relative_to(path)), os.path.getsize(p)) for p, _ in folder.samples]
    return DataSpec(_CheckedImages(folder), list(folder.classes), norm,
                    f"image folder {path} ({len(folder)} images, {len(folder.classes)} classes)",
                    ["folder", listing, image_size, repr(norm)])


def _three_channels(x: torch.Tensor) -> torch.Tensor:
    return x.expand(3, -1, -1) if x.shape[0] == 1 else x[:3]


def _callable_data(spec: str, norm: Optional[Normalize]) -> DataSpec:
    factory = _import_callable(spec, "--data")
    try:
        dataset = factory()
    except TypeError as error:
        raise AnalyzeError(f"--data {spec!r} could not be called without arguments ({error}).") from None
    dataset, loader_batch_size = unwrap_loader(dataset, f"--data {spec}")
    if not (hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__")):
        raise AnalyzeError(f"--data {spec!r} returned a {type(dataset).__name__}, not a dataset (len() and "
                           f"indexing).")
    if len(dataset) == 0:
        raise AnalyzeError(f"--data {spec!r} returned an empty dataset; it needs at least one item.")
    item = dataset[0]
    if not (isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[0], torch.Tensor)
            and item[0].dim() == 3):
        raise AnalyzeError(f"--data {spec!r}: items must be (image tensor (C, H, W), class) pairs, got "
                           f"{type(item).__name__}; wrap the dataset to return them.")
    names = getattr(dataset, "classes", None) or getattr(dataset, "class_names", None)
    probe = [dataset[i][0] for i in spread_indices(len(dataset), 3)]
    identity = ["callable", spec, len(dataset), [float(p.double().sum()) for p in probe], repr(norm)]
    return DataSpec(dataset, list(names) if names is not None else None, norm,
                    f"dataset {spec} ({len(dataset)} items)", identity, loader_batch_size)


# ------------------------------------------------------------------------------------------------------------
# composite and layers


def _auto_canonizer(model: torch.nn.Module) -> str:
    from torchvision.models import ResNet

    if isinstance(model, ResNet):
        return "resnet"
    if any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        return "merge-batchnorm"
    return "none"


def _canonizers(kind: str) -> List[Any]:
    from zennit.canonizers import SequentialMergeBatchNorm
    from zennit.torchvision import ResNetCanonizer, VGGCanonizer

    factories = {"none": list, "merge-batchnorm": lambda: [SequentialMergeBatchNorm()],
                 "resnet": lambda: [ResNetCanonizer()], "vgg": lambda: [VGGCanonizer()]}
    return factories[kind]()


def make_composite(name: str, model: torch.nn.Module, canonizer: str = "auto",
                   preprocess: Optional[Normalize] = None) -> Tuple[Callable[[], Any], str]:
    """Return a factory of fresh zennit composites ``name`` (from ``zennit.composites.COMPOSITES``) with canonizers.

    ``canonizer="auto"`` picks ``ResNetCanonizer`` for torchvision ResNets, ``SequentialMergeBatchNorm`` for
    other models with batch norm (e.g. VGG-BN) and none otherwise. ``epsilon_gamma_box`` gets the bounds of
    images in [0, 1] after ``preprocess``.

    Returns
    -------
    (callable, str)
        The factory and a description such as ``"epsilon_plus_flat with ResNetCanonizer"``.
    """
    from zennit.composites import COMPOSITES

    if name not in COMPOSITES:
        close = difflib.get_close_matches(name, list(COMPOSITES), n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise AnalyzeError(f"--composite {name!r} is not a zennit composite{hint}; choose one of "
                           f"{', '.join(sorted(COMPOSITES))}.")
    if canonizer not in CANONIZERS:
        raise AnalyzeError(f"--canonizer {canonizer!r} is unknown; choose one of {', '.join(CANONIZERS)}.")
    kind = _auto_canonizer(model) if canonizer == "auto" else canonizer
    kwargs: Dict[str, Any] = {}
    if name == "epsilon_gamma_box":
        low, high = torch.zeros(1, 3, 1, 1), torch.ones(1, 3, 1, 1)
        if preprocess is not None:
            low, high = preprocess(low), preprocess(high)
        kwargs = {"low": low, "high": high}
    cls = COMPOSITES[name]
    names = [type(c).__name__ for c in _canonizers(kind)]
    description = f"{name} with {', '.join(names)}" if names else f"{name} without canonizer"
    return (lambda: cls(canonizers=_canonizers(kind), **kwargs)), description


def _concept_layers(model: torch.nn.Module) -> List[str]:
    return [name for name, module in model.named_modules()
            if name and isinstance(module, (torch.nn.Conv2d, torch.nn.Linear))]


def resolve_layers(model: torch.nn.Module, layers: Optional[Sequence[str]]) -> List[str]:
    """Check layer names (default: the last conv layer), return them in the model's order.

    Raises
    ------
    AnalyzeError
        If a name is not a module of the model.
    """
    modules = dict(model.named_modules())
    candidates = _concept_layers(model)
    if not layers:
        convs = [n for n in candidates if isinstance(modules[n], torch.nn.Conv2d)]
        if not convs and len(candidates) < 2:
            raise AnalyzeError("the model has no conv layer and no hidden linear layer; name layers with --layers.")
        return [convs[-1] if convs else candidates[-2]]
    bad = [name for name in layers if name not in modules or not name]
    if bad:
        close = difflib.get_close_matches(bad[0], candidates, n=3)
        hint = f"; close: {', '.join(close)}" if close else ""
        raise AnalyzeError(f"--layers: {bad[0]!r} is not a layer of the model{hint}; list its layers with "
                           f"--list-layers.")
    order = {name: i for i, name in enumerate(modules)}
    return sorted(dict.fromkeys(layers), key=order.__getitem__)


def _graph_layers(model: torch.nn.Module, layers: List[str]) -> List[str]:
    """Layers of the attribution graph: the given ones, or the last one and two concept layers before it."""
    if len(layers) > 1:
        return layers
    candidates = _concept_layers(model)
    if layers[0] not in candidates:
        return layers
    position = candidates.index(layers[0])
    return candidates[max(0, position - 2):position + 1]


def layer_table(model: torch.nn.Module) -> str:
    """List the conv and linear layers of a model, one per line with their type, for ``--list-layers``."""
    modules = dict(model.named_modules())
    return "\n".join(f"{name}  {type(modules[name]).__name__}" for name in _concept_layers(model))


# ------------------------------------------------------------------------------------------------------------
# the run


def _device(name: str) -> torch.device:
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise AnalyzeError(f"--device {name!r} is not a torch device; e.g. cpu, cuda or cuda:1.") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise AnalyzeError(f"--device {name!r}: CUDA is not available on this machine; use --device cpu.")
    if device.type == "cuda" and device.index is None and world_size_from_environment() > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))  # each process its own GPU
    return device


def _check_counts(options: AnalyzeOptions) -> None:
    """Raise an AnalyzeError for a count out of range (named by its option), a TypeError for one of a wrong type."""
    try:
        for name in ("samples", "top_k", "references", "flip_steps", "checkpoint", "image_size"):
            check_positive_int(getattr(options, name), name=_option(name))
        if options.batch_size is not None and options.batch_size != "auto":
            check_positive_int(options.batch_size, name=_option("batch_size"), fix="Or 'auto'.")
        for name in ("workers", "flip_samples"):
            check_int(getattr(options, name), name=_option(name), minimum=0)
    except ValueError as error:
        raise AnalyzeError(str(error)) from None


def _option(field_name: str) -> str:
    """Return the command-line option of a field of :class:`AnalyzeOptions`."""
    return "--top" if field_name == "top_k" else f"--{field_name.replace('_', '-')}"


@dataclass
class AnalysisSetup:
    """Everything :func:`prepare` loaded and checked: model, data, composite factory, layers, device."""

    model: torch.nn.Module
    model_description: str
    data: DataSpec
    composite: Callable[[], Any]
    composite_description: str
    layers: List[str]
    graph_layers: List[str]
    device: torch.device
    batch_size: int = DEFAULT_BATCH_SIZE


def prepare(options: AnalyzeOptions) -> AnalysisSetup:
    """Check every argument and load model, weights and data; raise AnalyzeError before any output is written."""
    _check_counts(options)
    device = _device(options.device)
    with torch.random.fork_rng(devices=[]):
        if world_size_from_environment() > 1 and not options.weights:
            torch.manual_seed(0)  # the same random weights in every process of a distributed job
        model, description = load_model(options.model, options.num_classes)
    if options.weights:
        load_weights(model, options.weights, f"--model {description}" + (
            f" with {options.num_classes} classes" if options.num_classes else ""))
        description += f" (weights {options.weights})"
    else:
        logger.info("no --weights given: the model has random weights")
        description += " (random weights, no --weights)"
    data = load_data(options.data, options.image_size, options.mean, options.std, options.normalize)
    check_num_classes(options.num_classes, data)
    layers = resolve_layers(model, options.layers)
    composite, composite_description = make_composite(options.composite, model, options.canonizer, data.preprocess)
    model = model.to(device).eval()
    _check_forward(model, data, layers, device)
    batch_size = _batch_size(options.batch_size, data, model, composite, device)
    return AnalysisSetup(model, description, data, composite, composite_description, layers,
                         list(dict.fromkeys(_graph_layers(model, layers) + layers)), device, batch_size)


def data_labels(data: DataSpec) -> Optional[List[int]]:
    """Return the distinct labels of the data, sorted, where the dataset lists them without loading images.

    An image folder lists them (``targets``), as do datasets with a ``targets`` or ``labels`` attribute;
    otherwise None.
    """
    dataset = getattr(data.dataset, "folder", data.dataset)
    targets = getattr(dataset, "targets", None)
    if targets is None:
        targets = getattr(dataset, "labels", None)
    if targets is None:
        return None
    if isinstance(targets, (torch.Tensor, np.ndarray)):
        targets = targets.tolist()
    try:
        return sorted({int(label) for label in targets})
    except (TypeError, ValueError):  # labels that are not class indices: nothing to check
        return None


def check_num_classes(num_classes: Optional[int], data: DataSpec) -> None:
    """Compare ``--num-classes`` with the labels of the data.

    Raises an AnalyzeError if a label is ``num_classes`` or larger (the model has no output for it); logs a
    warning if the data has fewer classes than ``num_classes``.
    """
    labels = data_labels(data) if num_classes is not None else None
    if not labels or num_classes is None:
        return
    found = f"labels {id_list(labels)} found in --data"
    names = data.class_names
    if names and len(names) <= 8:
        found += f" ({', '.join(names)})"
    if labels[-1] >= num_classes:
        raise AnalyzeError(f"--num-classes {num_classes} is too few for the data: {found}; pass --num-classes "
                           f"{labels[-1] + 1} (or more) to match the model's output to the data.")
    if len(labels) < num_classes:
        logger.warning("--num-classes %d is more than the %d classes of the data (%s); the model's other "
                       "outputs are never a label.", num_classes, len(labels), found)


def _batch_size(option: Union[int, str, None], data: DataSpec, model: torch.nn.Module,
                composite: Callable[[], Any], device: torch.device) -> int:
    """Return --batch-size: as given, ``auto`` (what fits into half the free memory), a DataLoader's, or 32."""
    if option != "auto":
        return int(option or data.loader_batch_size or DEFAULT_BATCH_SIZE)
    from crp._features.memory import estimate_memory, suggest_batch_size
    from crp.attribution import CondAttribution

    image = data.dataset[0][0][None].to(device)
    x = data.preprocess(image) if data.preprocess is not None else image
    attribution = CondAttribution(model, device=device)
    size = suggest_batch_size(attribution, x, composite(), maximum=AUTO_BATCH_MAXIMUM)
    per_sample = estimate_memory(attribution, x, composite()).per_sample
    logger.info("--batch-size auto: %d (about %.0f MiB per image on %s)", size, per_sample / 2 ** 20, device)
    return size


def _check_forward(model: torch.nn.Module, data: DataSpec, layers: List[str], device: torch.device) -> None:
    """One forward pass of the first item: the model must accept the data and reach every layer."""
    from crp.helper import get_output_shapes

    image = data.dataset[0][0][None].to(device)
    x = data.preprocess(image) if data.preprocess is not None else image
    try:
        shapes = get_output_shapes(model, x, layers)
    except RuntimeError as error:
        reason = one_line(error, limit=_REASON_LIMIT)
        raise AnalyzeError(f"the model cannot run on the data (input {list(x.shape)}: {reason}); check --image-size "
                           f"and that --model fits the data.") from None
    unreached = [layer for layer in layers if layer not in shapes]
    if unreached:
        raise AnalyzeError(f"--layers: {unreached[0]!r} is not used by the model's forward pass; choose a layer it "
                           f"runs (see --list-layers).")


def run_analysis(options: AnalyzeOptions, setup: Optional[AnalysisSetup] = None) -> Optional[AnalysisResult]:
    """Write a concept report of a user's model and data into ``options.out`` (see the module docstring).

    In a job of several processes (``torchrun --nproc-per-node N -m crp analyze ...``, or any launcher that sets
    ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT``) every process searches its share of the
    reference samples (:meth:`crp.visualization.FeatureVisualization.run`); process 0 writes the report and
    returns the result, the others return None when the search is done. A model without ``weights`` is then
    initialized with the same seed in every process.

    Returns
    -------
    AnalysisResult or None
        What was written; None in the processes of a distributed job other than process 0.

    Raises
    ------
    AnalyzeError
        For a bad argument (model, weights, data, layer, composite), before anything is written.
    UserError
        If ``options.out`` is a file or a folder crp did not write, or a symbolic link in it leads out of it.
    crp._utils.lock.FolderLockedError
        If another run writes into ``options.out`` (at once if the folder exists, else before anything is
        written).
    """
    if world_size_from_environment() > 1:
        with RankGroup(_device(options.device)) as ranks:
            if ranks.rank > 0:
                _search_share(options, setup)
                return None
            return _run_analysis(options, setup)
    return _run_analysis(options, setup)


def _run_analysis(options: AnalyzeOptions, setup: Optional[AnalysisSetup]) -> AnalysisResult:
    start = time.perf_counter()
    with OutputFolder(options.out, "crp analyze") as output:
        setup = prepare(options) if setup is None else setup
        fv_data = _fv_dataset(setup, options)
        _verify_images(setup.data, fv_data, options)
        from crp.app.concept_report import ConceptAnalysis

        analysis = ConceptAnalysis(setup.model, setup.composite, fv_data, layers=setup.graph_layers,
                                   preprocess=setup.data.preprocess, class_names=setup.data.class_names,
                                   device=setup.device)
        output.claim(folders=[FV_FOLDER])
        result = _report_run(options, setup, analysis, output, start)
    result.seconds = time.perf_counter() - start
    return result


def _search_share(options: AnalyzeOptions, setup: Optional[AnalysisSetup]) -> None:
    """Search this process's share of the reference samples of a distributed job; process 0 writes the results."""
    from crp.app.concept_report import ConceptAnalysis

    setup = prepare(options) if setup is None else setup
    analysis = ConceptAnalysis(setup.model, setup.composite, _fv_dataset(setup, options), layers=setup.graph_layers,
                               preprocess=setup.data.preprocess, class_names=setup.data.class_names,
                               device=setup.device)
    store = Path(options.out).expanduser().resolve() / FV_FOLDER / "store"  # process 0's; only it writes there
    analysis.feature_visualization(store, len(analysis.dataset), **_search_settings(options, setup))


def _search_settings(options: AnalyzeOptions, setup: AnalysisSetup) -> Dict[str, Any]:
    """Return the arguments of the reference-sample search, which every process of a distributed job passes."""
    return {"batch_size": setup.batch_size, "workers": options.workers, "checkpoint": options.checkpoint,
            "top_k": max(8, options.references), "progress": options.progress}


def _fv_dataset(setup: AnalysisSetup, options: AnalyzeOptions) -> Any:
    size = len(setup.data.dataset)
    count = size if options.fv_samples is None else min(size, options.fv_samples)
    return setup.data.dataset if count == size else _Spread(setup.data.dataset, count)


def _verify_images(data: DataSpec, fv_data: Any, options: AnalyzeOptions) -> None:
    """Open every image file the run will read, so that a broken one fails now and names itself."""
    folder = getattr(data.dataset, "folder", None)
    if folder is None:
        return
    from PIL import Image

    size = len(data.dataset)
    wanted = set(getattr(fv_data, "indices", range(len(fv_data))))
    wanted |= set(spread_indices(size, options.samples)) | set(spread_indices(size, options.flip_samples))
    for index in sorted(wanted):
        path = folder.samples[index][0]
        try:
            with Image.open(path) as image:
                image.verify()
        except Exception as error:  # noqa: BLE001 - PIL raises many types for broken files
            reason = one_line(error, limit=_REASON_LIMIT)
            raise AnalyzeError(f"--data: cannot read image {path!r} ({reason}); remove or replace it.") from None


def _report_run(options: AnalyzeOptions, setup: AnalysisSetup, analysis: Any, output: OutputFolder,
                start: float) -> AnalysisResult:
    from crp.app.concept_report import FV_COMPUTED, fingerprint, resumable_feature_visualization

    key = fingerprint("crp analyze", setup.data.identity, setup.graph_layers, setup.composite_description,
                      len(analysis.dataset), options.references, model=setup.model)
    with Steps(ANALYZE_STEPS, desc="crp analyze", enabled=options.progress) as steps:
        with steps.step("reference-sample search"):
            status = resumable_feature_visualization(analysis, output, key, len(analysis.dataset),
                                                     fresh=options.fresh, **_search_settings(options, setup))
        with steps.step("explaining samples"):
            samples = _write_samples(options, setup, analysis, output)
        with steps.step("attribution graph"):
            graph, graph_png = _write_graph(options, setup, analysis, output, samples[0])
        with steps.step("pixel flipping"):
            flipping = _write_flipping(options, setup, analysis, output)
    result = AnalysisResult(
        output.root, setup.model_description, setup.composite_description, setup.data.description,
        len(setup.data.dataset), len(analysis.dataset), status != FV_COMPUTED, setup.layers,
        [_sample_summary(s, analysis, setup.layers) for s in samples],
        [(p[0], p[1], layer, concept, share) for p, edges in graph.connections.items()
         for layer, concept, share in edges],
        flipping[0].mean_auc() if flipping else {}, fv_status=status,
    )
    _write_summary(output, result)
    result.files, result.seconds = [*output.written, "report.html"], time.perf_counter() - start
    report = _assemble(result, setup, samples, (graph, graph_png), flipping)
    output.write("report.html", lambda path: path.write_text(report.to_html(), encoding="utf-8"))
    output.finish()
    return result


def _write_samples(options: AnalyzeOptions, setup: AnalysisSetup, analysis: Any, output: OutputFolder) -> List[Any]:
    from crp._utils.progress import tqdm
    from crp.app.concept_report import write_sample

    dataset = setup.data.dataset
    indices = spread_indices(len(dataset), options.samples)
    written = []
    for rank, index in enumerate(tqdm(indices, desc="explaining samples", disable=not options.progress)):
        image, label = dataset[index]
        prediction = int(analysis.predict(image[None])[0])
        title = f"item {index}: {analysis.class_name(int(label))}, predicted {analysis.class_name(prediction)}"
        written.append(write_sample(output, analysis, image, label=int(label), index=index, rank=rank,
                                    layers=setup.layers, top_k=options.top_k, references=options.references,
                                    title=title))
    return written


def _write_graph(options: AnalyzeOptions, setup: AnalysisSetup, analysis: Any, output: OutputFolder, sample: Any):
    from crp.app.concept_report import figure_saver
    from crp.graph import plot_attribution_graph

    layer = setup.layers[-1]
    concept = sample.explanation.layers[layer].concepts[0]
    image = setup.data.dataset[sample.index][0]
    graph, refs = analysis.attribution_graph(image, layer, concept, sample.explanation.prediction,
                                             options.graph_width)
    figure = plot_attribution_graph(graph, reference_images=refs,
                                    title=f"item {sample.index}: {layer} #{concept} for "
                                          f"{analysis.class_name(sample.explanation.prediction)}")
    return graph, output.write("graph.png", figure_saver(figure))


def _write_flipping(options: AnalyzeOptions, setup: AnalysisSetup, analysis: Any, output: OutputFolder):
    from crp.app.concept_report import figure_saver, flipping_figure

    if options.flip_samples == 0:
        return None
    dataset = setup.data.dataset
    indices = spread_indices(len(dataset), options.flip_samples)
    images = torch.stack([dataset[i][0] for i in indices])
    summary = analysis.pixel_flipping(images, steps=options.flip_steps, batch_size=setup.batch_size,
                                      progress=options.progress)
    return summary, output.write("pixel_flipping.png", figure_saver(flipping_figure(summary)))


def _sample_summary(sample: Any, analysis: Any, layers: List[str]) -> Dict[str, Any]:
    explanation = sample.explanation
    return {
        "index": sample.index, "label": analysis.class_name(sample.label),
        "prediction": analysis.class_name(explanation.prediction),
        "layers": {layer: {"concepts": explanation.layers[layer].concepts, "shares": explanation.layers[layer].shares}
                   for layer in layers},
        "files": sample.files,
    }


def _write_summary(output: OutputFolder, result: AnalysisResult) -> None:
    import json

    payload = {
        "model": result.model, "composite": result.composite, "data": result.data,
        "dataset_size": result.dataset_size, "fv_samples": result.fv_samples, "fv_reused": result.fv_reused,
        "fv_status": result.fv_status,
        "layers": result.layers, "samples": result.samples, "graph_edges": result.graph,
        "flipping_auc": result.flipping_auc,
    }
    text = json.dumps(payload, indent=1, default=float)
    output.write("summary.json", lambda path: path.write_text(text))


def _assemble(result: AnalysisResult, setup: AnalysisSetup, samples: List[Any], graph: Tuple[Any, Any], flipping):
    from crp.app.concept_report import add_flipping_section, add_graph_section, add_reading_guide, add_sample_section
    from crp.app.report import Report

    report = Report("CRP concept report", lead=f"{result.model}; {result.data}; {result.composite}.")
    report.section("Summary")
    report.table(_analysis_summary_rows(result), css_class="summary")
    report.table([(str(rank), str(sample["index"]), sample["label"], sample["prediction"], layer,
                   ", ".join(f"#{c} {100 * v:.1f}%" for c, v in zip(found["concepts"], found["shares"])))
                  for rank, sample in enumerate(result.samples, start=1) for layer, found in sample["layers"].items()],
                 header=["sample", "item", "class", "predicted", "layer", "top concepts (share of relevance)"])
    add_reading_guide(report)
    for rank, sample in enumerate(samples, start=1):
        add_sample_section(report, f"Sample {rank}: {sample.title}", sample)
    layer = setup.layers[-1]
    add_graph_section(report, graph[1], graph[0],
                      f"How the most relevant concept of {layer} for sample 1 is built from the concepts of the "
                      f"layers below ({', '.join(setup.graph_layers)}), with each lower concept's share of the "
                      f"relevance.")
    if flipping is not None:
        add_flipping_section(report, flipping[1], flipping[0])
    report.section("Files", f"Written to {result.out_dir}; FeatureVisualization results in {result.out_dir / 'fv'} "
                            f"({result.fv_status}).")
    names = sorted(set(result.files))
    report.table([(name,) for name in names], header=["file"], collapsed=f"{len(names)} files (click to show)")
    return report


def _analysis_summary_rows(result: AnalysisResult) -> List[Tuple[str, str]]:
    """Return the summary of :func:`format_analysis_summary` as (measure, value) rows, without the per-sample lines."""
    rows = [("run", f"{len(result.files)} files written to {result.out_dir} in {result.seconds:.0f} s"),
            ("model", f"{result.model}; {result.composite}"),
            ("data", f"{result.data}; reference samples from {result.fv_samples} of them"
                     f"{'' if result.fv_status == 'computed' else f' ({result.fv_status})'}")]
    if result.graph:
        parent = f"{result.graph[0][0]} #{result.graph[0][1]}"
        children = ", ".join(f"{layer} #{c} {100 * s:.1f}%" for p0, p1, layer, c, s in result.graph
                             if (p0, p1) == (result.graph[0][0], result.graph[0][1]))
        rows.append(("graph", f"{parent} <- {children}"))
    if result.flipping_auc:
        aucs = ", ".join(f"{order} {auc:.3g}" for order, auc in result.flipping_auc.items())
        rows.append(("pixel flipping", f"{aucs} (area under the logit curves; lowest for morf if faithful)"))
    return rows


def format_analysis_summary(result: AnalysisResult) -> str:
    """Return the one-screen text summary of an :class:`AnalysisResult`."""
    lines = [
        f"crp analyze: wrote {len(result.files)} files to {result.out_dir} in {result.seconds:.0f} s",
        f"report    {result.report}",
        f"model     {result.model}; {result.composite}",
        f"data      {result.data}; reference samples from {result.fv_samples} of them"
        f"{'' if result.fv_status == 'computed' else f' ({result.fv_status})'}",
        f"samples   top concepts of {', '.join(result.layers)} by share of relevance",
    ]
    for rank, sample in enumerate(result.samples, start=1):
        for layer, found in sample["layers"].items():
            tops = ", ".join(f"#{c} {100 * s:.1f}%" for c, s in zip(found["concepts"], found["shares"]))
            lines.append(f"  {rank:2d} item {sample['index']:<5d} {sample['label'][:14]:14s} -> "
                         f"{sample['prediction'][:14]:14s} {layer}: {tops}")
    if result.graph:
        parent = f"{result.graph[0][0]} #{result.graph[0][1]}"
        children = ", ".join(f"{layer} #{c} {100 * s:.1f}%" for p0, p1, layer, c, s in result.graph
                             if (p0, p1) == (result.graph[0][0], result.graph[0][1]))
        lines.append(f"graph     {parent} <- {children}")
    if result.flipping_auc:
        aucs = ", ".join(f"{order} {auc:.3g}" for order, auc in result.flipping_auc.items())
        lines.append(f"flipping  area under the logit curves: {aucs} (lowest for morf if faithful)")
    return "\n".join(lines)
