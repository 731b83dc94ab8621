"""CRP on the supported transformers: the adapters' forward, padding, invariances, generate, the attribution graph,
and that the model is left as it was."""
import pytest
import torch
from transformer_models import assert_unchanged, language_model, snapshot, tokens, vision_transformer
from zennit.composites import EpsilonPlus

from crp.attribution import AttributionGraph, CondAttribution
from crp.graph import trace_model_graph
from crp.transformers import (
    CPLRP,
    AttnLRP,
    HeadConcept,
    LanguageModel,
    TokenAttribution,
    TokenConcept,
    TransformerRules,
    VisionModel,
)

pytest.importorskip("transformers")

LANGUAGE_MODELS = ["gpt2", "llama", "qwen2", "qwen3", "gpt2-classifier", "llama-classifier"]
COMPOSITES = {"attnlrp": AttnLRP, "cp-lrp": CPLRP}
_CACHE = {}


def _model(name: str):
    if name not in _CACHE:
        _CACHE[name] = language_model(name)
    return _CACHE[name]


def _padded_tokens():
    """Row 0 full, row 1 right-padded after 4 tokens, row 2 left-padded by 2."""
    ids = tokens(3, 6)
    mask = torch.ones_like(ids)
    mask[1, 4:] = 0
    mask[2, :2] = 0
    return ids.masked_fill(mask == 0, 0), mask


def _target(lm: LanguageModel, embeddings: torch.Tensor) -> int:
    return int(lm(embeddings)[0].argmax())


# ---------------------------------------------------------------------------------------------------------------
# the forward


@pytest.mark.parametrize("name", LANGUAGE_MODELS)
def test_forward_equals_the_models_own_with_padding(name):
    model = _model(name)
    lm = LanguageModel(model)
    ids, mask = _padded_tokens()
    logits = lm(lm.embed(ids, mask))
    expected = model(input_ids=ids, attention_mask=mask).logits
    if not name.endswith("classifier"):
        expected = expected[torch.arange(3), torch.tensor([5, 3, 5])]  # the last real token of every row
    assert logits.shape == expected.shape
    assert torch.allclose(logits, expected, atol=1e-10)
    with AttnLRP().context(lm):  # the rules change gradients, not values
        assert torch.allclose(lm(lm.embed(ids, mask)), logits, atol=1e-12)


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_position_selects_the_logits_of_a_token(name):
    model = _model(name)
    ids = tokens(2, 5)
    logits = LanguageModel(model, position=2)(LanguageModel(model).embed(ids))
    assert torch.allclose(logits, model(input_ids=ids).logits[:, 2], atol=1e-10)


@pytest.mark.parametrize("name", ["gpt2", "llama-classifier"])
def test_without_a_composite_the_heatmap_is_the_plain_gradient(name):
    model = _model(name)
    lm = LanguageModel(model)
    embeddings = lm.embed(tokens(1, 5))
    target = _target(lm, embeddings)
    result = TokenAttribution(lm)(embeddings, [{"y": [target]}])
    leaf = embeddings.detach().clone().requires_grad_()
    logits = model(inputs_embeds=leaf).logits[0]
    logits = logits if name.endswith("classifier") else logits[-1]
    (gradient,) = torch.autograd.grad(logits[target], leaf)
    # (LLaMA's RMSNorm computes in float32, also for a float64 model)
    assert torch.allclose(embeddings.grad, logits[target] * gradient, atol=1e-6 * embeddings.grad.abs().max())
    assert torch.allclose(result.heatmap, embeddings.grad.sum(-1))


def test_a_zennit_composite_with_the_transformer_rules_is_attnlrp():
    lm = LanguageModel(_model("gpt2"))  # GPT-2's Conv1D counts as a Linear layer for zennit's EpsilonPlus
    embeddings = lm.embed(tokens(1, 5))
    conditions = [{"y": [_target(lm, embeddings)]}]
    attribution = TokenAttribution(lm)
    ours = attribution(embeddings, conditions, AttnLRP(epsilon=1e-6)).heatmap
    zennits = attribution(embeddings, conditions, EpsilonPlus(epsilon=1e-6, canonizers=[TransformerRules()])).heatmap
    assert torch.allclose(ours, zennits, atol=1e-12)
    assert ours.abs().max() > 1e-3


def test_class_level_patches_do_not_change_the_relevance(monkeypatch):
    """lxt patches the classes of a model (their forward) for its gradient*input rules; crp installs its forwards
    on the instances, so such patches do not reach crp's relevance."""
    from transformers.models.gpt2.modeling_gpt2 import GPT2MLP

    lm = LanguageModel(_model("gpt2"))
    embeddings = lm.embed(tokens(1, 5))
    conditions = [{"y": [_target(lm, embeddings)]}]
    before = TokenAttribution(lm)(embeddings, conditions, AttnLRP()).heatmap
    monkeypatch.setattr(GPT2MLP, "forward", lambda self, x: self.c_proj(self.act(self.c_fc(x)).detach()))
    monkeypatch.setattr(torch.nn.LayerNorm, "forward", lambda self, x: torch.nn.functional.layer_norm(
        x, self.normalized_shape, self.weight, self.bias, self.eps).detach() + 0 * x)
    after = TokenAttribution(lm)(embeddings, conditions, AttnLRP()).heatmap
    assert torch.allclose(before, after, atol=1e-12)


# ---------------------------------------------------------------------------------------------------------------
# padding, conservation and the other invariances


@pytest.mark.parametrize("variant", COMPOSITES)
@pytest.mark.parametrize("name", ["gpt2", "llama", "qwen2", "gpt2-classifier"])
def test_padded_tokens_get_no_relevance_and_change_nothing(name, variant):
    lm = LanguageModel(_model(name))
    ids, mask = _padded_tokens()
    attribution = TokenAttribution(lm)
    result = attribution(ids, [{"y": [1]}], COMPOSITES[variant](), attention_mask=mask)
    assert torch.all(result.heatmap[mask == 0] == 0)
    alone = attribution(ids[1:2, :4], [{"y": [1]}], COMPOSITES[variant]())  # row 1 without its padding
    assert torch.allclose(result.heatmap[1, :4], alone.heatmap[0], atol=1e-12)
    assert result.heatmap[mask == 1].abs().min() > 0


@pytest.mark.parametrize("variant", COMPOSITES)
@pytest.mark.parametrize("name", ["gpt2", "llama", "qwen3", "llama-classifier"])
def test_every_residual_dimension_adds_up_to_the_unconditional_heatmap(name, variant):
    lm = LanguageModel(_model(name))
    embeddings = lm.embed(tokens(1, 5))
    target = _target(lm, embeddings)
    attribution = TokenAttribution(lm)
    whole = attribution(embeddings, [{"y": [target]}], COMPOSITES[variant]()).heatmap
    for layer in lm.layer_names("residual"):
        conditions = [{layer: [c], "y": [target]} for c in range(lm.embedding_size)]
        parts = attribution(embeddings, conditions, COMPOSITES[variant](), exclude_parallel=False).heatmap
        assert torch.allclose(parts.sum(0), whole[0], atol=1e-10 * whole.abs().max())


def test_cp_lrp_conserves_the_relevance_of_a_llama():
    """Without biases, with the attention weights and gates as constants, every rule is conservative."""
    lm = LanguageModel(_model("llama"))
    embeddings = lm.embed(tokens(1, 5))
    target = _target(lm, embeddings)
    result = TokenAttribution(lm)(embeddings, [{"y": [target]}], CPLRP(epsilon=1e-12),
                                  record_layer=lm.layer_names("residual"))
    logit = result.prediction[0, target]
    assert torch.isclose(result.heatmap.sum(), logit, rtol=1e-9)
    assert all(torch.isclose(relevance.sum(), logit, rtol=1e-9) for relevance in result.relevances.values())


def test_a_neuron_at_one_token_reaches_no_later_token():
    lm = LanguageModel(_model("llama"))
    embeddings = lm.embed(tokens(1, 6))
    target = _target(lm, embeddings)
    attribution, concept, layer = TokenAttribution(lm), TokenConcept(), lm.layer_names("neurons")[1]
    by_token = attribution(embeddings, [{layer: {3: [t]}, "y": [target]} for t in range(6)], AttnLRP(),
                           mask_map=concept.mask_rf).heatmap
    for t in range(6):
        assert torch.all(by_token[t, t + 1:] == 0)
    whole = attribution(embeddings, [{layer: [3], "y": [target]}], AttnLRP()).heatmap
    assert torch.allclose(by_token.sum(0), whole[0], atol=1e-12)


@pytest.mark.parametrize("name", ["gpt2", "qwen3"])
def test_the_heads_add_up_to_the_whole_attention(name):
    lm = LanguageModel(_model(name))
    embeddings = lm.embed(tokens(1, 5))
    target = _target(lm, embeddings)
    layer = lm.layer_names("heads")[1]
    attribution = TokenAttribution(lm)
    heads = attribution(embeddings, [{layer: [h], "y": [target]} for h in range(2)], AttnLRP(),
                        mask_map=HeadConcept().mask, record_layer=[layer])
    both = attribution(embeddings, [{layer: [0, 1], "y": [target]}], AttnLRP(), mask_map=HeadConcept().mask)
    assert heads.activations[layer].shape[:3] == (2, 5, 2)  # (rows, tokens, heads, head dimension)
    assert torch.allclose(heads.heatmap.sum(0), both.heatmap[0], atol=1e-12)
    per_head = HeadConcept().attribute(heads.relevances[layer][:1], abs_norm=False)
    assert torch.allclose(per_head[0], heads.relevances[layer][0].sum((0, 2)))


# ---------------------------------------------------------------------------------------------------------------
# generate and the attribution graph


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_generate_over_all_neurons_equals_call(name):
    lm = LanguageModel(_model(name))
    embeddings = lm.embed(tokens(1, 5))
    target = _target(lm, embeddings)
    layer = lm.layer_names("neurons")[1]
    attribution = TokenAttribution(lm)
    width = attribution(embeddings, [{"y": [target]}], record_layer=[layer]).activations[layer].shape[-1]
    conditions = [{layer: [c], "y": [target]} for c in range(width)]
    record = [lm.layer_names("heads")[0]]
    whole = attribution(embeddings, conditions, AttnLRP(), record_layer=record)
    parts = list(attribution.generate(embeddings, conditions, AttnLRP(), record_layer=record, batch_size=5,
                                      verbose=False))
    assert len(parts) == -(-width // 5)
    assert torch.allclose(torch.cat([p.heatmap for p in parts]), whole.heatmap, atol=1e-12)
    assert torch.allclose(torch.cat([p.relevances[record[0]] for p in parts]), whole.relevances[record[0]],
                          atol=1e-12)


def test_attribution_graph_from_the_neurons_of_one_block_to_earlier_ones():
    lm = LanguageModel(_model("gpt2"))
    embeddings = lm.embed(tokens(1, 5))
    target = _target(lm, embeddings)
    neurons, heads = lm.layer_names("neurons"), lm.layer_names("heads")
    graph = trace_model_graph(lm, embeddings, neurons + heads)
    assert set(graph.find_input_layers(neurons[1])) == {heads[0], neurons[0], heads[1]}
    layer_map = {**{n: TokenConcept() for n in neurons}, **{h: HeadConcept() for h in heads}}
    attribution = TokenAttribution(lm)
    result = AttributionGraph(attribution, graph, layer_map)(embeddings, AttnLRP(), 3, neurons[1], target=target,
                                                             width=[2, 1], verbose=False)
    assert result.nodes[0] == (neurons[1], 3)
    # the root's edges: the relevance of every earlier concept, conditioned on the root, normalized per layer
    direct = attribution(embeddings, [{neurons[1]: [3], "y": [target]}], AttnLRP(), exclude_parallel=False,
                         record_layer=[neurons[0], heads[0], heads[1]])
    edges = result.connections[(neurons[1], 3)]
    assert [layer for layer, _, _ in edges] == [heads[0]] * 2 + [neurons[0]] * 2 + [heads[1]] * 2  # forward order
    for layer in (heads[0], neurons[0], heads[1]):
        shares = layer_map[layer].attribute(direct.relevances[layer])[0]
        top = torch.argsort(shares, descending=True)[:2].tolist()
        assert [(c, pytest.approx(float(shares[c]))) for c in top] == [(c, s) for n, c, s in edges if n == layer]


# ---------------------------------------------------------------------------------------------------------------
# torchvision's ViT


@pytest.mark.parametrize("variant", COMPOSITES)
def test_vision_transformer(variant):
    vit = vision_transformer()
    adapted = VisionModel(vit)
    images = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    assert torch.allclose(adapted(images), vit(images), atol=1e-12)
    before = snapshot(vit)
    whole = CondAttribution(vit)(images.clone().requires_grad_(), [{"y": [1]}], COMPOSITES[variant]())
    assert whole.heatmap.shape == (2, 8, 8)
    layer = adapted.layer_names("residual")[1]
    conditions = [{layer: [c], "y": [1]} for c in range(8)]
    parts = CondAttribution(adapted)(images[:1].clone().requires_grad_(), conditions, COMPOSITES[variant](),
                                     mask_map=TokenConcept().mask, exclude_parallel=False)
    assert torch.allclose(parts.heatmap.sum(0), whole.heatmap[0], atol=1e-10 * whole.heatmap.abs().max())
    heads = CondAttribution(adapted)(images[:1].clone().requires_grad_(), [{"heads.0": [h], "y": [1]} for h in (0, 1)],
                                     COMPOSITES[variant](), mask_map=HeadConcept().mask, record_layer=["heads.0"])
    assert heads.activations["heads.0"].shape == (2, 5, 2, 4)  # class token and 4 patches, 2 heads of 4
    assert adapted.layer_names("attention") == [f"model.encoder.layers.encoder_layer_{i}.self_attention.out_proj"
                                                for i in range(2)]
    assert_unchanged(vit, before)


# ---------------------------------------------------------------------------------------------------------------
# the model is left as it was


@pytest.mark.parametrize("name", ["gpt2", "qwen3"])
def test_the_model_is_unchanged_after_calls_and_after_an_exception(name):
    model = _model(name)
    before = snapshot(model)
    lm = LanguageModel(model)
    attribution = TokenAttribution(lm)
    embeddings = lm.embed(tokens(1, 4))
    layer = lm.layer_names("heads")[0]
    with attribution.context(AttnLRP()):
        attribution(embeddings, [{layer: [1], "y": [2]}], mask_map=HeadConcept().mask)
        assert any("forward" in module.__dict__ for module in model.modules())
    list(attribution.generate(embeddings, [{layer: [h], "y": [2]} for h in (0, 1)], CPLRP(),
                              mask_map=HeadConcept().mask, verbose=False))
    assert_unchanged(model, before)
    with pytest.raises(IndexError, match="head ids"):
        attribution(embeddings, [{layer: [7], "y": [2]}], AttnLRP(), mask_map=HeadConcept().mask)
    assert_unchanged(model, before)
    with pytest.raises(IndexError, match="head ids"):
        list(attribution.generate(embeddings, [{layer: [7], "y": [2]}], AttnLRP(), mask_map=HeadConcept().mask,
                                  verbose=False))
    assert_unchanged(model, before)
