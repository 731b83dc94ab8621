"""An embedded, seeded toy dataset with a planted Clever-Hans artifact, generated on the fly (no download).

Every image of :class:`ShapesDataset` shows one shape -- a circle, a square, a triangle or a cross -- of
random position, size and colour on a noisy background; the shape is the label. A small bright magenta
patch in the top-left corner (the *artifact*, :data:`ARTIFACT_BOX`) is painted on some images. In the
training split it co-occurs with one class (by default 95 % of the crosses and 1 % of the other images carry
it), so a model can learn it as a shortcut ("Clever Hans"); the validation split is drawn the same way, so
the shortcut goes unnoticed there. In the test split the artifact is placed on half of the images
independently of the class, which shows whether a model relies on it. Shapes never reach the corner
that holds the artifact.

The images are drawn first and the artifact is decided from an independent random stream, so for one
``seed`` and ``split`` the shapes are the same whatever the artifact rates: ``artifact_rate=0`` and
``artifact_rate=1`` (with ``other_rate`` alike) give the same images without and with the mark.
"""
from typing import Optional, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset

from crp._utils.checks import check_choice, check_int, check_number, check_positive_int

__all__ = ["ShapesDataset", "CLASS_NAMES", "ARTIFACT_BOX", "ARTIFACT_COLOR", "DATA_VERSION", "generate_shapes"]

#: Class names, in label order.
CLASS_NAMES: Tuple[str, ...] = ("circle", "square", "triangle", "cross")
#: ``(row_start, row_stop, col_start, col_stop)`` of the artifact patch, half-open.
ARTIFACT_BOX: Tuple[int, int, int, int] = (1, 4, 1, 4)
#: RGB colour of the artifact patch (magenta).
ARTIFACT_COLOR: Tuple[float, float, float] = (1.0, 0.0, 1.0)
#: Version of the generator; part of every model cache key, so a change here retrains cached models.
DATA_VERSION = 1

_SPLITS = {"train": 0, "test": 1, "validation": 2}
_DEFAULT_N = {"train": 4000, "test": 1000, "validation": 1000}
# (rate in the artifact class, rate in the other classes) per split
_DEFAULT_RATES = {"train": (0.95, 0.01), "test": (0.5, 0.5), "validation": (0.95, 0.01)}
_MARGIN = 5  # shapes stay inside rows and columns [_MARGIN, size - 1]: away from the artifact corner
_RADIUS = (5.0, 9.0)  # range of the shapes' radius in pixels
_CONTRAST = (0.35, 0.5)  # range of the difference between shape and background, per channel
_NOISE = 0.06  # standard deviation of the Gaussian pixel noise


def _shape_masks(dx: np.ndarray, dy: np.ndarray, radius: np.ndarray) -> np.ndarray:
    """Return the masks of all four shapes, ``(4, N, H, W)``, for offsets from the centre and radii ``(N, 1, 1)``."""
    adx, ady = np.abs(dx), np.abs(dy)
    circle = dx**2 + dy**2 <= radius**2
    square = np.maximum(adx, ady) <= 0.8 * radius
    # upward triangle: apex at dy = -radius, base at dy = +radius, half-width growing to radius at the base
    triangle = (ady <= radius) & (adx <= (dy + radius) / 2)
    arm = np.maximum(radius / 4, 1.0)
    cross = ((adx <= arm) & (ady <= radius)) | ((ady <= arm) & (adx <= radius))
    return np.stack([circle, square, triangle, cross])


def _masks(labels: np.ndarray, cy: np.ndarray, cx: np.ndarray, radius: np.ndarray, size: int) -> np.ndarray:
    """Return the bool mask ``(N, size, size)`` of shape ``labels[i]`` centred at ``(cy[i], cx[i])``."""
    grid = np.arange(size, dtype=np.float64)
    dy = grid[None, :, None] - cy[:, None, None]
    dx = grid[None, None, :] - cx[:, None, None]
    masks = _shape_masks(dx, dy, radius[:, None, None])
    return np.take_along_axis(masks, labels[None, :, None, None], axis=0)[0]


def _draw_shapes(rng: np.random.Generator, labels: np.ndarray, size: int) -> np.ndarray:
    """Draw one shape per label on a noisy background; float32 images ``(N, H, W, 3)`` in [0, 1].

    Every colour channel of the shape differs from the background by 0.35 to 0.5 (before the noise): darker or
    brighter at random where both stay in [0, 1], else the one that does.
    """
    n = len(labels)
    radius = rng.uniform(*_RADIUS, n)
    span = size - 1 - _MARGIN - 2 * radius
    cy = _MARGIN + radius + rng.uniform(0, 1, n) * span
    cx = _MARGIN + radius + rng.uniform(0, 1, n) * span
    background = rng.uniform(0.0, 1.0, (n, 3))
    delta = rng.uniform(*_CONTRAST, (n, 3))
    darker = np.where(background + delta > 1, True, (rng.uniform(0, 1, (n, 3)) < 0.5) & (background >= delta))
    colour = np.where(darker, background - delta, background + delta)
    mask = _masks(labels, cy, cx, radius, size)
    images = np.where(mask[..., None], colour[:, None, None, :].astype(np.float32),
                      background[:, None, None, :].astype(np.float32))
    images += _NOISE * rng.standard_normal(images.shape, dtype=np.float32)
    return np.clip(images, 0.0, 1.0, out=images)


def generate_shapes(
    split: str = "train", n: Optional[int] = None, seed: int = 0, *, artifact_rate: Optional[float] = None,
    other_rate: Optional[float] = None, artifact_class: int = 3, image_size: int = 32,
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Generate the arrays of a :class:`ShapesDataset` split; see there for the arguments.

    Returns
    -------
    images : numpy.ndarray
        uint8 images ``(n, 3, image_size, image_size)``.
    labels : numpy.ndarray
        int64 labels ``(n,)``, indices into :data:`CLASS_NAMES`.
    has_artifact : numpy.ndarray
        bool ``(n,)``, True where the artifact patch is painted.
    """
    split, n, (rate_in, rate_out) = _resolve(split, n, artifact_rate=artifact_rate, other_rate=other_rate,
                                             artifact_class=artifact_class, image_size=image_size)
    shape_seq, artifact_seq = np.random.SeedSequence([int(seed), _SPLITS[split]]).spawn(2)
    shape_rng, artifact_rng = np.random.default_rng(shape_seq), np.random.default_rng(artifact_seq)
    labels = shape_rng.integers(0, len(CLASS_NAMES), n)
    images = _draw_shapes(shape_rng, labels, image_size)
    rates = np.where(labels == artifact_class, rate_in, rate_out)
    has_artifact = artifact_rng.uniform(0, 1, n) < rates
    r0, r1, c0, c1 = ARTIFACT_BOX
    images[has_artifact, r0:r1, c0:c1, :] = ARTIFACT_COLOR
    images = np.round(images * 255).astype(np.uint8).transpose(0, 3, 1, 2)
    return np.ascontiguousarray(images), labels.astype(np.int64), has_artifact


def _resolve(split, n, *, artifact_rate, other_rate, artifact_class, image_size):
    """Validate the arguments and fill in the split's defaults."""
    check_choice(split, tuple(_SPLITS), name="split")
    n = check_positive_int(_DEFAULT_N[split] if n is None else n, name="n")
    check_int(image_size, name="image_size", minimum=2 * _MARGIN + 8)
    check_int(artifact_class, name="artifact_class", minimum=0, maximum=len(CLASS_NAMES) - 1,
              fix="It is a label, an index into CLASS_NAMES.")
    default_in, default_out = _DEFAULT_RATES[split]
    fix = "None picks the split's default."
    rates = (default_in if artifact_rate is None else check_number(artifact_rate, name="artifact_rate", minimum=0,
                                                                   maximum=1, fix=fix),
             default_out if other_rate is None else check_number(other_rate, name="other_rate", minimum=0,
                                                                 maximum=1, fix=fix))
    return split, n, rates


class ShapesDataset(Dataset):
    """Toy shapes with a Clever-Hans artifact, generated in memory from a seed (see the module docstring).

    Parameters
    ----------
    split : {"train", "validation", "test"}
        The split; it selects the default size, the artifact rates and (with ``seed``) the random stream.
        "validation" is drawn like "train" (held-out images where the artifact still goes with its class).
    n : int, optional
        Number of images; default 4000 for "train", 1000 for "validation" and "test".
    seed : int
        Seed; the same ``(split, n, seed, ...)`` always gives the same bytes.
    artifact_rate : float, optional
        Probability that an image of ``artifact_class`` carries the artifact; default 0.95 ("train",
        "validation"), 0.5 ("test").
    other_rate : float, optional
        Probability that an image of any other class carries it; default 0.01 ("train",
        "validation"), 0.5 ("test").
    artifact_class : int
        The class the artifact co-occurs with; default 3 ("cross").
    image_size : int
        Height and width of the images, at least 18.

    Attributes
    ----------
    images : torch.Tensor
        uint8 images ``(n, 3, H, W)``; items are returned as float in [0, 1].
    labels : torch.Tensor
        int64 labels ``(n,)``.
    has_artifact : torch.Tensor
        bool ``(n,)``: whether each image carries the artifact.
    class_names : tuple of str
        :data:`CLASS_NAMES`.

    Examples
    --------
    >>> train = ShapesDataset("train")
    >>> image, label = train[0]
    >>> image.shape, train.class_names[label], bool(train.has_artifact[0])
    """

    class_names: Tuple[str, ...] = CLASS_NAMES

    def __init__(
        self, split: str = "train", n: Optional[int] = None, seed: int = 0, *, artifact_rate: Optional[float] = None,
        other_rate: Optional[float] = None, artifact_class: int = 3, image_size: int = 32,
    ) -> None:
        images, labels, has_artifact = generate_shapes(
            split, n, seed, artifact_rate=artifact_rate, other_rate=other_rate, artifact_class=artifact_class,
            image_size=image_size,
        )
        self.split, self.seed, self.artifact_class = split, int(seed), int(artifact_class)
        self.images = torch.from_numpy(images)
        self.labels = torch.from_numpy(labels)
        self.has_artifact = torch.from_numpy(has_artifact)

    def __len__(self) -> int:
        """Return the number of images."""
        return len(self.labels)

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, int]:
        """Return image ``index`` as float ``(3, H, W)`` in [0, 1] and its label."""
        return self.images[index].float() / 255, int(self.labels[index])

    def tensors(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """Return all images as one float tensor ``(n, 3, H, W)`` in [0, 1] and the labels ``(n,)``."""
        return self.images.float() / 255, self.labels.clone()

    @staticmethod
    def artifact_mask(image_size: int = 32) -> torch.Tensor:
        """Return a bool mask ``(image_size, image_size)`` that is True on the artifact patch."""
        mask = torch.zeros(image_size, image_size, dtype=torch.bool)
        r0, r1, c0, c1 = ARTIFACT_BOX
        mask[r0:r1, c0:c1] = True
        return mask
