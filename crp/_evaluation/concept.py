"""Concept faithfulness: whether a concept's conditional heatmap points at what drives the concept.

For a concept ``c`` of layer ``l`` and target class ``y``, CRP's conditional heatmap ``R(x | l: c, y)`` ranks
the input pixels by their contribution to that concept (Achtibat et al., Nature Machine Intelligence 5, 2023).
:class:`ConceptFaithfulness` perturbs the input in that order and tracks the concept's own relevance for
``y`` at its layer (``concept.attribute(relevance)[c]``) or its activation summed over the channel. A faithful
concept heatmap makes the tracked value fall faster than a random order does. :func:`concept_faithfulness`
runs this for the most relevant concepts of each prediction, against a random order.
"""

from contextlib import contextmanager
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from crp._utils.checks import check_choice, check_int, check_type
from crp._utils.modules import get_output_shapes

from ._checks import TargetsLike, check_inputs, check_targets
from .base import PerturbationMetric
from .engine import score_curves
from .ordering import Order
from .perturbation import Perturbation
from .result import FlippingResult
from .schedule import PerStep

__all__ = ["ConceptFaithfulness", "concept_faithfulness", "top_concepts"]

MEASURES = ("relevance", "activation")
ConceptIds = Union[int, Sequence[int], np.ndarray, torch.Tensor]


class ConceptFaithfulness(PerturbationMetric):
    """Track a concept's relevance (or activation) while the input is perturbed along its conditional heatmap.

    Parameters
    ----------
    layer : str
        The concepts' layer, as named by ``model.named_modules()``.
    measure : {"relevance", "activation"}, default "relevance"
        Track ``concept.attribute(relevance at layer for the target)[c]`` (needs a backward pass per batch)
        or ``concept.attribute(activation at layer)[c]`` (forward only).
    concept : crp.concepts.Concept, optional
        How a layer's tensor is reduced to concepts; :class:`crp.concepts.ChannelConcept` by default.
    abs_norm : bool, default False
        Normalise the concept values of a row by their absolute sum before picking the concept (a share of
        the layer's relevance instead of an absolute value).
    perturbation, order, region_size, steps, per_step, seed, verbose
        As for :class:`~crp._evaluation.flipping.PixelFlipping`.
    batch_size : int, optional
        Perturbed inputs per attribution (or forward) pass; automatic by default, as for
        :class:`~crp._evaluation.flipping.PixelFlipping`.
    """

    def __init__(
        self,
        layer: str,
        measure: str = "relevance",
        concept: Any = None,
        *,
        abs_norm: bool = False,
        perturbation: Union[str, Perturbation] = "inpainting",
        order: Union[str, Order] = "morf",
        region_size: Union[int, Tuple[int, int]] = 1,
        steps: Optional[int] = None,
        per_step: Optional[PerStep] = None,
        batch_size: Optional[int] = None,
        seed: int = 0,
        verbose: bool = False,
    ) -> None:
        super().__init__(perturbation, order, region_size, steps=steps, per_step=per_step, batch_size=batch_size,
                         seed=seed, verbose=verbose)
        check_type(layer, str, name="`layer`", expected="a layer name (str)")
        check_choice(measure, MEASURES, name="`measure`")
        self.layer, self.measure, self.abs_norm = layer, measure, bool(abs_norm)
        self.concept = _default_concept() if concept is None else concept

    def settings(self) -> Dict[str, Any]:
        """Return the constructor arguments of this metric (see :meth:`PerturbationMetric.settings`)."""
        extra = {"layer": self.layer, "measure": self.measure, "concept": self.concept, "abs_norm": self.abs_norm}
        return {**super().settings(), **extra}

    def __call__(
        self,
        attribution: Any,
        inputs: torch.Tensor,
        targets: TargetsLike,
        concept_ids: ConceptIds,
        composite: Any = None,
        *,
        heatmaps: Optional[torch.Tensor] = None,
    ) -> FlippingResult:
        """Evaluate the conditional heatmaps of ``concept_ids`` on every input.

        Parameters
        ----------
        attribution : crp.attribution.CondAttribution
            The attribution object of the model.
        inputs : torch.Tensor
            Inputs of shape ``(N, C, H, W)`` on the model's device.
        targets : int, sequence of int or tensor, optional
            The class whose relevance flows into the concepts, per sample; None for the predicted class.
        concept_ids : int, sequence of int or array of shape (N, K)
            The concepts, the same ``K`` for every sample or ``K`` per sample.
        composite : zennit.core.Composite, optional
            The LRP rules for the conditional heatmaps and the tracked relevance.
        heatmaps : torch.Tensor, optional
            Precomputed conditional heatmaps ``(N, K, H, W)`` (see :meth:`heatmaps`); computed if None.

        Returns
        -------
        FlippingResult
            One row per (sample, concept), sample-major: ``scores`` ``(N * K, S + 1)``, ``samples``,
            ``concepts`` and ``targets`` per row, ``layer``.

        Raises
        ------
        ValueError
            If shapes do not match, a concept id is outside the layer or the layer is unknown.
        """
        inputs = check_inputs(inputs)
        ids, targets = self._rows(attribution, inputs, targets, concept_ids)
        if heatmaps is None:
            heatmaps = self.heatmaps(attribution, inputs, targets, ids, composite)
        flat_heatmaps = self._check_heatmaps(heatmaps, inputs, ids)
        sources = torch.arange(len(inputs), device=inputs.device).repeat_interleave(ids.shape[1])
        plan, counts = self._plan(inputs, flat_heatmaps, sources)
        row_ids, row_targets = ids.reshape(-1).to(inputs.device), targets.repeat_interleave(ids.shape[1])
        with self._scorer(attribution, composite, row_ids, row_targets.to(inputs.device)) as scorer:
            curves = score_curves(plan, scorer, self.batch_for(inputs), verbose=self.verbose,
                                  desc=f"{self.order_name} concept")
        return self._result(curves, counts, row_targets, sources, self.measure, shape=inputs.shape[-2:],
                            concepts=row_ids.cpu().numpy(), layer=self.layer)

    def heatmaps(
        self, attribution: Any, inputs: torch.Tensor, targets: TargetsLike, concept_ids: ConceptIds,
        composite: Any = None,
    ) -> torch.Tensor:
        """Compute the conditional heatmaps ``R(x | layer: c, y: target)`` of every sample and concept.

        Parameters
        ----------
        attribution, inputs, targets, concept_ids, composite
            As for :meth:`__call__`.

        Returns
        -------
        torch.Tensor
            Heatmaps of shape ``(N, K, H, W)``.
        """
        inputs = check_inputs(inputs)
        ids, targets = self._rows(attribution, inputs, targets, concept_ids)
        n, k = ids.shape
        sources = torch.arange(n).repeat_interleave(k)
        maps, batch_size, output = [], self.batch_for(inputs), attribution.MODEL_OUTPUT_NAME
        for start in range(0, n * k, batch_size):
            rows = torch.arange(start, min(start + batch_size, n * k))
            conditions = [{self.layer: [int(ids.reshape(-1)[r])], output: [int(targets[sources[r]])]} for r in rows]
            data = inputs[sources[rows].to(inputs.device)].clone().requires_grad_(True)
            with torch.enable_grad():
                maps.append(attribution(data, conditions, composite).heatmap.detach())
        return torch.cat(maps).reshape(n, k, *inputs.shape[-2:])

    def _rows(self, attribution: Any, inputs: torch.Tensor, targets: TargetsLike,
              concept_ids: ConceptIds) -> Tuple[torch.Tensor, torch.Tensor]:
        """Return the checked concept ids ``(N, K)`` and targets ``(N,)`` (predicted classes if None)."""
        model = attribution.model
        channels, output_shape = _layer_width(model, self.layer, inputs[:1])
        ids = _concept_grid(concept_ids, len(inputs), channels, self.layer)
        checked = check_targets(targets, len(inputs), output_shape[0] if len(output_shape) == 1 else None)
        if checked is None:
            with torch.no_grad():
                size = self.batch_for(inputs)
                checked = torch.cat([model(inputs[s:s + size]).argmax(1).cpu() for s in range(0, len(inputs), size)])
        return ids, checked

    def _check_heatmaps(self, heatmaps: Any, inputs: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """Heatmaps of shape ``(N, K, H, W)`` flattened to rows ``(N * K, H, W)``."""
        expected = (*ids.shape, *inputs.shape[-2:])
        if not isinstance(heatmaps, torch.Tensor) or tuple(heatmaps.shape) != expected:
            shape = tuple(heatmaps.shape) if hasattr(heatmaps, "shape") else type(heatmaps).__name__
            raise ValueError(f"`heatmaps` must have shape {expected} (N, K, H, W), got {shape}.")
        if not torch.isfinite(heatmaps).all():
            raise ValueError(f"`heatmaps` of shape {expected} contains NaN or infinite values.")
        return heatmaps.detach().to(inputs.device, inputs.dtype).reshape(-1, *inputs.shape[-2:])

    @contextmanager
    def _scorer(self, attribution: Any, composite: Any, ids: torch.Tensor, targets: torch.Tensor) -> Iterator:
        """Yield the scorer of the chosen measure; the activation hook lives only inside this context."""
        if self.measure == "relevance":
            yield self._relevance_scorer(attribution, composite, ids, targets)
            return
        store: List[torch.Tensor] = []
        module = dict(attribution.model.named_modules())[self.layer]
        handle = module.register_forward_hook(lambda _module, _args, output: store.append(output))
        try:
            def scorer(batch: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
                store.clear()
                attribution.model(batch)
                return self._pick(store[0], ids[rows])

            yield scorer
        finally:
            handle.remove()

    def _relevance_scorer(self, attribution: Any, composite: Any, ids: torch.Tensor, targets: torch.Tensor):
        """Scorer that tracks the relevance of each row's concept for its target."""

        def scorer(batch: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
            conditions = [{attribution.MODEL_OUTPUT_NAME: [int(t)]} for t in targets[rows].tolist()]
            with torch.enable_grad():
                data = batch.detach().clone().requires_grad_(True)
                result = attribution(data, conditions, composite, record_layer=[self.layer])
            return self._pick(result.relevances[self.layer].detach(), ids[rows])

        return scorer

    def _pick(self, tensor: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """Each row's concept value from the layer tensor."""
        values = self.concept.attribute(tensor, layer_name=self.layer, abs_norm=self.abs_norm)
        return values.gather(1, ids.to(values.device)[:, None])[:, 0]


def _default_concept() -> Any:
    from crp._attribution.concepts import ChannelConcept

    return ChannelConcept()


def _layer_width(model: torch.nn.Module, layer_name: str, data: torch.Tensor) -> Tuple[int, Tuple[int, ...]]:
    """Return the channel count of ``layer_name``'s output and the model's output shape (without the batch axis)."""
    if not layer_name or layer_name not in dict(model.named_modules()):
        raise ValueError(f"`layer` {layer_name!r} is not a module of the model; see model.named_modules().")
    shapes = get_output_shapes(model, data, [layer_name, ""])  # "" names the model itself
    if layer_name not in shapes:
        raise ValueError(f"`layer` {layer_name!r} is not called in the model's forward pass; choose a layer it runs.")
    return shapes[layer_name][0], tuple(shapes[""])


def _concept_grid(concept_ids: ConceptIds, n: int, channels: int, layer_name: str) -> torch.Tensor:
    """Concept ids as an int64 ``(N, K)`` tensor on the CPU, checked against the layer's channels."""
    raw = concept_ids.cpu().numpy() if isinstance(concept_ids, torch.Tensor) else np.asarray(concept_ids)
    if raw.dtype.kind not in "iu" or raw.ndim > 2 or raw.size == 0 or (raw.ndim == 2 and raw.shape[0] != n):
        raise ValueError(
            f"`concept_ids` must be integer ids: one, K of them for all samples, or an array (N={n}, K); "
            f"got {concept_ids!r} with shape {raw.shape}."
        )
    grid = np.broadcast_to(raw.reshape(1, -1) if raw.ndim < 2 else raw, (n, max(raw.shape[-1:] or (1,))))
    if (grid < 0).any() or (grid >= channels).any():
        raise ValueError(
            f"`concept_ids` {np.unique(grid).tolist()} must lie in [0, {channels}) for layer {layer_name!r}."
        )
    return torch.tensor(np.array(grid, order="C"), dtype=torch.long)


def top_concepts(
    attribution: Any, inputs: torch.Tensor, targets: TargetsLike, layer: str, k: int = 3, *, composite: Any = None,
    concept: Any = None,
) -> np.ndarray:
    """Find the ``k`` concepts of ``layer`` with the highest relevance for each sample's target.

    Parameters
    ----------
    attribution : crp.attribution.CondAttribution
        The attribution object of the model.
    inputs : torch.Tensor
        Inputs of shape ``(N, C, H, W)``.
    targets : int, sequence of int or tensor, optional
        The explained class per sample; None for the predicted class.
    layer : str
        The layer whose concepts are ranked.
    k : int, default 3
        How many concepts per sample.
    composite : zennit.core.Composite, optional
        The LRP rules.
    concept : crp.concepts.Concept, optional
        :class:`crp.concepts.ChannelConcept` by default.

    Returns
    -------
    numpy.ndarray
        int64 concept ids of shape ``(N, k)``, most relevant first.
    """
    metric = ConceptFaithfulness(layer, concept=concept)
    inputs = check_inputs(inputs)
    channels, _ = _layer_width(attribution.model, layer, inputs[:1])
    k = check_int(k, name="`k`", minimum=1, maximum=channels, fix=f"Layer {layer!r} has {channels} channels.")
    _, checked = metric._rows(attribution, inputs, targets, 0)
    data = inputs.clone().requires_grad_(True)
    conditions = [{attribution.MODEL_OUTPUT_NAME: [int(t)]} for t in checked]
    with torch.enable_grad():
        result = attribution(data, conditions, composite, record_layer=[layer])
    values = metric.concept.attribute(result.relevances[layer].detach(), layer_name=layer, abs_norm=True)
    return values.topk(k, dim=1).indices.cpu().numpy()


def concept_faithfulness(
    attribution: Any, inputs: torch.Tensor, targets: TargetsLike, layer: str, k: int = 3, *, composite: Any = None,
    orders: Sequence[Union[str, Order]] = ("morf", "random"), **settings: Any,
) -> Dict[str, FlippingResult]:
    """Concept faithfulness of the ``k`` most relevant concepts of each prediction, per order.

    Parameters
    ----------
    attribution, inputs, targets, layer, k, composite
        As for :func:`top_concepts`.
    orders : sequence of str or callable, default ("morf", "random")
        The orders to compare; the conditional heatmaps are computed once for all.
    **settings
        Further settings of :class:`ConceptFaithfulness` (``measure``, ``perturbation``, ``steps``, ...).

    Returns
    -------
    dict of str to FlippingResult
        One result per order, rows ``(sample, concept)`` sample-major.
    """
    metric = ConceptFaithfulness(layer, **settings)
    ids = top_concepts(attribution, inputs, targets, layer, k, composite=composite, concept=metric.concept)
    heatmaps = metric.heatmaps(attribution, inputs, targets, ids, composite)
    results = {}
    for order in orders:
        result = metric.replace(order=order)(attribution, inputs, targets, ids, composite, heatmaps=heatmaps)
        results[result.order] = result
    return results
