"""Draw an attribution graph (a concept and the lower concepts that feed it) with matplotlib.

:func:`plot_attribution_graph` lays the result of :class:`crp.graph.AttributionGraph` out level by
level, the decomposed concept on top, and draws each concept as a box (optionally with a reference image,
e.g. from :func:`collect_reference_images` and a FeatureVisualization) and each edge with a width and label
given by its relevance share; no two labels overlap. It writes PNG, SVG or PDF without a system graphviz.
matplotlib is imported only when drawing.
"""
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from crp._utils.checks import check_positive_number
from crp._utils.files import write_atomic

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from crp._graph.attribution_graph import attrGraphResult

__all__ = ["plot_attribution_graph", "layout_attribution_graph", "collect_reference_images", "SAVE_FORMATS"]

Node = Tuple[str, int]
#: A reference image per node, or a callable ``(layer_name, concept_id) -> image or None``.
ReferenceImages = Union[Mapping[Node, Any], Callable[[str, int], Any]]
#: File suffixes :func:`plot_attribution_graph` can write.
SAVE_FORMATS = (".png", ".svg", ".pdf")

_CELL = 1.0  # side of a node box, in data units (inches in a figure of plot_attribution_graph's own)
_DX = 1.45  # least distance between neighbouring nodes
_BAND = 0.6  # least height of the band between two levels, where the edges run and their labels sit
_FONT = 7  # points, of node and edge labels
_LABEL_PAD = 0.15  # padding of the edge labels' boxes, in units of the font size
_GAP = 0.05  # least space between two labels (inches in a figure of its own)
_POSITIVE, _NEGATIVE = "#c0392b", "#2e6fba"
_TITLE_SPACE = 0.4  # inches above the axes for the title


@dataclass
class _Layout:
    """Where everything goes: node centres, edge ends, edge-label centres and sizes, the extent of the drawing."""

    positions: Dict[Node, Tuple[float, float]]
    edges: List[Tuple[Node, Tuple[str, int, float]]]
    tails: List[Tuple[float, float]]
    heads: List[Tuple[float, float]]
    labels: List[Tuple[float, float]]
    label_size: List[Tuple[float, float]]
    extent: Tuple[float, float, float, float]  # x0, x1, y0, y1 of all nodes and labels


def layout_attribution_graph(result: "attrGraphResult") -> Dict[Node, Tuple[float, float]]:
    """Place every node of an attribution graph: one row per level, the decomposed concept on top.

    The levels are the longest paths from the first node, so that every edge points down; the rows are centred
    around ``x = 0``. Neighbours are at least 1.45 apart (more where their labels are wider), and the bands
    between two levels are high enough that the labels of the edges crossing them do not overlap (see
    :func:`plot_attribution_graph`).

    Parameters
    ----------
    result : attrGraphResult
        ``(nodes, connections)`` from :class:`crp.graph.AttributionGraph`.

    Returns
    -------
    dict of (str, int) to (float, float)
        The centre of every node, in the units of :func:`plot_attribution_graph`'s figure (inches).
    """
    result = _check_result(result)
    return _layout(result, _default_format(_shares(result)), 1.0).positions


def plot_attribution_graph(
    result: "attrGraphResult", path: Optional[Union[str, os.PathLike]] = None, *,
    reference_images: Optional[ReferenceImages] = None, ax: Optional["Axes"] = None, title: Optional[str] = None,
    share_format: Optional[str] = None, dpi: int = 150,
) -> "Figure":
    """Draw an attribution graph and optionally save it.

    The layout (:func:`layout_attribution_graph`) leaves room for every label: neighbours are spaced by their
    labels' width, and each edge label takes a free row of the band between two levels, as close to the middle
    of its edge as it can (a band gets more rows where needed), so no two labels overlap. Drawn into given
    ``ax`` smaller than the graph's own figure, the labels shrink with the graph.

    Parameters
    ----------
    result : attrGraphResult
        ``(nodes, connections)`` from :class:`crp.graph.AttributionGraph`.
    path : str or path-like, optional
        Write the figure there (atomically); the suffix picks the format: ``.png``, ``.svg`` or ``.pdf``.
    reference_images : dict or callable, optional
        An image per node ``(layer_name, concept_id)``, e.g. from :func:`collect_reference_images`: a PIL
        image, an array or tensor of shape ``(H, W)``, ``(H, W, C)`` or ``(C, H, W)``, or a list of them (the
        first is drawn). Nodes without one show their concept id.
    ax : matplotlib.axes.Axes, optional
        Draw into these axes instead of a new figure.
    title : str, optional
        Axes title.
    share_format : str, optional
        Format of the edge labels, e.g. ``"{:.1%}"``; by default percent when all shares lie in [-1, 1]
        (``abs_norm=True``) and ``"{:.3g}"`` otherwise.
    dpi : int
        Resolution of a saved PNG.

    Returns
    -------
    matplotlib.figure.Figure
        The figure drawn into.
    """
    result = _check_result(result)
    if path is not None:
        path = _check_path(path)
        _check_dpi(dpi)
    share_format = share_format or _default_format(_shares(result))
    if ax is None:
        layout, scale = _layout(result, share_format, 1.0), 1.0
        fig, ax = _own_axes(layout.extent)
    else:
        fig, (layout, scale) = ax.figure, _fit_to_axes(ax, result, share_format)
    largest = max((abs(edge[2]) for _, edge in layout.edges), default=0.0) or 1.0
    for (_, edge), tail, head, label in zip(layout.edges, layout.tails, layout.heads, layout.labels):
        _draw_edge(ax, tail, head, label, share=edge[2], largest=largest, share_format=share_format,
                   fontsize=_FONT * scale)
    for node, (x, y) in layout.positions.items():
        _draw_node(ax, node, x, y, _reference_for(reference_images, node), fontsize=_FONT * scale)
    _frame(ax, layout.extent, title)
    if path is not None:
        _save_atomic(fig, path, dpi)
    return fig


def collect_reference_images(
    fv: Any, result: "attrGraphResult", composite: Any = None, *, mode: str = "relevance",
    r_range: Tuple[int, int] = (0, 1), rf: bool = False, **kwargs: Any,
) -> Dict[Node, Any]:
    """Fetch the reference images of every node of an attribution graph from a FeatureVisualization.

    Parameters
    ----------
    fv : crp.visualization.FeatureVisualization
        Anything with ``get_max_reference(concept_ids, layer_name, mode=, r_range=, composite=, rf=, ...)``
        returning ``{concept_id: images}``.
    result : attrGraphResult
        The graph whose nodes need images.
    composite, mode, r_range, rf, **kwargs
        Passed to ``get_max_reference`` (one call per layer); ``r_range=(0, 1)`` fetches the top reference and
        ``rf=True`` crops it to the receptive field of the most relevant neuron.

    Returns
    -------
    dict of (str, int) to images
        For :func:`plot_attribution_graph`'s ``reference_images``.
    """
    result = _check_result(result)
    by_layer: Dict[str, List[int]] = {}
    for layer, concept in result.nodes:
        by_layer.setdefault(layer, []).append(int(concept))
    images = {}
    for layer, concepts in by_layer.items():
        refs = fv.get_max_reference(concepts, layer, mode=mode, r_range=r_range, composite=composite, rf=rf, **kwargs)
        images.update({(layer, c): refs[c] for c in concepts if c in refs})
    return images


# ----------------------------------------------------------------------------------------------------------------
# layout


def _levels(result: "attrGraphResult") -> List[List[Node]]:
    """Nodes by their longest path from the first node, so that every edge points down.

    Nodes not reached go to the last level. A cycle (not possible in a model's graph) stops the depths at the
    number of nodes.
    """
    nodes = list(dict.fromkeys(tuple(n) for n in result.nodes))
    depth = {nodes[0]: 0}
    for _ in range(len(nodes)):
        changed = False
        for parent, outgoing in result.connections.items():
            start = depth.get(tuple(parent))
            if start is None:
                continue
            for layer, concept, _ in outgoing:
                if depth.get((layer, concept), -1) < start + 1 < len(nodes):
                    depth[(layer, concept)] = start + 1
                    changed = True
        if not changed:
            break
    last = max(depth.values()) + 1
    levels: Dict[int, List[Node]] = {}
    for node in nodes:
        levels.setdefault(depth.get(node, last), []).append(node)
    return [levels[d] for d in sorted(levels)]


def _layout(result: "attrGraphResult", share_format: str, unit: float) -> _Layout:
    """Lay out nodes and edge labels for labels drawn at :data:`_FONT` points, ``unit`` inches per data unit.

    The edge labels sit in rows of the bands between levels. Each label takes the free row closest to the middle
    of its edge; where none is free, the band gets one more row and everything is placed again. A band with as
    many rows as edges crossing it always has a free row, so the labels never overlap.
    """
    levels = _levels(result)
    level_of = {node: k for k, row in enumerate(levels) for node in row}
    edges = [(tuple(parent), edge) for parent, outgoing in result.connections.items() for edge in outgoing]
    for parent, (layer, concept, _) in edges:
        if (layer, concept) not in level_of or parent not in level_of:
            raise ValueError(f"result has an edge {parent} -> {(layer, concept)} to a node that is not in "
                             f"result.nodes; list every node of the connections in nodes.")
    measure = _TextMeasure(unit)
    node_w, node_h = map(max, zip(*(measure(f"{layer}\n#{concept}") for layer, concept in level_of)))
    pad = 2 * _LABEL_PAD * _FONT / 72 / unit
    sizes = [(w + pad, h + pad) for w, h in (measure(share_format.format(edge[2])) for _, edge in edges)]
    dx = max(_DX, node_w + 2 * _GAP, max((w for w, _ in sizes), default=0.0) + 2 * _GAP)
    pitch = max((h for _, h in sizes), default=0.0) + _GAP
    crossing = [sum(level_of[p] <= k < level_of[(e[0], e[1])] for p, e in edges) for k in range(len(levels))]
    rows = [min(count, max(1, int((_BAND - 2 * _GAP) // pitch))) for count in crossing]
    positions: Dict[Node, Tuple[float, float]] = {}
    while True:
        tops, tails, bands = _level_heights(levels, rows, pitch, 0.08 + node_h)
        for depth, row in enumerate(levels):
            for k, node in enumerate(row):
                positions[node] = ((k - (len(row) - 1) / 2) * dx, tops[depth] - _CELL / 2)
        ends = [((positions[p][0], tails[level_of[p]]), (positions[(e[0], e[1])][0], tops[level_of[(e[0], e[1])]]
                                                         + 0.06)) for p, e in edges]
        placed, full = _place_labels(ends, [(level_of[p], level_of[(e[0], e[1])]) for p, e in edges], sizes, bands)
        if full is None:
            break
        rows[full] += 1
    return _Layout(positions, edges, [tail for tail, _ in ends], [head for _, head in ends], placed, sizes,
                   _extent(positions, placed, sizes, node_w, 0.08 + node_h))


def _level_heights(levels: List[List[Node]], rows: List[int], pitch: float, drop: float):
    """Return the top of every level's boxes, the y where its edges start, and the label rows of every band."""
    tops, tails, bands = [_CELL / 2], [], []
    for depth in range(len(levels)):
        tails.append(tops[depth] - _CELL - drop - 0.03)
        height = max(_BAND, rows[depth] * pitch + 2 * _GAP)
        step = (height - 2 * _GAP) / max(rows[depth], 1)
        bands.append([tails[depth] - _GAP - (r + 0.5) * step for r in range(rows[depth])])
        tops.append(tails[depth] - height - 0.06)
    return tops, tails, bands


def _place_labels(ends, spans, sizes, bands) -> Tuple[List[Tuple[float, float]], Optional[int]]:
    """Centre of every edge label, or the band that lacked a free row for one of them."""
    placed: List[Tuple[float, float]] = []
    for ((x0, y0), (x1, y1)), (first, last), (w, h) in zip(ends, spans, sizes):
        if last <= first:  # an edge that does not point down (only in a cycle): its middle
            placed.append(((x0 + x1) / 2, (y0 + y1) / 2))
            continue
        candidates = []
        for band, y in ((k, y) for k in range(first, last) for y in bands[k]):
            t = (y0 - y) / (y0 - y1)
            candidates.append((abs(t - 0.5), band, x0 + t * (x1 - x0), y))
        free = [(x, y) for _, _, x, y in sorted(candidates) if not any(
            _overlap((x, y, w, h), (px, py, *size)) for (px, py), size in zip(placed, sizes))]
        if not free:
            return placed, min(range(first, last), key=lambda k: len(bands[k]))
        placed.append(free[0])
    return placed, None


def _overlap(a: Tuple[float, float, float, float], b: Tuple[float, float, float, float]) -> bool:
    """Whether two boxes ``(x, y, width, height)`` (centred) come closer than :data:`_GAP`."""
    return abs(a[0] - b[0]) < (a[2] + b[2]) / 2 + _GAP and abs(a[1] - b[1]) < (a[3] + b[3]) / 2 + _GAP


def _extent(positions, labels, sizes, node_w: float, drop: float) -> Tuple[float, float, float, float]:
    """x0, x1, y0, y1 holding every box, node label and edge label, with a margin."""
    half = max(_CELL, node_w) / 2 + 0.1
    xs = [x - half for x, _ in positions.values()] + [x + half for x, _ in positions.values()]
    xs += [x + sign * w / 2 for (x, _), (w, _) in zip(labels, sizes) for sign in (-1, 1)]
    ys = [y - _CELL / 2 - drop for _, y in positions.values()] + [y + _CELL / 2 for _, y in positions.values()]
    return min(xs) - 0.1, max(xs) + 0.1, min(ys) - 0.1, max(ys) + 0.15


class _TextMeasure:
    """Size of a label at :data:`_FONT` points in data units of ``unit`` inches, from matplotlib's Agg renderer."""

    def __init__(self, unit: float) -> None:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        self.unit, self.figure = unit, Figure(dpi=72)
        self.renderer = FigureCanvasAgg(self.figure).get_renderer()

    def __call__(self, text: str) -> Tuple[float, float]:
        artist = self.figure.text(0, 0, text, fontsize=_FONT, ha="center", va="center")
        box = artist.get_window_extent(renderer=self.renderer)
        artist.remove()
        return float(box.width) / 72 / self.unit, float(box.height) / 72 / self.unit


def _check_result(result: Any) -> "attrGraphResult":
    """Return ``result`` as an attrGraphResult; a plain ``(nodes, connections)`` pair is accepted too."""
    from crp._graph.attribution_graph import attrGraphResult

    if not (hasattr(result, "nodes") and hasattr(result, "connections")):
        if not (isinstance(result, (tuple, list)) and len(result) == 2 and isinstance(result[1], Mapping)):
            raise TypeError(f"result must be AttributionGraph's result or a (nodes, connections) pair of a list "
                            f"and a dict, got {type(result).__name__}.")
        result = attrGraphResult(list(result[0]), result[1])
    if len(result.nodes) == 0:
        raise ValueError("result has no nodes; decompose a concept with AttributionGraph first.")
    return result


def _check_path(path: Union[str, os.PathLike]) -> Path:
    path = Path(path)
    if path.suffix.lower() not in SAVE_FORMATS:
        raise ValueError(f"path must end in one of {SAVE_FORMATS} (the suffix picks the format), got {str(path)!r}.")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"the folder of path {str(path)!r} does not exist; create it first.")
    return path


def _shares(result: "attrGraphResult") -> List[float]:
    return [edge[2] for outgoing in result.connections.values() for edge in outgoing]


def _default_format(shares: Sequence[float]) -> str:
    return "{:.1%}" if all(-1.0 <= s <= 1.0 for s in shares) else "{:.3g}"


# ----------------------------------------------------------------------------------------------------------------
# drawing


def _own_axes(extent: Tuple[float, float, float, float]):
    """Return a figure of one inch per data unit holding ``extent``, with room for a title above, and its axes."""
    from matplotlib.figure import Figure

    width, height = extent[1] - extent[0], extent[3] - extent[2]
    fig = Figure(figsize=(width, height + _TITLE_SPACE))
    return fig, fig.add_axes((0.0, 0.0, 1.0, height / (height + _TITLE_SPACE)))


def _fit_to_axes(ax: "Axes", result: "attrGraphResult", share_format: str) -> Tuple[_Layout, float]:
    """Lay the graph out as for a figure of its own; return the layout and the factor its labels' font is scaled by.

    In axes smaller than that figure the labels shrink with everything else, so they still do not overlap.
    """
    layout = _layout(result, share_format, 1.0)
    _frame(ax, layout.extent, None)
    ax.apply_aspect()
    (x0, _), (x1, _) = ax.transData.transform([(0.0, 0.0), (1.0, 0.0)])
    inches = abs(x1 - x0) / ax.figure.dpi
    return layout, min(1.0, inches) if inches > 0 else 1.0


def _draw_node(ax: "Axes", node: Node, x: float, y: float, image: Any, *, fontsize: float) -> None:
    from matplotlib.patches import FancyBboxPatch

    half = _CELL / 2
    box = FancyBboxPatch((x - half, y - half), _CELL, _CELL, boxstyle="round,pad=0.04,rounding_size=0.08",
                         facecolor="#f4f4f4", edgecolor="#444444", linewidth=1.0, zorder=2)
    ax.add_patch(box)
    layer, concept = node
    if image is None:
        ax.text(x, y, f"{concept}", ha="center", va="center", fontsize=2 * fontsize, fontweight="bold",
                zorder=3)
    else:
        array = _as_image(image, node)
        left, right, bottom, top = _fit(array.shape[1], array.shape[0], x, y, _CELL * 0.92)
        cmap, limits = _colormap(array)
        ax.imshow(array, extent=(left, right, bottom, top), cmap=cmap, vmin=limits[0], vmax=limits[1],
                  interpolation="nearest", zorder=3)
    ax.text(x, y - half - 0.08, f"{layer}\n#{concept}", ha="center", va="top", fontsize=fontsize, zorder=3)


def _draw_edge(ax: "Axes", tail: Tuple[float, float], head: Tuple[float, float], label: Tuple[float, float], *,
               share: float, largest: float, share_format: str, fontsize: float) -> None:
    color = _POSITIVE if share >= 0 else _NEGATIVE
    ax.annotate("", xy=head, xytext=tail, zorder=1, arrowprops=dict(
        arrowstyle="-|>", color=color, linewidth=0.6 + 3.4 * abs(share) / largest, shrinkA=0, shrinkB=0))
    ax.text(label[0], label[1], share_format.format(share), ha="center", va="center", fontsize=fontsize, color=color,
            zorder=4, bbox=dict(boxstyle=f"round,pad={_LABEL_PAD}", facecolor="white", edgecolor="none", alpha=0.85))


def _frame(ax: "Axes", extent: Tuple[float, float, float, float], title: Optional[str]) -> None:
    ax.set_xlim(extent[0], extent[1])
    ax.set_ylim(extent[2], extent[3])
    ax.set_aspect("equal")
    ax.axis("off")
    if title:
        ax.set_title(title)


def _fit(width: int, height: int, x: float, y: float, side: float) -> Tuple[float, float, float, float]:
    """Extent of an image of ``width`` x ``height`` pixels centred at (x, y) inside a square of ``side``."""
    scale = side / max(width, height)
    w, h = width * scale / 2, height * scale / 2
    return x - w, x + w, y - h, y + h


def _reference_for(reference_images: Optional[ReferenceImages], node: Node) -> Any:
    if reference_images is None:
        return None
    if callable(reference_images) and not isinstance(reference_images, Mapping):
        return reference_images(*node)
    return reference_images.get(node)


def _as_image(value: Any, node: Node) -> np.ndarray:
    """Turn a PIL image, array, tensor or (nested) list of them into an ``(H, W)`` or ``(H, W, C)`` array."""
    while isinstance(value, (list, tuple)) and len(value) > 0:
        value = value[0]
    if hasattr(value, "detach"):  # torch.Tensor
        value = value.detach().cpu().numpy()
    try:
        array = np.asarray(value)
    except Exception:  # noqa: BLE001 - any unconvertible object gets the same message
        array = None
    if array is None or array.dtype == object or array.ndim not in (2, 3):
        shape = getattr(array, "shape", None)
        raise TypeError(f"reference image of node {node} must be a PIL image, an array or tensor of shape (H, W), "
                        f"(H, W, C) or (C, H, W), or a list of them; got {type(value).__name__} of shape {shape}.")
    if array.ndim == 3 and array.shape[0] in (1, 3, 4) and array.shape[-1] not in (1, 3, 4):
        array = np.moveaxis(array, 0, -1)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim == 3 and np.issubdtype(array.dtype, np.floating):
        low, high = float(array.min()), float(array.max())
        if low < 0 or high > 1:
            array = (array - low) / (high - low or 1.0)
    return array


def _colormap(array: np.ndarray) -> Tuple[Optional[str], Tuple[Optional[float], Optional[float]]]:
    """Grey for single-channel images, a symmetric red-blue map for signed ones (heatmaps), none for colour."""
    if array.ndim == 3:
        return None, (None, None)
    low, high = float(array.min()), float(array.max())
    if low < 0:
        bound = max(-low, high) or 1.0
        return "bwr", (-bound, bound)
    return "gray", (low, high if high > low else low + 1)


def _check_dpi(dpi: Any) -> None:
    check_positive_number(dpi, name="dpi")


def _save_atomic(fig: "Figure", path: Path, dpi: int) -> None:
    write_atomic(path, lambda temp: fig.savefig(temp, format=path.suffix[1:].lower(), dpi=dpi, bbox_inches="tight"))
