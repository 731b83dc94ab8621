"""The end-to-end demo behind ``python -m crp demo``: find a Clever-Hans shortcut with CRP.

:func:`run_demo` trains (or loads) :class:`crp.models.ShapesNet` on :class:`crp.data.ShapesDataset`, whose
training split pairs a magenta corner mark with the class "cross". For a few test images it computes the
LRP heatmap of the predicted class (zennit's ``EpsilonPlusFlat``), the top-k channels of one layer by
relevance and their conditional heatmaps (CRP, Achtibat et al., Nature Machine Intelligence 2023), and it
looks for the channel that carries the artifact: the one whose conditional heatmap for "cross" puts the most
relevance on the mark. Everything is written as PNG files and a ``summary.json`` into one folder, which the
demo marks as its own with a manifest; it never deletes a file it did not write.
"""
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm
from zennit.composites import EpsilonPlusFlat

from crp.attribution import CondAttribution
from crp.concepts import ChannelConcept
from crp.data import ARTIFACT_BOX, ShapesDataset
from crp.helper import get_layer_names, write_atomic
from crp.image import imgify
from crp.models import ShapesNet, TrainInfo, TrainSettings, torch_threads, train_default_model

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["run_demo", "DemoError", "DemoResult", "SampleResult", "ArtifactFinding", "QUICK_SETTINGS",
           "DEFAULT_LAYER", "MANIFEST_NAME"]

logger = logging.getLogger(__name__)

#: Layer whose channels are the concepts, unless another is chosen.
DEFAULT_LAYER = "features.6"
#: File in the output folder that lists what the demo wrote; without it, a non-empty folder is not touched.
MANIFEST_NAME = ".crp-demo-manifest.json"
#: Tiny training for smoke tests (``--quick``): seconds instead of a minute, meaningless accuracies.
QUICK_SETTINGS = TrainSettings(epochs=1, n_train=256, n_test=200)
_ARTIFACT_IMAGES = 24  # images of the other classes on which the artifact channel is searched (quick: 6)
_PNG_SIZE = 128

PathLike = Union[str, os.PathLike]


class DemoError(ValueError):
    """A user error (bad output folder, layer or count); its message names the fix."""


@dataclass
class SampleResult:
    """What the demo found for one test image; ``files`` are relative to the output folder."""
    index: int
    label: str
    prediction: str
    has_artifact: bool
    concepts: List[int]
    shares: List[float]
    files: List[str] = field(default_factory=list)


@dataclass
class ArtifactFinding:
    """The channel of ``layer`` that carries the relevance of the shortcut class on the artifact.

    Attributes
    ----------
    layer : str
        The layer searched.
    channel : int
        The channel whose conditional heatmap for ``class_name`` has the most relevance on the artifact patch,
        on average over test images of the other classes that carry the artifact.
    patch_part : float
        Its part of the relevance on the patch summed over all channels of the layer (NaN if that sum is not
        positive).
    ranking : list of (int, float)
        The three channels with the most relevance on the patch, with their parts, best first.
    share_with_artifact, share_without_artifact : float
        Its share of the layer's relevance for ``class_name`` (``ChannelConcept.attribute``, abs-normalized)
        on these images, and on the same images without the artifact.
    logit_with_artifact, logit_without_artifact : float
        Mean output for ``class_name`` on these images with the artifact and without it.
    heatmap_on_patch : float
        Part of the positive input relevance for ``class_name`` that lies on the patch, for the images with it.
    patch_area : float
        Part of the image the patch covers.
    class_name : str
        The class the artifact co-occurs with in training.
    """
    layer: str
    channel: int
    patch_part: float
    ranking: List[Tuple[int, float]]
    share_with_artifact: float
    share_without_artifact: float
    logit_with_artifact: float
    logit_without_artifact: float
    heatmap_on_patch: float
    patch_area: float
    class_name: str


@dataclass
class DemoResult:
    """Everything :func:`run_demo` computed; ``files`` are relative to ``out_dir``."""
    out_dir: Path
    info: TrainInfo
    layer: str
    samples: List[SampleResult]
    artifact: ArtifactFinding
    files: List[str]
    seconds: float


# ------------------------------------------------------------------------------------------------------------
# the output folder


class _Output:
    """The demo's output folder: checks it is new, empty or the demo's own, writes files atomically, tidies up."""

    def __init__(self, out_dir: PathLike) -> None:
        self.root = Path(out_dir).expanduser().resolve()
        self.written: List[str] = []
        self.previous = self._previous_files()

    def _previous_files(self) -> List[str]:
        root = self.root
        if root.exists() and not root.is_dir():
            raise DemoError(f"out {str(root)!r} is a file, not a folder; choose a new or empty folder.")
        if not root.exists() or not any(root.iterdir()):
            return []
        manifest = root / MANIFEST_NAME
        try:
            files = json.loads(manifest.read_text())["files"]
            if not all(isinstance(f, str) for f in files):
                raise TypeError("file names must be strings")
        except (OSError, ValueError, KeyError, TypeError):
            raise DemoError(
                f"out {str(root)!r} is not empty and was not written by `crp demo` (no valid {MANIFEST_NAME}); "
                f"choose a new or empty folder."
            ) from None
        return files

    def claim(self, planned: Sequence[str]) -> None:
        """Create the folder and list every file this run may write, before writing any of them."""
        self.root.mkdir(parents=True, exist_ok=True)
        self._write_manifest(sorted(set(self.previous) | set(planned)))

    def write(self, name: str, save: Callable[[Path], None]) -> None:
        """Write file ``name`` atomically with ``save(temporary_path)``."""
        write_atomic(self.root / name, save)
        self.written.append(name)

    def finish(self) -> None:
        """Remove the files of an earlier run that this run did not write again, then write the final manifest."""
        for name in set(self.previous) - set(self.written):
            stale = self.root / name
            if stale.is_file() and self.root in stale.resolve().parents:
                stale.unlink()
                _remove_empty_parents(stale.parent, self.root)
        self._write_manifest(sorted(self.written))

    def _write_manifest(self, files: List[str]) -> None:
        text = json.dumps({"tool": "crp demo", "files": files}, indent=1)
        write_atomic(self.root / MANIFEST_NAME, lambda path: path.write_text(text))


def _remove_empty_parents(folder: Path, root: Path) -> None:
    while folder != root and root in folder.parents and not any(folder.iterdir()):
        folder.rmdir()
        folder = folder.parent


# ------------------------------------------------------------------------------------------------------------
# argument checks


def _concept_layers(model: torch.nn.Module) -> List[str]:
    """Conv and linear layers whose channels can serve as concepts: all but the output layer."""
    return get_layer_names(model, [torch.nn.Conv2d, torch.nn.Linear])[:-1]


def _check_args(model: ShapesNet, layer: str, samples: int, top_k: int, n_test: int) -> int:
    """Raise a DemoError for a bad layer or count; return the number of channels of ``layer``."""
    layers = _concept_layers(model)
    if layer not in layers:
        raise DemoError(f"layer {layer!r} is not a concept layer of ShapesNet; choose one of {', '.join(layers)}.")
    for name, value, high in (("samples", samples, n_test), ("top", top_k, None)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1 or (high and value > high):
            bound = f" and at most {high}" if high else ""
            raise DemoError(f"{name} must be an int of at least 1{bound}, got {value!r}.")
    module = dict(model.named_modules())[layer]
    channels = module.out_channels if isinstance(module, torch.nn.Conv2d) else module.out_features
    if top_k > channels:
        raise DemoError(f"top must be at most {channels}, the number of channels of layer {layer!r}; got {top_k}.")
    return channels


# ------------------------------------------------------------------------------------------------------------
# attributions


def _explain(attribution: CondAttribution, image: torch.Tensor, layer: str,
             top_k: int) -> Tuple[int, torch.Tensor, List[int], List[float], torch.Tensor]:
    """Heatmap of the predicted class, top-k channels of ``layer`` and their conditional heatmaps for one image."""
    composite = EpsilonPlusFlat()
    x = image[None].clone().requires_grad_(True)
    with torch.no_grad():
        prediction = int(attribution.model(x).argmax(1)[0])
    result = attribution(x, [{"y": [prediction]}], composite, record_layer=[layer])
    shares = ChannelConcept().attribute(result.relevances[layer], abs_norm=True)[0]
    values, channels = torch.topk(shares, top_k)
    conditions = [{layer: [int(c)], "y": [prediction]} for c in channels]
    parts = attribution.generate(x, conditions, composite, batch_size=top_k, verbose=False)
    concept_maps = torch.cat([part.heatmap for part in parts])
    return prediction, result.heatmap[0], channels.tolist(), values.tolist(), concept_maps


def _patch_sum(heatmaps: torch.Tensor) -> torch.Tensor:
    r0, r1, c0, c1 = ARTIFACT_BOX
    return heatmaps[..., r0:r1, c0:c1].sum((-2, -1))


def _artifact_pairs(settings: TrainSettings, quick: bool) -> Tuple[torch.Tensor, torch.Tensor, int]:
    """Test images of the other classes with the artifact, the same images without it, and the artifact class."""
    kwargs = {"n": settings.n_test, "seed": settings.seed}
    marked = ShapesDataset("test", artifact_rate=1.0, other_rate=1.0, **kwargs)
    clean = ShapesDataset("test", artifact_rate=0.0, other_rate=0.0, **kwargs)
    keep = torch.nonzero(marked.labels != marked.artifact_class)[:, 0][:6 if quick else _ARTIFACT_IMAGES]
    return marked.tensors()[0][keep], clean.tensors()[0][keep], marked.artifact_class


def _patch_relevance(attribution: CondAttribution, images: torch.Tensor, layer: str, channels: int,
                     target: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Conditional heatmaps of every channel for ``target`` ``(N, C, H, W)`` and their summed relevance on the patch."""
    conditions = [{layer: [c], "y": [target]} for c in range(channels)]
    maps = torch.stack([
        attribution(image[None].clone().requires_grad_(True), conditions, EpsilonPlusFlat()).heatmap
        for image in images  # one sample and C conditions give C rows (N samples and N conditions would pair up)
    ])
    return maps, _patch_sum(maps).double().sum(0)


def _class_relevance(attribution: CondAttribution, images: torch.Tensor, layer: str, channel: int,
                     target: int) -> Tuple[float, float, float]:
    """Mean share of ``channel`` in the relevance for ``target``, mean logit, mean part of positive heat on patch."""
    result = attribution(images.clone().requires_grad_(True), [{"y": [target]}], EpsilonPlusFlat(),
                         record_layer=[layer])
    share = ChannelConcept().attribute(result.relevances[layer])[:, channel].mean().item()
    positive = result.heatmap.clamp(min=0)
    on_patch = (_patch_sum(positive) / positive.sum((-2, -1)).clamp(min=1e-12)).mean().item()
    return share, result.prediction[:, target].mean().item(), on_patch


def _find_artifact_channel(attribution: CondAttribution, layer: str, channels: int, settings: TrainSettings,
                           quick: bool) -> Tuple[ArtifactFinding, torch.Tensor, torch.Tensor]:
    """Find the channel of ``layer`` whose conditional heatmaps for the artifact class lie most on the patch.

    Returns the finding, the images of other classes with the artifact it was searched on, and the channel's
    conditional heatmaps of these images.
    """
    marked, clean, target = _artifact_pairs(settings, quick)
    maps, on_patch = _patch_relevance(attribution, marked, layer, channels, target)
    total = float(on_patch.sum())
    parts = on_patch / total if total > 0 else torch.full_like(on_patch, float("nan"))
    order = torch.argsort(on_patch, descending=True, stable=True)
    best = int(order[0])
    share_marked, logit_marked, heat_on_patch = _class_relevance(attribution, marked, layer, best, target)
    share_clean, logit_clean, _ = _class_relevance(attribution, clean, layer, best, target)
    r0, r1, c0, c1 = ARTIFACT_BOX
    finding = ArtifactFinding(
        layer, best, float(parts[best]), [(int(c), float(parts[c])) for c in order[:3]], share_marked, share_clean,
        logit_marked, logit_clean, heat_on_patch, (r1 - r0) * (c1 - c0) / marked[0, 0].numel(),
        ShapesDataset.class_names[target],
    )
    return finding, marked, maps[:, best]


# ------------------------------------------------------------------------------------------------------------
# pictures


def _png(image: Image.Image) -> Callable[[Path], None]:
    return lambda path: image.save(path, format="PNG")


def _heat_png(heatmap: torch.Tensor) -> Image.Image:
    return imgify(heatmap.detach(), cmap="bwr", symmetric=True, resize=_PNG_SIZE)


def _image_png(image: torch.Tensor) -> Image.Image:
    return imgify(image.detach().permute(1, 2, 0), vmin=0.0, vmax=1.0, resize=_PNG_SIZE)


def _overview(image: torch.Tensor, heatmap: torch.Tensor, concept_maps: torch.Tensor, channels: List[int],
              shares: List[float], title: str, layer: str, artifact_channel: int) -> "Figure":
    """One row: the input, the heatmap of the prediction and the conditional heatmaps of the top-k channels."""
    from matplotlib.figure import Figure

    panels = [(_image_png(image), "input"), (_heat_png(heatmap), "heatmap")]
    for channel, share, cmap in zip(channels, shares, concept_maps):
        mark = " (mark channel)" if channel == artifact_channel else ""
        panels.append((_heat_png(cmap), f"{layer} #{channel}{mark}\n{100 * share:.1f}% of relevance"))
    figure = Figure(figsize=(2.0 * len(panels), 2.6))
    axes = figure.subplots(1, len(panels), squeeze=False)[0]
    for ax, (picture, label) in zip(axes, panels):
        ax.imshow(np.asarray(picture.convert("RGB")))
        ax.set_title(label, fontsize=8)
        ax.set_axis_off()
    figure.suptitle(title, fontsize=9)
    return figure


def _figure_saver(figure: "Figure") -> Callable[[Path], None]:
    return lambda path: figure.savefig(path, format="png", dpi=100, bbox_inches="tight")


def _artifact_figure(images: torch.Tensor, maps: torch.Tensor, finding: ArtifactFinding) -> "Figure":
    """Two rows: images of other classes carrying the artifact and the artifact channel's conditional heatmaps."""
    from matplotlib.figure import Figure

    count = min(len(images), 8)
    figure = Figure(figsize=(1.6 * count, 3.4))
    axes = figure.subplots(2, count, squeeze=False)
    for col in range(count):
        axes[0, col].imshow(np.asarray(_image_png(images[col]).convert("RGB")))
        axes[1, col].imshow(np.asarray(_heat_png(maps[col]).convert("RGB")))
        axes[0, col].set_axis_off()
        axes[1, col].set_axis_off()
    figure.suptitle(f"{finding.layer} #{finding.channel}: relevance for {finding.class_name!r} "
                    f"({100 * finding.patch_part:.0f}% of the relevance on the mark)", fontsize=9)
    return figure


# ------------------------------------------------------------------------------------------------------------
# the demo


def _pick_samples(test: ShapesDataset, predictions: torch.Tensor, count: int) -> List[int]:
    """Pick test images in turn from four groups, to show the shortcut at work and a normal decision.

    Groups: another class with the artifact predicted as the artifact class (else any with the artifact), the
    artifact class without the artifact, the artifact class with it, another class without it.
    """
    other, marked = test.labels != test.artifact_class, test.has_artifact
    fooled = marked & other & (predictions == test.artifact_class)
    groups = [fooled if bool(fooled.any()) else marked & other, ~marked & ~other, marked & ~other, ~marked & other]
    queues = [torch.nonzero(g)[:, 0].tolist() for g in groups]
    chosen: List[int] = []
    while len(chosen) < count:
        taken = [q.pop(0) for q in queues if q]
        if not taken:
            taken = [i for i in range(len(test)) if i not in chosen]
        chosen.extend(i for i in taken if i not in chosen)
    return chosen[:count]


def _sample_files(rank: int, channels: Sequence[int]) -> List[str]:
    folder = f"sample_{rank + 1}"
    names = ["input.png", "heatmap.png", *(f"concept_{c}.png" for c in channels), "overview.png"]
    return [f"{folder}/{name}" for name in names]


def _explain_sample(output: _Output, attribution: CondAttribution, test: ShapesDataset, index: int, rank: int,
                    layer: str, top_k: int, artifact: ArtifactFinding) -> SampleResult:
    image, label = test[index]
    names = test.class_names
    prediction, heatmap, channels, shares, concept_maps = _explain(attribution, image, layer, top_k)
    files = _sample_files(rank, channels)
    output.write(files[0], _png(_image_png(image)))
    output.write(files[1], _png(_heat_png(heatmap)))
    for name, concept_map in zip(files[2:-1], concept_maps):
        output.write(name, _png(_heat_png(concept_map)))
    marked = bool(test.has_artifact[index])
    title = (f"test #{index}: {names[label]}{' with the mark' if marked else ''}, "
             f"predicted {names[prediction]}")
    figure = _overview(image, heatmap, concept_maps, channels, shares, title, layer, artifact.channel)
    output.write(files[-1], _figure_saver(figure))
    return SampleResult(index, names[label], names[prediction], marked, channels, shares, files)


def run_demo(
    out_dir: PathLike = "demo_output", samples: int = 4, layer: str = DEFAULT_LAYER, top_k: int = 4,
    quick: bool = False, cache_dir: Optional[PathLike] = None, progress: bool = True, force_train: bool = False,
    threads: Optional[int] = None,
) -> DemoResult:
    """Train or load the demo model, explain a few test images with CRP and find the artifact channel.

    Writes into ``out_dir``: per sample ``sample_<i>/input.png``, ``heatmap.png`` (LRP heatmap of the predicted
    class), ``concept_<c>.png`` (conditional heatmap of channel ``c`` of ``layer``, for the top-k channels by
    relevance) and ``overview.png``; ``artifact_channel.png``; ``summary.json``; and a manifest of these files.

    Parameters
    ----------
    out_dir : str or os.PathLike
        Output folder: new, empty, or written by an earlier run (whose files are replaced). A folder holding
        other files is refused.
    samples : int
        Number of test images to explain.
    layer : str
        The concept layer: ``features.0``, ``features.3``, ``features.6`` or ``classifier.0``.
    top_k : int
        Number of channels shown per image.
    quick : bool
        Train a tiny model (:data:`QUICK_SETTINGS`) for smoke tests; its results mean nothing.
    cache_dir : str or os.PathLike, optional
        Model cache folder; default ``$CRP_CACHE`` or ``~/.cache/crp``.
    progress : bool
        Show progress bars.
    force_train : bool
        Retrain the model even if the cache holds it.
    threads : int, optional
        torch threads for the whole run (restored afterwards); default :func:`crp.models.default_threads`.

    Returns
    -------
    DemoResult
        The accuracies, the explained samples, the artifact channel and the written files.

    Raises
    ------
    DemoError
        If ``out_dir`` holds files the demo did not write or is a file, or ``layer``, ``samples`` or ``top_k`` is
        not valid.
    """
    start = time.perf_counter()
    output = _Output(out_dir)
    settings = QUICK_SETTINGS if quick else TrainSettings()
    channels = _check_args(ShapesNet(), layer, samples, top_k, settings.n_test)
    with torch_threads(threads):
        model, info = train_default_model(cache_dir, force_train, progress=progress, settings=settings, threads=threads)
        result = _explain_all(output, model, info, layer, channels, samples, top_k, quick, progress)
    result.files, result.seconds = list(output.written), time.perf_counter() - start
    return result


def _explain_all(output: _Output, model: ShapesNet, info: TrainInfo, layer: str, channels: int, samples: int,
                 top_k: int, quick: bool, progress: bool) -> DemoResult:
    """Everything after training: pick samples, find the artifact channel, explain and write the files."""
    settings = info.settings
    test = ShapesDataset("test", n=settings.n_test, seed=settings.seed)
    with torch.no_grad():
        predictions = model(test.tensors()[0]).argmax(1)
    chosen = _pick_samples(test, predictions, samples)
    output.claim(_planned_files(len(chosen), channels))
    attribution = CondAttribution(model)
    logger.info("searching the artifact channel of %s", layer)
    artifact, marked, maps = _find_artifact_channel(attribution, layer, channels, settings, quick)
    output.write("artifact_channel.png", _figure_saver(_artifact_figure(marked, maps, artifact)))
    results = [
        _explain_sample(output, attribution, test, index, rank, layer, top_k, artifact)
        for rank, index in enumerate(tqdm(chosen, desc="explaining samples", disable=not progress))
    ]
    result = DemoResult(output.root, info, layer, results, artifact, [], 0.0)
    output.write("summary.json", lambda path: path.write_text(_summary_json(result)))
    output.finish()
    return result


def _planned_files(count: int, channels: int) -> List[str]:
    """Every file a run may write (the concept files of all channels, as the top-k are not known yet)."""
    files = ["artifact_channel.png", "summary.json"]
    for rank in range(count):
        files += _sample_files(rank, range(channels))
    return files


def _summary_json(result: DemoResult) -> str:
    info = asdict(result.info)
    info["cache_file"] = str(info["cache_file"])
    payload: Dict[str, object] = {
        "layer": result.layer, "model": info, "artifact": asdict(result.artifact),
        "samples": [asdict(s) for s in result.samples],
    }
    return json.dumps(payload, indent=1, default=float)
