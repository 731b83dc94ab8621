"""Perturbations: harmonic inpainting against exact solutions, OpenCV Telea, fills, and the registry."""

import numpy as np
import pytest
import torch

from crp.evaluation import (
    PERTURBATIONS,
    FillPerturbation,
    Inpainting,
    Mean,
    PixelFlipping,
    get_perturbation,
    harmonic_inpaint,
    register_perturbation,
)


def linear_images(height: int = 24, width: int = 30) -> torch.Tensor:
    """Two images with three channels, each a different linear gradient."""
    yy, xx = torch.meshgrid(torch.arange(height, dtype=torch.float32), torch.arange(width, dtype=torch.float32),
                            indexing="ij")
    slopes = torch.tensor([[0.03, -0.02, 0.5], [-0.01, 0.04, -0.2], [0.0, 0.05, 1.0],
                           [0.02, 0.02, 0.0], [-0.04, 0.01, 0.3], [0.01, -0.03, 0.8]])
    planes = [a * xx + b * yy + c for a, b, c in slopes]
    return torch.stack(planes).reshape(2, 3, height, width)


def discrete_harmonic(image: np.ndarray, hole: np.ndarray) -> np.ndarray:
    """Naive float64 reference: solve 'each hole pixel is the mean of its in-image neighbours' densely."""
    height, width = image.shape
    points = np.argwhere(hole)
    index = -np.ones(image.shape, dtype=int)
    index[hole] = np.arange(len(points))
    matrix, rhs = np.zeros((len(points), len(points))), np.zeros(len(points))
    for k, (i, j) in enumerate(points):
        for a, b in ((i + 1, j), (i - 1, j), (i, j + 1), (i, j - 1)):
            if 0 <= a < height and 0 <= b < width:
                matrix[k, k] += 1
                if hole[a, b]:
                    matrix[k, index[a, b]] -= 1
                else:
                    rhs[k] += image[a, b]
    out = image.copy()
    out[hole] = np.linalg.solve(matrix, rhs)
    return out


def test_inpainting_reproduces_a_linear_gradient_inside_holes():
    images = linear_images()
    masks = torch.zeros(2, 1, 24, 30, dtype=torch.bool)
    masks[0, 0, 5:19, 3:26] = True  # a wide hole, not aligned to the pyramid
    masks[1, 0, 2:21, 11:17] = True  # a tall one
    masks[1, 0, 8, 2] = True  # and a single pixel
    filled = harmonic_inpaint(images, masks)  # default budget: a few fine iterations, values span about 2
    torch.testing.assert_close(filled, images, atol=5e-3, rtol=0)
    converged = harmonic_inpaint(images, masks, iterations=60, tolerance=1e-9)
    torch.testing.assert_close(converged, images, atol=1e-4, rtol=0)
    # the known pixels are copied, not recomputed
    assert torch.equal(filled[~masks.expand_as(images)], images[~masks.expand_as(images)])


@pytest.mark.parametrize("shape,share", [((12, 17), 0.5), ((16, 16), 0.9), ((20, 9), 0.3)])
def test_inpainting_matches_the_exact_discrete_solution(shape, share):
    generator = np.random.default_rng(0)
    image = generator.random(shape)
    hole = generator.random(shape) < share
    expected = discrete_harmonic(image, hole)
    filled = harmonic_inpaint(torch.tensor(image)[None, None], torch.tensor(hole)[None, None], 60, tolerance=1e-12)
    np.testing.assert_allclose(filled[0, 0].numpy(), expected, atol=1e-8)


def test_inpainting_one_image_does_not_depend_on_the_batch():
    images = linear_images() + 0.3 * torch.rand(2, 3, 24, 30, generator=torch.Generator().manual_seed(0))
    masks = torch.zeros(2, 1, 24, 30, dtype=torch.bool)
    masks[0, 0, 10:12, 10:12] = True  # converges in a few iterations
    masks[1, 0, 2:22, 2:28] = True  # needs all of them
    together = harmonic_inpaint(images, masks)
    for index in range(2):
        alone = harmonic_inpaint(images[index:index + 1], masks[index:index + 1])
        torch.testing.assert_close(together[index:index + 1], alone, atol=1e-6, rtol=1e-6)


def test_inpainting_a_fully_removed_image_uses_the_fallback():
    images = linear_images()
    masks = torch.ones(2, 1, 24, 30, dtype=torch.bool)
    masks[1, 0, 0, 0] = False  # one known pixel: the harmonic fill is that constant
    filled = harmonic_inpaint(images, masks, fallback=0.25)
    assert filled[0].eq(0.25).all()
    torch.testing.assert_close(filled[1], images[1, :, :1, :1].expand(3, 24, 30), atol=1e-5, rtol=0)


def test_inpainting_leaves_its_inputs_alone_and_has_no_effect_without_a_mask():
    images = linear_images()
    copy = images.clone()
    unmasked = harmonic_inpaint(images, torch.zeros(2, 1, 24, 30, dtype=torch.bool))
    assert torch.equal(unmasked, images) and torch.equal(images, copy)


def test_the_inpainting_perturbation_is_the_harmonic_fill_of_the_removed_pixels():
    images = linear_images(8, 8) + 0.1 * torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    heat = torch.arange(64.0).reshape(1, 8, 8).expand(2, 8, 8)
    perturbed = PixelFlipping(perturbation=Inpainting(iterations=20), steps=4).perturbed_images(images, heat, [2])
    masks = torch.zeros(2, 1, 8, 8, dtype=torch.bool)
    masks[:, :, 4:] = True  # MoRF over a raster-increasing heatmap: the bottom half first
    torch.testing.assert_close(perturbed[:, 0], harmonic_inpaint(images, masks, iterations=20))


def test_telea_fills_smoothly_and_keeps_known_pixels():
    pytest.importorskip("cv2")
    images = linear_images()
    masks = torch.zeros(2, 1, 24, 30, dtype=torch.bool)
    masks[:, 0, 9:14, 10:16] = True
    filled = get_perturbation("telea").perturb(images, masks, None)
    keep = ~masks.expand_as(images)
    assert torch.equal(filled[keep], images[keep])
    assert (filled - images).abs().max() < 0.1  # Telea extrapolates locally, it is not exact on gradients
    everything = get_perturbation("telea").perturb(images, torch.ones(2, 1, 24, 30, dtype=torch.bool), None)
    assert everything.eq(0).all()


def test_mean_and_constant_fills_by_hand():
    images = torch.arange(8.0).reshape(1, 2, 2, 2)  # channel means 1.5 and 5.5
    masks = torch.tensor([[[[True, False], [False, False]]]])
    mean = Mean()
    assert mean.perturb(images, masks, mean.prepare(images, torch.Generator()))[0, :, 0, 0].tolist() == [1.5, 5.5]
    constant = get_perturbation("constant")
    assert constant.perturb(images, masks, constant.prepare(images, torch.Generator()))[0, :, 0, 0].tolist() == [0, 0]


def test_a_registered_perturbation_is_picked_by_name():
    @register_perturbation("test-negate")
    class Negate(FillPerturbation):
        def fill(self, inputs, generator):  # noqa: ARG002 - the FillPerturbation interface
            return -inputs

    try:
        images = linear_images(8, 8)
        heat = torch.ones(2, 8, 8)
        out = PixelFlipping(perturbation="test-negate", steps=1).perturbed_images(images, heat, [1])
        torch.testing.assert_close(out[:, 0], -images)
    finally:
        del PERTURBATIONS["test-negate"]
