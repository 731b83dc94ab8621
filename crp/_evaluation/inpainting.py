"""Fill masked pixels from their unmasked neighbourhood.

:func:`harmonic_inpaint` solves Laplace's equation inside the holes with the known pixels as boundary values
(a harmonic, or diffusion, fill): every filled pixel is the mean of its four neighbours, so linear gradients
are reproduced exactly and holes get smooth fills. It is solved for a whole batch at once in torch (on any
device) by conjugate-gradient iterations, started from the solution on a coarser grid (a pyramid), which
brings the large-scale part of the fill in a few iterations per level. :func:`telea_inpaint` wraps OpenCV's Telea method
(Telea, "An image inpainting technique based on the fast marching method", J. Graphics Tools 9, 2004) for
those who have ``opencv-python-headless`` installed.
"""

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["harmonic_inpaint", "telea_inpaint"]

_CROSS = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])


def harmonic_inpaint(
    images: torch.Tensor, masks: torch.Tensor, iterations: int = 8, tolerance: float = 1e-6, fallback: float = 0.0,
    *, min_size: int = 4,
) -> torch.Tensor:
    """Replace the masked pixels of each image by the harmonic fill of its unmasked pixels.

    Parameters
    ----------
    images : torch.Tensor
        Images of shape ``(B, C, H, W)``.
    masks : torch.Tensor
        Boolean masks of shape ``(B, 1, H, W)`` or ``(B, C, H, W)``, True where a pixel is to be filled.
    iterations : int, default 8
        The most conjugate-gradient iterations on the full resolution; each coarser level of the pyramid gets
        twice as many as the next finer one, the coarsest level as many as it has pixels.
    tolerance : float, default 1e-6
        An image channel stops iterating once the RMS residual of the fill equations is below ``tolerance``
        times its largest known magnitude.
    fallback : float, default 0.0
        The value of pixels in an image (channel) that has no unmasked pixel at all.
    min_size : int, default 4
        The pyramid stops when the shorter side falls below ``2 * min_size``.

    Returns
    -------
    torch.Tensor
        A new tensor: the unmasked pixels of ``images`` and the fill in the masked ones. The fill of one image
        does not depend on the other images of the batch.
    """
    known = (~masks.bool()).expand_as(images).to(images.dtype)
    filled = _solve(images * known, known, (iterations, tolerance), fallback, min_size)
    empty = known.sum((2, 3), keepdim=True) == 0  # nothing to fill from: the system is singular
    filled = torch.where(empty, torch.full_like(filled, fallback), filled)
    return torch.where(known > 0, images, filled)


def _solve(values: torch.Tensor, known: torch.Tensor, budget: tuple, fallback: float, min_size: int) -> torch.Tensor:
    """Harmonic fill of one pyramid level, initialised from the next coarser level.

    A cascadic scheme: each coarser level gets twice the iterations of the finer one (at a quarter of the
    cost per iteration), the coarsest as many as it has pixels, so most of the work happens where it is cheap.
    """
    iterations, tolerance = budget
    height, width = values.shape[-2:]
    if min(height, width) >= 2 * min_size:
        coarse_values, coarse_known = _restrict(values, known)
        coarse = _solve(coarse_values, coarse_known, (2 * iterations, tolerance), fallback, min_size)
        start = F.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False)
    else:
        start, iterations = _known_mean(values, known, fallback), height * width
    return _conjugate_gradient(values, known, start, iterations, tolerance)


def _restrict(values: torch.Tensor, known: torch.Tensor) -> tuple:
    """Halve the resolution: a coarse pixel is the mean of its known children, known if any child is."""
    weight = F.avg_pool2d(known, 2, ceil_mode=True)
    total = F.avg_pool2d(values * known, 2, ceil_mode=True)
    coarse_known = (weight > 0).to(values.dtype)
    return total / weight.clamp_min(1e-12) * coarse_known, coarse_known


def _known_mean(values: torch.Tensor, known: torch.Tensor, fallback: float) -> torch.Tensor:
    """Per image and channel, the mean of the known pixels (``fallback`` where none is known)."""
    count = known.sum((2, 3), keepdim=True)
    mean = values.sum((2, 3), keepdim=True) / count.clamp_min(1.0)
    return torch.where(count > 0, mean, torch.full_like(mean, fallback)).expand_as(values)


def _neighbour_sum(current: torch.Tensor) -> torch.Tensor:
    """Sum of the four neighbours of every pixel that lie inside the image."""
    padded = F.pad(current, (1, 1, 1, 1))
    total = padded[..., :-2, 1:-1] + padded[..., 2:, 1:-1]
    total += padded[..., 1:-1, :-2]
    total += padded[..., 1:-1, 2:]
    return total


def _conjugate_gradient(values, known, start, iterations, tolerance=1e-6, *, check_every=4):
    """Conjugate-gradient solve of 'every unknown pixel is the mean of its neighbours inside the image'.

    The unknown pixels ``u`` solve ``count * u - neighbour_sum(u) = 0`` with the known pixels fixed; the
    matrix restricted to the unknown pixels is symmetric positive (semi-)definite, so CG applies, one step size
    per image and channel. An image channel stops moving once the RMS of its residual falls below
    ``tolerance`` times its largest known magnitude; as that depends on the channel alone, the fill does not
    depend on the other images of the batch. The loop ends early when every channel has stopped.
    """
    count = _neighbour_sum(torch.ones_like(values[:1, :1]))
    hole = 1.0 - known
    limit = (tolerance * values.abs().amax((2, 3), keepdim=True)) ** 2 * hole.sum((2, 3), keepdim=True)
    current = torch.lerp(values, start, hole)  # known pixels from values, unknown ones from start
    residual = (_neighbour_sum(current) - count * current).mul_(hole)
    direction = residual.clone()
    norm = residual.square().sum((2, 3), keepdim=True)
    for iteration in range(min(iterations, values.shape[-1] * values.shape[-2])):
        active = norm > limit
        if iteration % check_every == 0 and not active.any():
            break
        applied = (count * direction).sub_(_neighbour_sum(direction)).mul_(hole)
        curvature = (direction * applied).sum((2, 3), keepdim=True)
        step = (norm / curvature.clamp_min(1e-30)).mul_(active)
        current.addcmul_(step, direction)
        residual.addcmul_(step, applied, value=-1.0)
        new_norm = residual.square().sum((2, 3), keepdim=True)
        direction.mul_(new_norm / norm.clamp_min(1e-30)).add_(residual)
        norm = new_norm
    return current


def telea_inpaint(images: torch.Tensor, masks: torch.Tensor, radius: float = 3.0) -> torch.Tensor:
    """Replace the masked pixels with OpenCV's Telea inpainting, one image and channel at a time.

    Each channel is scaled to the range of its known pixels and inpainted as a 16-bit image (OpenCV 5.0's float
    path of Telea returns noise); the unmasked pixels are copied from ``images`` unchanged, and a channel without
    any known pixel becomes 0.

    Parameters
    ----------
    images : torch.Tensor
        Images of shape ``(B, C, H, W)``.
    masks : torch.Tensor
        Boolean masks of shape ``(B, 1, H, W)``, True where a pixel is to be filled.
    radius : float, default 3.0
        The radius of the neighbourhood that fills a pixel.

    Returns
    -------
    torch.Tensor
        A new tensor on the images' device and in their dtype.

    Raises
    ------
    ImportError
        If OpenCV (``opencv-python-headless``) is not installed.
    """
    try:
        import cv2
    except ImportError as error:
        raise ImportError(
            "the 'telea' perturbation needs OpenCV: `pip install opencv-python-headless`, "
            "or use the torch perturbation 'inpainting'."
        ) from error
    arrays = images.detach().to("cpu", torch.float64).numpy()
    holes = masks.detach().to("cpu").bool().expand_as(images).numpy()
    scaled, low, span = _to_uint16(arrays, holes)
    filled = scaled.copy()
    partial = holes.any((2, 3)) & ~holes.all((2, 3))  # the channels that have pixels to fill and to fill from
    for index, channel in zip(*np.nonzero(partial)):
        hole = holes[index, channel].astype("uint8")
        filled[index, channel] = cv2.inpaint(scaled[index, channel], hole, radius, cv2.INPAINT_TELEA)
    result = filled.astype("float64") / 65535.0 * span + low
    result = np.where(holes.all((2, 3), keepdims=True), 0.0, result)  # nothing to fill from
    return torch.from_numpy(np.where(holes, result, arrays)).to(images.device, images.dtype)


def _to_uint16(arrays: np.ndarray, holes: np.ndarray) -> tuple:
    """Each image channel as 16 bits spanning the range of its known pixels, with that range's low end and width."""
    low = np.where(holes, np.inf, arrays).min((2, 3), keepdims=True)
    high = np.where(holes, -np.inf, arrays).max((2, 3), keepdims=True)
    empty = np.isinf(low)  # no known pixel: any scale serves, the channel becomes 0
    low, high = np.where(empty, 0.0, low), np.where(empty, 0.0, high)
    span = np.where(high > low, high - low, 1.0)
    scaled = ((arrays - low) / span * 65535.0).clip(0.0, 65535.0).round().astype("uint16")
    return scaled, low, span
