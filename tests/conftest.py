"""Shared fixtures: the tiny models of :mod:`helpers` and one torch thread (tests import helpers from there)."""
import pytest
import torch

from crp.app.shapes_model import torch_threads

from helpers import TwoBranch, TwoLayerLinear, small_cnn


@pytest.fixture
def one_thread():
    """Run a test with one torch thread: two on a busy two-core machine are many times slower than one."""
    with torch_threads(1):
        yield


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
