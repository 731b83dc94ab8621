"""CondAttribution against hand-derived values, invariances and its error paths."""
import pytest
import torch
from torch import nn
from zennit.canonizers import SequentialMergeBatchNorm
from zennit.composites import EpsilonPlusFlat, NameMapComposite
from zennit.rules import Epsilon

from crp.attribution import CondAttribution, attrResult
from crp.concepts import ChannelConcept

from helpers import TwoLayerLinear, hooks_left, small_cnn

X = torch.tensor([[1.0, 2.0]], dtype=torch.float64)  # hidden = [5, 0, -5.5], output = [4.5, 13.5]


def _x():
    return X.clone().requires_grad_()


def epsilon_composite():
    return NameMapComposite([(["hidden", "out"], Epsilon(epsilon=1e-12))])


# ---------------------------------------------------------------------------------------------------------------
# hand-derived values

def test_gradient_through_one_channel(linear_model):
    # gradient mode: relevance at "hidden" is y_0 * W2[0] = 4.5 * [2, -1, 1]; channel 0 passes 9 * W1[0] = [9, 18]
    x = _x()
    result = CondAttribution(linear_model)(x, [{"hidden": [0], "y": [0]}])
    assert isinstance(result, attrResult)
    assert torch.allclose(x.grad, torch.tensor([[9.0, 18.0]], dtype=torch.float64))
    assert torch.allclose(result.heatmap, torch.tensor([27.0], dtype=torch.float64))
    assert torch.allclose(result.prediction, torch.tensor([[4.5, 13.5]], dtype=torch.float64))
    # the conditioned layer's relevance is the one arriving before its own mask
    assert torch.allclose(result.relevances["hidden"], torch.tensor([[9.0, -4.5, 4.5]], dtype=torch.float64))
    assert torch.allclose(result.activations["hidden"], torch.tensor([[5.0, 0.0, -5.5]], dtype=torch.float64))


def test_lrp_epsilon_channels(linear_model):
    # LRP-0: R_hidden = h * W2[0] = [10, 0, -5.5]; R_x for channel j = x * W1[j] * R_hidden[j] / h[j]
    conditions = [{"hidden": [j], "y": [0]} for j in range(3)]
    result = CondAttribution(linear_model)(_x(), conditions, epsilon_composite())
    assert torch.allclose(result.heatmap, torch.tensor([10.0, 0.0, -5.5], dtype=torch.float64), atol=1e-9)
    expected_hidden = torch.tensor([10.0, 0.0, -5.5], dtype=torch.float64).expand(3, 3)
    assert torch.allclose(result.relevances["hidden"], expected_hidden, atol=1e-9)


def test_several_ids_and_empty_list(linear_model):
    result = CondAttribution(linear_model)(_x(), [{"hidden": [0, 2], "y": [0]}, {"hidden": [], "y": [0]},
                                                  {"hidden": 2, "y": 0}], epsilon_composite())
    assert torch.allclose(result.heatmap, torch.tensor([4.5, 0.0, -5.5], dtype=torch.float64), atol=1e-9)


def test_several_targets_add_up(linear_model):
    # y_0 + y_1 started together: R_hidden = h * (W2[0] + W2[1]) -> channel 0: 5 * 2.5
    result = CondAttribution(linear_model)(_x(), [{"hidden": [0], "y": [0, 1]}], epsilon_composite())
    assert torch.allclose(result.heatmap, torch.tensor([12.5], dtype=torch.float64), atol=1e-9)


def test_exclude_parallel_blocks_the_side_branch(branch_model):
    # main = [5, 1], side = [-3.5, 3], y = [-2.5, 5]; target 1, channel 0 of main
    x = torch.tensor([[1.0, 2.0]], dtype=torch.float64, requires_grad=True)
    attribution = CondAttribution(branch_model)
    through = attribution(x, [{"main": [0], "y": [1]}], record_layer=["side"], exclude_parallel=True)
    assert torch.allclose(x.grad, torch.tensor([[10.0, 20.0]], dtype=torch.float64))  # 5 * H[1, 0] * M[0]
    assert torch.allclose(through.relevances["side"], torch.zeros(1, 2, dtype=torch.float64))
    both = attribution(x, [{"main": [0], "y": [1]}], record_layer=["side"], exclude_parallel=False)
    assert torch.allclose(x.grad, torch.tensor([[17.5, 2.5]], dtype=torch.float64))  # + 5 * H[1] @ S
    assert torch.allclose(both.heatmap, torch.tensor([20.0], dtype=torch.float64))
    assert torch.allclose(both.relevances["side"], torch.tensor([[10.0, 2.5]], dtype=torch.float64))


def test_neuron_mask_rf():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 1, bias=False), nn.Flatten(), nn.Linear(2 * 3 * 3, 1, bias=False)).double()
    x = torch.randn(1, 1, 3, 3, dtype=torch.float64, requires_grad=True)
    result = CondAttribution(model)(x, [{"0": {1: [4]}, "y": [0]}], mask_map=ChannelConcept.mask_rf)
    # only neuron 4 (the centre) of channel 1 passes: its gradient w.r.t. x is conv weight[1] at the centre
    expected = torch.zeros(1, 1, 3, 3, dtype=torch.float64)
    y = model(x).detach()[0, 0]
    expected[0, 0, 1, 1] = y * model[2].weight[0, 9 + 4] * model[0].weight[1, 0, 0, 0]
    assert torch.allclose(x.grad, expected)
    assert torch.allclose(result.heatmap, expected[:, 0])


def test_record_layer_and_on_device(linear_model):
    result = CondAttribution(linear_model)(_x(), [{"y": [1]}], record_layer=["out"], on_device="cpu")
    assert set(result.relevances) == {"out"}
    assert torch.allclose(result.relevances["out"], torch.tensor([[0.0, 13.5]], dtype=torch.float64))
    assert torch.allclose(result.activations["out"], torch.tensor([[4.5, 13.5]], dtype=torch.float64))


# ---------------------------------------------------------------------------------------------------------------
# init_rel and start_layer

@pytest.mark.parametrize("init_rel, scale", [(1, 1.0), (2.5, 2.5), (lambda out: out * 0 + 3, 3.0)])
def test_init_rel_constant_and_callable(linear_model, init_rel, scale):
    result = CondAttribution(linear_model)(_x(), [{"hidden": [0], "y": [0]}], init_rel=init_rel)
    assert torch.allclose(result.heatmap, torch.tensor([6.0 * scale], dtype=torch.float64))  # W2[0,0] * sum W1[0]


def test_init_rel_tensor_is_restricted_to_targets(linear_model):
    init = torch.tensor([[1.0, 100.0]], dtype=torch.float64)
    result = CondAttribution(linear_model)(_x(), [{"hidden": [0], "y": [0]}], init_rel=init)
    assert torch.allclose(result.heatmap, torch.tensor([6.0], dtype=torch.float64))


def test_init_rel_without_targets_starts_everywhere(linear_model):
    result = CondAttribution(linear_model)(_x(), [{"hidden": [0]}], init_rel=1)
    assert torch.allclose(result.heatmap, torch.tensor([(2.0 + 0.5) * 3.0], dtype=torch.float64))


def test_start_layer(linear_model):
    attribution = CondAttribution(linear_model)
    with pytest.warns(UserWarning, match="ignored because the backward pass starts"):
        result = attribution(_x(), [{"hidden": [0], "y": [1]}], start_layer="hidden")
    # relevance starts as the activation of "hidden" (5 at channel 0) and passes W1[0]
    assert torch.allclose(result.heatmap, torch.tensor([15.0], dtype=torch.float64))
    assert torch.allclose(result.prediction, torch.tensor([[5.0, 0.0, -5.5]], dtype=torch.float64))
    result = attribution(_x(), [{"hidden": [2]}], start_layer="hidden", init_rel=1)
    assert torch.allclose(result.heatmap, torch.tensor([-2.5], dtype=torch.float64))


# ---------------------------------------------------------------------------------------------------------------
# broadcasting and ordering

def _single(attribution, x, condition, **kwargs):
    return attribution(x.detach().clone().requires_grad_(), [condition], EpsilonPlusFlat(), **kwargs)


def test_broadcast_samples_times_conditions(cnn):
    torch.manual_seed(2)
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    conditions = [{"2": [c], "y": [t]} for c, t in [(0, 1), (3, 2), (5, 0)]]
    attribution = CondAttribution(cnn)
    result = attribution(x.clone().requires_grad_(), conditions, EpsilonPlusFlat(), record_layer=["0"])
    assert result.heatmap.shape == (6, 8, 8)
    for row in range(6):
        single = _single(attribution, x[row // 3:row // 3 + 1], conditions[row % 3], record_layer=["0"])
        assert torch.allclose(result.heatmap[row], single.heatmap[0])
        assert torch.allclose(result.relevances["0"][row], single.relevances["0"][0])


def test_pairwise_and_single_condition(cnn):
    torch.manual_seed(3)
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    attribution = CondAttribution(cnn)
    pair = attribution(x.clone().requires_grad_(), [{"2": [1], "y": [0]}, {"2": [4], "y": [3]}], EpsilonPlusFlat())
    one = attribution(x.clone().requires_grad_(), [{"2": [1], "y": [0]}], EpsilonPlusFlat())
    assert pair.heatmap.shape == one.heatmap.shape == (2, 8, 8)
    assert torch.allclose(pair.heatmap[1], _single(attribution, x[1:], {"2": [4], "y": [3]}).heatmap[0])
    assert torch.allclose(one.heatmap[1], _single(attribution, x[1:], {"2": [1], "y": [0]}).heatmap[0])


def test_mixed_layer_sets_keep_condition_order(cnn, cnn_input):
    conditions = [{"2": [1], "y": [0]}, {"0": [2], "y": [0]}, {"2": [3], "0": [1], "y": [4]}, {"2": [0], "y": [1]}]
    attribution = CondAttribution(cnn)
    result = attribution(cnn_input.clone().requires_grad_(), conditions, EpsilonPlusFlat(), record_layer=["5"])
    for row, condition in enumerate(conditions):
        single = _single(attribution, cnn_input, condition, record_layer=["5"])
        assert torch.allclose(result.heatmap[row], single.heatmap[0])
        for name in single.relevances:  # the result records the union of all conditioned layers
            assert torch.allclose(result.relevances[name][row], single.relevances[name][0])
            assert torch.allclose(result.activations[name][row], single.activations[name][0])


# ---------------------------------------------------------------------------------------------------------------
# properties

@pytest.mark.parametrize("exclude_parallel", [True, False])
def test_channels_add_up_to_the_unconditional_heatmap(cnn, cnn_input, exclude_parallel):
    attribution = CondAttribution(cnn)
    conditions = [{"2": [c], "y": [3]} for c in range(6)]
    parts = attribution(cnn_input.clone().requires_grad_(), conditions, EpsilonPlusFlat(),
                        exclude_parallel=exclude_parallel)
    whole = attribution(cnn_input.clone().requires_grad_(), [{"y": [3]}], EpsilonPlusFlat())
    assert torch.allclose(parts.heatmap.sum(0), whole.heatmap[0], atol=1e-12)
    assert not torch.allclose(parts.heatmap[0], whole.heatmap[0])


def test_heatmap_ignores_stale_grad(linear_model):
    attribution = CondAttribution(linear_model, overwrite_data_grad=False)
    x = _x()
    first = attribution(x, [{"hidden": [0], "y": [0]}])
    with pytest.warns(UserWarning, match="data.grad is not None"):
        second = attribution(x, [{"hidden": [0], "y": [0]}])
    assert torch.equal(first.heatmap, second.heatmap)
    assert torch.allclose(x.grad, torch.tensor([[18.0, 36.0]], dtype=torch.float64))  # accumulated twice


def test_no_param_grad_switch(linear_model):
    CondAttribution(linear_model, no_param_grad=False)
    assert all(p.requires_grad for p in linear_model.parameters())
    CondAttribution(linear_model)
    assert not any(p.requires_grad for p in linear_model.parameters())


class _Boom(RuntimeError):
    pass


def _exploding_mask(batch_id, ids, layer_name):  # noqa: ARG001 - a mask_map factory takes these
    def mask(_grad):
        raise _Boom("mask failed")
    return mask


def _bn_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    model[1].running_mean.uniform_(-1, 1)
    model[1].running_var.uniform_(0.5, 2)
    return model.eval()


@pytest.mark.parametrize("call", [
    lambda a, x: a(x, [{"0": [9], "y": [0]}], EpsilonPlusFlat(canonizers=[SequentialMergeBatchNorm()])),
    lambda a, x: a(x, [{"0": [1], "y": [7]}], EpsilonPlusFlat(canonizers=[SequentialMergeBatchNorm()])),
    lambda a, x: a(x, [{"0": [1], "y": [0]}], EpsilonPlusFlat(canonizers=[SequentialMergeBatchNorm()]),
                   mask_map=_exploding_mask),
    lambda a, x: list(a.generate(x, [{"0": [c], "y": [0]} for c in range(4)],
                                 EpsilonPlusFlat(canonizers=[SequentialMergeBatchNorm()]),
                                 mask_map=_exploding_mask, verbose=False)),
    lambda a, x: list(a.generate(x, [{"0": [c], "y": [0]} for c in range(4)],
                                 EpsilonPlusFlat(canonizers=[SequentialMergeBatchNorm()]), mask_map=_exploding_mask,
                                 exclude_parallel=False, verbose=False)),
])
def test_no_hook_or_canonizer_left_after_an_error(call):
    model = _bn_model()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(1, 3, 8, 8, requires_grad=True)
    reference = model(x).detach()
    with pytest.raises((IndexError, _Boom)):
        call(CondAttribution(model), x)
    assert hooks_left(model) == 0
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert torch.equal(model(x).detach(), reference)


def test_masks_do_not_edit_the_incoming_gradient(linear_model):
    seen = []
    x = _x()
    hidden = linear_model.hidden(x)
    hidden.register_hook(lambda grad: seen.append(grad))
    mask = ChannelConcept.mask(0, [1], "hidden")
    grad = torch.ones(1, 3, dtype=torch.float64)
    masked = mask(grad)
    assert torch.equal(grad, torch.ones(1, 3, dtype=torch.float64))
    assert torch.equal(masked, torch.tensor([[0.0, 1.0, 0.0]], dtype=torch.float64))


# ---------------------------------------------------------------------------------------------------------------
# generate

@pytest.mark.parametrize("batch_size", [1, 4, 6, 50])
@pytest.mark.parametrize("kwargs", [
    {}, {"exclude_parallel": False}, {"init_rel": torch.ones(1, 5, dtype=torch.float64)}, {"init_rel": 2},
])
def test_generate_equals_call_for_any_batch_size(cnn, cnn_input, batch_size, kwargs):
    kwargs = dict(kwargs)
    if isinstance(kwargs.get("init_rel"), torch.Tensor):
        kwargs["init_rel"] = torch.ones(min(batch_size, 6), 5, dtype=torch.float64)
    conditions = [{"2": [c], "y": [c % 5]} for c in range(6)]
    attribution = CondAttribution(cnn)
    chunks = list(attribution.generate(cnn_input.clone().requires_grad_(), conditions, EpsilonPlusFlat(),
                                       record_layer=["0", "5"], batch_size=batch_size, verbose=False, **kwargs))
    assert [len(c.heatmap) for c in chunks] == [min(batch_size, 6 - i) for i in range(0, 6, batch_size)]
    if isinstance(kwargs.get("init_rel"), torch.Tensor):
        kwargs["init_rel"] = torch.ones(6, 5, dtype=torch.float64)
    whole = attribution(cnn_input.clone().requires_grad_(), conditions, EpsilonPlusFlat(), record_layer=["0", "5"],
                        **kwargs)
    assert torch.allclose(torch.cat([c.heatmap for c in chunks]), whole.heatmap, atol=1e-12)
    assert torch.allclose(torch.cat([c.prediction for c in chunks]), whole.prediction)
    for name in ["0", "2", "5"]:
        assert torch.allclose(torch.cat([c.relevances[name] for c in chunks]), whole.relevances[name], atol=1e-12)
        assert torch.allclose(torch.cat([c.activations[name] for c in chunks]), whole.activations[name])


def test_generate_two_layers_and_start_layer(cnn, cnn_input):
    attribution = CondAttribution(cnn)
    for conditions, kwargs in [
        ([{"5": [t % 2], "2": [c], "y": [t]} for c, t in [(0, 1), (1, 1), (2, 3), (3, 1)]], {}),
        ([{"2": [c], "0": [1]} for c in range(4)], {"start_layer": "2"}),
        ([{"0": [c]} for c in range(4)], {"start_layer": "2", "init_rel": 1}),
        ([{"2": [1], "y": [0]}, {"0": [2], "y": [0]}, {"2": [3], "0": [1], "y": [4]}, {"2": [0], "y": [1]}], {}),
    ]:
        chunks = list(attribution.generate(cnn_input.clone().requires_grad_(), conditions, EpsilonPlusFlat(),
                                           batch_size=3, verbose=False, **kwargs))
        whole = attribution(cnn_input.clone().requires_grad_(), conditions, EpsilonPlusFlat(), **kwargs)
        assert torch.allclose(torch.cat([c.heatmap for c in chunks]), whole.heatmap, atol=1e-12)


def test_generate_leaves_no_hooks_when_stopped_early(cnn, cnn_input):
    attribution = CondAttribution(cnn)
    generator = attribution.generate(cnn_input.clone().requires_grad_(), [{"2": [c], "y": [0]} for c in range(6)],
                                     EpsilonPlusFlat(), batch_size=2, verbose=False)
    next(generator)
    assert hooks_left(cnn) > 0
    generator.close()
    assert hooks_left(cnn) == 0


# ---------------------------------------------------------------------------------------------------------------
# errors

@pytest.mark.parametrize("kwargs, error, match", [
    ({"conditions": [{"hiden": [0], "y": [0]}]}, KeyError, "conditions: layer 'hiden'.*Did you mean 'hidden'"),
    ({"record_layer": ["outt"]}, KeyError, "record_layer: layer 'outt'.*'out'"),
    ({"start_layer": "hid"}, KeyError, "start_layer: layer 'hid'"),
    ({"mask_map": {"hidden": ChannelConcept.mask, "nope": ChannelConcept.mask}}, KeyError, "mask_map: layer 'nope'"),
    ({"mask_map": {"out": ChannelConcept.mask}}, KeyError, "no entry for the conditioned layers \\['hidden'\\]"),
    ({"mask_map": 3}, TypeError, "mask_map must be a callable"),
    ({"conditions": [{"hidden": [3], "y": [0]}]}, IndexError, "out of range for layer 'hidden' with 3 channels"),
    ({"conditions": [{"hidden": [0], "y": [2]}]}, IndexError, "targets \\[2\\].*2 classes"),
    ({"conditions": [{"hidden": [0]}]}, ValueError, "needs a target 'y'"),
    ({"conditions": []}, ValueError, "non-empty list of dicts"),
    ({"conditions": ["hidden"]}, TypeError, "conditions\\[0\\] must be a dict"),
    ({"conditions": [{"hidden": [0.5], "y": [0]}]}, TypeError, "expected an int or a list of ints"),
    ({"init_rel": torch.ones(3, 3)}, ValueError, "init_rel has shape \\(3, 3\\)"),
    ({"init_rel": "one"}, TypeError, "init_rel must be None, a number"),
])
def test_errors(linear_model, kwargs, error, match):
    arguments = {"conditions": [{"hidden": [0], "y": [0]}]}
    arguments.update(kwargs)
    with pytest.raises(error, match=match):
        CondAttribution(linear_model)(_x(), **arguments)
    assert hooks_left(linear_model) == 0


def test_data_errors(linear_model):
    attribution = CondAttribution(linear_model)
    with pytest.raises(ValueError, match="requires_grad_"):
        attribution(X.clone(), [{"y": [0]}])
    with pytest.raises(TypeError, match=r"data must be a torch.Tensor, got \[\[1.0, 2.0\]\]"):
        attribution([[1.0, 2.0]], [{"y": [0]}])
    with pytest.raises(ValueError, match="generate\\(\\) explains one sample.*\\(2, 2\\)"):
        attribution.generate(torch.ones(2, 2, dtype=torch.float64, requires_grad=True), [{"y": [0]}])
    with pytest.raises(ValueError, match="batch_size must be an int >= 1, got 0"):
        attribution.generate(_x(), [{"y": [0]}], batch_size=0)
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        CondAttribution("model")


def test_module_named_like_the_output():
    model = nn.Sequential()
    model.add_module("y", nn.Linear(2, 2))
    with pytest.raises(ValueError, match="module named 'y'.*MODEL_OUTPUT_NAME"):
        CondAttribution(model)(torch.ones(1, 2, requires_grad=True), [{"y": [0]}])
    attribution = CondAttribution(model)
    attribution.MODEL_OUTPUT_NAME = "target"
    result = attribution(torch.ones(1, 2, requires_grad=True), [{"y": [0], "target": [1]}])
    assert result.heatmap.shape == (1,)


def test_parallel_layers_in_one_condition_are_refused(branch_model):
    x = torch.ones(1, 2, dtype=torch.float64, requires_grad=True)
    with pytest.raises(RuntimeError, match="does not feed the layer above it"):
        CondAttribution(branch_model)(x, [{"main": [0], "side": [1], "y": [0]}])
    assert hooks_left(branch_model) == 0


def test_small_cnn_fixture_is_deterministic():
    assert torch.equal(small_cnn()[0].weight, small_cnn()[0].weight)
    assert isinstance(TwoLayerLinear().hidden, nn.Linear)


class _AbsHeatmap(CondAttribution):
    """Overrides both extension points: absolute heatmaps, relevance started at 1 for the targets."""

    def heatmap_modifier(self, data, on_device=None):  # noqa: ARG002 - CondAttribution's signature
        return data.grad.detach().abs().sum(1)

    def relevance_init(self, prediction, target_list, init_rel):  # noqa: ARG002 - CondAttribution's signature
        return super().relevance_init(prediction, target_list, 1)


def test_overridable_extension_points(linear_model):
    attribution = _AbsHeatmap(linear_model)
    result = attribution(_x(), [{"hidden": [2], "y": [0]}])
    assert torch.allclose(result.heatmap, torch.tensor([3.5], dtype=torch.float64))  # |W2[0,2] * W1[2]| summed
    chunks = list(attribution.generate(_x(), [{"hidden": [j], "y": [0]} for j in range(3)], verbose=False))
    assert torch.allclose(chunks[0].heatmap, torch.tensor([6.0, 1.5, 3.5], dtype=torch.float64))


@pytest.mark.parametrize("exclude_parallel", [True, False])
@pytest.mark.parametrize("conditions", [
    [{"main": [c], "y": [t]} for c, t in [(0, 1), (1, 1), (0, 0)]],
    [{"main": [0], "y": [1]}, {"side": [1], "y": [1]}, {"main": [1], "y": [0]}],
])
def test_generate_with_a_parallel_branch(branch_model, exclude_parallel, conditions):
    # the part that bypasses "main" through "side" is added before the (non-linear) heatmap modifier
    attribution = _AbsHeatmap(branch_model)
    x = torch.tensor([[1.0, 2.0]], dtype=torch.float64)
    chunks = list(attribution.generate(x.clone().requires_grad_(), conditions, record_layer=["main", "side"],
                                       batch_size=2, exclude_parallel=exclude_parallel, verbose=False))
    whole = attribution(x.clone().requires_grad_(), conditions, record_layer=["main", "side"],
                        exclude_parallel=exclude_parallel)
    assert torch.allclose(torch.cat([c.heatmap for c in chunks]), whole.heatmap)
    for name in ["main", "side"]:
        assert torch.allclose(torch.cat([c.relevances[name] for c in chunks]), whole.relevances[name])


@pytest.mark.parametrize("exclude_parallel", [True, False])
def test_model_unchanged_after_a_call_with_a_canonizer(exclude_parallel):
    # zennit 1.0's rules swap parameters with load_state_dict(assign=True); the call must leave the very same
    # parameter objects, values and no shadowing attributes behind
    model = _bn_model()
    params = {name: (p, p.detach().clone()) for name, p in model.named_parameters()}
    x = torch.randn(1, 3, 8, 8, requires_grad=True)
    attribution = CondAttribution(model)
    composite = EpsilonPlusFlat(canonizers=[SequentialMergeBatchNorm()])
    attribution(x, [{"0": [1], "y": [0]}], composite, exclude_parallel=exclude_parallel)
    list(attribution.generate(x, [{"0": [c], "y": [0]} for c in range(4)], composite,
                              exclude_parallel=exclude_parallel, verbose=False))
    for name, parameter in model.named_parameters():
        assert parameter is params[name][0] and torch.equal(parameter, params[name][1])
    assert not any(k in m.__dict__ for m in model.modules() for k in (*m._parameters, *m._buffers))


def test_recorded_layer_followed_by_an_in_place_operation():
    # outputs of recorded-only layers are not copied, unless the model edits them in place: then the call is
    # redone with copies, so the activation stays the layer's own output
    torch.manual_seed(0)
    layers = [nn.Conv2d(1, 2, 3), nn.ReLU(inplace=True), nn.Flatten(), nn.Linear(2 * 4 * 4, 2)]
    in_place = nn.Sequential(*layers).double()
    plain = nn.Sequential(layers[0], nn.ReLU(), *layers[2:]).double()
    x = torch.randn(1, 1, 6, 6, dtype=torch.float64)
    results = [CondAttribution(model)(x.clone().requires_grad_(), [{"y": [1]}], record_layer=["0"])
               for model in (in_place, plain)]
    assert (results[0].activations["0"] < 0).any()
    assert torch.equal(results[0].activations["0"], results[1].activations["0"])
    assert torch.equal(results[0].relevances["0"], results[1].relevances["0"])
    assert torch.equal(results[0].heatmap, results[1].heatmap)


def test_relevances_without_heatmap_equal_the_full_pass(branch_model):
    # FeatureVisualization needs no input heatmap: its backward pass ends at the recorded layers, also at the
    # parallel branch "side" that the lowest recorded layer ("main") does not lead to
    attribution = CondAttribution(branch_model)
    x = torch.tensor([[1.0, -2.0], [0.5, 3.0]], dtype=torch.float64, requires_grad=True)
    conditions = [{"y": [0]}, {"y": [1]}]
    layers = ["main", "side", "head"]
    full = attribution(x, conditions, record_layer=layers, exclude_parallel=False)
    lean = attribution(x, conditions, record_layer=layers, exclude_parallel=False, heatmap=False)
    assert lean.heatmap is None and x.grad is None
    for name in layers:
        assert torch.equal(lean.relevances[name], full.relevances[name])
        assert torch.equal(lean.activations[name], full.activations[name])
    assert full.relevances["side"].abs().sum() > 0


# ---------------------------------------------------------------------------------------------------------------
# context(): one registration of the composite for many calls

def test_context_gives_the_results_of_calls_with_the_composite(cnn, cnn_input):
    attribution = CondAttribution(cnn)
    composite = EpsilonPlusFlat()
    conditions = [{"2": [c], "y": [1]} for c in range(3)]
    layers = ["0", "2"]
    batch = torch.cat([cnn_input, 0.5 * cnn_input.flip(-1)])
    expected = attribution(batch.clone().requires_grad_(), conditions, composite, record_layer=layers)
    with attribution.context(composite) as registered:
        assert registered is attribution
        assert hooks_left(cnn) > 0  # the rules stay registered between calls
        first = attribution(batch.clone().requires_grad_(), conditions, record_layer=layers)
        same = attribution(batch.clone().requires_grad_(), conditions, composite, record_layer=layers)
        lean = attribution(batch.clone().requires_grad_(), conditions, record_layer=layers, heatmap=False)
        generated = list(attribution.generate(cnn_input.clone().requires_grad_(), conditions, batch_size=2,
                                              verbose=False))
    assert hooks_left(cnn) == 0
    assert expected.heatmap.shape == (6, 8, 8) and expected.heatmap.abs().sum() > 0
    for result in (first, same):
        assert torch.allclose(result.heatmap, expected.heatmap, atol=1e-12)
    assert lean.heatmap is None
    for name in layers:
        assert torch.allclose(lean.relevances[name], expected.relevances[name], atol=1e-12)
    single = attribution(cnn_input.clone().requires_grad_(), conditions, composite)
    assert torch.allclose(torch.cat([g.heatmap for g in generated]), single.heatmap, atol=1e-12)


def test_context_restores_the_model_after_an_exception_and_refuses_misuse():
    model = _bn_model()
    params = {name: (p, p.detach().clone()) for name, p in model.named_parameters()}
    attribution = CondAttribution(model)
    composite = EpsilonPlusFlat(canonizers=[SequentialMergeBatchNorm()])
    x = torch.randn(1, 3, 8, 8, requires_grad=True)
    with pytest.raises(KeyError, match="layer 'nope' is not a module"):
        with attribution.context(composite):
            attribution(x, [{"nope": [0], "y": [0]}])
    for name, parameter in model.named_parameters():
        assert parameter is params[name][0] and torch.equal(parameter, params[name][1])
    assert hooks_left(model) == 0
    with attribution.context(composite):
        with pytest.raises(ValueError, match="a composite is registered by context\\(\\); call without composite"):
            attribution(x, [{"0": [1], "y": [0]}], EpsilonPlusFlat())
        with pytest.raises(RuntimeError, match="already inside context\\(\\)"):
            with attribution.context(composite):
                pass
    with pytest.raises(TypeError, match="composite must be a zennit.core.Composite .* got str"):
        with attribution.context("EpsilonPlusFlat"):
            pass
    assert hooks_left(model) == 0 and attribution._registered is None
