"""Cost of verifying every read of the result store (checksums once per file and process).

Usage::

    python benchmarks/bench_store_reads.py [--layers 4] [--channels 512] [--targets 200] [--k 40] [--repeats 5]

Writes a synthetic store of that size, then times, side by side in one process: reading one target's
statistics of one layer without verification (memory-mapped), the first verified read (hashes the layer's
files), and later verified reads (a ``stat`` per file). Prints a table; best of ``--repeats``.
"""
import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from crp._features import store as store_module
from crp._features.store import MODES, RECORD, ResultStore, stats_offsets


def synthetic_store(path: Path, *, layers: int, channels: int, targets: int, k: int) -> ResultStore:
    rng = np.random.default_rng(0)
    counts = {mode: [targets * k] + [k] * targets for mode in MODES}
    rows = int(stats_offsets(counts, k)[-1])

    def records(shape):
        array = np.empty(shape, RECORD)
        array["index"] = rng.integers(0, 2 ** 30, shape)
        array["value"] = rng.standard_normal(shape)
        array["neuron"] = rng.integers(0, 100, shape)
        return array

    arrays = {f"layer{i}": {"max": records((2, k, channels)), "stats": records((2, rows, channels))}
              for i in range(layers)}
    store = ResultStore(path)
    store.save(arrays, list(range(targets)), counts, {"k": k}, next_index=targets * k, complete=True)
    return store


def best(function, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--channels", type=int, default=512)
    parser.add_argument("--targets", type=int, default=200)
    parser.add_argument("--k", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        store = synthetic_store(Path(tmp), layers=args.layers, channels=args.channels, targets=args.targets, k=args.k)
        size = sum(p.stat().st_size for p in Path(tmp).rglob("*.npy")) / 2 ** 20

        def unverified():
            store.layer_arrays("layer0", verify=False)["stats"][0, :args.k, 3].copy()

        def first_verified():
            store_module._VERIFIED.clear()
            store.statistics("layer0", "relevance", 7)

        def later_verified():
            store.statistics("layer0", "relevance", 7)

        times = {"unverified": best(unverified, args.repeats), "first verified": best(first_verified, args.repeats)}
        store.statistics("layer0", "relevance", 7)
        times["later verified"] = best(later_verified, args.repeats)
    layer_mib = size / args.layers
    print(f"store: {args.layers} layers x {args.channels} concepts, {args.targets} targets, k={args.k}: "
          f"{size:.0f} MiB ({layer_mib:.0f} MiB per layer); best of {args.repeats}")
    print("| read of one target's statistics | ms | ratio to unverified |\n| --- | --- | --- |")
    for name, seconds in times.items():
        print(f"| {name} | {1000 * seconds:.2f} | {seconds / times['unverified']:.1f}x |")


if __name__ == "__main__":
    main()
