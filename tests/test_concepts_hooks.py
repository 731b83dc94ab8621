"""ChannelConcept, the mask functions, MaskHook on zennit's protocol, helpers and argument coercion."""
import numpy as np
import pytest
import torch
from torch import nn
from zennit.composites import NameMapComposite

from crp._attribution.conditions import broadcast_rows, canonical_conditions, canonical_ids
from crp._attribution.hooks import apply_masks
from crp.concepts import ChannelConcept, ChannelMask, Concept, NeuronMask
from crp.helper import abs_norm, get_layer_names, get_output_shapes, max_norm
from crp.hooks import MaskHook

from helpers import hooks_left


def test_concept_is_abstract():
    with pytest.raises(TypeError):
        Concept()


def test_attribute_sums_and_normalizes():
    relevance = torch.tensor([[[1.0, 2.0], [-3.0, 0.0]], [[0.0, 0.0], [4.0, 4.0]]])  # (N=2, C=2, 2)
    concept = ChannelConcept()
    assert torch.equal(concept.attribute(relevance, abs_norm=False), torch.tensor([[3.0, -3.0], [0.0, 8.0]]))
    normed = concept.attribute(relevance)
    assert torch.allclose(normed, torch.tensor([[0.5, -0.5], [0.0, 1.0]]))
    masked = concept.attribute(relevance, mask=torch.tensor([1.0, 0.0]), abs_norm=False)
    assert torch.equal(masked, torch.tensor([[1.0, -3.0], [0.0, 4.0]]))
    assert torch.equal(concept.attribute(torch.tensor([[2.0, -6.0]]), abs_norm=False), torch.tensor([[2.0, -6.0]]))


def test_reference_sampling_sum_max_and_ties():
    # 3 samples, 2 channels, 3 neurons; channel 0 sums: [3, 3, 1] (tie -> lower index first), channel 1: [0, 5, 2]
    relevance = torch.tensor([
        [[1.0, 2.0, 0.0], [0.0, 0.0, 0.0]],
        [[3.0, 0.0, 0.0], [1.0, 1.0, 3.0]],
        [[0.0, 0.0, 1.0], [2.0, 0.0, 0.0]],
    ])
    order, values, neurons = ChannelConcept().reference_sampling(relevance, abs_norm=False)
    assert order.T.tolist() == [[0, 1, 2], [1, 2, 0]]
    assert values.T.tolist() == [[3.0, 3.0, 1.0], [5.0, 2.0, 0.0]]
    assert neurons.T.tolist() == [[1, 0, 2], [2, 0, 0]]
    order, values, _ = ChannelConcept().reference_sampling(relevance, max_target="max", abs_norm=False)
    assert order.T.tolist() == [[1, 0, 2], [1, 2, 0]]
    assert values.T.tolist() == [[3.0, 2.0, 1.0], [3.0, 2.0, 0.0]]
    _, normed, _ = ChannelConcept().reference_sampling(relevance)
    assert torch.allclose(normed[:, 0], torch.tensor([1.0, 3 / 8, 1 / 3]))
    with pytest.raises(ValueError, match="max_target must be one of 'sum', 'max', got 'mean'"):
        ChannelConcept().reference_sampling(relevance, max_target="mean")
    with pytest.raises(ValueError, match=r"relevance must be a tensor of shape \(N, C, ...\), got Tensor of shape"):
        ChannelConcept().attribute(torch.ones(3))
    with pytest.raises(TypeError, match=r"relevance must be a tensor of shape \(N, C, ...\), got \[\[1.0\]\]"):
        ChannelConcept().attribute([[1.0]])


def test_rf_indices():
    assert ChannelConcept().get_rf_indices((8,)).tolist() == [0]
    assert ChannelConcept().get_rf_indices((8, 2, 3)).tolist() == list(range(6))


def test_channel_and_neuron_masks():
    grad = torch.arange(24.0).view(2, 3, 2, 2)
    masked = ChannelConcept.mask(1, [0, 2])(grad)
    assert torch.equal(masked[0], grad[0])
    assert torch.equal(masked[1, 1], torch.zeros(2, 2)) and torch.equal(masked[1, 2], grad[1, 2])
    assert torch.equal(grad, torch.arange(24.0).view(2, 3, 2, 2))  # input untouched
    neuron = ChannelConcept.mask_rf(0, {1: [3], 2: 0})(grad)
    expected = torch.zeros(3, 2, 2)
    expected[1, 1, 1], expected[2, 0, 0] = grad[0, 1, 1, 1], grad[0, 2, 0, 0]
    assert torch.equal(neuron[0], expected)
    assert torch.equal(ChannelConcept.mask(0, 1)(torch.ones(1, 3)), torch.tensor([[0.0, 1.0, 0.0]]))


@pytest.mark.parametrize("mask, match", [
    (ChannelMask(0, [5], "conv"), "concept ids \\[5\\] are out of range for layer 'conv' with 3 channels"),
    (NeuronMask(0, {7: [0]}, "conv"), "channel 7 is out of range for layer 'conv' with 3 channels"),
    (NeuronMask(0, {1: [4]}, "conv"), "neuron ids \\[4\\] of channel 1 are out of range.*4 neurons"),
    (ChannelMask(2, [0], "conv"), "batch_id 2 is out of range for a gradient of 2 rows"),
])
def test_mask_range_errors(mask, match):
    with pytest.raises(IndexError, match=match):
        mask(torch.ones(2, 3, 2, 2))


def test_apply_masks_combines_row_masks_and_custom_functions():
    grad = torch.ones(2, 3)
    fns = [ChannelMask(0, [0]), ChannelMask(1, [1, 2]), lambda g: g * 2]
    assert torch.equal(apply_masks(fns, grad), torch.tensor([[2.0, 0.0, 0.0], [0.0, 2.0, 2.0]]))
    assert apply_masks([], grad) is grad


def _capture_model():
    model = nn.Sequential(nn.Linear(2, 3, bias=False), nn.Linear(3, 1, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
        model[1].weight.copy_(torch.tensor([[1.0, 2.0, 3.0]]))
    return model


def test_mask_hook_in_a_zennit_composite():
    model = _capture_model()
    seen = []
    hook = MaskHook([ChannelMask(0, [1])], on_grad=lambda _module, grad: seen.append(grad.clone()))
    composite = NameMapComposite([(["0"], hook)])
    x = torch.ones(1, 2, requires_grad=True)
    with composite.context(model):
        model(x).sum().backward()
    assert hooks_left(model) == 0
    assert torch.equal(seen[0], torch.tensor([[1.0, 2.0, 3.0]]))  # before the mask
    assert torch.equal(x.grad, torch.tensor([[0.0, 2.0]]))  # only unit 1 passes: 2 * W0[1]


def test_mask_hook_accepts_zennit_1_signature():
    model = _capture_model()
    hook = MaskHook([ChannelMask(0, [2])])
    x = torch.ones(1, 2, requires_grad=True)
    hidden = model[0](x)
    assert hook.post_forward(model[0], (x,), {}, hidden) is None  # (module, args, kwargs, output)
    model[1](hidden).sum().backward()
    assert torch.equal(x.grad, torch.tensor([[3.0, 3.0]]))
    copy = hook.copy()
    assert copy.fn_list is hook.fn_list


def test_layer_names_and_output_shapes():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8, 3))
    assert get_layer_names(model, [nn.Conv2d, nn.Linear]) == ["0", "3"]
    shapes = get_output_shapes(model, torch.zeros(1, 1, 4, 4), ["0", "3"])
    assert shapes == {"0": torch.Size([2, 2, 2]), "3": torch.Size([3])}
    assert hooks_left(model) == 0
    with pytest.raises(KeyError, match="record_layers: layer '4'"):
        get_output_shapes(model, torch.zeros(1, 1, 4, 4), ["4"])
    with pytest.raises(TypeError, match="types must be torch.nn.Module subclasses"):
        get_layer_names(model, ["Conv2d"])


def test_norms():
    assert torch.allclose(abs_norm(torch.tensor([1.0, -3.0])), torch.tensor([0.25, -0.75]))
    assert torch.allclose(max_norm(torch.tensor([1.0, 4.0])), torch.tensor([0.25, 1.0]))


def test_coercion():
    assert canonical_ids(np.int64(3), "x") == [3]
    assert canonical_ids(torch.tensor([1, 2]), "x") == [1, 2]
    assert canonical_ids({np.int64(2): 5}, "x") == {2: [5]}
    assert canonical_conditions({"a": 1, "y": (2,)}, "y") == [{"a": [1], "y": [2]}]
    with pytest.raises(TypeError, match="conditions\\[0\\]\\['y'\\] must be an int or a list of ints, got a dict"):
        canonical_conditions([{"y": {1: 2}}], "y")
    with pytest.raises(TypeError, match="expected an int or a list of ints, got True"):
        canonical_ids(True, "x")


@pytest.mark.parametrize("n_data, n_cond, samples, conds", [
    (1, 3, [0, 0, 0], [0, 1, 2]),
    (3, 1, [0, 1, 2], [0, 0, 0]),
    (2, 2, [0, 1], [0, 1]),
    (2, 3, [0, 0, 0, 1, 1, 1], [0, 1, 2, 0, 1, 2]),
])
def test_broadcast_rows(n_data, n_cond, samples, conds):
    s, c = broadcast_rows(n_data, n_cond)
    assert s.tolist() == samples and c.tolist() == conds


def test_scores_are_reference_sampling_in_batch_order():
    relevance = torch.tensor([[[1.0, 4.0], [2.0, -1.0]], [[3.0, 3.0], [-2.0, 5.0]], [[0.0, 1.0], [2.0, 2.0]]])
    concept = ChannelConcept()
    values, neurons = concept.scores(relevance, "layer", "sum", abs_norm=False)
    assert torch.equal(values, torch.tensor([[5.0, 1.0], [6.0, 3.0], [1.0, 4.0]]))
    assert torch.equal(neurons, torch.tensor([[1, 0], [0, 1], [1, 0]]))  # ties: the first neuron
    peaks, _ = concept.scores(relevance, "layer", "max", abs_norm=True)
    assert torch.allclose(peaks, torch.tensor([[4 / 6, 2 / 6], [3 / 8, 5 / 8], [1 / 3, 2 / 3]]), atol=1e-6)
    order, sorted_values, sorted_neurons = concept.reference_sampling(relevance, "layer", "sum", abs_norm=False)
    assert torch.equal(order, torch.tensor([[1, 2], [0, 1], [2, 0]]))
    assert torch.equal(sorted_values, values.gather(0, order))
    assert torch.equal(sorted_neurons, neurons.gather(0, order))


def test_scores_follow_an_overridden_reference_sampling():
    class Clamped(ChannelConcept):
        def reference_sampling(self, relevance, layer_name=None, max_target="sum", abs_norm=True):
            return super().reference_sampling(relevance.clamp(min=0), layer_name, max_target, abs_norm)

    relevance = torch.tensor([[[1.0, 4.0], [2.0, -1.0]], [[3.0, 3.0], [-2.0, 5.0]]])
    values, neurons = Clamped().scores(relevance, "layer", "sum", abs_norm=False)
    assert torch.equal(values, torch.tensor([[5.0, 2.0], [6.0, 5.0]]))
    assert torch.equal(neurons, torch.tensor([[1, 0], [0, 1]]))
