"""Atomic file writes."""
import os
import secrets
from pathlib import Path
from typing import Callable, Union

__all__ = ["write_atomic"]


def write_atomic(path: Union[str, os.PathLike], save: Callable[[Path], object]) -> None:
    """Write a file atomically: ``save(temporary)`` writes a hidden file beside ``path``, which then replaces it.

    Readers see the old file or the complete new one, never a partial one; the temporary file is removed if
    ``save`` fails. The folder is created if needed, and the file gets the permissions of a normal ``open``.

    Parameters
    ----------
    path : str or os.PathLike
        The file to write.
    save : callable
        Called with the temporary path; must create the file there. What it returns is ignored.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    try:
        save(temporary)
        os.replace(temporary, path)
    finally:
        if temporary.exists():
            temporary.unlink()
