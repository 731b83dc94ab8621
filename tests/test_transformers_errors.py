"""Bad input to crp.transformers: errors that name the argument and the fix, and the model left unchanged."""
import pytest
import torch
from torch import nn
from transformer_models import assert_unchanged, language_model, snapshot, tokens, vision_transformer

from crp.attribution import CondAttribution
from crp.transformers import AttnLRP, HeadConcept, LanguageModel, TokenAttribution, TokenConcept, VisionModel

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def gpt2():
    return language_model("gpt2")


def test_an_unsupported_architecture_is_refused_naming_the_module_and_the_supported_list():
    import transformers as hf

    bert = hf.BertForSequenceClassification(hf.BertConfig(
        vocab_size=20, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8)).eval()
    with pytest.raises(ValueError, match=r"no AttnLRP rules for \d+ module\(s\) of model: '\(the model\)' "
                                         r"\(BertForSequenceClassification\) is not supported; 'bert' \(BertModel\) "
                                         r"is not supported.*Supported architectures: GPT-2"):
        LanguageModel(bert)


def test_an_unsupported_module_is_refused_by_the_composite_and_the_model_is_unchanged():
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2)).eval()
    before = snapshot(model)
    with pytest.raises(ValueError, match=r"'1' \(BatchNorm1d\) is not supported.*torchvision's VisionTransformer"):
        CondAttribution(model)(torch.randn(2, 3, requires_grad=True), [{"y": [0]}], AttnLRP())
    assert_unchanged(model, before)


def test_an_unsupported_configuration_is_refused():
    import transformers as hf

    model = hf.GPT2LMHeadModel(hf.GPT2Config(n_layer=1, n_head=2, n_embd=8, vocab_size=20, n_positions=8,
                                             add_cross_attention=True)).eval()
    with pytest.raises(ValueError, match="has cross-attention"):
        LanguageModel(model)


def test_a_language_model_must_be_wrapped(gpt2):
    before = snapshot(gpt2)
    embeddings = gpt2.get_input_embeddings()(tokens(1, 4)).detach().requires_grad_()
    with pytest.raises(ValueError, match=r"wrap it for crp: crp.transformers.LanguageModel\(model\)"):
        CondAttribution(gpt2)(embeddings, [{"y": [0]}], AttnLRP())
    with pytest.raises(TypeError, match=r"model must be a crp.transformers.LanguageModel, got GPT2LMHeadModel. Wrap "
                                        r"the Hugging Face model: TokenAttribution\(LanguageModel\(model\)\)"):
        TokenAttribution(gpt2)
    assert_unchanged(gpt2, before)


def test_adapters_take_their_kind_of_model(gpt2):
    with pytest.raises(ValueError, match="model must be a causal LM or sequence classifier.*Use VisionModel"):
        LanguageModel(vision_transformer())
    with pytest.raises(ValueError, match="model must be torchvision's VisionTransformer.*Use LanguageModel"):
        VisionModel(gpt2)
    with pytest.raises(ValueError, match="model must be a causal LM or sequence classifier"):
        LanguageModel(gpt2.transformer)


def test_token_positions_out_of_range(gpt2):
    embeddings = LanguageModel(gpt2).embed(tokens(1, 4))
    with pytest.raises(ValueError, match=r"position must be a token position in \[-4, 3\] for sequences of 4 tokens"):
        LanguageModel(gpt2, position=4)(embeddings)
    with pytest.raises(TypeError, match="position must be an int or None"):
        LanguageModel(gpt2, position=1.0)
    mask = torch.tensor([[1, 1, 0, 0]])
    padded = LanguageModel(gpt2).embed(tokens(1, 4), mask)
    with pytest.raises(ValueError, match=r"position must be the position of a real token.*rows \[0\] are padded"):
        LanguageModel(gpt2, position=3)(padded)
    lm = LanguageModel(gpt2)
    before = snapshot(gpt2)
    with pytest.raises(IndexError, match=r"token positions \[4\] of concept 0 are out of range for layer "
                                         r"'neurons.0' with 4 tokens; use positions in \[0, 3\]"):
        TokenAttribution(lm)(embeddings, [{"neurons.0": {0: [4]}, "y": [1]}], AttnLRP(),
                             mask_map=TokenConcept().mask_rf)
    assert_unchanged(gpt2, before)


def test_a_head_beyond_the_layers_heads(gpt2):
    lm = LanguageModel(gpt2)
    before = snapshot(gpt2)
    with pytest.raises(IndexError, match=r"head ids \[2\] are out of range for layer 'heads.1' with 2 heads; use ids "
                                         r"in \[0, 1\]"):
        TokenAttribution(lm)(tokens(1, 4), [{"heads.1": [2], "y": [1]}], AttnLRP(), mask_map=HeadConcept().mask)
    assert_unchanged(gpt2, before)


def test_embeddings_without_gradients(gpt2):
    lm = LanguageModel(gpt2)
    embeddings = lm.embed(tokens(1, 4)).detach()
    with pytest.raises(ValueError, match=r"data must require gradients.*call data.requires_grad_\(\) first"):
        TokenAttribution(lm)(embeddings, [{"y": [1]}], AttnLRP())
    with pytest.raises(ValueError, match=r"embeddings must be float token embeddings of shape \(N, T, 8\).*embed"):
        lm(torch.ones(1, 4, 5))
    with pytest.raises(TypeError, match="embeddings must be a tensor of token embeddings"):
        lm([[0.0] * 8])
    with pytest.raises(ValueError, match=r"embeddings must be rows with at least one real token.*rows \[1\]"):
        lm(torch.cat([lm.embed(tokens(1, 4)), torch.zeros(1, 4, 8)]))


def test_an_attention_mask_of_the_wrong_shape(gpt2):
    lm = LanguageModel(gpt2)
    with pytest.raises(ValueError, match=r"attention_mask must be of the shape of the tokens, \(1, 4\), got Tensor of "
                                         r"shape \(1, 5\).*tokenizer's attention_mask"):
        lm.embed(tokens(1, 4), torch.ones(1, 5))
    with pytest.raises(ValueError, match=r"attention_mask must be of the shape of the tokens"):
        TokenAttribution(lm)(lm.embed(tokens(1, 4)), [{"y": [1]}], AttnLRP(), attention_mask=torch.ones(4))
    with pytest.raises(ValueError, match=r"attention_mask must be made of 0 \(padding\) and 1 \(token\)"):
        lm.embed(tokens(1, 4), torch.full((1, 4), 2))
    with pytest.raises(ValueError, match=r"input_ids must be token ids of shape \(N, T\).*input_ids\[None\]"):
        lm.embed(tokens(1, 4)[0])


def test_a_model_in_training_mode(gpt2):
    lm = LanguageModel(gpt2)
    embeddings = lm.embed(tokens(1, 4))
    gpt2.train()
    try:
        with pytest.raises(ValueError, match=r"training mode.*call model.eval\(\)"):
            lm(embeddings)
    finally:
        gpt2.eval()


def test_zennit_patched_by_lxt_is_refused(gpt2, monkeypatch):
    from zennit.core import BasicHook

    def backward(_self, _module, grad_input, _grad_output):
        return grad_input

    backward.__module__ = "lxt.efficient.zennit_patches"
    monkeypatch.setattr(BasicHook, "backward", backward)
    lm = LanguageModel(gpt2)
    before = snapshot(gpt2)
    with pytest.raises(RuntimeError, match="patched by lxt"):
        TokenAttribution(lm)(tokens(1, 4), [{"y": [1]}], AttnLRP())
    assert_unchanged(gpt2, before)


def test_rule_arguments():
    from crp.transformers import TransformerRules

    with pytest.raises(ValueError, match="variant must be one of 'attnlrp', 'cp-lrp'"):
        TransformerRules("lrp")
    with pytest.raises(TypeError, match="epsilon must be a small positive float"):
        TransformerRules(epsilon="small")
