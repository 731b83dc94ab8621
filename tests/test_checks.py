"""The shared argument checks (crp._utils.checks): wrong types raise TypeError, wrong values ValueError."""
import math

import numpy as np
import pytest
import torch

from crp._utils.checks import (
    check_bool,
    check_callable,
    check_choice,
    check_int,
    check_kind,
    check_number,
    check_positive_int,
    check_positive_number,
    check_type,
    check_value,
    echo,
)
from crp._utils.modules import preserved_tensors


def test_valid_values_come_back_coerced():
    assert check_int(np.int64(3), name="n", minimum=0, maximum=3) == 3 and type(check_int(np.int64(3), name="n")) is int
    assert check_positive_int(1, name="n") == 1
    assert check_number(np.float32(0.5), name="x", minimum=0, maximum=1) == 0.5 and check_number(2, name="x") == 2.0
    assert check_positive_number(1e-9, name="x") == 1e-9
    assert check_bool(np.bool_(True), name="flag") is True
    assert check_choice("b", ("a", "b"), name="mode") == "b"
    assert check_callable(None, name="fn", expected="a function", allow_none=True) is None
    assert check_type(2, int, name="n", expected="an int") == 2
    check_kind(True, [1], name="x", expected="a list")
    check_value(True, 1, name="x", expected="one")


@pytest.mark.parametrize("call, error, match", [
    (lambda: check_type("3", int, name="n", expected="an int", fix="Pass 3."), TypeError,
     r"^n must be an int, got '3'\. Pass 3\.$"),
    (lambda: check_kind(False, "ab", name="names", expected="a list of names"), TypeError,
     r"^names must be a list of names, got 'ab'\.$"),
    (lambda: check_value(False, -1, name="n", expected="positive"), ValueError, r"^n must be positive, got -1\.$"),
    (lambda: check_int(True, name="n"), TypeError, r"^n must be an int, got True\.$"),
    (lambda: check_int(2.0, name="n", minimum=0), TypeError, r"^n must be an int >= 0, got 2\.0\.$"),
    (lambda: check_int(5, name="n", maximum=4), ValueError, r"^n must be an int <= 4, got 5\.$"),
    (lambda: check_int(5, name="n", minimum=0, maximum=4), ValueError, r"^n must be an int in \[0, 4\], got 5\.$"),
    (lambda: check_positive_int(0, name="n", fix="It counts."), ValueError, r"^n must be an int >= 1, got 0\. It"),
    (lambda: check_number("1", name="x"), TypeError, r"^x must be a number, got '1'\.$"),
    (lambda: check_number(False, name="x"), TypeError, r"^x must be a number, got False\.$"),
    (lambda: check_number(math.nan, name="x"), ValueError, r"^x must be a number, got nan\.$"),
    (lambda: check_number(1.5, name="x", minimum=0, maximum=1), ValueError, r"^x must be a number in \[0, 1\], got 1"),
    (lambda: check_positive_number(0.0, name="lr"), ValueError, r"^lr must be a positive number, got 0\.0\.$"),
    (lambda: check_positive_number(math.nan, name="lr"), ValueError, r"^lr must be a positive number, got nan\.$"),
    (lambda: check_positive_number(None, name="lr"), TypeError, r"^lr must be a positive number, got None\.$"),
    (lambda: check_bool(1, name="flag"), TypeError, r"^flag must be True or False, got 1\.$"),
    (lambda: check_choice("c", ("a", "b"), name="mode", fix="See the docs."), ValueError,
     r"^mode must be one of 'a', 'b', got 'c'\. See the docs\.$"),
    (lambda: check_choice(["a"], ("a", "b"), name="mode"), ValueError, r"^mode must be one of 'a', 'b', got \['a'\]"),
    (lambda: check_callable(3, name="fn", expected="a function"), TypeError, r"^fn must be a function, got 3\.$"),
    (lambda: check_callable(None, name="fn", expected="a function", allow_none=True) or check_callable(
        None, name="fn", expected="a function"), TypeError, r"^fn must be a function, got None\.$"),
    (lambda: check_callable(3, name="fn", expected="a function", allow_none=True), TypeError,
     r"^fn must be a function or None, got 3\.$"),
])
def test_each_mistake_names_the_argument_and_echoes_the_value(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_echo_shows_tensors_by_shape_and_shortens_long_values():
    assert echo(torch.zeros(2, 3)) == "Tensor of shape (2, 3) and dtype torch.float32"
    assert echo(np.zeros(4, dtype=np.int8)) == "ndarray of shape (4,) and dtype int8"
    assert echo(torch.tensor(1.5)) == "tensor(1.5000)"  # 0-d: its value
    long = echo("x" * 1000)
    assert len(long) < 220 and " ... " in long


def test_preserved_tensors_restores_flags_and_buffer_values_on_request():
    model = torch.nn.BatchNorm1d(2).train()
    model.weight.requires_grad_(False)
    before = model.running_mean.clone()
    with preserved_tensors(model, buffer_values=True, requires_grad=True):
        assert model.weight.requires_grad
        model(torch.randn(4, 2))
        assert not torch.equal(model.running_mean, before)
    assert torch.equal(model.running_mean, before) and not model.weight.requires_grad
    with preserved_tensors(model):  # by default: the objects, not their values or flags
        model(torch.randn(4, 2))
    assert not torch.equal(model.running_mean, before) and not model.weight.requires_grad

