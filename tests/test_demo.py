"""Tests of crp.app.demo: the artifact search on a hand-built model, sample picking, arguments, a quick run."""
import contextlib
import io
import json
import math
import re

import pytest
import torch
from PIL import Image

from crp.app.demo import (
    MANIFEST_NAME,
    QUICK_SETTINGS,
    DemoError,
    _find_artifact_channel,
    _pick_samples,
    activation_response,
    format_summary,
    run_demo,
)
from crp.app.shapes import ShapesDataset
from crp.app.shapes_model import ShapesNet, torch_threads
from crp.attribution import CondAttribution

MARK_CHANNEL, MID_CHANNEL, ARTIFACT_CHANNEL = 5, 7, 11


pytestmark = pytest.mark.usefixtures("one_thread")


def mark_detector() -> ShapesNet:
    """A ShapesNet whose only path to 'cross' is a detector of the magenta 3x3 patch at rows/cols 1-3.

    features.0 channel 5 sums R - G + B over a 3x3 window minus 17.5: only the exact patch (sum 18) makes it
    positive, at pixel (2, 2). features.3 channel 7 and features.6 channel 11 copy it (centre taps), after
    max-pooling it sits at (0, 0); classifier.0 unit 0 sums channel 11, which is the 'cross' logit.
    """
    model = ShapesNet()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.zero_()
        model.features[0].weight[MARK_CHANNEL] = torch.tensor([1.0, -1.0, 1.0]).view(3, 1, 1)
        model.features[0].bias[MARK_CHANNEL] = -17.5
        model.features[3].weight[MID_CHANNEL, MARK_CHANNEL, 1, 1] = 1.0
        model.features[6].weight[ARTIFACT_CHANNEL, MID_CHANNEL, 1, 1] = 1.0
        model.classifier[0].weight[0, ARTIFACT_CHANNEL * 16:(ARTIFACT_CHANNEL + 1) * 16] = 1.0
        model.classifier[2].weight[3, 0] = 1.0
    return model.eval()


def test_mark_detector_fires_only_on_the_mark():
    marked = ShapesDataset("test", n=50, artifact_rate=1.0, other_rate=1.0).tensors()[0]
    clean = ShapesDataset("test", n=50, artifact_rate=0.0, other_rate=0.0).tensors()[0]
    model = mark_detector()
    assert torch.allclose(model(marked)[:, 3], torch.full((50,), 0.5))
    assert (model(clean) == 0).all()


def test_activation_response_by_hand():
    with_artifact = torch.tensor([[1.0, 2.0, 5.0], [3.0, 2.0, 5.0]])
    without = torch.tensor([[1.0, 2.0, 5.0], [1.0, 2.0, 5.0]])
    # channel 0: values 1, 3, 1, 1 -> mean difference 1, sample std sqrt(((-.5)^2 * 3 + 1.5^2) / 3) = 1
    assert activation_response(with_artifact, without).tolist() == [1.0, 0.0, 0.0]  # constant channels: 0
    assert activation_response(without, with_artifact).tolist() == [-1.0, 0.0, 0.0]


@pytest.mark.parametrize("layer, channel", [("features.6", ARTIFACT_CHANNEL), ("features.3", MID_CHANNEL)])
def test_artifact_channel_of_the_mark_detector(layer, channel):
    model = mark_detector()
    channels = dict(model.named_modules())[layer].out_channels
    finding, images, maps = _find_artifact_channel(CondAttribution(model), layer, channels, QUICK_SETTINGS, 6)
    assert finding.layer == layer and finding.channel == channel and finding.class_name == "cross"
    # the channel's summed activation is 0.5 on the 6 marked images and 0 on the 6 clean ones: mean difference
    # 0.5 over a sample standard deviation of sqrt(12 * 0.25^2 / 11); every other channel is constant 0
    assert finding.response == pytest.approx(0.5 / math.sqrt(12 * 0.25 ** 2 / 11))
    assert finding.ranking == [(channel, pytest.approx(finding.response)), (0, 0.0), (1, 0.0)]
    assert finding.patch_part == pytest.approx(1.0)  # the only channel with relevance
    assert finding.share_with_artifact == pytest.approx(1.0)
    assert finding.share_without_artifact == 0.0  # no mark: the 'cross' logit and all relevance are zero
    assert finding.logit_with_artifact == pytest.approx(0.5) and finding.logit_without_artifact == 0.0
    # the flat rule spreads the first layer's relevance over its 3x3 window, which is the patch
    assert finding.heatmap_on_patch == pytest.approx(1.0)
    assert finding.patch_area == 9 / 1024
    assert len(images) == len(maps) == 6 and maps.shape == (6, 32, 32)
    assert torch.allclose(maps[:, 1:4, 1:4].sum((1, 2)), torch.full((6,), 0.5))  # relevance = logit


def test_artifact_channel_of_the_first_layer():
    """The first conv layer's output is not rectified: clean images vary too, but only channel 5 varies at all."""
    model = mark_detector()
    finding, _, _ = _find_artifact_channel(CondAttribution(model), "features.0", 16, QUICK_SETTINGS, 6)
    assert finding.channel == MARK_CHANNEL and finding.response > 0 and finding.ranking[1] == (0, 0.0)


def test_pick_samples_takes_turns_over_the_groups():
    test = ShapesDataset("test", n=8)
    test.labels = torch.tensor([0, 3, 3, 1, 2, 0, 3, 1])
    test.has_artifact = torch.tensor([True, False, True, False, True, True, False, True])
    predictions = torch.tensor([3, 3, 3, 1, 2, 3, 0, 1])
    # groups: fooled (other + mark + predicted cross) 0, 5; clean cross 1, 6; marked cross 2; clean other 3
    assert _pick_samples(test, predictions, 8) == [0, 1, 2, 3, 5, 6, 4, 7]
    assert _pick_samples(test, predictions, 2) == [0, 1]
    # nobody fooled: any other shape with the mark comes first
    assert _pick_samples(test, torch.tensor([0, 3, 3, 1, 2, 0, 3, 1]), 1) == [0]


@pytest.mark.parametrize("kwargs, match", [
    ({"layer": "features.1"},
     "layer 'features.1' is not a concept layer of ShapesNet; choose one of features.0, features.3, features.6, "
     "classifier.0"),
    ({"layer": "classifier.2"}, "layer 'classifier.2' is not a concept layer"),
    ({"top_k": 33}, "top must be at most 32, the number of channels of layer 'features.6'; got 33"),
    ({"samples": 0}, r"samples must be an int in \[1, 200\], got 0\. It counts test images to explain\."),
    ({"samples": 201}, r"samples must be an int in \[1, 200\], got 201"),
])
def test_bad_arguments_fail_before_any_work(tmp_path, kwargs, match):
    with pytest.raises(DemoError, match=match):
        run_demo(tmp_path / "out", quick=True, cache_dir=tmp_path / "cache", progress=False, **kwargs)
    assert not (tmp_path / "out").exists() and not (tmp_path / "cache").exists()


@pytest.mark.parametrize("kwargs, match", [
    ({"samples": 2.0}, r"samples must be an int in \[1, 200\], got 2.0"),
    ({"top_k": "4"}, r"top must be an int >= 1, got '4'"),
])
def test_arguments_of_a_wrong_type_fail_before_any_work(tmp_path, kwargs, match):
    with pytest.raises(TypeError, match=match):
        run_demo(tmp_path / "out", quick=True, cache_dir=tmp_path / "cache", progress=False, **kwargs)
    assert not (tmp_path / "out").exists() and not (tmp_path / "cache").exists()


def test_foreign_output_folder_is_refused(tmp_path):
    (tmp_path / "paper.tex").write_text("precious")
    with pytest.raises(DemoError, match="is not empty and was not written by `python -m crp`"):
        run_demo(tmp_path, quick=True, cache_dir=tmp_path / "cache", progress=False)
    assert [p.name for p in tmp_path.iterdir()] == ["paper.tex"]


# ------------------------------------------------------------------------------------------------------------
# a quick run


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    out = tmp_path_factory.mktemp("run") / "demo"
    stdout = io.StringIO()
    with torch_threads(1), contextlib.redirect_stdout(stdout):
        result = run_demo(out, samples=2, top_k=2, quick=True, cache_dir=cache, progress=False)
    return result, out, cache, stdout.getvalue()


def test_quick_run_writes_the_expected_files(quick_run):
    result, out, _, stdout = quick_run
    assert stdout == ""  # the library prints nothing
    assert result.out_dir == out.resolve() and result.layer == "features.6" and len(result.samples) == 2
    art = result.artifact.channel
    expected = {"artifact_channel.png", "summary.json", "report.html", "graph.png", "pixel_flipping.png",
                f"references/{art}_relmax.png", f"references/{art}_actmax.png", f"references/{art}_classes.png"}
    expected |= {f"references/{art}_class_{ShapesDataset.class_names.index(name)}.png"
                 for name, _ in result.artifact_classes}
    for rank, sample in enumerate(result.samples, start=1):
        assert len(sample.concepts) == 2 and sample.shares == sorted(sample.shares, reverse=True)
        names = ["input.png", "heatmap.png", "features.6_overview.png"]
        shown = sample.concepts + ([art] if art not in sample.concepts else [])  # the mark channel is always shown
        names += [f"features.6_{kind}_{c}.png" for c in shown for kind in ("concept", "references")]
        assert 0 <= abs(sample.artifact_share) <= 1
        assert set(sample.files) == {f"sample_{rank}/{name}" for name in names}
        expected |= set(sample.files)
    assert set(result.files) == expected
    on_disk = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file() and "fv" not in p.parts}
    assert on_disk == expected | {MANIFEST_NAME}
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    assert set(manifest["files"]) == expected and manifest["folders"] == ["fv"]
    assert (out / "fv" / "store" / "manifest.json").is_file()
    for name in ("sample_1/input.png", "sample_1/heatmap.png", f"sample_1/features.6_concept_"
                 f"{result.samples[0].concepts[0]}.png"):
        with Image.open(out / name) as image:
            assert image.size == (128, 128)


def test_quick_run_summary_and_report(quick_run):
    result, out, cache, _ = quick_run
    summary = json.loads((out / "summary.json").read_text())
    assert summary["layer"] == "features.6" and summary["artifact"]["channel"] == result.artifact.channel
    assert summary["model"]["test_accuracy"] == result.info.test_accuracy
    assert summary["model"]["settings"]["n_train"] == QUICK_SETTINGS.n_train
    assert [s["index"] for s in summary["samples"]] == [s.index for s in result.samples]
    assert set(summary["flipping_auc"]) == {"morf", "lrf", "random"} and summary["fv_reused"] is False
    assert [tuple(n) for n in summary["graph_nodes"]][0] == ("features.6", result.samples[0].concepts[0])
    assert result.info.cache_file.parent == cache and not result.info.from_cache
    first = result.samples[0]
    assert first.has_artifact and first.label != "cross"  # the first sample shows the shortcut's case
    report = (out / "report.html").read_text()
    assert report.count("<img") == report.count('src="data:image/png;base64,') > 10  # all images embedded
    assert f"The concept that responds to the mark: features.6 #{result.artifact.channel}" in report
    for heading in ("Sample 1: test #", "Attribution graph", "Faithfulness: pixel flipping"):
        assert heading in report
    text = format_summary(result)
    assert text.splitlines()[0].startswith(f"crp demo: wrote {len(result.files)} files to {out.resolve()}")
    assert f"features.6 #{result.artifact.channel} responds most to the mark" in text
    short = [line for line in text.splitlines() if str(out.resolve()) not in line and str(cache) not in line]
    assert max(len(line) for line in short) <= 110 and len(text.splitlines()) <= 24  # one screen


def test_quick_rerun_reuses_the_feature_visualization_and_replaces_its_files(quick_run):
    result, out, cache, _ = quick_run
    store = out / "fv" / "store" / "manifest.json"
    written = store.stat().st_mtime_ns
    rerun = run_demo(out, samples=1, top_k=1, quick=True, cache_dir=cache, progress=False)
    assert rerun.info.from_cache and rerun.info.test_accuracy == result.info.test_accuracy and rerun.fv_reused
    assert store.stat().st_mtime_ns == written  # a complete search with the same model is not redone
    shown = {int(p.stem.rsplit("_", 1)[1]) for p in (out / "sample_1").glob("*_concept_*.png")}
    assert not (out / "sample_2").exists() and shown == {rerun.samples[0].concepts[0], rerun.artifact.channel}
    assert rerun.samples[0].index == result.samples[0].index
    assert rerun.artifact == result.artifact
    fresh = run_demo(out, samples=1, top_k=1, quick=True, cache_dir=cache, progress=False, fresh=True)
    assert not fresh.fv_reused and store.stat().st_mtime_ns != written
    assert re.search(r"\(computed\)", (out / "report.html").read_text())


def test_find_mark_channel_is_the_demos_definition():
    """The shared name of "the mark channel" (demo and tutorials): the detector, with the demo's search."""
    from crp.app.demo import find_mark_channel

    finding = find_mark_channel(mark_detector(), "features.6", settings=QUICK_SETTINGS, images=6)
    expected, _, _ = _find_artifact_channel(CondAttribution(mark_detector()), "features.6", 32, QUICK_SETTINGS, 6)
    assert finding == expected and finding.channel == ARTIFACT_CHANNEL
    with pytest.raises(DemoError, match="layer 'features.9' is not a concept layer of ShapesNet"):
        find_mark_channel(mark_detector(), "features.9")
