"""Time model-graph tracing and AttributionGraph on torchvision's VGG16, ResNet-18 and DenseNet-121.

Random weights, one input of ``--size`` pixels, ``--threads`` CPU threads. For every model it times
``trace_model_graph`` with each tracer (conv and linear layers listed), answering ``find_input_layers`` for all
layers, and one ``AttributionGraph`` call (width (4, 2), EpsilonPlusFlat) on a concept of the last conv layer.

    python benchmarks/bench_graph.py                       # this checkout
    python benchmarks/bench_graph.py --reference /tmp/ref  # also zennit-crp's torch.jit tracer, in its own process
    python benchmarks/bench_graph.py --out graph.json      # also write the figures as JSON
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODELS = ("vgg16", "resnet18", "densenet121")


def _model_and_layers(name, size):
    import torch
    import torchvision

    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(weights=None).eval()
    layers = [n for n, m in model.named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    return model, layers, torch.rand(1, 3, size, size)


def _timed(fn, repeat):
    best, value = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        value = fn()
        best = min(best, time.perf_counter() - start)
    return best, value


def bench_tracing(name, size, repeat, methods):
    from crp.graph import trace_model_graph

    model, layers, sample = _model_and_layers(name, size)
    row = {"model": name, "layers": len(layers)}
    for method in methods:
        kwargs = {} if method == "jit" else {"method": method}
        seconds, graph = _timed(lambda kw=kwargs: trace_model_graph(model, sample, layers, **kw), repeat)
        row[f"trace_{method}_s"] = round(seconds, 3)
        seconds, _ = _timed(lambda g=graph: [g.find_input_layers(n) for n in layers], 1)
        row[f"find_all_{method}_s"] = round(seconds, 4)
    return row


def bench_attribution_graph(name, size, exclude_parallel):
    from zennit.composites import EpsilonPlusFlat

    from crp.attribution import AttributionGraph, CondAttribution
    from crp.concepts import ChannelConcept
    from crp.graph import trace_model_graph

    model, layers, sample = _model_and_layers(name, size)
    graph = trace_model_graph(model, sample, layers)
    attgraph = AttributionGraph(CondAttribution(model), graph, {n: ChannelConcept() for n in layers})
    last_conv = [n for n in layers if n in dict(model.named_modules()) and "classifier" not in n and n != "fc"][-1]
    seconds, result = _timed(lambda: attgraph(
        sample.clone().requires_grad_(), EpsilonPlusFlat(), 0, last_conv, target=0, width=(4, 2), batch_size=16,
        verbose=False, exclude_parallel=exclude_parallel), 1)
    return {"model": name, "layer": last_conv, "exclude_parallel": exclude_parallel,
            "nodes": len(result.nodes), "attribution_graph_s": round(seconds, 2)}


def run_reference(path, size, repeat):
    """Time zennit-crp's tracer in its own process (both packages are named crp)."""
    env = dict(os.environ, PYTHONPATH=str(path))
    command = [sys.executable, str(Path(__file__).resolve()), "--as-reference", "--size", str(size),
               "--repeat", str(repeat)]
    out = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def write_json(path, data):
    path = Path(path)
    handle, temp = tempfile.mkstemp(dir=path.parent, suffix=".json")
    with os.fdopen(handle, "w") as file:
        json.dump(data, file, indent=1)
    os.replace(temp, path)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--skip-attribution", action="store_true")
    parser.add_argument("--reference", type=Path, help="folder holding zennit-crp's crp package")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--as-reference", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    if args.as_reference:
        print(json.dumps([bench_tracing(name, args.size, args.repeat, ["jit"]) for name in MODELS]))
        return
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    results = {"size": args.size, "threads": args.threads, "torch": torch.__version__}
    results["tracing"] = [bench_tracing(name, args.size, args.repeat, ["auto", "fx", "autograd"]) for name in MODELS]
    if args.reference:
        results["reference_tracing"] = run_reference(args.reference, args.size, 1)
    if not args.skip_attribution:
        results["attribution_graph"] = [bench_attribution_graph(name, args.size, ep)
                                        for name in MODELS for ep in (False, True)]
    print(json.dumps(results, indent=1))
    if args.out:
        write_json(args.out, results)


if __name__ == "__main__":
    main()
