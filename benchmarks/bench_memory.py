"""Check the memory estimate of a batch against the measured growth of the peak resident memory (CPU).

For each batch size, a fresh process builds the model, runs one ``CondAttribution`` call (heatmap of class 0
with the composite) and reports how much its peak resident memory grew; the slope between two batch sizes is
the measured cost of one more sample, which ``crp._features.memory.estimate_memory`` estimates from tensor
sizes. Prints a table.

    python benchmarks/bench_memory.py                       # VGG16, 224 x 224, batches 4 and 8
    python benchmarks/bench_memory.py --model vgg11_bn --size 64 --batches 8 16
"""
import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = """
import json, resource, sys
import torch
sys.path.insert(0, {root!r})
torch.set_num_threads(1)
import torchvision
from zennit.composites import EpsilonPlusFlat
from crp.attribution import CondAttribution
from crp._features.memory import estimate_memory
model = getattr(torchvision.models, {model!r})().eval()
attribution = CondAttribution(model)
x = torch.randn({batch}, 3, {size}, {size})
if {estimate}:
    e = estimate_memory(attribution, x[:1], EpsilonPlusFlat())
    print(json.dumps({{"per_sample": e.per_sample, "fixed": e.fixed}}))
else:
    with open("/proc/self/status") as f:
        rss = [int(line.split()[1]) for line in f if line.startswith("VmRSS:")][0] * 1024
    attribution(x.requires_grad_(), [{{"y": [0]}}], EpsilonPlusFlat())
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({{"growth": peak - rss}}))
"""


def child(model: str, size: int, batch: int, estimate: bool) -> dict:
    code = CHILD.format(root=str(ROOT), model=model, size=size, batch=batch, estimate=estimate)
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vgg16")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batches", type=int, nargs=2, default=(4, 8))
    args = parser.parse_args(argv)
    small, large = args.batches
    grown = {b: child(args.model, args.size, b, False)["growth"] for b in (small, large)}
    measured = (grown[large] - grown[small]) / (large - small)
    estimated = child(args.model, args.size, 1, True)["per_sample"]
    mib = 2 ** 20
    print(f"| model | input | measured MiB/sample (batches {small}, {large}) | estimated MiB/sample | ratio |")
    print("| --- | --- | ---: | ---: | ---: |")
    print(f"| {args.model} | {args.size}x{args.size} | {measured / mib:.0f} | {estimated / mib:.0f} | "
          f"{estimated / measured:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
