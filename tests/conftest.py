"""Shared fixtures: tiny models whose attributions can be derived by hand."""
import pytest
import torch
from torch import nn
from zennit.layer import Sum


class TwoLayerLinear(nn.Module):
    """x (2) -> "hidden" Linear(2, 3) -> "out" Linear(3, 2), no biases, no non-linearity."""

    def __init__(self):
        super().__init__()
        self.hidden = nn.Linear(2, 3, bias=False)
        self.out = nn.Linear(3, 2, bias=False)
        with torch.no_grad():
            self.hidden.weight.copy_(torch.tensor([[1.0, 2.0], [-1.0, 0.5], [0.5, -3.0]]))
            self.out.weight.copy_(torch.tensor([[2.0, -1.0, 1.0], [0.5, 1.5, -2.0]]))

    def forward(self, x):
        return self.out(self.hidden(x))


class TwoBranch(nn.Module):
    """out = head(main(x) + side(x)): "main" and its parallel branch "side" both feed "sum", then "head"."""

    def __init__(self):
        super().__init__()
        self.main = nn.Linear(2, 2, bias=False)
        self.side = nn.Linear(2, 2, bias=False)
        self.sum = Sum()
        self.head = nn.Linear(2, 2, bias=False)
        with torch.no_grad():
            self.main.weight.copy_(torch.tensor([[1.0, 2.0], [3.0, -1.0]]))
            self.side.weight.copy_(torch.tensor([[0.5, -2.0], [1.0, 1.0]]))
            self.head.weight.copy_(torch.tensor([[1.0, -1.0], [2.0, 0.5]]))

    def forward(self, x):
        return self.head(self.sum(torch.stack([self.main(x), self.side(x)], dim=-1)))


def small_cnn(seed: int = 0, classes: int = 5) -> nn.Sequential:
    """A seeded conv net on (N, 3, 8, 8) inputs; layer names "0" (conv), "2" (conv), "5" (linear)."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 6, 3), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 4 * 4, classes),
    ).double().eval()


@pytest.fixture
def linear_model():
    return TwoLayerLinear().double().eval()


@pytest.fixture
def branch_model():
    return TwoBranch().double().eval()


@pytest.fixture
def cnn():
    return small_cnn()


@pytest.fixture
def cnn_input():
    torch.manual_seed(1)
    return torch.randn(1, 3, 8, 8, dtype=torch.float64)


def hooks_left(model: nn.Module) -> int:
    """Number of forward/backward hooks still attached to any module of ``model``."""
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
        + len(getattr(m, "_backward_pre_hooks", {}))
        for m in model.modules()
    )
