"""FeatureVisualization.run on 2 processes x 1 thread against 1 process x 1 thread, on the same data.

Usage::

    python benchmarks/bench_distributed.py [--samples 1536] [--batch-size 16] [--checkpoint 8] [--repeats 3]

Each repeat runs, one after the other, a single process (``torch.set_num_threads(1)``) and a job of 2 processes
started as torchrun does (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``; gloo, one thread each) on
a seeded CNN (3 conv layers and a linear one, 10 classes) over seeded 3 x 64 x 64 images, all four layers in the
layer map. The time is that of ``run()`` in process 0 (start-up, imports and making the process group excluded:
the processes meet at a barrier first; the distributed run includes the comparison of the settings and every
checkpoint's gather and merge). The single
process saves every ``2 * checkpoint`` batches, so both write the same checkpoints, and the stores are compared
file by file. Prints a table with the best of ``--repeats``: samples/s of each and their ratio.
"""
import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

JOB_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64 * 8 * 8, 64), nn.ReLU(), nn.Linear(64, 10),
    ).eval()


class Images(torch.utils.data.Dataset):
    """Seeded images and targets, the same in every process."""

    def __init__(self, n: int) -> None:
        generator = torch.Generator().manual_seed(1)
        self.images = torch.rand(n, 3, 64, 64, generator=generator)
        self.targets = torch.randint(0, 10, (n,), generator=generator).tolist()

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        return self.images[index], self.targets[index]


def worker(settings: dict) -> None:
    """One process of a measurement: run the FeatureVisualization and print its time."""
    torch.set_num_threads(1)
    from zennit.composites import EpsilonPlusFlat

    from crp.attribution import CondAttribution
    from crp.concepts import ChannelConcept
    from crp.visualization import FeatureVisualization

    layers = ["0", "3", "6", "10"]
    fv = FeatureVisualization(CondAttribution(make_model()), Images(settings["samples"]),
                              {layer: ChannelConcept() for layer in layers}, path=settings["path"], top_k=8)
    distributed = "WORLD_SIZE" in os.environ
    if distributed:  # wait for the slowest process's start-up and imports before the clock starts
        torch.distributed.init_process_group("gloo")
        torch.distributed.barrier()
    start = time.perf_counter()
    fv.run(EpsilonPlusFlat(), batch_size=settings["batch_size"], checkpoint=settings["checkpoint"], verbose=False)
    print("SECONDS " + json.dumps(time.perf_counter() - start), flush=True)
    if distributed:
        torch.distributed.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(world_size: int, settings: dict) -> float:
    """Run ``world_size`` processes (1: no process group) and return the seconds of ``run()`` in process 0."""
    base = {key: value for key, value in os.environ.items() if key not in JOB_ENV}
    base.update(OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(Path(__file__).resolve().parents[1]),
                                                                 base.get("PYTHONPATH", "")]))
    port, processes = str(free_port()), []
    for rank in range(world_size):
        env = dict(base) if world_size == 1 else dict(base, RANK=str(rank), WORLD_SIZE=str(world_size),
                                                         LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                                                         MASTER_PORT=port)
        processes.append(subprocess.Popen([sys.executable, __file__, "--worker", json.dumps(settings)], env=env,
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outputs = [p.communicate() for p in processes]
    for p, (out, err) in zip(processes, outputs):
        if p.returncode != 0:
            raise RuntimeError(f"a process failed (exit code {p.returncode}):\n{out}\n{err}")
    lines = [line for line in outputs[0][0].splitlines() if line.startswith("SECONDS ")]
    return float(json.loads(lines[-1][len("SECONDS "):]))


def store_bytes(path: Path) -> dict:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=1536)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--checkpoint", type=int, default=8, help="batches per process between checkpoints")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(json.loads(args.worker))
        return
    best = {1: float("inf"), 2: float("inf")}
    identical = True
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            paths = {}
            for world_size in (1, 2):
                paths[world_size] = Path(tmp) / f"{repeat}-{world_size}"
                settings = {"samples": args.samples, "batch_size": args.batch_size, "path": str(paths[world_size]),
                            "checkpoint": args.checkpoint * (2 if world_size == 1 else 1)}
                best[world_size] = min(best[world_size], launch(world_size, settings))
            identical &= store_bytes(paths[1]) == store_bytes(paths[2])
    rates = {n: args.samples / seconds for n, seconds in best.items()}
    print(f"FeatureVisualization.run, {args.samples} images 3x64x64, 4-layer CNN, batch {args.batch_size}, "
          f"best of {args.repeats}")
    print(f"{'processes x threads':<22}{'seconds':>10}{'samples/s':>12}{'ratio':>8}")
    for n in (1, 2):
        print(f"{f'{n} x 1':<22}{best[n]:>10.2f}{rates[n]:>12.1f}{rates[n] / rates[1]:>8.2f}")
    print(f"stores identical (every file, byte for byte): {'yes' if identical else 'NO'}")
    if not identical:
        sys.exit(1)


if __name__ == "__main__":
    main()
