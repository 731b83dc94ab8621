"""The shared argument checks: TypeError for a wrong type, ValueError for a wrong value, messages that echo."""
import numpy as np
import pytest
import torch

from crp._utils.checks import (
    check_bool,
    check_callable,
    check_choice,
    check_int,
    check_positive_int,
    check_type,
    check_value,
    echo,
)


def test_int_checks_return_ints_and_raise_by_kind():
    assert check_int(np.int64(3), name="n") == 3 and type(check_int(np.int64(3), name="n")) is int
    assert check_int(0, name="n", minimum=0, maximum=2) == 0
    assert check_positive_int(7, name="top_k") == 7
    with pytest.raises(TypeError, match=r"^n must be an int in \[0, 2\], got float 1\.0\.$"):
        check_int(1.0, name="n", minimum=0, maximum=2)
    with pytest.raises(TypeError, match="n must be an int, got bool True"):
        check_int(True, name="n")
    with pytest.raises(ValueError, match=r"^n must be an int <= 2, got 3\. use 2 at most$"):
        check_int(3, name="n", maximum=2, fix="use 2 at most")
    with pytest.raises(ValueError, match="^top_k must be a positive int, got 0.$"):
        check_positive_int(0, name="top_k")
    with pytest.raises(TypeError, match="^top_k must be a positive int, got str '4'.$"):
        check_positive_int("4", name="top_k")


def test_type_value_choice_bool_callable():
    data = torch.zeros(2, 3)
    assert check_type(data, torch.Tensor, name="data", expected="a tensor") is data
    with pytest.raises(TypeError, match=r"^data must be a tensor, got list \[1, 2\]\. pass torch.tensor\(data\)$"):
        check_type([1, 2], torch.Tensor, name="data", expected="a tensor", fix="pass torch.tensor(data)")
    with pytest.raises(TypeError, match="got None"):
        check_type(None, torch.Tensor, name="data", expected="a tensor")
    check_value(True, 5, name="x", expected="small")
    with pytest.raises(ValueError, match=r"^data must be 2-D, got Tensor of shape \(2, 3, 4\) and dtype torch.float32"):
        check_value(False, torch.zeros(2, 3, 4), name="data", expected="2-D")
    assert check_choice("max", ("sum", "max"), name="max_target") == "max"
    with pytest.raises(ValueError, match="^max_target must be one of 'sum', 'max', got 'mean'.$"):
        check_choice("mean", ("sum", "max"), name="max_target")
    with pytest.raises(ValueError, match="got \\[1\\]"):
        check_choice([1], ("sum",), name="max_target")  # unhashable
    assert check_bool(np.bool_(True), name="abs_norm") is True
    with pytest.raises(TypeError, match="^abs_norm must be True or False, got int 1.$"):
        check_bool(1, name="abs_norm")
    assert check_callable(None, name="plot_fn", expected="a function", allow_none=True) is None
    with pytest.raises(TypeError, match="^plot_fn must be a function or None, got int 3.$"):
        check_callable(3, name="plot_fn", expected="a function", allow_none=True)


def test_echo_shortens_long_values():
    text = echo(list(range(1000)))
    assert len(text) == 205 and text.startswith("[0, 1, 2") and " ... " in text and text.endswith("998, 999]")
    assert echo(np.zeros((1, 512))) == "ndarray of shape (1, 512) and dtype float64"
