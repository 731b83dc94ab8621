"""The argument checks every room shares: one helper per kind of mistake.

A wrong *type* raises :class:`TypeError` (:func:`check_type`, or :func:`check_kind` for a kind no type tuple
describes), a wrong *value* of the right type raises :class:`ValueError` (:func:`check_value`); every message
names the argument, echoes what was given and says what fixes it. The other checks here are built on these.
"""
import math
import numbers
from typing import Any, Collection, Optional, Sequence, Tuple, Type, TypeVar, Union

import numpy as np

__all__ = [
    "check_type", "check_kind", "check_value", "check_int", "check_positive_int", "check_number",
    "check_positive_number", "check_bool", "check_choice", "check_callable", "echo", "check_id_shape",
]

T = TypeVar("T")
Types = Union[Type[Any], Tuple[Type[Any], ...]]

#: Longest echo of a bad value in a message; a longer one is cut in the middle.
_ECHO_LIMIT = 200


def echo(value: Any) -> str:
    """Return ``repr(value)`` for an error message: tensors and arrays by shape and dtype, long reprs shortened."""
    shape = getattr(value, "shape", None)
    if shape is not None and hasattr(value, "dtype") and len(tuple(shape)) > 0:
        return f"{type(value).__name__} of shape {tuple(shape)} and dtype {value.dtype}"
    text = repr(value)
    if len(text) > _ECHO_LIMIT:
        half = _ECHO_LIMIT // 2
        text = f"{text[:half]} ... {text[-half:]}"
    return text


def _fail(error: Type[Exception], name: str, expected: str, value: Any, fix: Optional[str]) -> Exception:
    message = f"{name} must be {expected}, got {echo(value)}."
    return error(f"{message} {fix}" if fix else message)


def check_type(value: T, types: Types, *, name: str, expected: str, fix: Optional[str] = None) -> T:
    """Return ``value`` if it is an instance of ``types``; raise a TypeError otherwise.

    Parameters
    ----------
    value : object
        The argument.
    types : type or tuple of type
        The accepted types; ``bool`` is never accepted where a number is expected (see :func:`check_int`).
    name : str
        The argument's name.
    expected : str
        What the argument must be, e.g. ``"a torch.Tensor"``.
    fix : str, optional
        What to do instead, appended to the message.

    Returns
    -------
    object
        ``value`` itself.

    Raises
    ------
    TypeError
        If ``value`` is not an instance of ``types``.
    """
    if not isinstance(value, types):
        raise _fail(TypeError, name, expected, value, fix)
    return value


def check_kind(ok: bool, value: Any, *, name: str, expected: str, fix: Optional[str] = None) -> None:
    """Raise a TypeError about ``value`` unless ``ok``: :func:`check_type` for kinds that no type tuple describes.

    Parameters
    ----------
    ok : bool
        Whether ``value`` is of an acceptable kind (e.g. a sequence that is not a string).
    value : object
        The argument, echoed in the message.
    name, expected, fix : str
        As in :func:`check_type`.

    Raises
    ------
    TypeError
        If ``ok`` is false.
    """
    if not ok:
        raise _fail(TypeError, name, expected, value, fix)


def check_value(ok: bool, value: Any, *, name: str, expected: str, fix: Optional[str] = None) -> None:
    """Raise a ValueError about ``value`` unless ``ok``.

    Parameters
    ----------
    ok : bool
        Whether ``value`` is acceptable.
    value : object
        The argument, echoed in the message.
    name, expected, fix : str
        As in :func:`check_type`.

    Raises
    ------
    ValueError
        If ``ok`` is false.
    """
    if not ok:
        raise _fail(ValueError, name, expected, value, fix)


def check_int(value: Any, *, name: str, minimum: Optional[int] = None, maximum: Optional[int] = None,
              fix: Optional[str] = None, expected: Optional[str] = None) -> int:
    """Return ``value`` as an ``int`` if it is an integer (not a bool) within ``[minimum, maximum]``.

    Parameters
    ----------
    value : object
        The argument; Python and numpy integers are accepted.
    name : str
        The argument's name.
    minimum, maximum : int, optional
        Inclusive bounds.
    fix : str, optional
        What to do instead, appended to the message.
    expected : str, optional
        How the message describes a valid value; by default "an int" and the bounds.

    Returns
    -------
    int
        The value.

    Raises
    ------
    TypeError
        If ``value`` is not an integer.
    ValueError
        If it lies outside the bounds.
    """
    expected = expected or f"an int{_bounds_text(minimum, maximum)}"
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise _fail(TypeError, name, expected, value, fix)
    number = int(value)
    too_low = minimum is not None and number < minimum
    too_high = maximum is not None and number > maximum
    check_value(not (too_low or too_high), value, name=name, expected=expected, fix=fix)
    return number


def _bounds_text(minimum: Optional[float], maximum: Optional[float]) -> str:
    if minimum is not None and maximum is not None:
        return f" in [{minimum}, {maximum}]"
    if minimum is not None:
        return f" >= {minimum}"
    if maximum is not None:
        return f" <= {maximum}"
    return ""


def check_positive_int(value: Any, *, name: str, fix: Optional[str] = None) -> int:
    """Return ``value`` as an ``int`` if it is an integer of at least 1 (see :func:`check_int`)."""
    return check_int(value, name=name, minimum=1, fix=fix)


def check_number(value: Any, *, name: str, minimum: Optional[float] = None, maximum: Optional[float] = None,
                 fix: Optional[str] = None) -> float:
    """Return ``value`` as a ``float`` if it is a real number (not a bool, not NaN) within ``[minimum, maximum]``.

    Parameters
    ----------
    value : object
        The argument; Python and numpy integers and floats are accepted.
    name : str
        The argument's name.
    minimum, maximum : float, optional
        Inclusive bounds.
    fix : str, optional
        What to do instead, appended to the message.

    Returns
    -------
    float
        The value.

    Raises
    ------
    TypeError
        If ``value`` is not a real number.
    ValueError
        If it is NaN or lies outside the bounds.
    """
    expected = f"a number{_bounds_text(minimum, maximum)}"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise _fail(TypeError, name, expected, value, fix)
    number = float(value)
    too_low = minimum is not None and number < minimum
    too_high = maximum is not None and number > maximum
    check_value(not (math.isnan(number) or too_low or too_high), value, name=name, expected=expected, fix=fix)
    return number


def check_positive_number(value: Any, *, name: str, fix: Optional[str] = None) -> float:
    """Return ``value`` as a ``float`` if it is a real number greater than 0 (see :func:`check_number`)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise _fail(TypeError, name, "a positive number", value, fix)
    number = float(value)
    check_value(number > 0, value, name=name, expected="a positive number", fix=fix)  # NaN > 0 is False
    return number


def check_bool(value: Any, *, name: str) -> bool:
    """Return ``value`` as a ``bool`` if it is a Python or numpy bool; raise a TypeError otherwise."""
    if not isinstance(value, (bool, np.bool_)):  # numpy 2 names its bool type "bool", numpy 1 "bool_"
        raise _fail(TypeError, name, "True or False", value, None)
    return bool(value)


def check_choice(value: Any, choices: Collection[Any], *, name: str, fix: Optional[str] = None) -> Any:
    """Return ``value`` if it is one of ``choices``; raise a ValueError listing them otherwise."""
    try:
        ok = value in choices
    except TypeError:  # unhashable values are not among hashable choices
        ok = False
    check_value(ok, value, name=name, expected="one of " + ", ".join(repr(c) for c in choices), fix=fix)
    return value


def check_callable(value: Any, *, name: str, expected: str, allow_none: bool = False) -> Any:
    """Return ``value`` if it is callable (or None where allowed); raise a TypeError otherwise."""
    if value is None and allow_none:
        return value
    if not callable(value):
        raise _fail(TypeError, name, expected + (" or None" if allow_none else ""), value, None)
    return value


def check_id_shape(shape: Sequence[int], where: str) -> None:
    """Raise a ValueError naming ``shape`` and the fix if ids of this shape are not 1-D (``where`` names them)."""
    if len(shape) > 1:
        raise ValueError(
            f"{where} must be an int or a 1-D list of ints, got ids of shape {tuple(shape)}; pass one row, e.g. "
            f"ids[0].tolist(), or all of them flattened, ids.flatten().tolist()."
        )
