"""Text for messages: an exception's message in one line."""
from typing import Optional

__all__ = ["one_line"]

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
