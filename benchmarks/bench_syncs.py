"""Count, per batch of FeatureVisualization.run(), the operator calls that would make a GPU wait for the host.

Usage::

    python benchmarks/bench_syncs.py [--before /work/main] [--batches 24] [--warmup 16] [--top-k 8]
                                     [--classes 10,100] [--threads 1]

A small CNN (4 conv + 2 linear layers, 3x32x32 inputs, all six layers analyzed, random weights) runs
``FeatureVisualization.run`` on the CPU over random images with 10 and with 100 classes, batch 64. Every call
of ``FeatureVisualization._analyze_batch`` (the per-batch path: the attribution and the ranking of both modes)
is one batch; the first ``--warmup`` batches are skipped, so that every class has filled its top-k buffers and
the steady state (buffers full, cut back when they overflow) is measured. Two counts per batch:

(a) sync-prone operator calls, seen by ``torch.profiler``: operators whose CUDA implementation copies a value
    to the host before it returns (see ``SYNC_OPS``). Only the outermost of nested ones counts (``item`` calls
    ``_local_scalar_dense``; one read). The profiler cannot tell a copy to the CPU from another copy on a CPU
    run (``aten::_to_copy``/``aten::copy_`` have no device in the trace); those are caught by (b).
(b) host reads, seen by wrapping ``torch.Tensor.item``, ``tolist``, ``__bool__``, ``__int__``, ``__float__``,
    ``__index__``, ``numpy``, ``__array__`` and ``cpu`` with counters while a batch runs. Reads of the
    DataLoader's own tensors (dataset indices, the batch before it is moved to the device) are host data and
    do not count; ``Tensor.to(device)`` of those returns a copy, as it would on a GPU, so that reads after the
    move count. Limit: ``tensor.to("cpu")`` is not counted, as on a CPU run it cannot be told from a move to
    the tensor's own device; the code measured copies to the host with ``cpu()`` (counted) where it means to.

and the number of operator calls per batch, which should not depend on the number of classes: the calls the
code makes (``aten::`` calls not nested in another one), and all of them (nested ones included; an
operator's own nested calls may differ with the sizes it gets, e.g. none for an empty tensor).

With ``--before PATH`` the same measurement runs with ``PYTHONPATH=PATH`` (e.g. the main checkout) for a
"before" column. Each measurement runs in its own
process; the table shows the largest and the mean count of the measured batches (sync ops, host reads),
or the smallest, largest and mean (operator calls).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent

#: Operators whose CUDA implementation waits for the device and copies a result to the host.
SYNC_OPS = {
    "aten::item": "returns a Python scalar: copies the value to the host",
    "aten::_local_scalar_dense": "what item(), int(t), float(t) and bool(t) call: a scalar copy to the host",
    "aten::is_nonzero": "bool(t), `if t:`: reads the value on the host",
    "aten::nonzero": "the output size depends on the data: the count is copied to the host (also what "
                     "boolean-mask indexing and index_put_ with a mask call)",
    "aten::nonzero_numpy": "nonzero(as_tuple=True): as aten::nonzero",
    "aten::argwhere": "as aten::nonzero",
    "aten::masked_select": "output size depends on the mask",
    "aten::_unique": "output size depends on the data",
    "aten::_unique2": "output size depends on the data",
    "aten::unique_dim": "output size depends on the data",
    "aten::unique_consecutive": "output size depends on the data",
    "aten::unique_dim_consecutive": "output size depends on the data",
    "aten::repeat_interleave": "without output_size, the output size (the sum of repeats) is read on the host",
    "aten::bincount": "the output size (the largest value) is read on the host",
    "aten::equal": "returns a Python bool",
    "aten::allclose": "returns a Python bool",
    "aten::tolist": "copies the tensor into Python objects",
}

#: Tensor methods that read a tensor's values on the host.
HOST_READS = ("item", "tolist", "__bool__", "__int__", "__float__", "__index__", "numpy", "__array__", "cpu")


class RandomImages(torch.utils.data.Dataset):
    """``n`` random images and targets, generated from their index."""

    def __init__(self, n, n_classes):
        self.n, self.n_classes = n, n_classes

    def __len__(self):
        return self.n

    def __getitem__(self, index):
        generator = torch.Generator().manual_seed(index)
        return torch.randn((3, 32, 32), generator=generator), int(torch.randint(self.n_classes, (1,),
                                                                                generator=generator))


def small_cnn(n_classes):
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64 * 8 * 8, 256), nn.ReLU(), nn.Linear(256, n_classes),
    ).eval()


class HostReads:
    """Counts host reads of tensors that are not the DataLoader's while a batch runs (see the module notes)."""

    def __init__(self):
        self.count, self.active, self.host, self.where = 0, False, set(), {}
        self.originals = {name: getattr(torch.Tensor, name) for name in HOST_READS + ("to",)}

    def mark_host(self, *tensors):
        self.host = {t.untyped_storage().data_ptr() for t in tensors if isinstance(t, torch.Tensor)}

    def _is_device(self, tensor):
        return tensor.device.type != "meta" and tensor.untyped_storage().data_ptr() not in self.host

    def install(self):
        for name in HOST_READS:
            setattr(torch.Tensor, name, self._counting(name, self.originals[name]))
        original_to = self.originals["to"]

        def to(tensor, *args, **kwargs):
            result = original_to(tensor, *args, **kwargs)
            if not self.active:
                return result
            device = kwargs.get("device", next((a for a in args if isinstance(a, (str, torch.device))), None))
            if device is not None and not self._is_device(tensor) and result is tensor:
                result = result.clone()  # host -> device is a copy on a GPU
            return result

        torch.Tensor.to = to

    def _counting(self, name, original):
        def counted(tensor, *args, **kwargs):
            if self.active and self._is_device(tensor):
                self._note(name)
            return original(tensor, *args, **kwargs)
        return counted

    def _note(self, name):
        self.count += 1
        self.active = False  # the read's own calls (e.g. __index__ inside tolist) are not counted again
        try:
            import traceback
            frame = next(f for f in reversed(traceback.extract_stack())
                         if Path(f.filename).name != Path(__file__).name and "/torch/" not in f.filename)
            key = f"{name} at {Path(frame.filename).name}:{frame.lineno}"
            self.where[key] = self.where.get(key, 0) + 1
        finally:
            self.active = True


def child(args):
    """One measurement in this process: print a JSON line of per-batch counts."""
    from zennit.composites import EpsilonPlusFlat

    from crp.attribution import CondAttribution
    from crp.concepts import ChannelConcept
    from crp.visualization import FeatureVisualization

    torch.set_num_threads(args.threads)
    model = small_cnn(args.n_classes)
    layers = [name for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    batches = args.warmup + args.batches
    dataset = RandomImages(64 * batches, args.n_classes)
    reads = HostReads()
    per_batch_reads = []
    original = FeatureVisualization._analyze_batch

    def analyze_batch(self, analysis, indices, data, *rest, **kwargs):
        reads.mark_host(indices, data)
        before = reads.count
        reads.active = True
        try:
            with torch.profiler.record_function("bench_syncs_batch"):
                return original(self, analysis, indices, data, *rest, **kwargs)
        finally:
            reads.active = False
            per_batch_reads.append(reads.count - before)

    FeatureVisualization._analyze_batch = analyze_batch
    reads.install()
    with tempfile.TemporaryDirectory() as path:
        fv = FeatureVisualization(CondAttribution(model), dataset, {name: ChannelConcept() for name in layers},
                                  path=Path(path) / "fv", top_k=args.top_k)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profiler:
            fv.run(EpsilonPlusFlat(), batch_size=64, checkpoint=10 ** 6, verbose=False)
    syncs, totals, top, names = _per_batch_ops(profiler.events())
    measured = slice(args.warmup, None)
    print(json.dumps({"classes": args.n_classes, "syncs": syncs[measured], "ops": totals[measured],
                      "top": top[measured], "reads": per_batch_reads[measured], "sync_names": names,
                      "read_sites": reads.where}))


def _per_batch_ops(events):
    """Per batch (``bench_syncs_batch`` range): outermost sync-prone operator calls and all operator calls."""
    ranges = sorted((e.time_range.start, e.time_range.end) for e in events if e.name == "bench_syncs_batch")
    syncs, totals, top, names = [0] * len(ranges), [0] * len(ranges), [0] * len(ranges), {}
    starts = [start for start, _ in ranges]
    import bisect
    for event in events:
        if not event.name.startswith("aten::"):
            continue
        i = bisect.bisect_right(starts, event.time_range.start) - 1
        if i < 0 or event.time_range.start > ranges[i][1]:
            continue
        totals[i] += 1
        top[i] += not _inside(event, lambda parent: parent.name.startswith("aten::"))
        if event.name in SYNC_OPS and not _inside(event, lambda parent: parent.name in SYNC_OPS):
            syncs[i] += 1
            names[event.name] = names.get(event.name, 0) + 1
    return syncs, totals, top, names


def _inside(event, test):
    """Whether an enclosing operator call of ``event`` passes ``test``."""
    parent = event.cpu_parent
    while parent is not None:
        if test(parent):
            return True
        parent = parent.cpu_parent
    return False


def _cell(values):
    return f"{max(values)} / {sum(values) / len(values):.1f}"


def _spread(values):
    return f"{min(values)}..{max(values)} ({sum(values) / len(values):.0f})"


def measure(pythonpath, n_classes, args):
    env = {**os.environ, "PYTHONPATH": str(pythonpath)}
    command = [sys.executable, __file__, "--child", "--n-classes", str(n_classes), "--batches", str(args.batches),
               "--warmup", str(args.warmup), "--top-k", str(args.top_k), "--threads", str(args.threads)]
    output = subprocess.run(command, env=env, capture_output=True, text=True, check=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def main(args):
    columns = ([("before", args.before)] if args.before else []) + [("after", ROOT)]
    classes = [int(c) for c in args.classes.split(",")]
    results = {(name, c): measure(path, c, args) for name, path in columns for c in classes}
    print(f"FeatureVisualization.run() on the CPU: small CNN, 6 analyzed layers, batch 64, top_k {args.top_k}; "
          f"per batch over {args.batches} batches after {args.warmup} warm-up batches (max / mean)")
    print(f"{'':<8}{'classes':>8}{'sync ops':>12}{'host reads':>12}{'operator calls':>22}{'incl. nested':>22}")
    for (name, c), r in results.items():
        print(f"{name:<8}{c:>8}{_cell(r['syncs']):>12}{_cell(r['reads']):>12}{_spread(r['top']):>22}"
              f"{_spread(r['ops']):>22}")
    for (name, c), r in results.items():
        print(f"{name} {c} classes, all batches: sync ops {r['sync_names']}; host reads {r['read_sites']}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", type=Path, help="PYTHONPATH of the code to compare with (e.g. /work/main)")
    parser.add_argument("--batches", type=int, default=24, help="measured batches")
    parser.add_argument("--warmup", type=int, default=16, help="batches skipped first")
    parser.add_argument("--top-k", type=int, default=8)
    parser.add_argument("--classes", default="10,100")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--n-classes", type=int, default=10, help=argparse.SUPPRESS)
    ARGS = parser.parse_args()
    child(ARGS) if ARGS.child else main(ARGS)
