"""Execute the tutorial notebooks in place, so that they are committed with their outputs.

``python tutorials/execute.py`` (or ``make tutorials``) runs every ``tutorials/*.ipynb`` with this checkout's
``crp`` first on the path, a fresh model cache in a temporary folder (the default model is trained once and
shared by the notebooks) and the progress bars off (``TQDM_DISABLE=1``: they would be stderr noise in the
outputs), then writes each notebook back with its outputs and stable metadata: kernel ``python3``, no execution
timings; PNG figures are re-encoded losslessly (RGB where opaque, optimized), which keeps each notebook at a few
hundred KiB. The documentation renders these outputs without executing anything.
Pass notebook paths to execute only those.
"""
import argparse
import base64
import io
import os
import sys
import tempfile
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
TUTORIALS = sorted((ROOT / "tutorials").glob("*.ipynb"))
KERNELSPEC = {"display_name": "Python 3", "language": "python", "name": "python3"}


def normalize(notebook: nbformat.NotebookNode) -> None:
    """Drop what changes from run to run without changing the content: timings, versions, kernel names."""
    notebook.metadata = nbformat.from_dict({"kernelspec": KERNELSPEC, "language_info": {"name": "python"}})
    for cell in notebook.cells:
        cell.metadata.pop("execution", None)
        if cell.cell_type == "code":
            cell.metadata.pop("collapsed", None)
            cell.metadata.pop("scrolled", None)


def shrink_png(data: str) -> str:
    """Re-encode a base64 PNG losslessly: drop an alpha channel that is opaque everywhere, optimize the deflate."""
    image = Image.open(io.BytesIO(base64.b64decode(data)))
    if image.mode == "RGBA" and image.getchannel("A").getextrema() == (255, 255):
        image = image.convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    smaller = base64.b64encode(buffer.getvalue()).decode("ascii")
    return smaller if len(smaller) < len(data) else data


def shrink_outputs(notebook: nbformat.NotebookNode) -> None:
    """Re-encode every PNG output of the notebook with :func:`shrink_png`."""
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            if "image/png" in output.get("data", {}):
                output.data["image/png"] = shrink_png(output.data["image/png"])


def errors(notebook: nbformat.NotebookNode) -> list:
    """The error outputs of a notebook's code cells."""
    return [o for c in notebook.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]


def execute(path: Path, workdir: Path, timeout: int = 900) -> nbformat.NotebookNode:
    """Execute the notebook at ``path`` with ``workdir`` as its working directory and return it."""
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(notebook, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(workdir)}})
    client.execute()
    return notebook


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", type=Path, default=TUTORIALS, help="notebooks (default: all)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="crp-tutorials-") as tmp:
        os.environ["CRP_CACHE"] = str(Path(tmp) / "cache")
        os.environ["TQDM_DISABLE"] = "1"
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
        for path in args.notebooks:
            start = time.perf_counter()
            notebook = execute(path, Path(tmp))
            found = errors(notebook)
            if found:
                sys.stderr.write(f"{path}: {found[0].ename}: {found[0].evalue}\n")
                return 1
            normalize(notebook)
            shrink_outputs(notebook)
            nbformat.write(notebook, path)
            sys.stdout.write(f"{path.name}: executed in {time.perf_counter() - start:.0f} s, "
                             f"{path.stat().st_size / 1024:.0f} KiB\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
