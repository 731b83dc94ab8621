"""FeatureVisualization over token sequences and over vision transformers.

:class:`TextFeatureVisualization` runs Relevance and Activation Maximization over a dataset of token
sequences with a :class:`crp.transformers.TokenAttribution`: for every concept (an MLP neuron, a
residual-stream dimension, a head) it keeps the top (sample, token) pairs, each sample with the token where
the concept is largest, and never a padded token. :meth:`TextFeatureVisualization.get_max_reference` returns
the reference tokens as :class:`TokenWindow` objects: the tokens around the reference token with their
concept-conditional relevance, which :func:`crp.transformers.text_html` and
:func:`crp.transformers.plot_text_grid` draw.

:class:`VisionFeatureVisualization` is :class:`crp.visualization.FeatureVisualization` for a
:class:`crp.transformers.VisionModel` with the patches as receptive fields: with ``rf=True`` a reference image
is cropped to the patch of its most relevant token (:func:`patch_box`).
"""
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from zennit.core import Composite

from crp._attribution.concepts import Concept
from crp._features.dataset import split_item
from crp._features.engine import FeatureVisualization
from crp._features.references import Range, check_plot_fn, check_range, rank_rows
from crp._features.store import check_mode
from crp._image.render import vis_img_heatmap
from crp._transformers.adapters import VisionModel
from crp._transformers.attribution import TokenAttribution
from crp._transformers.concepts import TokenConcept
from crp._utils.checks import check_int, check_type, check_value

__all__ = [
    "TokenDataset", "TokenWindow", "TextFeatureVisualization", "VisionFeatureVisualization", "split_tokens",
    "patch_box",
]


class TokenDataset(torch.utils.data.Dataset):
    """Token sequences and their targets as a dataset of FeatureVisualization.

    Item ``i`` is ``(sample, target)``: the sample is ``input_ids[i]`` ``(T,)``, or with an attention mask
    ``torch.stack([input_ids[i], attention_mask[i]])`` ``(2, T)``; :func:`split_tokens` undoes it.

    Parameters
    ----------
    input_ids : torch.Tensor
        ``(N, T)`` token ids (padded to one length).
    targets : sequence of int or torch.Tensor
        ``(N,)``: what each sequence is explained for, a class of a sequence classifier or the id of the next
        token of a causal LM (see :class:`crp.transformers.LanguageModel` for the position).
    attention_mask : torch.Tensor, optional
        ``(N, T)``, 1 for tokens and 0 for padding (a tokenizer's ``attention_mask``).
    """

    def __init__(self, input_ids: torch.Tensor, targets: Union[Sequence[int], torch.Tensor], *,
                 attention_mask: Optional[torch.Tensor] = None) -> None:
        check_type(input_ids, torch.Tensor, name="input_ids", expected="a tensor of token ids (N, T)")
        check_value(input_ids.dim() == 2 and not input_ids.is_floating_point(), input_ids, name="input_ids",
                    expected="token ids of shape (N, T) and an integer dtype")
        targets = torch.as_tensor(targets)
        check_value(targets.shape == input_ids.shape[:1], targets, name="targets",
                    expected=f"one target per sequence, {len(input_ids)}")
        if attention_mask is not None:
            check_type(attention_mask, torch.Tensor, name="attention_mask", expected="a tensor of 0 and 1 (N, T)")
            check_value(attention_mask.shape == input_ids.shape, attention_mask, name="attention_mask",
                        expected=f"of the shape of input_ids, {tuple(input_ids.shape)}",
                        fix="Pass the tokenizer's attention_mask for these input_ids.")
            check_value(set(torch.unique(attention_mask).tolist()) <= {0, 1}, attention_mask, name="attention_mask",
                        expected="made of 0 (padding) and 1 (token)")
            check_value(bool(attention_mask.any(1).all()), attention_mask, name="attention_mask",
                        expected="at least one token in every row", fix="Remove the empty sequences.")
        self.input_ids, self.targets, self.attention_mask = input_ids, targets, attention_mask

    def __len__(self) -> int:
        return len(self.input_ids)

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, int]:
        ids = self.input_ids[index]
        sample = ids if self.attention_mask is None else torch.stack([ids, self.attention_mask[index].to(ids.dtype)])
        return sample, int(self.targets[index])


def split_tokens(data: torch.Tensor) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Split a batch of :class:`TokenDataset` samples into token ids ``(N, T)`` and attention mask (or None).

    Parameters
    ----------
    data : torch.Tensor
        ``(N, T)`` token ids or ``(N, 2, T)`` token ids stacked with their attention mask.

    Returns
    -------
    (torch.Tensor, torch.Tensor or None)
    """
    check_type(data, torch.Tensor, name="data", expected="a batch of token ids (N, T) or (N, 2, T)")
    ok = not data.is_floating_point() and (data.dim() == 2 or (data.dim() == 3 and data.shape[1] == 2))
    check_value(ok, data, name="data", expected="integer token ids (N, T), or ids and attention mask (N, 2, T)",
                fix="Make the dataset with crp.transformers.TokenDataset(input_ids, targets, attention_mask=...).")
    if data.dim() == 2:
        return data, None
    return data[:, 0], data[:, 1]


@dataclass(frozen=True)
class TokenWindow:
    """The tokens of one reference sample around its reference token, with their conditional relevance.

    Attributes
    ----------
    index : int
        The sample's dataset index.
    token : int
        The reference token's position in the sequence (where the concept is largest).
    positions : list of int
        The positions of the window's tokens (real tokens only, in order).
    ids : list of int
        Their token ids.
    relevance : list of float or None
        Their concept-conditional relevance (the heatmap summed over the embedding); None without a composite.
    """

    index: int
    token: int
    positions: List[int]
    ids: List[int]
    relevance: Optional[List[float]]

    @property
    def center(self) -> int:
        """The reference token's place in the window."""
        return self.positions.index(self.token)


def _windows(samples: torch.Tensor, heatmaps: Optional[torch.Tensor], indices: np.ndarray, tokens: np.ndarray,
             window: int) -> List[TokenWindow]:
    """Cut ``window`` real tokens either side of every sample's reference token."""
    ids, mask = split_tokens(samples.cpu())
    real = torch.ones_like(ids, dtype=torch.bool) if mask is None else mask.bool()
    windows = []
    for row, (index, token) in enumerate(zip(indices.tolist(), tokens.tolist())):
        positions = [p for p in range(max(token - window, 0), min(token + window + 1, ids.shape[1]))
                     if real[row, p]]
        relevance = None if heatmaps is None else [float(heatmaps[row, p]) for p in positions]
        windows.append(TokenWindow(int(index), int(token), positions, [int(ids[row, p]) for p in positions],
                                   relevance))
    return windows


class TextFeatureVisualization(FeatureVisualization):
    """Relevance and Activation Maximization over token sequences: the top (sample, token) pairs of every concept.

    The arguments are those of :class:`crp.visualization.FeatureVisualization`. ``attribution`` is a
    :class:`crp.transformers.TokenAttribution`; ``dataset[i]`` returns ``(sample, target)`` with the sample
    token ids ``(T,)`` or ids stacked with an attention mask ``(2, T)`` (:class:`TokenDataset` makes such a
    dataset), and the target what the sequence is explained for: the class of a sequence classifier, or the
    next token of a causal LM at the position of the :class:`crp.transformers.LanguageModel` (by default the
    last real token of every sequence). The concepts of ``layer_map`` are :class:`crp.transformers.TokenConcept`
    (or :class:`crp.transformers.HeadConcept`) along an axis other than the tokens.

    Every concept keeps the ``top_k`` samples where it is largest, each with its token of the largest value (the
    ranking value is the sum over the real tokens with ``max_target="sum"``, the value at that token with
    ``"max"``). Padded tokens are never ranked: they get no relevance, and their activations are left out.
    ``preprocess_fn`` (if any) is applied to the batch of token samples before they are embedded.

    Examples
    --------
    >>> attribution = TokenAttribution(LanguageModel(model))
    >>> dataset = TokenDataset(input_ids, labels, attention_mask=attention_mask)
    >>> fv = TextFeatureVisualization(attribution, dataset, {"neurons.0": TokenConcept()}, path="fv-text")
    >>> fv.run(AttnLRP(), batch_size=32)
    >>> windows = fv.get_max_reference([5], "neurons.0", composite=AttnLRP(), window=4)[5]
    >>> html = text_html(windows, decode=tokenizer.decode)
    """

    attribution: TokenAttribution

    def __init__(self, attribution: TokenAttribution, dataset: Any, layer_map: Dict[str, Concept], *args: Any,
                 **kwargs: Any) -> None:
        if not isinstance(attribution, TokenAttribution):
            raise TypeError(f"attribution must be a crp.transformers.TokenAttribution, got "
                            f"{type(attribution).__name__}. Use FeatureVisualization for other models.")
        wrong = {name: type(concept).__name__ for name, concept in dict(layer_map).items()
                 if not isinstance(concept, TokenConcept) or concept.axis == 1}
        if wrong:
            raise TypeError(f"layer_map must map layers to TokenConcept or HeadConcept along an axis other than the "
                            f"tokens, got {wrong}. Use TokenConcept() for neurons and HeadConcept() for heads.")
        super().__init__(attribution, dataset, layer_map, *args, **kwargs)

    def run(self, *args: Any, **kwargs: Any) -> Any:
        """Find the top (sample, token) pairs of every concept, as :meth:`crp.visualization.FeatureVisualization.run`.

        zennit-crp's flow (a subclass that overrides its seams) does not know padding and is refused.
        """
        seams = self.overridden_seams()
        if seams:
            raise TypeError(f"TextFeatureVisualization ranks with the default engine, which leaves padded tokens out; "
                            f"this subclass overrides zennit-crp's seams {seams}. Remove the overrides.")
        return super().run(*args, **kwargs)

    def preprocess_data(self, data: torch.Tensor) -> torch.Tensor:
        """Apply ``preprocess_fn`` (if any) to a batch of token samples and embed it (zeros at padded tokens)."""
        data = super().preprocess_data(data)
        if data.is_floating_point():
            return data
        ids, mask = split_tokens(data)
        return self.attribution.model.embed(ids, mask)

    def get_data_sample(self, index: int, preprocessing: bool = True) -> Tuple[torch.Tensor, Any]:
        """Return dataset sample ``index`` as a batch of one: embedded (requiring gradients) or as tokens."""
        sample, target = split_item(index, self.dataset[index])
        return self._batch(sample.to(self.device).unsqueeze(0), preprocessing), target

    def get_data_concurrently(self, indices: Union[Sequence[int], np.ndarray],
                              preprocessing: bool = False) -> Tuple[torch.Tensor, list]:
        """Return the samples ``indices`` as one batch, embedded (requiring gradients) or as tokens."""
        items = [split_item(int(i), self.dataset[int(i)]) for i in indices]
        data = torch.stack([sample for sample, _ in items]).to(self.device)
        return self._batch(data, preprocessing), [target for _, target in items]

    def _batch(self, data: torch.Tensor, preprocessing: bool) -> torch.Tensor:
        if preprocessing:
            return self.preprocess_data(data).detach().requires_grad_()
        return data.detach()

    def outputs_to_rank(self, data: torch.Tensor, outputs: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """Mark padded tokens (zero embeddings in ``data``) with ``-inf``, which the token concepts leave out.

        Every batch is marked, also one without padding: asking whether it has any would make the host wait for
        the device.
        """
        padded = ~data.ne(0).any(-1)
        marked = {}
        for layer, output in outputs.items():
            mask = padded.to(output.device).view(*padded.shape, *([1] * (output.dim() - 2)))
            marked[layer] = output.masked_fill(mask, float("-inf"))
        return marked

    def get_max_reference(  # noqa: PLR0917 (FeatureVisualization's positional signature)
        self, concept_ids: Union[int, Sequence[int]], layer_name: str, mode: str = "relevance",
        r_range: Range = (0, 8), composite: Optional[Composite] = None, rf: bool = False,
        plot_fn: Optional[Callable[..., Any]] = None, batch_size: int = 32, *, full_backward: bool = True,
        overwrite: bool = False, verbose: bool = True, window: int = 5,
    ) -> Dict[int, Any]:
        """Return the reference tokens of concepts (RelMax or ActMax) in windows with their conditional relevance.

        Parameters
        ----------
        concept_ids, layer_name, mode, r_range, batch_size
            As in :meth:`crp.visualization.FeatureVisualization.get_max_reference`.
        composite : zennit.core.Composite, optional
            Compute every window's conditional relevance with it (e.g. :class:`crp.transformers.AttnLRP`);
            without it the windows have no relevance.
        rf : bool
            Condition on the concept at the reference token only (its ``mask_rf``), instead of at every token.
        plot_fn : callable, optional
            ``plot_fn(windows)`` draws the windows of one concept, e.g. :func:`crp.transformers.text_html`;
            None returns them.
        window : int
            Real tokens kept either side of the reference token.
        full_backward : bool
            Start the relevance at the sample's target with ``{layer: concept, "y": target}`` (the default); False
            starts it at the layer's activation, as zennit-crp does, which padded tokens have too: it is refused
            for padded samples.
        overwrite : bool
            As in :meth:`crp.visualization.FeatureVisualization.get_max_reference` (windows are not cached).
        verbose : bool
            Show a progress bar while references are computed.

        Returns
        -------
        dict
            ``{concept_id: list of TokenWindow}`` (best first), or ``{concept_id: plot_fn(windows)}``.
        """
        window = self._check_window_args(window, plot_fn, layer_name, mode)
        r_range = check_range(r_range)
        indices, _, neurons = self.results.maximization(layer_name, mode)
        ids = self._concept_ids(concept_ids, layer_name, indices.shape[1])
        rows = rank_rows(indices, r_range, f"{mode} maximization of layer {layer_name!r}")
        if not full_backward and composite is not None:
            self._refuse_padding(np.unique(indices[rows][:, ids]))
        raw = super().get_max_reference(ids, layer_name, mode, r_range, composite, rf, None, batch_size,
                                        full_backward=full_backward, overwrite=overwrite, verbose=verbose)
        return {concept_id: self._draw(raw[concept_id], composite, indices[rows, concept_id],
                                       neurons[rows, concept_id], window=window, plot_fn=plot_fn)
                for concept_id in ids}

    def get_stats_reference(  # noqa: PLR0917 (FeatureVisualization's positional signature)
        self, concept_id: int, layer_name: str, targets: Union[int, Sequence[int]], mode: str = "relevance",
        r_range: Range = (0, 8), composite: Optional[Composite] = None, rf: bool = False,
        plot_fn: Optional[Callable[..., Any]] = None, batch_size: int = 32, *, full_backward: bool = True,
        overwrite: bool = False, verbose: bool = True, window: int = 5,
    ) -> Dict[str, Any]:
        """Return the reference tokens of one concept among the samples of given targets, in windows.

        The arguments are those of :meth:`get_max_reference`; ``targets`` are target classes (next tokens). With
        ``full_backward`` the relevance starts at the given target.

        Returns
        -------
        dict
            ``{"{concept_id}:{target}": list of TokenWindow}``, or ``plot_fn(windows)`` for each.
        """
        window = self._check_window_args(window, plot_fn, layer_name, mode)
        r_range = check_range(r_range)
        target_list = [targets] if isinstance(targets, int) else list(targets)
        if not full_backward and composite is not None:
            column = self._concept_ids(concept_id, layer_name, self.results.maximization(layer_name, mode)[0].shape[1])
            for target in target_list:
                indices = self.results.statistics(layer_name, mode, int(target))[0]
                self._refuse_padding(indices[rank_rows(indices, r_range, f"{mode} statistics")][:, column].ravel())
        raw = super().get_stats_reference(concept_id, layer_name, target_list, mode, r_range, composite, rf, None,
                                          batch_size, full_backward=full_backward, overwrite=overwrite,
                                          verbose=verbose)
        references = {}
        for key, value in raw.items():
            column_id, target = (int(part) for part in key.rsplit(":", 1))
            indices, _, neurons = self.results.statistics(layer_name, mode, target)
            rows = rank_rows(indices, r_range, f"{mode} statistics of layer {layer_name!r}, target {target}")
            references[key] = self._draw(value, composite, indices[rows, column_id], neurons[rows, column_id],
                                         window=window, plot_fn=plot_fn)
        return references

    def _check_window_args(self, window: int, plot_fn: Any, layer_name: str, mode: str) -> int:
        if plot_fn is not None and not callable(plot_fn):
            raise TypeError(f"plot_fn must be a function (windows) -> drawing, or None for the windows; got "
                            f"{plot_fn!r}.")
        self._check_layer(layer_name)
        check_mode(mode)
        return check_int(window, name="window", minimum=0)

    @staticmethod
    def _draw(raw: Any, composite: Optional[Composite], indices: np.ndarray, tokens: np.ndarray, *, window: int,
              plot_fn: Optional[Callable[..., Any]]) -> Any:
        samples, heatmaps = raw if composite is not None else (raw, None)
        windows = _windows(samples, heatmaps, indices, tokens, window)
        return plot_fn(windows) if plot_fn is not None else windows

    def _refuse_padding(self, indices: np.ndarray) -> None:
        data, _ = self.get_data_concurrently(indices)
        _, mask = split_tokens(data)
        if mask is not None and not bool(mask.all()):
            raise ValueError("full_backward=False starts the relevance at the layer's activation, which padded tokens "
                             "have too, and they would pass it to the real tokens; use full_backward=True for padded "
                             "samples.")


def patch_box(token: int, image_size: Tuple[int, int], patch_size: int) -> Tuple[int, int, int, int]:
    """Return the pixel box ``(row_start, row_stop, col_start, col_stop)`` of a ViT token's patch.

    Token 0 is the class token, which sees the whole image; token ``t >= 1`` is patch ``t - 1`` in row-major
    order, as torchvision's ``VisionTransformer`` lays them out.

    Parameters
    ----------
    token : int
        The token position.
    image_size : (int, int)
        The image's height and width.
    patch_size : int
        The side of a patch.

    Returns
    -------
    (int, int, int, int)
        Stops are exclusive: ``image[..., r0:r1, c0:c1]`` is the patch.
    """
    height, width = int(image_size[0]), int(image_size[1])
    per_row = width // patch_size
    n_patches = (height // patch_size) * per_row
    check_int(token, name="token", minimum=0, maximum=n_patches,
              fix=f"The class token is 0 and the {n_patches} patches are 1 to {n_patches}.")
    if token == 0:
        return 0, height, 0, width
    row, col = divmod(int(token) - 1, per_row)
    return row * patch_size, (row + 1) * patch_size, col * patch_size, (col + 1) * patch_size


def _join(drawings: List[Any]) -> Any:
    """Join per-sample drawings: lists are concatenated, tuples of lists element-wise, anything else listed."""
    if all(isinstance(d, list) for d in drawings):
        return [item for d in drawings for item in d]
    if all(isinstance(d, tuple) and all(isinstance(part, list) for part in d) for d in drawings):
        return tuple([item for d in drawings for item in d[part]] for part in range(len(drawings[0])))
    return drawings


class VisionFeatureVisualization(FeatureVisualization):
    """FeatureVisualization of a :class:`crp.transformers.VisionModel`, with the patches as receptive fields.

    The arguments are those of :class:`crp.visualization.FeatureVisualization`; the attribution's model is a
    :class:`crp.transformers.VisionModel`, and the concepts of ``layer_map`` are
    :class:`crp.transformers.PatchConcept` (ranked at the patch tokens only), :class:`crp.transformers.TokenConcept`
    or :class:`crp.transformers.HeadConcept` (a token is a concept's "neuron"). Everything works as for a CNN,
    except that :meth:`get_max_reference` and :meth:`get_stats_reference` with ``rf=True`` crop every reference
    image (and its heatmap, conditioned on the concept at that token) to the patch of the concept's most relevant
    token (:func:`patch_box`; the whole image for the class token), instead of to the region where the heatmap is
    large: in a transformer every token can see every patch.
    """

    def __init__(self, attribution: Any, dataset: Any, layer_map: Dict[str, Concept], *args: Any,
                 **kwargs: Any) -> None:
        model = getattr(attribution, "model", None)
        if not isinstance(model, VisionModel):
            raise TypeError(f"attribution must be a crp.attribution.CondAttribution of a crp.transformers.VisionModel, "
                            f"got one of {type(model).__name__}. Wrap the model: CondAttribution(VisionModel(vit)).")
        super().__init__(attribution, dataset, layer_map, *args, **kwargs)
        self.patch_size = int(model.model.patch_size)

    def get_max_reference(  # noqa: PLR0917 (FeatureVisualization's positional signature)
        self, concept_ids: Union[int, Sequence[int]], layer_name: str, mode: str = "relevance",
        r_range: Range = (0, 8), composite: Optional[Composite] = None, rf: bool = False,
        plot_fn: Optional[Callable] = vis_img_heatmap, batch_size: int = 32, *, full_backward: bool = False,
        overwrite: bool = False, verbose: bool = True,
    ) -> Dict[int, Any]:
        """Return the reference images of concepts, as :meth:`crp.visualization.FeatureVisualization.get_max_reference`.

        With ``rf=True`` (and a composite) every image and heatmap is cropped to the patch of the sample's most
        relevant (most active) token and drawn with ``plot_fn(image[None], heatmap[None], False)``; the drawings
        of a concept are joined (lists concatenated, tuples of lists element-wise). Without ``plot_fn`` the
        crops are returned as lists of tensors, ``(images, heatmaps)``.
        """
        if not rf or composite is None:
            return super().get_max_reference(concept_ids, layer_name, mode, r_range, composite, rf, plot_fn,
                                              batch_size, full_backward=full_backward, overwrite=overwrite,
                                             verbose=verbose)
        check_plot_fn(plot_fn)
        self._check_layer(layer_name)
        check_mode(mode)
        r_range = check_range(r_range)
        indices, _, neurons = self.results.maximization(layer_name, mode)
        ids = self._concept_ids(concept_ids, layer_name, indices.shape[1])
        rows = rank_rows(indices, r_range, f"{mode} maximization of layer {layer_name!r}")
        raw = super().get_max_reference(ids, layer_name, mode, r_range, composite, True, None, batch_size,
                                        full_backward=full_backward, verbose=verbose)
        return {concept_id: self._patches(raw[concept_id][0], raw[concept_id][1], neurons[rows, concept_id], plot_fn)
                for concept_id in ids}

    def get_stats_reference(  # noqa: PLR0917 (FeatureVisualization's positional signature)
        self, concept_id: int, layer_name: str, targets: Union[int, Sequence[int]], mode: str = "relevance",
        r_range: Range = (0, 8), composite: Optional[Composite] = None, rf: bool = False,
        plot_fn: Optional[Callable] = vis_img_heatmap, batch_size: int = 32, *, full_backward: bool = False,
        overwrite: bool = False, verbose: bool = True,
    ) -> Dict[str, Any]:
        """Return the reference images of a concept per target, as the CNN's ``get_stats_reference``.

        See :meth:`crp.visualization.FeatureVisualization.get_stats_reference` for the arguments.
        With ``rf=True`` (and a composite) every image and heatmap is cropped to the patch of the sample's most
        relevant (most active) token, as :meth:`get_max_reference` does.
        """
        if not rf or composite is None:
            return super().get_stats_reference(concept_id, layer_name, targets, mode, r_range, composite, rf,
                                               plot_fn, batch_size, full_backward=full_backward, overwrite=overwrite,
                                               verbose=verbose)
        check_plot_fn(plot_fn)
        r_range = check_range(r_range)
        raw = super().get_stats_reference(concept_id, layer_name, targets, mode, r_range, composite, True, None,
                                          batch_size, full_backward=full_backward, verbose=verbose)
        references = {}
        for stat_id, (images, heatmaps) in raw.items():
            concept, target = (int(part) for part in stat_id.split(":"))
            indices, _, neurons = self.results.statistics(layer_name, mode, target)
            rows = rank_rows(indices, r_range, f"{mode} statistics of layer {layer_name!r}, target {target}")
            references[stat_id] = self._patches(images, heatmaps, neurons[rows, concept], plot_fn)
        return references

    def _patches(self, images: Sequence[torch.Tensor], heatmaps: Sequence[torch.Tensor], tokens: np.ndarray,
                 plot_fn: Optional[Callable]) -> Any:
        """Crop references and their heatmaps to the patches of their tokens; draw them with ``plot_fn`` if given."""
        crops = []
        for image, heatmap, token in zip(images, heatmaps, tokens.tolist()):
            r0, r1, c0, c1 = patch_box(int(token), (int(image.shape[-2]), int(image.shape[-1])), self.patch_size)
            crops.append((image[..., r0:r1, c0:c1], heatmap[..., r0:r1, c0:c1]))
        if plot_fn is None:
            return [c[0] for c in crops], [c[1] for c in crops]
        return _join([plot_fn(i[None], h[None], False) for i, h in crops])
