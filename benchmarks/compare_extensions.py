"""Run research-style subclasses of zennit-crp's classes unchanged on crp and on zennit-crp 0.6; compare outputs.

Usage::

    python benchmarks/compare_extensions.py --reference-path /path/to/zennit-crp-0.6 \
        --model-dir ../shared/data/fashion_mnist [--samples 256]

The same source code (the cases below, written against zennit-crp's API: subclasses of Maximization,
FeatureVisualization, CondAttribution, a run_distributed around FeatVisHook, get_crop_range for slicing) runs
once with each package, each in its own process, on the FashionMNIST model. Every array a case produces is
one output; the outputs of both runs are compared (dataset indices exactly or up to ties, i.e. entries whose
values are equal; values within 1e-5 of the largest magnitude) and a table of matching outputs per case is
printed.
"""
import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

LAYERS = ["conv1", "conv2", "linear1"]
MODES = ("relevance", "activation")


def cases(model_dir: str, samples: int, out: str):
    """The research-style code, written against zennit-crp 0.6's API; returns ``{case: {name: array}}``."""
    import torch
    from zennit.composites import EpsilonPlusFlat, NameMapComposite

    np.int = int  # zennit-crp 0.6 uses np.int
    from crp.attribution import CondAttribution
    from crp.concepts import ChannelConcept
    from crp.helper import load_maximization, load_stat_targets, load_statistics
    from crp.hooks import FeatVisHook
    from crp.image import get_crop_range
    from crp.maximization import Maximization
    from crp.statistics import Statistics
    from crp.visualization import FeatureVisualization

    sys.path.insert(0, model_dir)
    from model import FashionVal, load_model

    torch.manual_seed(0)
    torch.set_num_threads(1)
    model, data = load_model(), FashionVal(samples)
    layer_map = {layer: ChannelConcept() for layer in LAYERS}

    def stored(fv):
        arrays = {}
        for mode, (ranking, stats) in zip(MODES, ((fv.RelMax, fv.RelStats), (fv.ActMax, fv.ActStats))):
            targets = sorted(int(t) for t in load_stat_targets(stats.PATH))
            arrays[f"{mode}/targets"] = np.asarray(targets)
            for layer in LAYERS:
                for name, array in zip("dvn", load_maximization(ranking.PATH, layer)):
                    arrays[f"{mode}/{layer}/max/{name}"] = np.asarray(array)
                for target in targets:
                    for name, array in zip("dvn", load_statistics(stats.PATH, layer, target)):
                        arrays[f"{mode}/{layer}/stats{target}/{name}"] = np.asarray(array)
        return arrays

    def analyzed(cls, name, **kwargs):
        fv = cls(CondAttribution(model), kwargs.pop("dataset", data), layer_map, path=os.path.join(out, name))
        for attribute, size in kwargs.pop("sizes", {}).items():
            getattr(fv, attribute).SAMPLE_SIZE = size
        fv.run(EpsilonPlusFlat(), 0, samples, 32, 5)
        return fv

    results = {}

    # 1. ActMax of the clamped activation (a Maximization subclass installed in __init__)
    class ClampedMax(Maximization):
        def analyze_layer(self, rel, concept, layer_name, data_indices, targets):
            return super().analyze_layer(rel.clamp(min=0), concept, layer_name, data_indices, targets)

    class Clamped(FeatureVisualization):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.ActMax = ClampedMax("activation", "sum", True, kwargs["path"])

    results["clamped ActMax"] = stored(analyzed(Clamped, "clamped"))

    # 2. unnormed ActMax by the largest neuron, RelMax by the normed sum
    class MaxActivations(FeatureVisualization):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.ActMax = Maximization("activation", "max", False, kwargs["path"])
            self.ActStats = Statistics("activation", "max", False, kwargs["path"])

    results["ActMax max/unnormed"] = stored(analyzed(MaxActivations, "max_activations"))

    # 3. SAMPLE_SIZE set on the result objects
    for size in (10, 100):
        sizes = {"RelMax": size, "ActMax": size, "RelStats": size, "ActStats": size}
        results[f"SAMPLE_SIZE {size}"] = stored(analyzed(FeatureVisualization, f"size{size}", sizes=sizes))

    # 4. multi-target: every fourth image is also explained for the next class; own reference lookup
    class MultiLabel(torch.utils.data.Dataset):
        def __len__(self):
            return len(data)

        def __getitem__(self, index):
            image, label = data[index]
            hot = torch.zeros(10)
            hot[label] = 1
            if index % 4 == 0:
                hot[(label + 1) % 10] = 1
            return image, hot

    class MultiTarget(FeatureVisualization):
        def multitarget_to_single(self, multi_target):
            return [int(t) for t in torch.nonzero(torch.as_tensor(multi_target)).flatten()]

        def top_indices(self, layer_name, concept_id, target=None):
            if target is None:
                return load_maximization(self.RelMax.PATH, layer_name)[0][:, concept_id]
            return load_statistics(self.RelStats.PATH, layer_name, target)[0][:, concept_id]

    fv = analyzed(MultiTarget, "multi", dataset=MultiLabel())
    multi = stored(fv)
    for concept in (0, 5):
        multi[f"own/conv2/{concept}"] = np.asarray(fv.top_indices("conv2", concept))
        multi[f"own/conv2/{concept}/target3"] = np.asarray(fv.top_indices("conv2", concept, 3))
    results["multi-target"] = multi

    # 5. a run_distributed of its own around FeatVisHook (the composite registered as zennit-crp did)
    class OwnLoop(FeatureVisualization):
        def run_distributed(self, composite, data_start, data_end, batch_size=16,  # noqa: PLR0917
                            checkpoint=500, on_device=None):  # noqa: ARG002 (zennit-crp's signature)
            self.saved_checkpoints = {"r_max": [], "a_max": [], "r_stats": [], "a_stats": []}
            inputs = {}
            hooks = NameMapComposite([([name], FeatVisHook(self, concept, name, inputs, on_device))
                                      for name, concept in self.layer_map.items()])
            composite.register(self.attribution.model)
            hooks.register(self.attribution.model)
            for start in range(data_start, data_end, batch_size):
                indices = np.arange(start, min(start + batch_size, data_end))
                batch, targets = self.get_data_concurrently(indices, preprocessing=True)
                inputs["sample_indices"], inputs["targets"] = indices, np.asarray(targets)
                self.attribution(batch, [{"y": [t]} for t in targets], None, exclude_parallel=False)
            self._save_results((data_start, data_end))
            composite.remove()
            hooks.remove()
            return self.saved_checkpoints

    results["own run_distributed"] = stored(analyzed(OwnLoop, "own_loop"))

    # 6. CondAttribution with the relevance initialized on a region of interest (detection/segmentation style)
    class RegionAttribution(CondAttribution):
        def relevance_init(self, prediction, target_list, init_rel):  # noqa: ARG002 (the overridden signature)
            relevance = torch.zeros_like(prediction)
            for row, targets in enumerate(target_list):
                relevance[row, targets] = torch.softmax(prediction[row], 0)[targets]
            return relevance

    attribution = RegionAttribution(model)
    images = data.images[:8].clone().requires_grad_()
    conditions = [{"conv2": [c], "y": [int(t)]} for c, t in zip(range(8), data.targets[:8])]
    result = attribution(images, conditions, EpsilonPlusFlat(), record_layer=["linear1"])
    results["relevance_init subclass"] = {"heatmap": result.heatmap.detach().numpy(),
                                          "prediction": result.prediction.detach().numpy(),
                                          "linear1 relevance": result.relevances["linear1"].numpy()}

    # 7. get_crop_range for slicing a reference heatmap
    crops = {}
    for index in range(6):
        heat = result.heatmap[index].detach().abs()
        heat = heat / heat.max()
        r0, r1, c0, c1 = get_crop_range(heat, 0.2)
        crops[f"range/{index}"] = np.asarray([int(r0), int(r1), int(c0), int(c1)])
        crops[f"crop/{index}"] = data.images[index, 0, r0:r1, c0:c1].numpy()
    results["get_crop_range"] = crops
    return results


def run_side(model_dir: str, out: str, samples: int) -> None:
    results = cases(model_dir, samples, out)
    np.savez(os.path.join(out, "outputs.npz"),
             **{f"{case}|{name}": array for case, arrays in results.items() for name, array in arrays.items()})


def same(name: str, ours: np.ndarray, ref: np.ndarray, values: dict) -> bool:
    """Exact for integers except indices at tied values; floats within 1e-5 of the largest magnitude."""
    if ours.shape != ref.shape:
        return False
    if np.issubdtype(ref.dtype, np.floating):
        scale = max(float(np.abs(ref).max()) if ref.size else 0.0, 1e-12)
        return bool(np.all(np.abs(ours.astype(np.float64) - ref) <= 1e-5 * scale))
    if name.endswith("/d") and name[:-2] + "/v" in values:  # dataset indices: mismatches only at equal values
        ours_values, ref_values = values[name[:-2] + "/v"]
        differ = ours != ref
        return bool(np.all(~differ | (ours_values == ref_values)))
    if name.endswith("/n") and name[:-2] + "/d" in values:  # neurons: compared where the samples agree
        return bool(np.all((ours == ref) | values[name[:-2] + "/d"]))
    return bool(np.array_equal(ours, ref))


def compare(tmp: str) -> dict:
    ours, ref = (np.load(os.path.join(tmp, side, "outputs.npz")) for side in ("ours", "reference"))
    table = {}
    for key in ref.files:
        case, name = key.split("|", 1)
        table.setdefault(case, [0, 0])
        table[case][1] += 1
        if key not in ours.files:
            continue
        values = {}
        if name.endswith("/d") or name.endswith("/n"):
            stem = key.rsplit("/", 1)[0]
            values[name[:-2] + "/v"] = (ours[stem + "/v"], ref[stem + "/v"])
            values[name[:-2] + "/d"] = ours[stem + "/d"] != ref[stem + "/d"]
        table[case][0] += same(name, ours[key], ref[key], values)
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference-path", required=True)
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--samples", type=int, default=256)
    args = parser.parse_args()
    here = Path(__file__).resolve().parent.parent
    with tempfile.TemporaryDirectory() as tmp:
        for side, pythonpath in [("ours", str(here)), ("reference", args.reference_path)]:
            out = os.path.join(tmp, side)
            os.makedirs(out)
            env = dict(os.environ, PYTHONPATH=pythonpath)
            subprocess.run([sys.executable, __file__, "--side", out, "--model-dir", args.model_dir, "--samples",
                            str(args.samples)], env=env, check=True, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
        table = compare(tmp)
    print("| case | outputs equal to zennit-crp 0.6 |\n| --- | --- |")
    for case, (equal, total) in table.items():
        print(f"| {case} | {equal}/{total} |")
    equal, total = (sum(column) for column in zip(*table.values()))
    print(f"| all | {equal}/{total} |")


if __name__ == "__main__":
    if "--side" in sys.argv:
        side_parser = argparse.ArgumentParser()
        side_parser.add_argument("--side")
        side_parser.add_argument("--model-dir")
        side_parser.add_argument("--samples", type=int)
        side_args = side_parser.parse_args()
        run_side(side_args.model_dir, side_args.side, side_args.samples)
    else:
        main()
