"""Time FeatureVisualization.run() against a plain zennit LRP pass over the same data, and its peak memory.

Usage::

    python benchmarks/bench_visualization.py [--repeats 3] [--vgg-samples 256] [--threads 1] [--cases a,b,c]
                                             [--device cpu] [--vgg16-samples 0]

Cases (random weights, procedurally generated random samples so that the dataset itself uses no memory):

(a) a small CNN (4 conv + 2 linear layers, 3x32x32 inputs, 100 classes), 1,024 samples, batch 64, every conv
    and linear layer analyzed; goal: run() <= 1.10x the LRP pass, <= 24 files;
(b) VGG11-BN at 64x64 (1,000 classes, ``--vgg-samples`` samples, batch 32, every conv and linear layer);
    goal <= 1.05x;
(c) peak RSS of run() on (a)'s model for 2,048 and 8,192 samples, each in its own process; goal: flat.
(d) with ``--vgg16-samples N`` (for a GPU, ``--device cuda``): VGG16 at 224x224, samples/s of both.

Both sides of (a), (b) and (d) run in one process, alternately, ``--repeats`` times; the best time is taken.
The LRP pass is zennit's ``Gradient`` attributor with the same composite, output relevance ``one_hot * logit``,
over a DataLoader with the same batch size.
"""
import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


class RandomImages(torch.utils.data.Dataset):
    """``n`` random images and targets, generated from their index (no memory per sample)."""

    def __init__(self, n, shape, n_classes):
        self.n, self.shape, self.n_classes = n, shape, n_classes

    def __len__(self):
        return self.n

    def __getitem__(self, index):
        generator = torch.Generator().manual_seed(index)
        return torch.randn(self.shape, generator=generator), int(torch.randint(self.n_classes, (1,),
                                                                                generator=generator))


def small_cnn(n_classes=100):
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64 * 8 * 8, 256), nn.ReLU(), nn.Linear(256, n_classes),
    )


def build(case):
    """Model, dataset, composite and batch size of a case."""
    from zennit.composites import EpsilonPlusFlat
    from zennit.torchvision import VGGCanonizer

    torch.manual_seed(0)
    if case == "a":
        return small_cnn().eval(), RandomImages(1024, (3, 32, 32), 100), EpsilonPlusFlat(), 64
    import torchvision

    if case == "b":
        model, size, n = torchvision.models.vgg11_bn(weights=None), 64, ARGS.vgg_samples
    else:
        model, size, n = torchvision.models.vgg16(weights=None), 224, ARGS.vgg16_samples
    return model.eval(), RandomImages(n, (3, size, size), 1000), EpsilonPlusFlat(canonizers=[VGGCanonizer()]), 32


def lrp_pass(model, dataset, composite, batch_size, device):
    """The baseline: one zennit LRP pass per batch, relevance started at the target logit."""
    from zennit.attribution import Gradient

    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, pin_memory=device.type == "cuda")
    start, cpu = time.perf_counter(), time.process_time()
    with Gradient(model, composite) as attributor:
        for data, targets in loader:
            data, targets = data.to(device), targets.to(device)
            attributor(data, lambda out, t=targets: out * torch.nn.functional.one_hot(t, out.shape[1]))
    _sync(device)
    return time.perf_counter() - start, time.process_time() - cpu


def fv_run(model, dataset, composite, *, batch_size, device, path):
    from crp.attribution import CondAttribution
    from crp.concepts import ChannelConcept
    from crp.helper import get_layer_names
    from crp.visualization import FeatureVisualization

    layers = get_layer_names(model, [nn.Conv2d, nn.Linear])
    fv = FeatureVisualization(CondAttribution(model), dataset, {name: ChannelConcept() for name in layers},
                              path=path, device=device)
    start, cpu = time.perf_counter(), time.process_time()
    fv.run(composite, 0, len(dataset), batch_size=batch_size, checkpoint=500, verbose=False)
    _sync(device)
    elapsed = time.perf_counter() - start, time.process_time() - cpu
    return elapsed, sum(1 for p in Path(path).rglob("*") if p.is_file())


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_case(case, device):
    model, dataset, composite, batch_size = build(case)
    model = model.to(device)
    lrp_times, run_times, files = [], [], 0
    for _ in range(ARGS.repeats):
        lrp_times.append(lrp_pass(model, dataset, composite, batch_size, device))
        path = tempfile.mkdtemp(prefix="bench-fv-")
        try:
            elapsed, files = fv_run(model, dataset, composite, batch_size=batch_size, device=device, path=path)
        finally:
            shutil.rmtree(path)
        run_times.append(elapsed)
    lrp, run = min(t[0] for t in lrp_times), min(t[0] for t in run_times)
    lrp_cpu, run_cpu = min(t[1] for t in lrp_times), min(t[1] for t in run_times)
    return {"case": case, "samples": len(dataset), "batch_size": batch_size, "lrp_s": lrp, "run_s": run,
            "ratio": run / lrp, "lrp_cpu_s": lrp_cpu, "run_cpu_s": run_cpu, "cpu_ratio": run_cpu / lrp_cpu,
            "lrp_samples_per_s": len(dataset) / lrp, "run_samples_per_s": len(dataset) / run,
            "files": files, "all_lrp_wall_cpu_s": lrp_times, "all_run_wall_cpu_s": run_times}


def peak_rss_child(n_samples):
    """In a fresh process: run (a)'s model over ``n_samples`` samples (the LRP pass alone if ``n_samples`` is
    negative); print the peak RSS in MiB."""
    torch.set_num_threads(ARGS.threads)
    model, _, composite, batch_size = build("a")
    dataset = RandomImages(abs(n_samples), (3, 32, 32), 100)
    if n_samples < 0:
        lrp_pass(model, dataset, composite, batch_size, torch.device("cpu"))
    else:
        path = tempfile.mkdtemp(prefix="bench-fv-")
        try:
            fv_run(model, dataset, composite, batch_size=batch_size, device=torch.device("cpu"), path=path)
        finally:
            shutil.rmtree(path)
    print(json.dumps({"samples": n_samples, "peak_rss_mib": _peak_rss_mib()}))


def _peak_rss_mib():
    """Peak RSS of this process. ``ru_maxrss`` survives exec, so a child would report its parent's RSS at the
    fork; ``VmHWM`` starts afresh at exec and is used where it exists (Linux)."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def peak_rss(n_samples):
    output = subprocess.run([sys.executable, __file__, "--rss-child", str(n_samples), "--threads", str(ARGS.threads)],
                            capture_output=True, text=True, check=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def main():
    torch.set_num_threads(ARGS.threads)
    device = torch.device(ARGS.device)
    cases = ARGS.cases.split(",")
    goals = {"a": 1.10, "b": 1.05, "d": None}
    # first, while this process is small
    rss = (peak_rss(2048), peak_rss(8192), peak_rss(-8192)) if "c" in cases else None
    rows = [time_case(case, device) for case in ("a", "b") if case in cases]
    if ARGS.vgg16_samples:
        rows.append(time_case("d", device))
    print(f"device {device}, torch threads {ARGS.threads}, best of {ARGS.repeats} (wall and process CPU time)")
    print(f"{'case':<22}{'samples':>8}{'LRP s':>8}{'run() s':>9}{'ratio':>7}{'LRP cpu':>9}{'run cpu':>9}"
          f"{'cpu ratio':>10}{'goal':>6}{'files':>6}{'LRP smp/s':>11}{'run smp/s':>11}")
    names = {"a": "(a) small CNN 32x32", "b": "(b) VGG11-BN 64x64", "d": "(d) VGG16 224x224"}
    for row in rows:
        goal = goals[row["case"]]
        print(f"{names[row['case']]:<22}{row['samples']:>8}{row['lrp_s']:>8.2f}{row['run_s']:>9.2f}"
              f"{row['ratio']:>7.3f}{row['lrp_cpu_s']:>9.2f}{row['run_cpu_s']:>9.2f}{row['cpu_ratio']:>10.3f}"
              f"{(f'{goal:.2f}' if goal else '-'):>6}{row['files']:>6}"
              f"{row['lrp_samples_per_s']:>11.1f}{row['run_samples_per_s']:>11.1f}")
    if rss:
        small, large, lrp = rss
        ratio = large["peak_rss_mib"] / small["peak_rss_mib"]
        print(f"(c) peak RSS of run(): {small['peak_rss_mib']:.0f} MiB at 2,048 samples, "
              f"{large['peak_rss_mib']:.0f} MiB at 8,192 samples (ratio {ratio:.3f}); the LRP pass alone: "
              f"{lrp['peak_rss_mib']:.0f} MiB at 8,192 samples")
    print(json.dumps(rows))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--vgg-samples", type=int, default=256)
    parser.add_argument("--vgg16-samples", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cases", default="a,b,c")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rss-child", type=int, help=argparse.SUPPRESS)
    ARGS = parser.parse_args()
    if ARGS.rss_child is not None:
        peak_rss_child(ARGS.rss_child)
    else:
        main()
