"""The plots of faithfulness results draw what they should (on the Agg backend)."""

import matplotlib
import numpy as np
import pytest
import torch

from crp.evaluation import FlippingResult, PixelFlipping
from crp.evaluation.plot import plot_curves, plot_perturbed_strip, plot_pixels_per_step, plot_sample_curves

matplotlib.use("Agg")


def result(order: str, scores: np.ndarray) -> FlippingResult:
    fractions = np.linspace(0, 1, scores.shape[1])
    return FlippingResult(
        scores=scores, fractions=fractions, auc=np.trapezoid(scores, fractions, axis=1),
        pixels_per_step=np.array([4, 4, 8]), targets=np.zeros(len(scores)), samples=np.arange(len(scores)),
        order=order, perturbation="constant", region_size=(2, 2), score="logit")


MORF = result("morf", np.array([[4.0, 1.0, 0.0, 0.0], [2.0, 1.0, 1.0, 0.0]]))
LRF = result("lrf", np.array([[4.0, 4.0, 3.0, 0.0], [2.0, 2.0, 2.0, 0.0]]))


@pytest.fixture(autouse=True)
def close_figures():
    yield
    import matplotlib.pyplot as plt

    plt.close("all")


def test_mean_curves_with_spread():
    ax = plot_curves({"MoRF": MORF, "LRF": LRF}, spread="std")
    lines = ax.get_lines()
    assert [line.get_label() for line in lines] == ["MoRF (AUC 1)", "LRF (AUC 2.33)"]
    np.testing.assert_allclose(lines[0].get_ydata(), [3.0, 1.0, 0.5, 0.0])
    assert len(ax.collections) == 2  # one band per result
    band = ax.collections[0].get_paths()[0].vertices[:, 1]
    # std (ddof=1) of [4, 2] is sqrt(2): the band reaches 3 + sqrt(2) at the start
    assert np.isclose(band.max(), 3 + np.sqrt(2))


@pytest.mark.parametrize("spread,bands", [(None, 0), ("sem", 2), ("quartiles", 2)])
def test_curve_spreads_and_sequences(spread, bands):
    ax = plot_curves([MORF, LRF], spread=spread, relative=True)
    assert len(ax.collections) == bands and ax.get_ylabel() == "relative logit"
    np.testing.assert_allclose(ax.get_lines()[0].get_ydata(), [1.0, 0.375, 0.25, 0.0])


def test_sample_curves():
    ax = plot_sample_curves(MORF)
    assert len(ax.get_lines()) == 3  # two samples and their mean
    np.testing.assert_allclose(ax.get_lines()[1].get_ydata(), [2.0, 1.0, 1.0, 0.0])
    assert "morf" in ax.get_title()
    assert len(plot_sample_curves(MORF, rows=[1]).get_lines()) == 2


def test_pixels_per_step():
    ax = plot_pixels_per_step(MORF)
    assert [bar.get_height() for bar in ax.patches] == [4, 4, 8]


def test_strip_of_perturbed_images():
    x = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    metric = PixelFlipping(perturbation="constant", steps=4)
    images = metric.perturbed_images(x, x[:, 0], [0, 2, 4])
    axes = plot_perturbed_strip(images, [0, 2, 4], fractions=np.linspace(0, 1, 5), sample=1)
    assert [ax.get_title() for ax in axes] == ["step 0\n0%", "step 2\n50%", "step 4\n100%"]
    rgb = plot_perturbed_strip(torch.rand(1, 2, 3, 8, 8), [0, 1])
    assert rgb[0].get_images()[0].get_array().shape == (8, 8, 3)


def test_plot_errors():
    with pytest.raises(ValueError, match=r"`spread` must be one of 'std', 'sem', 'quartiles', None, got 'iqr'"):
        plot_curves(MORF, spread="iqr")
    with pytest.raises(ValueError, match=r"`images` must have shape \(N, T=2, C, H, W\), got \(2, 3, 1, 8, 8\)"):
        plot_perturbed_strip(np.zeros((2, 3, 1, 8, 8)), [0, 1])
