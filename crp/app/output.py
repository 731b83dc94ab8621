"""The output folder of ``python -m crp demo`` and ``python -m crp analyze``, and their user errors.

:class:`OutputFolder` writes every file atomically and keeps a manifest (:data:`MANIFEST_NAME`) of what it
wrote. A folder is only used if it is new, empty, or holds such a manifest; a later run replaces the files of
the earlier one and removes those it did not write again, but it never deletes a file that is not in the
manifest, nor anything outside the folder. Sub-folders with state that outlives a run (the resumable
FeatureVisualization results) are claimed as a whole.

It never follows a symbolic link out of the folder, to read or to write: a link on the way to a file or
sub-folder it uses that leads outside is refused with a :class:`UserError` before anything is written. One
run at a time writes into a folder: the folder is locked (:class:`crp._utils.lock.FolderLock`) from the
moment it exists until the run ends, and a second run fails at once with a
:class:`crp._utils.lock.FolderLockedError` that names the process holding it.
"""
import json
import os
import shutil
from pathlib import Path
from types import TracebackType
from typing import Callable, Iterator, List, Optional, Sequence, Type, Union

from crp._utils.files import write_atomic
from crp._utils.lock import LOCK_NAME, FolderLock

__all__ = ["OutputFolder", "UserError", "MANIFEST_NAME", "FV_FOLDER", "fv_state", "link_out_of"]

#: File in the output folder that lists what the commands wrote; without it, a non-empty folder is not touched.
MANIFEST_NAME = ".crp-manifest.json"
#: Sub-folder of an output folder with the (resumable) FeatureVisualization results.
FV_FOLDER = "fv"
_LEGACY_MANIFEST = ".crp-demo-manifest.json"  # written by the first version of the demo; read, then replaced

PathLike = Union[str, os.PathLike]


class UserError(ValueError):
    """An error in what the user asked for (a path, a name, a number); its message is one line naming the fix."""


class OutputFolder:
    """A folder the commands own: new, empty, or written by an earlier run (listed in its manifest).

    Use it as a context manager: ``with OutputFolder(out, tool) as output:`` locks an existing folder at once
    (a new one when :meth:`claim` creates it) and releases the lock on any exit; :meth:`finish` releases it too.

    Parameters
    ----------
    out_dir : str or os.PathLike
        The folder.
    tool : str
        The command, recorded in the manifest (e.g. ``"crp demo"``).

    Raises
    ------
    UserError
        If ``out_dir`` is a file, or a non-empty folder without a valid manifest, or its manifest is a symbolic
        link out of it.
    """

    def __init__(self, out_dir: PathLike, tool: str) -> None:
        self.root = Path(out_dir).expanduser().resolve()
        self.tool = tool
        self.written: List[str] = []
        self.previous, self.previous_folders = self._read_manifest()
        self.folders: List[str] = []
        self.claimed: Optional[set] = None
        self._lock = FolderLock(self.root, description="output folder")

    def __enter__(self) -> "OutputFolder":
        """Lock the folder if it exists (:meth:`lock`)."""
        return self.lock()

    def __exit__(self, kind: Optional[Type[BaseException]], error: Optional[BaseException],
                 traceback: Optional[TracebackType]) -> None:
        """Release the lock (:meth:`close`)."""
        self.close()

    def lock(self) -> "OutputFolder":
        """Lock the folder if it exists (else :meth:`claim` does), re-read its manifest and return ``self``.

        Raises
        ------
        crp._utils.lock.FolderLockedError
            At once, if another run writes into the folder.
        """
        if self.root.is_dir():
            self._take()
        return self

    def _take(self) -> None:
        """Lock the folder (creating it) unless this object holds the lock; re-read the manifest."""
        if self._lock.locked:
            return
        self._lock.acquire()
        try:  # the manifest may have changed while another run held the folder
            self.previous, self.previous_folders = self._read_manifest()
        except BaseException:
            self._lock.release()
            raise

    def close(self) -> None:
        """Release the folder's lock (if held); the files stay."""
        self._lock.release()

    def _read_manifest(self):
        root = self.root
        if root.exists() and not root.is_dir():
            raise UserError(f"out {str(root)!r} is a file, not a folder; choose a new or empty folder.")
        if not root.exists() or not any(p.name != LOCK_NAME for p in root.iterdir()):
            return [], []
        name = _LEGACY_MANIFEST if not (root / MANIFEST_NAME).exists() and (root / _LEGACY_MANIFEST).exists() \
            else MANIFEST_NAME
        self._refuse_links([name])
        try:
            manifest = json.loads((root / name).read_text())
            files, folders = manifest["files"], manifest.get("folders", [])
            if not all(isinstance(f, str) for f in [*files, *folders]):
                raise TypeError("names must be strings")
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            raise UserError(
                f"out {str(root)!r} is not empty and was not written by `python -m crp` (no valid {MANIFEST_NAME}); "
                f"choose a new or empty folder."
            ) from None
        return list(files), [f for f in folders if self._inside(root / f)]

    def _inside(self, path: Path) -> bool:
        return self.root in path.resolve().parents

    def _refuse_links(self, names: Sequence[str]) -> None:
        """Raise a UserError if the way to any of ``names`` (relative paths) leads out of the folder by a link."""
        for name in names:
            link = link_out_of(self.root, name)
            if link is not None:
                raise UserError(
                    f"out {str(self.root)!r}: {str(link)!r} is a symbolic link to {os.path.realpath(link)!r}, "
                    f"outside the output folder, which crp never writes or reads through; nothing was changed. "
                    f"Remove the link (the files it points to stay), or choose another --out."
                )

    def claim(self, folders: Sequence[str] = ()) -> None:
        """Create and lock the folder, and mark it as the tool's own, with the sub-folders ``folders`` that hold state.

        Every file is added to the manifest before it is written (:meth:`write`), so that a run that stops
        half-way leaves a folder the next run may clean up.

        Raises
        ------
        UserError
            If a file or sub-folder of the earlier run, or one of ``folders`` or anything in them, is a symbolic
            link out of the folder (nothing is written then).
        crp._utils.lock.FolderLockedError
            If another run writes into the folder.
        """
        self._take()  # creates the folder if it is new
        self.folders = list(dict.fromkeys([*self.previous_folders, *folders]))
        try:
            self._refuse_links([*self.previous, *(name for f in self.folders for name in _walk(self.root, f))])
        except UserError:
            self.close()
            raise
        self.claimed = set(self.previous)
        self._write_manifest(sorted(self.claimed), self.folders)

    def path(self, name: str) -> Path:
        """Return the absolute path of file or folder ``name`` (relative to the folder).

        Raises
        ------
        UserError
            If the way to it leads out of the folder by a symbolic link.
        """
        self._refuse_links([name])
        return self.root / name

    def owns_folder(self, name: str) -> bool:
        """Whether sub-folder ``name`` was claimed by an earlier run (so its content may be replaced)."""
        return name in self.previous_folders

    def reset_folder(self, name: str) -> Path:
        """Empty the claimed sub-folder ``name`` (only if an earlier run claimed it) and return its path."""
        if name not in self.folders:
            raise ValueError(f"folder {name!r} was not claimed; call claim(..., folders=[{name!r}]) first.")
        folder = self.path(name)
        if name in self.previous_folders and folder.is_dir() and not folder.is_symlink() and self._inside(folder):
            shutil.rmtree(folder)
        return folder

    def write(self, name: str, save: Callable[[Path], object]) -> Path:
        """Write file ``name`` atomically with ``save(temporary_path)`` and return its path.

        Raises
        ------
        UserError
            If the way to it leads out of the folder by a symbolic link (nothing is written).
        """
        if self.claimed is None:
            raise RuntimeError("call claim() before write().")
        path = self.path(name)
        if name not in self.claimed:
            self.claimed.add(name)
            self._write_manifest(sorted(self.claimed), self.folders)
        write_atomic(path, save)
        self.written.append(name)
        return path

    def finish(self) -> None:
        """Remove the files of an earlier run that this run did not write again, write the final manifest, unlock."""
        for name in set(self.previous) - set(self.written):
            stale = self.root / name
            if link_out_of(self.root, name) is None and stale.is_file() and self._inside(stale):
                stale.unlink()
                _remove_empty_parents(stale.parent, self.root)
        self._write_manifest(sorted(self.written), self.folders)
        legacy = self.root / _LEGACY_MANIFEST
        if legacy.is_file():
            legacy.unlink()
        self.close()

    def _write_manifest(self, files: List[str], folders: List[str]) -> None:
        text = json.dumps({"tool": self.tool, "files": files, "folders": folders}, indent=1)
        write_atomic(self.root / MANIFEST_NAME, lambda path: path.write_text(text))


def link_out_of(root: Path, name: str) -> Optional[Path]:
    """Return the first symbolic link on the way from folder ``root`` to ``root / name`` that leads out of it.

    Parameters
    ----------
    root : pathlib.Path
        The folder, an absolute path without links (``Path.resolve()``).
    name : str
        A path relative to ``root``; its last part counts too.

    Returns
    -------
    pathlib.Path or None
        The link (``root / <part of name>``), or None if following the way never leaves ``root``.
    """
    path = root
    for part in Path(name).parts:
        path = path / part
        if path.is_symlink():
            target = Path(os.path.realpath(path))
            if target != root and root not in target.parents:
                return path
    return None


def _walk(root: Path, folder: str) -> Iterator[str]:
    """``folder`` and everything in it, as paths relative to ``root``, without following links."""
    yield folder
    start = root / folder
    if start.is_symlink() or not start.is_dir():
        return
    for parent, folders, files in os.walk(start):  # os.walk does not descend into links to folders
        for entry in [*folders, *files]:
            yield str((Path(parent) / entry).relative_to(root))


def fv_state(out_dir: PathLike) -> Optional[int]:
    """Return how many samples an interrupted FeatureVisualization in ``out_dir`` has done (None: none saved).

    Reads ``<out_dir>/fv/store/manifest.json`` (without importing torch, for a message after Ctrl-C); a link out
    of ``out_dir`` on the way counts as nothing saved.
    """
    root = Path(out_dir).expanduser().resolve()
    name = f"{FV_FOLDER}/store/manifest.json"
    if link_out_of(root, name) is not None:
        return None
    try:
        data = json.loads((root / name).read_text())
        return int(data["next_index"]) - int(data["config"]["data_start"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _remove_empty_parents(folder: Path, root: Path) -> None:
    while folder != root and root in folder.parents and not any(folder.iterdir()):
        folder.rmdir()
        folder = folder.parent
