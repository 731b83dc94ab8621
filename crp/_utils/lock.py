"""A single-writer lock on a folder: ``with FolderLock(path): ...`` while a run writes into ``path``.

The lock is the file :data:`LOCK_NAME` inside the folder, locked with ``fcntl.flock`` (Linux, macOS and the
other POSIX systems) or ``msvcrt.locking`` (Windows). The operating system releases such a lock when the
process ends in any way, also when it is killed or crashes, so a folder is never left locked: a lock file
that remains after a killed run is taken over by the next one. The file holds the process id (and host) of
the holder, which the next writer's :class:`FolderLockedError` names; it is removed when the lock is released.
A second writer fails at once, it never waits.

Limits: the lock only keeps out writers that take it (every crp command and the FeatureVisualization result
store do). ``flock`` on a network file system (NFS) works between the machines only where the system emulates
it with byte-range locks (Linux does since 2.6.12); on such a folder two machines may otherwise both write.
"""
import errno
import functools
import os
import socket
import sys
from pathlib import Path
from types import TracebackType
from typing import Optional, Tuple, Type, Union

__all__ = ["FolderLock", "FolderLockedError", "LOCK_NAME"]

#: Name of the lock file inside a locked folder.
LOCK_NAME = ".crp-lock"

_BUSY = {errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES, errno.EDEADLK}
_WINDOWS_LOCK_OFFSET = 1 << 20  # the byte msvcrt locks, past the holder's id, which others must still read


class FolderLockedError(RuntimeError):
    """Another process (or another lock of this one) is writing to the folder.

    Parameters
    ----------
    path : pathlib.Path
        The folder.
    pid : int, optional
        Process id of the holder, if it could be read.
    host : str, optional
        Host name of the holder, if it is not this machine.
    description : str
        What the folder is, for the message (e.g. ``"output folder"``).
    """

    def __init__(self, path: Path, pid: Optional[int], host: Optional[str] = None, *,
                 description: str = "folder") -> None:
        self.path, self.pid, self.host, self.description = path, pid, host, description
        if pid is None:
            holder = "another process is writing to it"
        elif pid == os.getpid() and host is None:
            holder = f"this process (pid {pid}) is already writing to it, through another lock"
        else:
            holder = f"another process (pid {pid}{f' on {host}' if host else ''}) is writing to it"
        super().__init__(
            f"{description} {str(path)!r} is in use: {holder} (lock file {str(path / LOCK_NAME)!r}); wait until it "
            f"has finished or stop it, or use another folder."
        )

    def __reduce__(self):  # the message is built from the arguments: pickle those (for worker processes)
        return functools.partial(FolderLockedError, description=self.description), (self.path, self.pid, self.host)


class FolderLock:
    """Exclusive right to write into a folder, for one process at a time (see the module docstring).

    Use it as a context manager, which releases the lock on any exit; :meth:`acquire` and :meth:`release`
    do the same by hand. A lock that is held is released when the process ends, however it ends.

    Parameters
    ----------
    path : str or os.PathLike
        The folder; created (with its parents) by :meth:`acquire` if it does not exist.
    description : str
        What the folder is, for the messages (e.g. ``"output folder"`` or ``"FeatureVisualization results"``).

    Raises
    ------
    FolderLockedError
        From :meth:`acquire` (and ``with``), at once, if another process holds the lock.
    OSError
        From :meth:`acquire` if the folder cannot be created or the lock file cannot be written, or if the lock
        file is a symbolic link (it is never followed).

    Examples
    --------
    >>> with FolderLock("results"):  # doctest: +SKIP
    ...     write_results("results")
    """

    def __init__(self, path: Union[str, os.PathLike], *, description: str = "folder") -> None:
        self.path = Path(path)
        self.file = self.path / LOCK_NAME
        self.description = description
        self._fd: Optional[int] = None
        self._owner = 0

    @property
    def locked(self) -> bool:
        """Whether this object holds the lock."""
        return self._fd is not None

    def acquire(self) -> "FolderLock":
        """Take the lock (creating the folder if needed) and return ``self``; fail at once if it is taken.

        Calling it again while the lock is held does nothing.
        """
        if self._fd is not None:
            return self
        self.path.mkdir(parents=True, exist_ok=True)
        while True:
            fd = _open(self.file)
            try:
                if not _try_lock(fd):
                    pid, host = _read_holder(fd)
                    raise FolderLockedError(self.path, pid, host, description=self.description)
            except BaseException:
                os.close(fd)
                raise
            if _is_current(fd, self.file):
                break
            os.close(fd)  # the holder removed this file while we opened it: lock the one that is there now
        try:
            _write_holder(fd)
        except BaseException:
            _unlock(fd)
            os.close(fd)
            raise
        self._fd, self._owner = fd, os.getpid()
        return self

    def release(self) -> None:
        """Remove the lock file and release the lock (nothing happens if it is not held).

        A forked child process (e.g. a DataLoader worker) that inherited the lock leaves it to its parent.
        """
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            if os.getpid() == self._owner:
                if sys.platform != "win32" and _is_current(fd, self.file):
                    _remove(self.file)  # while still locked: a process waiting on this file then sees it is stale
                _unlock(fd)
        finally:
            os.close(fd)
            if sys.platform == "win32" and os.getpid() == self._owner:
                _remove(self.file)  # fails while another process has it open, which is what we want

    def __enter__(self) -> "FolderLock":
        return self.acquire()

    def __exit__(self, kind: Optional[Type[BaseException]], error: Optional[BaseException],
                 traceback: Optional[TracebackType]) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"FolderLock({str(self.path)!r}, locked={self.locked})"


def _open(file: Path) -> int:
    flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
    try:
        return os.open(file, flags, 0o644)
    except OSError:
        if file.is_symlink():
            raise OSError(errno.ELOOP, f"lock file {str(file)!r} is a symbolic link, which crp does not follow; "
                                       f"remove it (it is not crp's) and run again", str(file)) from None
        raise


def _try_lock(fd: int) -> bool:
    """Lock ``fd`` without waiting; return False if another holder has it."""
    try:
        if sys.platform == "win32":
            import msvcrt

            os.lseek(fd, _WINDOWS_LOCK_OFFSET, os.SEEK_SET)
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        else:
            import fcntl

            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        if error.errno in _BUSY:
            return False
        raise
    return True


def _unlock(fd: int) -> None:
    # explicitly, not only by closing: a forked child that inherited the descriptor would keep an flock alive
    if sys.platform == "win32":
        import msvcrt

        os.lseek(fd, _WINDOWS_LOCK_OFFSET, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
    else:
        import fcntl

        fcntl.flock(fd, fcntl.LOCK_UN)


def _is_current(fd: int, file: Path) -> bool:
    """Whether ``fd`` is still the file at ``file`` (the previous holder may have removed it meanwhile)."""
    if sys.platform == "win32":
        return True  # an open file cannot be removed there
    try:
        on_disk = os.stat(file, follow_symlinks=False)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (mine.st_dev, mine.st_ino) == (on_disk.st_dev, on_disk.st_ino)


def _write_holder(fd: int) -> None:
    data = f"{os.getpid()} {socket.gethostname()}\n".encode()
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, data)


def _read_holder(fd: int) -> Tuple[Optional[int], Optional[str]]:
    """Return the holder's process id and, if it is another machine, its host name (None where unreadable)."""
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        words = os.read(fd, 256).decode(errors="replace").split()
        pid = int(words[0])
    except (OSError, ValueError, IndexError):
        return None, None
    host = words[1] if len(words) > 1 and words[1] != socket.gethostname() else None
    return pid, host


def _remove(file: Path) -> None:
    try:
        file.unlink()
    except OSError:
        pass
