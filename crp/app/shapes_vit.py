"""A tiny vision transformer for :class:`crp.app.shapes.ShapesDataset`, its seeded training and a weight cache.

:func:`train_vit_model` trains torchvision's ``VisionTransformer`` in a tiny configuration
(:class:`ViTSettings`: 32x32 images cut into 8x8 patches, two blocks) on the training split, where a magenta
mark in the top-left corner goes with "cross", or loads it from the cache, and measures on the test split (the
mark on any shape) how much the model relies on the mark. It mirrors :mod:`crp.app.shapes_model`: the cache
file's name holds a hash of every setting, :data:`crp.app.shapes.DATA_VERSION`, :data:`VIT_VERSION` and the crp
version, so weights trained with other settings are never loaded. The mark lies inside the first patch, so one
token of the model sees it (:func:`mark_tokens`).
"""
import logging
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import List, Optional, Tuple

import torch
from torch import nn
from torchvision.models import VisionTransformer

from crp._utils.checks import check_int, check_positive_number, check_type, check_value
from crp._utils.files import write_atomic
from crp.app.shapes import ARTIFACT_BOX, CLASS_NAMES, ShapesDataset
from crp.app.shapes_model import (
    PathLike,
    TrainInfo,
    default_cache_dir,
    evaluate_shortcut,
    fit,
    settings_key,
    torch_threads,
)

__all__ = ["ViTSettings", "QUICK_VIT_SETTINGS", "shapes_vit", "train_vit_model", "vit_cache_path", "mark_tokens",
           "VIT_VERSION"]

logger = logging.getLogger(__name__)

#: Version of the architecture and training loop; part of the cache key.
VIT_VERSION = 1
_IMAGE_SIZE = 32


@dataclass(frozen=True)
class ViTSettings:
    """The architecture and the training of the tiny ViT; all of it goes into the cache key.

    Parameters
    ----------
    patch_size : int
        Height and width of a patch; 32 must be a multiple of it.
    layers, heads, hidden, mlp : int
        Blocks, attention heads, embedding size and MLP width of ``torchvision.models.VisionTransformer``.
    epochs : int
        Passes over the training split.
    n_train, n_test : int
        Sizes of the training split, and of the validation and test splits.
    seed : int
        Seed of the data, the initialization and the batch order.
    batch_size : int
        Mini-batch size.
    lr : float
        Peak learning rate of AdamW (weight decay 0.05) under a one-cycle schedule.
    """

    patch_size: int = 8
    layers: int = 2
    heads: int = 2
    hidden: int = 64
    mlp: int = 128
    epochs: int = 12
    n_train: int = 12000
    n_test: int = 1000
    seed: int = 0
    batch_size: int = 64
    lr: float = 2e-3

    def key(self) -> str:
        """Return a hash of the settings and the code versions, used in the cache file name."""
        return settings_key(self, VIT_VERSION)


#: Tiny training for smoke tests: seconds, meaningless accuracies.
QUICK_VIT_SETTINGS = ViTSettings(epochs=1, n_train=256, n_test=200)


def shapes_vit(settings: Optional[ViTSettings] = None) -> VisionTransformer:
    """Return an untrained ``VisionTransformer`` for 32x32 shapes with the architecture of ``settings``."""
    settings = ViTSettings() if settings is None else settings
    return VisionTransformer(image_size=_IMAGE_SIZE, patch_size=settings.patch_size, num_layers=settings.layers,
                             num_heads=settings.heads, hidden_dim=settings.hidden, mlp_dim=settings.mlp,
                             num_classes=len(CLASS_NAMES))


def mark_tokens(patch_size: int, image_size: int = _IMAGE_SIZE) -> List[int]:
    """Return the token positions of the patches that hold the mark (:data:`~crp.app.shapes.ARTIFACT_BOX`).

    Token 0 is the class token; patch ``(row, column)`` is token ``1 + row * (image_size // patch_size) + column``.
    """
    r0, r1, c0, c1 = ARTIFACT_BOX
    per_row = image_size // patch_size
    rows = range(r0 // patch_size, (r1 - 1) // patch_size + 1)
    columns = range(c0 // patch_size, (c1 - 1) // patch_size + 1)
    return [1 + row * per_row + column for row in rows for column in columns]


def vit_cache_path(settings: ViTSettings, cache_dir: Optional[PathLike] = None) -> Path:
    """Return the cache file for ``settings`` in ``cache_dir`` (default: ``$CRP_CACHE`` or ``~/.cache/crp``)."""
    folder = default_cache_dir() if cache_dir is None else Path(cache_dir).expanduser()
    return folder / f"shapesvit-{settings.key()}.pt"


def _fit(model: nn.Module, train: ShapesDataset, settings: ViTSettings, verbose: bool) -> None:
    """Train ``model`` in place: AdamW with a one-cycle learning rate, cross-entropy, seeded batch order."""
    fit(model, train, settings, lambda parameters: torch.optim.AdamW(parameters, lr=settings.lr, weight_decay=0.05),
        description="training the shapes ViT", verbose=verbose)


def _train(settings: ViTSettings, verbose: bool) -> VisionTransformer:
    """Return a freshly trained model; the global torch random state is restored afterwards."""
    train = ShapesDataset("train", n=settings.n_train, seed=settings.seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(settings.seed)
        model = shapes_vit(settings)
        _fit(model, train, settings, verbose)
    return model


def _load(settings: ViTSettings, path: Path) -> Optional[Tuple[VisionTransformer, float]]:
    """Return the cached model and its training time, or None if the file is missing, unreadable or stale."""
    if not path.is_file():
        return None
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        if payload.get("key") != settings.key() or payload.get("settings") != asdict(settings):
            logger.warning("cache file %s belongs to other settings; retraining", path)
            return None
        model = shapes_vit(settings)
        model.load_state_dict(payload["state_dict"])
    except Exception as error:  # a truncated or foreign file: retrain and overwrite it
        logger.warning("cannot read cache file %s (%s); retraining", path, error)
        return None
    return model.eval(), float(payload.get("train_seconds", 0.0))


def _train_and_save(settings: ViTSettings, path: Path, verbose: bool) -> Tuple[VisionTransformer, float]:
    logger.info("training the shapes ViT (%s)", settings)
    start = time.perf_counter()
    model = _train(settings, verbose)
    seconds = time.perf_counter() - start
    payload = {"state_dict": model.state_dict(), "settings": asdict(settings), "key": settings.key(),
               "train_seconds": float(seconds)}
    write_atomic(path, lambda temporary: torch.save(payload, temporary))
    logger.info("trained in %.1f s; cached in %s", seconds, path)
    return model, seconds


def _check_settings(settings: ViTSettings) -> None:
    check_type(settings, ViTSettings, name="settings", expected="a ViTSettings")
    for name in ("patch_size", "layers", "heads", "hidden", "mlp", "epochs", "n_train", "n_test", "batch_size"):
        check_int(getattr(settings, name), name=name, minimum=0 if name == "epochs" else 1)
    check_value(_IMAGE_SIZE % settings.patch_size == 0, settings.patch_size, name="patch_size",
                expected=f"a divisor of the image size {_IMAGE_SIZE}")
    check_value(settings.hidden % settings.heads == 0, settings.hidden, name="hidden",
                expected=f"a multiple of heads ({settings.heads})")
    check_positive_number(settings.lr, name="lr")


def train_vit_model(
    cache_dir: Optional[PathLike] = None, force: bool = False, *, settings: Optional[ViTSettings] = None,
    progress: bool = True, threads: Optional[int] = None, epochs: Optional[int] = None,
) -> Tuple[VisionTransformer, TrainInfo]:
    """Train the tiny ViT on the default :class:`~crp.app.shapes.ShapesDataset`, or load it from the cache.

    Parameters
    ----------
    cache_dir : str or os.PathLike, optional
        Folder of the weight cache; default ``$CRP_CACHE`` or ``~/.cache/crp``.
    force : bool
        Retrain and overwrite the cache even if it holds matching weights.
    settings : ViTSettings, optional
        Architecture and training; default :class:`ViTSettings()`.
    progress : bool
        Show a tqdm progress bar while training.
    threads : int, optional
        torch threads while training (restored afterwards); default
        :func:`crp.app.shapes_model.default_threads`. Other thread counts sum in another order and give slightly
        different weights.
    epochs : int, optional
        Override ``settings.epochs``.

    Returns
    -------
    model : torchvision.models.VisionTransformer
        The model in eval mode, on the CPU.
    info : crp.app.shapes_model.TrainInfo
        Where the weights are cached, whether they were loaded, and the accuracies (its ``settings`` is the
        :class:`ViTSettings`).
    """
    settings = ViTSettings() if settings is None else settings
    _check_settings(settings)
    if epochs is not None:
        settings = replace(settings, epochs=check_int(epochs, name="epochs", minimum=0))
    path = vit_cache_path(settings, cache_dir)
    with torch_threads(threads):
        loaded = None if force else _load(settings, path)
        if loaded is not None:
            model, seconds = loaded
            logger.info("loaded the shapes ViT from %s", path)
        else:
            model, seconds = _train_and_save(settings, path, verbose=progress)
        validation = ShapesDataset("validation", n=settings.n_test, seed=settings.seed)
        accuracy = evaluate_shortcut(model, validation)["test_accuracy"]
        scores = evaluate_shortcut(model, ShapesDataset("test", n=settings.n_test, seed=settings.seed))
    return model, TrainInfo(settings, path, loaded is not None, seconds, accuracy, **scores)  # type: ignore[arg-type]
