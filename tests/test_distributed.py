"""FeatureVisualization on several processes (gloo, CPU) and the merge of shards: the store of one run, byte for byte.

The distributed runs start tests/distributed_job.py, with torchrun or with the environment variables any
launcher sets; they compare every file of the store with single-process runs (of the same and of other batch sizes
and checkpoint spacings), and check the errors of failing ranks.
"""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch.distributed as dist
from zennit.composites import EpsilonPlusFlat

from crp._features.distributed import plan_rounds
from crp._features.store import ResultStore
from crp.app.cli import main
from crp.helper import load_statistics
from crp.visualization import FeatureVisualization

from distributed_job import build
from helpers import N_SAMPLES

ROOT = Path(__file__).resolve().parents[1]
JOB = Path(__file__).resolve().parent / "distributed_job.py"

pytestmark = [pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                                 reason="torch.distributed with gloo is not available"),
              pytest.mark.usefixtures("one_thread")]


def environment(**extra):
    env = {key: value for key, value in os.environ.items()
           if key not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    path = [str(ROOT), str(JOB.parent), env.get("PYTHONPATH", "")]  # crp, and helpers for the command line
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(path), **extra)
    return env


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def results(output):
    return [json.loads(line[len("RESULT "):]) for line in output.splitlines() if line.startswith("RESULT ")]


def launch(world_size, arguments, timeout=300):
    """Start ``world_size`` ranks with the environment a launcher sets; return their exit codes and results."""
    port, processes = str(free_port()), []
    for rank in range(world_size):
        env = environment(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank),
                          MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
        processes.append(subprocess.Popen([sys.executable, *arguments], env=env, text=True,
                                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
    outputs = [p.communicate(timeout=timeout)[0] for p in processes]
    by_rank = {}
    for rank, output in enumerate(outputs):
        for result in results(output):
            assert result["rank"] == rank
            by_rank.setdefault(result["run"], {})[rank] = result
    return [p.returncode for p in processes], by_rank, outputs


def torchrun(world_size, arguments, timeout=300):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(world_size),
               *arguments]
    done = subprocess.run(command, env=environment(), capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def single_run(path, *, batch_size, checkpoint, start=0, end=None, **settings):
    fv = build(str(path), 0, settings)
    return fv.run(EpsilonPlusFlat(), start, end, batch_size=batch_size, checkpoint=checkpoint, verbose=False)


def store_bytes(path):
    """Every file of a store, by its path inside the store (the lock file is gone after a run)."""
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(Path(path).rglob("*")) if p.is_file()}


def assert_same_store(path_a, path_b):
    a, b = store_bytes(path_a), store_bytes(path_b)
    assert sorted(a) == sorted(b)
    assert [name for name in a if a[name] != b[name]] == []


def relative(files, root):
    return [str(Path(f).relative_to(root)) for f in files]


# ------------------------------------------------------------------------------------------------------------
# the shares of the ranks


@pytest.mark.parametrize("start,stop,batch_size,checkpoint,world_size", [
    (0, 64, 4, 2, 2), (3, 61, 5, 1, 3), (0, 7, 4, 3, 4), (10, 11, 2, 1, 3)])
def test_rounds_cover_every_index_once_in_contiguous_shares(start, stop, batch_size, checkpoint, world_size):
    rounds = plan_rounds(start, stop, batch_size, checkpoint, world_size)
    seen, first = [], start
    for part in rounds:
        indices = [i for share in part.batches for batch in share for i in batch]
        assert indices == list(range(first, part.stop))  # rank 0's part, then rank 1's ...: contiguous, in order
        assert all(0 < len(batch) <= batch_size for share in part.batches for batch in share)
        seen += indices
        first = part.stop
    assert seen == list(range(start, stop))
    full = (stop - start) // (world_size * checkpoint * batch_size)
    assert all(len(share) == checkpoint for part in rounds[:full] for share in part.batches)
    assert len(rounds) == -(-(stop - start) // (world_size * checkpoint * batch_size))


def job_environment(monkeypatch, world_size):
    for name, value in {"RANK": "0", "WORLD_SIZE": str(world_size), "MASTER_ADDR": "127.0.0.1",
                        "MASTER_PORT": "1"}.items():  # no process listens there: joining it would fail
        monkeypatch.setenv(name, value)


def test_distributed_false_runs_alone_inside_a_job(tmp_path, monkeypatch):
    single_run(tmp_path / "one", batch_size=8, checkpoint=2)
    job_environment(monkeypatch, 2)
    fv = build(str(tmp_path / "alone"), 0, {})
    fv.run(EpsilonPlusFlat(), batch_size=8, checkpoint=2, verbose=False, distributed=False)
    assert_same_store(tmp_path / "alone", tmp_path / "one")
    with pytest.raises(TypeError, match="distributed must be True or False, got 'no'"):
        fv.run(EpsilonPlusFlat(), distributed="no")


def test_zennit_crp_seams_refuse_a_distributed_job(tmp_path, monkeypatch):
    class Custom(FeatureVisualization):
        def analyze_activation(self, *args, **kwargs):
            return super().analyze_activation(*args, **kwargs)

    fv = build(str(tmp_path / "fv"), 0, {})
    custom = Custom(fv.attribution, fv.dataset, fv.layer_map, path=tmp_path / "fv")
    job_environment(monkeypatch, 2)
    with pytest.raises(RuntimeError, match=r"overrides \['analyze_activation'\] and runs zennit-crp's flow, which "
                                           r"does not split the data among the 2 processes"):
        custom.run(EpsilonPlusFlat(), 0, 8, verbose=False)
    assert not (tmp_path / "fv").exists()


# ------------------------------------------------------------------------------------------------------------
# torchrun and other launchers: one job of 3 ranks runs four times (a user's process group), then torchrun


@pytest.fixture(scope="module")
def three_ranks(tmp_path_factory):
    """One job of 3 ranks: a run, one with other settings on rank 1, one where rank 2 fails, one where rank 1 dies."""
    root = tmp_path_factory.mktemp("ranks")
    runs = [
        {"path": str(root / "three"), "batch_size": 5, "checkpoint": 1},
        {"path": str(root / "mismatch"), "batch_size": 4, "checkpoint": 1, "top_k": {"1": 6}},
        {"path": str(root / "failing"), "batch_size": 4, "checkpoint": 1, "fail_at": [2, 45]},
        {"path": str(root / "killed"), "batch_size": 4, "checkpoint": 1, "die": [1, 1]},
    ]
    codes, found, outputs = launch(3, [str(JOB), json.dumps({"runs": runs})])
    assert codes == [1, 1, 1], outputs
    return root, found


def test_three_ranks_give_the_single_process_store_byte_for_byte(three_ranks, tmp_path):
    root, found = three_ranks
    assert [found[0][rank]["files"] for rank in range(3)] == [found[0][0]["files"]] * 3
    # 3 ranks x 1 batch of 5 between checkpoints: the checkpoints of one process with 3 batches of 5
    files = single_run(tmp_path / "one", batch_size=5, checkpoint=3)
    assert_same_store(root / "three", tmp_path / "one")
    assert relative(found[0][0]["files"], root / "three") == relative(files, tmp_path / "one")
    # and those of one process with another batch size and checkpoint spacing
    single_run(tmp_path / "other", batch_size=7, checkpoint=500)
    assert_same_store(root / "three", tmp_path / "other")


def test_ranks_with_other_settings_refuse_before_any_work(three_ranks):
    root, found = three_ranks
    for rank in range(3):
        error = found[1][rank]["error"]
        assert error.startswith("ValueError: the ranks of this distributed run were given different settings, in "
                                "['k', 'modes']")
        assert "'k': ranks [0, 2] 5; rank 1 6" in error and "Nothing was analyzed" in error
    assert not (root / "mismatch").exists()


def test_an_error_on_one_rank_stops_every_rank_and_keeps_the_checkpoint(three_ranks):
    root, found = three_ranks
    failing = [found[2][rank]["error"] for rank in range(3)]  # rank 2 reads item 45 in the fourth round (36..47)
    assert failing[0] == (f"RankFailedError: rank 2 (RuntimeError: killed at 45) failed before the checkpoint at "
                          f"dataset index 48; the last checkpoint in {root / 'failing'} stays (next index 36). Fix the "
                          f"cause and run again with resume=True (any number of processes).")
    assert failing[1].startswith("RankFailedError: rank 0 stopped the distributed run, so rank 1 stops too: "
                                 "RankFailedError: rank 2 (RuntimeError: killed at 45) failed")
    assert failing[2] == "RuntimeError: killed at 45"
    assert ResultStore(root / "failing").next_index == 36


def test_a_dead_rank_is_named_and_torchrun_resumes_with_two(three_ranks, tmp_path):
    root, found = three_ranks
    assert 1 not in found[3]  # rank 1 ended in its second batch, after the checkpoint at 12
    assert found[3][0]["error"].startswith("RankFailedError: rank 1 did not reach the checkpoint at dataset index 24 "
                                           "(the process ended or stalled")
    assert found[3][2]["error"].startswith("RankFailedError: rank 2: the checkpoint at dataset index 24 failed, rank 0 "
                                           "could not reach all ranks")
    killed = ResultStore(root / "killed")
    assert (killed.next_index, killed.complete) == (12, False)
    killed.verify()
    # torchrun, 2 ranks x 1 batch of 6: checkpoints at 24, 36, 48, 60 and the end, as one process with 3 x 4
    settings = {"path": str(root / "killed"), "batch_size": 6, "checkpoint": 1, "resume": True}
    done = torchrun(2, [str(JOB), json.dumps(settings)])
    assert sorted(r["rank"] for r in results(done.stdout)) == [0, 1]
    files = single_run(tmp_path / "one", batch_size=4, checkpoint=3)
    assert_same_store(root / "killed", tmp_path / "one")
    want = relative(files, tmp_path / "one")
    assert [relative(r["files"], root / "killed") for r in results(done.stdout)] == [want, want]


def test_analyze_under_torchrun_writes_the_single_process_store(tmp_path):
    small = ["--model", "helpers:tiny_model", "--data", "helpers:tiny_data", "--image-size", "16", "--samples", "1",
             "--top", "2", "--references", "2", "--fv-samples", "0", "--flip-samples", "0", "--batch-size", "4",
             "--checkpoint", "1", "--no-progress", "--threads", "1"]
    done = torchrun(2, ["-m", "crp", "analyze", *small, "--out", str(tmp_path / "ranks")])
    assert done.stdout.count("crp analyze: wrote") == 1  # process 0 reports, process 1 says nothing
    # 2 ranks x 1 batch of 4 between checkpoints: the checkpoints of one process with 2 batches
    assert main(["analyze", *small[:-5], "--checkpoint", "2", "--no-progress", "--threads", "1", "--out",
                 str(tmp_path / "one")]) == 0
    assert_same_store(tmp_path / "ranks" / "fv" / "store", tmp_path / "one" / "fv" / "store")
    ranks, one = (json.loads((tmp_path / name / "summary.json").read_text()) for name in ("ranks", "one"))
    assert ranks["samples"] == one["samples"] and ranks["fv_samples"] == one["fv_samples"] == 12


# ------------------------------------------------------------------------------------------------------------
# merging shards


def test_merged_shards_equal_one_run_byte_for_byte(tmp_path, capsys):
    single_run(tmp_path / "one", batch_size=8, checkpoint=100)  # one save, as the merge makes
    for name, (start, end) in {"a": (0, 24), "b": (24, 40), "c": (40, N_SAMPLES)}.items():
        single_run(tmp_path / name, batch_size=5, checkpoint=1, start=start, end=end)
    files = FeatureVisualization.merge([tmp_path / "c", tmp_path / "a", tmp_path / "b"], tmp_path / "merged")
    assert relative(files, tmp_path / "merged") == relative(ResultStore(tmp_path / "one").saved_files(),
                                                            tmp_path / "one")
    assert_same_store(tmp_path / "merged", tmp_path / "one")
    # the same by the command line, and again into its own output (the same result: replaced)
    for _ in range(2):
        assert main(["merge", str(tmp_path / "cli"), *(str(tmp_path / name) for name in "abc")]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == (
        f"crp merge: wrote {tmp_path / 'cli'}: dataset indices [0, {N_SAMPLES}) from 3 shards")
    merged = ResultStore(tmp_path / "cli").manifest
    assert merged == ResultStore(tmp_path / "one").manifest
    # a FeatureVisualization reads the merged store as the results of one run, and resuming finds it complete
    merged_fv, one_fv = build(str(tmp_path / "merged"), 0, {"fail_at": [0, 0]}), build(str(tmp_path / "one"), 0, {})
    for got, want in zip(load_statistics(merged_fv.RelStats.PATH, "conv2", 1),
                         load_statistics(one_fv.RelStats.PATH, "conv2", 1)):
        np.testing.assert_array_equal(got, want)
    merged_fv.run(EpsilonPlusFlat(), batch_size=8, resume=True, verbose=False)  # reads no item (fail_at 0)
    assert_same_store(tmp_path / "merged", tmp_path / "one")


def shards(tmp_path, ranges, **settings):
    for name, (start, end) in ranges.items():
        single_run(tmp_path / name, batch_size=8, checkpoint=100, start=start, end=end, **settings)
    return [tmp_path / name for name in ranges]


def refused(capsys, shard_paths, out, *fragments):
    before = store_bytes(out) if out.exists() else None
    with pytest.raises((ValueError, FileExistsError)) as error:
        FeatureVisualization.merge(shard_paths, out)
    for fragment in fragments:
        assert fragment in str(error.value)
    assert (store_bytes(out) if out.exists() else None) == before
    assert main(["merge", str(out), *map(str, shard_paths)]) == 2
    assert capsys.readouterr().err.strip() == f"python -m crp merge: error: {error.value}"
    assert (store_bytes(out) if out.exists() else None) == before


def test_merge_refuses_other_configurations_overlaps_gaps_and_unfinished_shards(tmp_path, capsys):
    a, b = shards(tmp_path, {"a": (0, 24), "b": (24, 40)})
    c_other, = shards(tmp_path, {"c-other": (40, N_SAMPLES)}, top_k={"0": 6})
    refused(capsys, [a, b, c_other], tmp_path / "out", f"shard {str(c_other)!r} was run with another configuration "
            f"than {str(a)!r} (differs in ['k', 'modes'])", "Run the shard again with those, or leave it out.")
    overlap, = shards(tmp_path, {"overlap": (20, N_SAMPLES)})
    refused(capsys, [a, overlap], tmp_path / "out", f"shards {str(a)!r} [0, 24) and {str(overlap)!r} [20, 64) overlap "
            f"in dataset indices [20, 24)")
    late, = shards(tmp_path, {"late": (48, N_SAMPLES)})
    refused(capsys, [a, b, late], tmp_path / "out", f"dataset indices [40, 48) are in no shard: {str(b)!r} ends at 40 "
            f"and {str(late)!r} starts at 48; run the missing shard with data_start=40, data_end=48")
    # a shard whose run stopped after its first checkpoint
    broken = build(str(tmp_path / "broken"), 0, {"fail_at": [0, 50]})
    with pytest.raises(RuntimeError, match="killed at 50"):
        broken.run(EpsilonPlusFlat(), 40, N_SAMPLES, batch_size=4, checkpoint=2, verbose=False)
    refused(capsys, [a, b, tmp_path / "broken"], tmp_path / "out",
            f"shard {str(tmp_path / 'broken')!r} is incomplete: it holds dataset indices 40..47 of [40, 64)",
            "finish it with FeatureVisualization.run(..., data_start=40, data_end=64, resume=True)")
    # half-written: a folder without a manifest, a file that does not match its checksum
    (tmp_path / "empty").mkdir()
    refused(capsys, [a, b, tmp_path / "empty"], tmp_path / "out",
            f"shard {str(tmp_path / 'empty')!r} is no FeatureVisualization store (no manifest.json)")
    c, = shards(tmp_path, {"c": (40, N_SAMPLES)})
    file = ResultStore(c).saved_files()[1]
    data = bytearray(file.read_bytes())
    data[-1] ^= 1
    file.write_bytes(bytes(data))
    refused(capsys, [a, b, c], tmp_path / "out", f"{file} does not match its checksum in the manifest")
    assert not (tmp_path / "out").exists()


def test_merge_refuses_an_output_that_is_not_the_same_result(tmp_path, capsys):
    a, b = shards(tmp_path, {"a": (0, 24), "b": (24, N_SAMPLES)})
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    refused(capsys, [a, b], out, f"the output {str(out)!r} is not empty and holds no FeatureVisualization store")
    refused(capsys, [a, b], a, f"the output {str(a)!r} is also a shard; merge into a new folder")
    FeatureVisualization.merge([a], tmp_path / "only-a")
    refused(capsys, [a, b], tmp_path / "only-a", f"the output {str(tmp_path / 'only-a')!r} holds results of another "
            f"configuration (differs in ['data_end'])")
