"""The AttnLRP rules against naive float64 re-implementations, and a one-block attention model by hand."""
import math

import pytest
import torch
from torch import nn
from zennit.composites import NameMapComposite
from zennit.rules import Epsilon

from crp.attribution import CondAttribution
from crp.transformers import (
    FastEpsilon,
    GradientOps,
    LRPOps,
    TokenConcept,
    add,
    affine,
    identity,
    layer_norm,
    matmul,
    multiply,
    softmax,
)

torch.manual_seed(0)


def _relevances(fn, inputs, relevance):
    """The relevance of every input in zennit's convention: the gradient when ``relevance`` starts at the output."""
    leaves = [x.clone().requires_grad_() for x in inputs]
    output = fn(*leaves)
    return output, torch.autograd.grad(output, leaves, relevance)


def _random(*shape):
    return torch.randn(*shape, dtype=torch.float64)


# ---------------------------------------------------------------------------------------------------------------
# every rule against a naive float64 re-implementation


def test_softmax_rule():
    x, relevance = _random(3, 5), _random(3, 5)
    y, (got,) = _relevances(lambda t: softmax(t, -1), [x], relevance)
    expected = torch.zeros_like(x)
    for row in range(3):
        s = [math.exp(v) for v in x[row].tolist()]
        s = [v / sum(s) for v in s]
        for j in range(5):  # R_j = x_j * sum_i J_ij R_i / y_i with J_ij = y_i (delta_ij - y_j)
            expected[row, j] = x[row, j] * sum(s[i] * ((i == j) - s[j]) * relevance[row, i] / s[i] for i in range(5))
    assert torch.allclose(y, torch.softmax(x, -1))
    assert torch.allclose(got, expected, atol=1e-12)


def test_softmax_rule_gives_masked_inputs_nothing():
    x = torch.tensor([[0.5, -math.inf, 1.0]], dtype=torch.float64)
    _, (got,) = _relevances(lambda t: softmax(t, -1), [x], torch.tensor([[1.0, 0.0, 2.0]], dtype=torch.float64))
    assert got[0, 1] == 0 and torch.isfinite(got).all()


def _naive_matmul_relevance(a, b, relevance, share_a, share_b):
    out = a @ b
    rel_a, rel_b = torch.zeros_like(a), torch.zeros_like(b)
    for n in range(a.shape[0]):
        for i in range(a.shape[1]):
            for k in range(a.shape[2]):
                for j in range(b.shape[2]):
                    term = a[n, i, k] * b[n, k, j] / out[n, i, j] * relevance[n, i, j]
                    rel_a[n, i, k] += share_a * term
                    rel_b[n, k, j] += share_b * term
    return rel_a, rel_b


def test_matmul_rule_splits_every_term_in_halves():
    a, b, relevance = _random(2, 3, 4), _random(2, 4, 5), _random(2, 3, 5)
    y, (rel_a, rel_b) = _relevances(lambda p, q: matmul(p, q, epsilon=0.0), [a, b], relevance)
    expected_a, expected_b = _naive_matmul_relevance(a, b, relevance, 0.5, 0.5)
    assert torch.allclose(y, a @ b)
    assert torch.allclose(rel_a, expected_a, atol=1e-10) and torch.allclose(rel_b, expected_b, atol=1e-10)


def test_matmul_rule_gives_everything_to_the_factor_that_is_not_constant():
    a, b, relevance = _random(2, 3, 4), _random(2, 4, 5), _random(2, 3, 5)
    leaf = b.clone().requires_grad_()
    (rel_b,) = torch.autograd.grad(matmul(a, leaf, epsilon=0.0), [leaf], relevance)
    assert torch.allclose(rel_b, _naive_matmul_relevance(a, b, relevance, 0.0, 1.0)[1], atol=1e-10)


def test_multiply_rule_halves_and_broadcasts():
    a, b, relevance = _random(3, 4), _random(4), _random(3, 4)
    y, (rel_a, rel_b) = _relevances(multiply, [a, b], relevance)
    assert torch.allclose(y, a * b)
    assert torch.allclose(rel_a, relevance / 2)
    assert torch.allclose(rel_b, torch.stack([relevance[r] / 2 for r in range(3)]).sum(0))


def test_add_rule_is_proportional_and_a_constant_absorbs_its_share():
    a, b, relevance = _random(3, 4), _random(3, 4), _random(3, 4)
    _, (rel_a, rel_b) = _relevances(lambda p, q: add(p, q, epsilon=0.0), [a, b], relevance)
    for i in range(3):
        for j in range(4):
            z = a[i, j] + b[i, j]
            assert torch.isclose(rel_a[i, j], a[i, j] / z * relevance[i, j])
            assert torch.isclose(rel_b[i, j], b[i, j] / z * relevance[i, j])
    position = _random(4)
    leaf = a.clone().requires_grad_()
    (rel,) = torch.autograd.grad(add(leaf, position, epsilon=0.0), [leaf], relevance)
    assert torch.allclose(rel, a / (a + position) * relevance)


def _rotate(x, cos, sin):
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), -1) * sin


def test_affine_rule_on_a_rotary_embedding():
    x, relevance, angle = _random(2, 4), _random(2, 4), _random(2, 4)
    cos, sin = angle.cos(), angle.sin()
    y, (got,) = _relevances(lambda t: affine(lambda u: _rotate(u, cos, sin), t, epsilon=0.0), [x], relevance)
    expected = torch.zeros_like(x)
    for n in range(2):
        matrix = torch.diag(cos[n])  # y = M x with M written out for a head dimension of 4
        matrix[0, 2], matrix[1, 3], matrix[2, 0], matrix[3, 1] = -sin[n, 0], -sin[n, 1], sin[n, 2], sin[n, 3]
        assert torch.allclose(y[n], matrix @ x[n])
        for j in range(4):
            expected[n, j] = sum(x[n, j] * matrix[i, j] * relevance[n, i] / y[n, i] for i in range(4))
    assert torch.allclose(got, expected, atol=1e-10)


def test_affine_rule_of_a_projection_lets_the_bias_absorb_its_share():
    x, weight, bias, relevance = _random(2, 3), _random(4, 3), _random(4), _random(2, 4)
    z, (got,) = _relevances(
        lambda t: affine(lambda u: torch.nn.functional.linear(u, weight, bias), t, epsilon=0.0), [x], relevance)
    z = z.detach()
    expected = torch.tensor([[sum(x[n, j] * weight[i, j] * relevance[n, i] / z[n, i] for i in range(4))
                              for j in range(3)] for n in range(2)], dtype=torch.float64)
    assert torch.allclose(got, expected, atol=1e-10)


def test_layer_norm_rule_holds_the_standard_deviation_constant():
    x, weight, bias, relevance = _random(2, 5), _random(5), _random(5), _random(2, 5)
    y, (got,) = _relevances(lambda t: layer_norm(t, weight, bias, eps=1e-5, epsilon=0.0), [x], relevance)
    expected = torch.zeros_like(x)
    for n in range(2):
        mean = sum(x[n].tolist()) / 5
        std = math.sqrt(sum((v - mean) ** 2 for v in x[n].tolist()) / 5 + 1e-5)
        for j in range(5):  # y_i = w_i (x_i - mean) / std + b_i: dy_i/dx_j = w_i / std (delta_ij - 1/5)
            expected[n, j] = sum(x[n, j] * weight[i] / std * ((i == j) - 0.2) * relevance[n, i] / y[n, i]
                                 for i in range(5))
    assert torch.allclose(y, torch.nn.functional.layer_norm(x, (5,), weight, bias, 1e-5))
    assert torch.allclose(got, expected, atol=1e-10)


def test_identity_rule():
    x, relevance = _random(3, 4), _random(3, 4)
    y, (got,) = _relevances(lambda t: identity(torch.nn.functional.gelu, t), [x], relevance)
    assert torch.equal(got, relevance) and torch.allclose(y, torch.nn.functional.gelu(x))
    with pytest.raises(ValueError, match="elementwise function"):
        identity(lambda t: t.sum(-1), x)


@pytest.mark.parametrize("layer", [nn.Linear(4, 3), nn.Conv2d(2, 3, 3, padding=1)])
def test_fast_epsilon_equals_zennits_epsilon(layer):
    layer = layer.double()
    x = _random(2, 4) if isinstance(layer, nn.Linear) else _random(2, 2, 5, 5)
    relevances = []
    for hook in (FastEpsilon(1e-3), Epsilon(1e-3)):
        leaf = x.clone().requires_grad_()
        with NameMapComposite([([""], hook)]).context(layer):
            output = layer(leaf)
            (relevance,) = torch.autograd.grad(output, leaf, output.detach())
        relevances.append(relevance)
    assert torch.allclose(*relevances, atol=1e-12)
    if isinstance(layer, nn.Linear):  # R_x = x * W^T (R / (z + eps sign z)) with R = z
        z = layer(x)
        ratio = z / (z + 1e-3 * z.sign())
        assert torch.allclose(relevances[0], x * (ratio @ layer.weight), atol=1e-12)


def test_the_rules_compute_the_plain_values():
    a, b = _random(2, 3, 3), _random(2, 3, 3)
    for name, args in [("add", (a, b)), ("matmul", (a, b)), ("multiply", (a, b)), ("softmax", (a,)),
                       ("identity", (torch.tanh, a)), ("affine", (lambda t: 2 * t + 1, a)),
                       ("layer_norm", (a, None, None))]:
        kwargs = {"eps": 1e-5} if name == "layer_norm" else {}
        assert torch.allclose(getattr(LRPOps(), name)(*args, **kwargs), getattr(GradientOps(), name)(*args, **kwargs))


def test_cp_lrp_treats_attention_and_gates_as_constants():
    assert LRPOps("cp-lrp").constant_attention and LRPOps("cp-lrp").constant_gate
    assert not LRPOps().constant_attention and not GradientOps().constant_gate
    with pytest.raises(ValueError, match="variant must be one of 'attnlrp', 'cp-lrp'"):
        LRPOps("attn-lrp")


# ---------------------------------------------------------------------------------------------------------------
# one block of attention over two tokens, by hand


class OneBlockAttention(nn.Module):
    """Two tokens with scalar embeddings x; queries, keys and values are x itself ("qkv", a Linear(1, 3) of ones);
    the second token attends to both, and its output is x_2 plus the attention output."""

    def __init__(self):
        super().__init__()
        self.qkv = nn.Linear(1, 3, bias=False)
        nn.init.ones_(self.qkv.weight)

    def forward(self, x):  # (N, 2, 1) -> (N, 1)
        q, k, v = self.qkv(x).unbind(-1)
        scores = matmul(q[:, 1:, None], k[:, None, :])  # (N, 1, 2): q_2 k_j
        output = matmul(softmax(scores, -1), v[:, :, None])  # (N, 1, 1)
        return add(x[:, 1:, 0], output[:, :, 0])


def _hand_relevances():
    """x = (1, 2): scores s = (2, 4), weights a = (1, e^2) / (1 + e^2), attention output o = a_1 + 2 a_2 and
    y = 2 + o, whose relevance is y. The sum passes 2 to x_2 and o to the attention; A v gives every term
    a_j v_j half to a_j and half to v_j; the softmax gives s_j (R_aj - a_j sum R_a) = s_j (a_j v_j / 2 - a_j o / 2)
    to s_j = q_2 k_j, which gives half to q_2 and half to k_j."""
    a1, a2 = 1 / (1 + math.e ** 2), math.e ** 2 / (1 + math.e ** 2)
    o = a1 + 2 * a2
    rel_s1, rel_s2 = 2 * (a1 / 2 - a1 * o / 2), 4 * (a2 - a2 * o / 2)
    values = [a1 / 2, a2]
    keys = [rel_s1 / 2, rel_s2 / 2]
    query = (rel_s1 + rel_s2) / 2
    return values, keys, query, 2.0


def test_one_block_attention_by_hand():
    values, keys, query, residual = _hand_relevances()
    model = OneBlockAttention().double()
    composite = NameMapComposite([(["qkv"], Epsilon(epsilon=1e-12))])
    x = torch.tensor([[[1.0], [2.0]]], dtype=torch.float64, requires_grad=True)
    attribution = CondAttribution(model)
    result = attribution(x, [{"y": [0]}], composite)
    expected = [values[0] + keys[0], residual + values[1] + keys[1] + query]
    assert torch.allclose(x.grad[0, :, 0], torch.tensor(expected, dtype=torch.float64), atol=1e-10)
    assert torch.isclose(result.prediction[0, 0], torch.tensor(2 + (1 + 2 * math.e ** 2) / (1 + math.e ** 2),
                                                               dtype=torch.float64))
    # through the values only (the residual bypasses "qkv" and is excluded), then queries and keys only
    concept = TokenConcept()
    attribution(x, [{"qkv": [2], "y": [0]}], composite, mask_map=concept.mask)
    assert torch.allclose(x.grad[0, :, 0], torch.tensor(values, dtype=torch.float64), atol=1e-10)
    attribution(x, [{"qkv": [0, 1], "y": [0]}], composite, mask_map=concept.mask)
    assert torch.allclose(x.grad[0, :, 0], torch.tensor([keys[0], keys[1] + query], dtype=torch.float64), atol=1e-10)
    # the query at token 2 only, as a token restriction of the concept
    attribution(x, [{"qkv": {0: [1]}, "y": [0]}], composite, mask_map=concept.mask_rf)
    assert torch.allclose(x.grad[0, :, 0], torch.tensor([0.0, query], dtype=torch.float64), atol=1e-10)
