"""Moving host bookkeeping (index arrays) to the device without making the host wait for the device."""
from typing import Sequence, Union

import numpy as np
import torch

__all__ = ["to_device"]


def to_device(values: Union[np.ndarray, Sequence[int]], device: torch.device) -> torch.Tensor:
    """Return host data as a tensor on ``device``, copied asynchronously.

    On a CUDA device the data goes through pinned memory, so that the copy is queued behind the device's work
    instead of waiting for it; on the CPU the array's memory is shared where possible.

    Parameters
    ----------
    values : numpy.ndarray or sequence of int
        Host data, e.g. positions computed from a batch's targets.
    device : torch.device
        Where the tensor is needed.

    Returns
    -------
    torch.Tensor
        The data on ``device``.
    """
    tensor = torch.from_numpy(np.ascontiguousarray(values))
    if device.type == "cuda":
        tensor = tensor.pin_memory()
    return tensor.to(device, non_blocking=True)
