"""Speed of crp.evaluation's pixel flipping against Quantus and lrp-pf-auc, side by side.

All implementations run in this process on the same model (a small seeded CNN), the same images, heatmaps and
targets, and the same number of perturbation steps. Each measurement is repeated, the implementations of a case
in turns after one untimed run each, and the best time kept; the table gives milliseconds per image and the ratio
of each row's time to the time of the case's first row, crp's default (above 1: crp.evaluation is faster). Quantus and
lrp-pf-auc are optional: a row is skipped when its package does not import. They pull other versions of several
packages, so give them their own environment and run this script with its python, e.g.::

    python3 -m venv /tmp/venv-evalcmp
    /tmp/venv-evalcmp/bin/pip install torch torchvision quantus lrp-pf-auc
    /tmp/venv-evalcmp/bin/python benchmarks/bench_evaluation.py

Cases (32 x 32 RGB images by default):

* ``flip-black``: pixel flipping with a black (0) baseline, ``--steps`` steps (Quantus ``PixelFlipping``
  with ``features_in_step`` set to give the same number of steps).
* ``flip-uniform``: the same with uniform noise (Quantus ``perturb_baseline="uniform"``).
* ``region-inpaint``: region perturbation of ``--region`` patches with inpainting and lrp-pf-auc's quadratic
  schedule (``W / region`` steps); ours with the torch harmonic fill and, if OpenCV imports, with Telea,
  the method lrp-pf-auc uses (crp inpaints each channel as a 16-bit image, lrp-pf-auc the RGB image at 8 bits:
  three OpenCV calls per image against one; compare these two rows' ms/image for Telea against Telea).
* ``region-random``: the same regions and schedule with random values (lrp-pf-auc's random mode).

With the default CNN the model's forward passes take most of the time; ``--model linear`` makes them nearly free,
so that the time is the implementations' own. The ``fwd/img`` column counts the images each implementation passes
through the model per image (one untimed run with a forward hook): crp and lrp-pf-auc score the unperturbed input
too (``steps + 1``), Quantus does not (``steps``), and crp forwards an input that is identical by construction only
once (the fully perturbed input of a constant or inpainting fill, the same for every image: ``steps + 1 / n``).
The overhead column subtracts that many forward passes (timed alone, in batches of ``--n``) from the total.

Memory: by default (``--malloc tuned``) the script asks glibc to keep freed memory (``mallopt``: trim threshold
1 GiB, mmap threshold 32 MiB) for every implementation alike. With glibc's adaptive defaults, whether the model's
activations of a batch are handed back to the system after each forward pass, and faulted in again for the next,
depends on the sizes of earlier allocations in the process, among them those of the other implementations; those
page faults cost up to a third of a run here and made the ratios depend on the order of the cases (PyTorch's
performance tuning guide recommends an allocator that reuses memory, jemalloc or TCMalloc, on the CPU for the same
reason). ``--malloc default`` keeps glibc's behaviour; then the implementation with the largest batches (crp) tends
to pay those page faults while the others do not.
"""

import argparse
import contextlib
import ctypes
import ctypes.util
import io
import sys
import time
import warnings
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from crp.evaluation import PixelFlipping, quadratic_per_step  # noqa: E402

MEAN, STD = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])


def build_model(size: int, kind: str = "cnn", classes: int = 10) -> torch.nn.Module:
    """A small seeded CNN (``kind="cnn"``) or a linear classifier (``"linear"``) for RGB images of side ``size``."""
    torch.manual_seed(0)
    if kind == "linear":
        return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * size * size, classes)).eval()
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(16, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Flatten(), torch.nn.Linear(32 * (size // 4) ** 2, 64), torch.nn.ReLU(), torch.nn.Linear(64, classes),
    )
    return model.eval()


def make_data(model: torch.nn.Module, n: int, size: int):
    """ImageNet-normalised images (raw values in [0.01, 0.99]), gradient x input heatmaps and predicted targets."""
    generator = torch.Generator().manual_seed(0)
    raw = 0.01 + 0.98 * torch.rand(n, 3, size, size, generator=generator)
    x = ((raw - MEAN[:, None, None]) / STD[:, None, None]).requires_grad_(True)
    outputs = model(x)
    targets = outputs.argmax(1)
    outputs.gather(1, targets[:, None]).sum().backward()
    return x.detach(), (x.grad * x).detach().sum(1), targets


def best_time(run: Callable[[], object], repeats: int) -> float:
    """The shortest of ``repeats`` wall-clock times of ``run()`` (printing silenced)."""
    times = []
    for _ in range(repeats):
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            start = time.perf_counter()
            run()
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
    return min(times)


def ours(model, x, heat, targets, **settings) -> Callable[[], object]:
    metric = PixelFlipping(**settings)
    return lambda: metric(model, x, heat, targets)


def quantus_flip(model, x, heat, targets, *, steps: int, baseline: str) -> Optional[Callable[[], object]]:
    if x.device.type != "cpu":
        return None
    try:
        import quantus
    except ImportError:
        return None
    channels, height, width = x.shape[1:]
    metric = quantus.PixelFlipping(features_in_step=channels * height * width // steps, perturb_baseline=baseline,
                                   normalise=False, abs=False, disable_warnings=True, return_auc_per_sample=False)
    arrays = x.numpy(), targets.numpy(), heat[:, None].numpy()
    return lambda: metric(model=model, x_batch=arrays[0], y_batch=arrays[1], a_batch=arrays[2], softmax=False,
                          device="cpu", batch_size=len(x))


def lrp_pf_auc(model, x, heat, targets, *, steps: int, region: int, mode: str) -> Optional[Callable[[], object]]:
    if x.device.type != "cpu":
        return None
    try:
        from pf.core import PixelFlipping as LrpPixelFlipping
        from pf.perturbation_modes.constants import PerturbModes
    except ImportError:
        return None
    perturb_mode = PerturbModes.INPAINTING if mode == "inpainting" else PerturbModes.RANDOM
    relevance = heat[:, None].expand(-1, 3, -1, -1).contiguous()

    def forward(batch: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return model(batch)[torch.arange(len(batch)), targets]

    def run() -> object:
        metric = LrpPixelFlipping(perturbation_steps=steps, perturbation_size=region, perturb_mode=perturb_mode)
        metric(x.clone(), relevance, forward)
        return metric.calculate_auc_score()

    return run


def count_forwards(model: torch.nn.Module, run: Callable[[], object], n: int) -> float:
    """Images passed through ``model`` per input image during one (untimed, silenced) ``run()``."""
    seen = [0]

    def count(_module: torch.nn.Module, args: tuple) -> None:
        seen[0] += len(args[0])

    handle = model.register_forward_pre_hook(count)
    try:
        best_time(run, 1)
    finally:
        handle.remove()
    return seen[0] / n


def keep_freed_memory() -> bool:
    """Ask glibc to keep freed memory in the process (no trimming, large blocks from the heap); False if not glibc."""
    name = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError, TypeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(mallopt(m_trim_threshold, 2**30)) and bool(mallopt(m_mmap_threshold, 2**25))


def forward_time(model, x, repeats: int) -> float:
    """Seconds of one forward pass of one image, in batches of ``len(x)``: the floor all implementations share."""

    def run() -> None:
        with torch.no_grad():
            for _ in range(10):
                model(x)

    return best_time(run, repeats) / (10 * len(x))


def cases(args, model, x, heat, targets) -> Dict[str, List[tuple]]:
    """Per case, ``(implementation, steps, runner or None)``; ours first."""
    schedule = quadratic_per_step((args.size // args.region) ** 2)
    flip, region = args.steps, len(schedule)

    def mine(perturbation: str, **settings) -> Callable[[], object]:
        return ours(model, x, heat, targets, perturbation=perturbation, batch_size=args.batch_size, **settings)

    def regions(perturbation: str) -> Callable[[], object]:
        return mine(perturbation, region_size=args.region, per_step=schedule)

    return {
        "flip-black": [
            ("crp constant", flip, mine("constant", steps=flip)),
            ("quantus black", flip, quantus_flip(model, x, heat, targets, steps=flip, baseline="black")),
        ],
        "flip-uniform": [
            ("crp random", flip, mine("random", steps=flip)),
            ("quantus uniform", flip, quantus_flip(model, x, heat, targets, steps=flip, baseline="uniform")),
        ],
        "region-inpaint": [
            ("crp inpainting", region, regions("inpainting")),
            ("crp telea", region, _if_cv2(lambda: regions("telea"))),
            ("lrp-pf-auc inpainting", region, lrp_pf_auc(model, x, heat, targets, steps=region, region=args.region,
                                                           mode="inpainting")),
        ],
        "region-random": [
            ("crp random", region, regions("random")),
            ("lrp-pf-auc random", region, lrp_pf_auc(model, x, heat, targets, steps=region, region=args.region,
                                                       mode="random")),
        ],
    }


def _if_cv2(make: Callable[[], Callable[[], object]]) -> Optional[Callable[[], object]]:
    try:
        import cv2  # noqa: F401
    except ImportError:
        return None
    return make()


def parse(argv: Optional[List[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=("cnn", "linear"), default="cnn",
                        help="a small CNN, or a linear model whose forward pass costs almost nothing")
    parser.add_argument("--n", type=int, default=16, help="images")
    parser.add_argument("--size", type=int, default=32, help="image side")
    parser.add_argument("--steps", type=int, default=48,
                        help="steps of the pixel-flipping cases; Quantus needs 3 * size**2 / steps to divide size**2")
    parser.add_argument("--region", type=int, default=4, help="region side of the region cases")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="crp.evaluation's perturbed inputs per forward (default: its automatic choice)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu",
                        help="run the model and crp.evaluation there, e.g. cuda (Quantus and lrp-pf-auc stay on the "
                             "CPU and are skipped unless --device cpu)")
    parser.add_argument("--malloc", choices=("tuned", "default"), default="tuned",
                        help="keep freed memory in the process for all implementations (glibc), or glibc's defaults")
    args = parser.parse_args(argv)
    features = 3 * args.size ** 2 // args.steps
    if 3 * args.size ** 2 % args.steps or args.size ** 2 % features:
        parser.error(f"--steps {args.steps}: Quantus needs 3 * size**2 / steps to be an integer dividing size**2 "
                     f"({args.size ** 2}); try 3 * a power of 2, e.g. 48 or 96.")
    return args


def main(argv: Optional[List[str]] = None) -> None:
    args = parse(argv)
    malloc = "glibc defaults"
    if args.malloc == "tuned":
        malloc = "freed memory kept (mallopt)" if keep_freed_memory() else "allocator defaults (no glibc mallopt)"
    torch.set_num_threads(args.threads)
    model = build_model(args.size, args.model)
    x, heat, targets = make_data(model, args.n, args.size)
    device = torch.device(args.device)
    model, x, heat, targets = model.to(device), x.to(device), heat.to(device), targets.to(device)
    forward = forward_time(model, x, args.repeats)
    print(f"{args.n} images 3x{args.size}x{args.size}, {args.model} model ({1000 * forward:.3f} ms per forward image), "
          f"{args.threads} thread(s), device {device}, best of {args.repeats}, {malloc}; torch {torch.__version__}, "
          f"numpy {np.__version__}")
    print("ms/image: total time per image; fwd/img: images forwarded per image; overhead: ms/image less those "
          "forward passes; ratios: theirs / crp")
    print(f"{'case':<15} {'implementation':<23} {'steps':>5} {'fwd/img':>7} {'ms/image':>9} {'ratio':>6} "
          f"{'overhead':>9} {'ratio':>6}")
    for case, rows in cases(args, model, x, heat, targets).items():
        runners = [runner for _, _, runner in rows if runner is not None]
        counts = iter([count_forwards(model, runner, args.n) for runner in runners])  # also a warm-up run
        times = iter(round_robin(runners, args.repeats))
        reference = None
        for name, steps, runner in rows:
            if runner is None:
                reason = "(not installed)" if device.type == "cpu" else "(CPU only)"
                print(f"{case:<15} {name:<23} {steps:>5} {reason:>24}")
                continue
            forwards = next(counts)
            total = next(times) / args.n
            overhead = total - forwards * forward
            reference = reference or (total, overhead)
            # an overhead within the timing noise (under 5% of the total) has no meaningful ratio
            ratio = f"{overhead / reference[1]:>5.2f}x" if reference[1] > 0.05 * reference[0] else f"{'-':>6}"
            print(f"{case:<15} {name:<23} {steps:>5} {forwards:>7.2f} {1000 * total:>9.2f} "
                  f"{total / reference[0]:>5.2f}x {1000 * overhead:>9.2f} {ratio}")


def round_robin(runners: List[Callable[[], object]], repeats: int) -> List[float]:
    """Best time of each runner, timed in turns so that changes in the machine's load hit all alike."""
    best = [float("inf")] * len(runners)
    for _ in range(repeats):
        for index, runner in enumerate(runners):
            best[index] = min(best[index], best_time(runner, 1))
    return best


if __name__ == "__main__":
    main()
