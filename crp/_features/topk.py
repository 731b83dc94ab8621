"""A mergeable top-k accumulator: the k samples of largest value per (group, concept), with deterministic ties.

Relevance Maximization (Achtibat et al., Nature Machine Intelligence 2023, Sec. 4.2) keeps, for every concept
of a layer, the dataset samples on which it is most relevant (or most active); per-class statistics keep the
same per explained class. Both are one :class:`TopK`: the overall ranking is a single group, the per-class
one has one group per class.

Every entry is ranked by one 64-bit key that holds its value (upper 32 bits, in an order-preserving integer
form of the float32 value) and its dataset index (lower 32 bits, inverted so that the lower index ranks
first). Keys of different samples are therefore distinct, the top-k set is unique, and it does not depend on
the order in which entries arrive: results are identical for any batch size, checkpoint spacing, restart
or merge of partial results.
"""
import sys
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from crp._utils.transfer import to_device

__all__ = ["TopK", "encode_keys", "decode_keys", "EMPTY_KEY", "MAX_INDEX"]

#: Key of an empty slot; it ranks below every real entry.
EMPTY_KEY = torch.iinfo(torch.int64).min
#: Largest dataset index that fits into a key.
MAX_INDEX = 2 ** 31 - 1
_LOW = 0xFFFFFFFF
_SIGN_FLIP = 0x7FFFFFFF

Device = Union[str, torch.device, None]


def encode_keys(values: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """Pack values ``(n, C)`` and dataset indices ``(n,)`` or ``(n, C)`` into sortable int64 keys ``(n, C)``.

    A larger key means a larger value, or the same float32 value and a lower index. NaN ranks like ``-inf``
    and ``-0.0`` like ``0.0``.

    Parameters
    ----------
    values : torch.Tensor
        Values of shape ``(n, C)``; they are ranked in float32.
    indices : torch.Tensor
        Dataset indices in ``[0, MAX_INDEX]``, one per row or one per entry.

    Returns
    -------
    torch.Tensor
        int64 keys of shape ``(n, C)``.
    """
    v = values.detach().to(torch.float32)
    v = torch.nan_to_num(v, nan=-float("inf"), posinf=float("inf"), neginf=-float("inf")) + 0.0
    bits = v.view(torch.int32).to(torch.int64)
    ordered = torch.where(bits < 0, bits ^ _SIGN_FLIP, bits)
    indices = indices.to(device=v.device, dtype=torch.int64)
    if indices.dim() == 1:
        indices = indices.unsqueeze(1)
    return (ordered << 32) | (_LOW - indices)


def decode_keys(keys: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Invert :func:`encode_keys`: return the float32 values and int64 indices of ``keys`` (NaN and -1 if empty)."""
    values, indices = _decode32(keys)
    return values, indices.to(torch.int64)


def _decode32(keys: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """:func:`decode_keys` with int32 indices, working on the two 32-bit halves of every key."""
    halves = keys.contiguous().reshape(-1).view(torch.int32).view(-1, 2)
    low, high = (halves[:, 0], halves[:, 1]) if sys.byteorder == "little" else (halves[:, 1], halves[:, 0])
    bits = torch.where(high < 0, high ^ _SIGN_FLIP, high)
    indices = torch.bitwise_not(low)  # _LOW - low as unsigned ints: the index, or -1 for an empty slot (low 0)
    values = torch.where(indices < 0, float("nan"), bits.view(torch.float32))
    return values.reshape(keys.shape), indices.reshape(keys.shape)


class TopK:
    """The ``k`` entries of largest value for every group and column, merged batch by batch.

    Entries arrive as rows: a row is one sample (dataset index), a value and a neuron index per column
    (concept), and a group label (e.g. the explained class). Each group holds up to ``k + slack`` rows; rows
    are written into free ones and a group is cut back to its top ``k`` per column (one vectorized ``topk``
    over all groups that overflow) only when it is full. A larger ``slack`` makes updates cheaper at
    ``(k + slack) / k`` times the memory.

    The rows of all groups live in one pool on the device (an int64 key and an int32 neuron index per column),
    which grows by doubling; a group takes pool rows as it fills, so a group of one sample holds one row, however
    large the others are. Which pool rows a group holds and how many of them are filled (how a fill evolves
    follows from the labels alone) are kept on the host. So adding rows never waits for the device: the group
    labels and indices are host data, and every :meth:`add` issues the same operator calls (one ``index_copy_``
    for the rows that fit, one batched ``topk`` for the groups that overflow, each possibly empty), however many
    groups a batch touches.

    Memory: ``rows * n_columns * 12`` bytes, where ``rows`` is the number of rows the groups hold (each at most
    ``min(k + slack, rows added to it)``), up to twice that while the pool grows, and never more than ``k + slack``
    rows for each group the host tables have room for (a power of two); it does not grow with the number of rows
    added beyond that.

    Parameters
    ----------
    k : int
        Number of entries kept per group and column.
    n_columns : int
        Number of columns (concepts).
    slack : int
        Extra slots per group before it is cut back to ``k``.
    device : str or torch.device, optional
        Where the state lives; by default the device of the first rows added.

    Examples
    --------
    >>> acc = TopK(k=2, n_columns=3)
    >>> groups = torch.tensor([0, 1, 0, 1, 1])
    >>> acc.add(torch.rand(5, 3), torch.arange(5), torch.zeros(5, 3, dtype=torch.long), groups=groups)
    >>> indices, values, neurons = acc.result(group=1)  # each (2, 3), sorted by decreasing value
    """

    def __init__(self, k: int, n_columns: int, slack: int = 0, device: Device = None) -> None:
        for name, value, low in (("k", k, 1), ("n_columns", n_columns, 1), ("slack", slack, 0)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
                raise ValueError(f"{name} must be an int >= {low}, got {value!r}.")
        self.k, self.n_columns, self.slack = int(k), int(n_columns), int(slack)
        self.device = None if device is None else torch.device(device)
        self._slots: Dict[int, int] = {}
        # the pool: (rows, columns) on the device, allocated on the first rows; row 0 stays empty (EMPTY_KEY,
        # neuron 0) and stands in for missing rows in gathers
        self._keys = torch.empty((0, self.n_columns), dtype=torch.int64)
        self._neurons = torch.empty((0, self.n_columns), dtype=torch.int32)
        self._used = 1  # pool rows handed out so far, the empty row 0 included
        # on the host, per slot: the pool rows it holds (0 beyond them), how many, and how many are filled
        self._held = np.zeros((0, self.capacity), dtype=np.int64)
        self._n_held = np.zeros(0, dtype=np.int64)
        self._fill = np.zeros(0, dtype=np.int64)
        self._counts: List[int] = []

    # ------------------------------------------------------------------------------------------------------
    # public API

    @property
    def capacity(self) -> int:
        """Slots per group and column, ``k + slack``."""
        return self.k + self.slack

    @property
    def groups(self) -> List[int]:
        """The group labels seen so far, sorted."""
        return sorted(self._slots)

    def count(self, group: int = 0) -> int:
        """Return the number of rows added to ``group`` (0 if none)."""
        slot = self._slots.get(int(group))
        return 0 if slot is None else self._counts[slot]

    def add(self, values: torch.Tensor, indices: Union[torch.Tensor, np.ndarray, Sequence[int]],
            neurons: torch.Tensor, groups: Union[torch.Tensor, np.ndarray, Sequence[int], None] = None) -> None:
        """Add rows of entries.

        The bookkeeping (which group a row goes to, where in its buffer) runs on the host; the values stay on
        their device. Give ``indices`` and ``groups`` as host data (numpy arrays, lists or CPU tensors): device
        tensors are copied to the host first, which makes the host wait for the device.

        Parameters
        ----------
        values : torch.Tensor
            ``(n, C)`` values to rank by.
        indices : torch.Tensor, numpy.ndarray or sequence of int
            ``(n,)`` dataset indices of the rows (or ``(n, C)``, one per entry), in ``[0, MAX_INDEX]``.
        neurons : torch.Tensor
            ``(n, C)`` neuron index stored with every entry (e.g. the most relevant neuron of the concept).
        groups : torch.Tensor, numpy.ndarray or sequence of int, optional
            ``(n,)`` non-negative int group label of every row; all rows go to group 0 if None.
        """
        if not isinstance(values, torch.Tensor) or values.dim() != 2 or values.shape[1] != self.n_columns:
            shape = tuple(values.shape) if isinstance(values, torch.Tensor) else type(values).__name__
            raise ValueError(f"values must be a tensor of shape (n, {self.n_columns}), got {shape}.")
        host_indices = _host_ints(indices)
        if host_indices.shape not in ((len(values),), tuple(values.shape)):
            raise ValueError(f"indices must have shape ({len(values)},) or {tuple(values.shape)}, got "
                             f"{host_indices.shape}.")
        if host_indices.size and (host_indices.min() < 0 or host_indices.max() > MAX_INDEX):
            raise ValueError(f"indices must lie in [0, {MAX_INDEX}], got values in [{int(host_indices.min())}, "
                             f"{int(host_indices.max())}].")
        if not (isinstance(indices, torch.Tensor) and indices.device == values.device):
            indices = to_device(host_indices, values.device)
        self.add_keys(encode_keys(values, indices), neurons, groups)

    def add_keys(self, keys: torch.Tensor, neurons: torch.Tensor,
                 groups: Union[torch.Tensor, np.ndarray, Sequence[int], None] = None) -> None:
        """Add rows whose values and dataset indices are already packed into keys by :func:`encode_keys`.

        :meth:`add` with one encoding for several accumulators; the arguments are those of :meth:`add`.
        """
        if not isinstance(keys, torch.Tensor) or keys.dim() != 2 or keys.shape[1] != self.n_columns:
            shape = tuple(keys.shape) if isinstance(keys, torch.Tensor) else type(keys).__name__
            raise ValueError(f"keys must be a tensor of shape (n, {self.n_columns}), got {shape}.")
        neurons = torch.as_tensor(neurons, device=keys.device)
        if neurons.shape != keys.shape:
            raise ValueError(f"neurons must have shape {tuple(keys.shape)}, got {tuple(neurons.shape)}.")
        labels = np.zeros(len(keys), np.int64) if groups is None else _host_ints(groups)
        if labels.shape != (len(keys),):
            raise ValueError(f"groups must have shape ({len(keys)},), got {labels.shape}.")
        if labels.size and labels.min() < 0:
            raise ValueError(f"group labels must be non-negative ints, got {int(labels.min())}.")
        if len(keys):
            self._add_keys(keys, neurons, labels)

    def merge(self, other: "TopK") -> "TopK":
        """Add the entries of ``other`` (e.g. of a disjoint range of the dataset) to this accumulator.

        The result equals that of one accumulator that saw the rows of both, in any order.

        Returns
        -------
        TopK
            ``self``.
        """
        if not isinstance(other, TopK) or (other.k, other.n_columns) != (self.k, self.n_columns):
            raise ValueError(f"can only merge a TopK with k={self.k} and n_columns={self.n_columns}, got {other!r}.")
        labels = np.asarray(other.groups, dtype=np.int64)
        if not len(labels):
            return self
        slots = np.asarray([other._slots[int(label)] for label in labels], dtype=np.int64)
        fill = other._fill[slots]
        if int(fill.sum()):  # the filled rows of each slot come first
            source = to_device(other._pool_rows(slots, fill), other._keys.device)
            device = self._device_for(other._keys)
            keys = other._keys.index_select(0, source).to(device)
            neurons = other._neurons.index_select(0, source).to(device)
            self._add_keys(keys, neurons, np.repeat(labels, fill))
        device = self._device_for(other._keys)
        for label, kept in zip(labels.tolist(), fill.tolist()):
            self._counts[self._slot_of(label, device)] += other.count(label) - kept
        return self

    def result(self, group: int = 0) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return the top entries of ``group``: dataset indices, values and neurons, each ``(min(k, count), C)``.

        Rows are sorted by decreasing value (ties: lower dataset index first).
        """
        if int(group) not in self._slots:
            raise KeyError(f"group {group!r} has no entries; groups are {self.groups}.")
        self.compact()
        slot = self._slots[int(group)]
        rows = to_device(self._held[slot, :min(self.k, self._counts[slot])], self._keys.device)
        values, indices = decode_keys(self._keys.index_select(0, rows))
        return indices, values, self._neurons.index_select(0, rows).to(torch.int64)

    def compact(self) -> None:
        """Cut every group back to its top ``k`` entries, sorted."""
        used = len(self._slots)
        fill = self._fill[:used]
        # groups of one row are sorted already; the others go by their fill, one batched topk per fill
        for width in np.unique(fill[fill > 1]).tolist():
            slots = np.flatnonzero(fill == width)
            keep = min(self.k, width)
            rows = to_device(self._held[slots, :width].reshape(-1), self._keys.device)
            shape = (len(slots), width, self.n_columns)
            keys, order = self._keys.index_select(0, rows).view(shape).topk(keep, dim=1)
            neurons = self._neurons.index_select(0, rows).view(shape).gather(1, order)
            target = to_device(self._held[slots, :keep].reshape(-1), self._keys.device)
            self._keys.index_copy_(0, target, keys.reshape(-1, self.n_columns))
            self._neurons.index_copy_(0, target, neurons.reshape(-1, self.n_columns))
            self._fill[slots] = keep

    def rows(self) -> int:
        """Rows of :meth:`to_arrays`: ``min(k, largest row count of a group)``."""
        return min(self.k, max(self._counts, default=0))

    def to_arrays(self) -> Dict[str, np.ndarray]:
        """Export the compacted state as numpy arrays, groups sorted by label.

        Returns
        -------
        dict
            ``labels (G,)`` int64, ``counts (G,)`` int64, and ``index`` (int32, -1 if empty), ``value``
            (float32, NaN if empty), ``neuron`` (int32, -1 if empty), each ``(G, rows(), C)``.
        """
        labels, rows = self.groups, self.rows()
        exported = self.to_tensors(labels, [rows] * len(labels))
        shape = (len(labels), rows, self.n_columns)
        return {
            "labels": np.asarray(labels, dtype=np.int64),
            "counts": np.asarray([self.count(g) for g in labels], dtype=np.int64),
            **{name: tensor.cpu().numpy().reshape(shape) for name, tensor in exported.items()},
        }

    def to_tensors(self, labels: Sequence[int], rows: Sequence[int]) -> Dict[str, torch.Tensor]:
        """Export the top ``rows[i]`` entries of group ``labels[i]``, the groups' rows one after another.

        A group with fewer entries (or none, e.g. a label this accumulator has not seen) is padded with empty
        slots, so the result has ``sum(rows)`` rows: a ragged export without the padding of :meth:`to_arrays`.

        Returns
        -------
        dict
            ``index`` (int32, -1 if empty), ``value`` (float32, NaN if empty) and ``neuron`` (int32, -1 if
            empty), each ``(sum(rows), C)``, on the accumulator's device.
        """
        if len(labels) != len(rows):
            raise ValueError(f"labels and rows must have the same length, got {len(labels)} and {len(rows)}.")
        self.compact()
        device = self.device or torch.device("cpu")
        counts = np.asarray([int(r) for r in rows], dtype=np.int64)
        total = int(counts.sum())
        if not self._slots:
            keys = torch.full((total, self.n_columns), EMPTY_KEY, dtype=torch.int64, device=device)
            neurons = torch.zeros((total, self.n_columns), dtype=torch.int32, device=device)
        else:
            # every output row's pool row, on the host: the group's rank-th row where it has one, else the empty 0
            slots = np.asarray([self._slots.get(int(label), -1) for label in labels], dtype=np.int64)
            slot_of_row = np.repeat(slots, counts)
            rank = _ranks(counts)
            filled = (slot_of_row >= 0) & (rank < np.where(slot_of_row >= 0, self._fill[slot_of_row], 0))
            source = np.zeros(total, dtype=np.int64)
            source[filled] = self._held[slot_of_row[filled], rank[filled]]
            source_t = to_device(source, self._keys.device)
            keys = self._keys.index_select(0, source_t).to(device)
            neurons = self._neurons.index_select(0, source_t).to(device)
        values, indices = _decode32(keys)
        return {"index": indices, "value": values, "neuron": torch.where(indices < 0, -1, neurons)}

    @classmethod
    def from_arrays(cls, arrays: Dict[str, np.ndarray], k: Optional[int] = None, slack: int = 0,
                    device: Device = None) -> "TopK":
        """Rebuild an accumulator from :meth:`to_arrays` output (e.g. a checkpoint); ``k`` defaults to its rows.

        With an ``offsets`` entry (``G + 1`` ints), ``index``, ``value`` and ``neuron`` are ragged ``(N, C)``
        arrays (as from :meth:`to_tensors`): the rows of group ``g`` are ``offsets[g]:offsets[g + 1]``.
        """
        index, value, neuron = (np.asarray(arrays[name]) for name in ("index", "value", "neuron"))
        labels, counts = np.asarray(arrays["labels"]), np.asarray(arrays["counts"])
        if "offsets" in arrays:
            offsets = np.asarray(arrays["offsets"], dtype=np.int64)
            if index.ndim != 2 or len(offsets) != len(labels) + 1 or offsets[-1] != len(index):
                raise ValueError(f"ragged arrays need index (N, C) and offsets of length {len(labels) + 1} ending "
                                 f"at N; got index {index.shape} and offsets {offsets.tolist()}.")
            blocks = [slice(int(a), int(b)) for a, b in zip(offsets[:-1], offsets[1:])]
        else:
            if index.ndim != 3:
                raise ValueError(f"index, value and neuron must have one shape (G, rows, C), got {index.shape}.")
            blocks = [slice(g * index.shape[1], (g + 1) * index.shape[1]) for g in range(index.shape[0])]
            index, value, neuron = (a.reshape(-1, a.shape[-1]) for a in (index, value, neuron))
        if index.shape != value.shape or index.shape != neuron.shape:
            raise ValueError(f"index, value and neuron must have one shape, got {index.shape}, {value.shape}, "
                             f"{neuron.shape}.")
        longest = max((b.stop - b.start for b in blocks), default=0)
        k = longest if k is None else k
        if longest > k:
            raise ValueError(f"the arrays hold {longest} rows per group, more than k={k}.")
        accumulator = cls(k, index.shape[-1], slack=slack, device=device)
        row_label = np.repeat(labels.astype(np.int64), [b.stop - b.start for b in blocks])
        filled = index[:, 0] >= 0 if len(index) else np.zeros(0, bool)  # whole rows are filled or empty
        if filled.any():
            keys = encode_keys(torch.as_tensor(value[filled]), torch.as_tensor(index[filled].astype(np.int64)))
            target = accumulator._device_for(keys)
            accumulator._add_keys(keys.to(target), torch.as_tensor(neuron[filled]).to(target), row_label[filled])
        for label, count in zip(labels.tolist(), counts.tolist()):
            accumulator._slot_of(int(label), torch.device("cpu") if accumulator.device is None else accumulator.device)
            accumulator._counts[accumulator._slots[int(label)]] = int(count)
        return accumulator

    def __repr__(self) -> str:
        return f"TopK(k={self.k}, n_columns={self.n_columns}, slack={self.slack}, groups={len(self._slots)})"

    # ------------------------------------------------------------------------------------------------------
    # internals

    def _device_for(self, tensor: torch.Tensor) -> torch.device:
        if self.device is None:
            self.device = tensor.device
        return self.device

    def _slot_of(self, label: int, device: torch.device) -> int:
        """Slot of ``label``, allocated on first use (with no pool rows yet)."""
        slot = self._slots.get(label)
        if slot is not None:
            return slot
        self._device_for(torch.empty(0, device=device))
        slot = len(self._slots)
        if slot == len(self._fill):  # the host tables double
            grown = max(4, 2 * slot)
            self._held = np.concatenate([self._held, np.zeros((grown - slot, self.capacity), np.int64)])
            self._n_held = np.concatenate([self._n_held, np.zeros(grown - slot, np.int64)])
            self._fill = np.concatenate([self._fill, np.zeros(grown - slot, np.int64)])
        self._slots[label] = slot
        self._counts.append(0)
        return slot

    def _hold(self, slots: np.ndarray, rows: np.ndarray) -> None:
        """Give every slot of ``slots`` pool rows until it holds ``rows`` of them (distinct slots)."""
        missing = np.maximum(rows - self._n_held[slots], 0)
        total = int(missing.sum())
        if not total:
            return
        if self._used + total > len(self._keys):
            # doubling, but never beyond what the slots the host tables have room for can hold (which double too)
            limit = len(self._fill) * self.capacity + 1
            self._grow(max(self._used + total, min(max(2 * len(self._keys), 16), limit)))
        column = np.repeat(self._n_held[slots], missing) + _ranks(missing)
        self._held[np.repeat(slots, missing), column] = self._used + np.arange(total)
        self._used += total
        self._n_held[slots] += missing

    def _grow(self, n_rows: int) -> None:
        """Enlarge the pool to ``n_rows`` rows, keeping the rows handed out (the others are never read)."""
        device = self._device_for(torch.empty(0))
        keys = torch.empty((n_rows, self.n_columns), dtype=torch.int64, device=device)
        neurons = torch.empty((n_rows, self.n_columns), dtype=torch.int32, device=device)
        if len(self._keys):
            keys[:self._used], neurons[:self._used] = self._keys[:self._used], self._neurons[:self._used]
        else:
            keys[0], neurons[0] = EMPTY_KEY, 0
        self._keys, self._neurons = keys, neurons

    def _pool_rows(self, slots: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Return the first ``rows[i]`` pool rows of every slot ``slots[i]``, one slot after another."""
        return self._held[np.repeat(slots, rows), _ranks(rows)]

    def _add_keys(self, keys: torch.Tensor, neurons: torch.Tensor, labels: np.ndarray) -> None:
        """Write rows of keys into their groups' pool rows; cut back the groups that overflow.

        Where each row goes is computed on the host from ``labels`` and the host copy of every group's fill:
        the rows of groups that fit are written with one ``index_copy_``, the groups that overflow are cut back
        together (:meth:`_cut_back`); nothing is read back from the device.
        """
        device = self._device_for(keys)
        keys, neurons = keys.to(device), neurons.to(device, torch.int32)
        unique, group, per_group = np.unique(labels, return_inverse=True, return_counts=True)
        group = group.reshape(-1)
        slots = np.asarray([self._slot_of(int(u), device) for u in unique.tolist()], dtype=np.int64)
        for slot, m in zip(slots.tolist(), per_group.tolist()):
            self._counts[slot] += m
        order = np.argsort(group, kind="stable")
        rank = np.empty(len(group), dtype=np.int64)  # arrival order of every row inside its group
        rank[order] = _ranks(per_group)
        fill = self._fill[slots]
        over = fill + per_group > self.capacity
        # an overflowing group is cut back to k rows; one that fits needs rows for all it holds
        self._hold(slots, np.where(over, self.k, fill + per_group))
        # both steps run for every batch, also with no rows (or no groups) to handle: the same operator calls
        # for every batch, however many groups it touches and whether they overflow
        direct = np.flatnonzero(~over[group])
        g = group[direct]
        target = self._held[slots[g], fill[g] + rank[direct]]
        _copy_rows(self._keys, target, keys, direct)
        _copy_rows(self._neurons, target, neurons, direct)
        self._fill[slots[~over]] += per_group[~over]
        self._cut_back(keys, neurons, np.flatnonzero(over[group]), group=group, rank=rank, slots=slots, fill=fill,
                       per_group=per_group, over=over)

    def _cut_back(self, keys, neurons, rows, *, group, rank, slots, fill, per_group, over) -> None:
        """Merge the rows of overflowing groups with their new rows and keep the top ``k`` of each.

        One batched ``topk`` over the overflowing groups; their number and the candidates' positions are known
        on the host.
        """
        device = keys.device
        over_groups = np.flatnonzero(over)
        local = np.full(len(over), -1, dtype=np.int64)
        local[over_groups] = np.arange(len(over_groups))
        width = int(max((fill[over_groups] + per_group[over_groups]).max(initial=0), self.k))
        # the candidates: every overflowing group's filled rows, then its new rows, then the empty row 0
        held = np.zeros((len(over_groups), width), dtype=np.int64)
        held[:, :self.capacity] = self._held[slots[over_groups]][:, :width]
        held[np.arange(width)[None, :] >= fill[over_groups][:, None]] = 0
        source = to_device(held.reshape(-1), device)
        cand_keys = self._keys.index_select(0, source)
        cand_neurons = self._neurons.index_select(0, source)
        g = group[rows]
        target = local[g] * width + fill[g] + rank[rows]
        _copy_rows(cand_keys, target, keys, rows)
        _copy_rows(cand_neurons, target, neurons, rows)
        shape = (len(over_groups), width, self.n_columns)
        top, chosen = cand_keys.view(shape).topk(self.k, dim=1)
        kept_neurons = cand_neurons.view(shape).gather(1, chosen)
        kept = to_device(self._held[slots[over_groups], :self.k].reshape(-1), device)
        self._keys.index_copy_(0, kept, top.reshape(-1, self.n_columns))
        self._neurons.index_copy_(0, kept, kept_neurons.reshape(-1, self.n_columns))
        self._fill[slots[over_groups]] = self.k


def _ranks(counts: np.ndarray) -> np.ndarray:
    """Position of every item inside its run, for runs of ``counts[i]`` items one after another: 0, 1, .., 0, 1, .."""
    counts = np.asarray(counts, dtype=np.int64)
    return np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)


def _host_ints(values) -> np.ndarray:
    """``values`` (a tensor, array or sequence of ints) as a numpy array; a device tensor is copied to the host."""
    if isinstance(values, torch.Tensor):
        return values.detach().cpu().numpy()
    return np.asarray(values)


def _copy_rows(buffer: torch.Tensor, target: np.ndarray, rows: torch.Tensor, chosen: np.ndarray) -> None:
    """Write ``rows[chosen]`` to the rows ``target`` of ``buffer`` viewed as ``(-1, C)`` (none if none chosen)."""
    device = buffer.device
    rows = rows.index_select(0, to_device(chosen, device))
    buffer.view(-1, buffer.shape[-1]).index_copy_(0, to_device(target, device), rows)
