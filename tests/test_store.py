"""The result store: layout, atomic checkpoints, corruption, and reading zennit-crp 0.6 folders."""
import hashlib
import json

import numpy as np
import pytest

import crp._features.store
from crp._features.store import RECORD, LegacyStore, ResultStore, legacy_folder_name, open_result_folder, open_results
from crp.helper import load_maximization, load_receptive_field, load_stat_targets, load_statistics
from crp.visualization import CorruptStoreError

K, C = 3, 4
TARGETS = [2, 5]
CONFIG = {"k": K, "max_target": "sum", "abs_norm": True}


def records(rng, shape):
    array = np.empty(shape, RECORD)
    array["index"] = rng.integers(0, 100, shape)
    array["value"] = rng.normal(size=shape)
    array["neuron"] = rng.integers(0, 9, shape)
    return array


COUNTS = {"relevance": [10, 6, 2], "activation": [10, 10, 0]}
#: Rows of the targets in the stats arrays: target 2 has min(K, 10) = 3 rows, target 5 min(K, 2) = 2.
OFFSETS = [0, 3, 5]


def layer_arrays(seed):
    """Records: max (2 modes, K, C), stats (2 modes, 5 rows, C); target 5 has no activation rows."""
    rng = np.random.default_rng(seed)
    arrays = {"max": records(rng, (2, K, C)), "stats": records(rng, (2, OFFSETS[-1], C))}
    arrays["stats"]["index"][1, 3:] = -1
    return arrays


@pytest.fixture
def store(tmp_path):
    store = ResultStore(tmp_path / "fv")
    store.save({"conv": layer_arrays(0), "fc": layer_arrays(1)}, TARGETS, COUNTS, CONFIG, next_index=10,
               complete=True)
    return store


def test_layout_and_roundtrip(store):
    manifest = json.loads((store.path / "manifest.json").read_text())
    folder = manifest["directory"]
    # the folder is named by the first 16 hex digits of the SHA-256 of the manifest's other content
    content = {key: value for key, value in manifest.items() if key != "directory"}
    assert folder == "results-" + hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:16]
    files = sorted(p.relative_to(store.path).as_posix() for p in store.path.rglob("*") if p.is_file())
    assert files == ["manifest.json", f"{folder}/.crp-generation"] + [
        f"{folder}/{layer}.{kind}.npy" for layer in ("conv", "fc") for kind in ("max", "stats")]
    assert manifest["targets"] == TARGETS and manifest["counts"] == COUNTS and manifest["complete"]
    assert manifest["stats_offsets"] == OFFSETS and crp._features.store.stats_offsets(COUNTS, K).tolist() == OFFSETS
    plain = np.load(store.path / folder / "conv.stats.npy", allow_pickle=False)
    assert np.array_equal(plain, layer_arrays(0)["stats"]) and plain.dtype == RECORD
    indices, values, neurons = store.maximization("conv", "activation")
    assert indices.dtype == np.int64 and neurons.dtype == np.int64 and values.dtype == np.float32
    assert np.array_equal(indices, layer_arrays(0)["max"]["index"][1])
    indices, values, _ = store.statistics("fc", "relevance", 5)  # 2 rows seen: only 2 of K returned
    assert np.array_equal(values, layer_arrays(1)["stats"]["value"][0, 3:5])
    assert store.targets("relevance").tolist() == [2, 5] and store.targets("activation").tolist() == [2]


def test_checkpoints_replace_the_previous_one_atomically(store, monkeypatch):
    first = store.manifest["directory"]
    store.save({"conv": layer_arrays(2)}, TARGETS, COUNTS, CONFIG, next_index=10, complete=True)
    second = store.manifest["directory"]
    assert second != first and [p.name for p in store.path.iterdir() if p.is_dir()] == [second]
    calls = []

    def failing_save(file, array):
        calls.append(file)
        if len(calls) == 2:
            raise OSError("disk full")
        original(file, array)

    original = crp._features.store._atomic_save
    monkeypatch.setattr(crp._features.store, "_atomic_save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        store.save({"conv": layer_arrays(3)}, TARGETS, COUNTS, CONFIG, next_index=10, complete=True)
    monkeypatch.undo()
    fresh = ResultStore(store.path)  # the old checkpoint is intact
    assert fresh.manifest["directory"] == second
    assert np.array_equal(fresh.layer_arrays("conv", verify=True)["max"], layer_arrays(2)["max"])
    assert not list(store.path.rglob("*.tmp"))
    fresh.save({"conv": layer_arrays(3)}, TARGETS, COUNTS, CONFIG, next_index=10, complete=True)
    assert sorted(p.name for p in store.path.iterdir() if p.is_dir()) == [fresh.manifest["directory"]]


def test_equal_results_make_equal_stores_and_a_foreign_folder_is_refused(store, tmp_path):
    """The folder is named by the content: saving the same results again changes nothing on disk."""
    before = {p: p.read_bytes() for p in store.path.rglob("*") if p.is_file()}
    store.save({"conv": layer_arrays(0), "fc": layer_arrays(1)}, TARGETS, COUNTS, CONFIG, next_index=10,
               complete=True)
    assert {p: p.read_bytes() for p in store.path.rglob("*") if p.is_file()} == before
    other = ResultStore(tmp_path / "other")
    other.save({"conv": layer_arrays(2)}, TARGETS, COUNTS, CONFIG, next_index=4, complete=False)
    other.save({"conv": layer_arrays(0), "fc": layer_arrays(1)}, TARGETS, COUNTS, CONFIG, next_index=10,
               complete=True)  # another history, the same results
    assert {p.relative_to(other.path): p.read_bytes() for p in other.path.rglob("*") if p.is_file()} == \
        {p.relative_to(store.path): p.read_bytes() for p in before}
    # a folder of the would-be name that crp did not write is neither used nor deleted
    third = ResultStore(tmp_path / "third")
    third.save({"conv": layer_arrays(2)}, TARGETS, COUNTS, CONFIG, next_index=4, complete=False)
    foreign = third.path / store.manifest["directory"]
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match=r"exists and was not written by crp; nothing was saved\. Move it out"):
        third.save({"conv": layer_arrays(0), "fc": layer_arrays(1)}, TARGETS, COUNTS, CONFIG, next_index=10,
                   complete=True)
    assert (foreign / "notes.txt").read_text() == "mine" and third.manifest["next_index"] == 4


def test_truncated_file_names_the_file(store):
    file = store.path / store.manifest["directory"] / "conv.max.npy"
    data = file.read_bytes()
    file.write_bytes(data[: len(data) - 9])
    with pytest.raises(CorruptStoreError, match=r"conv\.max\.npy is truncated or corrupt"):
        store.maximization("conv", "relevance")
    assert file.read_bytes() == data[: len(data) - 9]  # nothing overwritten


def test_corrupt_bytes_fail_the_checksum(store):
    file = store.path / store.manifest["directory"] / "fc.stats.npy"
    data = bytearray(file.read_bytes())
    data[-1] ^= 0xFF
    file.write_bytes(bytes(data))
    with pytest.raises(CorruptStoreError, match=r"fc\.stats\.npy does not match its checksum"):
        store.layer_arrays("fc", verify=True)


def test_save_refuses_stats_that_do_not_fit_the_counts(tmp_path):
    arrays = layer_arrays(0)
    arrays["stats"] = arrays["stats"][:, :4]
    with pytest.raises(ValueError, match=r"the stats of layer 'conv' have shape \(2, 4, 4\); with these counts and k "
                                         r"they need \(2, 5, C\)"):
        ResultStore(tmp_path / "fv").save({"conv": arrays}, TARGETS, COUNTS, CONFIG, next_index=10, complete=True)
    assert not (tmp_path / "fv").exists()


def test_shape_mismatch_with_manifest(store):
    np.save(store.path / store.manifest["directory"] / "conv.max.npy", np.zeros((2, K, C + 1), np.int32))
    with pytest.raises(CorruptStoreError, match=r"conv\.max\.npy holds int32 \[2, 3, 5\], but the manifest"):
        store.maximization("conv", "relevance")


@pytest.mark.parametrize("text,match", [("{not json", "is not valid JSON"), ('{"format": "x"}', "is not a crp"),
                                        ('{"format": "crp.FeatureVisualization", "format_version": 99}',
                                         "format version 99; this crp reads version 2. Update crp."),
                                        ('{"format": "crp.FeatureVisualization", "format_version": 1}',
                                         "format version 1; .* before the first release; run FeatureVisualization "
                                         "again")])
def test_bad_manifest(tmp_path, text, match):
    (tmp_path / "manifest.json").write_text(text)
    with pytest.raises(CorruptStoreError, match=match):
        _ = ResultStore(tmp_path).manifest


def test_missing_results_and_bad_queries(store, tmp_path):
    with pytest.raises(FileNotFoundError, match="call FeatureVisualization.run"):
        open_results(tmp_path / "nothing")
    with pytest.raises(FileNotFoundError, match="call FeatureVisualization.run"):
        _ = ResultStore(tmp_path / "nothing").manifest
    with pytest.raises(KeyError, match="layer 'other' has no results"):
        store.maximization("other", "relevance")
    with pytest.raises(KeyError, match="no activation statistics for target 5"):
        store.statistics("conv", "activation", 5)
    with pytest.raises(ValueError, match="mode must be 'relevance' or 'activation', got 'gradient'"):
        store.maximization("conv", "gradient")


def test_helpers_read_the_store_through_zennit_crp_paths(store):
    indices, _, _ = load_maximization(store.path / "ActMax_sum_normed", "conv")
    assert np.array_equal(indices, layer_arrays(0)["max"]["index"][1])
    assert np.array_equal(load_maximization(store.path, "conv", mode="activation")[0], indices)
    _, values, _ = load_statistics(store.path / "RelStats_sum_normed", "fc", 2)
    assert np.array_equal(values, layer_arrays(1)["stats"]["value"][0, 0:3])
    assert load_stat_targets(store.path / "ActStats_sum_normed").tolist() == [2]
    with pytest.raises(FileNotFoundError, match=r"not those named by .RelMax_max_normed."):
        load_maximization(store.path / "RelMax_max_normed", "conv")
    with pytest.raises(ValueError, match="holds statistics results"):
        load_maximization(store.path / "RelStats_sum_normed", "conv")
    with pytest.raises(FileNotFoundError, match="neither a result store nor a folder named like"):
        open_result_folder(store.path / "elsewhere")


def write_legacy(path, max_target="sum", abs_norm=True):
    """A folder as zennit-crp 0.6 writes it (targets saved as strings, as its collect step does)."""
    rng = np.random.default_rng(4)
    expected = {}
    for mode in ("relevance", "activation"):
        folder = path / legacy_folder_name(mode, "max", max_target, abs_norm)
        folder.mkdir(parents=True)
        arrays = (rng.integers(0, 50, (K, C)), rng.normal(size=(K, C)).astype(np.float32), rng.integers(0, 9, (K, C)))
        for suffix, array in zip(("data", "rel", "rf"), arrays):
            np.save(folder / f"conv_{suffix}.npy", array)
        expected[mode, "max"] = arrays
        stats = path / legacy_folder_name(mode, "stats", max_target, abs_norm)
        (stats / "conv").mkdir(parents=True)
        np.save(stats / "targets.npy", np.array(["3", "1"]))
        for target in (1, 3):
            arrays = (rng.integers(0, 50, (2, C)), rng.normal(size=(2, C)).astype(np.float32),
                      rng.integers(0, 9, (2, C)))
            for suffix, array in zip(("data", "rel", "rf"), arrays):
                np.save(stats / "conv" / f"{target}_{suffix}.npy", array)
            expected[mode, target] = arrays
    return expected


def test_reads_zennit_crp_folders(tmp_path):
    expected = write_legacy(tmp_path, "max", False)
    reader = open_results(tmp_path, "max", False)
    assert isinstance(reader, LegacyStore)
    for mode in ("relevance", "activation"):
        for got, want in zip(reader.maximization("conv", mode), expected[mode, "max"]):
            assert np.array_equal(got, want)
        for got, want in zip(load_statistics(tmp_path / f"{mode[:3].title()}Stats_max_unnormed", "conv", 3),
                             expected[mode, 3]):
            assert np.array_equal(got, want)
        assert reader.targets(mode).tolist() == [3, 1]
    helper = load_maximization(tmp_path / "ActMax_max_unnormed", "conv")
    assert np.array_equal(helper[1], expected["activation", "max"][1])
    targets, means = reader.mean_values("conv", "relevance", 2, mean_n=1)
    assert targets.tolist() == [3, 1] and means[0] == expected["relevance", 3][1][0, 2]
    with pytest.raises(KeyError, match="no statistics for target 7"):
        reader.statistics("conv", "relevance", 7)
    with pytest.raises(FileNotFoundError, match="conv2_data.npy is missing"):
        reader.maximization("conv2", "relevance")


def test_legacy_with_corrupt_targets(tmp_path):
    write_legacy(tmp_path)
    np.save(tmp_path / "RelStats_sum_normed" / "targets.npy", np.array(["cat"]))
    with pytest.raises(CorruptStoreError, match="does not hold integer targets"):
        load_stat_targets(tmp_path / "RelStats_sum_normed")


def test_load_receptive_field(tmp_path):
    np.save(tmp_path / "conv.npy", np.arange(6).reshape(2, 3))
    assert load_receptive_field(tmp_path, "conv").tolist() == [[0, 1, 2], [3, 4, 5]]
    with pytest.raises(FileNotFoundError, match="no receptive field of layer 'fc'"):
        load_receptive_field(tmp_path, "fc")
