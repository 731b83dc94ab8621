"""Dataset adapters of FeatureVisualization: index ranges, batches of ``(index, sample, target)``, targets."""
import numbers
import warnings
from typing import Any, List, Optional, Tuple

import numpy as np
import torch

__all__ = ["SampleRange", "collate", "split_item", "int_target", "unwrap_loader"]


class SampleRange(torch.utils.data.Dataset):
    """Items ``start .. stop - 1`` of a dataset, each returned with its dataset index."""

    def __init__(self, dataset, start: int, stop: int) -> None:
        self.dataset, self.start, self.stop = dataset, start, stop

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, i: int):
        index = self.start + i
        return index, self.dataset[index]


def collate(batch) -> Tuple[torch.Tensor, torch.Tensor, List[Any]]:
    """Stack ``(index, (sample, target))`` items; reject items that are not ``(tensor, target)`` pairs."""
    indices, samples, targets = [], [], []
    for index, item in batch:
        sample, target = split_item(index, item)
        indices.append(index)
        samples.append(sample)
        targets.append(target)
    try:
        data = torch.stack(samples)
    except RuntimeError:
        shapes = sorted({tuple(s.shape) for s in samples})
        raise ValueError(f"dataset samples {indices[0]}..{indices[-1]} have different shapes {shapes}; every "
                         f"sample must have the same shape.") from None
    return torch.as_tensor(indices, dtype=torch.int64), data, targets


def split_item(index: int, item) -> Tuple[torch.Tensor, Any]:
    if not isinstance(item, (tuple, list)) or len(item) != 2 or not isinstance(item[0], torch.Tensor):
        raise TypeError(f"dataset[{index}] must be a (torch.Tensor, target) pair, got {_brief(item)}; wrap the "
                        f"dataset so that it returns (sample, target).")
    return item[0], item[1]


def _brief(item) -> str:
    if isinstance(item, (tuple, list)):
        return f"{type(item).__name__} of ({', '.join(type(x).__name__ for x in item)})"
    return type(item).__name__


def int_target(target, index: Any) -> int:
    if isinstance(target, torch.Tensor) and target.numel() == 1 and not target.is_floating_point():
        target = target.item()
    if isinstance(target, np.ndarray) and target.size == 1 and np.issubdtype(target.dtype, np.integer):
        target = target.item()
    if isinstance(target, bool) or not isinstance(target, numbers.Integral) or target < 0:
        raise TypeError(
            f"the target of dataset[{index}] must be a non-negative int, got {target!r}; for multi-label targets "
            f"override FeatureVisualization.multitarget_to_single."
        )
    return int(target)


def unwrap_loader(dataset: Any, name: str = "dataset") -> Tuple[Any, Optional[int]]:
    """Return the dataset of a DataLoader and its batch size; any other dataset as it is, with None.

    Samples are read by index, in order, so the loader's sampler (e.g. ``shuffle=True``) and ``collate_fn``
    are not used; a warning says so where they differ from the defaults.
    """
    if not isinstance(dataset, torch.utils.data.DataLoader):
        return dataset, None
    unused = []
    if not isinstance(dataset.sampler, torch.utils.data.SequentialSampler):
        unused.append(f"its sampler ({type(dataset.sampler).__name__}: samples are read in index order)")
    if dataset.collate_fn is not torch.utils.data.default_collate:
        unused.append("its collate_fn (samples are stacked)")
    if unused:
        warnings.warn(f"{name} is a DataLoader: its dataset is used, not {' or '.join(unused)}.", stacklevel=3)
    return dataset.dataset, dataset.batch_size
