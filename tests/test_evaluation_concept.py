"""Concept faithfulness on a tiny model whose two concepts read known pixel sets.

The model: a 1x1 convolution with two channels that both copy the input (``conv``), a ReLU, a fixed spatial
mask that keeps pixel set A in channel 0 and set B in channel 1, and a linear head of ones (class 1 weighs
channel 1 by -1). With LRP (epsilon rule on the head), the relevance of concept c at ``conv`` for class 0 is
the sum of the input over its set, and its conditional heatmap is the input on that set: numbers by hand.
"""

import numpy as np
import pytest
import torch
from torch import nn
from zennit.composites import EpsilonPlusFlat

from crp.attribution import CondAttribution
from crp.concepts import ChannelConcept
from crp.evaluation import ConceptFaithfulness, concept_faithfulness, top_concepts

H = W = 8
SETS = torch.zeros(2, H, W, dtype=torch.bool)
SETS[0, 1:3, 1:5] = True  # set A: 8 pixels
SETS[1, 5:7, 3:7] = True  # set B: 8 pixels


class SpatialMask(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mask", SETS.float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.mask


class ConceptNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 1, bias=False)
        self.conv.weight.data.fill_(1.0)
        self.relu = nn.ReLU()
        self.select = SpatialMask()
        self.flatten = nn.Flatten()
        self.head = nn.Linear(2 * H * W, 2, bias=False)
        weight = torch.ones(2, 2, H * W)
        weight[1, 1] = -1.0
        self.head.weight.data = weight.reshape(2, -1)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.flatten(self.select(self.relu(self.conv(x)))))


@pytest.fixture
def setup():
    model = ConceptNet()
    generator = torch.Generator().manual_seed(0)
    x = 0.1 * torch.rand(3, 1, H, W, generator=generator)  # a dim background, bright concept pixels
    x[:, 0, SETS.any(0)] = 0.6 + 0.4 * torch.rand(3, int(SETS.sum()), generator=generator)
    x[2, 0, SETS[1]] += 1.0  # sample 2: concept 1 is the more relevant one
    return CondAttribution(model), x, EpsilonPlusFlat()


def by_hand(x: torch.Tensor) -> torch.Tensor:
    """Relevance of both concepts for class 0: the input summed over each set, shape (N, 2)."""
    return torch.stack([(x[:, 0] * SETS[c]).sum((1, 2)) for c in range(2)], 1)


def test_step_zero_is_the_concept_relevance_by_hand(setup):
    attribution, x, composite = setup
    metric = ConceptFaithfulness("conv", perturbation="constant", steps=4)
    result = metric(attribution, x, 0, [0, 1], composite)
    np.testing.assert_allclose(result.scores[:, 0], by_hand(x).reshape(-1).numpy(), rtol=1e-4)
    assert result.concepts.tolist() == [0, 1] * 3 and result.samples.tolist() == [0, 0, 1, 1, 2, 2]
    assert result.targets.tolist() == [0] * 6 and result.layer == "conv" and result.score == "relevance"


def test_conditional_heatmaps_are_the_input_on_the_concept_set(setup):
    attribution, x, composite = setup
    heatmaps = ConceptFaithfulness("conv").heatmaps(attribution, x, 0, [1, 0], composite)
    expected = torch.stack([x[:, 0] * SETS[1], x[:, 0] * SETS[0]], 1)
    torch.testing.assert_close(heatmaps, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("perturbation", ["constant", "inpainting"])
def test_morf_along_the_concept_heatmap_beats_random(setup, perturbation):
    attribution, x, composite = setup
    metric = ConceptFaithfulness("conv", perturbation=perturbation, steps=16)
    morf = metric(attribution, x, 0, [0, 1], composite)
    rand = metric.replace(order="random")(attribution, x, 0, [0, 1], composite)
    assert (morf.auc < 0.6 * rand.auc).all()
    if perturbation == "constant":
        # MoRF removes the concept's 8 pixels in the first 8 / 64 of the curve: area about 1/16 of the start
        start = morf.scores[:, 0]
        assert (morf.auc < 0.1 * start).all() and (rand.auc > 0.3 * start).all()


def test_activation_measure_by_hand(setup):
    attribution, x, composite = setup
    metric = ConceptFaithfulness("conv", measure="activation", perturbation="constant", steps=2)
    result = metric(attribution, x, 0, 1, composite)
    # the activation of either channel is the whole input: summed over all pixels, then none after removal
    np.testing.assert_allclose(result.scores[:, 0], x.sum((1, 2, 3)).numpy(), rtol=1e-5)
    np.testing.assert_allclose(result.scores[:, -1], 0.0, atol=1e-6)
    assert not attribution.model.conv._forward_hooks


def test_batch_size_does_not_change_concept_curves(setup):
    attribution, x, composite = setup
    curves = [
        ConceptFaithfulness("conv", perturbation="random", order="random", steps=3, batch_size=size)(
            attribution, x, 0, [0, 1], composite).scores
        for size in (1, 4, 100)
    ]
    np.testing.assert_allclose(curves[1], curves[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(curves[2], curves[0], rtol=1e-5, atol=1e-6)


def test_concept_ids_per_sample_and_precomputed_heatmaps(setup):
    attribution, x, composite = setup
    metric = ConceptFaithfulness("conv", perturbation="constant", steps=4)
    ids = np.array([[1], [0], [1]])
    heatmaps = metric.heatmaps(attribution, x, 0, ids, composite)
    given = metric(attribution, x, 0, ids, composite, heatmaps=heatmaps)
    computed = metric(attribution, x, 0, torch.as_tensor(ids), composite)
    np.testing.assert_array_equal(given.scores, computed.scores)
    np.testing.assert_allclose(given.scores[:, 0], by_hand(x)[[0, 1, 2], [1, 0, 1]].numpy(), rtol=1e-4)


def test_targets_default_to_the_prediction(setup):
    attribution, x, composite = setup
    result = ConceptFaithfulness("conv", perturbation="constant", steps=2)(attribution, x, None, 0, composite)
    with torch.no_grad():
        assert result.targets.tolist() == attribution.model(x).argmax(1).tolist()


def test_top_concepts_and_the_helper(setup):
    attribution, x, composite = setup
    expected = by_hand(x).argsort(1, descending=True).numpy()
    np.testing.assert_array_equal(top_concepts(attribution, x, 0, "conv", k=2, composite=composite), expected)
    results = concept_faithfulness(attribution, x, 0, "conv", k=1, composite=composite, perturbation="constant",
                                   steps=8)
    assert set(results) == {"morf", "random"}
    assert results["morf"].concepts.tolist() == expected[:, 0].tolist()
    assert (results["morf"].auc < results["random"].auc).all()


def test_hooks_are_removed_when_the_measure_fails(setup):
    attribution, x, composite = setup

    class Broken(ChannelConcept):
        def attribute(self, *_args, **_kwargs):
            raise RuntimeError("broken concept")

    metric = ConceptFaithfulness("conv", measure="activation", concept=Broken(), perturbation="constant", steps=2)
    with pytest.raises(RuntimeError, match="broken concept"):
        metric(attribution, x, 0, 0, composite, heatmaps=torch.ones(3, 1, H, W))
    assert not any(module._forward_hooks for module in attribution.model.modules())


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"layer": "features.3"}, r"`layer` 'features.3' is not a module of the model"),
        ({"concept_ids": 2}, r"`concept_ids` \[2\] must lie in \[0, 2\) for layer 'conv'"),
        ({"concept_ids": [[0, 1]]},
         r"`concept_ids` must be integer ids: .* \(N=3, K\); got \[\[0, 1\]\] with shape \(1, 2\)"),
        ({"concept_ids": [0.5]}, r"`concept_ids` must be integer ids"),
        ({"heatmaps": torch.ones(3, 2, H, W)},
         r"`heatmaps` must have shape \(3, 1, 8, 8\) \(N, K, H, W\), got \(3, 2, 8, 8\)"),
        ({"heatmaps": torch.full((3, 1, H, W), float("nan"))}, r"`heatmaps` of shape \(3, 1, 8, 8\) contains NaN"),
        ({"targets": [0, 1]}, r"`targets` of shape \(2,\) does not match the 3 samples"),
    ],
)
def test_concept_errors(setup, kwargs, match):
    attribution, x, composite = setup
    layer = kwargs.pop("layer", "conv")
    call = {"targets": 0, "concept_ids": 0, "composite": composite, **kwargs}
    with pytest.raises(ValueError, match=match):
        ConceptFaithfulness(layer, perturbation="constant", steps=2)(attribution, x, **call)


def test_concept_setting_errors(setup):
    attribution, x, composite = setup
    with pytest.raises(ValueError, match=r"`measure` must be one of 'relevance', 'activation', got 'gradient'"):
        ConceptFaithfulness("conv", measure="gradient")
    with pytest.raises(TypeError, match=r"`layer` must be a layer name \(str\), got 3"):
        ConceptFaithfulness(3)
    with pytest.raises(ValueError, match=r"`k` must be an int in \[1, 2\], got 3\. Layer 'conv' has 2 channels"):
        top_concepts(attribution, x, 0, "conv", k=3, composite=composite)
    with pytest.raises(TypeError, match=r"`k` must be an int in \[1, 2\], got 1.5"):
        top_concepts(attribution, x, 0, "conv", k=1.5, composite=composite)
