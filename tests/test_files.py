"""Safe on disk: atomic writes that say which file a full disk stopped, and the single-writer folder lock."""
import errno
import multiprocessing
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from crp._utils.files import FileWriteError, write_atomic
from crp._utils.lock import LOCK_NAME, FolderLock, FolderLockedError

ROOT = Path(__file__).resolve().parents[1]
DEV_FULL = Path("/dev/full")  # Linux: every write fails with ENOSPC, as on a full disk
needs_dev_full = pytest.mark.skipif(not DEV_FULL.exists(), reason="needs /dev/full")


def old_file(tmp_path):
    target = tmp_path / "sub" / "results.npy"
    write_atomic(target, lambda path: path.write_text("old"))
    return target


def untouched(target):
    assert target.read_text() == "old"
    assert sorted(p.name for p in target.parent.iterdir()) == [target.name]  # no temporary file is left


# ------------------------------------------------------------------------------------------------------------
# write_atomic


@needs_dev_full
def test_disk_full_names_the_file_the_reason_and_the_fix(tmp_path):
    target = old_file(tmp_path)

    def save(path):
        path.write_text("half")
        with open(DEV_FULL, "wb") as disk:  # what a full disk says: [Errno 28] No space left on device
            disk.write(b"x" * 100_000)

    pattern = (rf"cannot write '{target}': no space left on the device \(No space left on device\); the old file "
               rf"is unchanged\. Free some disk space or write to another folder, then run again\.")
    with pytest.raises(FileWriteError, match=pattern) as caught:
        write_atomic(target, save)
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(target) and caught.value.no_space
    assert isinstance(caught.value, OSError)
    untouched(target)


@needs_dev_full
def test_short_write_without_errno_is_reported_as_a_full_disk(tmp_path):
    target = old_file(tmp_path)

    def save(path):
        path.write_text("half")
        np.zeros(2176).tofile(DEV_FULL)  # numpy: "2176 requested and 0 written", no errno

    with pytest.raises(FileWriteError, match=rf"cannot write '{target}': no space left on the device, most likely: "
                                             rf"only part of the data was written \(2176 requested and 0 written\)"
                                             rf".*Free some disk space"):
        write_atomic(target, save)
    untouched(target)


def test_other_file_errors_name_the_target_too(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(FileWriteError, match=rf"cannot write '{blocker}/x/a.txt': .*'{blocker}/x'.*Check that the "
                                             rf"folder can be written") as caught:
        write_atomic(blocker / "x" / "a.txt", lambda path: path.write_text("x"))
    assert not caught.value.no_space


def test_errors_that_are_not_about_files_pass_unchanged(tmp_path):
    target = old_file(tmp_path)

    def save(path):
        path.write_text("half")
        raise RuntimeError("the plot failed")

    with pytest.raises(RuntimeError, match="^the plot failed$"):
        write_atomic(target, save)
    untouched(target)


def test_write_error_survives_pickling(tmp_path):
    error = FileWriteError(errno.ENOSPC, "no space left on the device (x)", str(tmp_path / "a"))
    again = pickle.loads(pickle.dumps(error))
    assert str(again) == str(error) and again.no_space


# ------------------------------------------------------------------------------------------------------------
# FolderLock


def test_a_second_writer_fails_at_once_and_the_lock_file_goes_on_release(tmp_path):
    folder = tmp_path / "new" / "results"
    with FolderLock(folder, description="output folder") as lock:
        assert lock.locked and (folder / LOCK_NAME).read_text().split()[0] == str(os.getpid())
        pattern = (rf"output folder '{folder}' is in use: this process \(pid {os.getpid()}\) is already "
                   rf"writing to it, through another lock \(lock file '{folder / LOCK_NAME}'\); wait until it has "
                   rf"finished or stop it, or use another folder\.")
        start = time.perf_counter()
        with pytest.raises(FolderLockedError, match=pattern) as caught:
            FolderLock(folder, description="output folder").acquire()
        assert time.perf_counter() - start < 1 and caught.value.pid == os.getpid()
        assert lock.acquire() is lock  # the holder may ask again
    assert not lock.locked and list(folder.iterdir()) == []
    with FolderLock(folder):  # free again
        pass


def test_released_on_an_exception(tmp_path):
    with pytest.raises(ValueError, match="inside"):
        with FolderLock(tmp_path):
            raise ValueError("inside")
    FolderLock(tmp_path).acquire().release()


_HOLD = """
import sys, time
from crp._utils.lock import FolderLock
lock = FolderLock(sys.argv[1]).acquire()
print("locked", flush=True)
time.sleep(120)
"""


def test_another_process_is_named_and_a_killed_holder_frees_the_folder(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True,
                              env=env)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(FolderLockedError, match=rf"'{tmp_path}' is in use: another process \(pid {holder.pid}\) "
                                                    rf"is writing to it") as caught:
            FolderLock(tmp_path).acquire()
        assert caught.value.pid == holder.pid and caught.value.path == tmp_path
        again = pickle.loads(pickle.dumps(caught.value))
        assert str(again) == str(caught.value) and again.pid == holder.pid
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert (tmp_path / LOCK_NAME).exists()  # a killed holder leaves its file, but not its lock
    with FolderLock(tmp_path) as lock:
        assert (tmp_path / LOCK_NAME).read_text().split()[0] == str(os.getpid()) and lock.locked


def _release_in_child(lock):
    lock.release()


@pytest.mark.skipif(sys.platform == "win32", reason="fork")
def test_a_forked_child_does_not_release_the_parents_lock(tmp_path):
    with FolderLock(tmp_path) as lock:
        child = multiprocessing.get_context("fork").Process(target=_release_in_child, args=(lock,))
        child.start()
        child.join()
        assert child.exitcode == 0
        with pytest.raises(FolderLockedError, match="is in use"):
            FolderLock(tmp_path).acquire()
        assert (tmp_path / LOCK_NAME).exists()


def test_a_lock_file_that_is_a_link_is_not_followed(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("mine")
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / LOCK_NAME).symlink_to(victim)
    with pytest.raises(OSError, match=rf"lock file '{folder / LOCK_NAME}' is a symbolic link, which crp does not "
                                      rf"follow; remove it"):
        FolderLock(folder).acquire()
    assert victim.read_text() == "mine"
