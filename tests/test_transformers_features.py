"""FeatureVisualization over text and ViTs: top (sample, token) pairs, windows, padding, highlighted text, patches."""
import re

import numpy as np
import pytest
import torch
from transformer_models import language_model, tokens, vision_transformer

from crp.attribution import CondAttribution
from crp.transformers import (
    AttnLRP,
    HeadConcept,
    LanguageModel,
    PatchConcept,
    TextFeatureVisualization,
    TokenAttribution,
    TokenConcept,
    TokenDataset,
    TokenWindow,
    VisionFeatureVisualization,
    VisionModel,
    patch_box,
    plot_text_grid,
    split_tokens,
    text_html,
)

N, T, K = 10, 6, 4


@pytest.fixture(scope="module")
def text_data():
    ids = tokens(N, T, seed=3)
    mask = torch.ones_like(ids)
    mask[0::3, 4:] = 0  # rows 0, 3, 6, 9 end in two padded tokens
    mask[1, 5:] = 0
    targets = torch.arange(N) % 7 + 1
    return ids, mask, targets


@pytest.fixture(scope="module")
def text_fv(tmp_path_factory, text_data):
    ids, mask, targets = text_data
    lm = LanguageModel(language_model("gpt2"))
    layer_map = {"neurons.0": TokenConcept(), "heads.1": HeadConcept(), "model.transformer.h.1": TokenConcept()}
    results = {}
    for max_target in ("max", "sum"):
        fv = TextFeatureVisualization(TokenAttribution(lm), TokenDataset(ids, targets, attention_mask=mask),
                                      layer_map, max_target=max_target, path=tmp_path_factory.mktemp(max_target),
                                      top_k=K)
        fv.run(AttnLRP(), batch_size=4, verbose=False)
        results[max_target] = fv
    return results


def _naive_outputs(lm, ids, mask, targets, layer):
    """Relevance and activation at ``layer`` of every sample alone, float64, ``(T, concepts)`` over real tokens."""
    attribution = TokenAttribution(lm)
    out = []
    for i in range(N):
        real = mask[i].bool()
        result = attribution(ids[i:i + 1], [{"y": [int(targets[i])]}], AttnLRP(), record_layer=[layer],
                             attention_mask=mask[i:i + 1], exclude_parallel=False)
        rel, act = result.relevances[layer][0], result.activations[layer][0]
        if rel.dim() == 3:  # heads (T, H, D): a head is the sum over its dimensions
            rel, act = rel.sum(-1), act.sum(-1)
        positions = torch.arange(T)[real]
        out.append((positions, rel[real].double(), act[real].double()))
    return out


def _naive_top(per_sample, mode, max_target, k=K):
    values, tokens_ = [], []
    for positions, rel, act in per_sample:
        x = rel if mode == "relevance" else act
        best = x.argmax(0)
        value = x.sum(0) if max_target == "sum" else x.max(0).values
        values.append((value / (value.abs().sum() + 1e-10)).numpy())
        tokens_.append(positions[best].numpy())
    values, tokens_ = np.stack(values), np.stack(tokens_)
    order = np.argsort(-values, axis=0, kind="stable")[:k]
    return order, np.take_along_axis(values, order, 0), np.take_along_axis(tokens_, order, 0)


@pytest.mark.parametrize("max_target", ["max", "sum"])
@pytest.mark.parametrize("mode", ["relevance", "activation"])
@pytest.mark.parametrize("layer", ["neurons.0", "heads.1", "model.transformer.h.1"])
def test_top_sample_token_pairs_equal_a_naive_ranking(text_fv, text_data, max_target, mode, layer):
    ids, mask, targets = text_data
    fv = text_fv[max_target]
    per_sample = _naive_outputs(fv.attribution.model, ids, mask, targets, layer)
    order, values, token_ids = _naive_top(per_sample, mode, max_target)
    indices, stored_values, neurons = fv.results.maximization(layer, mode)
    np.testing.assert_array_equal(indices, order)
    np.testing.assert_array_equal(neurons, token_ids)
    np.testing.assert_allclose(stored_values, values, rtol=1e-5, atol=1e-7)
    assert mask[torch.as_tensor(indices), torch.as_tensor(neurons)].all()  # never a padded token


def test_padded_tokens_would_win_without_the_mask(text_fv, text_data):
    # the ActMax test above can fail: ranked over all tokens, padded tokens are the largest for some neurons
    ids, mask, targets = text_data
    lm = text_fv["max"].attribution.model
    activations = TokenAttribution(lm)(ids, [{"y": [int(t)]} for t in targets], AttnLRP(), record_layer=["neurons.0"],
                                       attention_mask=mask, exclude_parallel=False).activations["neurons.0"]
    embeddings = lm.embed(ids)  # the same tokens unpadded: the padded positions get activations
    unmasked = TokenAttribution(lm)(embeddings, [{"y": [int(t)]} for t in targets], AttnLRP(),
                                    record_layer=["neurons.0"], exclude_parallel=False).activations["neurons.0"]
    assert not torch.allclose(activations, unmasked)
    best = unmasked.argmax(1)  # (N, C) token of the largest activation
    assert (mask.gather(1, best) == 0).any()


def test_outputs_to_rank_marks_padding_without_asking_the_device(text_fv, monkeypatch):
    """Zero embeddings (padding) become -inf at every layer, batch with padding or not, and nothing is read back
    to the host (on a GPU that would make the host wait a batch)."""
    fv = text_fv["max"]
    data = torch.randn(3, 4, 5)
    data[0, 2:] = 0  # two padded tokens in the first sequence only
    outputs = {"a": torch.randn(3, 4, 6), "b": torch.randn(3, 4, 2, 3)}
    reads = []
    for name in ("__bool__", "item", "tolist", "cpu", "numpy"):
        original = getattr(torch.Tensor, name)
        monkeypatch.setattr(torch.Tensor, name, lambda tensor, *a, _o=original, _n=name, **k: (reads.append(_n),
                                                                                                _o(tensor, *a, **k))[1])
    marked = fv.outputs_to_rank(data, outputs)
    unpadded = fv.outputs_to_rank(data[1:], {name: output[1:] for name, output in outputs.items()})
    monkeypatch.undo()
    assert reads == []
    for name, output in outputs.items():
        expected = output.clone()
        expected[0, 2:] = float("-inf")
        assert torch.equal(marked[name], expected)
        assert torch.equal(unpadded[name], output[1:])


@pytest.mark.parametrize("rf", [False, True])
@pytest.mark.parametrize("mode", ["relevance", "activation"])
def test_windows_equal_the_attribution_called_directly(text_fv, text_data, rf, mode):
    ids, mask, targets = text_data
    fv = text_fv["max"]
    concepts = [0, 5]
    references = fv.get_max_reference(concepts, "neurons.0", mode, (0, 3), AttnLRP(), rf, window=1)
    indices, _, neurons = fv.results.maximization("neurons.0", mode)
    attribution, concept = TokenAttribution(fv.attribution.model), TokenConcept()
    for c in concepts:
        windows = references[c]
        assert [w.index for w in windows] == indices[:3, c].tolist()
        assert [w.token for w in windows] == neurons[:3, c].tolist()
        for window in windows:
            i, token = window.index, window.token
            condition = {"neurons.0": {c: [token]} if rf else [c], "y": [int(targets[i])]}
            mask_map = concept.mask_rf if rf else concept.mask
            heatmap = attribution(ids[i:i + 1], [condition], AttnLRP(), mask_map=mask_map,
                                  attention_mask=mask[i:i + 1], exclude_parallel=False).heatmap[0]
            assert (heatmap[~mask[i].bool()] == 0).all()  # padded tokens get no relevance
            positions = [p for p in range(token - 1, token + 2) if 0 <= p < T and mask[i, p]]
            assert window.positions == positions
            assert window.ids == ids[i, positions].tolist()
            np.testing.assert_allclose(window.relevance, heatmap[positions].numpy(), rtol=1e-9, atol=1e-15)
            assert window.positions[window.center] == token


def test_stats_windows_are_those_of_the_target_s_samples(text_fv, text_data):
    ids, mask, targets = text_data
    fv = text_fv["sum"]
    target = int(targets[0])  # the targets of samples 0 and 7
    references = fv.get_stats_reference(3, "neurons.0", [target], "relevance", (0, 2), AttnLRP(), window=6)
    indices, _, neurons = fv.results.statistics("neurons.0", "relevance", target)
    windows = references[f"3:{target}"]
    assert sorted(w.index for w in windows) == sorted(i for i in range(N) if int(targets[i]) == target)
    assert [(w.index, w.token) for w in windows] == list(zip(indices[:2, 3].tolist(), neurons[:2, 3].tolist()))
    attribution = TokenAttribution(fv.attribution.model)
    for window in windows:
        i = window.index
        heatmap = attribution(ids[i:i + 1], [{"neurons.0": [3], "y": [target]}], AttnLRP(),
                              attention_mask=mask[i:i + 1], exclude_parallel=False).heatmap[0]
        assert window.positions == torch.arange(T)[mask[i].bool()].tolist()  # the window covers the sequence
        np.testing.assert_allclose(window.relevance, heatmap[mask[i].bool()].numpy(), rtol=1e-9, atol=1e-15)
    with pytest.raises(ValueError, match="use full_backward=True for padded samples"):
        fv.get_stats_reference(3, "neurons.0", [target], "relevance", (0, 2), AttnLRP(), full_backward=False)


def test_a_plot_function_draws_the_windows(text_fv):
    pages = text_fv["max"].get_max_reference([4], "neurons.0", "activation", (0, 2), AttnLRP(), plot_fn=text_html)
    assert isinstance(pages[4], str) and pages[4].count('class="crp-tokens"') == 2


def test_windows_without_composite_have_tokens_only(text_fv, text_data):
    ids, mask, _ = text_data
    windows = text_fv["max"].get_max_reference(1, "heads.1", "relevance", (0, 2), window=0)[1]
    assert all(w.relevance is None and w.positions == [w.token] for w in windows)
    assert [w.ids[0] for w in windows] == [int(ids[w.index, w.token]) for w in windows]


def test_full_backward_false_is_refused_for_padded_samples(text_fv):
    fv = text_fv["max"]
    with pytest.raises(ValueError, match="full_backward=False .* padded tokens"):
        fv.get_max_reference(list(range(12)), "neurons.0", "activation", (0, K), AttnLRP(), full_backward=False)


def test_token_dataset_items_and_split(text_data):
    ids, mask, targets = text_data
    sample, target = TokenDataset(ids, targets, attention_mask=mask)[3]
    assert torch.equal(sample, torch.stack([ids[3], mask[3]])) and target == int(targets[3])
    batch_ids, batch_mask = split_tokens(sample[None])
    assert torch.equal(batch_ids[0], ids[3]) and torch.equal(batch_mask[0], mask[3])
    assert torch.equal(TokenDataset(ids, targets)[2][0], ids[2])
    with pytest.raises(ValueError, match=r"attention_mask must be of the shape of input_ids, \(10, 6\)"):
        TokenDataset(ids, targets, attention_mask=mask[:, :3])
    with pytest.raises(ValueError, match="targets must be one target per sequence"):
        TokenDataset(ids, targets[:3])
    with pytest.raises(ValueError, match="data must be integer token ids"):
        split_tokens(torch.zeros(2, 3, 4))


def test_text_feature_visualization_needs_token_attribution_and_token_concepts(text_data, tmp_path):
    ids, mask, targets = text_data
    lm = LanguageModel(language_model("gpt2"))
    dataset = TokenDataset(ids, targets)
    with pytest.raises(TypeError, match="attribution must be a crp.transformers.TokenAttribution"):
        TextFeatureVisualization(CondAttribution(lm), dataset, {"neurons.0": TokenConcept()})
    with pytest.raises(TypeError, match=r"TokenConcept or HeadConcept along an axis other than the tokens.*"
                                        r"'neurons.0': 'TokenConcept'"):
        TextFeatureVisualization(TokenAttribution(lm), dataset, {"neurons.0": TokenConcept(axis=1)})

    class ZennitFlow(TextFeatureVisualization):
        def analyze_activation(self, *args):
            return super().analyze_activation(*args)

    fv = ZennitFlow(TokenAttribution(lm), dataset, {"neurons.0": TokenConcept()}, path=tmp_path)
    with pytest.raises(TypeError, match=r"overrides zennit-crp's seams \['analyze_activation'\]"):
        fv.run(AttnLRP())


# ----------------------------------------------------------------------------------------------------------------
# highlighted text


def _window(relevance, ids=(1, 2, 3), token=1):
    return TokenWindow(index=7, token=token, positions=list(range(len(ids))), ids=list(ids), relevance=relevance)


def test_html_escapes_text_and_colours_follow_signs():
    texts = {1: "<b>", 2: "a&b", 3: '"q"'}
    page = text_html([_window([0.5, -2.0, 0.0])], decode=lambda ids: texts[ids[0]])
    span = r'<span style="background-color: rgba\((\d+), (\d+), (\d+), ([\d.]+)\)([^"]*)"[^>]*>(.*?)</span>'
    spans = re.findall(span, page)
    assert [s[5] for s in spans] == ["&lt;b&gt;", "a&amp;b", "&quot;q&quot;"]
    assert [tuple(map(int, s[:3])) for s in spans] == [(255, 0, 0), (0, 0, 255), (255, 255, 255)]
    assert [float(s[3]) for s in spans] == [0.25, 1.0, 0.0]  # |r| / largest |r| of the window
    assert ["underline" in s[4] for s in spans] == [False, True, False]  # the reference token
    assert "<b>" not in page


def test_html_shows_ids_and_a_shared_scale():
    page = text_html([_window([1.0, 0.5, 0.0]), _window([-4.0, 0.0, 0.0], ids=(9, 8, 7))], shared_scale=True)
    alphas = [float(a) for a in re.findall(r"rgba\(\d+, \d+, \d+, ([\d.]+)\)", page)]
    assert alphas == [0.25, 0.125, 0.0, 1.0, 0.0, 0.0]
    assert re.findall(r">(\d+)</span>", page) == ["1", "2", "3", "9", "8", "7"]
    with pytest.raises(TypeError, match="windows must be a list of crp.transformers.TokenWindow"):
        text_html("1 2 3")


def test_png_grid_draws_every_token_on_its_colour(tmp_path):
    from PIL import Image

    references = {3: [_window([0.5, -1.0, 0.0])], 4: [_window([2.0, 1.0, -1.0]), _window(None)]}
    figure = plot_text_grid(references, path=tmp_path / "grid.png")
    drawn = [(text.get_text(), text.get_bbox_patch().get_facecolor()) for ax in figure.axes for text in ax.texts]
    assert [t for t, _ in drawn] == ["1", "2", "3"] * 3
    colours = [tuple(round(v, 3) for v in c) for _, c in drawn]
    assert colours[:3] == [(1, 0, 0, 0.5), (0, 0, 1, 1), (1, 1, 1, 0)]
    assert colours[3:6] == [(1, 0, 0, 1), (1, 0, 0, 0.5), (0, 0, 1, 0.5)]
    assert Image.open(tmp_path / "grid.png").size[0] > 100


# ----------------------------------------------------------------------------------------------------------------
# vision transformer


def test_patch_box():
    assert patch_box(0, (8, 8), 4) == (0, 8, 0, 8)  # the class token sees the whole image
    assert [patch_box(t, (8, 8), 4) for t in (1, 2, 3, 4)] == [(0, 4, 0, 4), (0, 4, 4, 8), (4, 8, 0, 4), (4, 8, 4, 8)]
    assert patch_box(6, (8, 12), 4) == (4, 8, 8, 12)
    with pytest.raises(ValueError, match=r"token must be an int in \[0, 4\], got 5. The class token is 0"):
        patch_box(5, (8, 8), 4)


class _Images(torch.utils.data.Dataset):
    def __init__(self):
        self.images = torch.randn(12, 3, 8, 8, generator=torch.Generator().manual_seed(4), dtype=torch.float64)

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        return self.images[index], index % 3


def test_vit_references_are_cropped_to_the_patch_of_their_token(tmp_path):
    vit = VisionModel(vision_transformer())
    attribution = CondAttribution(vit)
    dataset = _Images()
    fv = VisionFeatureVisualization(attribution, dataset, {"neurons.1": TokenConcept()}, path=tmp_path, top_k=3)
    fv.run(AttnLRP(), batch_size=5, verbose=False)
    indices, _, neurons = fv.results.maximization("neurons.1", "relevance")
    concept = TokenConcept()
    crops = fv.get_max_reference([0, 7], "neurons.1", "relevance", (0, 3), AttnLRP(), rf=True, plot_fn=None)
    assert set(neurons[:, [0, 7]].ravel().tolist()) - {0}  # some references are patches, not the class token
    for c in (0, 7):
        images, heatmaps = crops[c]
        for rank, (image, heatmap) in enumerate(zip(images, heatmaps)):
            index, token = int(indices[rank, c]), int(neurons[rank, c])
            r0, r1, c0, c1 = patch_box(token, (8, 8), 4)
            assert torch.equal(image, dataset.images[index][:, r0:r1, c0:c1])
            x = dataset.images[index][None].clone().requires_grad_()
            full = attribution(x, [{"neurons.1": {c: [token]}}], AttnLRP(), mask_map=concept.mask_rf,
                               start_layer="neurons.1", exclude_parallel=False).heatmap[0]
            torch.testing.assert_close(heatmap, full[r0:r1, c0:c1])
    drawn = fv.get_max_reference(7, "neurons.1", "relevance", (0, 3), AttnLRP(), rf=True)[7]
    sizes = [image.size for image in drawn[0]]
    assert sizes == [(8, 8) if int(t) == 0 else (4, 4) for t in neurons[:3, 7]]
    assert len(drawn[1]) == 3


def test_vit_stats_references_are_cropped_to_the_patch_of_their_token(tmp_path):
    vit = VisionModel(vision_transformer())
    attribution = CondAttribution(vit)
    dataset = _Images()
    fv = VisionFeatureVisualization(attribution, dataset, {"neurons.1": PatchConcept()}, path=tmp_path, top_k=3)
    fv.run(AttnLRP(), batch_size=5, verbose=False)
    crops = fv.get_stats_reference(5, "neurons.1", [1, 2], "relevance", (0, 2), AttnLRP(), rf=True, plot_fn=None)
    assert sorted(crops) == ["5:1", "5:2"]
    for target in (1, 2):
        indices, _, neurons = fv.results.statistics("neurons.1", "relevance", target)
        images, heatmaps = crops[f"5:{target}"]
        assert len(images) == 2 and all(int(dataset[int(i)][1]) == target for i in indices[:2, 5])
        for rank, (image, heatmap) in enumerate(zip(images, heatmaps)):
            index, token = int(indices[rank, 5]), int(neurons[rank, 5])
            assert token > 0  # PatchConcept: never the class token
            r0, r1, c0, c1 = patch_box(token, (8, 8), 4)
            assert image.shape[-2:] == (4, 4) and torch.equal(image, dataset.images[index][:, r0:r1, c0:c1])
            x = dataset.images[index][None].clone().requires_grad_()
            full = attribution(x, [{"neurons.1": {5: [token]}}], AttnLRP(), mask_map=TokenConcept().mask_rf,
                               start_layer="neurons.1", exclude_parallel=False).heatmap[0]
            torch.testing.assert_close(heatmap, full[r0:r1, c0:c1])
    drawn = fv.get_stats_reference(5, "neurons.1", 1, "relevance", (0, 2), AttnLRP(), rf=True)["5:1"]
    assert [image.size for image in drawn[0]] == [(4, 4), (4, 4)] and len(drawn[1]) == 2
    uncropped = fv.get_stats_reference(5, "neurons.1", 1, "relevance", (0, 2), AttnLRP(), rf=False, plot_fn=None)
    assert [image.shape[-2:] for image in uncropped["5:1"][0]] == [(8, 8), (8, 8)]


def test_vision_feature_visualization_needs_a_vision_model(tmp_path):
    with pytest.raises(TypeError, match="CondAttribution of a crp.transformers.VisionModel"):
        VisionFeatureVisualization(CondAttribution(vision_transformer()), _Images(), {"encoder": TokenConcept()},
                                   path=tmp_path)
