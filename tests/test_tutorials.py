"""Every tutorial notebook executes on the embedded default dataset and is committed without outputs."""
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
def test_committed_without_outputs(path):
    notebook = nbformat.read(path, as_version=4)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{path.name} has outputs"


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
