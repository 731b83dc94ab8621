"""Atomic file writes, and the error that says which file could not be written and why."""
import contextlib
import errno
import os
import secrets
from pathlib import Path
from typing import Callable, Optional, Union

from crp._utils.text import one_line

__all__ = ["write_atomic", "FileWriteError"]

_NO_SPACE = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}
# how libraries say that a write stopped short without an errno: numpy ("17408 requested and 13637 written"),
# torch.save ("file write failed")
_SHORT_WRITE = ("requested and", "write failed")


class FileWriteError(OSError):
    """A file could not be written; the old file, if any, is unchanged and no temporary file is left.

    An :class:`OSError` with the ``errno`` of the failure (None if the library that wrote gave none),
    ``filename`` the file that was to be written, ``reason`` what happened and ``no_space`` whether the disk
    (or the quota) is full. Its message names the file, the reason and the fix.
    """

    def __init__(self, code: Optional[int], reason: str, filename: str) -> None:
        super().__init__(code, reason, filename)
        self.reason = reason

    @property
    def no_space(self) -> bool:
        """Whether the write failed for want of disk space (or quota)."""
        return self.errno in _NO_SPACE or (self.errno is None and self.reason.startswith("no space left"))

    def __str__(self) -> str:
        fix = "Free some disk space or write to another folder, then run again" if self.no_space else \
            "Check that the folder can be written, or write to another folder"
        return f"cannot write {self.filename!r}: {self.reason}; the old file is unchanged. {fix}."


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

    Raises
    ------
    FileWriteError
        For an :class:`OSError` while writing (a full disk, a missing permission, a folder that is a file), or
        a short write reported without one; its message names ``path``, says what happened and the fix. Other
        exceptions of ``save`` pass through unchanged. Either way ``path`` is left as it was.
    """
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        save(temporary)
        os.replace(temporary, path)
    except OSError as error:
        raise _write_error(error, path) from error
    except RuntimeError as error:
        if not any(words in str(error) for words in _SHORT_WRITE):
            raise
        raise _write_error(error, path) from error
    finally:
        _remove(temporary)


def _write_error(error: Exception, path: Path) -> FileWriteError:
    code = getattr(error, "errno", None)
    detail = getattr(error, "strerror", None) or one_line(error)
    if code in _NO_SPACE:
        reason = f"no space left on the device ({detail})"
    elif code is None and any(words in str(error) for words in _SHORT_WRITE):
        reason = f"no space left on the device, most likely: only part of the data was written ({detail})"
    else:
        where = getattr(error, "filename", None)  # the temporary file's name would only confuse
        reason = detail if where is None or str(where).endswith(".tmp") else f"{detail}: {str(where)!r}"
    return FileWriteError(code, reason, str(path))


def _remove(temporary: Path) -> None:
    with contextlib.suppress(OSError):  # a folder that went away or became unwritable leaves nothing to remove
        temporary.unlink(missing_ok=True)
