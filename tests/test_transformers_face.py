"""crp.transformers: a thin public face over crp._transformers that does not import Hugging Face transformers."""
import ast
import subprocess
import sys
from pathlib import Path

import pytest

import crp.transformers as face

ROOT = Path(__file__).resolve().parent.parent


def test_the_face_is_thin_and_exports_what_it_imports():
    tree = ast.parse((ROOT / "crp" / "transformers.py").read_text())
    assert [node.name for node in tree.body if isinstance(node, (ast.FunctionDef, ast.ClassDef))] == []
    assert sorted(face.__all__) == sorted(set(face.__all__))
    assert all(hasattr(face, name) for name in face.__all__)


def test_importing_it_does_not_import_hugging_face_transformers():
    code = "import sys, crp.transformers; print(sorted(m for m in sys.modules if m.split('.')[0] == 'transformers'))"
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT,
                            env={"PYTHONPATH": str(ROOT), "PATH": ""}).stdout
    assert output.strip() == "[]"


def test_the_readme_examples_run_as_written(tmp_path, monkeypatch):
    pytest.importorskip("transformers")
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Transformers"):readme.index("\n## ", readme.index("## Transformers") + 1)]
    blocks = [part.split("```")[0] for part in section.split("```python\n")[1:]]
    assert len(blocks) == 2
    monkeypatch.chdir(tmp_path)
    namespace = {}
    for index, block in enumerate(blocks):
        exec(compile(block, f"README Transformers block {index}", "exec"), namespace)
    assert namespace["per_token"].shape == (1, 6)
    assert namespace["per_neuron"].shape == (64, 6) and namespace["per_head"].shape == (2, 6)
    windows = namespace["windows"]
    assert sorted(windows) == [0, 1] and all(len(w) == 4 for w in windows.values())
    assert all(w.positions[w.center] == w.token and len(w.positions) <= 7 for ws in windows.values() for w in ws)
    assert (tmp_path / "reference_tokens.png").stat().st_size > 0
