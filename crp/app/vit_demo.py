"""The transformer demo behind ``python -m crp demo --model vit``: find the shortcut neuron of a tiny ViT with CRP.

:func:`run_vit_demo` trains (or loads) the tiny vision transformer of :mod:`crp.app.shapes_vit` on
:class:`crp.app.shapes.ShapesDataset`, whose training split pairs a magenta corner mark with the class "cross",
and explains it with AttnLRP (Achtibat et al., ICML 2024) and CRP (Achtibat et al., Nature Machine Intelligence
2023) through :mod:`crp.transformers`:

- the **shortcut neuron**: the MLP neuron of the chosen block (default ``neurons.0``, the hidden neurons of the
  first block's MLP, one value per token) that carries the largest part of the relevance for "cross" at the
  token of the mark's patch, on test images of the other shapes painted with the mark; the same part is
  measured on other such images (held out from the search);
- the pixel heatmap of "cross" on these images, and the neuron's conditional heatmaps, at every token and at
  the mark's token only (:meth:`crp.transformers.TokenConcept.mask_rf`);
- its Relevance Maximization references over the test split (where about half of the images carry the mark), with
  :class:`crp.visualization.FeatureVisualization` and :class:`crp.transformers.PatchConcept` (a
  :class:`crp.transformers.TokenConcept` ranked at the patch tokens): the top (sample, patch token) pairs for
  the samples' own classes, drawn with the heatmap of the neuron at its token;
- ``report.html`` (a page of its own, self-contained), the PNG files and ``summary.json``.
"""
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, List, Optional, Tuple, Union

import numpy as np
import torch

from crp.app.concept_report import figure_saver, heatmap_image, input_image, png_saver, references_mosaic
from crp.app.output import OutputFolder, UserError
from crp.app.shapes import ShapesDataset
from crp.app.shapes_model import TrainInfo, torch_threads
from crp.app.shapes_vit import QUICK_VIT_SETTINGS, ViTSettings, mark_tokens, shapes_vit, train_vit_model
from crp.attribution import CondAttribution
from crp.transformers import AttnLRP, PatchConcept, TokenConcept, VisionFeatureVisualization, VisionModel
from crp.visualization import FeatureVisualization

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure
    from PIL.Image import Image

    from crp.app.report import Report

__all__ = ["run_vit_demo", "format_vit_summary", "find_shortcut_neuron", "ShortcutNeuron", "ViTDemoResult",
           "PatchConcept",
           "ViTDemoError", "DEFAULT_VIT_LAYER", "VIT_FV_FOLDER"]

logger = logging.getLogger(__name__)

#: The layer whose neurons are the concepts, unless another is chosen: the first block's MLP neurons.
DEFAULT_VIT_LAYER = "neurons.0"
#: Sub-folder of the FeatureVisualization results.
VIT_FV_FOLDER = "fv"
_SEARCH_IMAGES = 24  # marked images of the other classes the neuron is searched on (quick: 6); as many held out
_SHOWN = 6  # images in the figure of the shortcut neuron
_PNG_SIZE = 96

PathLike = Union[str, os.PathLike]


class ViTDemoError(UserError):
    """A user error (bad output folder or layer); its message names the fix."""


@dataclass
class ShortcutNeuron:
    """The neuron of ``layer`` that carries most of the relevance for ``class_name`` at the mark's token.

    Attributes
    ----------
    layer : str
        The layer searched (``neurons.<block>``).
    neuron : int
        The neuron with the largest relevance for ``class_name`` at ``tokens``, summed over the search images.
    tokens : list of int
        The token positions of the patches that hold the mark (token 0 is the class token).
    share : float
        Its part of the relevance of all neurons of ``layer`` at ``tokens`` (over their absolute sum), on the
        search images.
    ranking : list of (int, float)
        The three neurons with the largest parts, with their parts, best first.
    held_out_share : float
        Its part, measured likewise on as many other images (held out from the search).
    held_out_rank : int
        Its rank among all neurons on the held-out images (1: the largest part).
    patch_part : float
        Part of its positive conditional pixel relevance that lies on the mark's patches (search images).
    patch_area : float
        Part of the image those patches cover.
    activation_with_mark, activation_without_mark : float
        Its mean activation at ``tokens`` on the search images, and on the same images without the mark.
    heatmap_on_patch : float
        Part of the positive pixel relevance for ``class_name`` on the mark's patches (search images).
    images : int
        Number of search images (and of held-out images).
    class_name : str
        The class the mark goes with in training.
    """

    layer: str
    neuron: int
    tokens: List[int]
    share: float
    ranking: List[Tuple[int, float]]
    held_out_share: float
    held_out_rank: int
    patch_part: float
    patch_area: float
    activation_with_mark: float
    activation_without_mark: float
    heatmap_on_patch: float
    images: int
    class_name: str


@dataclass
class ViTDemoResult:
    """Everything :func:`run_vit_demo` computed; ``files`` are relative to ``out_dir``.

    ``references`` are the test-split indices of the shortcut neuron's Relevance Maximization references, best
    first, ``reference_tokens`` the token of each (its most relevant one), ``reference_marked`` whether each
    image carries the mark, ``shares`` the parts of every neuron of the layer at the mark's token on the
    search images (the ranking of :class:`ShortcutNeuron`), and ``test_marked`` the part of the test images that
    carry the mark.
    """

    out_dir: Path
    info: TrainInfo
    neuron: ShortcutNeuron
    references: List[int]
    reference_tokens: List[int]
    reference_marked: List[bool]
    shares: List[float] = field(default_factory=list)
    test_marked: float = float("nan")
    files: List[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def report(self) -> Path:
        """The HTML report."""
        return self.out_dir / "report.html"


# ------------------------------------------------------------------------------------------------------------
# the shortcut neuron


def _marked_images(settings: ViTSettings, count: int) -> Tuple[torch.Tensor, torch.Tensor, int]:
    """``2 * count`` test images of the other classes with the mark, the same images without it, the mark's class."""
    kwargs = {"n": settings.n_test, "seed": settings.seed}
    marked = ShapesDataset("test", artifact_rate=1.0, other_rate=1.0, **kwargs)
    clean = ShapesDataset("test", artifact_rate=0.0, other_rate=0.0, **kwargs)
    keep = torch.nonzero(marked.labels != marked.artifact_class)[:, 0][:2 * count]
    return marked.tensors()[0][keep], clean.tensors()[0][keep], marked.artifact_class


def _token_parts(relevance: torch.Tensor, tokens: List[int]) -> torch.Tensor:
    """Every neuron's part of the relevance at ``tokens`` ``(C,)``: summed over the rows, over the absolute sum."""
    at_mark = TokenConcept().per_token(relevance)[:, tokens].double().sum((0, 1))
    return at_mark / at_mark.abs().sum().clamp(min=1e-300)


def _patch_mask(tokens: List[int], patch_size: int, image_size: int) -> torch.Tensor:
    """Return the pixels ``(H, W)`` of the patches of ``tokens``."""
    mask = torch.zeros(image_size, image_size, dtype=torch.bool)
    per_row = image_size // patch_size
    for token in tokens:
        row, column = divmod(token - 1, per_row)
        mask[row * patch_size:(row + 1) * patch_size, column * patch_size:(column + 1) * patch_size] = True
    return mask


def _positive_part(heatmaps: torch.Tensor, mask: torch.Tensor) -> float:
    positive = heatmaps.clamp(min=0).double()
    total = float(positive.sum())
    return float(positive[..., mask].sum()) / total if total > 0 else float("nan")


def find_shortcut_neuron(
    attribution: CondAttribution, layer: str, settings: ViTSettings, *, images: int = _SEARCH_IMAGES,
) -> Tuple[ShortcutNeuron, torch.Tensor, torch.Tensor]:
    """Find the neuron of ``layer`` that carries most relevance for the mark's class at the mark's token.

    Parameters
    ----------
    attribution : crp.attribution.CondAttribution
        On a :class:`crp.transformers.VisionModel` of the shapes ViT.
    layer : str
        A layer with a token axis, ``(N, T, C)`` (e.g. ``neurons.0``).
    settings : crp.app.shapes_vit.ViTSettings
        The model's settings (patch size, test split).
    images : int
        Test images of the other classes with the mark to search on; as many more are held out.

    Returns
    -------
    finding : ShortcutNeuron
    shares : torch.Tensor
        ``(C,)``: every neuron's part at the mark's token on the search images.
    heatmaps : torch.Tensor
        ``(3, images, H, W)``: the pixel heatmap of the class, the neuron's conditional heatmap and that of the
        neuron at the mark's token only, on the search images.
    """
    marked, clean, target = _marked_images(settings, images)
    search, held_out = marked[:images], marked[images:]
    tokens = mark_tokens(settings.patch_size)
    y = attribution.MODEL_OUTPUT_NAME
    composite = AttnLRP()
    result = attribution(search.clone().requires_grad_(), [{y: [target]}], composite, record_layer=[layer])
    shares = _token_parts(result.relevances[layer], tokens)
    order = torch.argsort(shares, descending=True, stable=True)
    neuron = int(order[0])
    later = attribution(held_out.clone().requires_grad_(), [{y: [target]}], composite, record_layer=[layer])
    held = _token_parts(later.relevances[layer], tokens)
    without = attribution(clean[:images].clone().requires_grad_(), [{y: [target]}], composite, record_layer=[layer])
    concept = TokenConcept()
    conditional = attribution(search.clone().requires_grad_(), [{layer: [neuron], y: [target]}], composite,
                              mask_map=concept.mask).heatmap
    at_mark = attribution(search.clone().requires_grad_(), [{layer: {neuron: tokens}, y: [target]}], composite,
                          mask_map=concept.mask_rf).heatmap
    patch = _patch_mask(tokens, settings.patch_size, search.shape[-1])
    finding = ShortcutNeuron(
        layer, neuron, tokens, float(shares[neuron]), [(int(n), float(shares[n])) for n in order[:3]],
        float(held[neuron]), int((held > held[neuron]).sum()) + 1, _positive_part(conditional, patch),
        float(patch.double().mean()),
        float(result.activations[layer][:, tokens, neuron].mean()),
        float(without.activations[layer][:, tokens, neuron].mean()),
        _positive_part(result.heatmap, patch), images, ShapesDataset.class_names[target],
    )
    return finding, shares, torch.stack([result.heatmap, conditional, at_mark]).detach()


# ------------------------------------------------------------------------------------------------------------
# pictures


def _neuron_figure(images: torch.Tensor, heatmaps: torch.Tensor, finding: ShortcutNeuron) -> "Figure":
    """Four rows: marked images, the heatmap of the class, the neuron's heatmap, the neuron at the mark's token."""
    from matplotlib.figure import Figure

    count = min(len(images), _SHOWN)
    rows = ["image", f"{finding.class_name!r}", f"#{finding.neuron}", f"#{finding.neuron} at token "
            f"{','.join(map(str, finding.tokens))}"]
    figure = Figure(figsize=(1.5 * count + 1.2, 6.2))
    axes = figure.subplots(4, count, squeeze=False)
    for col in range(count):
        pictures = [input_image(images[col], _PNG_SIZE), *(heatmap_image(h[col], _PNG_SIZE) for h in heatmaps)]
        for row, picture in enumerate(pictures):
            axes[row, col].imshow(np.asarray(picture.convert("RGB")))
            axes[row, col].set_xticks([])
            axes[row, col].set_yticks([])
            if col == 0:
                axes[row, col].set_ylabel(rows[row], fontsize=8)
    figure.suptitle(f"{finding.layer} #{finding.neuron}: its relevance for {finding.class_name!r} on other shapes "
                    f"with the mark", fontsize=9)
    return figure


def _shares_figure(shares: torch.Tensor, finding: ShortcutNeuron) -> "Figure":
    """Draw a bar per neuron: its part of the relevance at the mark's token."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(8, 2.6))
    axis = figure.subplots()
    colours = ["tab:red" if n == finding.neuron else "tab:gray" for n in range(len(shares))]
    axis.bar(range(len(shares)), shares.numpy(), color=colours, width=0.9)
    axis.set_xlabel(f"neuron of {finding.layer}")
    axis.set_ylabel("part at the mark's token")
    axis.set_title(f"relevance for {finding.class_name!r} at the mark's token, {finding.images} images", fontsize=9)
    return figure


def _relmax(fv: FeatureVisualization, finding: ShortcutNeuron, count: int) -> Tuple[List[int], List[int], "Image"]:
    """Return the neuron's RelMax references: test indices, their tokens, a mosaic with the heatmaps at the token."""
    indices, _, tokens = fv.results.maximization(finding.layer, "relevance")
    count = min(count, len(indices))
    ids = [int(i) for i in indices[:count, finding.neuron]]
    at = [int(t) for t in tokens[:count, finding.neuron]]
    samples, heatmaps = fv.get_max_reference([finding.neuron], finding.layer, "relevance", (0, count), AttnLRP(),
                                             rf=True, plot_fn=None)[finding.neuron]
    mosaic = references_mosaic([input_image(s) for s in samples], [heatmap_image(h) for h in heatmaps], cell=64)
    return ids, at, mosaic


def _patch_mosaic(attribution: CondAttribution, test: ShapesDataset, folder: Path, finding: ShortcutNeuron,
                  count: int) -> "Image":
    """Return the RelMax references cropped to the patch of their token, with the neuron's heatmap there."""
    patches = VisionFeatureVisualization(attribution, test, {finding.layer: PatchConcept()}, path=folder,
                                         top_k=max(count, 8))
    crops, maps = patches.get_max_reference([finding.neuron], finding.layer, "relevance", (0, count), AttnLRP(),
                                            rf=True, plot_fn=None)[finding.neuron]
    return references_mosaic([input_image(c) for c in crops], [heatmap_image(h) for h in maps], cell=64)


# ------------------------------------------------------------------------------------------------------------
# the demo


def _check_layer(model: VisionModel, layer: str) -> None:
    allowed = model.layer_names("neurons")[:-1] + model.layer_names("residual")[:-1]
    if layer not in allowed:
        raise ViTDemoError(f"layer {layer!r} is not a layer of the shapes ViT whose tokens carry relevance; choose "
                           f"one of {', '.join(allowed)} (in the last block only the class token is explained).")


def run_vit_demo(
    out_dir: PathLike = "demo_vit_output", layer: str = DEFAULT_VIT_LAYER, *, quick: bool = False,
    cache_dir: Optional[PathLike] = None, progress: bool = True, force_train: bool = False,
    threads: Optional[int] = None, settings: Optional[ViTSettings] = None, references: int = 8,
) -> ViTDemoResult:
    """Train or load the shapes ViT, find its shortcut neuron with CRP and write a report.

    Writes into ``out_dir``: ``report.html`` (self-contained), ``summary.json``, ``shortcut_neuron.png``
    (marked images, the heatmap of "cross", the neuron's conditional heatmaps), ``neuron_shares.png`` (every
    neuron's part of the relevance at the mark's token), ``relmax.png`` (the neuron's RelMax references with its
    heatmap at their most relevant token), ``relmax_patches.png`` (the same cropped to that token's patch, by
    :class:`crp.transformers.VisionFeatureVisualization`), the FeatureVisualization results in ``fv/``, and a manifest.

    Parameters
    ----------
    out_dir : str or os.PathLike
        Output folder: new, empty, or written by an earlier run (whose files are replaced).
    layer : str
        The concept layer: ``neurons.0`` (the first block's MLP neurons) or the first block's output.
    quick : bool
        Train a tiny model (:data:`crp.app.shapes_vit.QUICK_VIT_SETTINGS`) on few images, for smoke tests; its
        results mean nothing.
    cache_dir : str or os.PathLike, optional
        Model cache folder; default ``$CRP_CACHE`` or ``~/.cache/crp``.
    progress : bool
        Show progress bars.
    force_train : bool
        Retrain the model even if the cache holds it.
    threads : int, optional
        torch threads for the whole run (restored afterwards); default :func:`crp.app.shapes_model.default_threads`.
    settings : ViTSettings, optional
        The model and its training; default :class:`~crp.app.shapes_vit.ViTSettings` (with ``quick``,
        :data:`~crp.app.shapes_vit.QUICK_VIT_SETTINGS`).
    references : int
        RelMax references shown.

    Returns
    -------
    ViTDemoResult

    Raises
    ------
    ViTDemoError
        If ``out_dir`` holds files the demo did not write or is a file, or ``layer`` is not a concept layer.
    """
    start = time.perf_counter()
    try:
        output = OutputFolder(out_dir, "crp demo --model vit").lock()
    except UserError as error:
        raise ViTDemoError(str(error)) from None
    vit_settings = settings if settings is not None else (QUICK_VIT_SETTINGS if quick else ViTSettings())
    with output, torch_threads(threads):
        _check_layer(VisionModel(shapes_vit(vit_settings)), layer)  # before any work
        model, info = train_vit_model(cache_dir, force_train, settings=vit_settings, progress=progress,
                                      threads=threads)
        adapter = VisionModel(model).eval()
        try:
            result = _explain(output, adapter, info, layer, quick=quick, progress=progress, references=references)
        except UserError as error:
            raise error if isinstance(error, ViTDemoError) else ViTDemoError(str(error)) from None
    result.seconds = time.perf_counter() - start
    return result


def _explain(output: OutputFolder, adapter: VisionModel, info: TrainInfo, layer: str, *, quick: bool,
             progress: bool, references: int) -> ViTDemoResult:
    settings: ViTSettings = info.settings  # type: ignore[assignment]
    attribution = CondAttribution(adapter)
    output.claim(folders=[VIT_FV_FOLDER])
    logger.info("searching the neuron of %s that carries the mark", layer)
    count = 6 if quick else _SEARCH_IMAGES
    finding, shares, heatmaps = find_shortcut_neuron(attribution, layer, settings, images=count)
    marked = _marked_images(settings, count)[0][:count]
    output.write("shortcut_neuron.png", figure_saver(_neuron_figure(marked, heatmaps, finding)))
    output.write("neuron_shares.png", figure_saver(_shares_figure(shares, finding)))
    test = ShapesDataset("test", n=settings.n_test, seed=settings.seed)
    folder = output.reset_folder(VIT_FV_FOLDER)
    fv = FeatureVisualization(attribution, test, {layer: PatchConcept()}, path=folder, top_k=max(references, 8))
    fv.run(AttnLRP(), 0, len(test), batch_size=64, verbose=progress)
    ids, tokens, mosaic = _relmax(fv, finding, references)
    output.write("relmax.png", png_saver(mosaic))
    output.write("relmax_patches.png", png_saver(_patch_mosaic(attribution, test, folder, finding, references)))
    result = ViTDemoResult(output.root, info, finding, ids, tokens, [bool(test.has_artifact[i]) for i in ids],
                           [float(s) for s in shares], float(test.has_artifact.double().mean()))
    output.write("summary.json", lambda path: path.write_text(_summary_json(result)))
    result.files = [*output.written, "report.html"]
    result.seconds = 0.0
    output.write("report.html", lambda path: path.write_text(_report(result).to_html(), encoding="utf-8"))
    output.finish()
    result.files = list(output.written)
    return result


# ------------------------------------------------------------------------------------------------------------
# summary and report


def _percent(value: float) -> str:
    return f"{100 * value:.1f}%"


def format_vit_summary(result: ViTDemoResult, elapsed: Optional[float] = None) -> str:
    """Return the one-screen text summary of a :class:`ViTDemoResult`.

    Parameters
    ----------
    result : ViTDemoResult
        The demo's result.
    elapsed : float, optional
        Seconds to report as the run time; default ``result.seconds``.
    """
    info, found = result.info, result.neuron
    settings: ViTSettings = info.settings  # type: ignore[assignment]
    seconds = result.seconds if elapsed is None else elapsed
    name = repr(found.class_name)
    source = f"loaded from {info.cache_file}" if info.from_cache else \
        f"trained in {info.train_seconds:.0f} s, cached in {info.cache_file}"
    following = ", ".join(f"#{n} {_percent(s)}" for n, s in found.ranking[1:])
    marked = sum(result.reference_marked)
    lines = [
        f"crp demo --model vit: wrote {len(result.files)} files to {result.out_dir} in {seconds:.0f} s",
        f"report    {result.report}",
        f"model     ViT ({settings.layers} blocks, {settings.patch_size}x{settings.patch_size} patches, "
        f"{settings.hidden} dims), {source}",
        f"accuracy  {_percent(info.validation_accuracy)} on held-out images drawn like the training images",
        f"          {_percent(info.test_accuracy)} on the test split (the mark on any shape): "
        f"{_percent(info.accuracy_without_artifact)} without the mark, {_percent(info.accuracy_with_artifact)} with it",
        f"shortcut  {_percent(info.shortcut_rate_with_artifact)} of the other shapes with the mark are called {name} "
        f"({_percent(info.shortcut_rate_without_artifact)} without it)",
        f"heatmaps  {_percent(found.heatmap_on_patch)} of the positive relevance for {name} lies on the mark's patch "
        f"({_percent(found.patch_area)} of the pixels)",
        f"neuron    {found.layer} #{found.neuron} carries {_percent(found.share)} of the {name} relevance at the "
        f"mark's token {found.tokens} (next: {following}),",
        f"          {_percent(found.held_out_share)} on {found.images} held-out images (rank {found.held_out_rank}); "
        f"{_percent(found.patch_part)} of its positive heatmap lies on the mark's patch",
        f"          its activation at the mark's token: {found.activation_with_mark:.2f} with the mark, "
        f"{found.activation_without_mark:.2f} without",
        f"relmax    {marked} of its top {len(result.references)} references carry the mark "
        f"({_percent(result.test_marked)} of the test images do); their tokens: {result.reference_tokens}",
    ]
    return "\n".join(lines)


def _summary_json(result: ViTDemoResult) -> str:
    info = asdict(result.info)
    info["cache_file"] = str(info["cache_file"])
    payload = {"model": info, "neuron": asdict(result.neuron), "shares": result.shares,
               "test_marked": result.test_marked,
               "references": result.references, "reference_tokens": result.reference_tokens,
               "reference_marked": result.reference_marked}
    return json.dumps(payload, indent=1, default=float)


def _report(result: ViTDemoResult) -> "Report":
    """Build the HTML report: a page of its own, with :class:`crp.app.report.Report`."""
    from crp.app.report import Report

    found, info, out = result.neuron, result.info, result.out_dir
    report = Report("CRP demo: the shortcut neuron of a vision transformer",
                    lead="AttnLRP and Concept Relevance Propagation explain a tiny ViT trained on toy shapes whose "
                         "training images of 'cross' carry a magenta corner mark.")
    report.section("Summary").preformatted(format_vit_summary(result))
    report.section("The model and its shortcut",
                   "The validation split is drawn like the training split; on the test split the mark is painted "
                   "on any shape.")
    report.table([("validation accuracy", _percent(info.validation_accuracy)),
                  ("test accuracy", _percent(info.test_accuracy)),
                  ("test accuracy without / with the mark",
                   f"{_percent(info.accuracy_without_artifact)} / {_percent(info.accuracy_with_artifact)}"),
                  ("other shapes called 'cross' without / with the mark",
                   f"{_percent(info.shortcut_rate_without_artifact)} / {_percent(info.shortcut_rate_with_artifact)}")],
                 header=["measure", "value"])
    report.section(
        f"The shortcut neuron: {found.layer} #{found.neuron}",
        f"On {found.images} test images of other shapes painted with the mark, this neuron carries "
        f"{_percent(found.share)} of the relevance for {found.class_name!r} that the neurons of {found.layer} hold "
        f"at the token of the mark's patch, more than any other neuron ({_percent(found.held_out_share)} on "
        f"{found.images} other images). Rows: the images, the pixel heatmap of {found.class_name!r}, the neuron's "
        f"conditional heatmap, and the neuron's conditional heatmap at the mark's token only.",
    )
    report.images([out / "shortcut_neuron.png", out / "neuron_shares.png"], wide=True)
    marked = sum(result.reference_marked)
    report.section(
        "Relevance Maximization",
        f"The {len(result.references)} test images ({_percent(result.test_marked)} of all test images carry the "
        f"mark) where the neuron is most relevant at an image patch for their own class, with its conditional "
        f"heatmap at that patch's token: {marked} carry the mark.",
    )
    report.images([out / "relmax.png"], wide=True)
    report.text("The same references cropped to the patch of their token (the patch is the receptive field of a "
                "token), with the neuron's heatmap there:")
    report.images([out / "relmax_patches.png"], wide=True)
    report.table([(i, t, "yes" if m else "no") for i, t, m in zip(result.references, result.reference_tokens,
                                                                    result.reference_marked)],
                 header=["test image", "token", "mark"])
    report.section("Files", f"Written to {out}; FeatureVisualization results in {out / VIT_FV_FOLDER}.")
    report.table([(name,) for name in sorted(set(result.files))], header=["file"])
    return report
