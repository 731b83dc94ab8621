"""The steps of a concept report, shared by ``python -m crp demo`` and ``python -m crp analyze``.

For a model, a zennit composite and a dataset, :class:`ConceptAnalysis` computes what a CRP report shows
(Achtibat et al., "From attribution maps to human-understandable explanations through Concept Relevance
Propagation", Nature Machine Intelligence 5, 2023):

- per sample, the LRP heatmap of the predicted class and the most relevant concepts (channels) of chosen
  layers with their conditional heatmaps (:meth:`ConceptAnalysis.explain`);
- the reference samples of concepts by Relevance and Activation Maximization, cropped to the receptive field
  of the concept's most relevant neuron, and the classes for which a concept is most relevant, with their own
  references (:meth:`ConceptAnalysis.feature_visualization`, :meth:`ConceptAnalysis.references`,
  :meth:`ConceptAnalysis.class_statistics`);
- the attribution graph of a concept (:meth:`ConceptAnalysis.attribution_graph`);
- pixel-flipping curves of the heatmaps, most relevant first, least relevant first and random
  (:meth:`ConceptAnalysis.pixel_flipping`).

The functions ``*_figure`` and ``*_mosaic`` draw these results; :func:`add_sample_section` and friends put
them into a :class:`crp.app.report.Report`. Images are shown as the dataset returns them; ``preprocess`` (e.g. a
normalization) is applied before the model.
"""
import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image

from crp._image.render import pad_to_common
from crp._utils.files import write_atomic
from crp.app.output import FV_FOLDER, fv_state
from crp.attribution import CondAttribution
from crp.concepts import ChannelConcept
from crp.image import imgify

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure
    from zennit.core import Composite

    from crp.app.output import OutputFolder
    from crp.app.report import Report
    from crp.attribution import attrGraphResult
    from crp.evaluation import FlippingResult
    from crp.visualization import FeatureVisualization

__all__ = [
    "ConceptAnalysis", "SampleExplanation", "LayerConcepts", "ClassStatistics", "FlippingSummary",
    "references_mosaic", "padded_references", "add_reading_guide", "REFERENCES_NOTE", "ReferencePictures",
    "overview_figure", "statistics_figure", "flipping_figure", "heatmap_image",
    "input_image", "region_size_for", "fingerprint", "figure_saver", "png_saver", "add_sample_section",
    "add_references_section", "add_graph_section", "add_flipping_section", "resumable_feature_visualization",
    "fv_state", "write_sample", "sample_files", "WrittenSample", "FV_FOLDER", "FLIP_ORDERS", "FV_COMPUTED",
    "FV_CONTINUED", "FV_REUSED",
]

#: Orders of the pixel-flipping curves.
FLIP_ORDERS = ("morf", "lrf", "random")
_CELL = 128  # longer side of one reference image in a mosaic, in pixels


@dataclass
class LayerConcepts:
    """The most relevant concepts of one layer for one sample.

    Attributes
    ----------
    layer : str
    concepts : list of int
        The ``ranked`` most relevant channels, most relevant first, then any extra channels asked for.
    shares : list of float
        Their part of the layer's relevance (``ChannelConcept.attribute`` with ``abs_norm=True``).
    heatmaps : torch.Tensor
        Their conditional heatmaps ``(len(concepts), H, W)`` for the predicted class.
    ranked : int
        How many of ``concepts`` are the top-k; the rest were asked for.
    """

    layer: str
    concepts: List[int]
    shares: List[float]
    heatmaps: torch.Tensor
    ranked: int = 0


@dataclass
class SampleExplanation:
    """The heatmap of one sample's prediction and its most relevant concepts per layer."""

    prediction: int
    heatmap: torch.Tensor
    layers: Dict[str, LayerConcepts]


@dataclass
class ClassStatistics:
    """For one concept, the classes for which it is most relevant (mean over their top reference samples)."""

    layer: str
    concept: int
    classes: List[int]
    values: List[float]
    references: Dict[int, Tuple[List[Image.Image], List[Image.Image]]] = field(default_factory=dict)


@dataclass
class FlippingSummary:
    """Pixel-flipping curves per order and their mean areas under the curve."""

    results: Dict[str, "FlippingResult"]
    samples: int
    region_size: int
    steps: int

    def mean_auc(self) -> Dict[str, float]:
        """Mean AUC per order."""
        return {order: float(np.mean(result.auc)) for order, result in self.results.items()}


class _Preprocessed(torch.nn.Module):
    """``model(preprocess(x))``: pixel flipping perturbs images as shown, the model sees them preprocessed."""

    def __init__(self, model: torch.nn.Module, preprocess: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.model, self.preprocess = model, preprocess
        self.train(model.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self.preprocess(x))


class ConceptAnalysis:
    """Compute the parts of a concept report for one model, composite and dataset.

    Parameters
    ----------
    model : torch.nn.Module
        The classifier, in eval mode, on ``device``.
    composite : callable
        Returns a fresh zennit composite (with the canonizers the model needs).
    dataset : torch.utils.data.Dataset
        Items ``(image, class)``; images as shown, ``(C, H, W)``.
    layers : sequence of str
        The concept layers (channels of conv layers, units of linear layers), in forward order.
    preprocess : callable, optional
        Applied to a batch of images before the model (e.g. a normalization).
    class_names : sequence of str, optional
        Names of the classes, for captions.
    device : torch.device or str, optional
        Where the model runs; default the CPU.
    """

    def __init__(self, model: torch.nn.Module, composite: Callable[[], "Composite"], dataset: Any, *,
                 layers: Sequence[str], preprocess: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
                 class_names: Optional[Sequence[str]] = None, device: Any = None) -> None:
        self.model, self.composite, self.dataset = model, composite, dataset
        self.layers = list(layers)
        self.preprocess = preprocess
        self.class_names = list(class_names) if class_names is not None else None
        self.device = torch.device(device if device is not None else "cpu")
        self.attribution = CondAttribution(model, device=self.device)
        self.fv: Optional["FeatureVisualization"] = None

    # ------------------------------------------------------------------------------------------------------
    # samples

    def class_name(self, label: int) -> str:
        """Return the name of class ``label`` (its number if there are no names)."""
        if self.class_names is not None and 0 <= label < len(self.class_names):
            return str(self.class_names[label])
        return f"class {label}"

    def model_input(self, images: torch.Tensor) -> torch.Tensor:
        """Images as shown ``(N, C, H, W)`` turned into the model's input on ``device`` (requiring gradients)."""
        x = images.to(self.device)
        if self.preprocess is not None:
            x = self.preprocess(x)
        return x.detach().requires_grad_(True)

    def predict(self, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
        """Predicted classes of images as shown."""
        with torch.no_grad():
            return torch.cat([self.model(self.model_input(images[i:i + batch_size]).detach()).argmax(1).cpu()
                              for i in range(0, len(images), batch_size)])

    def explain(self, image: torch.Tensor, layers: Sequence[str], top_k: int, target: Optional[int] = None,
                extra: Optional[Mapping[str, Sequence[int]]] = None) -> SampleExplanation:
        """Heatmap of the predicted class (or ``target``) and the top-k concepts of each layer with their heatmaps.

        ``extra`` names further concepts per layer to add after the top-k (unless they are among them).
        """
        x = self.model_input(image[None])
        if target is None:
            target = int(self.predict(image[None])[0])
        composite, output = self.composite(), self.attribution.MODEL_OUTPUT_NAME
        result = self.attribution(x, [{output: [target]}], composite, record_layer=list(layers))
        found = {}
        for layer in layers:
            shares = ChannelConcept().attribute(result.relevances[layer], abs_norm=True)[0]
            top = torch.topk(shares, min(top_k, len(shares))).indices.tolist()
            wanted = [int(c) for c in (extra or {}).get(layer, ()) if int(c) not in top]
            channels = top + list(dict.fromkeys(wanted))
            conditions = [{layer: [c], output: [target]} for c in channels]
            parts = self.attribution.generate(x, conditions, composite, batch_size=len(channels), verbose=False)
            heatmaps = torch.cat([part.heatmap for part in parts]).detach().cpu()
            found[layer] = LayerConcepts(layer, channels, shares[channels].tolist(), heatmaps, len(top))
        return SampleExplanation(target, result.heatmap[0].detach().cpu(), found)

    # ------------------------------------------------------------------------------------------------------
    # feature visualization

    def feature_visualization(self, path: Any, end: int, *, resume: bool = False, batch_size: int = 32,
                              workers: int = 0, checkpoint: int = 20, top_k: int = 16,
                              progress: bool = True) -> "FeatureVisualization":
        """Run RelMax and ActMax (with per-class statistics) over ``dataset[0:end]``, results in ``path``.

        With ``resume`` an interrupted run with the same configuration continues from its last checkpoint (a
        complete one returns at once). The results are kept for :meth:`references` and friends.
        """
        from crp.visualization import FeatureVisualization

        fv = FeatureVisualization(self.attribution, self.dataset, {layer: ChannelConcept() for layer in self.layers},
                                  preprocess_fn=self.preprocess, path=path, top_k=top_k)
        fv.run(self.composite(), 0, end, batch_size=batch_size, checkpoint=checkpoint, resume=resume,
               num_workers=workers, verbose=progress)
        self.fv = fv
        return fv

    def _fv(self) -> "FeatureVisualization":
        if self.fv is None:
            raise RuntimeError("call feature_visualization() first.")
        return self.fv

    def references(self, layer: str, concepts: Sequence[int], mode: str = "relevance",
                   count: int = 6) -> Dict[int, Tuple[List[Image.Image], List[Image.Image]]]:
        """Top ``count`` reference samples of concepts (RelMax or ActMax) and their conditional heatmaps.

        Both are cropped to the receptive field of the concept's most relevant (most active) neuron. RelMax
        heatmaps come from the full backward pass (``full_backward=True``: the concept's relevance for the
        sample's own class, propagated from the model output); ActMax heatmaps start at the concept's activation
        (what makes it fire, whatever the class).
        """
        from crp.image import vis_img_heatmap

        return self._fv().get_max_reference(list(concepts), layer, mode=mode, r_range=(0, count),
                                            composite=self.composite(), rf=True, plot_fn=vis_img_heatmap,
                                            full_backward=mode == "relevance", verbose=False)

    def class_statistics(self, layer: str, concept: int, classes: int = 3, count: int = 4) -> ClassStatistics:
        """Find the ``classes`` classes for which ``concept`` is most relevant, and its references within each.

        The references' heatmaps come from the full backward pass for their class (``full_backward=True``).
        """
        from crp.image import vis_img_heatmap

        fv = self._fv()
        found, values = fv.compute_stats(concept, layer, mode="relevance", top_N=classes, mean_N=10)
        targets = [int(t) for t in found]
        refs = fv.get_stats_reference(concept, layer, targets, mode="relevance", r_range=(0, count),
                                      composite=self.composite(), rf=True, plot_fn=vis_img_heatmap,
                                      full_backward=True, verbose=False) if targets else {}
        by_class = {int(key.rsplit(":", 1)[1]): value for key, value in refs.items()}
        return ClassStatistics(layer, int(concept), targets, [float(v) for v in values], by_class)

    # ------------------------------------------------------------------------------------------------------
    # attribution graph and faithfulness

    def attribution_graph(self, image: torch.Tensor, layer: str, concept: int, target: int,
                          width: Sequence[int] = (3, 2)) -> Tuple["attrGraphResult", Dict[Tuple[str, int], Any]]:
        """Decompose ``concept`` of ``layer`` for ``image`` and class ``target``; return it and a reference per node."""
        from crp.attribution import AttributionGraph
        from crp.graph import collect_reference_images, trace_model_graph
        from crp.image import vis_opaque_img

        x = self.model_input(image[None])
        graph = trace_model_graph(self.model, x.detach(), self.layers)
        layer_map = {name: ChannelConcept() for name in self.layers}
        result = AttributionGraph(self.attribution, graph, layer_map)(
            x, self.composite(), int(concept), layer, target=int(target), width=list(width), verbose=False)
        refs = {}
        if self.fv is not None:
            refs = collect_reference_images(self.fv, result, self.composite(), rf=True, plot_fn=vis_opaque_img,
                                            full_backward=True, verbose=False)
        return result, refs

    def pixel_flipping(self, images: torch.Tensor, steps: int = 32, region: Optional[int] = None, *,
                       perturbation: str = "inpainting", batch_size: Optional[int] = None,
                       progress: bool = False) -> FlippingSummary:
        """Flip regions of ``images`` in the order of their heatmaps (MoRF, LRF, random); track the predicted logit."""
        from crp.evaluation import PixelFlipping, compare_orders

        targets = self.predict(images)
        heatmaps = []
        for start in range(0, len(images), 32):
            x = self.model_input(images[start:start + 32])
            conditions = [{self.attribution.MODEL_OUTPUT_NAME: [int(t)]} for t in targets[start:start + 32]]
            heatmaps.append(self.attribution(x, conditions, self.composite()).heatmap.detach().cpu())
        region = region_size_for(images.shape[-2:]) if region is None else region
        metric = PixelFlipping(perturbation=perturbation, region_size=region, steps=steps, batch_size=batch_size,
                               verbose=progress)
        model = self.model if self.preprocess is None else _Preprocessed(self.model, self.preprocess)
        results = compare_orders(metric, model, images.to(self.device), torch.cat(heatmaps), targets,
                                 orders=FLIP_ORDERS)
        return FlippingSummary(results, len(images), region, steps)


def region_size_for(shape: Sequence[int], regions: int = 16) -> int:
    """Return the side of square regions that tile an image of ``shape`` ``(H, W)`` in about ``regions`` per side."""
    height, width = int(shape[0]), int(shape[1])
    common = math.gcd(height, width)
    wanted = max(1, min(height, width) // regions)
    return max(d for d in range(1, wanted + 1) if common % d == 0)


def fingerprint(*parts: Any, model: Optional[torch.nn.Module] = None) -> str:
    """Hash JSON-serializable ``parts`` and of the model's parameters and buffers (names, shapes, values)."""
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode())
    if model is not None:
        for name, tensor in model.state_dict().items():
            digest.update(name.encode())
            digest.update(str(tuple(tensor.shape)).encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:20]


# ----------------------------------------------------------------------------------------------------------
# pictures


def input_image(image: torch.Tensor, size: Optional[int] = None) -> Image.Image:
    """Draw an image as shown ``(C, H, W)``: values in [0, 1] are kept, others are min-max scaled."""
    image = image.detach().cpu().float()
    bounds = (0.0, 1.0) if float(image.min()) >= 0 and float(image.max()) <= 1 else (None, None)
    array = image[0] if image.shape[0] == 1 else image.permute(1, 2, 0)
    picture = imgify(array, vmin=bounds[0], vmax=bounds[1], cmap="gray")
    return _upscale(picture, size)


def heatmap_image(heatmap: torch.Tensor, size: Optional[int] = None) -> Image.Image:
    """Draw a heatmap ``(H, W)`` in blue (negative), white (zero) and red (positive)."""
    return _upscale(imgify(heatmap.detach().cpu(), cmap="bwr", symmetric=True), size)


def _upscale(picture: Image.Image, size: Optional[int]) -> Image.Image:
    """Scale the longer side up to ``size`` (nearest neighbours) if it is shorter."""
    if size is None or max(picture.size) >= size:
        return picture
    factor = size / max(picture.size)
    return picture.resize((max(1, round(picture.size[0] * factor)), max(1, round(picture.size[1] * factor))),
                          Image.Resampling.NEAREST)


def padded_references(images: Sequence[Image.Image],
                      heatmaps: Sequence[Image.Image]) -> Tuple[List[Image.Image], List[Image.Image]]:
    """Centre reference crops and their heatmaps on grey canvases of one size (the largest crop), never scaled."""
    padded = pad_to_common([*images, *heatmaps])
    return padded[:len(images)], padded[len(images):]


def references_mosaic(images: Sequence[Image.Image], heatmaps: Sequence[Image.Image], cell: int = _CELL,
                      gap: int = 3) -> Image.Image:
    """Two rows: reference images (receptive-field crops) above their conditional heatmaps.

    The crops are padded to one size (:func:`padded_references`) and scaled alike (nearest neighbours) so that
    the longer side of that size is ``cell`` pixels: one pixel of every crop has the same size in the mosaic.
    """
    images, heatmaps = padded_references(images, heatmaps)
    width, height = images[0].size if images else (cell, cell)
    factor = cell / max(width, height)
    size = (max(1, round(width * factor)), max(1, round(height * factor)))
    columns = max(1, len(images))
    mosaic = Image.new("RGB", (columns * (size[0] + gap) - gap, 2 * size[1] + gap), "white")
    for column, (picture, heat) in enumerate(zip(images, heatmaps)):
        mosaic.paste(picture.resize(size, Image.Resampling.NEAREST), (column * (size[0] + gap), 0))
        mosaic.paste(heat.resize(size, Image.Resampling.NEAREST), (column * (size[0] + gap), size[1] + gap))
    return mosaic


def overview_figure(image: torch.Tensor, explanation: SampleExplanation, layer: str, *, title: str,
                    highlight: Optional[int] = None, highlight_label: str = "") -> "Figure":
    """One row: the input, the heatmap of the prediction and the conditional heatmaps of the top concepts."""
    from matplotlib.figure import Figure

    found = explanation.layers[layer]
    panels = [(input_image(image, 128), "input"), (heatmap_image(explanation.heatmap, 128), "heatmap")]
    for concept, share, heat in zip(found.concepts, found.shares, found.heatmaps):
        mark = f" ({highlight_label})" if concept == highlight and highlight_label else ""
        panels.append((heatmap_image(heat, 128), f"{layer} #{concept}{mark}\n{100 * share:.1f}% of relevance"))
    figure = Figure(figsize=(1.9 * len(panels), 2.5))
    axes = figure.subplots(1, len(panels), squeeze=False)[0]
    for ax, (picture, label) in zip(axes, panels):
        ax.imshow(np.asarray(picture.convert("RGB")), interpolation="nearest")
        ax.set_title(label, fontsize=8)
        ax.set_axis_off()
    figure.suptitle(title, fontsize=9)
    return figure


def statistics_figure(stats: ClassStatistics, class_name: Callable[[int], str]) -> "Figure":
    """Bars: the mean relevance of the concept for its top classes (over their top reference samples)."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(4.2, 0.5 + 0.35 * max(1, len(stats.classes))))
    ax = figure.subplots()
    names = [class_name(c) for c in stats.classes]
    ax.barh(range(len(names)), stats.values, color="#c0392b")
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("mean relevance share of the top-10 samples", fontsize=8)
    ax.tick_params(axis="x", labelsize=7)
    ax.set_title(f"{stats.layer} #{stats.concept}: most relevant for", fontsize=9)
    figure.tight_layout()
    return figure


def flipping_figure(summary: FlippingSummary) -> "Figure":
    """Mean curves of the predicted logit while regions are flipped in each order, with one standard deviation."""
    from matplotlib.figure import Figure

    from crp.evaluation.plot import plot_curves

    figure = Figure(figsize=(5.2, 3.4))
    ax = figure.subplots()
    plot_curves(summary.results, spread="std", ax=ax)
    ax.set_title(f"pixel flipping: {summary.samples} images, {summary.region_size}x{summary.region_size} regions",
                 fontsize=9)
    figure.tight_layout()
    return figure


def figure_saver(figure: "Figure", dpi: int = 100) -> Callable[[Any], None]:
    """Return a ``save(path)`` that writes ``figure`` as PNG (for :class:`crp.app.output.OutputFolder`)."""
    return lambda path: figure.savefig(path, format="png", dpi=dpi, bbox_inches="tight")


def png_saver(picture: Image.Image) -> Callable[[Any], None]:
    """Return a ``save(path)`` that writes a PIL image as PNG."""
    return lambda path: picture.save(path, format="PNG")


# ----------------------------------------------------------------------------------------------------------
# writing into an output folder

#: What :func:`resumable_feature_visualization` did: searched from the start, continued an interrupted search
#: from its last checkpoint, or reused a complete one without computing anything.
FV_COMPUTED, FV_CONTINUED, FV_REUSED = "computed", "continued", "reused"


def resumable_feature_visualization(analysis: ConceptAnalysis, output: "OutputFolder", key: str, end: int,
                                    fresh: bool = False, **kwargs: Any) -> str:
    """Run :meth:`ConceptAnalysis.feature_visualization` in ``output``'s sub-folder :data:`FV_FOLDER`.

    The results of an earlier run in that folder are reused, and an interrupted run continues from its last
    checkpoint, if that run had the same ``key`` (a :func:`fingerprint` of the model, the data and the
    settings); otherwise, or with ``fresh``, the folder is emptied first. ``output.claim`` must have claimed
    the folder.

    Returns
    -------
    str
        :data:`FV_REUSED` if a complete search was reused (nothing computed), :data:`FV_CONTINUED` if an
        interrupted one was continued, :data:`FV_COMPUTED` if the search ran from the start.
    """
    state = output.path(f"{FV_FOLDER}/run.json")
    resume = not fresh and output.owns_folder(FV_FOLDER) and _read_key(state) == key
    if not resume:
        output.reset_folder(FV_FOLDER)
        text = json.dumps({"key": key})
        write_atomic(state, lambda path: path.write_text(text))
    store = output.path(f"{FV_FOLDER}/store")
    status = _store_status(store) if resume else FV_COMPUTED
    analysis.feature_visualization(store, end, resume=resume, **kwargs)
    return status


def _store_status(store: Path) -> str:
    """Whether resuming the search in ``store`` reuses a complete one, continues one, or starts (nothing saved)."""
    try:
        manifest = json.loads((store / "manifest.json").read_text())
    except (OSError, ValueError):
        return FV_COMPUTED
    if not isinstance(manifest, dict):
        return FV_COMPUTED
    return FV_REUSED if manifest.get("complete") is True else FV_CONTINUED


def _read_key(path: Path) -> Optional[str]:
    try:
        return json.loads(path.read_text()).get("key")
    except (OSError, ValueError, AttributeError):
        return None


@dataclass
class WrittenSample:
    """One explained sample and the files written for it (paths relative to the output folder)."""

    index: int
    label: int
    title: str
    explanation: SampleExplanation
    overviews: Dict[str, Path]
    references: Dict[str, Dict[int, Path]]
    files: List[str]
    #: Per layer, the pictures of the report's row: the input, the heatmap, the concept heatmaps, with captions.
    thumbnails: Dict[str, List[Tuple[Image.Image, str]]] = field(default_factory=dict)
    #: Per layer and concept, the reference crops and their heatmaps, padded to one size.
    reference_pictures: Dict[str, Dict[int, Tuple[List[Image.Image], List[Image.Image]]]] = field(
        default_factory=dict)


def sample_files(rank: int, layer: str, concepts: Sequence[int]) -> List[str]:
    """Names of the files of sample ``rank`` (from 0) for one layer: heatmaps, references, the overview."""
    folder = f"sample_{rank + 1}"
    return [*(f"{folder}/{layer}_concept_{c}.png" for c in concepts),
            *(f"{folder}/{layer}_references_{c}.png" for c in concepts), f"{folder}/{layer}_overview.png"]


def write_sample(output: "OutputFolder", analysis: ConceptAnalysis, image: torch.Tensor, *, label: int, index: int,
                 rank: int, layers: Sequence[str], top_k: int, references: int, title: str,
                 highlight: Optional[int] = None, highlight_label: str = "", size: int = 128) -> WrittenSample:
    """Explain ``image`` and write its pictures into ``sample_<rank + 1>/``.

    The pictures are the input, the heatmap, the concept heatmaps, their references and the overviews of
    ``image`` (item ``index``, class ``label``); ``highlight`` (a concept of the first layer) is shown even if
    it is not among the top-k, labelled ``highlight_label``.
    """
    extra = {layers[0]: [highlight]} if highlight is not None else None
    explanation = analysis.explain(image, layers, top_k, extra=extra)
    folder, first = f"sample_{rank + 1}", len(output.written)
    output.write(f"{folder}/input.png", png_saver(input_image(image, size)))
    output.write(f"{folder}/heatmap.png", png_saver(heatmap_image(explanation.heatmap, size)))
    overviews, mosaics, thumbnails, pictures = {}, {}, {}, {}
    for layer in layers:
        found = explanation.layers[layer]
        names = sample_files(rank, layer, found.concepts)
        count = len(found.concepts)
        for name, heat in zip(names[:count], found.heatmaps):
            output.write(name, png_saver(heatmap_image(heat, size)))
        refs = analysis.references(layer, found.concepts, "relevance", references) if analysis.fv else {}
        mosaics[layer] = {c: output.write(name, png_saver(references_mosaic(*refs[c])))
                          for name, c in zip(names[count:2 * count], found.concepts) if c in refs}
        pictures[layer] = {c: padded_references(*refs[c]) for c in found.concepts if c in refs}
        mark = highlight if layer == layers[0] else None
        thumbnails[layer] = _row_pictures(image, explanation, layer, analysis.class_name(explanation.prediction),
                                          highlight=mark, highlight_label=highlight_label)
        figure = overview_figure(image, explanation, layer, title=title, highlight=mark,
                                 highlight_label=highlight_label)
        overviews[layer] = output.write(names[-1], figure_saver(figure))
    return WrittenSample(int(index), int(label), title, explanation, overviews, mosaics, output.written[first:],
                         thumbnails, pictures)


def _row_pictures(image: torch.Tensor, explanation: SampleExplanation, layer: str, predicted: str, *,
                  highlight: Optional[int], highlight_label: str) -> List[Tuple[Image.Image, str]]:
    """Return the input, the heatmap of the prediction and the concept heatmaps of ``layer``, with captions."""
    found = explanation.layers[layer]
    row = [(input_image(image), "input"), (heatmap_image(explanation.heatmap), f"heatmap for {predicted!r}")]
    for concept, share, heat in zip(found.concepts, found.shares, found.heatmaps):
        mark = f" ({highlight_label})" if concept == highlight and highlight_label else ""
        row.append((heatmap_image(heat), f"{layer} #{concept}{mark}: {100 * share:.1f}% of the relevance"))
    return row


# ----------------------------------------------------------------------------------------------------------
# report sections


#: A reference row: the receptive-field crops and their heatmaps (padded to one size, see :func:`padded_references`).
ReferencePictures = Tuple[Sequence[Image.Image], Sequence[Image.Image]]

#: How the report's reference samples and their heatmaps are made (:func:`add_reading_guide`).
REFERENCES_NOTE = (
    "Reference samples are the images in which a concept is most relevant (Relevance Maximization, RelMax) or most "
    "active (Activation Maximization, ActMax), cropped to the receptive field of the concept's most relevant (most "
    "active) neuron; the crops of one concept are padded with grey to one size, so they are shown at one scale. "
    "Under each RelMax reference is its heatmap from the full backward pass (get_max_reference(..., "
    "full_backward=True)): the concept's relevance for the sample's own class, propagated from the model output "
    "through the concept down to the pixels. zennit-crp starts these heatmaps at the concept's activation in its "
    "layer instead, which ignores how the layers above use the concept: where that activation is negative (e.g. a "
    "convolution whose sign a batch normalization flips), a concept that is positively relevant for the class is "
    "drawn all blue. ActMax references start at the activation, as they show what makes the concept fire, "
    "whatever the class."
)


def add_reading_guide(report: "Report") -> None:
    """Add a section on how to read the pictures: the heatmaps' colour legend and how references are made."""
    report.section("How to read the pictures")
    report.legend()
    report.text(REFERENCES_NOTE)


def add_sample_section(report: "Report", heading: str, sample: WrittenSample, text: Optional[str] = None) -> None:
    """Add a sample: per layer its input, heatmap and concept heatmaps, and each top concept's RelMax references."""
    report.section(heading, text)
    for layer, row in sample.thumbnails.items():
        report.thumbnails([picture for picture, _ in row], [caption for _, caption in row])
        found = sample.explanation.layers[layer]
        for concept, share in zip(found.concepts, found.shares):
            pictures = sample.reference_pictures.get(layer, {}).get(concept)
            if pictures is not None:
                report.references(*pictures, f"{layer} #{concept} ({100 * share:.1f}% of the relevance): top "
                                             f"reference samples by relevance (RelMax), above their heatmaps from "
                                             f"the full backward pass")


def add_references_section(report: "Report", layer: str, concept: int, *, relmax: ReferencePictures,
                           actmax: ReferencePictures, stats_png: Any = None,
                           stats_refs: Sequence[Tuple[str, ReferencePictures]] = ()) -> None:
    """RelMax and ActMax references of one concept, and its per-class statistics with their references."""
    report.references(*relmax, f"{layer} #{concept}: Relevance Maximization, heatmaps from the full backward pass "
                               f"for each sample's class")
    report.references(*actmax, f"{layer} #{concept}: Activation Maximization, heatmaps from the concept's "
                               f"activation")
    if stats_png is not None:
        report.images([stats_png], [f"{layer} #{concept}: classes with the largest mean relevance"], wide=True)
    for caption, pictures in stats_refs:
        report.references(*pictures, f"{layer} #{concept}: {caption}, heatmaps from the full backward pass for "
                                     f"that class")


def add_graph_section(report: "Report", graph_png: Any, result: "attrGraphResult", text: str) -> None:
    """Add the attribution graph picture and a table of its edges."""
    report.section("Attribution graph", text)
    report.images([graph_png], wide=True)
    rows = [(f"{parent[0]} #{parent[1]}", f"{layer} #{concept}", f"{100 * share:.1f}%")
            for parent, edges in result.connections.items() for layer, concept, share in edges]
    report.table(rows, header=["concept", "lower concept", "relevance share"])


def add_flipping_section(report: "Report", curves_png: Any, summary: FlippingSummary) -> None:
    """Add the pixel-flipping curves and their mean areas under the curve."""
    report.section(
        "Faithfulness: pixel flipping",
        f"{summary.samples} images; {summary.region_size}x{summary.region_size} regions are replaced by inpainting "
        f"in {summary.steps} steps, in the order of the heatmap of the predicted class (most relevant first, least "
        f"relevant first) or at random, and the logit of that class is tracked. A faithful heatmap makes the "
        f"most-relevant-first curve fall fastest (lowest area under the curve) and the least-relevant-first curve "
        f"stay highest.",
    )
    report.images([curves_png], wide=True)
    report.table([(order, f"{auc:.3f}") for order, auc in summary.mean_auc().items()],
                 header=["order", "mean area under the curve"])
