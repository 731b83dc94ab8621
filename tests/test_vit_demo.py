"""Tests of the transformer demo (``python -m crp demo --model vit``): the tiny ViT, its shortcut neuron, the files."""
import json

import pytest
import torch

from crp.app.cli import main
from crp.app.shapes import ShapesDataset
from crp.app.shapes_model import torch_threads
from crp.app.shapes_vit import QUICK_VIT_SETTINGS, ViTSettings, mark_tokens, shapes_vit, train_vit_model
from crp.app.vit_demo import (
    ViTDemoError,
    _patch_mask,
    _token_parts,
    format_vit_summary,
    run_vit_demo,
)

#: Enough training to learn the shortcut in about half a minute of one thread (the default trains 12x longer).
MID_SETTINGS = ViTSettings(epochs=4, n_train=3000, n_test=200)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("vit_quick")
    with torch_threads(1):
        result = run_vit_demo(root / "out", quick=True, cache_dir=root / "cache", progress=False, threads=1,
                              references=4)
    return result, root


@pytest.fixture(scope="module")
def mid_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("vit_mid")
    with torch_threads(1):
        return run_vit_demo(root / "out", settings=MID_SETTINGS, cache_dir=root / "cache", progress=False, threads=1,
                            references=16)


def test_mark_tokens_by_hand():
    # the mark covers rows and columns 1..3: inside the first patch of 8 or 4 pixels; with 2 pixels it spans
    # patch rows 0-1 and columns 0-1 of a 16x16 grid: tokens 1, 2, 17, 18 (token 0 is the class token)
    assert mark_tokens(8) == [1]
    assert mark_tokens(4) == [1]
    assert mark_tokens(2) == [1, 2, 17, 18]
    assert _patch_mask([1], 8, 32).sum() == 64 and _patch_mask([1], 8, 32)[:8, :8].all()
    assert _patch_mask([6], 8, 32)[8:16, 8:16].all()  # token 6: patch row 1, column 1


def test_token_parts_by_hand():
    relevance = torch.zeros(2, 3, 4)  # 2 images, 3 tokens, 4 neurons
    relevance[0, 1] = torch.tensor([3.0, -1.0, 0.0, 0.0])
    relevance[1, 1] = torch.tensor([1.0, 0.0, 0.0, 4.0])
    relevance[:, 2] = 100.0  # another token: not counted
    # at token 1 the neurons sum to 4, -1, 0, 4 over the images; absolute sum 9
    assert torch.allclose(_token_parts(relevance, [1]), torch.tensor([4, -1, 0, 4], dtype=torch.float64) / 9)


def test_the_tiny_vit_and_its_cache(tmp_path):
    model = shapes_vit(QUICK_VIT_SETTINGS)
    assert model.patch_size == 8 and len(model.encoder.layers) == 2 and model.heads.head.out_features == 4
    with torch_threads(1):
        first, info = train_vit_model(tmp_path, settings=QUICK_VIT_SETTINGS, progress=False, threads=1)
        again, cached = train_vit_model(tmp_path, settings=QUICK_VIT_SETTINGS, progress=False, threads=1)
    assert not info.from_cache and cached.from_cache and cached.cache_file == info.cache_file
    for name, value in first.state_dict().items():
        assert torch.equal(value, again.state_dict()[name]), name
    assert info.test_accuracy == cached.test_accuracy


def test_bad_settings_and_layer_fail_before_any_work(tmp_path):
    with pytest.raises(ValueError, match="patch_size must be a divisor of the image size 32, got 5"):
        train_vit_model(tmp_path, settings=ViTSettings(patch_size=5), progress=False)
    with pytest.raises(ViTDemoError, match="layer 'neurons.1' is not a layer of the shapes ViT whose tokens carry"):
        run_vit_demo(tmp_path / "out", "neurons.1", quick=True, cache_dir=tmp_path / "cache", progress=False)
    assert not list((tmp_path / "cache").glob("*.pt")) if (tmp_path / "cache").exists() else True


def test_quick_run_writes_the_files_and_the_report(quick_run):
    result, _ = quick_run
    out = result.out_dir
    assert sorted(result.files) == ["neuron_shares.png", "relmax.png", "relmax_patches.png", "report.html",
                                    "shortcut_neuron.png", "summary.json"]
    for name in result.files:
        assert (out / name).stat().st_size > 0
    assert list((out / "fv").iterdir())
    summary = json.loads((out / "summary.json").read_text())
    found = result.neuron
    assert summary["neuron"]["neuron"] == found.neuron and summary["references"] == result.references
    test = ShapesDataset("test", n=QUICK_VIT_SETTINGS.n_test, seed=QUICK_VIT_SETTINGS.seed)
    assert summary["test_marked"] == result.test_marked == float(test.has_artifact.double().mean())
    assert result.reference_marked == [bool(test.has_artifact[i]) for i in result.references]
    assert len(result.shares) == QUICK_VIT_SETTINGS.mlp and found.share == max(result.shares)
    assert found.ranking[0] == (found.neuron, found.share) and found.tokens == [1]
    assert len(result.references) == 4 and len(set(result.references)) == 4
    report = (out / "report.html").read_text()
    assert f"The shortcut neuron: neurons.0 #{found.neuron}" in report
    text = format_vit_summary(result)
    assert f"neurons.0 #{found.neuron} carries" in text and str(out) in text


def test_cli_runs_the_vit_demo(quick_run, capsys):
    _, root = quick_run
    out = root / "cli_out"
    argv = ["demo", "--model", "vit", "--out", str(out), "--quick", "--no-progress", "--threads", "1",
            "--cache-dir", str(root / "cache")]
    assert main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"crp demo --model vit: wrote 6 files to {out.resolve()}")
    assert "loaded from" in lines[2]  # the quick model of the fixture's cache


def test_cli_refuses_cnn_options_with_vit(tmp_path, capsys):
    argv = ["demo", "--model", "vit", "--out", str(tmp_path / "out"), "--samples", "2", "--quick", "--no-progress"]
    assert main(argv) == 2
    error = capsys.readouterr().err.strip()
    assert error == ("python -m crp demo: error: --samples apply to --model cnn only; leave them out with "
                     "--model vit.")
    assert not (tmp_path / "out").exists()


def test_mid_run_finds_the_shortcut_neuron(mid_run):
    """A model trained on MID_SETTINGS (seed 0, one thread) has learned the shortcut, and CRP finds it."""
    info, found = mid_run.info, mid_run.neuron
    assert info.shortcut_rate_with_artifact > 0.9 > 0.05 > info.shortcut_rate_without_artifact
    # the neuron found on 24 marked images is the top neuron on 24 other ones too, well ahead of the next
    assert found.held_out_rank == 1
    assert found.share > 1.5 * found.ranking[1][1]
    # its conditional heatmap lies on the mark's patch far beyond the patch's area, and the mark excites it there
    assert found.patch_part > 5 * found.patch_area
    assert found.activation_with_mark > found.activation_without_mark
    # RelMax over the test split (about half of it marked): its top references carry the mark, at the mark's token
    # (on the machine the test was written on: 15 of 16 each; chance would give about 8)
    assert len(mid_run.references) == 16 == len(mid_run.reference_marked) == len(mid_run.reference_tokens)
    assert sum(mid_run.reference_marked) >= 12
    assert sum(token in found.tokens for token in mid_run.reference_tokens) >= 12


def test_quick_run_on_the_residual_stream(quick_run):
    """The first block's output (N, T, 64) serves as concept layer too: 64 dimensions, one ranked."""
    _, root = quick_run
    layer = "model.encoder.layers.encoder_layer_0"
    with torch_threads(1):
        result = run_vit_demo(root / "residual", layer, quick=True, cache_dir=root / "cache", progress=False,
                              threads=1, references=4)
    found = result.neuron
    assert found.layer == layer and len(result.shares) == QUICK_VIT_SETTINGS.hidden
    assert found.share == max(result.shares) and result.shares[found.neuron] == found.share
    assert abs(sum(abs(s) for s in result.shares) - 1) < 1e-9  # parts of the absolute sum
