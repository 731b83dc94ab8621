"""Tests of crp.graph.AttributionGraph: shares against a naive float64 gradient and direct CRP calls."""
import pytest
import torch
from torch import nn
from zennit.composites import EpsilonPlusFlat

from crp.attribution import AttributionGraph, CondAttribution, attrGraphResult
from crp.concepts import ChannelConcept
from crp.graph import trace_model_graph


class Chain(nn.Module):
    """c0 -> c1 -> c2 -> fc, ReLUs between: every layer is fed by the one before."""

    def __init__(self):
        super().__init__()
        self.c0 = nn.Conv2d(1, 3, 3)
        self.c1 = nn.Conv2d(3, 5, 3)
        self.c2 = nn.Conv2d(5, 4, 3)
        self.fc = nn.Linear(4 * 2 * 2, 6)

    def activations(self, x):
        a0 = self.c0(x)
        a1 = self.c1(torch.relu(a0))
        a2 = self.c2(torch.relu(a1))
        return a0, a1, a2, self.fc(torch.relu(a2).flatten(1))

    def forward(self, x):
        return self.activations(x)[-1]


class Block(nn.Module):
    """A residual block: ``b`` is bypassed by an identity shortcut from ``a`` to ``c``."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(2, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.b = nn.Conv2d(4, 4, 3, padding=1)
        self.c = nn.Conv2d(4, 3, 1)
        self.fc = nn.Linear(3 * 6 * 6, 4)

    def forward(self, x):
        h = torch.relu(self.bn(self.a(x)))
        h = self.b(h) + h
        return self.fc(torch.tanh(self.c(h)).flatten(1))


def _setup(model, sample, names):
    graph = trace_model_graph(model, sample, names)
    return AttributionGraph(CondAttribution(model), graph, {name: ChannelConcept() for name in names})


@pytest.fixture(scope="module")
def chain():
    torch.manual_seed(1)
    model = Chain().double().eval()
    sample = torch.rand(1, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    return model, sample


def _naive_shares(relevance):
    per_channel = relevance.sum((2, 3))[0]
    return per_channel / (per_channel.abs().sum() + 1e-10)


def _expected_edges(relevance, layer, w):
    shares = _naive_shares(relevance)
    return [(layer, int(c), shares[c].item()) for c in torch.argsort(shares, descending=True)[:w]]


def _assert_edges_close(actual, expected):
    assert [edge[:2] for edge in actual] == [edge[:2] for edge in expected]
    torch.testing.assert_close([e[2] for e in actual], [e[2] for e in expected], rtol=1e-9, atol=1e-12)


def test_chain_against_naive_float64_gradient_with_target(chain):
    """With no composite CRP is the gradient times input: relevance = vector-Jacobian products, masked by hand."""
    model, sample = chain
    attgraph = _setup(model, sample, ["c0", "c1", "c2", "fc"])
    result = attgraph(sample.clone().requires_grad_(), None, 1, "c2", target=3, width=[2, 2], verbose=False)

    x = sample.clone().requires_grad_()
    a0, a1, a2, out = model.activations(x)
    grad_out = torch.zeros_like(out)
    grad_out[0, 3] = out[0, 3].detach()
    mask2 = torch.zeros(1, 4, 1, 1, dtype=torch.float64)
    mask2[0, 1] = 1
    (rel2,) = torch.autograd.grad(out, a2, grad_out, retain_graph=True)
    (rel1,) = torch.autograd.grad(a2, a1, rel2 * mask2, retain_graph=True)
    level1 = _expected_edges(rel1, "c1", 2)
    _assert_edges_close(result.connections[("c2", 1)], level1)
    for _, concept, _ in level1:
        mask1 = torch.zeros(1, 5, 1, 1, dtype=torch.float64)
        mask1[0, concept] = 1
        (rel0,) = torch.autograd.grad(a1, a0, rel1 * mask1, retain_graph=True)
        _assert_edges_close(result.connections[("c1", concept)], _expected_edges(rel0, "c0", 2))
    assert result.nodes[0] == ("c2", 1)
    assert set(result.connections) == {("c2", 1)} | {("c1", c) for _, c, _ in level1}


def test_chain_against_naive_float64_gradient_without_target(chain):
    """Without a target the backward pass starts at the decomposed layer with its activation."""
    model, sample = chain
    attgraph = _setup(model, sample, ["c0", "c1", "c2", "fc"])
    result = attgraph(sample.clone().requires_grad_(), None, 2, "c2", width=[3], verbose=False)
    x = sample.clone().requires_grad_()
    _, a1, a2, _ = model.activations(x)
    mask = torch.zeros_like(a2)
    mask[0, 2] = 1
    (rel1,) = torch.autograd.grad(a2, a1, a2.detach() * mask)
    _assert_edges_close(result.connections[("c2", 2)], _expected_edges(rel1, "c1", 3))
    assert result.nodes == [("c2", 2)] + [edge[:2] for edge in result.connections[("c2", 2)]]


@pytest.fixture(scope="module")
def block():
    torch.manual_seed(3)
    model = Block().eval()
    with torch.no_grad():
        model.bn.running_mean.uniform_(-0.5, 0.5)
        model.bn.running_var.uniform_(0.5, 1.5)
    sample = torch.rand(1, 2, 6, 6, generator=torch.Generator().manual_seed(4))
    return model, sample


def _direct_shares(model, sample, condition, lower, *, start_layer, exclude_parallel, abs_norm=True):
    attribution = CondAttribution(model)
    result = attribution(sample.clone().requires_grad_(), [condition], EpsilonPlusFlat(), record_layer=[lower],
                         start_layer=start_layer, exclude_parallel=exclude_parallel)
    return ChannelConcept().attribute(result.relevances[lower], abs_norm=abs_norm)[0]


CASES = [
    # (concept_id, layer_name, target, parent_c_id, parent_layer, abs_norm)
    (1, "fc", 1, None, None, True),
    (2, "fc", None, None, None, True),
    (1, "c", None, None, None, False),
    (2, "b", 0, None, None, True),
    (0, "c", 1, 1, "fc", True),
    (3, "b", None, 2, "c", True),
]


@pytest.mark.parametrize("exclude_parallel", [False, True])
@pytest.mark.parametrize("case", CASES)
def test_shares_equal_direct_cond_attribution(block, case, exclude_parallel):
    concept_id, layer_name, target, parent_c_id, parent_layer, abs_norm = case
    model, sample = block
    attgraph = _setup(model, sample, ["a", "b", "c", "fc"])
    result = attgraph(sample.clone().requires_grad_(), EpsilonPlusFlat(), concept_id, layer_name, target=target,
                      width=[2, 2, 1], parent_c_id=parent_c_id, parent_layer=parent_layer, abs_norm=abs_norm,
                      batch_size=3, verbose=False, exclude_parallel=exclude_parallel)
    context = {parent_layer: [parent_c_id]} if parent_layer else {layer_name: [concept_id]}
    if target is not None:
        context["y"] = [target]
    start_layer = None if target is not None else (parent_layer or layer_name)
    assert any(abs(share) > 1e-3 for edges in result.connections.values() for _, _, share in edges)
    for (layer, concept), edges in result.connections.items():
        lowers = attgraph.graph.find_input_layers(layer)
        assert [name for name, _, _ in edges] == [name for name in lowers for _ in range(len(edges) // len(lowers))]
        for lower in lowers:
            shares = _direct_shares(model, sample, {layer: [concept], **context}, lower, start_layer=start_layer,
                                    exclude_parallel=exclude_parallel, abs_norm=abs_norm)
            mine = [(c, s) for name, c, s in edges if name == lower]
            # the chosen concepts carry the direct shares, and these are the largest ones (robust to ties)
            torch.testing.assert_close(torch.tensor([s for _, s in mine]), shares[[c for c, _ in mine]],
                                       rtol=1e-5, atol=1e-7)
            torch.testing.assert_close(torch.tensor([s for _, s in mine]), shares.sort(descending=True)[0][:len(mine)],
                                       rtol=1e-5, atol=1e-7)


def test_exclude_parallel_removes_the_shortcut(block):
    """Relevance reaching ``a`` around ``b`` (the identity shortcut) counts only with exclude_parallel=False."""
    model, sample = block
    attgraph = _setup(model, sample, ["a", "b", "c", "fc"])
    kwargs = dict(width=[4], target=1, verbose=False)
    shared = attgraph(sample.clone().requires_grad_(), EpsilonPlusFlat(), 3, "b", exclude_parallel=False, **kwargs)
    only = attgraph(sample.clone().requires_grad_(), EpsilonPlusFlat(), 3, "b", exclude_parallel=True, **kwargs)
    with_shortcut = dict(((c, s) for _, c, s in shared.connections[("b", 3)]))
    through_b = dict(((c, s) for _, c, s in only.connections[("b", 3)]))
    assert with_shortcut != pytest.approx(through_b, rel=1e-3)
    # all four channels of ``a`` are kept, so the absolute shares add up to one in both cases
    assert sum(abs(s) for s in with_shortcut.values()) == pytest.approx(1.0, rel=1e-5)
    assert sum(abs(s) for s in through_b.values()) == pytest.approx(1.0, rel=1e-5)


def test_batch_size_does_not_change_the_graph(block):
    model, sample = block
    attgraph = _setup(model, sample, ["a", "b", "c", "fc"])
    results = [attgraph(sample.clone().requires_grad_(), EpsilonPlusFlat(), 1, "fc", target=1, width=[3, 2, 2],
                        batch_size=size, verbose=False) for size in (1, 2, 16)]
    for other in results[1:]:
        assert other.nodes == results[0].nodes
        assert other.connections.keys() == results[0].connections.keys()
        for key, edges in results[0].connections.items():
            assert [e[:2] for e in other.connections[key]] == [e[:2] for e in edges]
            assert [e[2] for e in other.connections[key]] == pytest.approx([e[2] for e in edges], rel=1e-5)


def test_each_concept_is_listed_and_decomposed_once(chain):
    model, sample = chain
    attgraph = _setup(model, sample, ["c0", "c1", "c2", "fc"])
    result = attgraph(sample.clone().requires_grad_(), None, 0, "fc", target=0, width=[4, 5, 3], verbose=False)
    assert isinstance(result, attrGraphResult)
    assert len(result.nodes) == len(set(result.nodes))
    # width 5 on c1 (5 channels) reaches every c1 concept from every c2 concept: shared children
    assert result.nodes[:1] == [("fc", 0)]
    assert {("c1", c) for c in range(5)} <= set(result.nodes)
    children = [edge[:2] for edges in result.connections.values() for edge in edges]
    assert set(children) | {("fc", 0)} == set(result.nodes)
    for key, edges in result.connections.items():
        assert len({edge[:2] for edge in edges}) == len(edges), key
    assert len([key for key in result.connections if key[0] == "c1"]) == 5


def test_layer_without_listed_inputs_is_a_leaf(chain):
    model, sample = chain
    attgraph = _setup(model, sample, ["c0", "c1", "c2", "fc"])
    result = attgraph(sample.clone().requires_grad_(), None, 0, "c0", target=0, width=[2], verbose=False)
    assert result.nodes == [("c0", 0)] and result.connections == {}


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(width=[4, 0]), ValueError,
     r"width\[1\] must be an int >= 1, got 0\. Each entry is the number of concepts kept per layer at its level; "
     r"got width=\[4, 0\]"),
    (dict(width=[2, -1]), ValueError, r"width\[1\] must be an int >= 1, got -1"),
    (dict(width=[2.5]), TypeError, r"width\[0\] must be an int >= 1, got 2.5"),
    (dict(width="42"), TypeError, "width must be a list of positive ints"),
    (dict(width=3), TypeError, r"width must be a list of positive ints, one per level \(e.g. width=\[4, 2\]\), got 3"),
    (dict(concept_id=-1), ValueError, r"concept_id must be an int >= 0, got -1\. Pass the index of a channel"),
    (dict(concept_id=1.0), TypeError, "concept_id must be an int >= 0, got 1.0"),
    (dict(concept_id=9), IndexError, r"concept ids \[9\] are out of range for layer 'c2' with 4 channels"),
    (dict(parent_c_id=1), ValueError, "give parent_c_id and parent_layer together"),
    (dict(parent_layer="fc", parent_c_id=-2), ValueError, "parent_c_id must be an int >= 0, got -2"),
    (dict(layer_name="c3"), KeyError, "layer 'c3' is not in the model graph. Did you mean"),
])
def test_bad_arguments(chain, kwargs, error, message):
    model, sample = chain
    attgraph = _setup(model, sample, ["c0", "c1", "c2", "fc"])
    call = dict(concept_id=1, layer_name="c2", target=0, width=[2], verbose=False)
    call.update(kwargs)
    with pytest.raises(error, match=message):
        attgraph(sample.clone().requires_grad_(), None, **call)


def test_bad_layer_maps(chain):
    model, sample = chain
    graph = trace_model_graph(model, sample, ["c0", "c1", "c2", "fc"])
    attribution = CondAttribution(model)
    partial = AttributionGraph(attribution, graph, {"c2": ChannelConcept(), "fc": ChannelConcept()})
    with pytest.raises(KeyError, match=r"layer_map has no concept for the layers \['c1'\]; add them"):
        partial(sample.clone().requires_grad_(), None, 1, "c2", target=0, width=[2], verbose=False)
    with pytest.raises(KeyError, match=r"layer_map has no concept for the layers \['c0'\]"):
        partial(sample.clone().requires_grad_(), None, 1, "c0", target=0, width=[2], verbose=False)
    with pytest.raises(TypeError, match="layer_map must be a dict of layer name -> Concept, got list"):
        AttributionGraph(attribution, graph, [ChannelConcept()])
    with pytest.raises(TypeError, match=r"layer_map entries \['c1'\] are not concepts"):
        AttributionGraph(attribution, graph, {"c1": "channel"})
    with pytest.raises(TypeError, match="graph must be a crp.graph.ModelGraph"):
        AttributionGraph(attribution, {"c1": ["c0"]}, {})
    partial.set_layer_map({name: ChannelConcept() for name in ["c0", "c1", "c2"]})
    assert sorted(partial.mask_map) == ["c0", "c1", "c2"]
