"""The output folder of the commands: only new, empty or own folders; files claimed before they are written."""
import json
import os

import pytest

from crp._utils.lock import LOCK_NAME, FolderLockedError
from crp.app.output import MANIFEST_NAME, OutputFolder, UserError, fv_state


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


# ------------------------------------------------------------------------------------------------------------
# never through a link out of the folder


def finished_run(out, files=("report.html", "sample_1/input.png"), folders=("fv",)):
    run = OutputFolder(out, "t")
    run.claim(folders=list(folders))
    for name in files:
        run.write(name, lambda path: path.write_text("old"))
    (out / "fv").mkdir(exist_ok=True)
    (out / "fv" / "state.bin").write_text("state")
    run.finish()
    return run


def outside_folder(tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "precious.txt").write_text("mine")
    (outside / "input.png").write_text("mine too")
    return outside


def snapshot(folder):
    return {str(p.relative_to(folder)): p.read_text() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("linked", ["fv", "sample_1"])
def test_a_linked_sub_folder_out_of_the_folder_is_refused(tmp_path, linked):
    out = tmp_path / "out"
    finished_run(out)
    outside = outside_folder(tmp_path)
    (out / linked).rename(tmp_path / "moved")
    (out / linked).symlink_to(outside, target_is_directory=True)
    before, manifest_before = snapshot(outside), manifest(out)
    run = OutputFolder(out, "t")
    with pytest.raises(UserError, match=rf"out '{out}': '{out / linked}' is a symbolic link to '{outside}', outside "
                                        rf"the output folder, which crp never writes or reads through; nothing was "
                                        rf"changed\. Remove the link \(the files it points to stay\), or choose "
                                        rf"another --out\."):
        run.claim(folders=["fv"])
    assert snapshot(outside) == before and manifest(out) == manifest_before  # nothing written, nothing deleted
    assert not (out / LOCK_NAME).exists()  # and the folder is free again


def test_a_new_link_met_while_writing_is_refused(tmp_path):
    out = tmp_path / "out"
    outside = outside_folder(tmp_path)
    run = OutputFolder(out, "t")
    run.claim(folders=["fv"])
    (out / "sample_2").symlink_to(outside, target_is_directory=True)
    (out / "summary.json").symlink_to(outside / "precious.txt")
    before = snapshot(outside)
    for name in ("sample_2/input.png", "summary.json"):
        with pytest.raises(UserError, match=rf"'{out / name.split('/')[0]}' is a symbolic link to '{outside}.*"
                                            rf"Remove the link"):
            run.write(name, lambda path: path.write_text("new"))
    with pytest.raises(UserError, match="is a symbolic link"):
        run.path("sample_2/input.png")
    assert snapshot(outside) == before and manifest(out)["files"] == []
    run.finish()
    assert snapshot(outside) == before


def test_a_linked_manifest_is_not_read(tmp_path):
    out = tmp_path / "out"
    finished_run(out)
    real = tmp_path / "manifest.json"
    (out / MANIFEST_NAME).rename(real)
    (out / MANIFEST_NAME).symlink_to(real)
    with pytest.raises(UserError, match=rf"'{out / MANIFEST_NAME}' is a symbolic link to '{real}'"):
        OutputFolder(out, "t")


def test_links_inside_the_folder_are_fine(tmp_path):
    out = tmp_path / "out"
    finished_run(out)
    (out / "fv" / "alias").symlink_to(out / "sample_1", target_is_directory=True)
    run = OutputFolder(out, "t")
    run.claim(folders=["fv"])
    run.write("sample_1/input.png", lambda path: path.write_text("new"))
    run.finish()
    assert (out / "sample_1" / "input.png").read_text() == "new"


def test_fv_state_does_not_read_through_a_link(tmp_path):
    out = tmp_path / "out"
    store = tmp_path / "elsewhere" / "store"
    store.mkdir(parents=True)
    (store / "manifest.json").write_text(json.dumps({"next_index": 7, "config": {"data_start": 0}}))
    out.mkdir()
    (out / "fv").symlink_to(store.parent, target_is_directory=True)
    assert fv_state(out) is None
    (out / "fv").unlink()
    (out / "fv").mkdir()
    (out / "fv" / "store").mkdir()
    (out / "fv" / "store" / "manifest.json").write_text((store / "manifest.json").read_text())
    assert fv_state(out) == 7


# ------------------------------------------------------------------------------------------------------------
# one run at a time


def test_a_second_run_into_the_folder_fails_at_once_and_names_the_first(tmp_path):
    out = tmp_path / "out"
    first = OutputFolder(out, "t")
    first.claim(folders=["fv"])  # a new folder is locked when it is created
    first.write("a.txt", lambda path: path.write_text("first"))
    second = OutputFolder(out, "t")
    pattern = rf"output folder '{out}' is in use: this process \(pid {os.getpid()}\) is already writing to it"
    with pytest.raises(FolderLockedError, match=pattern):
        second.claim()
    with pytest.raises(FolderLockedError, match=pattern):
        with OutputFolder(out, "t"):  # an existing folder is locked on entering
            pass
    first.finish()  # releases the lock
    assert not (out / LOCK_NAME).exists()
    with OutputFolder(out, "t") as third:
        assert third.previous == ["a.txt"]
        with pytest.raises(FolderLockedError, match="is in use"):
            OutputFolder(out, "t").claim()
    assert not (out / LOCK_NAME).exists()  # released on leaving, without finish()


def test_the_manifest_is_read_again_once_the_folder_is_locked(tmp_path):
    out = tmp_path / "out"
    late = OutputFolder(out, "t")  # looked before the first run created the folder
    first = OutputFolder(out, "t")
    first.claim()
    first.write("a.txt", lambda path: path.write_text("first"))
    first.finish()
    late.claim()
    assert late.previous == ["a.txt"]


def test_a_lock_file_left_by_a_killed_run_is_no_foreign_file(tmp_path):
    (tmp_path / LOCK_NAME).write_text("12345 host\n")  # what a killed run leaves: the file, not the lock
    with OutputFolder(tmp_path, "t") as run:
        assert run.previous == []
        run.claim()
        run.finish()
    assert sorted(p.name for p in tmp_path.iterdir()) == [MANIFEST_NAME]
