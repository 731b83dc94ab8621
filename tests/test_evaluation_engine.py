"""The perturbation engine: inputs identical by construction are forwarded once, and nothing else changes.

A model wrapper counts the images it is given; the curves of the metric are compared with a loop that scores
every (sample, step) pair on its own, one perturbed input per forward pass.
"""

import numpy as np
import pytest
import torch

from crp._evaluation.engine import score_curves, score_curves_once
from crp._evaluation.perturbation import _replace_masked
from crp.evaluation import Constant, FillPerturbation, Inpainting, Mean, PixelFlipping, RandomUniform

N, C, H, W = 4, 2, 8, 8


class CountingNet(torch.nn.Module):
    """A small seeded CNN that counts the images passed through it."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(C, 4, 3, padding=1)
        self.head = torch.nn.Linear(4 * H * W, 3)
        self.images = 0
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.images += len(x)
        return self.head(torch.relu(self.conv(x)).flatten(1))


class SplitFill(FillPerturbation):
    """Fill 0 for the first two samples and 1 for the others: fully perturbed inputs equal in pairs."""

    def fill(self, inputs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:  # noqa: ARG002 - interface
        return (torch.arange(len(inputs)) >= 2).to(inputs.dtype).view(-1, 1, 1, 1)


def data():
    generator = torch.Generator().manual_seed(3)
    return torch.randn(N, C, H, W, generator=generator), torch.randn(N, H, W, generator=generator)


def one_pair_at_a_time(metric: PixelFlipping, model: torch.nn.Module, x, heat, targets) -> np.ndarray:
    """Every (sample, step) pair scored alone, the unperturbed and fully perturbed inputs included."""
    plan, _ = metric._plan(x, heat, None)
    targets = torch.as_tensor(targets).expand(N)

    def scorer(batch, rows):
        return metric.score(model(batch), targets[rows])

    return score_curves(plan, scorer, batch_size=1).numpy()


@pytest.mark.parametrize(
    "perturbation,last",
    [
        (Constant(0.5), 1),  # one fill for all samples: the last step is one forward pass in all
        (Inpainting(iterations=4), 1),  # every pixel removed: the fallback value for every sample
        (Mean(), N),  # a fill per sample
        (RandomUniform(), N),
    ],
)
def test_forward_passes_per_call(perturbation, last):
    x, heat = data()
    model = CountingNet()
    PixelFlipping(perturbation=perturbation, steps=5, batch_size=3)(model, x, heat, [0, 1, 2, 0])
    # the unperturbed inputs once (outputs, targets and step 0 in one), steps 1-4 per sample, then the last
    assert model.images == N + 4 * N + last


def test_telea_fills_every_sample_alike_once_all_pixels_are_removed():
    pytest.importorskip("cv2")
    x, heat = data()
    model = CountingNet()
    PixelFlipping(perturbation="telea", steps=2)(model, x, heat, 0)
    assert model.images == N + N + 1  # every channel +0.0, whatever the sign of its pixels


def test_predicted_targets_cost_no_extra_forward_pass():
    x, heat = data()
    model = CountingNet()
    result = PixelFlipping(perturbation="constant", steps=5)(model, x, heat)
    assert model.images == N + 4 * N + 1
    with torch.no_grad():
        np.testing.assert_array_equal(result.targets, model(x).argmax(1).numpy())


def test_a_last_step_that_keeps_regions_is_scored_per_sample():
    x, heat = data()
    model = CountingNet()
    result = PixelFlipping(perturbation="constant", per_step=[1, 2, 4])(model, x, heat, 0)  # 7 of 64 pixels
    assert model.images == N + 3 * N
    np.testing.assert_allclose(result.fractions, [0, 1 / 64, 3 / 64, 7 / 64])


def test_fills_equal_in_some_chunks_only():
    x, heat = data()
    model = CountingNet()
    metric = PixelFlipping(perturbation=SplitFill(), steps=3, batch_size=2)
    result = metric(model, x, heat, 1)
    # last step: the first chunk (fill 0 for both) once, the second (fill 1, unlike the first) per sample
    assert model.images == N + 2 * N + 1 + 2
    np.testing.assert_allclose(result.scores, one_pair_at_a_time(metric, model, x, heat, 1), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "perturbation", [Constant(0.5), Inpainting(iterations=4), Mean(), RandomUniform(), SplitFill()]
)
@pytest.mark.parametrize("batch_size", [None, 3])
def test_curves_equal_scoring_every_pair_alone(perturbation, batch_size):
    x, heat = data()
    targets = [2, 0, 1, 1]
    metric = PixelFlipping(perturbation=perturbation, region_size=2, steps=4, batch_size=batch_size)
    result = metric(CountingNet(), x, heat, targets)
    expected = one_pair_at_a_time(metric, CountingNet(), x, heat, targets)
    assert np.abs(expected[:, 0] - expected[:, -1]).min() > 1e-3  # the first and last step are no trivial case
    np.testing.assert_allclose(result.scores, expected, rtol=1e-5, atol=1e-6)


def test_outputs_that_are_no_tensor_are_scored_pair_by_pair():
    class DictNet(CountingNet):
        def forward(self, x):
            return {"logits": super().forward(x)}

    def logit(outputs, targets):
        return outputs["logits"].gather(1, targets[:, None])[:, 0]

    x, heat = data()
    model = DictNet()
    result = PixelFlipping(perturbation="constant", steps=4, score=logit)(model, x, heat, 1)
    assert model.images == N + 5 * N  # the unperturbed inputs once more, no pair forwarded once for several
    plain = PixelFlipping(perturbation="constant", steps=4)(CountingNet(), x, heat, 1)
    np.testing.assert_allclose(result.scores, plain.scores, rtol=1e-5, atol=1e-7)


def test_the_fill_blend_equals_where():
    generator = torch.Generator().manual_seed(4)
    x = torch.randn(6, 3, 5, 7, generator=generator) * 1e3
    masks = torch.rand(6, 1, 5, 7, generator=generator) > 0.5
    for fill in (torch.randn(6, 3, 5, 7, generator=generator), torch.full((6, 1, 1, 1), -2.5)):
        torch.testing.assert_close(_replace_masked(x, masks, fill), torch.where(masks, fill, x), rtol=0, atol=0)


@pytest.mark.parametrize("value", [float("inf"), float("nan")])
def test_a_fill_that_is_not_finite_replaces_exactly_the_masked_pixels(value):
    x, heat = data()
    images = PixelFlipping(perturbation=Constant(value), steps=4).perturbed_images(x, heat, [2])[:, 0]
    removed = images != x
    assert removed.sum() == N * C * (H * W // 2)  # half of the pixels of each sample, all channels
    assert torch.equal(x[~removed], images[~removed])
    replaced = images[removed]
    assert (torch.isinf(replaced) if value > 0 else torch.isnan(replaced)).all()


def test_rows_of_one_sample_share_its_unperturbed_and_fully_perturbed_forward_passes():
    x, heat = data()
    metric = PixelFlipping(perturbation=Mean(), steps=4, batch_size=3)
    sources = torch.arange(N).repeat_interleave(2)  # two heatmaps per sample, as in concept evaluation
    plan, _ = metric._plan(x, torch.cat([heat, -heat])[torch.arange(2 * N) % 2 * N + sources], sources)
    targets = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    model = CountingNet()

    def reduce(outputs, rows):
        return outputs.gather(1, targets[rows][:, None])[:, 0]

    curves = score_curves_once(plan, model, reduce, batch_size=3)
    assert model.images == N + 3 * 2 * N + N  # steps 0 and 4 once per sample, steps 1-3 per row
    expected = score_curves(plan, lambda batch, rows: reduce(model(batch), rows), batch_size=1)
    torch.testing.assert_close(curves, expected, rtol=1e-5, atol=1e-6)
    assert (curves[0::2, 1] - curves[1::2, 1]).abs().min() > 1e-4  # the two heatmaps of a sample differ


def test_fully_perturbed_inputs_are_shared_only_when_bitwise_equal():
    x, heat = data()
    model = CountingNet()
    PixelFlipping(perturbation=Constant(-0.0), steps=2)(model, x.clone().fill_(0.0), heat, 0)
    assert model.images == N + N + 1  # all -0.0: one forward pass for the last step
    model = CountingNet()
    zeros = torch.zeros(N, 1, 1, 1)
    zeros[1:] = -0.0

    class SignedZero(FillPerturbation):
        def fill(self, inputs, generator):  # noqa: ARG002 - the FillPerturbation interface
            return zeros

    PixelFlipping(perturbation=SignedZero(), steps=2)(model, x, heat, 0)
    assert model.images == N + N + N  # +0.0 and -0.0 differ in their bits: no sharing
