"""The README's demo section is what ``benchmarks/make_readme_images.py`` writes from a run of the demo, and the
claims its prose makes hold for that run.

One full demo run (default settings, one thread, a fresh model cache): about two minutes on a busy two-core
machine. The exact numbers depend on the torch version and the thread count (and the CPU's arithmetic); the
README's marker names those of the run it was generated from, and where they differ here only the claims are
checked.
"""
import importlib.util
from pathlib import Path

import pytest

from crp.app.demo import run_demo

ROOT = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location("make_readme_images", ROOT / "benchmarks" / "make_readme_images.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    script = _script()
    folder = tmp_path_factory.mktemp("readme-demo")
    result = run_demo(folder / "demo", threads=script.THREADS, progress=False, cache_dir=folder / "cache")
    return script, result


def test_the_readme_section_is_generated_from_the_demo(demo):
    script, result = demo
    region = script.readme_region((ROOT / "README.md").read_text())
    if script.environment() not in " ".join(region.split("-->")[0].split()):
        pytest.skip(f"the README's numbers come from another environment than {script.environment()}")
    marked = script.actmax_marked(result.out_dir, result.layer, result.artifact.channel)
    expected = script.readme_section(result, marked)
    assert script.normalize_times(region) == script.normalize_times(expected)


def test_the_claims_of_the_readme_hold(demo):
    script, result = demo
    art, info = result.artifact, result.info
    # "raises the activation of channel c more than that of any other channel": the mark channel by definition
    assert art.ranking[0] == (art.channel, art.response) and art.response >= art.ranking[1][1] > 0
    assert art.class_name == "cross" and result.samples[0].concepts  # the first image and its top channels
    # the model looks excellent on held-out data, and the mark makes other shapes 'cross'
    assert info.validation_accuracy > 0.95
    assert info.shortcut_rate_with_artifact > 10 * max(info.shortcut_rate_without_artifact, 0.001)
    # the heatmap points at the mark: far more relevance on it than its share of the pixels
    assert art.heatmap_on_patch > 10 * art.patch_area
    assert art.share_with_artifact > art.share_without_artifact
    # the first explained image is a shape other than a cross, carrying the mark, called 'cross'
    first = result.samples[0]
    assert first.has_artifact and first.label != "cross" and first.prediction == "cross"
    # ActMax: most of the mark channel's 8 most activating test images carry the mark
    assert script.actmax_marked(result.out_dir, result.layer, art.channel) >= 6
    # pixel flipping: MoRF lowest, LRF highest
    auc = result.flipping_auc
    assert auc["morf"] < auc["random"] < auc["lrf"]
    # the summary's file count is what was written
    assert len(set(result.files)) == len(result.files) and all((result.out_dir / f).is_file() for f in result.files)
