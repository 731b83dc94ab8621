"""The API reference site lists every public module, and CI builds it with warnings as errors.

Sphinx itself does not run here (too slow for the suite): `make docs`, which `.ci/run` calls, builds the site.
"""
import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def documented_modules():
    """``PUBLIC_MODULES`` of docs/conf.py, read without importing Sphinx."""
    tree = ast.parse((ROOT / "docs" / "conf.py").read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets] == ["PUBLIC_MODULES"]:
            return ast.literal_eval(node.value)
    raise AssertionError("docs/conf.py assigns no PUBLIC_MODULES")


def public_modules():
    """The faces: crp/*.py and the public sub-packages with their modules; no private package, no crp.app."""
    package = ROOT / "crp"
    found = {f"crp.{p.stem}" for p in package.glob("*.py") if p.stem not in {"__init__", "__main__"}}
    for sub in package.iterdir():
        if sub.is_dir() and (sub / "__init__.py").is_file() and not sub.name.startswith("_") and sub.name != "app":
            found.add(f"crp.{sub.name}")
            found |= {f"crp.{sub.name}.{p.stem}" for p in sub.glob("*.py") if not p.stem.startswith("_")}
    return found


def test_public_modules_are_the_faces():
    assert {"crp.attribution", "crp.evaluation", "crp.evaluation.plot"} <= public_modules()
    assert not [name for name in public_modules() if "._" in name or name.startswith("crp.app")]


def test_docs_list_every_public_module_once():
    listed = documented_modules()
    assert len(listed) == len(set(listed)), f"listed twice: {sorted(n for n in listed if listed.count(n) > 1)}"
    assert set(listed) == public_modules(), (
        f"docs/conf.py PUBLIC_MODULES misses {sorted(public_modules() - set(listed))} "
        f"and lists {sorted(set(listed) - public_modules())}, which are no public modules"
    )


@pytest.mark.parametrize("name", sorted(public_modules()))
def test_public_module_exports_with_all(name):
    """The API pages are written from each face's ``__all__``: it must exist and name what the module has."""
    module = importlib.import_module(name)
    assert module.__doc__, f"{name} has no module docstring (the top of its API page)"
    assert module.__all__, f"{name} has no __all__"
    assert [attr for attr in module.__all__ if not hasattr(module, attr)] == []


def test_ci_builds_the_docs_with_warnings_as_errors():
    assert "make docs" in (ROOT / ".ci" / "run").read_text().splitlines()
    makefile = (ROOT / "Makefile").read_text()
    assert "SPHINXOPTS ?= -W --keep-going" in makefile and "docs/_build/html" in makefile
    assert "docs/_build/" in (ROOT / ".gitignore").read_text().splitlines()
