"""Pixel flipping / region perturbation: curves, AUC, orders, schedules, batching, reproducibility."""

import numpy as np
import pytest
import torch

from crp._evaluation.ordering import pixel_ranks, pool_regions
from crp.evaluation import (
    PERTURBATIONS,
    Constant,
    FlippingResult,
    Inpainting,
    PixelFlipping,
    RegionPerturbation,
    area_under_curve,
    compare_orders,
    quadratic_per_step,
    region_counts,
)

H = W = 8
PLANTED = torch.zeros(H, W, dtype=torch.bool)
PLANTED[2:4, 3:7] = True  # 8 pixels, 4 regions of 2x2


class PlantedModel(torch.nn.Module):
    """Class 0 reads the summed input over the planted pixel set only; class 1 is its negative."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        evidence = (x[:, 0] * PLANTED).sum((1, 2))
        return torch.stack([evidence, -evidence], 1)


def planted_model() -> PlantedModel:
    return PlantedModel().eval()


class TinyNet(torch.nn.Module):
    """A small seeded CNN, for batching and reference checks."""

    def __init__(self, channels: int = 2) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(channels, 4, 3, padding=1)
        self.head = torch.nn.Linear(4 * H * W, 3)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.conv(x)).flatten(1))


def planted_data(n: int = 6):
    """Dim background noise with bright planted pixels; the heatmap is the model's own evidence x * mask."""
    generator = torch.Generator().manual_seed(1)
    x = 0.1 * torch.rand(n, 1, H, W, generator=generator)
    x[:, 0, PLANTED] = 0.8 + 0.2 * torch.rand(n, int(PLANTED.sum()), generator=generator)
    return x, x[:, 0] * PLANTED


def tiny_data(n: int = 4, channels: int = 2):
    generator = torch.Generator().manual_seed(2)
    return torch.randn(n, channels, H, W, generator=generator), torch.randn(n, H, W, generator=generator)


# ---------------------------------------------------------------------------------------------------- AUC


def test_auc_of_a_known_curve_by_hand():
    # (1/3) * ((1 + .5) / 2 + (.5 + .25) / 2 + (.25 + 0) / 2) = 1.25 / 3
    scores = np.array([[1.0, 0.5, 0.25, 0.0], [2.0, 2.0, 2.0, 2.0]])
    fractions = np.array([0.0, 1 / 3, 2 / 3, 1.0])
    np.testing.assert_allclose(area_under_curve(scores, fractions), [1.25 / 3, 2.0])


def test_auc_over_uneven_fractions():
    # trapezoids of widths .1, .4, .5: .1 * 2 + .4 * 1.5 + .5 * .5
    np.testing.assert_allclose(area_under_curve([2.0, 2.0, 1.0, 0.0], [0.0, 0.1, 0.5, 1.0]), 0.2 + 0.6 + 0.25)


def test_result_auc_matches_its_curves():
    x, attributions = planted_data()
    result = PixelFlipping(perturbation="constant", steps=8)(planted_model(), x, attributions, 0)
    np.testing.assert_allclose(result.auc, np.trapezoid(result.scores, result.fractions, axis=1))
    assert isinstance(result, FlippingResult) and result.steps == 8


# ---------------------------------------------------------------------------------- planted-feature model


@pytest.mark.parametrize("perturbation", ["inpainting", "constant", "mean", "random"])
@pytest.mark.parametrize("region_size", [1, 2])
def test_morf_beats_random_and_lrf_on_a_planted_feature(perturbation, region_size):
    x, attributions = planted_data()
    metric = PixelFlipping(perturbation=perturbation, region_size=region_size, steps=16 // region_size)
    results = compare_orders(metric, planted_model(), x, attributions, 0)
    start, floor = results["morf"].scores[:, 0].mean(), results["morf"].scores[:, -1].mean()
    np.testing.assert_allclose([r.scores[:, -1].mean() for r in results.values()], floor)  # same fill for all orders
    # area between the curve and the fully perturbed score, as a share of the drop
    morf, lrf, rand = ((results[name].auc.mean() - floor) / (start - floor) for name in ("morf", "lrf", "random"))
    # the planted pixels are 1/8 of the image: MoRF removes them first, random spread out, LRF last
    assert morf < 0.2 and morf < rand / 3
    assert 0.4 < rand < 0.8
    assert lrf > 0.85


def test_constant_morf_curve_by_hand():
    # 2x2 regions, one region per step: MoRF removes the four planted regions (in relevance order) in steps 1-4
    x, attributions = planted_data(2)
    result = PixelFlipping(perturbation="constant", region_size=2, per_step=1)(planted_model(), x, attributions, 0)
    regions = pool_regions(attributions, (2, 2))
    expected = regions.sum(1, keepdim=True) - torch.cumsum(regions.sort(1, descending=True).values, 1)
    np.testing.assert_allclose(result.scores[:, 1:], expected.numpy(), atol=1e-6)
    np.testing.assert_allclose(result.scores[:, 0], regions.sum(1).numpy(), rtol=1e-6)


# ---------------------------------------------------------------------------------- naive float64 reference


def naive_pixel_flipping(model, x, attributions, targets, *, region, counts, order):
    """One sample, one step at a time, float64, constant 0 baseline."""
    model = model.double()
    curves = []
    for sample, heat, target in zip(x.double(), attributions.double(), targets):
        corners = [(i, j) for i in range(0, H, region) for j in range(0, W, region)]
        scores = [heat[i:i + region, j:j + region].sum().item() for i, j in corners]
        ranked = sorted(range(len(scores)), key=lambda r: -scores[r] if order == "morf" else scores[r])
        curve = []
        for count in counts:
            perturbed = sample.clone()
            for r in ranked[:count]:
                i, j = divmod(r, W // region)
                perturbed[:, i * region:(i + 1) * region, j * region:(j + 1) * region] = 0.0
            curve.append(model(perturbed[None])[0, target].item())
        curves.append(curve)
    model.float()
    return np.array(curves)


@pytest.mark.parametrize("order", ["morf", "lrf"])
@pytest.mark.parametrize("region", [1, 2])
def test_curves_match_a_naive_float64_loop(order, region):
    x, attributions = tiny_data()
    targets = [0, 2, 1, 1]
    metric = PixelFlipping(perturbation=Constant(0.0), order=order, region_size=region, steps=5, batch_size=7)
    result = metric(TinyNet(), x, attributions, targets)
    counts = region_counts((H // region) ** 2, steps=5)
    expected = naive_pixel_flipping(TinyNet(), x, attributions, targets, region=region, counts=counts, order=order)
    np.testing.assert_allclose(result.scores, expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(result.fractions, counts / (H // region) ** 2)


# ------------------------------------------------------------------------------------ batching invariance


@pytest.mark.parametrize("name", sorted(set(PERTURBATIONS) - {"telea"}))
@pytest.mark.parametrize("order", ["morf", "random"])
def test_batch_size_does_not_change_the_curves(name, order):
    x, attributions = tiny_data()
    perturbation = Inpainting(iterations=6) if name == "inpainting" else name  # few iterations: a faster test
    results = [
        PixelFlipping(perturbation=perturbation, order=order, steps=6, batch_size=size)(TinyNet(), x, attributions, 1)
        for size in (1, 5, 1000)
    ]
    for other in results[1:]:
        np.testing.assert_allclose(other.scores, results[0].scores, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("perturbation", ["inpainting", "constant", "mean"])
def test_one_sample_at_a_time_equals_the_batch(perturbation):
    x, attributions = tiny_data()
    targets = [0, 1, 2, 0]
    perturbation = Inpainting(iterations=6) if perturbation == "inpainting" else perturbation
    metric = PixelFlipping(perturbation=perturbation, region_size=2, steps=8, batch_size=3)
    together = metric(TinyNet(), x, attributions, targets)
    alone = [metric(TinyNet(), x[i:i + 1], attributions[i:i + 1], targets[i]) for i in range(len(x))]
    np.testing.assert_allclose(np.concatenate([r.scores for r in alone]), together.scores, rtol=1e-5, atol=1e-6)


# -------------------------------------------------------------------------------------- reproducibility


@pytest.mark.parametrize("order,perturbation", [("random", "constant"), ("morf", "random"), ("random", "random")])
def test_random_modes_are_reproducible_by_seed(order, perturbation):
    x, attributions = tiny_data()

    def run(seed):
        metric = PixelFlipping(perturbation=perturbation, order=order, steps=6, seed=seed)
        return metric(TinyNet(), x, attributions, 0).scores

    np.testing.assert_array_equal(run(3), run(3))
    assert np.abs(run(3) - run(4)).max() > 1e-3


def test_random_fill_is_fixed_per_pixel_across_steps():
    x, attributions = tiny_data()
    images = PixelFlipping(perturbation="random", steps=4).perturbed_images(x, attributions, [1, 2, 3, 4])
    removed_early = images[:, 0] != x
    assert removed_early.any()
    torch.testing.assert_close(images[:, 3][removed_early], images[:, 0][removed_early])
    low, high = x.flatten(1).amin(1), x.flatten(1).amax(1)
    final = images[:, 3].flatten(1)
    assert (final >= low[:, None]).all() and (final <= high[:, None]).all()


def test_random_order_is_a_permutation_per_sample():
    x, attributions = tiny_data()
    metric = PixelFlipping(perturbation="constant", order="random", steps=H * W)
    images = metric.perturbed_images(x, attributions, list(range(H * W + 1)))
    removed = (images == 0).all(2).sum((2, 3))
    np.testing.assert_array_equal(removed.numpy(), np.tile(np.arange(H * W + 1), (len(x), 1)))


# -------------------------------------------------------------------------------- orders and schedules


def test_region_pooling_and_ranks_by_hand():
    heat = torch.arange(16.0).reshape(1, 4, 4)
    regions = pool_regions(heat, (2, 2))
    # blocks: [0+1+4+5, 2+3+6+7, 8+9+12+13, 10+11+14+15]
    torch.testing.assert_close(regions, torch.tensor([[10.0, 18.0, 42.0, 50.0]]))
    ranks = pixel_ranks(torch.tensor([[3, 2, 1, 0]]), (4, 4), (2, 2))
    expected = torch.tensor([[3, 3, 2, 2], [3, 3, 2, 2], [1, 1, 0, 0], [1, 1, 0, 0]])
    torch.testing.assert_close(ranks[0], expected)


def test_lrf_removes_least_relevant_first_and_ties_keep_index_order():
    heat = torch.tensor([[[1.0, 1.0], [-2.0, 5.0]]])
    x = torch.ones(1, 1, 2, 2)
    lrf = PixelFlipping(perturbation="constant", order="lrf", per_step=1).perturbed_images(x, heat, [1, 2, 3])
    morf = PixelFlipping(perturbation="constant", order="morf", per_step=1).perturbed_images(x, heat, [1, 2, 3])
    assert lrf[0, :, 0].eq(0).flatten(1).tolist() == [
        [False, False, True, False], [True, False, True, False], [True, True, True, False]]
    assert morf[0, :, 0].eq(0).flatten(1).tolist() == [
        [False, False, False, True], [True, False, False, True], [True, True, False, True]]


def test_custom_order_callable():
    x, attributions = tiny_data()

    def reverse_raster(scores, _generator):
        return torch.arange(scores.shape[1] - 1, -1, -1).expand_as(scores)

    metric = PixelFlipping(perturbation="constant", order=reverse_raster, per_step=1)
    images = metric.perturbed_images(x, attributions, [1])
    assert images[:, 0, :, -1, -1].eq(0).all() and images[:, 0].eq(0).sum() == len(x) * x.shape[1]
    assert metric(TinyNet(), x, attributions, 0).order == "reverse_raster"


def test_schedules():
    np.testing.assert_array_equal(region_counts(10, steps=4), [0, 2, 5, 7, 10])
    np.testing.assert_array_equal(region_counts(10, per_step=3), [0, 3, 6, 9, 10])
    np.testing.assert_array_equal(region_counts(10, per_step=[1, 2, 4]), [0, 1, 3, 7])
    np.testing.assert_array_equal(region_counts(7), np.arange(8))
    assert len(region_counts(1000)) == 101
    np.testing.assert_array_equal(quadratic_per_step(16), [1, 3, 5, 7])
    np.testing.assert_array_equal(quadratic_per_step(10), [1, 3, 5, 1])


def test_schedule_shows_in_the_result():
    x, attributions = tiny_data()
    result = PixelFlipping(perturbation="constant", region_size=2, per_step=[1, 3, 5])(TinyNet(), x, attributions, 0)
    np.testing.assert_array_equal(result.pixels_per_step, [4, 12, 20])
    np.testing.assert_allclose(result.fractions, [0, 1 / 16, 4 / 16, 9 / 16])
    assert result.scores.shape == (4, 4) and result.region_size == (2, 2)


def test_region_perturbation_defaults_to_8x8_patches():
    assert RegionPerturbation().region_size == (8, 8)
    x, attributions = tiny_data()
    result = RegionPerturbation(region_size=4, steps=2)(TinyNet(), x, attributions, 0)
    assert result.pixels_per_step.tolist() == [32, 32]


def test_replace_keeps_the_other_settings():
    metric = PixelFlipping(perturbation="mean", region_size=(2, 4), steps=3, score="probability", seed=5)
    other = metric.replace(order="lrf")
    assert other.settings() == {**metric.settings(), "order": "lrf"}
    assert "order='lrf'" in repr(other)


# ----------------------------------------------------------------------------------------------- scores


def test_named_and_callable_scores():
    x, attributions = tiny_data()
    model = TinyNet()
    kwargs = dict(perturbation="constant", steps=3)
    logit = PixelFlipping(**kwargs)(model, x, attributions, 2)
    prob = PixelFlipping(score="probability", **kwargs)(model, x, attributions, 2)
    log_prob = PixelFlipping(score="log_probability", **kwargs)(model, x, attributions, 2)
    with torch.no_grad():
        first = model(x)
    np.testing.assert_allclose(logit.scores[:, 0], first[:, 2].numpy(), rtol=1e-5)
    np.testing.assert_allclose(prob.scores[:, 0], first.softmax(1)[:, 2].numpy(), rtol=1e-5)
    np.testing.assert_allclose(np.exp(log_prob.scores), prob.scores, rtol=1e-5)

    def margin(outputs, _targets):
        return outputs[:, 0] - outputs[:, 1]

    custom = PixelFlipping(score=margin, **kwargs)(model, x, attributions)
    np.testing.assert_allclose(custom.scores[:, 0], (first[:, 0] - first[:, 1]).numpy(), rtol=1e-5)
    assert custom.score == "margin"


def test_targets_default_to_the_prediction():
    x, attributions = tiny_data()
    model = TinyNet()
    result = PixelFlipping(perturbation="constant", steps=2)(model, x, attributions)
    with torch.no_grad():
        np.testing.assert_array_equal(result.targets, model(x).argmax(1).numpy())


def test_attribution_channels_are_summed():
    x, attributions = tiny_data()
    per_channel = torch.stack([attributions, 0 * attributions], 1)
    metric = PixelFlipping(perturbation="constant", steps=4)
    summed = metric(TinyNet(), x, attributions, 0).scores
    np.testing.assert_array_equal(metric(TinyNet(), x, per_channel, 0).scores, summed)
    np.testing.assert_array_equal(metric(TinyNet(), x, attributions[:, None].numpy(), 0).scores, summed)


def test_perturbed_images_start_unperturbed_and_end_fully_perturbed():
    x, attributions = tiny_data()
    images = PixelFlipping(perturbation=Constant(-3.0), steps=4).perturbed_images(x, attributions, [0, 4])
    torch.testing.assert_close(images[:, 0], x)
    assert images[:, 1].eq(-3.0).all()


def test_inputs_and_model_are_not_changed():
    x, attributions = tiny_data()
    x_before, a_before = x.clone(), attributions.clone()
    model = TinyNet()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    PixelFlipping(steps=4)(model, x, attributions, 0)
    torch.testing.assert_close(x, x_before)
    torch.testing.assert_close(attributions, a_before)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, state[key])


def test_warns_for_a_model_in_training_mode():
    x, attributions = tiny_data()
    with pytest.warns(UserWarning, match="training mode"):
        PixelFlipping(perturbation="constant", steps=2)(TinyNet().train(), x, attributions, 0)


def test_relative_scores():
    result = FlippingResult(
        scores=np.array([[2.0, 1.0], [0.0, 1.0]]), fractions=np.array([0.0, 1.0]), auc=np.zeros(2),
        pixels_per_step=np.array([4]), targets=np.zeros(2), samples=np.arange(2), order="morf",
        perturbation="constant", region_size=(1, 1), score="logit")
    np.testing.assert_array_equal(result.relative_scores(), [[1.0, 0.5], [np.nan, np.nan]])


def test_progress_bar_only_when_verbose(capsys):
    x, attributions = tiny_data()
    PixelFlipping(perturbation="constant", steps=2)(TinyNet(), x, attributions, 0)
    assert capsys.readouterr().err == ""
    PixelFlipping(perturbation="constant", steps=2, verbose=True)(TinyNet(), x, attributions, 0)
    assert "morf flipping" in capsys.readouterr().err


def test_automatic_batch_size_bounds_the_input_values_per_batch():
    metric = PixelFlipping()
    assert metric.batch_for(torch.zeros(2, 1, 28, 28)) == 2**16 // (28 * 28)
    assert metric.batch_for(torch.zeros(2, 3, 32, 32)) == metric.batch_for(torch.zeros(2, 3, 64, 64)) == 32  # at least
    assert metric.batch_for(torch.zeros(2, 3, 224, 224)) == 2**20 // (3 * 224 * 224)  # ... while under 2**20 values
    assert metric.batch_for(torch.zeros(2, 3, 512, 512)) == 1
    assert metric.batch_for(torch.zeros(2, 1, 8, 8)) == 1024
    assert PixelFlipping(batch_size=7).batch_for(torch.zeros(2, 3, 32, 32)) == 7
