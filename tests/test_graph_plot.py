"""Tests of crp.graph: layout, drawing, atomic saving and reference images for attribution graphs."""
import itertools
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from crp.attribution import attrGraphResult
from crp.graph import collect_reference_images, layout_attribution_graph, plot_attribution_graph

RESULT = attrGraphResult(
    nodes=[("fc", 3), ("conv2", 1), ("conv2", 4), ("skip", 0), ("conv1", 2), ("conv1", 5)],
    connections={
        ("fc", 3): [("conv2", 1, 0.5), ("conv2", 4, 0.25), ("skip", 0, -0.125)],
        ("conv2", 1): [("conv1", 2, 0.75), ("conv1", 5, 0.0625)],
        ("conv2", 4): [("conv1", 5, 0.5), ("conv1", 2, 0.25)],
    },
)


def _texts(fig):
    return [text.get_text() for ax in fig.axes for text in ax.texts]


def test_layout_is_one_row_per_level():
    positions = layout_attribution_graph(RESULT)
    assert positions[("fc", 3)] == (0.0, 0.0)
    level1 = [positions[n] for n in [("conv2", 1), ("conv2", 4), ("skip", 0)]]
    level2 = [positions[n] for n in [("conv1", 2), ("conv1", 5)]]
    assert [x for x, _ in level1] == [-1.45, 0.0, 1.45] and [x for x, _ in level2] == [-0.725, 0.725]
    (y1, *others1), (y2, other2) = [y for _, y in level1], [y for _, y in level2]
    assert others1 == [y1, y1] and other2 == y2
    # a box is 1 high; between levels there is the node labels' and the edges' band of at least 0.6
    assert y1 < -(1.0 + 0.6) and y2 - y1 == pytest.approx(y1)


def test_levels_are_longest_paths_so_every_edge_points_down():
    result = attrGraphResult([("a", 0), ("b", 0), ("c", 0), ("d", 0)],
                             {("a", 0): [("b", 0, 0.5), ("c", 0, 0.5)], ("c", 0): [("b", 0, 1.0)]})
    positions = layout_attribution_graph(result)
    ys = {node: y for node, (_, y) in positions.items()}
    assert ys[("a", 0)] > ys[("c", 0)] > ys[("b", 0)] > ys[("d", 0)]  # d is not reached: last level
    assert positions[("c", 0)][0] == positions[("b", 0)][0] == 0.0


def test_long_layer_names_widen_the_rows():
    long = "encoder.stages.3.blocks.11.conv"
    result = attrGraphResult([("out", 0), (long, 1), (long, 2)], {("out", 0): [(long, 1, 0.5), (long, 2, 0.5)]})
    (x1, _), (x2, _) = layout_attribution_graph(result)[(long, 1)], layout_attribution_graph(result)[(long, 2)]
    assert x2 - x1 > 1.45
    assert_no_label_overlaps(plot_attribution_graph(result))


def _dense_graph(children=3, grandchildren=4, name="model.layer3.0.conv1", seed=0):
    """A root, ``children`` nodes below it, each connected to all ``grandchildren`` below, and one skip edge."""
    rng = np.random.default_rng(seed)
    root, middle = ("model.layer4.1.conv2", 3), [(name, c) for c in range(children)]
    bottom = [("layer2", c) for c in range(grandchildren)]
    connections = {root: [(*node, float(rng.uniform(-0.5, 0.5))) for node in middle]}
    for node in middle:
        connections[node] = [(*child, float(rng.uniform(-0.5, 0.5))) for child in bottom]
    connections[root].append((*bottom[-1], 0.333))
    return attrGraphResult([root, *middle, *bottom], connections)


def _boxes(fig):
    """Display boxes of every text (with its background box) and of every node box, after drawing the figure."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    texts, patches = [], []
    for ax in fig.axes:
        for text in [*ax.texts, ax.title]:
            if text.get_text():
                patch = text.get_bbox_patch()
                box = (patch or text).get_window_extent(renderer)
                texts.append((text.get_text(), box))
        patches += [patch.get_window_extent(renderer) for patch in ax.patches]
    return texts, patches


def _intersect(a, b):
    return min(a.x1, b.x1) - max(a.x0, b.x0) > 0 and min(a.y1, b.y1) - max(a.y0, b.y0) > 0


def assert_no_label_overlaps(fig):
    texts, patches = _boxes(fig)
    assert len(texts) > 2
    for (text_a, a), (text_b, b) in itertools.combinations(texts, 2):
        assert not _intersect(a, b), f"labels {text_a!r} and {text_b!r} overlap: {a} and {b}"
    for text, box in texts:
        centre = ((box.x0 + box.x1) / 2, (box.y0 + box.y1) / 2)
        for patch in patches:
            if not patch.contains(*centre):  # a concept id drawn inside its own box
                assert not _intersect(box, patch), f"label {text!r} overlaps a node box"


@pytest.mark.parametrize("children, grandchildren, seed", [(3, 4, 0), (2, 2, 1), (5, 6, 2), (6, 3, 3), (4, 8, 4)])
def test_labels_never_overlap(children, grandchildren, seed):
    result = _dense_graph(children, grandchildren, seed=seed)
    fig = plot_attribution_graph(result, title="a title as long as a concept's description in a report")
    texts, _ = _boxes(fig)
    edges = sum(len(outgoing) for outgoing in result.connections.values())
    assert len(texts) == 1 + len(result.nodes) * 2 + edges  # title, node labels and ids, edge labels
    assert_no_label_overlaps(fig)


def test_labels_never_overlap_in_given_axes():
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4))
    plot_attribution_graph(_dense_graph(4, 5), ax=fig.add_subplot(1, 2, 1))
    plot_attribution_graph(RESULT, ax=fig.add_subplot(1, 2, 2))
    assert_no_label_overlaps(fig)


def test_drawing_labels_nodes_and_edges():
    fig = plot_attribution_graph(RESULT, title="fc #3")
    texts = _texts(fig)
    for node_label in ["fc\n#3", "conv2\n#1", "conv2\n#4", "skip\n#0", "conv1\n#2", "conv1\n#5"]:
        assert node_label in texts
    assert sorted(t for t in texts if t.endswith("%")) == sorted(
        ["50.0%", "25.0%", "-12.5%", "75.0%", "6.2%", "50.0%", "25.0%"])
    ax = fig.axes[0]
    assert ax.get_title() == "fc #3"
    arrows = [child for child in ax.get_children() if type(child).__name__ == "Annotation"]
    assert len(arrows) == 7
    widths = sorted(a.arrow_patch.get_linewidth() for a in arrows)
    assert widths[0] == pytest.approx(0.6 + 3.4 * 0.0625 / 0.75) and widths[-1] == pytest.approx(4.0)
    negative = [a for a in arrows if a.arrow_patch.get_edgecolor()[2] > 0.5]
    assert len(negative) == 1  # the blue edge to the skip concept


def test_raw_shares_use_a_number_format():
    result = attrGraphResult([("b", 0), ("a", 1)], {("b", 0): [("a", 1, 12.5)]})
    assert "12.5" in _texts(plot_attribution_graph(result))
    assert "1.250e+01" in _texts(plot_attribution_graph(result, share_format="{:.3e}"))


@pytest.mark.parametrize("suffix, magic", [(".png", b"\x89PNG"), (".svg", b"<?xml"), (".pdf", b"%PDF")])
def test_saves_atomically(tmp_path, suffix, magic):
    path = tmp_path / f"graph{suffix}"
    plot_attribution_graph(RESULT, path)
    assert path.read_bytes()[:len(magic)] == magic
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_svg_contains_the_labels(tmp_path):
    import matplotlib

    with matplotlib.rc_context({"svg.fonttype": "none"}):
        plot_attribution_graph(RESULT, tmp_path / "graph.svg")
    svg = (tmp_path / "graph.svg").read_text()
    assert "conv2" in svg and "#4" in svg and "75.0%" in svg


def test_reference_images_of_every_kind():
    rng = np.random.default_rng(0)
    images = {
        ("fc", 3): Image.fromarray((rng.random((8, 12, 3)) * 255).astype(np.uint8)),
        ("conv2", 1): torch.rand(3, 10, 10),  # (C, H, W) tensor
        ("conv2", 4): [torch.rand(1, 6, 6), torch.rand(1, 6, 6)],  # a list: the first is drawn
        ("skip", 0): rng.normal(size=(5, 5)),  # signed: a heatmap
        ("conv1", 2): (([rng.random((4, 4, 3)) * 3],), None),  # nested, outside [0, 1]
    }
    fig = plot_attribution_graph(RESULT, reference_images=images)
    ax = fig.axes[0]
    assert len(ax.images) == 5
    shapes = sorted(image.get_array().shape for image in ax.images)
    assert shapes == sorted([(8, 12, 3), (10, 10, 3), (6, 6), (5, 5), (4, 4, 3)])
    heatmap = next(image for image in ax.images if image.get_array().shape == (5, 5))
    assert heatmap.get_cmap().name == "bwr" and heatmap.get_clim()[0] == -heatmap.get_clim()[1]
    wide = next(image for image in ax.images if image.get_array().shape == (8, 12, 3))
    left, right, bottom, top = wide.get_extent()
    assert right - left == pytest.approx(0.92) and top - bottom == pytest.approx(0.92 * 8 / 12)
    assert "5" in _texts(fig)  # conv1 #5 has no image: its id is drawn instead


def test_reference_images_from_a_callable():
    calls = []

    def images(layer, concept):
        calls.append((layer, concept))
        return np.ones((3, 3)) if layer == "conv1" else None

    fig = plot_attribution_graph(RESULT, reference_images=images)
    assert calls == RESULT.nodes[:1] + [("conv2", 1), ("conv2", 4), ("skip", 0), ("conv1", 2), ("conv1", 5)]
    assert len(fig.axes[0].images) == 2


def test_draws_into_given_axes():
    from matplotlib.figure import Figure

    fig = Figure()
    ax = fig.add_subplot(1, 2, 2)
    assert plot_attribution_graph(RESULT, ax=ax) is fig
    assert len(ax.patches) == 6


class FakeVisualization:
    def __init__(self):
        self.calls = []

    def get_max_reference(self, concept_ids, layer_name, **kwargs):
        self.calls.append((list(concept_ids), layer_name, kwargs))
        return {c: [f"{layer_name}-{c}"] for c in concept_ids}


def test_collect_reference_images_asks_once_per_layer():
    fv = FakeVisualization()
    images = collect_reference_images(fv, RESULT, composite="comp", r_range=(0, 2), plot_fn=None)
    assert images == {node: [f"{node[0]}-{node[1]}"] for node in RESULT.nodes}
    assert [(ids, layer) for ids, layer, _ in fv.calls] == [
        ([3], "fc"), ([1, 4], "conv2"), ([0], "skip"), ([2, 5], "conv1")]
    assert fv.calls[0][2] == dict(mode="relevance", r_range=(0, 2), composite="comp", rf=False, plot_fn=None)


def test_bad_input(tmp_path):
    with pytest.raises(TypeError, match="result must be AttributionGraph's result or a \\(nodes, connections\\) pair"):
        plot_attribution_graph({"nodes": []})
    with pytest.raises(ValueError, match="result has no nodes"):
        plot_attribution_graph(attrGraphResult([], {}))
    with pytest.raises(ValueError, match=r"path must end in one of \('.png', '.svg', '.pdf'\).*graph.jpg"):
        plot_attribution_graph(RESULT, tmp_path / "graph.jpg")
    with pytest.raises(FileNotFoundError, match="does not exist; create it first"):
        plot_attribution_graph(RESULT, tmp_path / "missing" / "graph.png")
    with pytest.raises(ValueError, match="dpi must be a positive number, got 0"):
        plot_attribution_graph(RESULT, tmp_path / "graph.png", dpi=0)
    with pytest.raises(TypeError, match=r"reference image of node \('skip', 0\) must be a PIL image"):
        plot_attribution_graph(RESULT, reference_images={("skip", 0): "not an image"})
    with pytest.raises(TypeError, match=r"reference image of node \('fc', 3\).*shape \(2, 2, 2, 2\)"):
        plot_attribution_graph(RESULT, reference_images={("fc", 3): np.zeros((2, 2, 2, 2))})
    assert list(tmp_path.iterdir()) == []


def test_import_does_not_load_matplotlib():
    code = "import sys, crp.graph; print('matplotlib' in sys.modules)"
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root, check=True)
    assert out.stdout.strip() == "False"


def test_plain_pair_is_accepted():
    assert layout_attribution_graph((list(RESULT.nodes), dict(RESULT.connections))) == layout_attribution_graph(RESULT)
