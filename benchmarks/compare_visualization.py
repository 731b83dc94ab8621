"""Compare crp's FeatureVisualization with zennit-crp 0.6 on a real model, each package in its own process.

Usage::

    python benchmarks/compare_visualization.py --reference-path /path/to/zennit-crp-0.6 \
        --model-dir ../shared/data/fashion_mnist [--samples 512]

Both packages analyze the first ``--samples`` images of ``FashionVal`` for the layers conv1, conv2 and linear1
with ``EpsilonPlusFlat``, for ``max_target`` "sum" and "max" with and without ``abs_norm``. The results of
both are then read with crp's loaders (zennit-crp's folder through crp's reader of its layout) and compared:
top-k dataset indices and receptive-field neurons (exact, and up to ties: entries whose values are equal),
values (largest absolute difference), per-class statistics for every target, ``compute_stats`` and the
reference heatmaps of ``get_max_reference``. Prints a JSON report.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

LAYERS = ["conv1", "conv2", "linear1"]
CONFIGS = [("sum", True), ("max", True), ("sum", False), ("max", False)]
CONCEPTS = [0, 3, 7]
BATCH_SIZE = 32


def run_side(side: str, model_dir: str, out: str, samples: int) -> None:
    """Run FeatureVisualization with whichever ``crp`` is importable; save results under ``out``."""
    import torch
    from zennit.composites import EpsilonPlusFlat

    np.int = int  # zennit-crp 0.6 uses np.int
    from crp.attribution import CondAttribution
    from crp.concepts import ChannelConcept
    from crp.visualization import FeatureVisualization

    sys.path.insert(0, model_dir)
    from model import FashionVal, load_model

    torch.manual_seed(0)
    torch.set_num_threads(1)
    model, data = load_model(), FashionVal(samples)
    extras = {}
    for max_target, abs_norm in CONFIGS:
        name = f"{max_target}_{'normed' if abs_norm else 'unnormed'}"
        fv = FeatureVisualization(CondAttribution(model), data, {layer: ChannelConcept() for layer in LAYERS},
                                  max_target=max_target, abs_norm=abs_norm, path=os.path.join(out, name))
        kwargs = {} if side == "reference" else {"verbose": False}
        fv.run(EpsilonPlusFlat(), 0, samples, batch_size=BATCH_SIZE, checkpoint=5, **kwargs)
        for layer in LAYERS:
            for mode in ("relevance", "activation"):
                for concept in CONCEPTS:
                    targets, values = fv.compute_stats(concept, layer, mode, top_N=5, mean_N=10)
                    extras[f"{name}/{layer}/{mode}/{concept}/stats_targets"] = np.asarray(targets, dtype=np.int64)
                    extras[f"{name}/{layer}/{mode}/{concept}/stats_values"] = np.asarray(values)
        if name == "sum_normed":
            for rf in (False, True):
                refs = fv.get_max_reference(CONCEPTS, "conv2", "relevance", (0, 8), EpsilonPlusFlat(), rf=rf,
                                            plot_fn=None)
                for concept, (_, heatmaps) in refs.items():
                    extras[f"heatmap/rf={rf}/{concept}"] = heatmaps.numpy()
    np.savez(os.path.join(out, "extras.npz"), **extras)


def compare_triples(ours, ref) -> dict:
    """Compare (indices, values, neurons) of both; mismatches of indices at equal values count as ties."""
    (d_o, v_o, n_o), (d_r, v_r, n_r) = ([np.asarray(a) for a in t] for t in (ours, ref))
    if d_o.shape != d_r.shape:
        return {"shape": f"{d_o.shape} vs {d_r.shape}"}
    differ = d_o != d_r
    ties = differ & (v_o == v_r)
    return {
        "entries": int(d_o.size), "index_mismatch": int(differ.sum()), "index_mismatch_not_tie": int((differ & ~ties)
                                                                                                    .sum()),
        "neuron_mismatch_same_index": int(((n_o != n_r) & ~differ).sum()),
        "max_abs_value_diff": float(np.abs(v_o.astype(np.float64) - v_r).max()) if v_o.size else 0.0,
        "same_index_sets": bool(all(set(d_o[:, c]) == set(d_r[:, c]) for c in range(d_o.shape[1]))),
    }


def summarize(report: dict) -> dict:
    totals = {"entries": 0, "index_mismatch": 0, "index_mismatch_not_tie": 0, "neuron_mismatch_same_index": 0}
    worst = 0.0
    for value in report.values():
        if isinstance(value, dict) and "entries" in value:
            for key in totals:
                totals[key] += value[key]
            worst = max(worst, value["max_abs_value_diff"])
    return {**totals, "max_abs_value_diff": worst}


def compare(tmp: str) -> dict:
    from crp._features.store import legacy_folder_name
    from crp.helper import load_maximization, load_stat_targets, load_statistics

    report = {}
    for max_target, abs_norm in CONFIGS:
        name = f"{max_target}_{'normed' if abs_norm else 'unnormed'}"
        for mode in ("relevance", "activation"):
            folder_max = legacy_folder_name(mode, "max", max_target, abs_norm)
            folder_stats = legacy_folder_name(mode, "stats", max_target, abs_norm)
            ours_root, ref_root = Path(tmp, "ours", name), Path(tmp, "reference", name)
            targets_ours = load_stat_targets(ours_root / folder_stats)
            targets_ref = np.sort(load_stat_targets(ref_root / folder_stats))
            report[f"{name}/{mode}/targets_equal"] = bool(np.array_equal(targets_ours, targets_ref))
            for layer in LAYERS:
                report[f"{name}/{mode}/{layer}/max"] = compare_triples(
                    load_maximization(ours_root / folder_max, layer), load_maximization(ref_root / folder_max, layer))
                for target in targets_ref:
                    report[f"{name}/{mode}/{layer}/stats/{target}"] = compare_triples(
                        load_statistics(ours_root / folder_stats, layer, target),
                        load_statistics(ref_root / folder_stats, layer, target))
    extras_ours = np.load(Path(tmp, "ours", "extras.npz"))
    extras_ref = np.load(Path(tmp, "reference", "extras.npz"))
    stats_equal = [np.array_equal(extras_ours[k], extras_ref[k]) for k in extras_ref.files if k.endswith("targets")]
    value_diff = max(float(np.abs(extras_ours[k] - extras_ref[k]).max()) for k in extras_ref.files
                     if k.endswith("values"))
    heat = {k: float(np.abs(extras_ours[k] - extras_ref[k]).max() / max(np.abs(extras_ref[k]).max(), 1e-12))
            for k in extras_ref.files if k.startswith("heatmap")}
    report["summary"] = summarize(report)
    report["summary"].update({
        "compute_stats_targets_equal": f"{sum(stats_equal)}/{len(stats_equal)}",
        "compute_stats_max_abs_value_diff": value_diff,
        "heatmap_max_relative_diff": max(heat.values()),
    })
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference-path", required=True)
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--samples", type=int, default=512)
    args = parser.parse_args()
    here = Path(__file__).resolve().parent.parent
    with tempfile.TemporaryDirectory() as tmp:
        for side, pythonpath in [("ours", str(here)), ("reference", args.reference_path)]:
            out = os.path.join(tmp, side)
            os.makedirs(out)
            env = dict(os.environ, PYTHONPATH=pythonpath)
            subprocess.run([sys.executable, __file__, "--side", side, "--out", out, "--model-dir", args.model_dir,
                            "--samples", str(args.samples)], env=env, check=True, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL if side == "reference" else None)
        sys.path.insert(0, str(here))
        report = compare(tmp)
    details = {k: v for k, v in report.items() if k != "summary" and (not isinstance(v, dict)
                                                                     or v.get("index_mismatch"))}
    print(json.dumps({"summary": report["summary"], "mismatching_entries": details}, indent=1))


if __name__ == "__main__":
    if "--side" in sys.argv:
        side_parser = argparse.ArgumentParser()
        for option in ("--side", "--out", "--model-dir"):
            side_parser.add_argument(option)
        side_parser.add_argument("--samples", type=int)
        side_args = side_parser.parse_args()
        run_side(side_args.side, side_args.model_dir, side_args.out, side_args.samples)
    else:
        main()
