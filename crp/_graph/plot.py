"""Draw an attribution graph (a concept and the lower concepts that feed it) with matplotlib.

:func:`plot_attribution_graph` lays the result of :class:`crp.graph.AttributionGraph` out level by
level, the decomposed concept on top, and draws each concept as a box (optionally with a reference image,
e.g. from :func:`collect_reference_images` and a FeatureVisualization) and each edge with a width and label
given by its relevance share. It writes PNG, SVG or PDF without a system graphviz. matplotlib is imported
only when drawing.
"""
import os
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

_CELL = 1.0  # side of a node box, in data units
_DX, _DY = 1.45, 2.1  # distance between neighbouring nodes and between levels
_POSITIVE, _NEGATIVE = "#c0392b", "#2e6fba"


def layout_attribution_graph(result: "attrGraphResult") -> Dict[Node, Tuple[float, float]]:
    """Place every node of an attribution graph: one row per level, the decomposed concept on top.

    Parameters
    ----------
    result : attrGraphResult
        ``(nodes, connections)`` from :class:`crp.graph.AttributionGraph`.

    Returns
    -------
    dict of (str, int) to (float, float)
        The centre of every node; level ``i`` lies at ``y = -i * 2.1``, its nodes centred around ``x = 0``,
        1.45 apart, in the order of ``result.nodes``.
    """
    levels = _levels(_check_result(result))
    positions = {}
    for depth, row in enumerate(levels):
        for k, node in enumerate(row):
            positions[node] = ((k - (len(row) - 1) / 2) * _DX, -depth * _DY)
    return positions


def plot_attribution_graph(
    result: "attrGraphResult", path: Optional[Union[str, os.PathLike]] = None, *,
    reference_images: Optional[ReferenceImages] = None, ax: Optional["Axes"] = None, title: Optional[str] = None,
    share_format: Optional[str] = None, dpi: int = 150,
) -> "Figure":
    """Draw an attribution graph and optionally save it.

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
    positions = layout_attribution_graph(result)
    edges = [(parent, edge) for parent, outgoing in result.connections.items() for edge in outgoing]
    share_format = share_format or _default_format([edge[2] for _, edge in edges])
    fig, ax = _axes(ax, positions)
    largest = max((abs(edge[2]) for _, edge in edges), default=0.0) or 1.0
    for parent, (layer, concept, share) in edges:
        _draw_edge(ax, positions[parent], positions[(layer, concept)], share=share, largest=largest,
                   share_format=share_format)
    for node, (x, y) in positions.items():
        _draw_node(ax, node, x, y, _reference_for(reference_images, node))
    _frame(ax, positions, title)
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
    """Nodes by breadth-first depth from the first node; nodes not reached go to the last level."""
    root = tuple(result.nodes[0])
    depth, frontier = {root: 0}, [root]
    while frontier:
        found = []
        for node in frontier:
            for layer, concept, _ in result.connections.get(node, ()):
                if (layer, concept) not in depth:
                    depth[(layer, concept)] = depth[node] + 1
                    found.append((layer, concept))
        frontier = found
    last = max(depth.values()) + 1
    levels: Dict[int, List[Node]] = {}
    for node in dict.fromkeys(tuple(n) for n in result.nodes):
        levels.setdefault(depth.get(node, last), []).append(node)
    return [levels[d] for d in sorted(levels)]


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


def _default_format(shares: Sequence[float]) -> str:
    return "{:.1%}" if all(-1.0 <= s <= 1.0 for s in shares) else "{:.3g}"


# ----------------------------------------------------------------------------------------------------------------
# drawing


def _axes(ax: Optional["Axes"], positions: Dict[Node, Tuple[float, float]]):
    if ax is not None:
        return ax.figure, ax
    from matplotlib.figure import Figure

    xs = [x for x, _ in positions.values()]
    ys = [y for _, y in positions.values()]
    width = max(4.0, (max(xs) - min(xs) + 2 * _DX) * 1.1)
    height = max(3.0, (max(ys) - min(ys) + _DY) * 1.1)
    fig = Figure(figsize=(width, height))
    return fig, fig.add_subplot()


def _draw_node(ax: "Axes", node: Node, x: float, y: float, image: Any) -> None:
    from matplotlib.patches import FancyBboxPatch

    half = _CELL / 2
    box = FancyBboxPatch((x - half, y - half), _CELL, _CELL, boxstyle="round,pad=0.04,rounding_size=0.08",
                         facecolor="#f4f4f4", edgecolor="#444444", linewidth=1.0, zorder=2)
    ax.add_patch(box)
    layer, concept = node
    if image is None:
        ax.text(x, y, f"{concept}", ha="center", va="center", fontsize=14, fontweight="bold", zorder=3)
    else:
        array = _as_image(image, node)
        left, right, bottom, top = _fit(array.shape[1], array.shape[0], x, y, _CELL * 0.92)
        cmap, limits = _colormap(array)
        ax.imshow(array, extent=(left, right, bottom, top), cmap=cmap, vmin=limits[0], vmax=limits[1],
                  interpolation="nearest", zorder=3)
    ax.text(x, y - half - 0.08, f"{layer}\n#{concept}", ha="center", va="top", fontsize=7, zorder=3)


def _draw_edge(ax: "Axes", start: Tuple[float, float], end: Tuple[float, float], *, share: float, largest: float,
               share_format: str) -> None:
    tail = (start[0], start[1] - _CELL / 2 - 0.42)  # below the parent's label
    head = (end[0], end[1] + _CELL / 2 + 0.06)
    color = _POSITIVE if share >= 0 else _NEGATIVE
    ax.annotate("", xy=head, xytext=tail, zorder=1, arrowprops=dict(
        arrowstyle="-|>", color=color, linewidth=0.6 + 3.4 * abs(share) / largest, shrinkA=0, shrinkB=0))
    mid = (tail[0] + 0.7 * (head[0] - tail[0]), tail[1] + 0.7 * (head[1] - tail[1]))
    ax.text(mid[0], mid[1], share_format.format(share), ha="center", va="center", fontsize=7, color=color,
            zorder=4, bbox=dict(boxstyle="round,pad=0.15", facecolor="white", edgecolor="none", alpha=0.85))


def _frame(ax: "Axes", positions: Dict[Node, Tuple[float, float]], title: Optional[str]) -> None:
    xs = [x for x, _ in positions.values()]
    ys = [y for _, y in positions.values()]
    ax.set_xlim(min(xs) - _DX / 2 - 0.2, max(xs) + _DX / 2 + 0.2)
    ax.set_ylim(min(ys) - _CELL / 2 - 0.6, max(ys) + _CELL / 2 + 0.2)
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
