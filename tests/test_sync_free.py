"""The per-batch path without device->host syncs: TopK's host bookkeeping, fixed operator counts, and a guard.

TopK keeps which group sits in which slot and how full every slot is on the host; these tests check the host
copy against the device buffers after random sequences of batches, the results against a naive float64
re-implementation (with cut-backs, merges and checkpoint round trips), that a batch's operator calls do not
depend on how many groups it touches, and that FeatureVisualization.run() reads nothing back from the device
in the steady state.
"""
import numpy as np
import pytest
import torch

from crp._features.topk import EMPTY_KEY, TopK, encode_keys
from crp.attribution import CondAttribution
from crp.concepts import ChannelConcept
from crp.visualization import FeatureVisualization

from helpers import LAYERS, TensorData, TinyNet

# ------------------------------------------------------------------------------------------------------------
# host bookkeeping against the device state and a naive re-implementation


def naive_top_k(stream, k):
    """``{label: (index, value, neuron)}``, each ``(min(k, rows), C)``: float64 ranking, value desc, index asc."""
    rows = {}
    for values, indices, neurons, labels in stream:
        for i, label in enumerate(labels.tolist()):
            rows.setdefault(label, []).append((values[i], indices[i], neurons[i]))
    result = {}
    for label, entries in rows.items():
        values = np.stack([e[0] for e in entries]).astype(np.float64)
        indices = np.array([e[1] for e in entries], dtype=np.int64)
        neurons = np.stack([e[2] for e in entries])
        columns = []
        for c in range(values.shape[1]):
            order = sorted(range(len(entries)), key=lambda i, c=c: (-values[i, c], indices[i]))[:k]
            columns.append((indices[order], values[order, c], neurons[order, c]))
        result[label] = tuple(np.stack([col[j] for col in columns], 1) for j in range(3))
    return result


def random_stream(seed, *, n_columns=3, batches=12, groups=None):
    """Batches of random size over random sparse labels (``groups`` of them, or 1 to 11); values in float32 with
    many ties."""
    rng = np.random.default_rng(seed)
    labels = rng.choice(10_000, size=groups or int(rng.integers(1, 12)), replace=False)
    start, stream = 0, []
    for _ in range(batches):
        n = int(rng.integers(1, 40))
        values = (rng.integers(-20, 20, (n, n_columns)) / 4).astype(np.float32)
        stream.append((values, np.arange(start, start + n) * 7 % 100_003, rng.integers(0, 50, (n, n_columns)),
                       rng.choice(labels, n)))
        start += n
    return stream


def add(accumulator, batch):
    values, indices, neurons, labels = batch
    accumulator.add(torch.from_numpy(values), indices, torch.from_numpy(neurons), labels)


def assert_mirrors_match(accumulator, added):
    """Host bookkeeping against the device pool: a slot's first ``fill`` pool rows hold entries, no two slots
    share a row, and the empty row 0 stays empty."""
    held = []
    for label, slot in accumulator._slots.items():
        fill, n_held = int(accumulator._fill[slot]), int(accumulator._n_held[slot])
        rows = accumulator._held[slot, :n_held]
        assert fill <= n_held <= min(accumulator.capacity, added[label]), (label, fill, n_held)
        assert (rows > 0).all() and (accumulator._held[slot, n_held:] == 0).all()
        assert (accumulator._keys[torch.from_numpy(rows[:fill])] != EMPTY_KEY).all()
        assert accumulator.count(label) == added[label]
        held.extend(rows.tolist())
    assert len(held) == len(set(held)) == accumulator._used - 1
    assert (accumulator._keys[0] == EMPTY_KEY).all() and (accumulator._neurons[0] == 0).all()


def assert_equals_naive(accumulator, expected, k):
    arrays = accumulator.to_arrays()
    assert arrays["labels"].tolist() == sorted(expected)
    for g, label in enumerate(arrays["labels"].tolist()):
        index, value, neuron = expected[label]
        rows = len(index)
        np.testing.assert_array_equal(arrays["index"][g, :rows], index)
        np.testing.assert_array_equal(arrays["value"][g, :rows].astype(np.float64), value)
        np.testing.assert_array_equal(arrays["neuron"][g, :rows], neuron)
        assert (arrays["index"][g, rows:] == -1).all() and np.isnan(arrays["value"][g, rows:]).all()
        assert rows == min(k, accumulator.count(label))


@pytest.mark.parametrize("seed", range(8))
def test_host_mirrors_equal_device_state_and_results_equal_naive(seed):
    rng = np.random.default_rng(100 + seed)
    k, slack = int(rng.integers(1, 9)), int(rng.integers(0, 6))
    stream = random_stream(seed)
    accumulator, added = TopK(k, 3, slack=slack), {}
    for batch in stream:
        add(accumulator, batch)
        for label in batch[3].tolist():
            added[label] = added.get(label, 0) + 1
        assert_mirrors_match(accumulator, added)
    assert_equals_naive(accumulator, naive_top_k(stream, k), k)
    assert_mirrors_match(accumulator, added)  # after compact()


@pytest.mark.parametrize("seed", range(3))
def test_many_small_groups_share_the_pool_and_equal_naive(seed):
    """Next-token targets: hundreds of groups of one or two rows (the pool doubles many times), a few large."""
    k = 3
    stream = random_stream(300 + seed, batches=20, groups=400)
    stream.append((np.ones((9, 3), np.float32), np.arange(9) + 200_000, np.zeros((9, 3), np.int64),
                   np.full(9, stream[0][3][0])))  # one group beyond k + slack
    accumulator, added = TopK(k, 3, slack=1), {}
    for batch in stream:
        add(accumulator, batch)
        for label in batch[3].tolist():
            added[label] = added.get(label, 0) + 1
    assert_mirrors_match(accumulator, added)
    held = accumulator._used - 1  # a group holds the rows it was given, k + slack at most (k after a cut-back)
    assert sum(min(count, k) for count in added.values()) <= held <= sum(min(count, k + 1) for count in added.values())
    assert_equals_naive(accumulator, naive_top_k(stream, k), k)


@pytest.mark.parametrize("seed", range(4))
def test_merges_and_checkpoints_equal_naive(seed):
    rng = np.random.default_rng(200 + seed)
    k = int(rng.integers(1, 7))
    stream = random_stream(50 + seed, batches=15)
    parts = [TopK(k, 3, slack=int(rng.integers(0, 4))) for _ in range(3)]
    for i, batch in enumerate(stream):
        add(parts[i % 3], batch)
        if i == 7:  # a checkpoint round trip in the middle, then continue
            parts[1] = TopK.from_arrays(parts[1].to_arrays(), k=k, slack=2)
    merged = parts[2].merge(parts[0]).merge(parts[1])
    added = {}
    for batch in stream:
        for label in batch[3].tolist():
            added[label] = added.get(label, 0) + 1
    assert_mirrors_match(merged, added)
    assert_equals_naive(merged, naive_top_k(stream, k), k)


def test_a_cut_back_keeps_the_top_k_of_buffer_and_batch():
    accumulator = TopK(2, 1, slack=1)  # 3 slots per group
    accumulator.add(torch.tensor([[1.0], [5.0]]), [10, 11], torch.tensor([[0], [1]]), [4, 4])
    assert accumulator._fill[accumulator._slots[4]] == 2
    # 2 + 2 rows overflow the 3 slots: cut back to the top 2 of all four
    accumulator.add(torch.tensor([[3.0], [7.0], [2.0]]), [12, 13, 14], torch.tensor([[2], [3], [4]]), [4, 4, 9])
    assert accumulator._fill[accumulator._slots[4]] == 2 and accumulator._fill[accumulator._slots[9]] == 1
    indices, values, neurons = accumulator.result(4)
    assert indices[:, 0].tolist() == [13, 11] and values[:, 0].tolist() == [7.0, 5.0]
    assert neurons[:, 0].tolist() == [3, 1] and accumulator.count(4) == 4


def test_host_data_and_tensors_give_the_same_rankings():
    generator = torch.Generator().manual_seed(3)
    values = torch.randn(30, 4, generator=generator)
    neurons = torch.randint(0, 9, (30, 4), generator=generator)
    labels = torch.randint(0, 5, (30,), generator=generator)
    from_tensors, from_host = TopK(3, 4, slack=1), TopK(3, 4, slack=1)
    from_tensors.add(values, torch.arange(30), neurons, labels)
    from_host.add(values, list(range(30)), neurons, labels.numpy())
    for name, array in from_tensors.to_arrays().items():
        np.testing.assert_array_equal(array, from_host.to_arrays()[name])


# ------------------------------------------------------------------------------------------------------------
# operator calls and host reads per batch

#: Operators that make a CUDA device wait and copy a value to the host (see benchmarks/bench_syncs.py).
SYNC_OPS = {"aten::_local_scalar_dense", "aten::item", "aten::is_nonzero", "aten::nonzero", "aten::_unique",
            "aten::_unique2", "aten::unique_dim", "aten::unique_consecutive", "aten::masked_select",
            "aten::repeat_interleave", "aten::bincount", "aten::equal", "aten::argwhere"}


def _inside_aten(event):
    parent = event.cpu_parent
    while parent is not None:
        if parent.name.startswith("aten::"):
            return True
        parent = parent.cpu_parent
    return False


def profiled_ops(fn, *args, **kwargs):
    """Run ``fn(*args)``; return its top-level operator calls (names) and all sync-prone calls."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profiler:
        fn(*args, **kwargs)
    aten = [e for e in profiler.events() if e.name.startswith("aten::")]
    return [e.name for e in aten if not _inside_aten(e)], [e.name for e in aten if e.name in SYNC_OPS]


def test_a_batch_costs_the_same_operator_calls_for_one_group_or_many():
    """Steady state (all groups allocated, buffers at capacity): an add issues a fixed sequence of calls."""
    k, slack, groups, columns = 4, 2, 40, 6
    accumulator = TopK(k, columns, slack=slack)
    labels = np.repeat(np.arange(groups), k + slack)
    generator = torch.Generator().manual_seed(0)

    def batch(labels_of_rows):
        n = len(labels_of_rows)
        keys = encode_keys(torch.randn(n, columns, generator=generator), torch.randint(0, 10 ** 6, (n,)))
        return keys, torch.zeros(n, columns, dtype=torch.int32), labels_of_rows

    accumulator.add_keys(*batch(labels))  # every group allocated and at capacity
    accumulator.compact()  # back to k rows each: room for `slack` more
    cases = {
        "one group, fits": np.zeros(1, np.int64),
        "one group, overflows": np.zeros(9, np.int64),
        "all groups, fit": np.arange(groups),
        "all groups, overflow": np.repeat(np.arange(groups), 5),
        "some fit, some overflow": np.concatenate([np.arange(10), np.repeat(np.arange(10, 20), 7)]),
    }
    calls = {}
    for name, rows in cases.items():
        calls[name], syncs = profiled_ops(accumulator.add_keys, *batch(rows))
        assert syncs == [], name
        accumulator.compact()
    first = calls["one group, fits"]
    assert "aten::topk" in first and "aten::index_copy_" in first
    assert all(c == first for c in calls.values()), {name: len(c) for name, c in calls.items()}


class HostReads:
    """Counts reads of tensors' values on the host, except of the DataLoader's own (host) tensors."""

    METHODS = ("item", "tolist", "__bool__", "__int__", "__float__", "__index__", "numpy", "__array__", "cpu")

    def __init__(self, monkeypatch):
        self.count, self.active, self.host = 0, False, set()
        for name in self.METHODS:
            monkeypatch.setattr(torch.Tensor, name, self._counting(getattr(torch.Tensor, name)))
        original_to = torch.Tensor.to

        def to(tensor, *args, **kwargs):  # a host tensor moved "to the device" is a copy, as on a GPU
            result = original_to(tensor, *args, **kwargs)
            moved = args or "device" in kwargs
            return result.clone() if self.active and moved and result is tensor and self._host(tensor) else result

        monkeypatch.setattr(torch.Tensor, "to", to)

    def _host(self, tensor):
        return tensor.untyped_storage().data_ptr() in self.host

    def _counting(self, original):
        def counted(tensor, *args, **kwargs):
            if self.active and not self._host(tensor):
                self.count += 1
            return original(tensor, *args, **kwargs)
        return counted


@pytest.mark.parametrize("max_target,abs_norm", [("sum", True), ("max", False)])
def test_run_reads_nothing_back_from_the_device_in_the_steady_state(tmp_path, monkeypatch, max_target, abs_norm):
    """The CI guard: batches after the first few read no tensor value on the host (at most 1 allowed a batch)."""
    reads = HostReads(monkeypatch)
    per_batch, profiled = [], []
    original = FeatureVisualization._analyze_batch

    def analyze_batch(self, analysis, indices, data, *args, **kwargs):
        per_batch.append(reads.count)  # reads since the previous batch began: the whole loop's, per batch
        reads.host = {indices.untyped_storage().data_ptr(), data.untyped_storage().data_ptr()}
        reads.active = True
        if len(per_batch) > 3:
            profiled.append(profiled_ops(original, self, analysis, indices, data, *args, **kwargs)[1])
        else:
            original(self, analysis, indices, data, *args, **kwargs)

    monkeypatch.setattr(FeatureVisualization, "_analyze_batch", analyze_batch)
    model = TinyNet().double().eval()
    fv = FeatureVisualization(CondAttribution(model), TensorData(), {name: ChannelConcept() for name in LAYERS},
                              path=tmp_path / "fv", top_k=2, max_target=max_target, abs_norm=abs_norm)
    fv.run(None, batch_size=4, checkpoint=1000, verbose=False)
    reads.active = False
    per_batch.append(reads.count)  # includes the final save
    steady = np.diff(per_batch)[3:-1]
    assert len(steady) == 16 - 4
    assert (steady <= 1).all(), steady
    assert steady.sum() == 0  # none at all, in fact
    assert profiled and all(syncs == [] for syncs in profiled), profiled


def test_relevance_init_keeps_every_rows_targets():
    attribution = CondAttribution(TinyNet())
    prediction = torch.arange(12.0).reshape(3, 4)
    got = attribution.relevance_init(prediction, [[1], None, [0, 2]], None)
    keep = torch.tensor([[0.0, 1, 0, 0], [1, 1, 1, 1], [1, 0, 1, 0]])
    assert torch.equal(got, prediction * keep)
    outputs = torch.arange(1.0, 13.0).reshape(2, 3, 2)  # e.g. a per-pixel output: a target keeps its whole map
    got = attribution.relevance_init(outputs, [[2], [0, 1, 1]], None)
    expected = torch.zeros(2, 3, 2)
    expected[0, 2], expected[1, :2] = outputs[0, 2], outputs[1, :2]
    assert torch.equal(got, expected)
