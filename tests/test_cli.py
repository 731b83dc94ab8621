"""Tests of the command line: ``python -m crp demo`` and ``python -m crp analyze`` end to end, and their errors.

``analyze`` runs on a tiny model and image folder made here: ``helpers:tiny_model`` (a module:callable on
the tests' path), a torchvision ResNet-18 with ``--num-classes`` and random weights saved by the test, and a
folder of 16 x 16 PNG images in three classes.
"""
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from crp._utils.text import one_line
from crp.app.analyze import AnalyzeError, AnalyzeOptions, prepare
from crp.app.cli import build_parser, main
from crp.app.output import MANIFEST_NAME
from crp.app.shapes_model import torch_threads

import helpers

ROOT = Path(__file__).resolve().parents[1]
# small settings for every analyze run (the defaults suit real models)
SMALL = ["--image-size", "16", "--samples", "1", "--top", "2", "--references", "2", "--fv-samples", "0",
         "--flip-samples", "2", "--flip-steps", "2", "--batch-size", "4", "--no-progress", "--threads", "1"]
TINY = ["--model", "helpers:tiny_model"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv("CRP_CACHE", str(folder))
    return folder


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """An image folder: three classes of four 16 x 16 PNG images (one a greyscale image)."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for label in ("cat", "dog", "owl"):
        (root / label).mkdir()
        for i in range(4):
            Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(root / label / f"{i}.png")
    Image.fromarray(rng.integers(0, 256, (16, 16), dtype=np.uint8)).save(root / "owl" / "grey.png")
    (root / "owl" / "notes.txt").write_text("not an image: ImageFolder skips it")
    return root


def one_line_error(capsys, *fragments):
    captured = capsys.readouterr()
    assert captured.out == ""
    error = captured.err.strip()
    assert "\n" not in error and "Traceback" not in error
    for fragment in fragments:
        assert fragment in error
    return error


# ------------------------------------------------------------------------------------------------------------
# demo


def test_demo_end_to_end(tmp_path, cache, capsys):
    out = tmp_path / "out"
    argv = ["demo", "--out", str(out), "--samples", "2", "--top", "3", "--quick", "--no-progress", "--threads", "1"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert captured.err == ""  # --no-progress: no bars, no log lines
    lines = captured.out.splitlines()
    written = json.loads((out / MANIFEST_NAME).read_text())["files"]
    assert lines[0].startswith(f"crp demo: wrote {len(written)} files to {out.resolve()}")
    assert lines[1] == f"report    {out.resolve() / 'report.html'}"
    assert len(lines) <= 24  # one screen
    for word in ("accuracy", "shortcut", "responds most to the mark", "features.6", "flipping"):
        assert word in captured.out
    summary = json.loads((out / "summary.json").read_text())
    for rank, sample in enumerate(summary["samples"], start=1):
        shown = {int(p.stem.rsplit("_", 1)[1]) for p in (out / f"sample_{rank}").glob("features.6_concept_*.png")}
        assert len(sample["concepts"]) == 3 and shown == set(sample["concepts"]) | {summary["artifact"]["channel"]}
        assert (out / f"sample_{rank}" / "features.6_overview.png").is_file()
    for name in ("artifact_channel.png", "summary.json", "report.html", "graph.png", "pixel_flipping.png"):
        assert (out / name).is_file()
    assert len(list(cache.glob("shapesnet-*.pt"))) == 1


def test_no_command(capsys):
    assert main([]) == 2
    one_line_error(capsys, "choose a command: demo, analyze or merge", "--help")


@pytest.mark.parametrize("command, options", [
    ("demo", ("--model", "--out", "--samples", "--layer", "--top", "--no-progress", "--quick", "--cache-dir",
              "--retrain", "--fresh", "--threads")),
    ("analyze", ("--model", "--weights", "--num-classes", "--list-layers", "--data", "--image-size", "--mean",
                 "--std", "--no-normalize", "--layers", "--composite", "--canonizer", "--samples", "--top",
                 "--references", "--fv-samples", "--flip-samples", "--flip-steps", "--out", "--device",
                 "--batch-size", "--workers", "--checkpoint", "--fresh", "--threads", "--no-progress")),
])
def test_help_lists_every_option(capsys, command, options):
    assert main([command, "--help"]) == 0
    text = capsys.readouterr().out
    for option in options:
        assert option in text
    parser = build_parser()._subparsers._group_actions[0].choices[command]
    assert all(action.help for action in parser._actions)
    assert {o for action in parser._actions for o in action.option_strings} - {"-h", "--help"} == set(options)


@pytest.mark.parametrize("argv, fragments", [
    (["demo", "--samples", "0"], ["argument --samples: must be a positive whole number, got '0'"]),
    (["demo", "--top", "two"], ["argument --top: must be a positive whole number, got 'two'"]),
    (["demo", "--colour"], ["unrecognized arguments: --colour", "python -m crp --help"]),
    (["show"], ["invalid choice: 'show'"]),
    (["analyze", "--data", "x"], ["the following arguments are required: --model"]),
    (["analyze", "--model", "m", "--workers", "-1"], ["argument --workers: must be a whole number >= 0, got '-1'"]),
])
def test_usage_errors(capsys, argv, fragments):
    assert main(argv) == 2
    one_line_error(capsys, *fragments)


def test_demo_bad_layer(tmp_path, cache, capsys):
    assert main(["demo", "--out", str(tmp_path / "out"), "--layer", "conv9", "--quick", "--no-progress"]) == 2
    one_line_error(capsys, "python -m crp demo: error: layer 'conv9' is not a concept layer of ShapesNet",
                   "choose one of features.0, features.3, features.6, classifier.0")
    assert not (tmp_path / "out").exists() and not cache.exists()


@pytest.mark.usefixtures("cache")
def test_demo_too_many_top_channels(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path / "out"), "--layer", "features.0", "--top", "17", "--quick"]) == 2
    one_line_error(capsys, "top must be at most 16, the number of channels of layer 'features.0'; got 17")


@pytest.mark.usefixtures("cache")
def test_demo_foreign_output_folder_is_left_alone(tmp_path, capsys):
    (tmp_path / "paper.tex").write_text("precious")
    assert main(["demo", "--out", str(tmp_path), "--quick", "--no-progress"]) == 2
    one_line_error(capsys, "is not empty and was not written by `python -m crp`", "choose a new or empty folder")
    assert [p.name for p in tmp_path.iterdir()] == ["paper.tex"]


@pytest.mark.usefixtures("cache")
def test_demo_output_is_a_file(tmp_path, capsys):
    (tmp_path / "out").write_text("x")
    assert main(["demo", "--out", str(tmp_path / "out"), "--quick", "--no-progress"]) == 2
    one_line_error(capsys, "is a file, not a folder")


def test_demo_unwritable_cache_is_a_one_line_error(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    argv = ["demo", "--out", str(tmp_path / "out"), "--quick", "--no-progress", "--cache-dir", str(blocker)]
    assert main(argv) == 1
    one_line_error(capsys, str(blocker), "choose another --out or --cache-dir")


def test_python_dash_m_runs_main(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "crp", "demo", "--samples", "-1"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.strip() == ("python -m crp: error: argument --samples: must be a positive whole number, "
                                   "got '-1' (see `python -m crp demo --help`)")


# ------------------------------------------------------------------------------------------------------------
# analyze


def test_analyze_callable_model_on_an_image_folder(tmp_path, images, capsys):
    out = tmp_path / "report"
    argv = ["analyze", *TINY, "--data", str(images), "--out", str(out), "--layers", "3", "0", *SMALL]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    lines = captured.out.splitlines()
    assert lines[0].startswith("crp analyze: wrote ") and str(out.resolve()) in lines[0]
    assert "helpers:tiny_model (random weights, no --weights); epsilon_plus_flat without canonizer" in lines[2]
    assert "image folder" in lines[3] and "(13 images, 3 classes)" in lines[3]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["layers"] == ["0", "3"]  # in the model's order
    assert summary["fv_samples"] == 13 and summary["samples"][0]["index"] == 0
    assert summary["samples"][0]["label"] == "cat" and set(summary["samples"][0]["layers"]) == {"0", "3"}
    assert all(edge[0] == "3" and edge[2] == "0" for edge in summary["graph_edges"])  # graph: layer 3 <- 0
    assert set(summary["flipping_auc"]) == {"morf", "lrf", "random"}
    files = {str(p.relative_to(out)) for p in out.rglob("*.png")}
    assert {"sample_1/input.png", "sample_1/heatmap.png", "sample_1/0_overview.png", "sample_1/3_overview.png",
            "graph.png", "pixel_flipping.png"} <= files
    report = (out / "report.html").read_text()
    assert report.count("<img") == report.count("data:image/png;base64,") >= 8


def test_analyze_torchvision_architecture_with_weights(tmp_path, images, capsys):
    torch.manual_seed(0)
    import torchvision

    weights = tmp_path / "resnet.pt"
    torch.save(torchvision.models.resnet18(num_classes=3).state_dict(), weights)
    out = tmp_path / "report"
    argv = ["analyze", "--model", "resnet18", "--weights", str(weights), "--num-classes", "3", "--data",
            str(images), "--out", str(out), "--composite", "epsilon_gamma_box", *SMALL, "--fv-samples", "6"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert f"resnet18 (weights {weights}); epsilon_gamma_box with ResNetCanonizer" in text
    assert "reference samples from 6 of them" in text
    summary = json.loads((out / "summary.json").read_text())
    assert summary["layers"] == ["layer4.1.conv2"]  # default: the last conv layer
    assert {edge[2] for edge in summary["graph_edges"]} <= {"layer4.1.conv1", "layer4.0.downsample.0"}


def test_analyze_callable_dataset_and_list_layers(tmp_path, capsys):
    assert main(["analyze", *TINY, "--list-layers"]) == 0
    assert capsys.readouterr().out.splitlines() == ["0  Conv2d", "3  Conv2d", "7  Linear"]
    out = tmp_path / "report"
    argv = ["analyze", *TINY, "--data", "helpers:tiny_data", "--out", str(out), *SMALL, "--mean", "0.5",
            "0.5", "0.5", "--std", "0.25", "0.25", "0.25", "--canonizer", "none"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "dataset helpers:tiny_data (12 items)" in text and "-> " in text
    summary = json.loads((out / "summary.json").read_text())
    assert summary["samples"][0]["label"] == "red" and summary["layers"] == ["3"]


def test_analyze_interrupted_and_resumed(tmp_path, capsys, monkeypatch):
    out = tmp_path / "report"
    argv = ["analyze", *TINY, "--data", "helpers:tiny_data", "--out", str(out), *SMALL, "--batch-size", "2",
            "--checkpoint", "1"]
    monkeypatch.setattr(helpers, "INTERRUPT_AT", 7)  # Ctrl-C while the 4th batch (items 6, 7) is read
    assert main(argv) == 130
    error = one_line_error(capsys, "python -m crp analyze: interrupted; the reference-sample search is saved in",
                           "(6 samples done); run the same command again to continue from there")
    assert str(out / "fv") in error
    manifest = json.loads((out / "fv" / "store" / "manifest.json").read_text())
    assert manifest["next_index"] == 6 and not manifest["complete"]
    monkeypatch.setattr(helpers, "INTERRUPT_AT", None)
    assert main(argv) == 0
    assert json.loads((out / "summary.json").read_text())["fv_reused"] is True
    assert json.loads((out / "fv" / "store" / "manifest.json").read_text())["complete"]
    # the search was continued, not reused: every message says so
    assert "reference samples from 12 of them (continued)" in capsys.readouterr().out
    assert json.loads((out / "summary.json").read_text())["fv_status"] == "continued"
    assert "(continued)." in (out / "report.html").read_text() and "(reused)" not in (out / "report.html").read_text()
    assert main(argv) == 0  # now complete: reused, nothing computed
    assert "reference samples from 12 of them (reused)" in capsys.readouterr().out
    assert json.loads((out / "summary.json").read_text())["fv_status"] == "reused"
    assert main(argv + ["--fresh"]) == 0
    assert json.loads((out / "summary.json").read_text())["fv_reused"] is False
    assert json.loads((out / "summary.json").read_text())["fv_status"] == "computed"
    assert "(reused)" not in capsys.readouterr().out and "(computed)." in (out / "report.html").read_text()


def test_interrupted_before_anything_was_saved(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(helpers, "INTERRUPT_AT", 1)
    argv = ["analyze", *TINY, "--data", "helpers:tiny_data", "--out", str(tmp_path / "o"), *SMALL]
    assert main(argv) == 130
    one_line_error(capsys, "interrupted before any result was saved; run the same command again")


@pytest.fixture
def broken_folder(tmp_path, images):
    import shutil

    folder = tmp_path / "broken"
    shutil.copytree(images, folder)
    (folder / "dog" / "9.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return folder


def _bad_weights(tmp_path):
    torch.save(helpers.tiny_model(num_classes=5).state_dict(), tmp_path / "five.pt")
    (tmp_path / "text.pt").write_text("hello")
    torch.save({"state_dict": [1, 2]}, tmp_path / "list.pt")
    return tmp_path


@pytest.mark.parametrize("extra, fragments", [
    (["--weights", "{tmp}/missing.pt"], ["--weights '{tmp}/missing.pt' does not exist",
                                         "torch.save(model.state_dict(), PATH)"]),
    (["--weights", "{tmp}/five.pt"], ["--weights '{tmp}/five.pt' does not fit --model helpers:tiny_model",
                                      "7.weight has shape [5, 96] in the file but [3, 96] in the model (and 1 more)",
                                      "check --model and --num-classes"]),
    (["--weights", "{tmp}/text.pt"], ["cannot be read with torch.load(weights_only=True)",
                                      "save the model's state_dict"]),
    (["--weights", "{tmp}/list.pt"], ["holds a dict, not a state_dict of tensors"]),
    (["--layers", "features.9"], ["--layers: 'features.9' is not a layer of the model", "--list-layers"]),
    (["--composite", "epsilon_plus_flatt"], ["--composite 'epsilon_plus_flatt' is not a zennit composite (did you "
                                             "mean epsilon_plus_flat?); choose one of ", ", epsilon_gamma_box, "]),
    (["--canonizer", "magic"], ["--canonizer 'magic' is unknown; choose one of auto, none, merge-batchnorm"]),
    (["--mean", "0.5"], ["give --mean and --std together"]),
    (["--mean", "0.5", "--std", "0.1", "0.2"], ["need one value per channel each"]),
    (["--device", "tpu9"], ["--device 'tpu9' is not a torch device; e.g. cpu, cuda or cuda:1"]),
])
def test_analyze_user_errors(tmp_path, images, capsys, extra, fragments):
    _bad_weights(tmp_path)
    out = tmp_path / "out"
    argv = ["analyze", *TINY, "--data", str(images), "--out", str(out), *SMALL]
    argv += [e.format(tmp=tmp_path) for e in extra]
    assert main(argv) == 2
    one_line_error(capsys, "python -m crp analyze: error: ", *[f.format(tmp=tmp_path) for f in fragments])
    assert not out.exists()  # nothing is written before every argument is checked


@pytest.mark.parametrize("model, fragments", [
    ("resnet19", ["--model 'resnet19' is neither a torchvision architecture (did you mean resnet18",
                  "nor module:callable"]),
    ("no_such_module:make", ["cannot import 'no_such_module'", "PYTHONPATH"]),
    ("helpers:nothing", ["module 'helpers' has no attribute 'nothing'"]),
    ("helpers:INTERRUPT_AT", ["is not callable"]),
    ("helpers:not_a_dataset", ["returned a int, not a torch.nn.Module"]),
])
def test_analyze_bad_model(tmp_path, images, capsys, model, fragments):
    assert main(["analyze", "--model", model, "--data", str(images), "--out", str(tmp_path / "o"), *SMALL]) == 2
    one_line_error(capsys, *fragments)


def test_analyze_bad_data(tmp_path, broken_folder, capsys):
    empty = tmp_path / "empty"
    (empty / "cat").mkdir(parents=True)
    cases = [
        (str(empty), [f"--data '{empty}' holds no images in class sub-folders; arrange it as {empty}/<class>/"]),
        (str(tmp_path / "nope"), [f"--data '{tmp_path / 'nope'}' is not an existing folder; give an image folder"]),
        (str(broken_folder), [f"--data: cannot read image '{broken_folder / 'dog' / '9.png'}'",
                              "remove or replace it"]),
        ("helpers:not_a_dataset", ["returned a int, not a dataset"]),
    ]
    for data, fragments in cases:
        assert main(["analyze", *TINY, "--data", data, "--out", str(tmp_path / "o"), *SMALL]) == 2
        one_line_error(capsys, *fragments)
        assert not (tmp_path / "o").exists()
    assert main(["analyze", *TINY, "--out", str(tmp_path / "o"), *SMALL]) == 2
    one_line_error(capsys, "--data is required")


def test_analyze_foreign_output_folder_is_left_alone(tmp_path, images, capsys):
    (tmp_path / "thesis.tex").write_text("precious")
    assert main(["analyze", *TINY, "--data", str(images), "--out", str(tmp_path), *SMALL]) == 2
    one_line_error(capsys, "is not empty and was not written by `python -m crp`", "choose a new or empty folder")
    assert [p.name for p in tmp_path.iterdir()] == ["thesis.tex"]


def test_worker_errors_come_back_in_one_line():
    class Wrapped(ValueError):
        pass

    message = ("Caught Wrapped in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
               "  File \"x.py\", line 1, in f\nWrapped: --data: cannot read image 'a.png' (broken); remove it.")
    assert one_line(Wrapped(message)) == "--data: cannot read image 'a.png' (broken); remove it."
    assert one_line(Wrapped("one line")) == "one line" and one_line(Wrapped("")) == "Wrapped"
    assert one_line(Wrapped("first\nsecond")) == "first" and one_line(Wrapped("x" * 9), limit=4) == "xxxx"


@pytest.mark.parametrize("counts, error, match", [
    ({"batch_size": 0}, AnalyzeError, r"--batch-size must be an int >= 1, got 0\."),
    ({"top_k": -1}, AnalyzeError, r"--top must be an int >= 1, got -1\."),
    ({"workers": -1}, AnalyzeError, r"--workers must be an int >= 0, got -1\."),
    ({"samples": 2.0}, TypeError, r"--samples must be an int >= 1, got 2.0\."),
])
def test_analyze_options_from_python_are_checked_first(counts, error, match):
    with pytest.raises(error, match=match):
        prepare(AnalyzeOptions(model="no.such:model", data="no/such/folder", **counts))


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_analyze_cuda_without_cuda(tmp_path, images, capsys):
    argv = ["analyze", *TINY, "--data", str(images), "--out", str(tmp_path / "o"), *SMALL, "--device", "cuda"]
    assert main(argv) == 2
    one_line_error(capsys, "--device 'cuda': CUDA is not available on this machine; use --device cpu.")


def test_analyze_torchvision_weights_of_another_class_count(tmp_path, images, capsys):
    import torchvision

    weights = tmp_path / "three.pt"
    torch.save(torchvision.models.resnet18(num_classes=3).state_dict(), weights)
    argv = ["analyze", "--model", "resnet18", "--weights", str(weights), "--num-classes", "5", "--data",
            str(images), "--out", str(tmp_path / "o"), *SMALL]
    assert main(argv) == 2
    one_line_error(capsys, f"--weights '{weights}' does not fit --model resnet18 with 5 classes: fc.weight has "
                           f"shape [3, 512] in the file but [5, 512] in the model (and 1 more); check --model and "
                           f"--num-classes.")


def test_analyze_results_do_not_depend_on_workers(tmp_path, images, capsys):
    from crp.helper import load_maximization

    runs = []
    for workers in ("0", "1"):
        out = tmp_path / f"w{workers}"
        argv = ["analyze", *TINY, "--data", str(images), "--out", str(out), *SMALL, "--workers", workers,
                "--no-normalize", "--device", "cpu", "--samples", "2"]
        assert main(argv) == 0
        summary = json.loads((out / "summary.json").read_text())
        relmax = load_maximization(out / "fv" / "store", "3", "relevance")[0]
        runs.append(([s["layers"] for s in summary["samples"]], summary["graph_edges"], relmax.tolist()))
    capsys.readouterr()
    assert runs[0] == runs[1]


# ------------------------------------------------------------------------------------------------------------
# safe on disk, honest in every message


@pytest.fixture(scope="module")
def finished_report(tmp_path_factory):
    """An --out folder of a complete analyze run (copy it before changing it) and the arguments that wrote it."""
    out = tmp_path_factory.mktemp("finished") / "report"
    argv = ["analyze", *TINY, "--data", "helpers:tiny_data", "--out", str(out), *SMALL]
    with torch_threads(1):
        assert main(argv) == 0
    return out, argv


def copy_of(finished_report, tmp_path):
    out, argv = finished_report
    copy = tmp_path / "report"
    shutil.copytree(out, copy, symlinks=True)
    return copy, [str(copy) if a == str(out) else a for a in argv]


def state(folder):
    """Every file under ``folder`` (not following links) with its content and modification time."""
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file() and not p.is_symlink()}


def test_analyze_never_writes_through_a_linked_fv_folder(finished_report, tmp_path, capsys):
    out, argv = copy_of(finished_report, tmp_path)
    outside = tmp_path / "elsewhere"
    shutil.move(str(out / "fv"), str(outside))  # a store a user keeps elsewhere, and a file of theirs beside it
    (outside / "precious.txt").write_text("mine")
    (out / "fv").symlink_to(outside, target_is_directory=True)
    before_outside, before_out = state(outside), state(out)
    capsys.readouterr()
    for extra in ([], ["--fresh"]):  # --fresh would empty the folder
        assert main(argv + extra) == 2
        one_line_error(capsys, f"python -m crp analyze: error: out '{out}': '{out / 'fv'}' is a symbolic link to "
                               f"'{outside}', outside the output folder", "nothing was changed",
                       "Remove the link (the files it points to stay), or choose another --out.")
    assert state(outside) == before_outside and state(out) == before_out  # nothing written, nothing deleted


_HOLD = """
import sys, time
from crp._utils.lock import FolderLock
lock = FolderLock(sys.argv[1]).acquire()
print("locked", flush=True)
time.sleep(120)
"""


@pytest.mark.parametrize("command", ["analyze", "demo"])
def test_a_second_run_into_the_same_out_fails_at_once(finished_report, tmp_path, capsys, monkeypatch, command):
    out, argv = copy_of(finished_report, tmp_path)
    if command == "demo":
        argv = ["demo", "--out", str(out), "--quick", "--no-progress", "--cache-dir", str(tmp_path / "cache")]

    def no_work(*_args, **_kwargs):
        raise AssertionError("the second run started working")

    monkeypatch.setattr("crp.app.analyze.prepare", no_work)
    monkeypatch.setattr("crp.app.demo.train_default_model", no_work)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    first = subprocess.Popen([sys.executable, "-c", _HOLD, str(out)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert first.stdout.readline().strip() == "locked"
        before = state(out)
        capsys.readouterr()
        assert main(argv) == 1
        one_line_error(capsys, f"python -m crp {command}: error: output folder '{out}' is in use: another process "
                               f"(pid {first.pid}) is writing to it", "wait until it has finished or stop it, or use "
                                                                      "another folder.")
        assert state(out) == before
    finally:
        first.kill()
        first.wait()


def test_analyze_on_a_full_disk_names_the_file_and_keeps_the_old_one(finished_report, tmp_path, capsys,
                                                                     monkeypatch):
    out, argv = copy_of(finished_report, tmp_path)
    report = (out / "report.html").read_text()

    def full_disk(_report):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("crp.app.report.Report.to_html", full_disk)  # called while report.html is written
    capsys.readouterr()
    assert main(argv) == 1
    one_line_error(capsys, f"python -m crp analyze: error: cannot write '{out / 'report.html'}': no space left on "
                           f"the device (No space left on device); free some disk space, or choose another --out")
    assert (out / "report.html").read_text() == report and not list(out.rglob("*.tmp"))


class _InterruptImport:
    """A meta path finder that raises KeyboardInterrupt for some modules: Ctrl-C while they are imported."""

    def __init__(self, names):
        self.names = set(names)

    def find_spec(self, name, *_where):
        if name in self.names:
            raise KeyboardInterrupt
        return None


@pytest.mark.parametrize("command", ["analyze", "demo"])
def test_ctrl_c_while_the_command_starts_is_one_line_and_130(tmp_path, capsys, monkeypatch, command):
    slow = ["crp.visualization", "crp.app.demo", "crp.app.analyze", "crp.app.concept_report"]
    for name in slow:  # as on the first run of a process: not imported yet
        monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.setattr(sys, "meta_path", [_InterruptImport(slow), *sys.meta_path])
    argv = [command, "--out", str(tmp_path / "out"), "--no-progress"]
    argv += [*TINY, "--data", "helpers:tiny_data"] if command == "analyze" else ["--quick"]
    try:
        code = main(argv)
    except KeyboardInterrupt:
        code = "escaped"
    assert code == 130
    one_line_error(capsys, f"python -m crp {command}: interrupted before any result was saved; run the same command "
                           f"again")
    assert not (tmp_path / "out").exists()


def test_ctrl_c_of_python_dash_m_crp_at_any_moment(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CRP_CACHE": str(tmp_path / "cache")}
    for delay in (0.5, 2.0):  # while torch is imported, or later
        run = subprocess.Popen([sys.executable, "-m", "crp", "demo", "--quick", "--no-progress", "--threads", "1",
                                "--out", str(tmp_path / "out")], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
        time.sleep(delay)
        run.send_signal(signal.SIGINT)
        out, err = run.communicate(timeout=120)
        # 130, or ended by SIGINT itself after printing the line: CPython does that when the interrupt landed in
        # an extension module's import (seen under load); a shell reports both as interrupted
        assert run.returncode in (130, -signal.SIGINT), err
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1
        assert err.startswith("python -m crp") and "interrupted" in err and out == ""


def test_num_classes_is_checked_against_the_labels_of_the_data(tmp_path, images, capsys, caplog):
    import torchvision

    torch.manual_seed(0)
    weights = tmp_path / "two.pt"
    torch.save(torchvision.models.resnet18(num_classes=2).state_dict(), weights)
    argv = ["analyze", "--model", "resnet18", "--weights", str(weights), "--num-classes", "2", "--data", str(images),
            "--out", str(tmp_path / "two"), *SMALL]
    assert main(argv) == 2
    one_line_error(capsys, "--num-classes 2 is too few for the data: labels [0, 1, 2] found in --data (cat, dog, owl);"
                           " pass --num-classes 3 (or more)")
    assert not (tmp_path / "two").exists()
    # more classes than the data has: a warning, and the run goes on
    argv = ["analyze", *TINY, "--num-classes", "5", "--data", str(images), "--out", str(tmp_path / "five"), *SMALL]
    with caplog.at_level("WARNING", logger="crp"):
        assert main(argv) == 0
    assert "--num-classes 5 is more than the 3 classes of the data (labels [0, 1, 2] found in --data (cat, dog, " \
           "owl)); the model's other outputs are never a label." in caplog.text


def test_analyze_takes_a_dataloader_with_its_batch_size(tmp_path):
    small = list(SMALL)
    del small[small.index("--batch-size"):small.index("--batch-size") + 2]
    argv = ["analyze", *TINY, "--data", "helpers:tiny_loader", "--out", str(tmp_path / "out"), *small]
    options = _analyze_options_of(argv)
    setup = prepare(options)
    assert isinstance(setup.data.dataset, helpers.TinyData) and setup.batch_size == 5
    assert prepare(_analyze_options_of(argv + ["--batch-size", "3"])).batch_size == 3
    assert prepare(_analyze_options_of([*argv[:4], "helpers:tiny_data", *argv[5:]])).batch_size == 32
    assert main(argv) == 0
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["fv_samples"] == 12


def _analyze_options_of(argv):
    from crp.app.cli import _analyze_options

    return _analyze_options(build_parser().parse_args(argv))
