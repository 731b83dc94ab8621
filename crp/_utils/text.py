"""Text for messages: an exception's message in one line."""
from typing import Optional, Sequence

__all__ = ["one_line", "short_repr", "id_list"]

#: How Python starts a traceback; a DataLoader worker puts the worker's traceback into the message it re-raises.
_TRACEBACK = "Traceback (most recent call last)"


def one_line(error: BaseException, *, limit: Optional[int] = None) -> str:
    """Return the message of ``error`` in one line, for a one-line report of what went wrong.

    The first line of the message, or the exception's type name if the message is empty. An error re-raised
    from another process (a DataLoader worker) carries the worker's traceback in its message; its last line
    holds the original message after the exception's name, and that message is returned.

    Parameters
    ----------
    error : BaseException
        The exception.
    limit : int, optional
        Cut the line to at most this many characters.

    Returns
    -------
    str
        One line of text.
    """
    text = str(error)
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    line = lines[0]
    if len(lines) > 1 and _TRACEBACK in text:
        prefix = f"{type(error).__name__}: "
        line = lines[-1].split(prefix, 1)[1] if prefix in lines[-1] else lines[-1]
    return line if limit is None else line[:limit]


def short_repr(value: object, *, limit: int = 80) -> str:
    """Return a short description of ``value`` for a message: never more than about ``limit`` characters.

    Tensors and arrays are described by their shape and dtype (and their values when there are at most 8);
    long sequences by their length and first items; anything else by its ``repr``, cut at ``limit``.

    Parameters
    ----------
    value : object
        What to describe.
    limit : int
        Characters of ``repr`` kept.

    Returns
    -------
    str
        One line of text.
    """
    shape = getattr(value, "shape", None)
    if shape is not None and hasattr(value, "dtype") and hasattr(value, "tolist"):
        kind = "tensor" if type(value).__module__.startswith("torch") else "array"
        size = 1
        for dim in shape:
            size *= int(dim)
        values = f" {value.tolist()!r}" if size <= 8 else ""
        article = "an" if kind == "array" else "a"
        return f"{article} {kind} of shape {tuple(int(d) for d in shape)} and dtype {value.dtype}{values}"
    text = repr(value)
    if len(text) <= limit:
        return text
    if isinstance(value, (list, tuple)):
        head = ", ".join(short_repr(item, limit=20) for item in list(value)[:4])
        return f"a {type(value).__name__} of {len(value)} items: [{head}, ...]"
    return text[:limit - 3] + "..."


def id_list(ids: Sequence[int], *, limit: int = 8) -> str:
    """Return a list of ids for a message, the first and last few of a long one with the count.

    Parameters
    ----------
    ids : sequence of int
        The ids.
    limit : int
        Lists longer than this are shortened.

    Returns
    -------
    str
        ``[3, 7]``, or ``[0, 1, 2, 3, ..., 511] (512 ids)``.
    """
    ids = list(ids)
    if len(ids) <= limit:
        return str(ids)
    head = ", ".join(str(i) for i in ids[:limit // 2])
    return f"[{head}, ..., {ids[-1]}] ({len(ids)} ids)"
