"""Tests of crp.demo: the artifact search on a hand-built model, the explanations, the output folder, a quick run."""
import contextlib
import io
import json

import pytest
import torch
from PIL import Image

from crp.attribution import CondAttribution
from crp.concepts import ChannelConcept
from crp.data import ShapesDataset
from crp.demo import (
    MANIFEST_NAME,
    QUICK_SETTINGS,
    DemoError,
    _explain,
    _find_artifact_channel,
    _Output,
    _pick_samples,
    run_demo,
)
from crp.models import ShapesNet, torch_threads

MARK_CHANNEL, MID_CHANNEL, ARTIFACT_CHANNEL = 5, 7, 11


@pytest.fixture(autouse=True)
def one_thread():
    """Two torch threads on a busy two-core machine are many times slower than one."""
    with torch_threads(1):
        yield


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


@pytest.mark.parametrize("layer, channel", [("features.6", ARTIFACT_CHANNEL), ("features.3", MID_CHANNEL),
                                            ("features.0", MARK_CHANNEL)])
def test_artifact_channel_of_the_mark_detector(layer, channel):
    model = mark_detector()
    channels = dict(model.named_modules())[layer].out_channels
    finding, images, maps = _find_artifact_channel(CondAttribution(model), layer, channels, QUICK_SETTINGS, True)
    assert finding.layer == layer and finding.channel == channel and finding.class_name == "cross"
    assert finding.patch_part == pytest.approx(1.0)
    assert finding.ranking[0] == (channel, pytest.approx(1.0)) and [p for _, p in finding.ranking[1:]] == [0, 0]
    assert finding.share_with_artifact == pytest.approx(1.0)  # the only channel with relevance
    assert finding.share_without_artifact == 0.0  # no mark: the 'cross' logit and all relevance are zero
    # the flat rule spreads the first layer's relevance over its 3x3 window, which is the patch
    assert finding.heatmap_on_patch == pytest.approx(1.0)
    assert finding.patch_area == 9 / 1024
    assert len(images) == len(maps) == 6 and maps.shape == (6, 32, 32)
    assert torch.allclose(maps[:, 1:4, 1:4].sum((1, 2)), torch.full((6,), 0.5))  # relevance = logit


def test_explain_matches_channel_relevances_and_conserves():
    torch.manual_seed(0)
    model = ShapesNet().eval()
    image = ShapesDataset("test", n=3)[2][0]
    attribution = CondAttribution(model)
    prediction, heatmap, channels, shares, maps = _explain(attribution, image, "features.3", 32)
    assert prediction == int(model(image[None]).argmax())
    assert sorted(channels) == list(range(32)) and shares == sorted(shares, reverse=True)
    # the conditional heatmaps of all channels add up to the heatmap of the prediction
    assert torch.allclose(maps.sum(0), heatmap, atol=1e-6 * float(heatmap.abs().max()))
    # the shares are the abs-normalized channel relevances, independent of the demo's code
    x = image[None].clone().requires_grad_(True)
    from zennit.composites import EpsilonPlusFlat
    result = attribution(x, [{"y": [prediction]}], EpsilonPlusFlat(), record_layer=["features.3"])
    expected = ChannelConcept().attribute(result.relevances["features.3"])[0]
    assert torch.allclose(torch.tensor(shares), expected[channels])
    _, _, top, top_shares, top_maps = _explain(attribution, image, "features.3", 3)
    assert top_shares == pytest.approx(shares[:3]) and top_maps.shape == (3, 32, 32)  # ties may swap channels
    for channel, top_map in zip(top, top_maps):
        assert torch.allclose(top_map, maps[channels.index(channel)], atol=1e-6 * float(maps.abs().max()))


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


# ------------------------------------------------------------------------------------------------------------
# the output folder


def test_output_refuses_a_file(tmp_path):
    target = tmp_path / "a.txt"
    target.write_text("mine")
    with pytest.raises(DemoError, match="is a file, not a folder; choose a new or empty folder"):
        _Output(target)
    assert target.read_text() == "mine"


@pytest.mark.parametrize("manifest", [None, "not json", '{"files": [1]}', '{"other": []}'])
def test_output_refuses_a_foreign_folder(tmp_path, manifest):
    (tmp_path / "thesis.tex").write_text("mine")
    if manifest is not None:
        (tmp_path / MANIFEST_NAME).write_text(manifest)
    with pytest.raises(DemoError, match=r"is not empty and was not written by `crp demo`.*choose a new or empty"):
        _Output(tmp_path)
    assert (tmp_path / "thesis.tex").read_text() == "mine"


def test_output_accepts_a_new_or_empty_folder(tmp_path):
    assert _Output(tmp_path).previous == []
    output = _Output(tmp_path / "new" / "deeper")
    assert not (tmp_path / "new").exists()  # nothing is created before claim()
    output.claim(["a.txt"])
    output.write("sub/a.txt", lambda path: path.write_text("x"))
    output.finish()
    manifest = json.loads((tmp_path / "new" / "deeper" / MANIFEST_NAME).read_text())
    assert manifest["files"] == ["sub/a.txt"]


def test_output_removes_only_its_own_stale_files(tmp_path):
    out = tmp_path / "out"
    first = _Output(out)
    first.claim([])
    for name in ("keep.png", "sample_2/old.png"):
        first.write(name, lambda path: path.write_text("old"))
    first.finish()
    (out / "notes.txt").write_text("user")  # a file the user put there later
    (tmp_path / "victim.txt").write_text("outside")
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    manifest["files"].append("../victim.txt")  # a tampered manifest must not reach outside the folder
    (out / MANIFEST_NAME).write_text(json.dumps(manifest))
    second = _Output(out)
    second.claim(["keep.png"])
    second.write("keep.png", lambda path: path.write_text("new"))
    second.finish()
    assert (out / "keep.png").read_text() == "new"
    assert not (out / "sample_2").exists()  # its only file was stale, the empty folder goes too
    assert (out / "notes.txt").read_text() == "user" and (tmp_path / "victim.txt").read_text() == "outside"
    assert json.loads((out / MANIFEST_NAME).read_text())["files"] == ["keep.png"]


# ------------------------------------------------------------------------------------------------------------
# a quick run


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    out = tmp_path_factory.mktemp("run") / "demo"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        result = run_demo(out, samples=2, top_k=2, quick=True, cache_dir=cache, progress=False)
    return result, out, cache, stdout.getvalue()


def test_quick_run_writes_the_expected_files(quick_run):
    result, out, _, stdout = quick_run
    assert stdout == ""  # the library prints nothing
    assert result.out_dir == out.resolve() and result.layer == "features.6" and len(result.samples) == 2
    expected = {"artifact_channel.png", "summary.json"}
    for rank, sample in enumerate(result.samples, start=1):
        assert len(sample.concepts) == 2 and sample.shares == sorted(sample.shares, reverse=True)
        names = ["input.png", "heatmap.png", "overview.png"] + [f"concept_{c}.png" for c in sample.concepts]
        expected |= {f"sample_{rank}/{name}" for name in names}
        assert set(sample.files) == {f"sample_{rank}/{name}" for name in names}
    assert set(result.files) == expected
    on_disk = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()}
    assert on_disk == expected | {MANIFEST_NAME}
    assert set(json.loads((out / MANIFEST_NAME).read_text())["files"]) == expected
    for name in ("sample_1/input.png", "sample_1/heatmap.png", f"sample_1/concept_{result.samples[0].concepts[0]}.png"):
        with Image.open(out / name) as image:
            assert image.size == (128, 128)


def test_quick_run_summary(quick_run):
    result, out, cache, _ = quick_run
    summary = json.loads((out / "summary.json").read_text())
    assert summary["layer"] == "features.6"
    assert summary["artifact"]["channel"] == result.artifact.channel
    assert summary["model"]["test_accuracy"] == result.info.test_accuracy
    assert summary["model"]["settings"]["n_train"] == QUICK_SETTINGS.n_train
    assert [s["index"] for s in summary["samples"]] == [s.index for s in result.samples]
    assert result.info.cache_file.parent == cache and not result.info.from_cache
    first = result.samples[0]
    assert first.has_artifact and first.label != "cross"  # the first sample shows the shortcut's case


def test_quick_rerun_replaces_its_files(quick_run):
    result, out, cache, _ = quick_run
    rerun = run_demo(out, samples=1, top_k=1, quick=True, cache_dir=cache, progress=False)
    assert rerun.info.from_cache and rerun.info.test_accuracy == result.info.test_accuracy
    assert not (out / "sample_2").exists() and len(list((out / "sample_1").glob("concept_*.png"))) == 1
    assert rerun.samples[0].index == result.samples[0].index


@pytest.mark.parametrize("kwargs, match", [
    ({"layer": "features.1"},
     "layer 'features.1' is not a concept layer of ShapesNet; choose one of features.0, features.3, features.6, "
     "classifier.0"),
    ({"layer": "classifier.2"}, "layer 'classifier.2' is not a concept layer"),
    ({"top_k": 33}, "top must be at most 32, the number of channels of layer 'features.6'; got 33"),
    ({"samples": 0}, "samples must be an int of at least 1 and at most 200, got 0"),
    ({"samples": 201}, "samples must be an int of at least 1 and at most 200, got 201"),
])
def test_bad_arguments_fail_before_any_work(tmp_path, kwargs, match):
    with pytest.raises(DemoError, match=match):
        run_demo(tmp_path / "out", quick=True, cache_dir=tmp_path / "cache", progress=False, **kwargs)
    assert not (tmp_path / "out").exists() and not (tmp_path / "cache").exists()
