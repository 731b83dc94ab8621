"""Turn heatmaps and images into Pillow images, reference-image overlays and plot grids.

The conversion follows :py:func:`zennit.image.imgify` (same layout rules, normalisation and colour maps
from :py:data:`zennit.image.CMAPS`), but builds the palette image itself, so it works with Pillow 11 to 13
and zennit 0.5.1 and 1.0. Single-channel arrays become palette (``"P"``) images, three-channel arrays
become ``"RGB"`` images, and padded images become ``"RGBA"`` images.

matplotlib is imported only inside :py:func:`plot_grid`, and torchvision only inside the functions that
smooth heatmaps.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Tuple, Union

import numpy as np
import torch
from PIL import Image
from zennit.image import palette

from crp._utils.checks import check_int, check_kind, check_number, check_positive_int, check_type, check_value

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["get_crop_range", "crop_box", "imgify", "pad_to_common", "plot_grid", "vis_img_heatmap", "vis_opaque_img"]

ArrayLike = Union[torch.Tensor, np.ndarray]
#: ``(row_start, row_stop, col_start, col_stop)``, half-open: ``array[..., r0:r1, c0:c1]`` is the crop.
CropBox = Tuple[int, int, int, int]


def _to_numpy(image: ArrayLike) -> np.ndarray:
    """Return ``image`` as a numpy array on the CPU (bfloat16 tensors become float32)."""
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu()
        if image.dtype == torch.bfloat16:
            image = image.float()
        return image.numpy()
    return np.asarray(image)


def _channels_last(array: np.ndarray, batched: bool) -> np.ndarray:
    """Move a colour axis of size 1 or 3 to the end; a trailing colour axis wins over a leading one."""
    lead = 1 if batched else 0
    if array.ndim not in (lead + 2, lead + 3):
        raise ValueError(
            f"image must have {lead + 2} or {lead + 3} axes{' with grid' if batched else ''}, got shape "
            f"{array.shape}; pass a 2-D heatmap or an image with 1 or 3 channels first or last"
            f"{' behind the batch axis' if batched else ''}"
        )
    if array.ndim == lead + 3 and array.shape[-1] not in (1, 3):
        if array.shape[lead] not in (1, 3):
            raise ValueError(
                f"image of shape {array.shape} has no colour axis of size 1 or 3 first or last; "
                "pass a 2-D heatmap, or a CHW or HWC image with 1 or 3 channels"
            )
        array = np.moveaxis(array, lead, -1)
    return array


def _to_uint8(array: np.ndarray, vmin: Any, vmax: Any, symmetric: bool, batched: bool) -> np.ndarray:
    """Scale ``array`` from ``[vmin, vmax]`` to uint8 like zennit (per sample when ``batched``).

    Bounds default to the minimum and maximum, or to minus and plus the absolute maximum when ``symmetric``.
    A zero-width interval maps to 0, or to the centre 0.5 when ``symmetric`` (e.g. an all-zero heatmap).
    """
    if array.dtype == np.uint8:
        return array
    axes = tuple(range(1 if batched else 0, array.ndim))
    if symmetric:
        high = np.abs(array).max(axes, keepdims=True)
        low = -high
    else:
        low, high = array.min(axes, keepdims=True), array.max(axes, keepdims=True)
    low = low if vmin is None else np.asarray(vmin)
    high = high if vmax is None else np.asarray(vmax)
    width = high - low
    with np.errstate(divide="ignore", invalid="ignore"):
        unit = (array - low) / width
    unit = np.where(width == 0, 0.5 if symmetric else 0.0, unit)
    return (unit * 255).clip(0, 255).astype(np.uint8)


def _gridify(array: np.ndarray, grid: bool | Sequence[int], gridfill: Any) -> np.ndarray:
    """Tile a batch ``(N, H, W[, C])`` row by row into one ``(rows * H, cols * W, C)`` array.

    ``grid=True`` uses ``int(sqrt(N))`` columns and as many rows as needed; ``(rows, cols)`` is used as given
    (samples that do not fit are left out). Empty cells get ``gridfill``, by default the batch minimum.
    """
    if array.ndim == 3:
        array = array[..., None]
    num, height, width, channels = array.shape
    if isinstance(grid, bool):  # True here; imgify does not tile for False
        cols = max(int(num**0.5), 1)
        rows = (num + cols - 1) // cols
    else:
        rows, cols = grid  # a pair, see _check_grid
    if gridfill is None:
        fill = array.min((0, 1, 2), keepdims=True)
    else:
        fill = np.asarray(gridfill).astype(array.dtype)
    cells = np.zeros((rows * cols, height, width, channels), dtype=array.dtype) + fill
    used = min(num, rows * cols)
    cells[:used] = array[:used]
    tiled = cells.reshape(rows, cols, height, width, channels).transpose(0, 2, 1, 3, 4)
    return tiled.reshape(rows * height, cols * width, channels)


def _check_grid(grid: Any) -> None:
    """Raise unless ``grid`` is a bool or a pair of positive ints ``(rows, cols)``."""
    if isinstance(grid, bool):
        return
    expected = "True, False or a pair of positive ints (rows, cols)"
    check_type(grid, (tuple, list), name="grid", expected=expected)
    check_value(len(grid) == 2, grid, name="grid", expected=expected)
    for n in grid:
        check_positive_int(n, name="grid", fix=f"It is {expected}; got {grid!r}.")


def _to_pil(array: np.ndarray, cmap: Any, level: float) -> Image.Image:
    """Make a palette image from a one-channel uint8 ``(H, W[, 1])`` array, or an RGB image from three channels."""
    if array.ndim == 3 and array.shape[-1] == 3:
        return Image.fromarray(np.ascontiguousarray(array))
    image = Image.fromarray(np.ascontiguousarray(array.reshape(array.shape[:2])))
    # Pillow 12+ rejects numpy palettes, so hand it the (256, 3) palette as bytes; "L" becomes "P" here.
    image.putpalette(np.ascontiguousarray(palette(cmap, level), dtype=np.uint8).tobytes())
    return image


def _resize(image: Image.Image, resize: int | Sequence[int]) -> Image.Image:
    """Resize with nearest neighbours: an int sets the longer side keeping the aspect, a pair sets (w, h)."""
    expected = "None, a positive int or a pair of positive ints (width, height)"
    if isinstance(resize, (tuple, list)):
        check_value(len(resize) == 2, resize, name="resize", expected=expected)
        size = (check_positive_int(resize[0], name="resize", fix=f"It is {expected}; got {resize!r}."),
                check_positive_int(resize[1], name="resize", fix=f"It is {expected}; got {resize!r}."))
    else:
        side = check_positive_int(resize, name="resize", fix=f"It is {expected}.")
        longest = max(image.size)
        size = (max(image.size[0] * side // longest, 1), max(image.size[1] * side // longest, 1))
    return image.resize(size, Image.Resampling.NEAREST)


def _pad_square(image: Image.Image) -> Image.Image:
    """Centre ``image`` on a transparent RGBA square whose side is the image's longer side."""
    side = max(image.size)
    square = Image.new("RGBA", (side, side), (0, 0, 0, 0))
    square.paste(image, ((side - image.size[0]) // 2, (side - image.size[1]) // 2))
    return square


def imgify(  # noqa: PLR0917 - zennit-crp's signature, all positional
    image: ArrayLike | Image.Image,
    cmap: Any = "bwr",
    vmin: float | np.ndarray | None = None,
    vmax: float | np.ndarray | None = None,
    symmetric: bool = False,
    level: float = 1.0,
    grid: bool | Sequence[int] = False,
    gridfill: Any = None,
    resize: int | Sequence[int] | None = None,
    padding: bool = False,
) -> Image.Image:
    """Convert a heatmap, an image or a batch of them into a Pillow image.

    Behaves like :py:func:`zennit.image.imgify`, with resizing and square padding added, and works with any
    Pillow version because the palette is built here.

    Parameters
    ----------
    image : torch.Tensor, numpy.ndarray or PIL.Image.Image
        A 2-D heatmap ``(H, W)``, or an image with 1 or 3 channels first or last (``CHW`` or ``HWC``; a trailing
        axis of size 1 or 3 is taken as the colour axis first). With ``grid``, a batch ``(N, H, W)`` or
        ``(N, C, H, W)`` / ``(N, H, W, C)``. A Pillow image is only resized and padded.
    cmap : str or zennit.cmap.ColorMap, optional
        Colour map for single-channel data: a name in :py:data:`zennit.image.CMAPS` (``"bwr"``, ``"coldnhot"``,
        ``"france"``, ...), a zennit colour-map source code, or a ``ColorMap``.
    vmin, vmax : float or numpy.ndarray, optional
        Values mapped to the lowest and highest colour. Default: the data's minimum and maximum (per sample with
        ``grid``), or minus and plus its absolute maximum if ``symmetric``. uint8 data is used as is.
    symmetric : bool, optional
        Centre the default bounds on zero, so zero maps to the middle of the colour map.
    level : float, optional
        Colour-map level as in :py:func:`zennit.image.palette` (1.0 keeps the full range).
    grid : bool or (int, int), optional
        Tile a batch into one image: ``True`` for a near-square grid with ``int(sqrt(N))`` columns, or
        ``(rows, cols)``.
    gridfill : int, optional
        uint8 value for empty grid cells; default is the batch minimum.
    resize : int or (int, int), optional
        An int sets the longer side keeping the aspect ratio; a pair sets ``(width, height)``. Nearest neighbours.
    padding : bool, optional
        Pad to a square (side: the longer side) with transparent pixels; the result is an RGBA image.

    Returns
    -------
    PIL.Image.Image
        ``"P"`` (palette) for single-channel data, ``"RGB"`` for three channels, ``"RGBA"`` when padded.

    Raises
    ------
    TypeError
        If ``image`` is not a tensor, numpy array or Pillow image, or ``grid`` or ``resize`` are of a wrong type.
    ValueError
        If the shape has no valid layout, or ``grid`` or ``resize`` have a wrong value.
    """
    if isinstance(image, Image.Image):
        result = image
    elif isinstance(image, (torch.Tensor, np.ndarray)):
        _check_grid(grid)
        batched = grid is not False
        array = _channels_last(_to_numpy(image), batched)
        array = _to_uint8(array, vmin, vmax, symmetric, batched)
        if batched:
            array = _gridify(array, grid, gridfill)
        result = _to_pil(array, cmap, level)
    else:
        raise TypeError(f"image must be a torch.Tensor, numpy.ndarray or PIL.Image.Image, got {type(image).__name__}")
    if resize is not None:
        result = _resize(result, resize)
    if padding:
        result = _pad_square(result)
    return result


def pad_to_common(images: Sequence[Image.Image], size: tuple[int, int] | None = None,
                  fill: tuple[int, int, int] = (224, 224, 224)) -> list[Image.Image]:
    """Centre every image on a canvas of one common size, never scaling it (receptive-field crops of one concept).

    Parameters
    ----------
    images : sequence of PIL.Image.Image
        Images of any sizes and modes (converted to RGB).
    size : (int, int), optional
        ``(width, height)`` of the canvas; default the largest width and the largest height among ``images``.
    fill : (int, int, int), optional
        RGB colour of the padding; the default light grey differs from the white of zero relevance.

    Returns
    -------
    list of PIL.Image.Image
        RGB images of ``size``; an image larger than ``size`` is cut to it around its centre.
    """
    pictures = [check_type(image, Image.Image, name="images", expected="a sequence of PIL images").convert("RGB")
                for image in images]
    if size is None:
        size = (max((p.size[0] for p in pictures), default=1), max((p.size[1] for p in pictures), default=1))
    padded = []
    for picture in pictures:
        canvas = Image.new("RGB", size, fill)
        canvas.paste(picture, ((size[0] - picture.size[0]) // 2, (size[1] - picture.size[1]) // 2))
        padded.append(canvas)
    return padded


def crop_box(heatmap: torch.Tensor, crop_th: float) -> CropBox:
    """Return the smallest box holding every pixel of ``heatmap`` above ``crop_th``, with exclusive stops.

    This library's drawing functions crop with it: unlike :func:`get_crop_range`, the box includes the last row
    and column where the mask is set.

    Parameters
    ----------
    heatmap : torch.Tensor
        A 2-D heatmap ``(H, W)``, usually smoothed and max-normalised.
    crop_th : float
        Pixels with ``heatmap > crop_th`` are kept.

    Returns
    -------
    (int, int, int, int)
        ``(row_start, row_stop, col_start, col_stop)``, so ``x[..., r0:r1, c0:c1]`` is the crop. If no pixel
        exceeds ``crop_th``, the whole heatmap ``(0, H, 0, W)``.
    """
    rows, cols = torch.where(torch.as_tensor(heatmap) > crop_th)
    if rows.numel() == 0:
        return 0, heatmap.shape[0], 0, heatmap.shape[1]
    return int(rows.min()), int(rows.max()) + 1, int(cols.min()), int(cols.max()) + 1


def get_crop_range(heatmap: torch.Tensor, crop_th: float) -> CropBox:
    """Return zennit-crp 0.6's crop range of ``heatmap``: rows and columns where it exceeds ``crop_th``.

    Kept as zennit-crp returned it, because callers slice with it: the stops are the *last* row and column
    above the threshold (``x[..., r0:r1, c0:c1]`` drops them), and ``(0, -1, 0, -1)`` means no crop region
    (nothing above the threshold, or a single pixel). This library's own drawing functions use a box that keeps
    the last row and column.

    Parameters
    ----------
    heatmap : torch.Tensor
        A 2-D heatmap ``(H, W)``.
    crop_th : float
        Pixels with ``heatmap > crop_th`` count.

    Returns
    -------
    (int, int, int, int)
        ``(row_start, row_last, col_start, col_last)``.
    """
    rows, cols = torch.where(torch.as_tensor(heatmap) > crop_th)
    if rows.numel() == 0:
        return 0, -1, 0, -1
    row1, row2, col1, col2 = int(rows.min()), int(rows.max()), int(cols.min()), int(cols.max())
    if row1 >= row2 and col1 >= col2:
        return 0, -1, 0, -1
    return row1, row2, col1, col2


def _smooth(heatmap: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Gaussian-blur a 2-D heatmap (torchvision's default sigma) and divide it by its maximum."""
    from torchvision.transforms.functional import gaussian_blur

    blurred = gaussian_blur(heatmap[None].float(), kernel_size=[kernel_size, kernel_size])[0]
    return blurred / (blurred.max() + 1e-10)


def _check_fraction(name: str, value: float, closed_right: bool = False) -> None:
    """Raise unless ``0 <= value < 1`` (``<= 1`` when ``closed_right``)."""
    check_number(value, name=name)
    if not (0 <= value <= 1 if closed_right else 0 <= value < 1):
        raise ValueError(f"{name} must lie in [0, {'1]' if closed_right else '1)'}, got {value!r}")


def _check_batch(data_batch: ArrayLike, heatmaps: ArrayLike, kernel_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Return both batches as tensors after checking ``(N, [C,] H, W)`` against ``(N, H, W)`` and the kernel."""
    data = torch.as_tensor(data_batch).detach().cpu()
    heat = torch.as_tensor(heatmaps).detach().cpu()
    if heat.ndim != 3:
        raise ValueError(f"heatmaps must have shape (N, H, W), got {tuple(heat.shape)}")
    if data.ndim not in (3, 4) or (data.ndim == 4 and data.shape[1] not in (1, 3)):
        raise ValueError(
            f"data_batch must have shape (N, C, H, W) with C = 1 or 3, or (N, H, W), got {tuple(data.shape)}"
        )
    if data.shape[0] != heat.shape[0] or data.shape[-2:] != heat.shape[-2:]:
        raise ValueError(
            f"data_batch {tuple(data.shape)} and heatmaps {tuple(heat.shape)} must share the batch size N and "
            "the spatial size (H, W)"
        )
    check_positive_int(kernel_size, name="kernel_size", fix="It is the odd side of the Gaussian smoothing kernel.")
    check_value(kernel_size % 2 == 1, kernel_size, name="kernel_size", expected="a positive odd int")
    return data, heat


def _channels_last_image(image: torch.Tensor) -> torch.Tensor:
    """Turn a ``CHW`` image into ``HWC``, so that :py:func:`imgify` cannot mistake a narrow crop's width for C."""
    return image.permute(1, 2, 0) if image.ndim == 3 else image


def _crop_pair(image: torch.Tensor, other: torch.Tensor, box: CropBox) -> tuple[torch.Tensor, torch.Tensor]:
    """Crop both tensors' last two axes to ``box``, unless the image crop is all zero or ``other``'s is empty."""
    r0, r1, c0, c1 = box
    image_crop, other_crop = image[..., r0:r1, c0:c1], other[..., r0:r1, c0:c1]
    if image_crop.any() and other_crop.any():
        return image_crop, other_crop
    return image, other


@torch.no_grad()
def vis_opaque_img(  # noqa: PLR0917 - zennit-crp's signature, all positional
    data_batch: ArrayLike,
    heatmaps: ArrayLike,
    rf: bool = False,
    alpha: float = 0.3,
    vis_th: float = 0.2,
    crop_th: float = 0.1,
    kernel_size: int = 19,
) -> list[Image.Image]:
    """Draw reference images with their low-relevance regions dimmed, optionally cropped to the relevant part.

    Each heatmap is Gaussian-smoothed and divided by its maximum; pixels at or below ``vis_th`` are scaled by
    ``alpha``. With ``rf``, the image is cropped to the box of smoothed relevance above ``crop_th`` (last row
    and column included). The result is converted with :py:func:`imgify` (min-max normalised).

    Parameters
    ----------
    data_batch : torch.Tensor or numpy.ndarray
        Images ``(N, C, H, W)`` (or ``(N, H, W)``) as they should be shown, i.e. before preprocessing.
    heatmaps : torch.Tensor or numpy.ndarray
        Conditional heatmaps ``(N, H, W)``, e.g. ``attribution(...).heatmap``.
    rf : bool, optional
        Crop to the relevant region (for heatmaps of single neurons, restricted to their receptive field).
    alpha : float, optional
        Factor in ``[0, 1]`` applied to the pixels of low relevance.
    vis_th : float, optional
        Threshold in ``[0, 1)`` on the smoothed, max-normalised heatmap above which pixels stay bright.
    crop_th : float, optional
        Threshold in ``[0, 1)`` on the smoothed, max-normalised heatmap above which pixels are kept by ``rf``.
    kernel_size : int, optional
        Odd size of the Gaussian kernel (:py:func:`torchvision.transforms.functional.gaussian_blur`).

    Returns
    -------
    list of PIL.Image.Image
        One image per sample; sizes differ when ``rf`` is set.

    Raises
    ------
    TypeError
        If a threshold, ``alpha`` or ``kernel_size`` is not a number (``kernel_size``: an int).
    ValueError
        If a threshold, ``alpha`` or ``kernel_size`` is out of range, or the batch shapes do not match.
    """
    _check_fraction("alpha", alpha, closed_right=True)
    _check_fraction("vis_th", vis_th)
    _check_fraction("crop_th", crop_th)
    data, heat = _check_batch(data_batch, heatmaps, kernel_size)
    images = []
    for image, heatmap in zip(data, heat):
        smoothed = _smooth(heatmap, kernel_size)
        visible = smoothed > vis_th
        if rf:
            image, visible = _crop_pair(image, visible, crop_box(smoothed, crop_th))
        images.append(imgify(_channels_last_image(image * visible + image * ~visible * alpha)))
    return images


@torch.no_grad()
def vis_img_heatmap(  # noqa: PLR0917 - zennit-crp's signature, all positional
    data_batch: ArrayLike,
    heatmaps: ArrayLike,
    rf: bool = False,
    crop_th: float = 0.1,
    kernel_size: int = 19,
    cmap: Any = "bwr",
    vmin: float | None = None,
    vmax: float | None = None,
    symmetric: bool = True,
) -> tuple[list[Image.Image], list[Image.Image]]:
    """Draw reference images next to their colour-mapped heatmaps, optionally cropped to the relevant part.

    With ``rf``, image and (unsmoothed) heatmap are cropped to the box where the Gaussian-smoothed,
    max-normalised heatmap exceeds ``crop_th`` (last row and column included).

    Parameters
    ----------
    data_batch : torch.Tensor or numpy.ndarray
        Images ``(N, C, H, W)`` (or ``(N, H, W)``) as they should be shown, i.e. before preprocessing.
    heatmaps : torch.Tensor or numpy.ndarray
        Conditional heatmaps ``(N, H, W)``.
    rf : bool, optional
        Crop to the relevant region (for heatmaps of single neurons, restricted to their receptive field).
    crop_th : float, optional
        Threshold in ``[0, 1)`` on the smoothed, max-normalised heatmap above which pixels are kept by ``rf``.
    kernel_size : int, optional
        Odd size of the Gaussian kernel used for the crop.
    cmap, vmin, vmax, symmetric
        Passed to :py:func:`imgify` for the heatmaps.

    Returns
    -------
    (list of PIL.Image.Image, list of PIL.Image.Image)
        The images and the heatmaps, one each per sample.

    Raises
    ------
    TypeError
        If ``crop_th`` is not a number or ``kernel_size`` not an int.
    ValueError
        If ``crop_th`` or ``kernel_size`` is out of range, or the batch shapes do not match.
    """
    _check_fraction("crop_th", crop_th)
    data, heat = _check_batch(data_batch, heatmaps, kernel_size)
    images, heat_images = [], []
    for image, heatmap in zip(data, heat):
        if rf:
            box = crop_box(_smooth(heatmap, kernel_size), crop_th)
            image, heatmap = _crop_pair(image, heatmap, box)
        images.append(imgify(_channels_last_image(image)))
        heat_images.append(imgify(heatmap, cmap=cmap, vmin=vmin, vmax=vmax, symmetric=symmetric))
    return images, heat_images


def _reference_rows(ref_c: Mapping[Any, Any]) -> list[tuple[Any, list[Sequence[Any]]]]:
    """Return ``[(concept, [images, ...]), ...]``: a tuple value is a group of rows, anything else one row."""
    expected = "a non-empty dict of concept -> images"
    check_type(ref_c, Mapping, name="ref_c", expected=expected)
    check_value(len(ref_c) > 0, ref_c, name="ref_c", expected=expected)
    rows = []
    for concept, value in ref_c.items():
        group = list(value) if isinstance(value, tuple) else [value]
        for images in group:
            batch = not isinstance(images, (str, bytes, Image.Image)) and hasattr(images, "__len__")
            check_kind(batch, images, name=f"ref_c[{concept!r}]",
                       expected="a list/batch of images or a tuple of such lists")
        rows.append((concept, group))
    return rows


def plot_grid(  # noqa: PLR0917 - zennit-crp's signature, all positional
    ref_c: Mapping[Any, Any],
    cmap_dim: int | None = 1,
    cmap: Any = "bwr",
    vmin: float | None = None,
    vmax: float | None = None,
    symmetric: bool = True,
    resize: int | Sequence[int] | None = None,
    padding: bool = True,
    figsize: tuple[float, float] = (6, 6),
) -> Figure:
    """Plot reference images per concept, one block of rows per concept, labelled with the concept id.

    The figure is created with pyplot and returned, not shown: notebooks display it by themselves, scripts
    call ``matplotlib.pyplot.show()`` or ``fig.savefig(...)``.

    Parameters
    ----------
    ref_c : dict
        Concept id -> list (or batch) of images, or a tuple of such lists, e.g. ``(images, heatmaps)`` as
        returned by reference sampling with heatmaps. Each entry is drawn with :py:func:`imgify`.
    cmap_dim : int or None, optional
        Index of the list in each tuple drawn with ``cmap``, ``vmin``, ``vmax`` and ``symmetric`` (1: the
        second, e.g. heatmaps); the others are drawn with imgify's defaults. None colour-maps no list.
    cmap, vmin, vmax, symmetric
        Passed to :py:func:`imgify` for the list selected by ``cmap_dim``.
    resize, padding
        Passed to :py:func:`imgify` for every image.
    figsize : (float, float), optional
        Figure size in inches.

    Returns
    -------
    matplotlib.figure.Figure
        The figure, one axis per image.

    Raises
    ------
    TypeError
        If ``cmap_dim`` is neither an int nor None, or ``ref_c`` is not a dict of image lists.
    ValueError
        If ``cmap_dim`` is negative or ``ref_c`` is empty.
    """
    if cmap_dim is not None:
        check_int(cmap_dim, name="cmap_dim", minimum=0, fix="It indexes the list of each tuple that is colour-mapped "
                  "(1: the second); None colour-maps none.")
    rows = _reference_rows(ref_c)
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=figsize)
    outer = fig.add_gridspec(len(rows), 1, hspace=0.2)
    for row, (concept, group) in enumerate(rows):
        ncols = max(max(len(images) for images in group), 1)
        inner = outer[row].subgridspec(len(group), ncols, wspace=0, hspace=0.1)
        for sub, images in enumerate(group):
            style = {"cmap": cmap, "vmin": vmin, "vmax": vmax, "symmetric": symmetric} if sub == cmap_dim else {}
            for col, image in enumerate(images):
                ax = fig.add_subplot(inner[sub, col])
                ax.imshow(np.asarray(imgify(image, resize=resize, padding=padding, **style).convert("RGBA")))
                ax.set_xticks([])
                ax.set_yticks([])
                if sub == 0 and col == 0:
                    ax.set_ylabel(str(concept))
    return fig
