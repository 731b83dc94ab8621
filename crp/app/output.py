"""The output folder of ``python -m crp demo`` and ``python -m crp analyze``, and their user errors.

:class:`OutputFolder` writes every file atomically and keeps a manifest (:data:`MANIFEST_NAME`) of what it
wrote. A folder is only used if it is new, empty, or holds such a manifest; a later run replaces the files of
the earlier one and removes those it did not write again, but it never deletes a file that is not in the
manifest, nor anything outside the folder. Sub-folders with state that outlives a run (the resumable
FeatureVisualization results) are claimed as a whole.
"""
import json
import os
import shutil
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Union

from crp._utils.files import write_atomic

__all__ = ["OutputFolder", "UserError", "MANIFEST_NAME"]

#: File in the output folder that lists what the commands wrote; without it, a non-empty folder is not touched.
MANIFEST_NAME = ".crp-manifest.json"
_LEGACY_MANIFEST = ".crp-demo-manifest.json"  # written by the first version of the demo; read, then replaced

PathLike = Union[str, os.PathLike]


class UserError(ValueError):
    """An error in what the user asked for (a path, a name, a number); its message is one line naming the fix."""


class OutputFolder:
    """A folder the commands own: new, empty, or written by an earlier run (listed in its manifest).

    Parameters
    ----------
    out_dir : str or os.PathLike
        The folder.
    tool : str
        The command, recorded in the manifest (e.g. ``"crp demo"``).

    Raises
    ------
    UserError
        If ``out_dir`` is a file, or a non-empty folder without a valid manifest.
    """

    def __init__(self, out_dir: PathLike, tool: str) -> None:
        self.root = Path(out_dir).expanduser().resolve()
        self.tool = tool
        self.written: List[str] = []
        self.previous, self.previous_folders = self._read_manifest()
        self.folders: List[str] = []
        self.claimed: Optional[set] = None

    def _read_manifest(self):
        root = self.root
        if root.exists() and not root.is_dir():
            raise UserError(f"out {str(root)!r} is a file, not a folder; choose a new or empty folder.")
        if not root.exists() or not any(root.iterdir()):
            return [], []
        name = _LEGACY_MANIFEST if not (root / MANIFEST_NAME).exists() and (root / _LEGACY_MANIFEST).exists() \
            else MANIFEST_NAME
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

    def claim(self, folders: Sequence[str] = ()) -> None:
        """Create the folder and mark it as the tool's own, with the sub-folders ``folders`` that hold state.

        Every file is added to the manifest before it is written (:meth:`write`), so that a run that stops
        half-way leaves a folder the next run may clean up.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        self.folders = list(dict.fromkeys([*self.previous_folders, *folders]))
        self.claimed = set(self.previous)
        self._write_manifest(sorted(self.claimed), self.folders)

    def path(self, name: str) -> Path:
        """Return the absolute path of file or folder ``name`` (relative to the folder)."""
        return self.root / name

    def owns_folder(self, name: str) -> bool:
        """Whether sub-folder ``name`` was claimed by an earlier run (so its content may be replaced)."""
        return name in self.previous_folders

    def reset_folder(self, name: str) -> Path:
        """Empty the claimed sub-folder ``name`` (only if an earlier run claimed it) and return its path."""
        if name not in self.folders:
            raise ValueError(f"folder {name!r} was not claimed; call claim(..., folders=[{name!r}]) first.")
        folder = self.root / name
        if name in self.previous_folders and folder.is_dir() and self._inside(folder):
            shutil.rmtree(folder)
        return folder

    def write(self, name: str, save: Callable[[Path], object]) -> Path:
        """Write file ``name`` atomically with ``save(temporary_path)`` and return its path."""
        if self.claimed is None:
            raise RuntimeError("call claim() before write().")
        if name not in self.claimed:
            self.claimed.add(name)
            self._write_manifest(sorted(self.claimed), self.folders)
        path = self.root / name
        write_atomic(path, save)
        self.written.append(name)
        return path

    def finish(self) -> None:
        """Remove the files of an earlier run that this run did not write again, then write the final manifest."""
        for name in set(self.previous) - set(self.written):
            stale = self.root / name
            if stale.is_file() and self._inside(stale):
                stale.unlink()
                _remove_empty_parents(stale.parent, self.root)
        self._write_manifest(sorted(self.written), self.folders)
        legacy = self.root / _LEGACY_MANIFEST
        if legacy.is_file():
            legacy.unlink()

    def _write_manifest(self, files: List[str], folders: List[str]) -> None:
        text = json.dumps({"tool": self.tool, "files": files, "folders": folders}, indent=1)
        write_atomic(self.root / MANIFEST_NAME, lambda path: path.write_text(text))


def _remove_empty_parents(folder: Path, root: Path) -> None:
    while folder != root and root in folder.parents and not any(folder.iterdir()):
        folder.rmdir()
        folder = folder.parent
