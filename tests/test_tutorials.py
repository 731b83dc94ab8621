"""Every tutorial notebook executes on the embedded default dataset and is committed with its outputs.

The documentation renders the committed outputs without executing the notebooks; ``python tutorials/execute.py``
(``make tutorials``) writes them.
"""
import os
from pathlib import Path

import nbformat
import pytest

TUTORIALS = sorted((Path(__file__).resolve().parent.parent / "tutorials").glob("*.ipynb"))


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory):
    """One model cache for all notebooks, so the default model is trained once per test session."""
    previous = os.environ.get("CRP_CACHE")
    os.environ["CRP_CACHE"] = str(tmp_path_factory.mktemp("crp-cache"))
    yield
    if previous is None:
        os.environ.pop("CRP_CACHE")
    else:
        os.environ["CRP_CACHE"] = previous


def test_there_are_tutorials():
    assert len(TUTORIALS) >= 1


@pytest.mark.parametrize("path", TUTORIALS, ids=[p.stem for p in TUTORIALS])
def test_committed_with_outputs(path):
    notebook = nbformat.read(path, as_version=4)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    counts = [cell.execution_count for cell in code]
    assert counts == list(range(1, len(code) + 1)), f"{path.name}: not executed top to bottom in one run: {counts}"
    assert any(cell.outputs for cell in code), f"{path.name} has no outputs: run `python tutorials/execute.py`"
    errors = [o.ename for cell in code for o in cell.outputs if o.output_type == "error"]
    assert not errors, f"{path.name} has error outputs: {errors}"
    stderr = [o.text[:80] for cell in code for o in cell.outputs if o.output_type == "stream" and o.name == "stderr"]
    assert stderr == [], f"{path.name} keeps warnings or progress bars (stderr): {stderr}"
    assert notebook.metadata.kernelspec.name == "python3"
    assert not [cell for cell in notebook.cells if "execution" in cell.metadata], f"{path.name} keeps timings"


@pytest.mark.parametrize("path", TUTORIALS, ids=[p.stem for p in TUTORIALS])
def test_outputs_are_small(path):
    """Committed outputs stay small: PNG figures only, and a few hundred KiB per notebook."""
    notebook = nbformat.read(path, as_version=4)
    kinds = {kind for cell in notebook.cells for o in cell.get("outputs", []) for kind in o.get("data", {})}
    assert kinds <= {"text/plain", "image/png"}, f"{path.name}: unexpected output types {kinds}"
    assert path.stat().st_size < 800 * 1024, f"{path.name}: {path.stat().st_size / 1024:.0f} KiB"


@pytest.mark.parametrize("path", TUTORIALS, ids=[p.stem for p in TUTORIALS])
@pytest.mark.usefixtures("shared_cache")
def test_tutorial_executes(path, tmp_path):
    from nbclient import NotebookClient

    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(notebook, timeout=900, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    errors = [o for c in notebook.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors


def test_the_mark_channel_has_one_definition():
    """Every tutorial that speaks of the mark channel names it with the demo's crp.app.demo.find_mark_channel."""
    speaking = []
    for path in TUTORIALS:
        notebook = nbformat.read(path, as_version=4)
        text = "\n".join(cell.source for cell in notebook.cells)
        if "mark channel" in text:
            speaking.append(path.name)
            assert "from crp.app.demo import find_mark_channel" in text, path.name
            assert "find_mark_channel(model, layer" in text, path.name
    assert len(speaking) >= 2
