"""Tests for crp.image.

Expected colours come from zennit's colour-map codes (``zennit.image.CMAPS``), e.g. ``bwr = "00f,80:fff,f00"``:
blue at palette index 0, white at 0x80 = 128, red at 255, linear in between, truncated to uint8. Pixel values
are scaled like zennit: ``int((x - vmin) / (vmax - vmin) * 255)`` clipped to [0, 255].

Gaussian smoothing (torchvision, kernel 3, default sigma 0.15 * 3 + 0.35 = 0.8, reflect padding) of a single
hot pixel, divided by its maximum, gives 1 at the pixel, exp(-1 / (2 * 0.8**2)) = 0.458 at its 4 direct
neighbours, 0.458**2 = 0.210 at its diagonal neighbours and 0 elsewhere.
"""

import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from crp._image.render import crop_box
from crp.image import get_crop_range, imgify, plot_grid, vis_img_heatmap, vis_opaque_img

REPO = Path(__file__).resolve().parents[1]
BLUE, WHITE, RED = (0, 0, 255), (255, 255, 255), (255, 0, 0)


def rgb(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"))


def hot_pixel_batch(row: int, col: int, size: int = 8, value: float = 2.0) -> tuple[torch.Tensor, torch.Tensor]:
    """One 3-channel image of ones (pixel (0, 0) is 0) and a heatmap that is zero except at (row, col)."""
    data = torch.ones(1, 3, size, size)
    data[0, :, 0, 0] = 0.0
    heat = torch.zeros(1, size, size)
    heat[0, row, col] = value
    return data, heat


# ----------------------------------------------------------------------------------------------- imgify


def test_imgify_gray_with_bounds():
    # (x - 0) / 3 * 255 = 0, 85, 170, 255; "gray" is "000,fff", so index i is the grey (i, i, i)
    image = imgify(np.array([[0.0, 1.0], [2.0, 3.0]]), cmap="gray", vmin=0, vmax=3)
    assert image.mode == "P"
    np.testing.assert_array_equal(np.asarray(image), [[0, 85], [170, 255]])
    np.testing.assert_array_equal(rgb(image)[..., 0], [[0, 85], [170, 255]])
    np.testing.assert_array_equal(rgb(image)[..., 0], rgb(image)[..., 2])


def test_imgify_symmetric_and_unaligned_scaling():
    heat = torch.tensor([[-0.5, 0.0], [0.5, 1.0]])
    # symmetric: bounds -1, 1 -> (x + 1) / 2 * 255 = 63.75, 127.5, 191.25, 255
    np.testing.assert_array_equal(np.asarray(imgify(heat, symmetric=True)), [[63, 127], [191, 255]])
    # unaligned: bounds -0.5, 1 -> (x + 0.5) / 1.5 * 255 = 0, 85, 170, 255
    np.testing.assert_array_equal(np.asarray(imgify(heat)), [[0, 85], [170, 255]])


def test_imgify_bwr_colours():
    colours = rgb(imgify(torch.tensor([[-1.0, 0.0], [0.5, 1.0]]), symmetric=True))
    # indices 0, 127, 191, 255; 127 is 127/128 of the way blue -> white: 255 * 127 / 128 = 253.0;
    # 191 is 63/127 of the way white -> red: 255 * 64 / 127 = 128.5
    np.testing.assert_array_equal(colours, [[BLUE, (253, 253, 255)], [(255, 128, 128), RED]])


@pytest.mark.parametrize(
    "cmap, low, mid, high",
    [
        ("coldnhot", (0, 255, 255), (0, 0, 0), WHITE),  # "0ff,00f,80:000,f00,ff0,fff"
        ("france", (0x00, 0x55, 0xA4), WHITE, (0xEF, 0x41, 0x35)),  # "0055a4,80:fff,ef4135"
        ("seismic", (0, 0, 0xD0), (0xD0, 0xD0, 0xD0), (0xD0, 0, 0)),  # "0000d0,80:d0d0d0,d00000"
    ],
)
def test_imgify_named_colour_maps(cmap, low, mid, high):
    indices = np.array([[0, 128, 255]], dtype=np.uint8)  # uint8 data is used as palette indices
    np.testing.assert_array_equal(rgb(imgify(indices, cmap=cmap))[0], [low, mid, high])


def test_imgify_vmin_vmax_clip_and_level():
    image = imgify(np.array([[-5.0, 0.0, 5.0]]), vmin=-1.0, vmax=1.0)
    np.testing.assert_array_equal(np.asarray(image), [[0, 127, 255]])
    # level 0 squeezes the whole palette onto its centre, 127.5 / 128 of the way blue -> white: 254.0
    flat = rgb(imgify(np.array([[-1.0, 1.0]]), level=0.0))
    np.testing.assert_array_equal(flat, [[(254, 254, 255), (254, 254, 255)]])


def test_imgify_constant_input_needs_no_division():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        zero = imgify(np.zeros((2, 2), dtype=np.float32), symmetric=True)
        constant = imgify(np.full((2, 2), 3.0))
    np.testing.assert_array_equal(np.asarray(zero), np.full((2, 2), 127))  # zero maps to the centre, as usual
    np.testing.assert_array_equal(np.asarray(constant), np.zeros((2, 2)))


def test_imgify_colour_layouts():
    chw = torch.rand(3, 4, 5, generator=torch.Generator().manual_seed(0))
    image = imgify(chw)
    assert image.mode == "RGB" and image.size == (5, 4)
    expected = ((chw - chw.min()) / (chw.max() - chw.min()) * 255).clamp(0, 255).to(torch.uint8)
    np.testing.assert_array_equal(np.asarray(image), expected.permute(1, 2, 0).numpy())
    np.testing.assert_array_equal(np.asarray(imgify(chw.permute(1, 2, 0).numpy())), np.asarray(image))
    assert imgify(np.zeros((3, 4, 3))).size == (4, 3)  # a trailing colour axis wins, as in zennit
    assert imgify(np.zeros((1, 4, 5))).mode == "P"
    uint8 = np.arange(36, dtype=np.uint8).reshape(3, 4, 3)
    np.testing.assert_array_equal(np.asarray(imgify(uint8)), uint8)  # uint8 is not rescaled


def test_imgify_grid_layout_and_fill():
    batch = np.stack([np.full((2, 3), 10 * (k + 1), dtype=np.uint8) for k in range(5)])
    grid = np.asarray(imgify(batch, grid=True))  # 5 samples: int(sqrt(5)) = 2 columns, 3 rows
    assert grid.shape == (6, 6)
    cells = grid.reshape(3, 2, 2, 3).transpose(0, 2, 1, 3).reshape(6, 2, 3)[:, 0, 0]
    np.testing.assert_array_equal(cells, [10, 20, 30, 40, 50, 10])  # row by row; empty cell = batch min
    filled = np.asarray(imgify(batch, grid=True, gridfill=7))
    assert filled[4:, 3:].max() == 7
    np.testing.assert_array_equal(np.asarray(imgify(batch, grid=(1, 2))), np.hstack([batch[0], batch[1]]))


def test_imgify_grid_normalises_each_sample():
    batch = torch.stack([torch.arange(6.0).reshape(2, 3) * (k + 1) for k in range(4)])
    grid = np.asarray(imgify(batch, grid=True))  # 2 x 2 grid of 2 x 3 samples, each scaled to 0..255
    expected = np.array([[0, 51, 102], [153, 204, 255]])
    np.testing.assert_array_equal(grid, np.tile(expected, (2, 2)))
    rgb_grid = imgify(torch.rand(3, 3, 4, 5), grid=True)  # NCHW: 1 column, 3 rows
    assert rgb_grid.mode == "RGB" and rgb_grid.size == (5, 12)


def test_imgify_resize_and_padding():
    heat = np.arange(35.0).reshape(7, 5)
    assert imgify(heat, resize=20).size == (14, 20)  # longer side 7 -> 20, 5 * 20 // 7 = 14
    assert imgify(heat, resize=(10, 4)).size == (10, 4)
    padded = imgify(heat, resize=20, padding=True)
    assert padded.mode == "RGBA" and padded.size == (20, 20)
    alpha = np.asarray(padded)[..., 3]
    assert (alpha[:, :3] == 0).all() and (alpha[:, 17:] == 0).all() and (alpha[:, 3:17] == 255).all()
    np.testing.assert_array_equal(np.asarray(padded)[:, 3:17, :3], rgb(imgify(heat, resize=20)))
    assert imgify(Image.new("RGB", (4, 2)), padding=True).size == (4, 4)


def test_imgify_works_with_this_pillow_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        image = imgify(torch.randn(4, 4, requires_grad=True), cmap="coldnhot")
        image.convert("RGBA").tobytes()
        image.resize((8, 8)).save(os.devnull, format="PNG")


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"image": [[0.0, 1.0]]}, TypeError, "torch.Tensor, numpy.ndarray or PIL.Image.Image, got list"),
        ({"image": np.zeros(4)}, ValueError, r"2 or 3 axes, got shape \(4,\)"),
        ({"image": np.zeros((2, 2, 2, 2))}, ValueError, r"2 or 3 axes, got shape \(2, 2, 2, 2\)"),
        ({"image": np.zeros((2, 4, 4))}, ValueError, r"shape \(2, 4, 4\) has no colour axis of size 1 or 3"),
        ({"image": np.zeros((4, 4)), "grid": True}, ValueError, r"3 or 4 axes with grid"),
        ({"image": np.zeros((2, 2, 4, 4)), "grid": True}, ValueError, "no colour axis"),
        ({"image": np.zeros((2, 4, 4)), "grid": (2,)}, ValueError,
         r"grid must be True, False or a pair of positive ints \(rows, cols\), got \(2,\)\."),
        ({"image": np.zeros((2, 4, 4)), "grid": (0, 2)}, ValueError,
         r"grid must be an int >= 1, got 0\. It is True, False or a pair of positive ints .*; got \(0, 2\)"),
        ({"image": np.zeros((2, 4, 4)), "grid": (2, 1.0)}, TypeError, r"grid must be an int >= 1, got 1.0"),
        ({"image": np.zeros((2, 4, 4)), "grid": "2x2"}, TypeError, r"grid must be True, False or a pair .* got '2x2'"),
        ({"image": np.zeros((4, 4)), "resize": 0}, ValueError,
         r"resize must be an int >= 1, got 0\. It is None, a positive int or a pair of positive ints \(width, "),
        ({"image": np.zeros((4, 4)), "resize": 2.5}, TypeError, "resize must be an int >= 1, got 2.5"),
        ({"image": np.zeros((4, 4)), "resize": (4,)}, ValueError, r"resize must be None, .* got \(4,\)"),
        ({"image": np.zeros((4, 4)), "resize": (4, -1)}, ValueError,
         r"resize must be an int >= 1, got -1\. .* got \(4, -1\)"),
        ({"image": np.zeros((4, 4)), "resize": True}, TypeError, "resize must be an int >= 1, got True"),
    ],
)
def test_imgify_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        imgify(**kwargs)


# ------------------------------------------------------------------------------------- crop and overlays


def test_crop_box_keeps_last_row_and_column():
    heat = torch.zeros(8, 8)
    heat[1, 2] = heat[4, 6] = 1.0
    assert crop_box(heat, 0.5) == (1, 5, 2, 7)
    heat = torch.zeros(8, 8)
    heat[7, 7] = 1.0
    assert crop_box(heat, 0.5) == (7, 8, 7, 8)
    assert crop_box(torch.zeros(6, 5), 0.1) == (0, 6, 0, 5)  # nothing relevant: no crop


def test_get_crop_range_returns_zennit_crps_values_for_slicing():
    heat = torch.zeros(8, 8)
    heat[1, 2] = heat[4, 6] = 1.0
    assert get_crop_range(heat, 0.5) == (1, 4, 2, 6)  # the last row and column, which a slice leaves out
    image = torch.arange(64.0).view(8, 8)
    r0, r1, c0, c1 = get_crop_range(heat, 0.5)
    assert image[r0:r1, c0:c1].shape == (3, 4)
    heat = torch.zeros(8, 8)
    heat[7, 7] = 1.0
    assert get_crop_range(heat, 0.5) == (0, -1, 0, -1)  # a single pixel: no region
    assert get_crop_range(torch.zeros(6, 5), 0.1) == (0, -1, 0, -1)  # nothing relevant
    heat[7, 5] = 1.0  # one row, two columns
    assert get_crop_range(heat, 0.5) == (7, 7, 5, 7)


def test_vis_opaque_img_dims_low_relevance():
    data, heat = hot_pixel_batch(3, 3, size=4)
    (image,) = vis_opaque_img(data, heat, alpha=0.3, vis_th=0.3, kernel_size=3)
    # visible: the hot pixel and its direct neighbours (0.458 > 0.3); the rest is 0.3, pixel (0, 0) is 0;
    # min-max scaling: 1 -> 255, 0.3 -> int(76.5) = 76
    expected = np.full((4, 4), 76)
    expected[0, 0] = 0
    expected[3, 3] = expected[2, 3] = expected[3, 2] = 255
    np.testing.assert_array_equal(np.asarray(image), np.repeat(expected[..., None], 3, axis=2))
    (image,) = vis_opaque_img(data.numpy(), heat.numpy(), alpha=0.3, vis_th=0.2, kernel_size=3)
    assert np.asarray(image)[2, 2, 0] == 255  # the diagonal neighbour (0.210) is above vis_th = 0.2


@pytest.mark.parametrize("row, col, box", [(3, 3, (2, 5, 2, 5)), (7, 7, (6, 8, 6, 8)), (0, 7, (0, 2, 6, 8))])
def test_vis_opaque_img_rf_crop(row, col, box):
    data, heat = hot_pixel_batch(row, col)
    data[0, :, 0, 0] = 1.0
    (image,) = vis_opaque_img(data, heat, rf=True, vis_th=0.3, crop_th=0.1, kernel_size=3)
    # the crop holds the hot pixel and every neighbour inside the image, the last row and column included
    r0, r1, c0, c1 = box
    visible = torch.zeros(8, 8, dtype=torch.bool)
    visible[row, max(col - 1, 0) : col + 2] = visible[max(row - 1, 0) : row + 2, col] = True
    np.testing.assert_array_equal(np.asarray(image)[..., 0], visible[r0:r1, c0:c1].numpy() * 255)


def test_vis_opaque_img_rf_keeps_image_when_crop_is_black():
    data, heat = hot_pixel_batch(3, 3)
    data[0, :, 2:5, 2:5] = 0.0
    (image,) = vis_opaque_img(data, heat, rf=True, kernel_size=3)
    assert image.size == (8, 8)
    (image,) = vis_opaque_img(data, torch.zeros(1, 8, 8), rf=True, kernel_size=3)
    assert image.size == (8, 8)


def test_vis_img_heatmap_matches_imgify_and_crops():
    data, heat = hot_pixel_batch(7, 7)
    heat[0, 6, 7] = -0.1  # smoothed, the crop is still rows 6..7 and columns 6..7 (all > 0.1 there)
    images, heats = vis_img_heatmap(data, heat, kernel_size=3)
    np.testing.assert_array_equal(np.asarray(images[0]), np.asarray(imgify(data[0])))
    np.testing.assert_array_equal(np.asarray(heats[0]), np.asarray(imgify(heat[0], symmetric=True)))
    images, heats = vis_img_heatmap(data, heat, rf=True, kernel_size=3, cmap="france", symmetric=False)
    assert images[0].size == heats[0].size == (2, 2)
    # unaligned scaling of the cropped heatmap [[0, -0.1], [0, 2]]: (x + 0.1) / 2.1 * 255 -> 12, 0, 12, 255
    np.testing.assert_array_equal(np.asarray(heats[0]), [[12, 0], [12, 255]])
    assert tuple(rgb(heats[0])[1, 1]) == (0xEF, 0x41, 0x35)


def test_vis_functions_return_one_image_per_sample():
    data = torch.rand(3, 1, 10, 10, generator=torch.Generator().manual_seed(0))
    heat = torch.randn(3, 10, 10, generator=torch.Generator().manual_seed(1))
    assert len(vis_opaque_img(data, heat, rf=True, kernel_size=5)) == 3
    images, heats = vis_img_heatmap(data[:, 0], heat, kernel_size=5)
    assert len(images) == len(heats) == 3 and all(image.size == (10, 10) for image in images)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"alpha": 1.5}, ValueError, r"alpha must lie in \[0, 1\], got 1.5"),
        ({"alpha": -0.1}, ValueError, r"alpha must lie in \[0, 1\], got -0.1"),
        ({"alpha": "0.5"}, TypeError, r"alpha must be a number, got '0.5'"),
        ({"vis_th": 1.0}, ValueError, r"vis_th must lie in \[0, 1\), got 1.0"),
        ({"crop_th": -0.1}, ValueError, r"crop_th must lie in \[0, 1\), got -0.1"),
        ({"kernel_size": 4}, ValueError, "kernel_size must be a positive odd int, got 4"),
        ({"kernel_size": 3.0}, TypeError, r"kernel_size must be an int >= 1, got 3.0\. It is the odd side of the"),
        ({"heatmaps": torch.zeros(4, 4)}, ValueError, r"heatmaps must have shape \(N, H, W\), got \(4, 4\)"),
        ({"data_batch": torch.zeros(4, 4)}, ValueError, r"data_batch must have shape .* got \(4, 4\)"),
        ({"data_batch": torch.zeros(1, 4, 4, 4)}, ValueError, r"with C = 1 or 3, or \(N, H, W\), got \(1, 4, 4, 4\)"),
        ({"data_batch": torch.zeros(2, 3, 4, 4)}, ValueError, r"data_batch \(2, 3, 4, 4\) and heatmaps \(1, 4, 4\)"),
        ({"data_batch": torch.zeros(1, 3, 4, 5)}, ValueError, "share the batch size N and the spatial size"),
    ],
)
def test_vis_opaque_img_errors(kwargs, error, match):
    arguments = {"data_batch": torch.zeros(1, 3, 4, 4), "heatmaps": torch.zeros(1, 4, 4), **kwargs}
    with pytest.raises(error, match=match):
        vis_opaque_img(**arguments)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"crop_th": 1.0}, ValueError, r"crop_th must lie in \[0, 1\), got 1.0"),
        ({"crop_th": None}, TypeError, r"crop_th must be a number, got None"),
        ({"kernel_size": 0}, ValueError, "kernel_size must be an int >= 1, got 0"),
        ({"heatmaps": torch.zeros(2, 4, 4)}, ValueError, r"data_batch \(1, 3, 4, 4\) and heatmaps \(2, 4, 4\)"),
    ],
)
def test_vis_img_heatmap_errors(kwargs, error, match):
    arguments = {"data_batch": torch.zeros(1, 3, 4, 4), "heatmaps": torch.zeros(1, 4, 4), **kwargs}
    with pytest.raises(error, match=match):
        vis_img_heatmap(**arguments)


# ------------------------------------------------------------------------------------------- plot_grid


@pytest.fixture
def pyplot():
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    yield plt
    plt.close("all")


def reference_dict() -> dict:
    generator = torch.Generator().manual_seed(0)
    return {
        concept: (
            [torch.rand(3, 6, 4, generator=generator) for _ in range(3)],
            [torch.randn(6, 4, generator=generator) for _ in range(3)],
        )
        for concept in (3, 7)
    }


@pytest.mark.usefixtures("pyplot")
def test_plot_grid_layout_and_colour_mapping():
    refs = reference_dict()
    fig = plot_grid(refs, figsize=(4, 4))
    assert len(fig.axes) == 2 * 2 * 3  # concepts x (images, heatmaps) x samples
    assert [ax.get_ylabel() for ax in fig.axes[::6]] == ["3", "7"]
    heat_axis = fig.axes[3]  # concept 3, heatmap row, first column
    expected = np.asarray(imgify(refs[3][1][0], symmetric=True, padding=True))
    np.testing.assert_array_equal(heat_axis.images[0].get_array(), expected)
    image_axis = fig.axes[0]
    expected = np.asarray(imgify(refs[3][0][0], padding=True))
    np.testing.assert_array_equal(image_axis.images[0].get_array(), expected)
    assert image_axis.images[0].get_array().shape == (6, 6, 4)


@pytest.mark.usefixtures("pyplot")
def test_plot_grid_cmap_dim_and_single_rows():
    refs = reference_dict()
    fig = plot_grid({k: (heats, images) for k, (images, heats) in refs.items()}, cmap_dim=0, cmap="gray")
    expected = np.asarray(imgify(refs[3][1][0], cmap="gray", symmetric=True, padding=True).convert("RGBA"))
    np.testing.assert_array_equal(fig.axes[0].images[0].get_array(), expected)
    fig = plot_grid({0: torch.rand(4, 3, 5, 5)}, resize=10, padding=False)
    assert len(fig.axes) == 4 and fig.axes[0].images[0].get_array().shape == (10, 10, 4)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"cmap_dim": -1}, ValueError, r"cmap_dim must be an int >= 0, got -1\. It indexes the list of each tuple"),
        ({"cmap_dim": "1"}, TypeError, "cmap_dim must be an int >= 0, got '1'"),
        ({"ref_c": {}}, ValueError, r"ref_c must be a non-empty dict of concept -> images, got \{\}"),
        ({"ref_c": [torch.zeros(3, 4, 4)]}, TypeError, r"ref_c must be a non-empty dict .* got \[tensor"),
        ({"ref_c": {5: 1.0}}, TypeError, r"ref_c\[5\] must be a list/batch of images .* got 1.0"),
        ({"ref_c": {5: ([torch.zeros(4, 4)], 2)}}, TypeError, r"ref_c\[5\] must be .* got 2"),
    ],
)
@pytest.mark.usefixtures("pyplot")
def test_plot_grid_errors(kwargs, error, match):
    arguments = {"ref_c": {0: [torch.zeros(4, 4)]}, **kwargs}
    with pytest.raises(error, match=match):
        plot_grid(**arguments)


def test_import_does_not_load_matplotlib():
    code = "import sys, crp.image; assert 'matplotlib' not in sys.modules, 'matplotlib was imported'"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
