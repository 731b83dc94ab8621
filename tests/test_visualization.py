"""FeatureVisualization on a tiny CNN: exact top-k against brute force, invariances, resume, references, errors."""
import json
import shutil
import warnings

import numpy as np
import pytest
import torch
from zennit.composites import EpsilonPlusFlat

from crp._features.ranking import ModeSettings, Rankings
from crp._features.store import ResultStore, legacy_folder_name, pack_records
from crp.attribution import CondAttribution
from crp.cache import ImageCache
from crp.concepts import ChannelConcept
from crp.helper import load_maximization, load_stat_targets, load_statistics
from crp.visualization import CorruptStoreError, FeatureVisualization

from helpers import LAYERS, N_CLASSES, N_SAMPLES, TensorData, TinyNet

K = 5


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return TinyNet().double().eval()


def make_fv(model, path, dataset=None, **kwargs):
    layer_map = {name: ChannelConcept() for name in LAYERS}
    return FeatureVisualization(CondAttribution(model), dataset or TensorData(), layer_map, path=path,
                                top_k=kwargs.pop("top_k", K), **kwargs)


def stored_arrays(path):
    store = ResultStore(path)
    return {layer: {kind: np.asarray(a) for kind, a in store.layer_arrays(layer).items()} for layer in LAYERS}


def assert_same_results(path_a, path_b):
    a, b = stored_arrays(path_a), stored_arrays(path_b)
    manifest_a, manifest_b = ResultStore(path_a).manifest, ResultStore(path_b).manifest
    assert manifest_a["targets"] == manifest_b["targets"] and manifest_a["counts"] == manifest_b["counts"]
    for layer in LAYERS:
        for kind in ("max", "stats"):
            np.testing.assert_array_equal(a[layer][kind], b[layer][kind])


def reference_pass(model, dataset, composite):
    """Independent relevance computation: plain autograd with the composite, output gradient one-hot * logit."""
    x = dataset.samples.clone().requires_grad_()
    outputs, grads, handles = {}, {}, []
    modules = dict(model.named_modules())

    def hook(name):
        def forward_hook(_module, _inputs, output):
            outputs[name] = output.detach()
            output.register_hook(lambda grad: grads.__setitem__(name, grad.detach()))
        return forward_hook

    with composite.context(model):
        try:
            handles = [modules[name].register_forward_hook(hook(name)) for name in LAYERS]
            logits = model(x)
            one_hot = torch.nn.functional.one_hot(torch.tensor(dataset.targets), N_CLASSES).double()
            logits.backward(one_hot * logits.detach())
        finally:
            for handle in handles:
                handle.remove()
    return outputs, grads


def brute_force_top_k(output, targets, max_target, abs_norm, group=None):
    """Naive ranking: per channel value, sorted by (value desc, index asc) in plain Python."""
    flat = output.reshape(*output.shape[:2], -1).double()
    values = flat.sum(-1) if max_target == "sum" else flat.max(-1).values
    if abs_norm:
        values = values / (values.abs().sum(-1, keepdim=True) + 1e-10)
    values = values.float().numpy()
    neurons = flat.argmax(-1).numpy()
    keep = [i for i in range(len(values)) if group is None or targets[i] == group]
    result = []
    for c in range(values.shape[1]):
        order = sorted(keep, key=lambda i: (-values[i, c], i))[:K]
        result.append((order, values[order, c], neurons[order, c]))
    return result


@pytest.mark.parametrize("max_target,abs_norm", [("sum", True), ("max", True), ("sum", False), ("max", False)])
def test_run_matches_brute_force(model, tmp_path, max_target, abs_norm):
    dataset = TensorData()
    fv = make_fv(model, tmp_path, dataset, max_target=max_target, abs_norm=abs_norm)
    files = fv.run(EpsilonPlusFlat(), 0, N_SAMPLES, batch_size=16, verbose=False)
    assert len(files) == 1 + 2 * len(LAYERS)
    activations, relevances = reference_pass(model, dataset, EpsilonPlusFlat())
    assert load_stat_targets(fv.RelStats.PATH).tolist() == sorted(set(dataset.targets))
    for mode, outputs, max_folder, stats_folder in (("relevance", relevances, fv.RelMax, fv.RelStats),
                                                    ("activation", activations, fv.ActMax, fv.ActStats)):
        for layer in LAYERS:
            for group in [None] + sorted(set(dataset.targets)):
                expected = brute_force_top_k(outputs[layer], dataset.targets, max_target, abs_norm, group)
                if group is None:
                    indices, values, neurons = load_maximization(max_folder.PATH, layer)
                else:
                    indices, values, neurons = load_statistics(stats_folder.PATH, layer, group)
                for c, (order, want_values, want_neurons) in enumerate(expected):
                    assert indices[:, c].tolist() == order, (mode, layer, group, c)
                    np.testing.assert_allclose(values[:, c], want_values, rtol=1e-5, atol=1e-7)
                    assert neurons[:, c].tolist() == want_neurons.tolist()


def test_results_do_not_depend_on_batch_size_checkpoints_or_workers(model, tmp_path):
    make_fv(model, tmp_path / "a").run(EpsilonPlusFlat(), 0, N_SAMPLES, batch_size=64, verbose=False)
    make_fv(model, tmp_path / "b").run(EpsilonPlusFlat(), 0, N_SAMPLES, batch_size=7, checkpoint=1, verbose=False)
    make_fv(model, tmp_path / "c").run(EpsilonPlusFlat(), 0, N_SAMPLES, batch_size=13, checkpoint=2, num_workers=2,
                                       verbose=False)
    assert_same_results(tmp_path / "a", tmp_path / "b")
    assert_same_results(tmp_path / "a", tmp_path / "c")


def test_kill_and_resume_gives_identical_results(model, tmp_path):
    make_fv(model, tmp_path / "full").run(EpsilonPlusFlat(), 0, N_SAMPLES, batch_size=8, verbose=False)
    broken = make_fv(model, tmp_path / "resumed", TensorData(fail_at=43))
    with pytest.raises(RuntimeError, match="killed at 43"):
        broken.run(EpsilonPlusFlat(), 0, N_SAMPLES, batch_size=8, checkpoint=2, verbose=False)
    manifest = ResultStore(tmp_path / "resumed").manifest
    assert manifest["next_index"] == 32 and not manifest["complete"]  # checkpoints after batches 2 and 4
    assert manifest["dataset_fingerprint"]["indices"] == [0, 31]
    changed = TensorData()
    changed.samples[31] += 1.0
    shutil.copytree(tmp_path / "resumed", tmp_path / "changed")
    with pytest.warns(UserWarning, match=r"dataset items \[0, 31\] differ from those the interrupted run"):
        make_fv(model, tmp_path / "changed", changed).run(EpsilonPlusFlat(), 0, N_SAMPLES, batch_size=8,
                                                          resume=True, verbose=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the same dataset: no warning
        make_fv(model, tmp_path / "resumed").run(EpsilonPlusFlat(), 0, N_SAMPLES, batch_size=5, checkpoint=3,
                                                 resume=True, verbose=False)
    assert_same_results(tmp_path / "full", tmp_path / "resumed")
    assert ResultStore(tmp_path / "resumed").manifest["complete"]
    # a finished run resumes without touching the data
    make_fv(model, tmp_path / "resumed", TensorData(fail_at=0)).run(EpsilonPlusFlat(), resume=True, verbose=False)


def test_kill_during_checkpoint_keeps_the_previous_one(model, tmp_path, monkeypatch):
    import crp._features.store

    make_fv(model, tmp_path / "full").run(EpsilonPlusFlat(), batch_size=8, verbose=False)
    saves = []
    original = crp._features.store._atomic_save

    def dying_save(file, array):
        saves.append(file)
        if len(saves) == 2 * len(LAYERS) + 2:  # inside the second checkpoint
            raise KeyboardInterrupt
        original(file, array)

    monkeypatch.setattr(crp._features.store, "_atomic_save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        make_fv(model, tmp_path / "run").run(EpsilonPlusFlat(), batch_size=8, checkpoint=2, verbose=False)
    monkeypatch.undo()
    assert ResultStore(tmp_path / "run").manifest["next_index"] == 16
    make_fv(model, tmp_path / "run").run(EpsilonPlusFlat(), batch_size=8, resume=True, verbose=False)
    assert_same_results(tmp_path / "full", tmp_path / "run")
    assert [p.name for p in (tmp_path / "run").iterdir() if p.is_dir()] == \
        [ResultStore(tmp_path / "run").manifest["directory"]]


def test_merge_of_disjoint_ranges_equals_one_run(model, tmp_path):
    make_fv(model, tmp_path / "full").run(EpsilonPlusFlat(), batch_size=16, verbose=False)
    parts = []
    for name, (start, stop) in {"a": (0, 24), "b": (24, N_SAMPLES)}.items():
        make_fv(model, tmp_path / name).run(EpsilonPlusFlat(), start, stop, batch_size=16, verbose=False)
        layers, targets, counts = ResultStore(tmp_path / name).checkpoint()
        settings = {mode: ModeSettings(k_max=K, k_stats=K) for mode in ("relevance", "activation")}
        parts.append(Rankings.from_arrays({n: ChannelConcept() for n in LAYERS}, layers, targets, counts,
                                          settings=settings))
    merged = parts[1].merge(parts[0])
    assert merged.counts() == ResultStore(tmp_path / "full").manifest["counts"]
    merged, full = merged.to_arrays(), stored_arrays(tmp_path / "full")
    for layer in LAYERS:
        for kind in ("max", "stats"):
            np.testing.assert_array_equal(pack_records(merged[layer][kind]), full[layer][kind])


def test_refuses_other_configurations(model, tmp_path):
    make_fv(model, tmp_path).run(EpsilonPlusFlat(), batch_size=32, verbose=False)
    with pytest.raises(FileExistsError, match=r"different configuration \(differs in \['k', 'modes'\]\)"):
        make_fv(model, tmp_path, top_k=K + 1).run(EpsilonPlusFlat(), verbose=False)
    with pytest.raises(FileExistsError, match=r"differs in \['composite'\]"):
        make_fv(model, tmp_path).run(EpsilonPlusFlat(epsilon=0.1), resume=True, verbose=False)
    with pytest.raises(FileExistsError, match=r"differs in \['data_end'\]"):
        make_fv(model, tmp_path).run(EpsilonPlusFlat(), 0, 32, resume=True, verbose=False)
    before = (tmp_path / "manifest.json").read_text()
    assert json.loads(before)["complete"]


def test_refuses_a_zennit_crp_folder(model, tmp_path):
    (tmp_path / "RelMax_sum_normed").mkdir()
    with pytest.raises(FileExistsError, match="holds results in zennit-crp.s layout; run into another path"):
        make_fv(model, tmp_path).run(EpsilonPlusFlat(), verbose=False)


def test_corrupt_store_is_reported_and_left_alone(model, tmp_path):
    fv = make_fv(model, tmp_path)
    fv.run(EpsilonPlusFlat(), 0, 32, batch_size=8, checkpoint=2, verbose=False)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    manifest["complete"], manifest["next_index"] = False, 16
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    file = tmp_path / manifest["directory"] / "conv2.stats.npy"
    data = bytearray(file.read_bytes())
    data[-3] ^= 0x55
    file.write_bytes(bytes(data))
    with pytest.raises(CorruptStoreError, match=r"conv2\.stats\.npy does not match its checksum"):
        fv.run(EpsilonPlusFlat(), 0, 32, batch_size=8, resume=True, verbose=False)
    assert file.read_bytes() == bytes(data)
    file.write_bytes(bytes(data[:-20]))
    with pytest.raises(CorruptStoreError, match=r"conv2\.stats\.npy is truncated"):
        fv.get_stats_reference(0, "conv2", 1)


@pytest.fixture(scope="module")
def analyzed(model, tmp_path_factory):
    path = tmp_path_factory.mktemp("fv")
    fv = make_fv(model, path)
    fv.run(EpsilonPlusFlat(), batch_size=32, verbose=False)
    return fv


def test_max_reference_samples_and_heatmaps(analyzed):
    fv = analyzed
    indices, _, neurons = load_maximization(fv.RelMax.PATH, "conv2")
    samples = fv.get_max_reference(torch.tensor([1, 3]), "conv2", r_range=(1, 4))
    assert set(samples) == {1, 3}
    assert torch.equal(samples[3], fv.dataset.samples[indices[1:4, 3]])
    raw = fv.get_max_reference(2, "conv2", "relevance", (0, 3), EpsilonPlusFlat(), plot_fn=None)
    data, heatmaps = raw[2]
    x = fv.dataset.samples[indices[:3, 2]].clone().requires_grad_()
    expected = fv.attribution(x, [{"conv2": [2]}], EpsilonPlusFlat(), start_layer="conv2", exclude_parallel=False)
    torch.testing.assert_close(heatmaps, expected.heatmap)
    rf = fv.get_max_reference(2, "conv2", "relevance", (0, 3), EpsilonPlusFlat(), rf=True, plot_fn=None)[2][1]
    conditions = [{"conv2": {2: [int(n)]}} for n in neurons[:3, 2]]
    expected = fv.attribution(x, conditions, EpsilonPlusFlat(), start_layer="conv2",
                              mask_map=ChannelConcept.mask_rf, exclude_parallel=False)
    torch.testing.assert_close(rf, expected.heatmap)
    full = fv.get_max_reference(2, "conv2", "relevance", (0, 3), EpsilonPlusFlat(), plot_fn=None,
                                full_backward=True)[2][1]
    targets = [fv.dataset.targets[i] for i in indices[:3, 2]]
    expected = fv.attribution(x, [{"conv2": [2], "y": [t]} for t in targets], EpsilonPlusFlat(),
                              exclude_parallel=False)
    torch.testing.assert_close(full, expected.heatmap)


def test_plot_fn_receives_unpreprocessed_samples(model, tmp_path):
    fv = make_fv(model, tmp_path, preprocess_fn=lambda x: x * 2)
    fv.run(EpsilonPlusFlat(), verbose=False)
    calls = []

    def plot(samples, heatmaps, rf):
        calls.append((samples, heatmaps, rf))
        return "drawn"

    assert fv.get_max_reference(0, "fc1", "activation", (0, 2), EpsilonPlusFlat(), plot_fn=plot) == {0: "drawn"}
    indices = load_maximization(fv.ActMax.PATH, "fc1")[0]
    assert torch.equal(calls[0][0], fv.dataset.samples[indices[:2, 0]]) and calls[0][2] is False


def test_stats_reference_and_compute_stats(analyzed):
    fv = analyzed
    refs = fv.get_stats_reference(1, "conv1", [0, 2], "activation", (0, 2))
    assert list(refs) == ["1:0", "1:2"]
    indices = load_statistics(fv.ActStats.PATH, "conv1", 2)[0]
    assert torch.equal(refs["1:2"], fv.dataset.samples[indices[:2, 1]])
    targets, values = fv.compute_stats(1, "conv1", "relevance", top_N=2, mean_N=3, norm=False)
    means = {t: load_statistics(fv.RelStats.PATH, "conv1", t)[1][:3, 1].mean() for t in range(N_CLASSES)}
    expected = sorted(means, key=lambda t: (-means[t], t))[:2]
    assert targets.tolist() == expected
    np.testing.assert_allclose(values.numpy(), [means[t] for t in expected], rtol=1e-6)
    _, normed = fv.compute_stats(1, "conv1", "relevance", top_N=2, mean_N=3, norm=True)
    assert normed[0] == 1


class MultiLabel(TensorData):
    """Targets are lists of classes."""

    def __init__(self):
        super().__init__()
        self.targets = [[t] if i % 3 else [t, (t + 1) % N_CLASSES] for i, t in enumerate(self.targets)]


class MultiFV(FeatureVisualization):
    def multitarget_to_single(self, multi_target):
        return multi_target


def test_multitarget(model, tmp_path):
    dataset = MultiLabel()
    fv = MultiFV(CondAttribution(model), dataset, {"fc1": ChannelConcept()}, path=tmp_path, top_k=K)
    fv.run(EpsilonPlusFlat(), batch_size=10, verbose=False)
    counts = ResultStore(tmp_path).manifest["counts"]
    n_rows = sum(len(t) for t in dataset.targets)
    assert counts["relevance"][0] == n_rows and counts["activation"][0] == N_SAMPLES
    first = [t[0] for t in dataset.targets]
    assert counts["activation"][1:] == [first.count(c) for c in range(N_CLASSES)]
    # relevance rows of class 1: brute force over every (sample, target) pair with target 1
    rows = [(i, t) for i, ts in enumerate(dataset.targets) for t in ts if t == 1]
    x = dataset.samples[[i for i, _ in rows]].clone().requires_grad_()
    result = fv.attribution(x, [{"y": [1]}], EpsilonPlusFlat(), record_layer=["fc1"], exclude_parallel=False)
    values = result.relevances["fc1"].float()
    values = values / (values.abs().sum(-1, keepdim=True) + 1e-10)
    indices = load_statistics(fv.RelStats.PATH, "fc1", 1)[0]
    for c in range(values.shape[1]):
        order = sorted(range(len(rows)), key=lambda r: (-values[r, c].item(), rows[r][0]))[:K]
        assert indices[:, c].tolist() == [rows[r][0] for r in order]


PLOT_CALLS = []


def counting_plot(samples, heatmaps, rf):  # noqa: ARG001 - the plot_fn interface
    """A plot function that records its calls (module level: a closure over the list would change its key)."""
    from PIL import Image

    PLOT_CALLS.append(len(samples))
    return [Image.new("L", (2, 2), i) for i in range(len(heatmaps))]


def test_image_cache_keys(analyzed, tmp_path):
    fv = analyzed
    fv.Cache = ImageCache(tmp_path / "cache")
    calls, plot = PLOT_CALLS, counting_plot
    calls.clear()
    try:
        first = fv.get_max_reference([0, 1], "conv1", r_range=(0, 3), composite=EpsilonPlusFlat(), plot_fn=plot)
        assert calls == [3, 3]
        again = fv.get_max_reference([0, 1], "conv1", r_range=(0, 4), composite=EpsilonPlusFlat(), plot_fn=plot)
        assert calls == [3, 3, 1, 1]  # only rank 3 was missing
        assert [image.getpixel((0, 0)) for image in again[0]] == [0, 1, 2, 0]
        assert len(first[0]) == 3
        fv.get_max_reference(0, "conv1", r_range=(0, 3), composite=EpsilonPlusFlat(epsilon=0.5), plot_fn=plot)
        fv.get_max_reference(0, "conv1", r_range=(0, 3), composite=EpsilonPlusFlat(), rf=True, plot_fn=plot)
        fv.get_max_reference(0, "conv1", "activation", (0, 3), composite=EpsilonPlusFlat(), plot_fn=plot)
        fv.get_max_reference(0, "conv1", r_range=(0, 3), composite=EpsilonPlusFlat(), plot_fn=plot,
                             full_backward=True)
        assert calls == [3, 3, 1, 1, 3, 3, 3, 3]  # every changed setting recomputes
        fv.get_max_reference(0, "conv1", r_range=(0, 3), composite=EpsilonPlusFlat(), plot_fn=plot, overwrite=True)
        stats = fv.get_stats_reference(0, "conv1", [1], r_range=(0, 2), composite=EpsilonPlusFlat(), plot_fn=plot)
        assert list(stats) == ["0:1"] and calls[-2:] == [3, 2]
        fv.precompute_ref({"conv1": [2]}, EpsilonPlusFlat(), rf=False, stats=True, top_N=1, r_range=(0, 2),
                          plot_list=[plot], verbose=False)
        n_calls = len(calls)
        fv.get_max_reference(2, "conv1", r_range=(0, 2), composite=EpsilonPlusFlat(), plot_fn=plot)
        assert len(calls) == n_calls  # served from the cache
        with pytest.raises(TypeError, match="ImageCache saves PIL images"):
            fv.get_max_reference(3, "conv1", r_range=(0, 2), composite=EpsilonPlusFlat(),
                                 plot_fn=lambda *_args, **_kwargs: [1])
    finally:
        fv.Cache = None


def test_layer_map_and_constructor_errors(model, tmp_path):
    attribution = CondAttribution(model)
    with pytest.raises(KeyError, match="layer_map: layer 'conv3' is not a module"):
        FeatureVisualization(attribution, TensorData(), {"conv3": ChannelConcept()}, path=tmp_path)
    with pytest.raises(TypeError, match=r"Concept instances .* got \{'conv1': <class 'crp[._a-z]*.ChannelConcept'>\}"):
        FeatureVisualization(attribution, TensorData(), {"conv1": ChannelConcept}, path=tmp_path)
    with pytest.raises(TypeError, match="non-empty dict"):
        FeatureVisualization(attribution, TensorData(), {}, path=tmp_path)
    with pytest.raises(TypeError, match="attribution must be a crp.attribution.CondAttribution"):
        FeatureVisualization(model, TensorData(), {"conv1": ChannelConcept()}, path=tmp_path)
    with pytest.raises(TypeError, match="dataset must support len"):
        FeatureVisualization(attribution, 5, {"conv1": ChannelConcept()}, path=tmp_path)
    with pytest.raises(ValueError, match="max_target must be 'sum' or 'max', got 'mean'"):
        make_fv(model, tmp_path, max_target="mean")
    with pytest.raises(TypeError, match="abs_norm must be a bool"):
        make_fv(model, tmp_path, abs_norm="yes")
    with pytest.raises(TypeError, match="cache must be a crp.cache.Cache"):
        make_fv(model, tmp_path, cache="cache")
    with pytest.raises(TypeError, match="preprocess_fn must be callable"):
        make_fv(model, tmp_path, preprocess_fn=3)
    with pytest.raises(ValueError, match="top_k must be an int >= 1, got 0"):
        make_fv(model, tmp_path, top_k=0)


class BadItems(TensorData):
    def __init__(self, kind):
        super().__init__(8)
        self.kind = kind

    def __getitem__(self, index):
        sample, target = super().__getitem__(index)
        if index == 5:
            return {"array": sample.numpy(), "tuple": (sample,), "float": (sample, 1.5),
                    "negative": (sample, -1), "shape": (sample[:, :4], target)}[self.kind]
        return sample, target


@pytest.mark.parametrize("kind,error,match", [
    ("array", TypeError, r"dataset\[5\] must be a \(torch.Tensor, target\) pair, got ndarray"),
    ("tuple", TypeError, r"dataset\[5\] must be a \(torch.Tensor, target\) pair, got tuple of \(Tensor\)"),
    ("float", TypeError, r"the target of dataset\[5\] must be a non-negative int, got 1.5"),
    ("negative", TypeError, r"the target of dataset\[5\] must be a non-negative int, got -1"),
    ("shape", ValueError, r"dataset samples 0..7 have different shapes"),
])
def test_bad_dataset_items(model, tmp_path, kind, error, match):
    with pytest.raises(error, match=match):
        make_fv(model, tmp_path, BadItems(kind)).run(EpsilonPlusFlat(), batch_size=8, verbose=False)


@pytest.mark.parametrize("kwargs,error,match", [
    ({"data_start": 10, "data_end": 5}, ValueError, r"0 <= data_start < data_end <= len\(dataset\) = 64"),
    ({"data_end": 65}, ValueError, "data_end=65"),
    ({"data_start": 1.0}, TypeError, "data_start must be an int"),
    ({"batch_size": 0}, ValueError, "batch_size must be an int >= 1, got 0"),
    ({"checkpoint": -1}, ValueError, "checkpoint must be an int >= 1, got -1"),
    ({"num_workers": -1}, ValueError, "num_workers must be an int >= 0"),
])
def test_bad_run_arguments(model, tmp_path, kwargs, error, match):
    with pytest.raises(error, match=match):
        make_fv(model, tmp_path).run(EpsilonPlusFlat(), verbose=False, **kwargs)


def test_reference_errors(analyzed, model, tmp_path):
    fv = analyzed
    with pytest.raises(FileNotFoundError, match="call FeatureVisualization.run first"):
        make_fv(model, tmp_path).get_max_reference(0, "conv1")
    with pytest.raises(FileNotFoundError, match="call FeatureVisualization.run first"):
        make_fv(model, tmp_path).get_stats_reference(0, "conv1", 1)
    with pytest.raises(FileNotFoundError, match="call FeatureVisualization.run first"):
        make_fv(model, tmp_path).compute_stats(0, "conv1")
    with pytest.raises(ValueError, match="mode must be 'relevance' or 'activation', got 'rel'"):
        fv.get_max_reference(0, "conv1", mode="rel")
    with pytest.raises(ValueError, match="mode must be 'relevance' or 'activation'"):
        fv.compute_stats(0, "conv1", mode="act")
    for bad in [(3, 3), (-1, 2), (0,), "0:8", (0.0, 2)]:
        with pytest.raises(ValueError, match="r_range must be a pair of ints"):
            fv.get_max_reference(0, "conv1", r_range=bad)
    with pytest.raises(ValueError, match=r"r_range starts at rank 5, but the relevance maximization .* holds 5"):
        fv.get_max_reference(0, "conv1", r_range=(5, 8))
    with pytest.raises(IndexError, match=r"concept ids \[4\] are out of range for layer 'conv1' with 4 concepts"):
        fv.get_max_reference([0, 4], "conv1")
    with pytest.raises(IndexError, match=r"concept ids \[-1\] are out of range"):
        fv.get_stats_reference(-1, "conv1", 0)
    with pytest.raises(IndexError, match=r"concept ids \[6\] are out of range for layer 'fc1' with 6"):
        fv.compute_stats(6, "fc1")
    with pytest.raises(TypeError, match="concept ids must be ints"):
        fv.get_max_reference("a", "conv1")
    with pytest.raises(KeyError, match="layer 'fc2' is not in the layer_map"):
        fv.get_max_reference(0, "fc2")
    with pytest.raises(KeyError, match=r"no relevance statistics for targets \[7\]"):
        fv.get_stats_reference(0, "conv1", [1, 7])
    with pytest.raises(ValueError, match="batch_size must be an int >= 1"):
        fv.get_max_reference(0, "conv1", batch_size=0)
    with pytest.raises(TypeError, match="plot_fn must be a function"):
        fv.get_stats_reference(0, "conv1", 1, plot_fn="vis_img_heatmap")
    with pytest.raises(ValueError, match="precompute_ref stores images in a cache"):
        fv.precompute_ref({"conv1": [0]}, EpsilonPlusFlat())
    with pytest.warns(UserWarning, match="rf=True needs a composite"):
        fv.get_max_reference(0, "conv1", rf=True)


def test_precompute_errors(analyzed, tmp_path):
    fv = analyzed
    fv.Cache = ImageCache(tmp_path)
    try:
        with pytest.raises(ValueError, match="precompute_ref needs a zennit composite"):
            fv.precompute_ref({"conv1": [0]}, None)
        with pytest.raises(TypeError, match="plot_list must be a non-empty list of plot functions"):
            fv.precompute_ref({"conv1": [0]}, EpsilonPlusFlat(), plot_list=[])
    finally:
        fv.Cache = None


def test_reads_zennit_crp_results_for_references(model, tmp_path):
    """A folder in zennit-crp 0.6's layout serves get_max_reference, get_stats_reference and compute_stats."""
    dataset = TensorData()
    for mode in ("relevance", "activation"):
        folder = tmp_path / legacy_folder_name(mode, "max", "sum", True)
        folder.mkdir()
        np.save(folder / "conv1_data.npy", np.array([[5, 6, 7, 8], [9, 10, 11, 12]]))
        np.save(folder / "conv1_rel.npy", np.ones((2, 4), np.float32))
        np.save(folder / "conv1_rf.npy", np.zeros((2, 4), np.int64))
        stats = tmp_path / legacy_folder_name(mode, "stats", "sum", True)
        (stats / "conv1").mkdir(parents=True)
        np.save(stats / "targets.npy", np.array(["0", "2"]))
        for target, value in ((0, 0.5), (2, 0.7)):
            np.save(stats / "conv1" / f"{target}_data.npy", np.full((1, 4), 20 + target))
            np.save(stats / "conv1" / f"{target}_rel.npy", np.full((1, 4), value, np.float32))
            np.save(stats / "conv1" / f"{target}_rf.npy", np.zeros((1, 4), np.int64))
    fv = FeatureVisualization(CondAttribution(model), dataset, {"conv1": ChannelConcept()}, path=tmp_path)
    samples = fv.get_max_reference(2, "conv1", r_range=(0, 2))[2]
    assert torch.equal(samples, dataset.samples[[7, 11]])
    assert torch.equal(fv.get_stats_reference(1, "conv1", 2)["1:2"], dataset.samples[[22]])
    targets, values = fv.compute_stats(3, "conv1")
    assert targets.tolist() == [2, 0] and values.tolist() == pytest.approx([0.7, 0.5])


def test_attribution_calls_free_their_recordings(model):
    """run() calls CondAttribution once per batch: nothing of a call may outlive it (no reference cycles)."""
    import gc

    import crp._attribution.probes

    attribution = CondAttribution(model)
    x = TensorData().samples[:4].clone().requires_grad_()
    gc.collect()
    gc.disable()
    try:
        for _ in range(3):
            attribution(x, [{"y": [0]}], EpsilonPlusFlat(), record_layer=LAYERS, exclude_parallel=False)
        kinds = (crp._attribution.probes.Recording, crp._attribution.probes.Probe)
        alive = [o for o in gc.get_objects() if type(o) in kinds]
    finally:
        gc.enable()
    assert alive == []



def test_normed_stats_of_a_concept_without_relevance_stay_zero(tmp_path):
    torch.manual_seed(0)
    dead = TinyNet().double().eval()
    with torch.no_grad():  # channel 2 of conv1 never activates, so it never receives relevance
        dead.conv1.weight[2] = 0
        dead.conv1.bias[2] = -1
    fv = make_fv(dead, tmp_path / "fv")
    fv.run(EpsilonPlusFlat(), batch_size=8, verbose=False)
    _, raw = fv.compute_stats(2, "conv1")
    _, values = fv.compute_stats(2, "conv1", norm=True)
    assert torch.equal(raw, torch.zeros_like(raw)) and torch.equal(values, torch.zeros_like(values))
    _, alive = fv.compute_stats(1, "conv1", norm=True)
    assert alive[0] == 1


def test_find_files_names_the_handles_of_a_store_and_zennit_crp_folders(analyzed, tmp_path):
    from crp.helper import find_files

    r_max, a_max, r_stats, a_stats, rf = find_files(analyzed.path)
    assert (r_max, a_max, r_stats, a_stats) == ([str(analyzed.RelMax.PATH)], [str(analyzed.ActMax.PATH)],
                                                [str(analyzed.RelStats.PATH)], [str(analyzed.ActStats.PATH)])
    assert rf == []
    np.testing.assert_array_equal(load_maximization(r_max[0], "conv2")[0], load_maximization(analyzed.RelMax.PATH,
                                                                                             "conv2")[0])
    for name in ("RelMax_max_unnormed", "RF_data", "other"):
        (tmp_path / name).mkdir()
    assert find_files(tmp_path) == ([str(tmp_path / "RelMax_max_unnormed")], [], [], [], [str(tmp_path / "RF_data")])
    with pytest.raises(NotADirectoryError, match="is not a folder"):
        find_files(tmp_path / "missing")


def test_a_dataloader_gives_its_dataset_and_its_batch_size(model, tmp_path):
    dataset = TensorData()
    loader = torch.utils.data.DataLoader(dataset, batch_size=5)
    direct = make_fv(model, tmp_path / "direct")
    direct.run(EpsilonPlusFlat(), verbose=False, batch_size=7)
    fv = make_fv(model, tmp_path / "loader", dataset=loader)
    assert fv.dataset is dataset and fv.loader_batch_size == 5
    sizes = []
    original = fv._loader

    def spy(start, stop, batch_size, num_workers):
        sizes.append(batch_size)
        return original(start, stop, batch_size, num_workers)

    fv._loader = spy
    fv.run(EpsilonPlusFlat(), verbose=False)
    assert sizes == [5]  # run() took the loader's batch size; the results do not depend on it
    assert_same_results(tmp_path / "direct", tmp_path / "loader")
    fv.run(EpsilonPlusFlat(), verbose=False, batch_size=3)
    assert sizes == [5, 3]
    assert make_fv(model, tmp_path / "plain").loader_batch_size is None


def test_a_shuffling_dataloader_warns_that_its_order_is_not_used(model, tmp_path):
    loader = torch.utils.data.DataLoader(TensorData(), batch_size=5, shuffle=True, collate_fn=lambda items: items)
    with pytest.warns(UserWarning, match=r"dataset is a DataLoader: its dataset is used, not its sampler "
                                         r"\(RandomSampler: samples are read in index order\) or its collate_fn"):
        make_fv(model, tmp_path, dataset=loader)
