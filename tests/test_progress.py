"""Progress bars (tqdm.auto) go to stderr when asked for and never otherwise: reference images, the attribution
graph, and the steps of ``demo`` and ``analyze``."""
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from zennit.composites import EpsilonPlusFlat

from crp.app.cli import main
from crp.attribution import AttributionGraph, CondAttribution
from crp.cache import ImageCache
from crp.concepts import ChannelConcept
from crp.graph import trace_model_graph
from crp.visualization import FeatureVisualization

from helpers import LAYERS, TensorData, TinyNet

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parents[1]


def test_no_plain_tqdm_anywhere():
    """Every bar of crp is crp._utils.progress.tqdm (tqdm.auto: a widget in Jupyter, text in a terminal)."""
    direct = [str(path.relative_to(ROOT)) for path in (ROOT / "crp").rglob("*.py")
              if path.name != "progress.py" or path.parent.name != "_utils"
              if re.search(r"^\s*(from tqdm[\w.]* import|import tqdm)", path.read_text(), flags=re.M)]
    assert direct == []
    plain = [str(path.relative_to(ROOT)) for folder in ("benchmarks", "tutorials")
             for path in (ROOT / folder).rglob("*.py")
             if re.search(r"^\s*(from tqdm import|import tqdm\s*$)", path.read_text(), flags=re.M)]
    assert plain == []


def test_tqdm_disable_in_the_environment_switches_every_bar_off(fv, capsys, monkeypatch):
    """TQDM_DISABLE=1 (as tutorials/execute.py sets it) wins over verbose=True, which tqdm alone would not do."""
    monkeypatch.setenv("TQDM_DISABLE", "1")
    fv.get_max_reference([0, 1], "conv1", "relevance", (0, 2), EpsilonPlusFlat(), plot_fn=None, verbose=True)
    assert capsys.readouterr().err == ""
    monkeypatch.setenv("TQDM_DISABLE", "0")
    fv.get_max_reference([0, 1], "conv1", "relevance", (0, 2), EpsilonPlusFlat(), plot_fn=None, verbose=True)
    assert re.search(r"references of conv1: 100%.* 2/2 ", capsys.readouterr().err)


def test_no_ipywidgets_warning_in_a_notebook_kernel():
    """In a Jupyter kernel without ipywidgets, tqdm.auto warns "IProgress not found"; crp's bars fall back to text
    quietly."""
    script = textwrap.dedent("""
        import sys, types, warnings
        sys.modules["ipykernel.zmqshell"] = types.ModuleType("ipykernel.zmqshell")  # what tqdm looks for
        shell = type("ZMQInteractiveShell", (), {})()
        sys.modules["IPython"] = types.SimpleNamespace(get_ipython=lambda: shell)
        sys.modules["ipywidgets"] = None  # not installed
        with warnings.catch_warnings(record=True) as caught:  # not "error": tqdm.auto catches what it warns
            warnings.simplefilter("always")
            from crp._utils.progress import tqdm
        assert [str(warning.message) for warning in caught] == []
        from tqdm.notebook import tqdm as widget_bar
        from tqdm.std import tqdm as text_bar
        assert issubclass(tqdm, text_bar) and not issubclass(tqdm, widget_bar), tqdm.__mro__
        print("quiet")
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, check=False)
    assert (done.returncode, done.stdout.strip(), done.stderr) == (0, "quiet", "")


@pytest.fixture(scope="module")
def fv(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("fv")
    fv = FeatureVisualization(CondAttribution(TinyNet().double().eval()), TensorData(),
                              {name: ChannelConcept() for name in LAYERS}, path=path / "store", top_k=4,
                              cache=ImageCache(path / "cache"))
    fv.run(EpsilonPlusFlat(), 0, 16, verbose=False)
    return fv


def tiles(samples, _heatmaps, _rf):
    """A plot function: one small image per reference sample."""
    from PIL import Image

    return [Image.new("L", (2, 2)) for _ in samples]


def test_references_show_progress_when_asked(fv, capsys):
    fv.get_max_reference([0, 1], "conv1", "relevance", (0, 2), EpsilonPlusFlat(), plot_fn=None, verbose=False)
    fv.get_stats_reference(0, "conv1", [0], "relevance", (0, 2), EpsilonPlusFlat(), plot_fn=None, verbose=False)
    assert capsys.readouterr().err == ""
    fv.get_max_reference([0, 1], "conv1", "relevance", (0, 2), EpsilonPlusFlat(), plot_fn=None)
    assert re.search(r"references of conv1: 100%.* 2/2 ", capsys.readouterr().err)
    fv.get_stats_reference(0, "conv1", [0, 1], "relevance", (0, 2), EpsilonPlusFlat(), plot_fn=None)
    assert re.search(r"references of conv1 #0: 100%.* 2/2 ", capsys.readouterr().err)
    fv.precompute_ref({"conv2": [0, 1, 2]}, EpsilonPlusFlat(), rf=False, plot_list=[tiles], verbose=False)
    assert capsys.readouterr().err == ""
    fv.precompute_ref({"conv2": [3, 4]}, EpsilonPlusFlat(), rf=False, plot_list=[tiles])
    assert re.search(r"conv2: 100%.* 2/2 ", capsys.readouterr().err)


def test_cached_references_show_no_bar(fv, capsys):
    fv.get_max_reference([2], "conv1", "relevance", (0, 2), EpsilonPlusFlat(), plot_fn=tiles)
    assert "references of conv1" in capsys.readouterr().err
    fv.get_max_reference([2], "conv1", "relevance", (0, 2), EpsilonPlusFlat(), plot_fn=tiles)
    assert capsys.readouterr().err == ""  # all from the cache: nothing to wait for


def test_attribution_graph_shows_one_bar_over_its_concepts(capsys):
    torch.manual_seed(0)
    model = TinyNet().eval()
    sample = torch.randn(1, 1, 8, 8)
    graph = trace_model_graph(model, sample, LAYERS)
    attgraph = AttributionGraph(CondAttribution(model), graph, {name: ChannelConcept() for name in LAYERS})
    result = attgraph(sample.clone().requires_grad_(), EpsilonPlusFlat(), 0, "fc1", target=0, width=[2, 2],
                      verbose=False)
    assert capsys.readouterr().err == ""
    attgraph(sample.clone().requires_grad_(), EpsilonPlusFlat(), 0, "fc1", target=0, width=[2, 2])
    err = capsys.readouterr().err
    decomposed = 1 + 2  # fc1 #0, then its two conv2 concepts (conv1 is the lowest layer)
    assert len(result.connections) == decomposed
    assert re.search(rf"AttributionGraph: 100%.* {decomposed}/{decomposed} ", err), err
    assert "CRP" not in err  # generate's own bars stay off


def test_demo_and_analyze_show_their_steps_only_when_asked(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("CRP_CACHE", str(tmp_path / "cache"))
    argv = ["demo", "--out", str(tmp_path / "demo"), "--samples", "1", "--top", "1", "--quick", "--threads", "1"]
    assert main(argv) == 0
    err = capsys.readouterr().err
    for step in ("reference-sample search", "the channel that responds to the mark", "its reference samples",
                 "explaining samples", "attribution graph", "pixel flipping"):
        assert "crp demo" in err and step in err, step
    assert "FeatureVisualization" in err and "training ShapesNet" in err
    assert main(argv + ["--no-progress"]) == 0
    assert capsys.readouterr().err == ""
    small = ["--image-size", "16", "--samples", "1", "--top", "1", "--references", "2", "--flip-samples", "2",
             "--flip-steps", "2", "--threads", "1"]
    argv = ["analyze", "--model", "helpers:tiny_model", "--data", "helpers:tiny_data", "--out",
            str(tmp_path / "analyze"), *small]
    assert main(argv) == 0
    err = capsys.readouterr().err
    for step in ("crp analyze", "reference-sample search", "explaining samples", "attribution graph",
                 "pixel flipping"):
        assert step in err, step
    assert main(argv + ["--no-progress"]) == 0
    assert capsys.readouterr().err == ""
