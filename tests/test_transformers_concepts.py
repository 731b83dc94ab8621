"""Token and head concepts: masks, restriction to tokens, attribution and reference sampling on known tensors."""
import numpy as np
import pytest
import torch

from crp.transformers import AxisMask, HeadConcept, PatchConcept, TokenConcept, TokenMask


def _grad(*shape):
    return torch.arange(float(np.prod(shape))).reshape(shape) + 1


def test_token_concept_keeps_the_last_axis_at_every_token():
    grad = _grad(2, 3, 4)
    masked = TokenConcept().mask(1, [0, 2])(grad)
    assert torch.equal(masked[0], grad[0])  # other rows are untouched
    expected = torch.zeros(3, 4)
    expected[:, [0, 2]] = grad[1][:, [0, 2]]
    assert torch.equal(masked[1], expected)
    assert torch.equal(TokenConcept().mask(0, [])(grad)[0], torch.zeros(3, 4))
    assert not torch.equal(masked, grad)  # a new tensor; the gradient itself is unchanged
    assert torch.equal(grad, _grad(2, 3, 4))


def test_mask_rf_restricts_concepts_to_tokens():
    grad = _grad(1, 3, 4)
    masked = TokenConcept().mask_rf(0, {1: [0, 2], 3: 1})(grad)
    expected = torch.zeros(1, 3, 4)
    for token, concept in [(0, 1), (2, 1), (1, 3)]:
        expected[0, token, concept] = grad[0, token, concept]
    assert torch.equal(masked, expected)


def test_tokens_as_concepts():
    grad = _grad(1, 3, 4)
    masked = TokenConcept(axis=1).mask(0, [2])(grad)
    assert torch.equal(masked[0, 2], grad[0, 2]) and masked[0, :2].abs().sum() == 0
    with pytest.raises(IndexError, match="restrict them with mask, not mask_rf"):
        TokenConcept(axis=1).mask_rf(0, {0: [1]})(grad)


def test_head_concept_on_heads_and_on_heads_side_by_side():
    grad = _grad(1, 3, 2, 4)  # (N, T, H, D)
    masked = HeadConcept().mask(0, [1])(grad)
    assert torch.equal(masked[0, :, 1], grad[0, :, 1]) and masked[0, :, 0].abs().sum() == 0
    flat = HeadConcept(n_heads=2).mask(0, [1])(grad.reshape(1, 3, 8))
    assert torch.equal(flat, masked.reshape(1, 3, 8))
    only = HeadConcept().mask_rf(0, {0: [2]})(grad)
    assert only.abs().sum() == grad[0, 2, 0].sum() and torch.equal(only[0, 2, 0], grad[0, 2, 0])


def test_masks_are_row_masks_that_merge_into_one_product():
    from crp.hooks import MaskHook

    grad = _grad(2, 3, 4)
    hook = MaskHook([TokenConcept().mask(0, [1]), TokenConcept().mask_rf(1, {2: [0]})])
    masked = hook.backward(None, grad)
    assert isinstance(hook.fn_list[0], AxisMask) and isinstance(hook.fn_list[1], TokenMask)
    assert masked[0, :, 1].equal(grad[0, :, 1]) and masked[1].abs().sum() == grad[1, 0, 2]


def test_attribute_sums_over_tokens():
    relevance = torch.tensor([[[1.0, -2.0], [3.0, 4.0]]])  # (N=1, T=2, C=2)
    assert torch.equal(TokenConcept().attribute(relevance, abs_norm=False), torch.tensor([[4.0, 2.0]]))
    assert torch.allclose(TokenConcept().attribute(relevance), torch.tensor([[4.0, 2.0]]) / 6)
    heads = torch.ones(1, 2, 3, 4)
    assert torch.equal(HeadConcept().attribute(heads, abs_norm=False), torch.full((1, 3), 8.0))
    mask = torch.tensor([[[0.0], [1.0]]])  # only the second token
    assert torch.equal(TokenConcept().attribute(relevance, mask, abs_norm=False), torch.tensor([[3.0, 4.0]]))


def test_reference_sampling_ranks_samples_and_names_their_token():
    relevance = torch.tensor([
        [[1.0, 0.0], [0.0, 5.0]],
        [[0.0, 2.0], [4.0, 0.0]],
        [[3.0, 0.0], [3.0, 1.0]],
    ])  # (N=3, T=2, C=2)
    order, values, tokens = TokenConcept().reference_sampling(relevance, abs_norm=False)
    assert order[:, 0].tolist() == [2, 1, 0] and values[:, 0].tolist() == [6.0, 4.0, 1.0]
    assert tokens[:, 0].tolist() == [0, 1, 0]  # the first maximum among equal tokens
    order, values, tokens = TokenConcept().reference_sampling(relevance, max_target="max", abs_norm=False)
    assert order[:, 1].tolist() == [0, 1, 2] and values[:, 1].tolist() == [5.0, 2.0, 1.0]
    assert tokens[:, 1].tolist() == [1, 0, 1]
    assert TokenConcept().get_rf_indices((7, 16)).tolist() == list(range(7))


@pytest.mark.parametrize("make, message", [
    (lambda: TokenConcept().mask(0, [4])(torch.ones(1, 3, 4)), r"concept ids \[4\] are out of range .* 4 concepts"),
    (lambda: HeadConcept().mask(0, [2], "heads.0")(torch.ones(1, 3, 2, 4)),
     r"head ids \[2\] are out of range for layer 'heads.0' with 2 heads; use ids in \[0, 1\]"),
    (lambda: TokenConcept().mask_rf(0, {1: [3]}, "neurons.0")(torch.ones(1, 3, 4)),
     r"token positions \[3\] of concept 1 are out of range for layer 'neurons.0' with 3 tokens"),
    (lambda: HeadConcept(n_heads=3).mask(0, [0])(torch.ones(1, 3, 8)), "do not split into 3 heads"),
    (lambda: HeadConcept().mask(0, [0])(torch.ones(1, 3)), "without a concept axis 2"),
])
def test_bad_ids_name_the_layer_and_the_range(make, message):
    with pytest.raises(IndexError, match=message):
        make()


def test_bad_arguments():
    with pytest.raises(ValueError, match="axis must be a concept axis other than the batch axis 0"):
        TokenConcept(axis=0)
    with pytest.raises(TypeError, match="axis must be an int"):
        TokenConcept(axis="last")
    with pytest.raises(ValueError, match="n_heads must be an int >= 1"):
        HeadConcept(n_heads=0)
    with pytest.raises(ValueError, match="relevance must be a tensor of shape \\(N, T, ...\\)"):
        TokenConcept().attribute(torch.ones(2, 3))
    with pytest.raises(ValueError, match="max_target must be one of 'sum', 'max'"):
        TokenConcept().reference_sampling(torch.ones(2, 3, 4), max_target="mean")


def test_scores_equal_a_naive_float64_loop_with_padding_ties_and_nan():
    """The fast scores (one amax, one comparison) against max/sum written out per sample and concept."""
    generator = torch.Generator().manual_seed(0)
    relevance = torch.randint(-3, 4, (6, 5, 7), generator=generator).float()  # small ints: many ties
    relevance[1, 3:] = float("-inf")  # padded tokens, as outputs_to_rank marks them
    relevance[4, 1:] = float("-inf")
    relevance[2, 2, 3] = relevance[5, 4, 6] = float("nan")
    relevance[3, :, 2] = float("-inf")  # a column of padding only
    for max_target in ("sum", "max"):
        values, tokens = TokenConcept().scores(relevance, max_target=max_target, abs_norm=False)
        for n in range(6):
            for c in range(7):
                column = [float(value) for value in relevance[n, :, c].double()]
                nan = any(value != value for value in column)
                token = 0 if nan else max(range(5), key=lambda t: (column[t], -t))  # NaN: position 0
                expected = float("nan") if nan else column[token] if max_target == "max" else \
                    sum(value for value in column if value != float("-inf"))
                assert int(tokens[n, c]) == token, (n, c)
                assert float(values[n, c]) == pytest.approx(expected, nan_ok=True), (n, c, max_target)
    long = torch.randn(2, 300, 3, generator=generator)  # positions beyond uint8: int16
    assert torch.equal(TokenConcept().scores(long, max_target="max")[1], long.argmax(1))


def test_patch_concept_ranks_at_the_patch_tokens_only():
    relevance = torch.arange(24, dtype=torch.float32).reshape(1, 3, 8)  # 3 tokens (class token first), 8 neurons
    values = PatchConcept().per_token(relevance)
    assert torch.equal(values[0, 0], torch.zeros(8)) and torch.equal(values[0, 1:], relevance[0, 1:])
    assert torch.equal(PatchConcept().attribute(relevance, abs_norm=False), relevance[:, 1:].sum(1))
    order, _, tokens = PatchConcept().reference_sampling(torch.cat([relevance, -relevance]), abs_norm=False)
    assert order[0].tolist() == [0] * 8 and tokens[0].tolist() == [2] * 8  # the largest patch token: 2, not 0
    # all patch values negative: a class token counted as 0 would win; left out, the largest patch token does
    negative = -1.0 - relevance
    for max_target in ("sum", "max"):
        values, tokens = PatchConcept().scores(negative, max_target=max_target, abs_norm=False)
        assert tokens[0].tolist() == [1] * 8
        expected = negative[0, 1:].sum(0) if max_target == "sum" else negative[0, 1]
        assert torch.equal(values[0], expected)
    two = PatchConcept(class_tokens=2)  # e.g. a class token and a register token
    assert two.scores(negative, max_target="max", abs_norm=False)[1][0].tolist() == [2] * 8
    with pytest.raises(ValueError, match="none of them a patch after 3 class tokens; give class_tokens"):
        PatchConcept(class_tokens=3).scores(relevance)
    with pytest.raises(ValueError, match="axis must be a concept axis other than the token axis 1"):
        PatchConcept(axis=1)
