"""The top-k accumulator against a brute-force ranking, in any batch size, order, slack and merge."""
import numpy as np
import pytest
import torch

from crp._features.topk import EMPTY_KEY, MAX_INDEX, TopK, decode_keys, encode_keys

N, C, K, GROUPS = 120, 5, 6, 4


@pytest.fixture(scope="module")
def rows():
    generator = torch.Generator().manual_seed(0)
    values = torch.randint(-3, 4, (N, C), generator=generator).float() / 2  # many exact ties
    values[::7, 1] = float("nan")
    values[::5, 2] = -0.0
    indices = torch.randperm(N, generator=generator) + 1000
    neurons = torch.randint(0, 9, (N, C), generator=generator)
    groups = torch.randint(0, GROUPS, (N,), generator=generator) * 3  # labels 0, 3, 6, 9
    return values, indices, neurons, groups


def brute_force(values, indices, neurons, groups, group):
    """Top-K per column by (value desc, index asc); NaN ranks as -inf, -0.0 as 0.0."""
    keep = [i for i in range(len(values)) if groups is None or int(groups[i]) == group]
    result = []
    for c in range(values.shape[1]):
        def rank(i, c=c):
            v = float(values[i, c])
            return (float("inf") if np.isnan(v) else -v, int(indices[i]))
        chosen = sorted(keep, key=rank)[:K]
        result.append([(int(indices[i]), float(values[i, c]), int(neurons[i, c])) for i in chosen])
    return result


def assert_matches(accumulator, rows, group):
    values, indices, neurons, groups = rows
    expected = brute_force(values, indices, neurons, groups, group)
    got_indices, got_values, got_neurons = accumulator.result(group)
    assert got_indices.dtype == torch.int64 and got_values.dtype == torch.float32
    for c in range(C):
        assert got_indices[:, c].tolist() == [e[0] for e in expected[c]]
        assert got_neurons[:, c].tolist() == [e[2] for e in expected[c]]
        expected_values = torch.tensor([e[1] for e in expected[c]])
        expected_values = torch.nan_to_num(expected_values, nan=-float("inf")) + 0.0
        assert torch.equal(got_values[:, c], expected_values)


@pytest.mark.parametrize("batch_size,slack,shuffle", [(1, 0, False), (7, 0, True), (16, 3, True), (N, 0, False),
                                                      (5, 20, True)])
def test_matches_brute_force(rows, batch_size, slack, shuffle):
    values, indices, neurons, groups = rows
    order = torch.randperm(N, generator=torch.Generator().manual_seed(batch_size)) if shuffle else torch.arange(N)
    accumulator = TopK(K, C, slack=slack)
    for start in range(0, N, batch_size):
        part = order[start:start + batch_size]
        accumulator.add(values[part], indices[part], neurons[part], groups[part])
    assert accumulator.groups == [0, 3, 6, 9]
    for group in accumulator.groups:
        assert accumulator.count(group) == int((groups == group).sum())
        assert_matches(accumulator, rows, group)


def test_single_group_and_fewer_rows_than_k(rows):
    values, indices, neurons, _ = rows
    accumulator = TopK(K, C)
    accumulator.add(values[:3], indices[:3], neurons[:3])
    got = accumulator.result()
    assert got[0].shape == (3, C)
    expected = brute_force(values[:3], indices[:3], neurons[:3], None, None)
    assert got[0][:, 0].tolist() == [e[0] for e in expected[0]]


def test_merge_equals_one_run(rows):
    values, indices, neurons, groups = rows
    full, first, second = TopK(K, C), TopK(K, C, slack=2), TopK(K, C)
    full.add(values, indices, neurons, groups)
    first.add(values[:50], indices[:50], neurons[:50], groups[:50])
    second.add(values[50:], indices[50:], neurons[50:], groups[50:])
    merged = second.merge(first)
    for group in full.groups:
        assert merged.count(group) == full.count(group)
        assert all(torch.equal(a, b) for a, b in zip(merged.result(group), full.result(group)))


def test_arrays_roundtrip(rows):
    values, indices, neurons, groups = rows
    accumulator = TopK(K, C)
    accumulator.add(values, indices, neurons, groups)
    arrays = accumulator.to_arrays()
    assert arrays["index"].shape == (GROUPS, K, C) and arrays["index"].dtype == np.int32
    assert arrays["labels"].tolist() == [0, 3, 6, 9]
    rebuilt = TopK.from_arrays(arrays)
    for group in accumulator.groups:
        assert rebuilt.count(group) == accumulator.count(group)
        assert all(torch.equal(a, b) for a, b in zip(rebuilt.result(group), accumulator.result(group)))


def test_empty_slots_are_marked():
    accumulator = TopK(4, 2)
    accumulator.add(torch.ones(3, 2), torch.tensor([5, 6, 7]), torch.zeros(3, 2, dtype=torch.long),
                    torch.tensor([0, 1, 1]))
    arrays = accumulator.to_arrays()  # rows: min(k, largest group)
    assert arrays["index"].shape == (2, 2, 2) and accumulator.rows() == 2
    assert arrays["index"][:, :, 0].tolist() == [[5, -1], [6, 7]]
    assert np.isnan(arrays["value"][0, 1]).all() and (arrays["neuron"][0, 1] == -1).all()


def test_a_group_holds_only_the_rows_it_was_given():
    accumulator = TopK(40, 3)
    for label in range(100):  # 100 groups of one row each hold one pool row each, not 40 (nor 4)
        accumulator.add(torch.ones(1, 3), torch.tensor([label]), torch.zeros(1, 3), torch.tensor([label]))
    assert accumulator._used == 1 + 100 and len(accumulator._keys) == 128  # the empty row 0; doubling from 16
    accumulator.add(torch.ones(9, 3), torch.arange(9), torch.zeros(9, 3), torch.zeros(9, dtype=torch.long))
    assert accumulator._used == 1 + 100 + 9 and accumulator.rows() == 10  # group 0: 1 + 9 rows
    for _ in range(10):  # a group holds k + slack rows at most, however many it is given
        accumulator.add(torch.rand(30, 3), torch.arange(30), torch.zeros(30, 3), torch.zeros(30, dtype=torch.long))
    assert accumulator._used == 1 + 99 + 40 and accumulator.rows() == 40
    three = TopK(8, 2, slack=4)  # 3 full groups need 3 * 12 + 1 rows: the pool doubles 16, 32, then stops at
    for index in range(60):  # what the host's 4 slots can hold, 4 * 12 + 1, not 64
        three.add(torch.rand(1, 2), torch.tensor([index]), torch.zeros(1, 2), torch.tensor([index % 3]))
    assert three._used == 1 + 3 * 12 and len(three._keys) == 4 * 12 + 1


def test_key_order_and_roundtrip():
    values = torch.tensor([[-float("inf"), -2.5, -0.0, 0.0, 1e-30, 3.0, float("inf")]]).repeat(2, 1)
    indices = torch.tensor([7, 3])
    keys = encode_keys(values, indices)
    assert bool(((keys[:, 1:] > keys[:, :-1]) | (values[:, 1:] == values[:, :-1])).all())  # increasing values
    assert bool((keys[1] > keys[0]).all())  # same value, lower index ranks first
    assert keys[0, 2] == keys[0, 3]  # -0.0 == 0.0
    decoded, decoded_indices = decode_keys(keys)
    assert torch.equal(decoded, values + 0.0) and decoded_indices.tolist() == [[7] * 7, [3] * 7]
    assert bool((keys > EMPTY_KEY).all())
    empty_values, empty_indices = decode_keys(torch.tensor([EMPTY_KEY]))
    assert torch.isnan(empty_values).all() and empty_indices.tolist() == [-1]


@pytest.mark.parametrize("kwargs,match", [
    ({"k": 0, "n_columns": 2}, "k must be an int >= 1"),
    ({"k": 2, "n_columns": True}, "n_columns must be an int >= 1"),
    ({"k": 2, "n_columns": 2, "slack": -1}, "slack must be an int >= 0"),
])
def test_bad_construction(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TopK(**kwargs)


@pytest.mark.parametrize("args,match", [
    ((torch.zeros(3, 4), torch.arange(3), torch.zeros(3, 4)), r"values must be a tensor of shape \(n, 2\)"),
    ((torch.zeros(3, 2), torch.arange(4), torch.zeros(3, 2)), r"indices must have shape \(3,\)"),
    ((torch.zeros(3, 2), torch.arange(3), torch.zeros(3, 1)), r"neurons must have shape \(3, 2\)"),
    ((torch.zeros(3, 2), torch.tensor([0, -1, 2]), torch.zeros(3, 2)), "indices must lie in"),
    ((torch.zeros(1, 2), torch.tensor([MAX_INDEX + 1]), torch.zeros(1, 2)), "indices must lie in"),
    ((torch.zeros(3, 2), torch.arange(3), torch.zeros(3, 2), torch.tensor([0, -2, 1])), "non-negative"),
    ((torch.zeros(3, 2), torch.arange(3), torch.zeros(3, 2), torch.tensor([0, 1])), r"groups must have shape"),
])
def test_bad_rows(args, match):
    with pytest.raises(ValueError, match=match):
        TopK(2, 2).add(*args)


def test_bad_merge_and_missing_group():
    with pytest.raises(ValueError, match="can only merge a TopK with k=2"):
        TopK(2, 2).merge(TopK(3, 2))
    with pytest.raises(KeyError, match="group 5 has no entries"):
        TopK(2, 2).result(5)


def test_ragged_export_and_rebuild(rows):
    values, indices, neurons, groups = rows
    accumulator = TopK(K, C, slack=2)
    accumulator.add(values, indices, neurons, groups)
    labels, lengths = [9, 3, 7, 0], [2, K, 1, 0]  # 7 was never seen: one empty row
    exported = accumulator.to_tensors(labels, lengths)
    assert exported["index"].shape == (sum(lengths), C) and exported["index"].dtype == torch.int32
    starts = np.cumsum([0] + lengths)
    for label, length, start in zip(labels, lengths, starts):
        if label == 7:
            assert (exported["index"][start] == -1).all() and (exported["neuron"][start] == -1).all()
            assert exported["value"][start].isnan().all()
            continue
        expected = accumulator.result(label)
        assert torch.equal(exported["index"][start:start + length].long(), expected[0][:length])
        assert torch.equal(exported["value"][start:start + length], expected[1][:length])
        assert torch.equal(exported["neuron"][start:start + length].long(), expected[2][:length])
    full = [accumulator.count(g) for g in accumulator.groups]
    ragged = accumulator.to_tensors(accumulator.groups, [min(K, n) for n in full])
    rebuilt = TopK.from_arrays({"labels": np.asarray(accumulator.groups), "counts": np.asarray(full),
                                "offsets": np.cumsum([0] + [min(K, n) for n in full]),
                                **{name: tensor.numpy() for name, tensor in ragged.items()}}, k=K)
    for group in accumulator.groups:
        assert rebuilt.count(group) == accumulator.count(group)
        assert all(torch.equal(a, b) for a, b in zip(rebuilt.result(group), accumulator.result(group)))
    with pytest.raises(ValueError, match=r"offsets of length 5 ending at N; got index \(24, 5\) and offsets "
                                         r"\[0, 1, 2, 3, 4\]"):
        TopK.from_arrays({"labels": np.arange(4), "counts": np.ones(4), "offsets": [0, 1, 2, 3, 4],
                          **{name: tensor.numpy() for name, tensor in ragged.items()}})
