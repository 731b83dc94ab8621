"""Tests of crp.app.concept_report: the steps of a concept report on small models, and its pictures."""
import numpy as np
import pytest
import torch
from PIL import Image
from zennit.composites import EpsilonPlusFlat

from crp._image.render import pad_to_common
from crp.app.concept_report import (
    ConceptAnalysis,
    _Preprocessed,
    fingerprint,
    heatmap_image,
    input_image,
    padded_references,
    references_mosaic,
    region_size_for,
    resumable_feature_visualization,
)
from crp.app.output import OutputFolder
from crp.app.shapes import ShapesDataset
from crp.app.shapes_model import ShapesNet
from crp.concepts import ChannelConcept

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def analysis():
    torch.manual_seed(0)
    model = ShapesNet().eval()
    data = ShapesDataset("test", n=24)
    return ConceptAnalysis(model, EpsilonPlusFlat, data, layers=["features.0", "features.3", "features.6"],
                           class_names=data.class_names)


def test_explain_matches_channel_relevances_and_conserves(analysis):
    image = analysis.dataset[2][0]
    explanation = analysis.explain(image, ["features.3"], 32)
    found = explanation.layers["features.3"]
    assert explanation.prediction == int(analysis.model(image[None]).argmax())
    assert sorted(found.concepts) == list(range(32)) and found.shares == sorted(found.shares, reverse=True)
    # the conditional heatmaps of all channels add up to the heatmap of the prediction
    heatmap = explanation.heatmap
    assert torch.allclose(found.heatmaps.sum(0), heatmap, atol=1e-6 * float(heatmap.abs().max()))
    # the shares are the abs-normalized channel relevances, computed here independently
    x = image[None].clone().requires_grad_(True)
    result = analysis.attribution(x, [{"y": [explanation.prediction]}], EpsilonPlusFlat(), record_layer=["features.3"])
    expected = ChannelConcept().attribute(result.relevances["features.3"])[0]
    assert torch.allclose(torch.tensor(found.shares), expected[found.concepts])
    # extra concepts come after the top-k, once, with the same heatmaps and shares
    last, first = found.concepts[-1], found.concepts[0]
    more = analysis.explain(image, ["features.3"], 2, extra={"features.3": [last, first, last]}).layers["features.3"]
    assert more.ranked == 2 and len(more.concepts) == 3 and more.concepts[2] == last  # ties may swap the top
    assert more.shares == pytest.approx(found.shares[:2] + found.shares[-1:])
    assert torch.allclose(more.heatmaps[2], found.heatmaps[-1], atol=1e-6 * float(heatmap.abs().max()))
    top = analysis.explain(image, ["features.3", "features.6"], 3, target=1)
    assert top.prediction == 1 and set(top.layers) == {"features.3", "features.6"}
    assert top.layers["features.3"].heatmaps.shape == (3, 32, 32)


def test_preprocessing_is_applied_before_the_model():
    torch.manual_seed(0)
    model = ShapesNet().eval()
    data = ShapesDataset("test", n=4)
    shift = ConceptAnalysis(model, EpsilonPlusFlat, data, layers=["features.6"], preprocess=lambda x: 2 * x - 1)
    images = data.tensors()[0]
    assert torch.equal(shift.predict(images), model(2 * images - 1).argmax(1))
    wrapped = _Preprocessed(model, lambda x: 2 * x - 1)
    assert not wrapped.training and torch.equal(wrapped(images), model(2 * images - 1))
    plain = ConceptAnalysis(model, EpsilonPlusFlat, data, layers=["features.6"])
    heat_shift = shift.explain(images[0], ["features.6"], 2, target=0).heatmap
    heat_plain = plain.explain(2 * images[0] - 1, ["features.6"], 2, target=0).heatmap
    assert torch.allclose(heat_shift, heat_plain)  # relevance of the preprocessed input, as the model sees it


def test_pixel_flipping_orders(analysis):
    images = analysis.dataset.tensors()[0][:4]
    summary = analysis.pixel_flipping(images, steps=4)
    assert set(summary.results) == {"morf", "lrf", "random"} and summary.region_size == 2 and summary.samples == 4
    morf = summary.results["morf"]
    assert morf.scores.shape == (4, 5) and morf.targets.tolist() == analysis.predict(images).tolist()
    # all orders start from the unperturbed logit of the predicted class
    logits = analysis.model(images).gather(1, analysis.predict(images)[:, None])[:, 0].detach().numpy()
    for result in summary.results.values():
        assert np.allclose(result.scores[:, 0], logits, atol=1e-5)
    assert summary.mean_auc() == {order: pytest.approx(float(r.auc.mean())) for order, r in summary.results.items()}


def test_attribution_graph_without_references(analysis):
    image = analysis.dataset[0][0]
    graph, refs = analysis.attribution_graph(image, "features.6", 3, 1, width=(2, 1))
    assert graph.nodes[0] == ("features.6", 3) and refs == {}
    assert [edge[0] for edge in graph.connections[("features.6", 3)]] == ["features.3", "features.3"]
    assert len(graph.nodes) == 1 + 2 + len({edge[:2] for node in graph.nodes[1:3]
                                            for edge in graph.connections[node]})


def test_references_and_statistics(analysis, tmp_path):
    output = OutputFolder(tmp_path / "out", "test")
    output.claim(folders=["fv"])
    key = fingerprint("k", model=analysis.model)
    assert resumable_feature_visualization(analysis, output, key, 24, top_k=4, batch_size=8,
                                           progress=False) == "computed"
    refs = analysis.references("features.6", [0, 5], "relevance", 3)
    assert set(refs) == {0, 5} and all(len(images) == len(heats) == 3 for images, heats in refs.values())
    indices, _, _ = analysis.fv.results.maximization("features.6", "activation")
    actmax = analysis.references("features.6", [5], "activation", 2)[5]
    assert len(actmax[0]) == 2 and indices.shape[0] == 4
    stats = analysis.class_statistics("features.6", 5, classes=2, count=2)
    assert len(stats.classes) == len(stats.values) <= 2 and stats.values == sorted(stats.values, reverse=True)
    assert set(stats.references) == set(stats.classes)
    graph, graph_refs = analysis.attribution_graph(analysis.dataset[0][0], "features.6", 3, 1, width=(1,))
    assert set(graph_refs) == set(graph.nodes)
    # the same key in a folder that an earlier run claimed: reused; another key: computed again
    output.finish()
    again = OutputFolder(tmp_path / "out", "test")
    again.claim(folders=["fv"])
    assert resumable_feature_visualization(analysis, again, key, 24, top_k=4, batch_size=8,
                                           progress=False) == "reused"
    assert resumable_feature_visualization(analysis, again, "other", 24, top_k=4, batch_size=8,
                                           progress=False) == "computed"


def test_region_size_for():
    assert region_size_for((32, 32)) == 2 and region_size_for((224, 224)) == 14
    assert region_size_for((100, 60)) == 2  # gcd 20, at most 60 // 16 = 3
    assert region_size_for((7, 7)) == 1 and region_size_for((64, 48), regions=4) == 8


def test_fingerprint_sees_weights_and_parts():
    torch.manual_seed(0)
    model = ShapesNet()
    key = fingerprint("a", [1, 2], model=model)
    assert key == fingerprint("a", [1, 2], model=model) and key != fingerprint("a", [1, 3], model=model)
    with torch.no_grad():
        model.features[0].bias[0] += 1e-3
    assert key != fingerprint("a", [1, 2], model=model) and len(key) == 20


def test_pictures():
    image = torch.zeros(3, 4, 4)
    image[0] = 1.0
    assert np.asarray(input_image(image)).tolist()[0][0] == [255, 0, 0]  # [0, 1] kept, not stretched
    assert input_image(image, 16).size == (16, 16)
    stretched = np.asarray(input_image(torch.full((1, 2, 2), 5.0).index_put_((torch.tensor([0]),) * 3,
                                                                              torch.tensor([-5.0]))))
    assert stretched.min() == 0 and stretched.max() == 255  # other ranges: min-max
    heat = np.asarray(heatmap_image(torch.tensor([[-1.0, 0.0], [0.0, 1.0]])).convert("RGB"))
    assert heat[1, 1, 0] > heat[1, 1, 2] and heat[0, 0, 2] > heat[0, 0, 0]  # red positive, blue negative
    red, blue = Image.new("RGB", (10, 5), "red"), Image.new("RGB", (5, 5), "blue")
    mosaic = references_mosaic([red, red], [blue, blue], cell=20, gap=2)
    # every crop is padded to the common 10 x 5 and scaled by the same factor 2: one row is 20 x 10 pixels
    assert mosaic.size == (2 * 20 + 2, 2 * 10 + 2)
    pixels = np.asarray(mosaic)
    assert (pixels[:10, :20] == [255, 0, 0]).all() and (pixels[:10, 22:] == [255, 0, 0]).all()  # not stretched
    assert (pixels[:, 20:22] == 255).all() and (pixels[10:12] == 255).all()  # the gaps
    heat = pixels[12:22, :20]  # the 5 x 5 blue square centred (columns 2..6 of 10) on grey, scaled by 2
    assert (heat[:, 4:14] == [0, 0, 255]).all()
    assert (heat[:, :4] == 224).all() and (heat[:, 14:] == 224).all()


def test_padded_references_keep_every_pixel_at_one_scale():
    wide, tall = Image.new("RGB", (6, 2), "red"), Image.new("L", (3, 5), 9)
    images, heatmaps = padded_references([wide], [tall])
    assert images[0].size == heatmaps[0].size == (6, 5)
    image, heat = np.asarray(images[0]), np.asarray(heatmaps[0])
    assert (image[1:3] == [255, 0, 0]).all() and (image[[0, 3, 4]] == 224).all()  # centred: rows 1-2 of 0..4
    assert (heat[:, 1:4] == 9).all() and (heat[:, [0, 4, 5]] == 224).all()  # columns 1-3 of 0..5
    cut = pad_to_common([Image.new("RGB", (7, 3), "red")], size=(3, 3), fill=(0, 255, 0))[0]
    assert cut.size == (3, 3) and (np.asarray(cut) == [255, 0, 0]).all()  # larger than the canvas: cut, not scaled
    with pytest.raises(TypeError, match="images must be a sequence of PIL images"):
        pad_to_common([np.zeros((2, 2))])


class _Flipped(torch.nn.Module):
    """conv (negative weights: negative activations) -> linear -I (flips the sign) -> ReLU -> linear (class 0 only).

    Channel 0 of "conv" is positively relevant for class 0, but its activation is negative everywhere.
    """

    def __init__(self, side=24):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 1, 3, padding=1, bias=False)
        self.flip = torch.nn.Linear(side * side, side * side, bias=False)
        self.out = torch.nn.Linear(side * side, 2, bias=False)
        with torch.no_grad():
            self.conv.weight.fill_(-0.1)
            self.flip.weight.copy_(-torch.eye(side * side))
            self.out.weight.zero_()
            self.out.weight[0] = 1.0

    def forward(self, x):
        return self.out(torch.relu(self.flip(self.conv(x).flatten(1))))


def test_relmax_heatmaps_come_from_the_full_backward_pass(tmp_path):
    torch.manual_seed(0)
    data = [(torch.rand(1, 24, 24), 0) for _ in range(4)]
    analysis = ConceptAnalysis(_Flipped().eval(), EpsilonPlusFlat, data, layers=["conv"])
    analysis.feature_visualization(tmp_path / "fv", len(data), top_k=2, progress=False)
    _, heatmaps = analysis.references("conv", [0], "relevance", 2)[0]
    for heatmap in heatmaps:  # red (positive relevance) on the neuron's receptive field, nothing blue
        red, _, blue = np.asarray(heatmap.convert("RGB")).astype(int).reshape(-1, 3).T
        assert (red - blue > 100).sum() >= 4 and (blue - red <= 2).all()  # white (zero) is (253, 253, 255)
    # zennit-crp's start at the activation gives the same concept negative heatmaps: its activation is negative
    raw = analysis.fv.get_max_reference([0], "conv", mode="relevance", r_range=(0, 2), composite=EpsilonPlusFlat(),
                                        rf=True, plot_fn=None)[0][1]
    assert len(raw) == 2 and all((heatmap <= 0).all() and (heatmap < 0).sum() >= 4 for heatmap in raw)
    _, activation = analysis.references("conv", [0], "activation", 2)[0]  # ActMax keeps the start at the layer
    for heatmap in activation:
        red, _, blue = np.asarray(heatmap.convert("RGB")).astype(int).reshape(-1, 3).T
        assert (blue - red > 100).sum() >= 4 and (red - blue <= 0).all()
