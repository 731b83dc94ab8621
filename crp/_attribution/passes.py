"""The forward and backward passes of a conditional attribution, and the strategies of ``generate``.

One :class:`Passes` object serves one call of :class:`crp.attribution.CondAttribution`: it registers the
probes (:mod:`crp._attribution.probes`), starts the relevance at the output or a start layer with the
attribution's ``relevance_init``, relays it from conditioned layer to conditioned layer when parallel
branches are excluded, and turns the input gradient into heatmaps with the attribution's
``heatmap_modifier``. ``generate`` picks one of three strategies: one call per batch (conditions on
different layers), one shared forward pass (the default), or a split pass that computes the part above the
lowest conditioned layer once per distinct upper condition (same layers everywhere).
"""
from collections import namedtuple
from typing import Any, Dict, Iterator, List, Optional, Protocol, Sequence, Tuple, Union

import numpy as np
import torch
from zennit.core import Composite

from crp._attribution.conditions import Condition, Request, layers_of
from crp._attribution.probes import (
    Recording,
    StopForward,
    collect,
    input_grad,
    move,
    named_shape_errors,
    probe_hooks,
)
from crp._utils.progress import tqdm
from crp._utils.text import id_list

__all__ = ["attrResult", "Attributor", "Passes", "row_groups", "concat_rows"]

attrResult = namedtuple("AttributionResults", "heatmap, activations, relevances, prediction")  # type: ignore[name-match]  # noqa: E501 (zennit-crp's name)
attrResult.__doc__ = """Result of a conditional attribution.

heatmap : torch.Tensor or None
    ``heatmap_modifier`` of the input relevance; by default summed over channels, ``(rows, H, W)``; None for
    a call with ``heatmap=False``.
activations : dict of str to torch.Tensor
    Output of every recorded layer, one row per result row.
relevances : dict of str to torch.Tensor
    Relevance arriving at every recorded layer's output (for a conditioned layer: before its own mask).
prediction : torch.Tensor
    Model output (or the ``start_layer`` activation) of every row.
"""

Device = Union[str, torch.device, None]


class Attributor(Protocol):
    """What the passes use of :class:`crp.attribution.CondAttribution` (its overridable steps and itself)."""

    model: torch.nn.Module

    def relevance_init(self, prediction: torch.Tensor, target_list: Optional[List], init_rel: Any) -> torch.Tensor:
        """Return the initial relevance (see ``CondAttribution.relevance_init``)."""

    def heatmap_modifier(self, data: torch.Tensor, on_device: Device = None) -> torch.Tensor:
        """Return the heatmaps of the input relevance (see ``CondAttribution.heatmap_modifier``)."""

    def __call__(self, data: torch.Tensor, conditions: List[Dict], composite: Optional[Composite] = None, *,  # noqa: D102
                 record_layer: Sequence[str], mask_map: Any, start_layer: Optional[str], init_rel: Any,
                 on_device: Device, exclude_parallel: bool) -> attrResult:
        """Compute conditional attributions (see ``CondAttribution.__call__``)."""


class Passes:
    """The passes of one attribution call.

    Parameters
    ----------
    attribution : Attributor
        The :class:`crp.attribution.CondAttribution`; its ``model``, ``relevance_init`` and
        ``heatmap_modifier`` are used.
    request : Request
        The canonical arguments.
    composite : zennit.core.Composite or None
        The rules to register for each pass; None when none are needed or they are registered already.
    on_device : str or torch.device, optional
        Where the results go.
    exclude_parallel : bool
        Relay the relevance from conditioned layer to conditioned layer (see ``CondAttribution.__call__``).
    """

    def __init__(self, attribution: Attributor, request: Request, composite: Optional[Composite], *,
                 on_device: Device, exclude_parallel: bool) -> None:
        self.attribution, self.model, self.request = attribution, attribution.model, request
        self.composite, self.on_device, self.exclude_parallel = composite, on_device, exclude_parallel

    # ----------------------------------------------------------------------------------------------------------
    # one call

    def attribute(self, data: torch.Tensor, x: torch.Tensor, rows: List[Condition], *, heatmap: bool) -> attrResult:
        """Forward and backward pass of one group of rows that condition the same layers.

        ``x`` holds the rows' samples (taken from ``data``); with ``heatmap=False`` the backward pass ends at the
        recorded layers and the result's heatmap is None.
        """
        request = self.request
        if heatmap:
            x.retain_grad()
        targets = request.targets(rows)
        for lean in (True, False):  # without copies of recorded-only outputs, unless the model edits them in place
            with self.hooks(lean=lean) as recording:
                recording.set_masks(request.masks_for(rows))
                with named_shape_errors(self.model, x):
                    output = self.model(x)
                if lean and recording.edited_in_place():
                    continue
                root = self.root(output, recording)
                prediction = root.detach()
                self.check_targets(prediction, targets)
                grad = self.attribution.relevance_init(prediction, targets, request.init_rel)
                if self.exclude_parallel:
                    layers = [name for name in request.cond_layers if any(name in row for row in rows)]
                    root, grad = self.relay(root, grad, self.chain(recording, layers), recording)
                if heatmap:
                    torch.autograd.backward(root, grad, inputs=[x, data] if data.is_leaf else [x])
                else:
                    backward_to_recorded(root, grad, recording)
            break
        heatmaps = self.attribution.heatmap_modifier(x, self.on_device) if heatmap else None
        activations, relevances = collect(recording, request.record_layers, self.on_device)
        return attrResult(heatmaps, activations, relevances, move(prediction, self.on_device))

    # ----------------------------------------------------------------------------------------------------------
    # generate

    def generate_calls(self, data: torch.Tensor, *, batch_size: int, verbose: bool) -> Iterator[attrResult]:
        """Conditions with different layer sets need their own relay each: one full call per batch."""
        conditions, request = self.request.conditions, self.request
        for start in tqdm(range(0, len(conditions), batch_size), disable=not verbose, desc="CRP"):
            yield self.attribution(
                data, conditions[start:start + batch_size], self.composite, record_layer=request.record_layers,
                mask_map=request.mask_map, start_layer=request.start_layer, init_rel=request.init_rel,
                on_device=self.on_device, exclude_parallel=True)

    def generate_shared(self, data: torch.Tensor, *, batch_size: int, verbose: bool) -> Iterator[attrResult]:
        """One forward pass of ``batch_size`` copies of the sample; one backward pass per batch of conditions."""
        request, conditions = self.request, self.request.conditions
        width = min(batch_size, len(conditions))
        x = data[torch.zeros(width, dtype=torch.long, device=data.device)]
        x.retain_grad()
        with self.hooks() as recording:
            output = self.root(self.model(x), recording)
            prediction = output.detach()
            for start in tqdm(range(0, len(conditions), width), disable=not verbose, desc="CRP"):
                rows = conditions[start:start + width]
                recording.set_masks(request.masks_for(rows))
                targets = _pad(request.targets(rows), width)
                self.check_targets(prediction, targets)
                root, grad = output, self.attribution.relevance_init(prediction, targets, request.init_rel)
                recording.relevances.clear()
                x.grad = None
                if self.exclude_parallel:
                    chain = self.chain(recording, layers_of(rows[0], request.output_name))
                    root, grad = self.relay(root, grad, chain, recording)
                torch.autograd.backward(root, grad, inputs=[x], retain_graph=start + width < len(conditions))
                activations, relevances = collect(recording, request.record_layers, self.on_device, len(rows))
                heatmap = self.attribution.heatmap_modifier(x, self.on_device)[:len(rows)]
                yield attrResult(heatmap, activations, relevances, move(prediction[:len(rows)], self.on_device))

    def generate_split(self, data: torch.Tensor, *, batch_size: int, verbose: bool) -> Iterator[attrResult]:
        """Relevance above the lowest conditioned layer once per distinct upper condition, below it per batch.

        LRP rules are linear in the relevance they receive, so with ``exclude_parallel=False`` the relevance
        that bypasses the lowest layer (through parallel branches) is computed once per upper condition and
        added to the input gradient of every row before ``heatmap_modifier``.
        """
        request, conditions = self.request, self.request.conditions
        lowest, keys, upper = self.upper_relevances(data)
        width = min(batch_size, len(conditions))
        x = data[torch.zeros(width, dtype=torch.long, device=data.device)]
        x.retain_grad()
        at_lowest = upper.relevances[lowest]
        with self.hooks(stop_at=lowest) as recording:
            self.forward(x)
            if lowest not in recording.outputs:
                raise RuntimeError(f"layer {lowest!r} was not reached by the forward pass.")
            for start in tqdm(range(0, len(conditions), width), disable=not verbose, desc="CRP"):
                rows, row_keys = conditions[start:start + width], keys[start:start + width]
                recording.set_masks(request.masks_for(rows))
                padding = at_lowest[:1].expand(width - len(rows), *at_lowest.shape[1:])
                grad = torch.cat([at_lowest[row_keys], torch.zeros_like(padding)])
                recording.relevances.clear()
                x.grad = None
                torch.autograd.backward(recording.outputs[lowest], grad, inputs=[x],
                                        retain_graph=start + width < len(conditions))
                if upper.heatmap is not None:
                    input_grad(x)[:len(rows)] += upper.heatmap[row_keys]
                yield self.split_result(x, recording, upper, row_keys, lowest=lowest)

    def upper_relevances(self, data: torch.Tensor) -> Tuple[str, np.ndarray, attrResult]:
        """Relevance arriving at the lowest conditioned layer for every distinct upper condition (one row each).

        Returns the lowest layer, the key (row of the upper result) of every condition, and the upper result:
        relevances with one row per key (at the lowest layer: before its mask; below it: what bypasses it),
        ``heatmap`` the input gradient that bypasses the lowest layer (None with ``exclude_parallel``), and
        activations and prediction of the sample (one row).
        """
        request = self.request
        x = data.detach().requires_grad_()
        with self.hooks() as recording:
            root = self.root(self.model(x), recording)
            prediction = root.detach()
            chain = self.chain(recording, request.cond_layers)
            position = {name: index for index, name in enumerate(recording.order)}
            lowest = min(request.cond_layers, key=position.__getitem__)
            keys, distinct = upper_keys(request.conditions, lowest)
            relevances: Dict[str, List[torch.Tensor]] = {}
            bypass: List[torch.Tensor] = []
            for representative in distinct:
                upper_rows = [{k: v for k, v in representative.items() if k != lowest}]
                masks = request.masks_for(upper_rows)
                targets = request.targets(upper_rows)
                self.check_targets(prediction, targets)
                grad = self.attribution.relevance_init(prediction, targets, request.init_rel)
                recording.relevances.clear()
                if self.exclude_parallel:
                    recording.set_masks(masks)
                    _, grad = self.relay(root, grad, chain, recording)  # ends at the lowest layer
                    recording.relevances[lowest] = grad
                else:
                    masks[lowest].append(torch.zeros_like)  # the part through the lowest layer comes per batch
                    recording.set_masks(masks)
                    x.grad = None
                    torch.autograd.backward(root, grad, inputs=[x], retain_graph=True)
                    bypass.append(input_grad(x).detach().clone())
                for name, relevance in recording.relevances.items():
                    relevances.setdefault(name, []).append(relevance.detach())
        upper = attrResult(torch.cat(bypass) if bypass else None, dict(recording.activations),
                           {k: torch.cat(v) for k, v in relevances.items()}, prediction)
        return lowest, keys, upper

    def split_result(self, x: torch.Tensor, recording: Recording, upper: attrResult, row_keys: np.ndarray, *,
                     lowest: str) -> attrResult:
        """Rows of the lower pass joined with the upper pass's relevances of their upper conditions."""
        n_rows = len(row_keys)
        activations, relevances = {}, {}
        for name in self.request.record_layers:
            if name not in upper.activations:
                continue
            activation = upper.activations[name]
            activations[name] = move(activation.expand(n_rows, *activation.shape[1:]).clone(), self.on_device)
            upper_part = upper.relevances.get(name)
            relevance = torch.zeros_like(activations[name]) if upper_part is None else upper_part[row_keys]
            if name != lowest and name in recording.relevances:
                relevance = relevance + recording.relevances[name][:n_rows].detach()
            relevances[name] = move(relevance, self.on_device)
        heatmap = self.attribution.heatmap_modifier(x, self.on_device)[:n_rows]
        prediction = upper.prediction.expand(n_rows, *upper.prediction.shape[1:]).clone()
        return attrResult(heatmap, activations, relevances, move(prediction, self.on_device))

    # ----------------------------------------------------------------------------------------------------------
    # steps

    def hooks(self, *, stop_at: Optional[str] = None, lean: bool = False):
        """Register the composite (if any) and the probes for one pass.

        ``lean`` copies only the outputs of conditioned layers and the start layer (see
        :class:`crp._attribution.probes.Probe`).
        """
        request = self.request
        aliased = set(request.cond_layers) if lean else set(request.record_layers)
        if lean and request.start_layer is not None:
            aliased.add(request.start_layer)
        return probe_hooks(self.model, self.composite, request.record_layers, aliased=sorted(aliased),
                           stop_at=stop_at)

    def forward(self, x: torch.Tensor) -> Optional[torch.Tensor]:
        """Return the model's output, or None where a probe ended the pass early."""
        try:
            return self.model(x)
        except StopForward:
            return None

    def root(self, output: torch.Tensor, recording: Recording) -> torch.Tensor:
        """Where the backward pass starts: the output, or the start layer's output."""
        start_layer = self.request.start_layer
        if start_layer is None:
            return output
        if start_layer not in recording.outputs:
            raise RuntimeError(f"start_layer {start_layer!r} was not reached by the forward pass.")
        return recording.outputs[start_layer]

    def check_targets(self, prediction: torch.Tensor, targets: Optional[List]) -> None:
        """Raise an IndexError for targets beyond the model output."""
        if targets is None:
            return
        size = prediction.shape[1] if prediction.dim() > 1 else 0
        for ids in targets:
            bad = [t for t in ids or () if not 0 <= t < size]
            if bad:
                raise IndexError(f"targets {id_list(bad)} under {self.request.output_name!r} are out of range for "
                                 f"a model output with {size} classes; use ids in [0, {size - 1}].")

    def chain(self, recording: Recording, layers: Sequence[str]) -> List[str]:
        """Conditioned layers from the top of the model down, where the backward pass is relayed."""
        start_layer = self.request.start_layer
        missing = [name for name in layers if name not in recording.outputs]
        if missing:
            raise RuntimeError(f"the conditioned layers {missing} were not reached by the forward pass; condition "
                               f"layers that the model runs on this input.")
        position = {name: index for index, name in enumerate(recording.order)}
        chain = sorted((n for n in layers if n != start_layer), key=position.__getitem__, reverse=True)
        if start_layer is not None and chain and position[chain[0]] > position[start_layer]:
            raise RuntimeError(f"layer {chain[0]!r} lies above start_layer {start_layer!r}, so no relevance reaches "
                               f"it; condition layers below the start layer.")
        return chain

    @staticmethod
    def relay(root: torch.Tensor, grad: torch.Tensor, chain: Sequence[str],
              recording: Recording) -> Tuple[torch.Tensor, torch.Tensor]:
        """Propagate from ``root`` to each layer of ``chain`` in turn, only through that layer."""
        for name in chain:
            target = recording.outputs[name]
            (grad,) = torch.autograd.grad(root, target, grad, retain_graph=True, allow_unused=True)
            if grad is None:
                raise RuntimeError(
                    f"with exclude_parallel=True relevance is passed from layer to layer, but layer {name!r} does "
                    f"not feed the layer above it in the condition (parallel branches?); condition layers on "
                    f"one path, or use exclude_parallel=False."
                )
            root = target
        return root, grad


def backward_to_recorded(root: torch.Tensor, grad: torch.Tensor, recording: Recording) -> None:
    """Propagate ``grad`` from ``root`` only as far down as the outputs of the recorded layers.

    Their probes record the relevance on the way.
    """
    ends = [output for output in recording.sources.values() if output.requires_grad and output is not root]
    if ends and root.requires_grad:
        torch.autograd.grad(root, ends, grad, allow_unused=True)


def upper_keys(conditions: List[Condition], lowest: str) -> Tuple[np.ndarray, List[Condition]]:
    """Group conditions by everything but their ids at ``lowest``; return each one's group and a representative."""
    index: Dict[tuple, int] = {}
    distinct: List[Condition] = []
    keys = []
    for condition in conditions:
        key = tuple(sorted((name, _hashable(ids)) for name, ids in condition.items() if name != lowest))
        if key not in index:
            index[key] = len(distinct)
            distinct.append(condition)
        keys.append(index[key])
    return np.asarray(keys), distinct


def _hashable(ids) -> tuple:
    return tuple(sorted((k, tuple(v)) for k, v in ids.items())) if isinstance(ids, dict) else tuple(ids)


def _pad(targets: Optional[List], width: int) -> Optional[List]:
    """Targets of padding rows are empty, so that no relevance is started there."""
    return None if targets is None else targets + [[]] * (width - len(targets))


def row_groups(row_conditions: List[Condition], *, exclude_parallel: bool, output_name: str) -> List[np.ndarray]:
    """Return the groups of rows that can share one pass.

    All rows, or (excluding parallel branches) those that condition the same layers.
    """
    if not exclude_parallel:
        return [np.arange(len(row_conditions))]
    groups: Dict[frozenset, List[int]] = {}
    for row, condition in enumerate(row_conditions):
        groups.setdefault(frozenset(layers_of(condition, output_name)), []).append(row)
    return [np.asarray(rows) for rows in groups.values()]


def concat_rows(parts: List[attrResult], rows: np.ndarray) -> attrResult:
    """Concatenate the results of row groups and put the rows back into the order of the conditions."""
    if len(parts) == 1 and np.array_equal(rows, np.arange(len(rows))):
        return parts[0]
    order = torch.as_tensor(np.argsort(rows, kind="stable"))

    def join(tensors):
        return torch.cat(tensors)[order.to(tensors[0].device)]

    names = list(parts[0].activations)
    return attrResult(
        None if parts[0].heatmap is None else join([p.heatmap for p in parts]),
        {name: join([p.activations[name] for p in parts]) for name in names},
        {name: join([p.relevances[name] for p in parts]) for name in names},
        join([p.prediction for p in parts]),
    )
