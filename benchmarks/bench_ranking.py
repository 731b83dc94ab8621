"""Time the ranking side of FeatureVisualization alone: scores, top-k updates and the export of a checkpoint.

Usage::

    python benchmarks/bench_ranking.py [--sequences 1000] [--layers 12] [--neurons 3072] [--tokens 32]
                                       [--targets 50257] [--repeats 2] [--before /path/to/other/checkout]

The outputs are shaped like those of the transformers issue's FeatureVisualization workload (GPT-2-small: 12 MLP
layers of 3,072 neurons, sequences of 16 to 32 tokens padded to 32, batches of 32, a random next token out of
50,257 as every sequence's target, so about one per-target ranking per sequence), but random: no model runs.
Every batch goes through ``TokenConcept.scores`` (padded tokens marked ``-inf``, as
``TextFeatureVisualization.outputs_to_rank`` marks them) and the top-k rankings of both modes, overall and per
target (``Rankings.update``), and the end exports the rankings as a checkpoint does (``Rankings.to_arrays``).
It isolates what FeatureVisualization adds to the attribution pass there.

With ``--before PATH`` the same measurement runs with ``PYTHONPATH=PATH`` (e.g. a checkout of an earlier
commit) in its own process, and the table shows both side by side, with their ratio. Best of ``--repeats``.
"""
import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def measure(args) -> dict:
    import numpy as np
    import torch

    from crp._features.ranking import ModeSettings, Rankings
    from crp.transformers import TokenConcept

    torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(1)
    lengths = torch.randint(args.tokens // 2, args.tokens + 1, (args.sequences,), generator=generator)
    targets = torch.randint(0, args.targets, (args.sequences,), generator=generator).numpy()
    layers = {f"neurons.{i}": TokenConcept() for i in range(args.layers)}
    # four distinct batches of outputs, reused in turn (generating 1,000 sequences' worth would dominate)
    outputs = []
    for seed in range(4):
        base = torch.randn(32, args.tokens, args.neurons, generator=torch.Generator().manual_seed(seed))
        outputs.append({name: base * (i + 1) for i, name in enumerate(layers)})
    best = {"updates": float("inf"), "export": float("inf")}
    for _ in range(args.repeats):
        rankings = Rankings(layers, {mode: ModeSettings() for mode in ("relevance", "activation")})
        start = time.perf_counter()
        for batch, first in enumerate(range(0, args.sequences, 32)):
            n = min(32, args.sequences - first)
            padded = (torch.arange(args.tokens)[None] >= lengths[first:first + n, None])[..., None]
            indices, batch_targets = np.arange(first, first + n), targets[first:first + n]
            for mode, sign in (("relevance", 1), ("activation", -1)):
                marked = {name: (sign * output[:n]).masked_fill(padded, float("-inf"))
                          for name, output in outputs[batch % 4].items()}
                rankings.update(mode, marked, indices, batch_targets)
        middle = time.perf_counter()
        rankings.to_arrays()
        end = time.perf_counter()
        best["updates"] = min(best["updates"], middle - start)
        best["export"] = min(best["export"], end - middle)
    best["total"] = best["updates"] + best["export"]
    return best


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sequences", type=int, default=1000)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--neurons", type=int, default=3072)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--targets", type=int, default=50257, help="vocabulary the random targets come from")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=max(1, os.cpu_count() or 1))
    parser.add_argument("--before", help="a checkout to measure too, side by side")
    parser.add_argument("--json", action="store_true", help=argparse.SUPPRESS)  # one measurement, as JSON
    args = parser.parse_args(argv)
    if args.json:
        print(json.dumps(measure(args)))
        return {}
    forwarded = [f"--{name}={getattr(args, name)}" for name in
                 ("sequences", "layers", "neurons", "tokens", "targets", "repeats", "threads")]
    runs = {"now": str(ROOT)}
    if args.before:
        runs = {"before": str(Path(args.before).resolve()), **runs}
    results = {}
    for name, path in runs.items():
        done = subprocess.run([sys.executable, __file__, *forwarded, "--json"], capture_output=True, text=True,
                              env={**os.environ, "PYTHONPATH": path}, check=True)
        results[name] = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"ranking of {args.sequences} sequences: {args.layers} layers x {args.neurons} neurons, {args.tokens} tokens "
          f"(padded), targets out of {args.targets}, batch 32, {args.threads} threads, best of {args.repeats}")
    print(f"{'code':<8} {'updates s':>10} {'export s':>9} {'total s':>8} {'ratio':>6}")
    reference = results.get("before", results["now"])["total"]
    for name, result in results.items():
        print(f"{name:<8} {result['updates']:>10.2f} {result['export']:>9.2f} {result['total']:>8.2f} "
              f"{result['total'] / reference:>6.2f}")
    return results


if __name__ == "__main__":
    main()
