"""A tiny model and dataset that the command-line tests load as ``cli_helpers:tiny_model`` / ``:tiny_data``."""
import torch
from torch import nn

#: When set to an index, ``TinyData`` raises KeyboardInterrupt when that item is read (a simulated Ctrl-C).
INTERRUPT_AT = None


def tiny_model(num_classes: int = 3) -> nn.Module:
    """Conv(3, 4) - ReLU - pool - Conv(4, 6) - ReLU - pool - Linear(96, num_classes), for 16 x 16 images."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(6 * 4 * 4, num_classes),
    )


class TinyData(torch.utils.data.Dataset):
    """Seeded random 3 x 16 x 16 images in [0, 1] with labels ``i % 3``."""

    classes = ["red", "green", "blue"]

    def __init__(self, n: int = 12) -> None:
        generator = torch.Generator().manual_seed(1)
        self.images = torch.rand(n, 3, 16, 16, generator=generator)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        if INTERRUPT_AT is not None and index == INTERRUPT_AT:
            raise KeyboardInterrupt
        return self.images[index], index % 3


def tiny_data() -> TinyData:
    return TinyData()


def not_a_dataset() -> int:
    return 3
