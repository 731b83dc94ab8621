"""Tests of the command line: ``python -m crp demo`` end to end and its one-line errors."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from crp.cli import build_parser, main
from crp.demo import MANIFEST_NAME

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv("CRP_CACHE", str(folder))
    return folder


def one_line_error(capsys, *fragments):
    captured = capsys.readouterr()
    assert captured.out == ""
    error = captured.err.strip()
    assert "\n" not in error and "Traceback" not in error
    for fragment in fragments:
        assert fragment in error
    return error


def test_demo_end_to_end(tmp_path, cache, capsys):
    out = tmp_path / "out"
    assert main(["demo", "--out", str(out), "--samples", "2", "--top", "3", "--quick", "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""  # --no-progress: no bars, no log lines
    lines = captured.out.splitlines()
    assert lines[0].startswith(f"crp demo: wrote 14 files to {out.resolve()}")  # 2 + 2 * (3 + 3) files
    assert len(lines) <= 24  # one screen
    for word in ("accuracy", "shortcut", "artifact", "features.6"):
        assert word in captured.out
    for rank in (1, 2):
        assert len(list((out / f"sample_{rank}").glob("concept_*.png"))) == 3
        assert (out / f"sample_{rank}" / "overview.png").is_file()
    assert (out / "artifact_channel.png").is_file() and (out / "summary.json").is_file()
    assert (out / MANIFEST_NAME).is_file() and len(list(cache.glob("shapesnet-*.pt"))) == 1


def test_no_command(capsys):
    assert main([]) == 2
    one_line_error(capsys, "choose a command: demo", "--help")


def test_help(capsys):
    assert main(["demo", "--help"]) == 0
    text = capsys.readouterr().out
    for option in ("--out", "--samples", "--layer", "--top", "--no-progress", "--quick", "--cache-dir", "--retrain"):
        assert option in text


def test_every_option_has_help():
    demo = build_parser()._subparsers._group_actions[0].choices["demo"]
    assert all(action.help for action in demo._actions)


@pytest.mark.parametrize("argv, fragments", [
    (["demo", "--samples", "0"], ["argument --samples: must be a positive whole number, got '0'"]),
    (["demo", "--top", "two"], ["argument --top: must be a positive whole number, got 'two'"]),
    (["demo", "--colour"], ["unrecognized arguments: --colour", "python -m crp --help"]),
    (["show"], ["invalid choice: 'show'"]),
])
def test_usage_errors(capsys, argv, fragments):
    assert main(argv) == 2
    one_line_error(capsys, *fragments)


def test_bad_layer(tmp_path, cache, capsys):
    assert main(["demo", "--out", str(tmp_path / "out"), "--layer", "conv9", "--quick", "--no-progress"]) == 2
    one_line_error(capsys, "python -m crp demo: error: layer 'conv9' is not a concept layer of ShapesNet",
                   "choose one of features.0, features.3, features.6, classifier.0")
    assert not (tmp_path / "out").exists() and not cache.exists()


def test_too_many_top_channels(tmp_path, cache, capsys):
    assert main(["demo", "--out", str(tmp_path / "out"), "--layer", "features.0", "--top", "17", "--quick"]) == 2
    one_line_error(capsys, "top must be at most 16, the number of channels of layer 'features.0'; got 17")


def test_foreign_output_folder_is_left_alone(tmp_path, cache, capsys):
    (tmp_path / "paper.tex").write_text("precious")
    assert main(["demo", "--out", str(tmp_path), "--quick", "--no-progress"]) == 2
    one_line_error(capsys, "is not empty and was not written by `crp demo`", "choose a new or empty folder")
    assert [p.name for p in tmp_path.iterdir()] == ["paper.tex"]


def test_output_is_a_file(tmp_path, cache, capsys):
    (tmp_path / "out").write_text("x")
    assert main(["demo", "--out", str(tmp_path / "out"), "--quick", "--no-progress"]) == 2
    one_line_error(capsys, "is a file, not a folder")


def test_unwritable_cache_is_a_one_line_error(tmp_path, capsys):
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
