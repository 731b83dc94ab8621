"""Time CondAttribution.generate() per concept against a plain LRP pass and, optionally, zennit-crp 0.6.

Usage::

    python benchmarks/bench_generate.py [--reference-path DIR] [--repeats 3] [--device cpu]

The workload is the one of the core issue: all 256 channels of VGG11-BN's ``features.11`` (random weights,
seeded), one 64x64 input, ``batch_size=32``, EpsilonPlusFlat with SequentialMergeBatchNorm. Each measurement
runs in its own process (both packages are called ``crp``); the processes alternate and the best of
``--repeats`` runs is kept, since the machines are noisy.
"""
import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _workload(device: str):
    import torch
    from torchvision.models import vgg11_bn
    from zennit.canonizers import SequentialMergeBatchNorm
    from zennit.composites import EpsilonPlusFlat

    torch.manual_seed(0)
    model = vgg11_bn(weights=None).eval().to(device)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):  # non-trivial statistics, as after training
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    sample = torch.randn(1, 3, 64, 64, device=device)
    composite = EpsilonPlusFlat(canonizers=[SequentialMergeBatchNorm()])
    return model, sample, composite


def measure(kind: str, device: str) -> float:
    """Seconds for one run of ``kind`` ('generate' or 'lrp') with whichever ``crp`` is importable."""
    import numpy as np
    import torch

    np.int = int  # zennit-crp 0.6 needs it
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    model, sample, composite = _workload(device)
    target = int(model(sample).argmax())
    if kind == "lrp":
        def run():
            x = sample.clone().requires_grad_()
            with composite.context(model) as modified:
                out = modified(x)
                torch.autograd.backward(out, torch.eye(out.shape[1], device=device)[[target]] * out)
    else:
        from crp.attribution import CondAttribution

        attribution = CondAttribution(model)
        conditions = [{"features.11": [c], "y": [target]} for c in range(256)]

        def run():
            for _ in attribution.generate(sample.clone().requires_grad_(), conditions, composite,
                                          batch_size=32, verbose=False):
                pass
    run()  # warm-up
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    run()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start


def _side(kind: str, pythonpath: str, device: str) -> float:
    env = dict(os.environ, PYTHONPATH=pythonpath)
    out = subprocess.run([sys.executable, __file__, "--measure", kind, "--device", device], env=env, check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])["seconds"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference-path", help="folder holding zennit-crp 0.6's crp package")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    runs = {"LRP pass (1 sample)": ("lrp", str(ROOT)), "crp generate": ("generate", str(ROOT))}
    if args.reference_path:
        runs["zennit-crp 0.6 generate"] = ("generate", args.reference_path)
    best = {name: float("inf") for name in runs}
    for _ in range(args.repeats):
        for name, (kind, path) in runs.items():
            best[name] = min(best[name], _side(kind, path, args.device))
    lrp = best["LRP pass (1 sample)"]
    print(f"VGG11-BN features.11, 256 concepts, 64x64, batch_size=32, device={args.device}, "
          f"best of {args.repeats}")
    print(f"{'run':<26}{'total s':>10}{'ms/concept':>12}{'x LRP pass':>12}{'speed-up':>10}")
    for name, seconds in best.items():
        per_concept = seconds / 256 if "generate" in name else seconds
        speedup = best.get("zennit-crp 0.6 generate", float("nan")) / seconds if "generate" in name else float("nan")
        print(f"{name:<26}{seconds:>10.3f}{per_concept * 1e3:>12.2f}{per_concept / lrp:>12.3f}{speedup:>10.2f}")


if __name__ == "__main__":
    if "--measure" in sys.argv:
        measure_parser = argparse.ArgumentParser()
        measure_parser.add_argument("--measure")
        measure_parser.add_argument("--device", default="cpu")
        measure_args = measure_parser.parse_args()
        print(json.dumps({"seconds": measure(measure_args.measure, measure_args.device)}))
    else:
        main()
