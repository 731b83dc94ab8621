"""zennit-crp's extension points: research code that subclasses FeatureVisualization, its result objects,
FeatVisHook and CondAttribution gets zennit-crp's behaviour, and the results equal the default engine's or a
naive float64 re-implementation."""
import numpy as np
import pytest
import torch
from torch import nn
from zennit.composites import EpsilonPlusFlat, NameMapComposite

from crp.attribution import CondAttribution
from crp.concepts import ChannelConcept
from crp.helper import load_maximization, load_stat_targets, load_statistics
from crp.hooks import FeatVisHook
from crp.maximization import Maximization
from crp.statistics import Statistics
from crp.visualization import FeatureVisualization

N, CLASSES = 40, 3
LAYERS = ["conv1", "conv2"]
MODES = ("relevance", "activation")


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.conv1, self.relu1 = nn.Conv2d(1, 4, 3), nn.ReLU()
        self.conv2, self.relu2 = nn.Conv2d(4, 5, 3), nn.ReLU()
        self.flatten, self.fc = nn.Flatten(), nn.Linear(5 * 4 * 4, CLASSES)

    def forward(self, x):
        return self.fc(self.flatten(self.relu2(self.conv2(self.relu1(self.conv1(x))))))


class Data(torch.utils.data.Dataset):
    def __init__(self, multi=False):
        generator = torch.Generator().manual_seed(5)
        self.samples = torch.rand(N, 1, 8, 8, generator=generator)
        labels = torch.randint(0, CLASSES, (N,), generator=generator)
        if multi:  # multi-hot targets: every third sample has a second label
            hot = torch.nn.functional.one_hot(labels, CLASSES)
            for i in range(0, N, 3):
                hot[i, (labels[i] + 1) % CLASSES] = 1
            self.targets = list(hot)
        else:
            self.targets = labels.tolist()

    def __len__(self):
        return N

    def __getitem__(self, index):
        return self.samples[index], self.targets[index]


@pytest.fixture(scope="module")
def model():
    return Net().eval()


def make(cls, model, path, data=None, **kwargs):
    return cls(CondAttribution(model), data or Data(), {name: ChannelConcept() for name in LAYERS}, path=path,
               **kwargs)


def results(fv, layer="conv2"):
    """Every stored ranking of ``layer``: RelMax/ActMax and the statistics of every target."""
    out = {}
    for mode, (ranking, stats) in zip(MODES, ((fv.RelMax, fv.RelStats), (fv.ActMax, fv.ActStats))):
        out[mode, "max"] = load_maximization(ranking.PATH, layer)
        for target in load_stat_targets(stats.PATH).tolist():
            out[mode, target] = load_statistics(stats.PATH, layer, target)
    return out


def assert_same(a, b):
    assert a.keys() == b.keys()
    for key in a:
        for x, y in zip(a[key], b[key]):
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=str(key))


def naive_ranking(model, data, layer, *, mode, max_target="sum", abs_norm=True, clamp=False, k=40):
    """float64 brute force: every sample's channel values at ``layer`` (the activation, or the relevance of the
    plain gradient: the explained logit's gradient times the logit, CRP's initial relevance), sorted per channel;
    returns the top ``k`` indices and values."""
    outputs = {}
    module = dict(model.named_modules())[layer]
    handle = module.register_forward_hook(lambda _module, _inputs, o: outputs.__setitem__("out", o))
    x = data.samples.clone().requires_grad_()
    try:
        logits = model(x)
        out = outputs["out"]
        if mode == "relevance":
            chosen = logits.gather(1, torch.as_tensor(data.targets)[:, None]).squeeze(1)
            values = torch.autograd.grad(chosen, out, grad_outputs=chosen.detach())[0]
        else:
            values = out
    finally:
        handle.remove()
    values = values.detach().double()
    if clamp:
        values = values.clamp(min=0)
    flat = values.flatten(2)
    scores = flat.sum(-1) if max_target == "sum" else flat.max(-1).values
    if abs_norm:
        scores = scores / (scores.abs().sum(-1, keepdim=True) + 1e-10)
    order = torch.sort(scores, dim=0, descending=True, stable=True).indices[:k]
    return order.numpy(), scores.gather(0, order).numpy(), scores.numpy()


def assert_ranking(indices, values, expected):
    """The stored ranking is the naive one up to the order of values equal in float32: the values agree, and
    every stored sample has the naive value of its rank."""
    expected_indices, expected_values, scores = expected
    assert indices.shape == expected_indices.shape
    np.testing.assert_allclose(values, expected_values, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.take_along_axis(scores, indices, 0), expected_values, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------------------------
# the two engines agree

class ZennitFlow(FeatureVisualization):
    """Overrides a seam without changing it: run() follows zennit-crp's flow."""

    def analyze_activation(self, act, layer_name, concept, data_indices, targets):
        super().analyze_activation(act, layer_name, concept, data_indices, targets)


def test_zennit_crps_flow_stores_what_the_default_engine_stores(model, tmp_path):
    default = make(FeatureVisualization, model, tmp_path / "default")
    flow = make(ZennitFlow, model, tmp_path / "flow")
    assert default.overridden_seams() == [] and flow.overridden_seams() == ["analyze_activation"]
    default.run(None, batch_size=7, verbose=False)
    saved = flow.run(None, batch_size=7, checkpoint=2)
    assert sorted(saved) == ["a_max", "a_stats", "r_max", "r_stats"]
    assert (tmp_path / "flow" / "RelMax_sum_normed" / "conv2_data.npy").is_file()  # zennit-crp's layout
    assert not list((tmp_path / "flow" / "RelMax_sum_normed").glob("*_*_*_data.npy"))  # checkpoints collected
    assert_same(results(flow), results(default))
    for mode in MODES:
        for fv in (default, flow):
            targets, means = fv.compute_stats(2, "conv2", mode)
            assert targets.tolist() == default.compute_stats(2, "conv2", mode)[0].tolist()
    refs = [fv.get_max_reference([0, 3], "conv1", "activation", (0, 4), plot_fn=None) for fv in (default, flow)]
    assert all(torch.equal(refs[0][c], refs[1][c]) for c in (0, 3))
    heatmaps = [fv.get_max_reference(1, "conv2", "relevance", (0, 3), EpsilonPlusFlat(), plot_fn=None)[1][1]
                for fv in (default, flow)]
    assert torch.equal(heatmaps[0], heatmaps[1])


def test_default_engine_against_a_naive_ranking(model, tmp_path):
    fv = make(FeatureVisualization, model, tmp_path)
    fv.run(None, batch_size=16, verbose=False)
    data = fv.dataset
    for mode in MODES:
        indices, values, _ = load_maximization(fv.RelMax.PATH if mode == "relevance" else fv.ActMax.PATH, "conv2")
        assert_ranking(indices, values, naive_ranking(model, data, "conv2", mode=mode))


# ---------------------------------------------------------------------------------------------------------------
# subclasses in the style of the research code built on zennit-crp

class ClampedMax(Maximization):
    """ActMax of only the positive part of the activations."""

    def analyze_layer(self, rel, concept, layer_name, data_indices, targets):
        return super().analyze_layer(rel.clamp(min=0), concept, layer_name, data_indices, targets)


class ClampedActivations(FeatureVisualization):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.ActMax = ClampedMax("activation", self.max_target, self.abs_norm, self.path)


def test_clamped_activation_maximization(model, tmp_path):
    fv = make(ClampedActivations, model, tmp_path)
    assert fv.overridden_seams() == ["ActMax.analyze_layer"]
    fv.run(None, batch_size=8)
    indices, values, _ = load_maximization(fv.ActMax.PATH, "conv1")
    assert_ranking(indices, values, naive_ranking(model, fv.dataset, "conv1", mode="activation", clamp=True))
    # the statistics of the clamped ActMax rank by the clamped values too
    assert (load_statistics(fv.ActStats.PATH, "conv1", 0)[1] >= 0).all()


class MaxActivations(FeatureVisualization):
    """Unnormed ActMax by the largest neuron while RelMax sums (a setting, not a seam: the default engine)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.ActMax = Maximization("activation", "max", False, self.path)
        self.ActStats = Statistics("activation", "max", False, self.path)


def test_per_mode_settings_run_in_the_default_engine(model, tmp_path):
    fv = make(MaxActivations, model, tmp_path / "default")
    assert fv.overridden_seams() == []
    fv.run(None, batch_size=16, verbose=False)
    assert fv.ActMax.PATH.name == "ActMax_max_unnormed" and fv.RelMax.PATH.name == "RelMax_sum_normed"
    indices, values, _ = load_maximization(fv.ActMax.PATH, "conv2")
    assert_ranking(indices, values, naive_ranking(model, fv.dataset, "conv2", mode="activation", max_target="max",
                                                  abs_norm=False))
    indices, values, _ = load_maximization(fv.RelMax.PATH, "conv2")
    assert_ranking(indices, values, naive_ranking(model, fv.dataset, "conv2", mode="relevance"))

    class Flow(MaxActivations, ZennitFlow):
        pass

    flow = make(Flow, model, tmp_path / "flow")
    flow.run(None, batch_size=16)
    assert_same(results(flow), results(fv))


@pytest.mark.parametrize("sizes", [(10, 5), (100, 100)])
def test_sample_size_decides_what_is_kept(model, tmp_path, sizes):
    rows = []
    for name, cls in (("default", FeatureVisualization), ("flow", ZennitFlow)):
        fv = make(cls, model, tmp_path / name)
        fv.RelMax.SAMPLE_SIZE, fv.RelStats.SAMPLE_SIZE = sizes
        fv.run(None, batch_size=16, verbose=False) if cls is FeatureVisualization else fv.run(None, batch_size=16)
        stored = results(fv)
        rows.append(stored)
        assert len(stored["relevance", "max"][0]) == min(sizes[0], N)
        assert len(stored["activation", "max"][0]) == min(40, N)
        for target in range(CLASSES):
            count = fv.dataset.targets.count(target)
            assert len(stored["relevance", target][0]) == min(sizes[1], count)
            assert len(stored["activation", target][0]) == min(40, count)
    assert_same(rows[0], rows[1])
    expected = naive_ranking(model, Data(), "conv2", mode="relevance", k=sizes[0])
    assert_ranking(*rows[0]["relevance", "max"][:2], expected)


class MultiTarget(FeatureVisualization):
    """Multi-label dataset; its own reference loader reads the result folders as zennit-crp users did."""

    def multitarget_to_single(self, multi_target):
        return torch.nonzero(multi_target).flatten().tolist()

    def top_samples(self, layer_name, concept_id, target=None):
        if target is None:
            indices, _, _ = load_maximization(self.RelMax.PATH, layer_name)
        else:
            indices, _, _ = load_statistics(self.RelStats.PATH, layer_name, target)
        return indices[:, concept_id]


def test_multi_target_feature_visualization(model, tmp_path):
    data = Data(multi=True)
    fv = make(MultiTarget, model, tmp_path / "default", data)
    fv.run(None, batch_size=8, verbose=False)

    class Flow(MultiTarget, ZennitFlow):
        pass

    flow = make(Flow, model, tmp_path / "flow", data)
    flow.run(None, batch_size=8)
    assert_same(results(flow), results(fv))
    explained = [(i, t) for i in range(N) for t in torch.nonzero(data.targets[i]).flatten().tolist()]
    assert len(explained) == N + len(range(0, N, 3))
    for target in range(CLASSES):
        samples = {i for i, t in explained if t == target}
        top = fv.top_samples("conv1", 2, target)
        assert set(top.tolist()) <= samples and len(top) == min(40, len(samples))
    # relevances rank every explained (sample, target), activations every sample once
    counts = np.bincount(fv.top_samples("conv1", 2), minlength=N)
    labels = np.asarray([len(torch.nonzero(target)) for target in data.targets])
    assert (counts <= labels).all() and (counts == 2).any()
    activated = load_maximization(fv.ActMax.PATH, "conv1")[0]
    assert len(activated) == N and all(sorted(column) == list(range(N)) for column in activated.T)


class OwnLoop(FeatureVisualization):
    """A run_distributed of its own around FeatVisHook (as detection and segmentation projects wrote it): the
    attribution call is the subclass's, here with a batch of one sample at a time."""

    def run_distributed(self, composite, data_start, data_end, batch_size=16, checkpoint=500,  # noqa: PLR0917, ARG002
                        on_device=None):
        self.saved_checkpoints = {"r_max": [], "a_max": [], "r_stats": [], "a_stats": []}
        inputs = {}
        hooks = NameMapComposite([([name], FeatVisHook(self, concept, name, inputs, on_device))
                                  for name, concept in self.layer_map.items()])
        with hooks.context(self.attribution.model):
            for index in range(data_start, data_end):
                data, target = self.get_data_sample(index)
                inputs["sample_indices"], inputs["targets"] = np.array([index]), np.array([target])
                self.attribution(data, [{"y": [target]}], composite, exclude_parallel=False)
                if index == data_start + 9:
                    self._save_results((data_start, index + 1))
                    data_start = index + 1
        self._save_results((data_start, data_end))
        return self.saved_checkpoints


def test_own_run_distributed_around_feat_vis_hook(model, tmp_path):
    default = make(FeatureVisualization, model, tmp_path / "default")
    default.run(EpsilonPlusFlat(), batch_size=1, verbose=False)  # the same numerics as one sample at a time
    own = make(OwnLoop, model, tmp_path / "own")
    assert own.overridden_seams() == ["run_distributed"]
    own.run(EpsilonPlusFlat(), 0, N)
    assert_same(results(own), results(default))
    assert sum(len(m._forward_hooks) for m in model.modules()) == 0


# ---------------------------------------------------------------------------------------------------------------
# CondAttribution subclass for dense outputs

class Segmenter(nn.Module):
    """A 1x1-conv 'segmentation' head: class scores per pixel, ``(N, classes, H, W)``."""

    def __init__(self):
        super().__init__()
        self.features = nn.Conv2d(2, 3, 1, bias=False)
        self.head = nn.Conv2d(3, 2, 1, bias=False)
        with torch.no_grad():
            self.features.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, -1.0]])[..., None, None])
            self.head.weight.copy_(torch.tensor([[1.0, 2.0, 0.0], [0.0, 1.0, 1.0]])[..., None, None])

    def forward(self, x):
        return self.head(self.features(x))


class SegmentationAttribution(CondAttribution):
    """Explains the class score summed over the pixels of a mask, as segmentation CRP does."""

    def __init__(self, model, mask):
        super().__init__(model)
        self.mask = mask

    def relevance_init(self, prediction, target_list, init_rel):  # noqa: ARG002 (the overridden signature)
        relevance = torch.zeros_like(prediction)
        for row, targets in enumerate(target_list):
            relevance[row, targets] = prediction[row, targets] * self.mask
        return relevance


def test_cond_attribution_subclass_with_its_own_relevance_init():
    mask = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # the diagonal pixels
    attribution = SegmentationAttribution(Segmenter().eval(), mask)
    x = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[0.5, -1.0], [2.0, 1.0]]]], requires_grad=True)
    result = attribution(x, [{"features": [2], "y": [1]}, {"features": [0, 1, 2], "y": [1]}])
    # gradient of head[1] * output (masked): d/dx of f2 * (x0 - x1) and f1 * (x1) ... summed over channels
    out1 = (x[:, 1] + (x[:, 0] - x[:, 1])).detach()  # class 1 = features 1 + features 2 = x0
    through_2 = out1 * mask  # relevance entering channel 2 (weight 1) per pixel
    expected_2 = through_2 * (1.0 - 1.0)  # channel 2 = x0 - x1: the input sum over channels of its weights is 0
    assert torch.allclose(result.heatmap[0], expected_2[0])
    all_channels = out1 * mask * 1.0  # class 1 = x0: gradient 1 on channel 0 of the input
    assert torch.allclose(result.heatmap[1], all_channels[0])
    assert torch.allclose(result.prediction[0, 1], out1[0])


# ---------------------------------------------------------------------------------------------------------------
# bad input

class BadShapes(FeatureVisualization):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)

        class Truncating(Maximization):
            def analyze_layer(self, rel, concept, layer_name, data_indices, targets):
                ranked = super().analyze_layer(rel, concept, layer_name, data_indices, targets)
                return tuple(r[:2] for r in ranked)

        self.RelMax = Truncating("relevance", self.max_target, self.abs_norm, self.path)


def test_wrong_shapes_from_analyze_layer_name_the_method(model, tmp_path):
    with pytest.raises(TypeError, match=r"RelMax.analyze_layer must return four tensors .* shape \(n, C\) with n = "
                                        r"8 rows of the batch, got \[\(2, 5\), \(2, 5\), \(2, 5\), \(2, 5\)\]"):
        make(BadShapes, model, tmp_path).run(None, batch_size=8)
    assert list(tmp_path.iterdir()) == []  # nothing written
    assert sum(len(m._forward_hooks) for m in model.modules()) == 0


def test_checkpoints_of_other_settings_are_not_merged(model, tmp_path):
    fv = make(ZennitFlow, model, tmp_path)
    checkpoints = fv.run_distributed(None, 0, 16, batch_size=8, checkpoint=1)
    assert len(checkpoints["r_max"]) == 2 * len(LAYERS)
    fv.RelMax.SAMPLE_SIZE = 10
    with pytest.raises(ValueError, match=r"written with other settings \(differs in \['sample_size'\]"):
        fv.collect_results(checkpoints)
    assert all((tmp_path / "RelMax_sum_normed" / f"{p.split('/')[-1]}data.npy").is_file()
               for p in checkpoints["r_max"])  # nothing was deleted


def test_result_objects_check_their_arguments(tmp_path):
    with pytest.raises(ValueError, match="mode must be one of 'relevance', 'activation', got 'gradient'"):
        Maximization("gradient")
    with pytest.raises(ValueError, match="max_target must be one of 'sum', 'max', got 'mean'"):
        Statistics("relevance", "mean")
    ranking = Maximization("relevance", path=tmp_path)
    assert ranking.PATH == tmp_path / "RelMax_sum_unnormed" and not ranking.PATH.exists()
    ranking.SAMPLE_SIZE = 0
    with pytest.raises(ValueError, match="Maximization.SAMPLE_SIZE must be an int >= 1, got 0"):
        ranking.analyze_layer(torch.ones(2, 3), ChannelConcept(), "fc", np.arange(2), np.zeros(2))
