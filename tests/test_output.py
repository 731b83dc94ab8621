"""The output folder of the commands: only new, empty or own folders; files claimed before they are written."""
import json

import pytest

from crp.app.output import MANIFEST_NAME, OutputFolder, UserError


def manifest(folder):
    return json.loads((folder / MANIFEST_NAME).read_text())


def test_refuses_a_file(tmp_path):
    target = tmp_path / "a.txt"
    target.write_text("mine")
    with pytest.raises(UserError, match="is a file, not a folder; choose a new or empty folder"):
        OutputFolder(target, "crp demo")
    assert target.read_text() == "mine"


@pytest.mark.parametrize("text", [None, "not json", '{"files": [1]}', '{"other": []}', "[]",
                                  '{"files": [], "folders": [2]}'])
def test_refuses_a_foreign_folder(tmp_path, text):
    (tmp_path / "thesis.tex").write_text("mine")
    if text is not None:
        (tmp_path / MANIFEST_NAME).write_text(text)
    with pytest.raises(UserError, match=r"is not empty and was not written by `python -m crp`.*choose a new or empty"):
        OutputFolder(tmp_path, "crp analyze")
    assert (tmp_path / "thesis.tex").read_text() == "mine"


def test_new_folder_is_created_on_claim_and_lists_files_before_writing(tmp_path):
    assert OutputFolder(tmp_path, "t").previous == []  # an empty folder is fine
    out = tmp_path / "new" / "deeper"
    folder = OutputFolder(out, "crp demo")
    assert not (tmp_path / "new").exists()  # nothing is created before claim()
    with pytest.raises(RuntimeError, match="call claim"):
        folder.write("a.txt", lambda path: path.write_text("x"))
    folder.claim(folders=["fv"])
    assert manifest(out) == {"tool": "crp demo", "files": [], "folders": ["fv"]}

    def save(path):  # the manifest names the file before it exists
        assert "sub/a.txt" in manifest(out)["files"] and not (out / "sub" / "a.txt").exists()
        path.write_text("x")

    assert folder.write("sub/a.txt", save) == out / "sub" / "a.txt"
    folder.finish()
    assert manifest(out)["files"] == ["sub/a.txt"] and (out / "sub" / "a.txt").read_text() == "x"


def test_removes_only_its_own_stale_files(tmp_path):
    out = tmp_path / "out"
    first = OutputFolder(out, "t")
    first.claim(folders=["fv"])
    for name in ("keep.png", "sample_2/old.png"):
        first.write(name, lambda path: path.write_text("old"))
    first.finish()
    (out / "notes.txt").write_text("user")  # a file the user put there later
    (tmp_path / "victim.txt").write_text("outside")
    data = manifest(out)
    data["files"].append("../victim.txt")  # a tampered manifest must not reach outside the folder
    data["folders"].append("..")
    (out / MANIFEST_NAME).write_text(json.dumps(data))
    second = OutputFolder(out, "t")
    assert second.previous_folders == ["fv"]  # ".." is not inside the folder
    second.claim()
    second.write("keep.png", lambda path: path.write_text("new"))
    second.finish()
    assert (out / "keep.png").read_text() == "new"
    assert not (out / "sample_2").exists()  # its only file was stale, the empty folder goes too
    assert (out / "notes.txt").read_text() == "user" and (tmp_path / "victim.txt").read_text() == "outside"
    assert manifest(out)["files"] == ["keep.png"] and manifest(out)["folders"] == ["fv"]


def test_state_folder_is_emptied_only_when_an_earlier_run_claimed_it(tmp_path):
    out = tmp_path / "out"
    first = OutputFolder(out, "t")
    first.claim(folders=["fv"])
    with pytest.raises(ValueError, match="folder 'other' was not claimed"):
        first.reset_folder("other")
    assert not first.owns_folder("fv")  # claimed by this run, not by an earlier one
    (out / "fv").mkdir()
    (out / "fv" / "state.bin").write_text("1")
    first.reset_folder("fv")
    assert (out / "fv" / "state.bin").exists()  # this run did not find it: not emptied
    first.finish()
    second = OutputFolder(out, "t")
    second.claim(folders=["fv"])
    assert second.owns_folder("fv")
    assert second.reset_folder("fv") == out / "fv" and not (out / "fv").exists()


def test_folder_of_the_first_demo_version_is_taken_over(tmp_path):
    (tmp_path / "old.png").write_text("old")
    (tmp_path / ".crp-demo-manifest.json").write_text(json.dumps({"tool": "crp demo", "files": ["old.png"]}))
    folder = OutputFolder(tmp_path, "crp demo")
    assert folder.previous == ["old.png"]
    folder.claim()
    folder.write("new.png", lambda path: path.write_text("new"))
    folder.finish()
    assert sorted(p.name for p in tmp_path.iterdir()) == [MANIFEST_NAME, "new.png"]
