"""The end-to-end demo behind ``python -m crp demo``: find a Clever-Hans shortcut with CRP.

:func:`run_demo` trains (or loads) :class:`crp.app.shapes_model.ShapesNet` on
:class:`crp.app.shapes.ShapesDataset`, whose training split pairs a magenta corner mark with the class
"cross", and writes a concept report (CRP, Achtibat et al., Nature Machine Intelligence 2023) into one folder:

- the channel of the chosen layer that responds to the mark: the one whose activation rises most when the
  mark is painted on test images of the other classes, how much of the "cross" relevance it carries, and its
  reference samples (Activation and Relevance Maximization, per-class statistics);
- for a few test images, the LRP heatmap of the prediction (zennit's ``EpsilonPlusFlat``), the most relevant
  channels with their conditional heatmaps and reference samples;
- the attribution graph of the first image's most relevant channel;
- pixel-flipping curves of the heatmaps (most relevant first, least relevant first, random);
- ``report.html`` (self-contained), the PNG files and ``summary.json``.

The folder is marked as the demo's own by a manifest; the demo never deletes a file it did not write. The
FeatureVisualization results stay in ``fv/`` and are reused by the next run with the same model (an
interrupted run continues there).
"""
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from zennit.composites import EpsilonPlusFlat

from crp._utils.checks import check_int, check_positive_int
from crp._utils.progress import tqdm
from crp.app.concept_report import (
    FV_COMPUTED,
    FV_FOLDER,
    ConceptAnalysis,
    FlippingSummary,
    SampleExplanation,
    WrittenSample,
    add_flipping_section,
    add_graph_section,
    add_reading_guide,
    add_references_section,
    add_sample_section,
    figure_saver,
    fingerprint,
    flipping_figure,
    heatmap_image,
    input_image,
    padded_references,
    png_saver,
    references_mosaic,
    resumable_feature_visualization,
    statistics_figure,
    write_sample,
)
from crp.app.output import MANIFEST_NAME, OutputFolder, UserError
from crp.app.progress import Steps
from crp.app.shapes import ARTIFACT_BOX, ShapesDataset
from crp.app.shapes_model import ShapesNet, TrainInfo, TrainSettings, torch_threads, train_default_model
from crp.attribution import CondAttribution
from crp.concepts import ChannelConcept
from crp.helper import get_layer_names

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

    from crp.app.report import Report

__all__ = ["run_demo", "find_mark_channel", "format_summary", "DemoError", "DemoResult", "SampleResult",
           "ArtifactFinding", "DemoSettings", "QUICK_SETTINGS", "DEFAULT_LAYER", "MANIFEST_NAME", "FV_FOLDER",
           "ARTIFACT_IMAGES", "DEMO_STEPS"]

logger = logging.getLogger(__name__)

#: Layer whose channels are the concepts, unless another is chosen.
DEFAULT_LAYER = "features.6"
#: Tiny training for smoke tests (``--quick``): seconds instead of a minute, meaningless accuracies.
QUICK_SETTINGS = TrainSettings(epochs=1, n_train=256, n_test=200)
#: The steps after training that show in the demo's progress bar.
DEMO_STEPS = ("reference-sample search", "the channel that responds to the mark", "its reference samples",
              "explaining samples", "attribution graph", "pixel flipping")
#: Images of the other classes on which the mark channel is searched (``--quick``: 6).
ARTIFACT_IMAGES = 24
_PNG_SIZE = 128

PathLike = Union[str, os.PathLike]


class DemoError(UserError):
    """A user error (bad output folder, layer or count); its message names the fix."""


@dataclass(frozen=True)
class DemoSettings:
    """How much the demo computes besides training.

    Parameters
    ----------
    references : int
        Reference samples shown per concept (RelMax, ActMax, per class).
    fv_top_k : int
        Reference samples kept per concept by the FeatureVisualization.
    graph_width : tuple of int
        Lower concepts kept per level of the attribution graph.
    flip_samples, flip_steps : int
        Test images and steps of the pixel-flipping curves.
    stats_classes : int
        Classes shown in the per-class statistics of the artifact channel.
    """

    references: int = 8
    fv_top_k: int = 16
    graph_width: Tuple[int, ...] = (3, 2)
    flip_samples: int = 64
    flip_steps: int = 32
    stats_classes: int = 4


_QUICK_DEMO = DemoSettings(references=4, fv_top_k=8, graph_width=(2, 1), flip_samples=8, flip_steps=8)


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
    artifact_share: float = float("nan")


@dataclass
class ArtifactFinding:
    """The channel of ``layer`` that responds to the artifact, and how much it drives the artifact class.

    Attributes
    ----------
    layer : str
        The layer searched.
    channel : int
        The channel whose activation (summed over positions) rises most, in standard deviations, when the
        artifact is painted on test images of the other classes.
    response : float
        That rise: the mean activation with the artifact minus the mean without, divided by the standard
        deviation over both sets of images (0 where a channel never varies).
    ranking : list of (int, float)
        The three channels with the largest response, with their responses, best first.
    patch_part : float
        The channel's part of the relevance for ``class_name`` on the artifact patch, summed over all channels
        (conditional heatmaps; NaN if that sum is not positive).
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
    response: float
    ranking: List[Tuple[int, float]]
    patch_part: float
    share_with_artifact: float
    share_without_artifact: float
    logit_with_artifact: float
    logit_without_artifact: float
    heatmap_on_patch: float
    patch_area: float
    class_name: str


@dataclass
class DemoResult:
    """Everything :func:`run_demo` computed; ``files`` are relative to ``out_dir``.

    ``flipping_auc`` holds the mean area under the pixel-flipping curves per order, ``graph_nodes`` the
    concepts of the attribution graph, ``artifact_classes`` the classes for which the artifact channel is most
    relevant with their mean relevance, ``fv_status`` what became of the FeatureVisualization results of an
    earlier run: ``"reused"`` (complete, nothing computed), ``"continued"`` (an interrupted search continued)
    or ``"computed"`` (searched from the start), and ``fv_reused`` whether they were used at all (reused or
    continued).
    """

    out_dir: Path
    info: TrainInfo
    layer: str
    samples: List[SampleResult]
    artifact: ArtifactFinding
    files: List[str]
    seconds: float
    flipping_auc: Dict[str, float] = field(default_factory=dict)
    graph_nodes: List[Tuple[str, int]] = field(default_factory=list)
    artifact_classes: List[Tuple[str, float]] = field(default_factory=list)
    fv_reused: bool = False
    fv_status: str = FV_COMPUTED

    @property
    def report(self) -> Path:
        """The HTML report."""
        return self.out_dir / "report.html"


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
    try:  # a count out of range is the user's to fix, a DemoError as on the command line; a wrong type a TypeError
        check_int(samples, name="samples", minimum=1, maximum=n_test, fix="It counts test images to explain.")
        check_positive_int(top_k, name="top")
    except ValueError as error:
        raise DemoError(str(error)) from None
    module = dict(model.named_modules())[layer]
    channels = module.out_channels if isinstance(module, torch.nn.Conv2d) else module.out_features
    if top_k > channels:
        raise DemoError(f"top must be at most {channels}, the number of channels of layer {layer!r}; got {top_k}.")
    return channels


# ------------------------------------------------------------------------------------------------------------
# the artifact channel


def _patch_sum(heatmaps: torch.Tensor) -> torch.Tensor:
    r0, r1, c0, c1 = ARTIFACT_BOX
    return heatmaps[..., r0:r1, c0:c1].sum((-2, -1))


def _artifact_pairs(settings: TrainSettings, count: int) -> Tuple[torch.Tensor, torch.Tensor, int]:
    """Test images of the other classes with the artifact, the same images without it, and the artifact class."""
    kwargs = {"n": settings.n_test, "seed": settings.seed}
    marked = ShapesDataset("test", artifact_rate=1.0, other_rate=1.0, **kwargs)
    clean = ShapesDataset("test", artifact_rate=0.0, other_rate=0.0, **kwargs)
    keep = torch.nonzero(marked.labels != marked.artifact_class)[:, 0][:count]
    return marked.tensors()[0][keep], clean.tensors()[0][keep], marked.artifact_class


def _patch_relevance(attribution: CondAttribution, images: torch.Tensor, layer: str, channels: int,
                     target: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Conditional heatmaps of every channel for ``target`` ``(N, C, H, W)`` and their summed relevance on the patch."""
    conditions = [{layer: [c], attribution.MODEL_OUTPUT_NAME: [target]} for c in range(channels)]
    maps = torch.stack([
        attribution(image[None].clone().requires_grad_(True), conditions, EpsilonPlusFlat()).heatmap
        for image in images  # one sample and C conditions give C rows (N samples and N conditions would pair up)
    ])
    return maps, _patch_sum(maps).double().sum(0)


def _class_relevance(attribution: CondAttribution, images: torch.Tensor, layer: str,
                     target: int) -> Dict[str, torch.Tensor]:
    """Measure per image what drives ``target``.

    Returns the channel activations (summed over positions), the channel shares of the relevance for
    ``target``, the ``target`` logit and the part of the positive input relevance on the patch.
    """
    conditions = [{attribution.MODEL_OUTPUT_NAME: [target]}]
    result = attribution(images.clone().requires_grad_(True), conditions, EpsilonPlusFlat(), record_layer=[layer])
    activation = result.activations[layer]
    positive = result.heatmap.clamp(min=0)
    return {
        "activation": activation.flatten(2).sum(2) if activation.dim() > 2 else activation,
        "share": ChannelConcept().attribute(result.relevances[layer]),
        "logit": result.prediction[:, target],
        "on_patch": _patch_sum(positive) / positive.sum((-2, -1)).clamp(min=1e-12),
    }


def activation_response(with_artifact: torch.Tensor, without: torch.Tensor) -> torch.Tensor:
    """Per channel: mean activation with the artifact minus without, over the standard deviation of both sets.

    Parameters
    ----------
    with_artifact, without : torch.Tensor
        Activations ``(N, C)`` of the same images with and without the artifact.

    Returns
    -------
    torch.Tensor
        ``(C,)`` float64; 0 where a channel's activations do not vary.
    """
    both = torch.cat([with_artifact, without]).double()
    spread = both.std(0) if len(both) > 1 else torch.zeros(both.shape[1], dtype=torch.float64)
    difference = with_artifact.double().mean(0) - without.double().mean(0)
    return torch.where(spread > 0, difference / spread.clamp(min=1e-300), torch.zeros_like(difference))


def _find_artifact_channel(attribution: CondAttribution, layer: str, channels: int, settings: TrainSettings,
                           count: int) -> Tuple[ArtifactFinding, torch.Tensor, torch.Tensor]:
    """Find the channel of ``layer`` that responds most to the artifact, and measure how it drives its class.

    Returns the finding, the images of other classes with the artifact it was searched on, and the channel's
    conditional heatmaps for the artifact class on these images.
    """
    marked, clean, target = _artifact_pairs(settings, count)
    with_mark = _class_relevance(attribution, marked, layer, target)
    without = _class_relevance(attribution, clean, layer, target)
    response = activation_response(with_mark["activation"], without["activation"])
    order = torch.argsort(response, descending=True, stable=True)
    best = int(order[0])
    maps, on_patch = _patch_relevance(attribution, marked, layer, channels, target)
    total = float(on_patch.sum())
    r0, r1, c0, c1 = ARTIFACT_BOX
    finding = ArtifactFinding(
        layer, best, float(response[best]), [(int(c), float(response[c])) for c in order[:3]],
        float(on_patch[best] / total) if total > 0 else float("nan"),
        float(with_mark["share"][:, best].mean()), float(without["share"][:, best].mean()),
        float(with_mark["logit"].mean()), float(without["logit"].mean()), float(with_mark["on_patch"].mean()),
        (r1 - r0) * (c1 - c0) / marked[0, 0].numel(), ShapesDataset.class_names[target],
    )
    return finding, marked, maps[:, best]


def find_mark_channel(model: torch.nn.Module, layer: str = DEFAULT_LAYER, *,
                      settings: Optional[TrainSettings] = None, images: int = ARTIFACT_IMAGES) -> ArtifactFinding:
    """Name "the mark channel" of ``layer``, as the demo and the tutorials do.

    It is the channel whose activation (summed over positions) rises most, in standard deviations, when the
    mark is painted on test images of the classes other than "cross" (the first ``images`` of them);
    :class:`ArtifactFinding` also holds the runners-up and how much the channel drives "cross".

    Parameters
    ----------
    model : torch.nn.Module
        A :class:`crp.app.shapes_model.ShapesNet` (e.g. from :func:`crp.app.shapes_model.train_default_model`).
    layer : str
        A concept layer: ``features.0``, ``features.3``, ``features.6`` or ``classifier.0``.
    settings : TrainSettings, optional
        The settings the model was trained with (they choose the test split); default :class:`TrainSettings`.
    images : int
        Test images of the other classes to search on.

    Returns
    -------
    ArtifactFinding
    """
    settings = settings if settings is not None else TrainSettings()
    channels = _check_args(ShapesNet(), layer, 1, 1, settings.n_test)
    check_positive_int(images, name="images")
    return _find_artifact_channel(CondAttribution(model), layer, channels, settings, images)[0]


# ------------------------------------------------------------------------------------------------------------
# pictures


def _artifact_figure(images: torch.Tensor, maps: torch.Tensor, finding: ArtifactFinding) -> "Figure":
    """Two rows: images of other classes carrying the artifact and the artifact channel's conditional heatmaps."""
    from matplotlib.figure import Figure

    count = min(len(images), 8)
    figure = Figure(figsize=(1.6 * count, 3.4))
    axes = figure.subplots(2, count, squeeze=False)
    for col in range(count):
        axes[0, col].imshow(np.asarray(input_image(images[col], _PNG_SIZE).convert("RGB")))
        axes[1, col].imshow(np.asarray(heatmap_image(maps[col], _PNG_SIZE).convert("RGB")))
        axes[0, col].set_axis_off()
        axes[1, col].set_axis_off()
    figure.suptitle(f"{finding.layer} #{finding.channel}, the channel that responds most to the mark: its relevance "
                    f"for {finding.class_name!r} on other shapes with the mark", fontsize=9)
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


def _artifact_files(channel: int, classes: int) -> List[str]:
    """Return the files about artifact channel ``channel`` (references per class for ``classes`` classes)."""
    return ["artifact_channel.png", f"references/{channel}_relmax.png", f"references/{channel}_actmax.png",
            f"references/{channel}_classes.png", *(f"references/{channel}_class_{t}.png" for t in range(classes))]


class _Run:
    """One demo run: the output folder, the model, the analysis and what has been found so far."""

    def __init__(self, output: OutputFolder, model: ShapesNet, info: TrainInfo, *, layer: str, top_k: int,
                 demo: DemoSettings, verbose: bool, start: float) -> None:
        self.output, self.model, self.info, self.layer, self.top_k = output, model, info, layer, top_k
        self.demo, self.verbose = demo, verbose
        settings = info.settings
        self.test = ShapesDataset("test", n=settings.n_test, seed=settings.seed)
        self.names = self.test.class_names
        self.analysis = ConceptAnalysis(model, EpsilonPlusFlat, self.test, layers=_concept_layers(model),
                                        class_names=self.names)
        self.fv_status = FV_COMPUTED
        self.start = start
        self.artifact_pictures: Tuple[List[Any], List[Any]] = ([], [])

    def feature_visualization(self, fresh: bool = False) -> None:
        """Run it, or reuse (or continue) the results an earlier run of the same model left in the output folder."""
        key = fingerprint("crp demo", asdict(self.info.settings), self.analysis.layers, "EpsilonPlusFlat",
                          self.demo.fv_top_k, len(self.test), model=self.model)
        logger.info("feature visualization of %d test images in %s", len(self.test), self.output.path(FV_FOLDER))
        self.fv_status = resumable_feature_visualization(
            self.analysis, self.output, key, len(self.test), fresh=fresh, batch_size=64, checkpoint=4,
            top_k=self.demo.fv_top_k, progress=self.verbose)

    def artifact(self, channels: int, quick: bool) -> ArtifactFinding:
        finding, marked, maps = _find_artifact_channel(self.analysis.attribution, self.layer, channels,
                                                       self.info.settings, 6 if quick else ARTIFACT_IMAGES)
        self.output.write("artifact_channel.png", figure_saver(_artifact_figure(marked, maps, finding)))
        count = min(len(marked), 8)
        self.artifact_pictures = ([input_image(image) for image in marked[:count]],
                                  [heatmap_image(heat) for heat in maps[:count]])
        return finding

    def explain_sample(self, index: int, rank: int, artifact: ArtifactFinding) -> WrittenSample:
        label, marked = int(self.test.labels[index]), bool(self.test.has_artifact[index])
        prediction = int(self.analysis.predict(self.test[index][0][None])[0])
        title = (f"test #{index}: {self.names[label]}{' with the mark' if marked else ''}, "
                 f"predicted {self.names[prediction]}")
        return write_sample(self.output, self.analysis, self.test[index][0], label=label, index=index, rank=rank,
                            layers=[self.layer], top_k=self.top_k, references=self.demo.references, title=title,
                            highlight=artifact.channel, highlight_label="mark channel", size=_PNG_SIZE)

    def artifact_references(self, artifact: ArtifactFinding) -> Dict[str, Any]:
        channel, analysis, write = artifact.channel, self.analysis, self.output.write
        files = _artifact_files(channel, len(self.names))
        count = self.demo.references
        relmax = analysis.references(self.layer, [channel], "relevance", count)[channel]
        actmax = analysis.references(self.layer, [channel], "activation", count)[channel]
        stats = analysis.class_statistics(self.layer, channel, self.demo.stats_classes, count)
        classes: List[Tuple[str, Any]] = []
        write(files[1], png_saver(references_mosaic(*relmax)))
        write(files[2], png_saver(references_mosaic(*actmax)))
        pictures: Dict[str, Any] = {
            "relmax": padded_references(*relmax), "actmax": padded_references(*actmax),
            "stats": write(files[3], figure_saver(statistics_figure(stats, analysis.class_name))),
            "classes": classes, "artifact": self.artifact_pictures,
        }
        for target in stats.classes:
            write(f"references/{channel}_class_{target}.png", png_saver(references_mosaic(*stats.references[target])))
            classes.append((f"references among the images of class {self.names[target]!r}",
                            padded_references(*stats.references[target])))
        pictures["statistics"] = [(self.names[t], v) for t, v in zip(stats.classes, stats.values)]
        return pictures

    def graph(self, index: int, explanation: SampleExplanation) -> Tuple[Any, Any]:
        image, _ = self.test[index]
        concept = explanation.layers[self.layer].concepts[0]
        result, refs = self.analysis.attribution_graph(image, self.layer, concept, explanation.prediction,
                                                       self.demo.graph_width)
        from crp.graph import plot_attribution_graph

        figure = plot_attribution_graph(result, reference_images=refs,
                                        title=f"test #{index}: {self.layer} #{concept} for "
                                              f"{self.names[explanation.prediction]!r}")
        path = self.output.write("graph.png", figure_saver(figure))
        return result, path

    def flipping(self) -> Tuple[FlippingSummary, Any]:
        images = self.test.tensors()[0][:self.demo.flip_samples]
        summary = self.analysis.pixel_flipping(images, steps=self.demo.flip_steps, progress=self.verbose)
        return summary, self.output.write("pixel_flipping.png", figure_saver(flipping_figure(summary)))


def run_demo(
    out_dir: PathLike = "demo_output", samples: int = 4, layer: str = DEFAULT_LAYER, *, top_k: int = 4,
    quick: bool = False, cache_dir: Optional[PathLike] = None, progress: bool = True, force_train: bool = False,
    threads: Optional[int] = None, settings: Optional[DemoSettings] = None, fresh: bool = False,
) -> DemoResult:
    """Train or load the demo model, find the artifact channel and write a concept report of a few test images.

    Writes into ``out_dir``: ``report.html`` (self-contained), ``summary.json``, ``artifact_channel.png``,
    ``references/<c>_{relmax,actmax,classes,class_<t>}.png`` for the artifact channel ``c``, per sample
    ``sample_<i>/input.png``, ``heatmap.png`` (LRP heatmap of the predicted class), ``concept_<c>.png``
    (conditional heatmap of channel ``c`` of ``layer``, for the top-k channels by relevance),
    ``references_<c>.png`` (their RelMax references) and ``overview.png``; ``graph.png`` (attribution graph of
    the first sample's top channel), ``pixel_flipping.png``; the FeatureVisualization results in ``fv/``; and a
    manifest of these files.

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
        Train a tiny model (:data:`QUICK_SETTINGS`) and compute less, for smoke tests; its results mean nothing.
    cache_dir : str or os.PathLike, optional
        Model cache folder; default ``$CRP_CACHE`` or ``~/.cache/crp``.
    progress : bool
        Show progress bars.
    force_train : bool
        Retrain the model even if the cache holds it.
    threads : int, optional
        torch threads for the whole run (restored afterwards); default :func:`crp.app.shapes_model.default_threads`.
    settings : DemoSettings, optional
        How many references, graph levels and pixel-flipping curves; default :class:`DemoSettings` (with
        ``quick``, fewer).
    fresh : bool
        Recompute the FeatureVisualization even if the output folder holds results of the same model.

    Returns
    -------
    DemoResult
        The accuracies, the explained samples, the artifact channel, the written files.

    Raises
    ------
    DemoError
        If ``out_dir`` holds files the demo did not write or is a file, or a symbolic link in it leads out of it,
        or ``layer``, ``samples`` or ``top_k`` is not valid.
    crp._utils.lock.FolderLockedError
        If another run writes into ``out_dir`` (at once if the folder exists, else before anything is written).
    """
    start = time.perf_counter()
    try:
        output = OutputFolder(out_dir, "crp demo").lock()
    except UserError as error:
        raise DemoError(str(error)) from None
    train_settings = QUICK_SETTINGS if quick else TrainSettings()
    demo = settings if settings is not None else (_QUICK_DEMO if quick else DemoSettings())
    with output, torch_threads(threads):
        channels = _check_args(ShapesNet(), layer, samples, top_k, train_settings.n_test)
        model, info = train_default_model(cache_dir, force_train, progress=progress, settings=train_settings,
                                          threads=threads)
        run = _Run(output, model, info, layer=layer, top_k=top_k, demo=demo, verbose=progress, start=start)
        try:
            result = _explain_all(run, channels, samples, quick, fresh)
        except UserError as error:  # a link out of the folder, found when its files are claimed or written
            raise error if isinstance(error, DemoError) else DemoError(str(error)) from None
    result.files, result.seconds = list(output.written), time.perf_counter() - start
    return result


def _sample_result(sample: WrittenSample, names: Sequence[str], marked: bool, layer: str,
                   channel: int) -> SampleResult:
    found = sample.explanation.layers[layer]
    share = found.shares[found.concepts.index(channel)]
    return SampleResult(sample.index, names[sample.label], names[sample.explanation.prediction], marked,
                        found.concepts[:found.ranked], found.shares[:found.ranked], sample.files, share)


def _explain_all(run: _Run, channels: int, samples: int, quick: bool, fresh: bool) -> DemoResult:
    """Everything after training: pick samples, find the artifact channel, explain, write the files and report."""
    test, output = run.test, run.output
    chosen = _pick_samples(test, run.analysis.predict(test.tensors()[0]), samples)
    output.claim(folders=[FV_FOLDER])
    with Steps(DEMO_STEPS, desc="crp demo", enabled=run.verbose) as steps:
        with steps.step("reference-sample search"):
            run.feature_visualization(fresh)
        with steps.step("the channel that responds to the mark"):
            artifact = run.artifact(channels, quick)
        with steps.step("its reference samples"):
            pictures = run.artifact_references(artifact)
        with steps.step("explaining samples"):
            explained = [run.explain_sample(index, rank, artifact) for rank, index in
                         enumerate(tqdm(chosen, desc="explaining samples", disable=not run.verbose, leave=False))]
        with steps.step("attribution graph"):
            graph, graph_png = run.graph(chosen[0], explained[0].explanation)
        with steps.step("pixel flipping"):
            flipping, flipping_png = run.flipping()
    names = test.class_names
    samples_found = [_sample_result(s, names, bool(test.has_artifact[s.index]), run.layer, artifact.channel)
                     for s in explained]
    result = DemoResult(output.root, run.info, run.layer, samples_found, artifact, [], 0.0, flipping.mean_auc(),
                        [tuple(node) for node in graph.nodes], pictures["statistics"],
                        run.fv_status != FV_COMPUTED, run.fv_status)
    output.write("summary.json", lambda path: path.write_text(_summary_json(result)))
    result.files, result.seconds = [*output.written, "report.html"], time.perf_counter() - run.start
    report = _report(result, pictures, explained, (graph, graph_png), (flipping, flipping_png))
    output.write("report.html", lambda path: path.write_text(report.to_html(), encoding="utf-8"))
    output.finish()
    return result


# ------------------------------------------------------------------------------------------------------------
# summary and report


def _percent(value: float) -> str:
    return f"{100 * value:.1f}%"


def format_summary(result: DemoResult, elapsed: Optional[float] = None) -> str:
    """Return the one-screen text summary of a :class:`DemoResult` (lines of at most about 100 characters).

    Parameters
    ----------
    result : DemoResult
        The demo's result.
    elapsed : float, optional
        Seconds to report as the run time; default ``result.seconds``.
    """
    info, art, out = result.info, result.artifact, result.out_dir
    seconds = result.seconds if elapsed is None else elapsed
    name = repr(art.class_name)
    source = f"loaded from {info.cache_file}" if info.from_cache else \
        f"trained in {info.train_seconds:.0f} s, cached in {info.cache_file}"
    following = ", ".join(f"#{c} {r:+.2f}" for c, r in art.ranking[1:])
    classes = ", ".join(f"{n} {v:.3f}" for n, v in result.artifact_classes)
    lines = [
        f"crp demo: wrote {len(result.files)} files to {out} in {seconds:.0f} s",
        f"report    {result.report}",
        f"model     ShapesNet, {source}",
        f"accuracy  {_percent(info.validation_accuracy)} on held-out images drawn like the training images",
        f"          {_percent(info.test_accuracy)} on the test split (the mark on any shape): "
        f"{_percent(info.accuracy_without_artifact)} without the mark, {_percent(info.accuracy_with_artifact)} with it",
        f"shortcut  {_percent(info.shortcut_rate_with_artifact)} of the other shapes with the mark are called {name} "
        f"({_percent(info.shortcut_rate_without_artifact)} without it);",
        f"          the mark moves their {name} output from {art.logit_without_artifact:.2f} to "
        f"{art.logit_with_artifact:.2f}",
        f"heatmaps  {_percent(art.heatmap_on_patch)} of the positive relevance for {name} lies on the mark "
        f"({_percent(art.patch_area)} of the pixels)",
        f"artifact  {art.layer} #{art.channel} responds most to the mark: activation {art.response:+.2f} sd "
        f"(next: {following})",
        f"          it carries {_percent(art.patch_part)} of the {name} relevance on the mark;",
        f"          its share of all {name} relevance: {_percent(art.share_with_artifact)} with the mark, "
        f"{_percent(art.share_without_artifact)} without",
    ]
    if classes:
        lines.append(f"          its mean relevance per class: {classes}")
    lines.append(f"samples   top channels of {result.layer} by share of relevance; the mark channel's share")
    for rank, sample in enumerate(result.samples, start=1):
        mark = "+mark" if sample.has_artifact else "     "
        tops = ", ".join(f"#{c} {_percent(s)}" for c, s in zip(sample.concepts, sample.shares))
        lines.append(f"  {rank:2d} test #{sample.index:<4d} {sample.label:8s} {mark} -> {sample.prediction:8s} {tops}; "
                     f"#{art.channel} {_percent(sample.artifact_share)}")
    if result.flipping_auc:
        aucs = ", ".join(f"{order} {auc:.2f}" for order, auc in result.flipping_auc.items())
        lines.append(f"flipping  area under the logit curves: {aucs} (lowest for morf if faithful)")
    return "\n".join(lines)


def _summary_json(result: DemoResult) -> str:
    info = asdict(result.info)
    info["cache_file"] = str(info["cache_file"])
    payload: Dict[str, object] = {
        "layer": result.layer, "model": info, "artifact": asdict(result.artifact),
        "artifact_classes": result.artifact_classes, "samples": [asdict(s) for s in result.samples],
        "graph_nodes": result.graph_nodes, "flipping_auc": result.flipping_auc, "fv_reused": result.fv_reused,
        "fv_status": result.fv_status,
    }
    return json.dumps(payload, indent=1, default=float)


def _report(result: DemoResult, pictures: Dict[str, Any], explained: List[WrittenSample], graph: Tuple[Any, Any],
            flipping: Tuple[FlippingSummary, Any]) -> "Report":
    """Assemble the HTML report from the written pictures."""
    from crp.app.report import Report

    art, info = result.artifact, result.info
    report = Report("CRP demo: a shortcut found by concepts",
                    lead="Concept Relevance Propagation explains a small CNN trained on toy shapes whose training "
                         "images of 'cross' carry a magenta corner mark.")
    report.section("Summary")
    report.table(_summary_rows(result), css_class="summary")
    report.table(_sample_rows(result), header=["sample", "test image", "class", "mark", "predicted",
                                               f"top channels of {result.layer} (share of relevance)",
                                               f"mark channel #{art.channel}"])
    add_reading_guide(report)
    report.section("The model and its shortcut",
                   "The validation split is drawn like the training split, so the shortcut goes unnoticed there; "
                   "on the test split the mark is painted on any shape.")
    report.table([("validation accuracy", _percent(info.validation_accuracy)),
                  ("test accuracy", _percent(info.test_accuracy)),
                  ("test accuracy without / with the mark",
                   f"{_percent(info.accuracy_without_artifact)} / {_percent(info.accuracy_with_artifact)}"),
                  ("other shapes called 'cross' without / with the mark",
                   f"{_percent(info.shortcut_rate_without_artifact)} / {_percent(info.shortcut_rate_with_artifact)}")],
                 header=["measure", "value"])
    report.section(
        f"The concept that responds to the mark: {art.layer} #{art.channel}",
        f"Painting the mark on images of the other shapes raises this channel's activation by {art.response:.2f} "
        f"standard deviations, more than any other channel of {art.layer}. It carries {_percent(art.patch_part)} "
        f"of the relevance for {art.class_name!r} that lies on the mark. Its Activation Maximization references "
        f"show what it detects; its Relevance Maximization references what it is used for; among the images of "
        f"one class, its references show whether it drives that class through the mark.",
    )
    marked, maps = pictures["artifact"]
    report.references(marked, maps, f"{art.layer} #{art.channel}, the channel that responds most to the mark: images "
                                    f"of other shapes with the mark, above the channel's relevance for "
                                    f"{art.class_name!r}")
    add_references_section(report, art.layer, art.channel, relmax=pictures["relmax"], actmax=pictures["actmax"],
                           stats_png=pictures["stats"], stats_refs=pictures["classes"])
    for rank, sample in enumerate(explained, start=1):
        add_sample_section(report, f"Sample {rank}: {sample.title}", sample)
    graph_result, graph_png = graph
    add_graph_section(report, graph_png, graph_result,
                      f"How the most relevant concept of sample 1 (test #{explained[0].index}) is built from the "
                      f"concepts of the layers below, with each lower concept's share of the relevance; each box "
                      f"shows the concept's top reference sample, dimmed outside its most relevant region.")
    add_flipping_section(report, flipping[1], flipping[0])
    report.section("Files", f"Written to {result.out_dir}; FeatureVisualization results in "
                            f"{result.out_dir / FV_FOLDER} ({result.fv_status}).")
    names = sorted(set(result.files))
    report.table([(name,) for name in names], header=["file"], collapsed=f"{len(names)} files (click to show)")
    return report


def _summary_rows(result: DemoResult) -> List[Tuple[str, str]]:
    """Return the summary of :func:`format_summary` as (measure, value) rows, without the per-sample lines."""
    info, art = result.info, result.artifact
    name = repr(art.class_name)
    source = f"loaded from {info.cache_file}" if info.from_cache else \
        f"trained in {info.train_seconds:.0f} s, cached in {info.cache_file}"
    rows = [
        ("run", f"{len(result.files)} files written to {result.out_dir} in {result.seconds:.0f} s"),
        ("model", f"ShapesNet, {source}"),
        ("validation accuracy", f"{_percent(info.validation_accuracy)} (held-out images drawn like the training "
                                f"images)"),
        ("test accuracy", f"{_percent(info.test_accuracy)} (the mark on any shape): "
                          f"{_percent(info.accuracy_without_artifact)} without the mark, "
                          f"{_percent(info.accuracy_with_artifact)} with it"),
        ("shortcut", f"{_percent(info.shortcut_rate_with_artifact)} of the other shapes with the mark are called "
                     f"{name} ({_percent(info.shortcut_rate_without_artifact)} without it); the mark moves their "
                     f"{name} output from {art.logit_without_artifact:.2f} to {art.logit_with_artifact:.2f}"),
        ("heatmaps", f"{_percent(art.heatmap_on_patch)} of the positive relevance for {name} lies on the mark "
                     f"({_percent(art.patch_area)} of the pixels)"),
        ("mark channel", f"{art.layer} #{art.channel}: activation {art.response:+.2f} sd with the mark (next: "
                         f"{', '.join(f'#{c} {r:+.2f}' for c, r in art.ranking[1:])}); it carries "
                         f"{_percent(art.patch_part)} of the {name} relevance on the mark; its share of all {name} "
                         f"relevance: {_percent(art.share_with_artifact)} with the mark, "
                         f"{_percent(art.share_without_artifact)} without"),
    ]
    if result.artifact_classes:
        rows.append(("mark channel per class", ", ".join(f"{n} {v:.3f}" for n, v in result.artifact_classes)
                     + " (mean relevance)"))
    if result.flipping_auc:
        rows.append(("pixel flipping", ", ".join(f"{order} {auc:.2f}" for order, auc in result.flipping_auc.items())
                     + " (area under the logit curves; lowest for morf if faithful)"))
    return rows


def _sample_rows(result: DemoResult) -> List[Tuple[str, ...]]:
    """One row per explained test image: its class, mark, prediction, top channels and the mark channel's share."""
    return [(str(rank), f"#{s.index}", s.label, "yes" if s.has_artifact else "no", s.prediction,
             ", ".join(f"#{c} {_percent(v)}" for c, v in zip(s.concepts, s.shares)), _percent(s.artifact_share))
            for rank, s in enumerate(result.samples, start=1)]
