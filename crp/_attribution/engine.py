"""Conditional attributions: LRP heatmaps restricted to the relevance that flows through chosen concepts.

:class:`CondAttribution` implements Concept Relevance Propagation (Achtibat et al., "From attribution maps
to human-understandable explanations through Concept Relevance Propagation", Nature Machine Intelligence 5,
2023, Eq. 6-8): the relevance of a zennit composite is initialized at the model output (or at a chosen
layer), masked at every conditioned layer so that only the chosen concepts pass, and propagated to the
input, where it forms one heatmap per condition.
"""
import contextlib
import numbers
import warnings
from collections import namedtuple
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from tqdm import tqdm
from zennit.composites import NameMapComposite
from zennit.core import Composite

from crp._attribution.concepts import ChannelConcept
from crp._attribution.conditions import Condition, broadcast_rows, canonical_conditions
from crp._attribution.hooks import MaskHook
from crp._utils.modules import check_layer_names, preserved_tensors

__all__ = ["CondAttribution", "attrResult"]

attrResult = namedtuple("AttributionResults", "heatmap, activations, relevances, prediction")
attrResult.__doc__ = """Result of a conditional attribution.

heatmap : torch.Tensor
    ``heatmap_modifier`` of the input relevance; by default summed over channels, ``(rows, H, W)``.
activations : dict of str to torch.Tensor
    Output of every recorded layer, one row per result row.
relevances : dict of str to torch.Tensor
    Relevance arriving at every recorded layer's output (for a conditioned layer: before its own mask).
prediction : torch.Tensor
    Model output (or the ``start_layer`` activation) of every row.
"""

MaskMap = Union[Callable, Dict[str, Callable]]
InitRel = Union[None, numbers.Real, torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]


class _StopForward(Exception):
    """Raised by a probe to end a forward pass early once the layers it needs have run."""


@dataclass
class _Recording:
    """What the probes saw in one forward pass and the backward passes that follow it."""
    outputs: Dict[str, torch.Tensor] = field(default_factory=dict)
    activations: Dict[str, torch.Tensor] = field(default_factory=dict)
    relevances: Dict[str, torch.Tensor] = field(default_factory=dict)
    order: List[str] = field(default_factory=list)
    versions: Dict[str, int] = field(default_factory=dict)
    #: The outputs themselves (``outputs`` holds the copies handed on to the model where a probe makes one).
    sources: Dict[str, torch.Tensor] = field(default_factory=dict)

    def edited_in_place(self) -> bool:
        """Whether an in-place operation changed an output that was recorded without a copy."""
        return any(self.outputs[name]._version != version for name, version in self.versions.items())


class _Probe(MaskHook):
    """Records a layer's output and the relevance arriving there (before masking), then applies the masks.

    With ``alias``, the probe hands a clone of the output on to the rest of the model. The clone is the point
    where relevance is captured without passing through this layer's mask, and where a backward pass restarts
    so that it passes through the mask exactly once; it also keeps the recorded activation safe from in-place
    operations downstream. Without it (layers that are only recorded), the output's version is noted so that
    an in-place edit can be detected.
    """

    def __init__(self, name: str, recording: _Recording, fn_list: List[Callable], stop: bool = False,
                 alias: bool = True) -> None:
        # the callback must not reference the probe: a probe -> bound method -> probe cycle would keep the
        # recording (activations, relevances, autograd graph) alive until the next full garbage collection
        super().__init__(fn_list, on_grad=_relevance_recorder(recording, name))
        self.name, self.recording, self.stop, self.alias = name, recording, stop, alias

    def post_forward(self, module: torch.nn.Module, *args) -> Optional[torch.Tensor]:
        output = args[-1]
        if not isinstance(output, torch.Tensor):
            raise TypeError(
                f"layer {self.name!r} returns {type(output).__name__}; CRP can only record or condition layers "
                f"whose output is a single tensor. Choose another layer."
            )
        recording = self.recording
        if self.name in recording.activations:
            return None  # a module called twice: the first call is the one recorded and conditioned
        recording.order.append(self.name)
        recording.activations[self.name] = output.detach()
        recording.sources[self.name] = output
        super().post_forward(module, output)
        if not self.alias:
            recording.outputs[self.name], recording.versions[self.name] = output, output._version
            return None
        alias = output.clone() if output.requires_grad else output
        recording.outputs[self.name] = alias
        if self.stop:
            raise _StopForward
        return alias

    def copy(self) -> "_Probe":
        return self


def _relevance_recorder(recording: _Recording, name: str) -> Callable[[torch.nn.Module, torch.Tensor], None]:
    def record(module: torch.nn.Module, grad: torch.Tensor) -> None:
        recording.relevances[name] = grad
    return record


@dataclass
class _Request:
    """Validated, canonical arguments of one attribution call."""
    conditions: List[Condition]
    cond_layers: List[str]
    record_layers: List[str]
    start_layer: Optional[str]
    mask_map: MaskMap
    init_rel: InitRel

    def targets(self, rows: Sequence[Condition], output_name: str) -> Optional[List[Optional[List[int]]]]:
        if self.start_layer is not None:
            return None
        targets = [condition.get(output_name) for condition in rows]
        return None if all(t is None for t in targets) else targets


class CondAttribution:
    """Compute conditional (concept-wise) attributions of a model with a zennit composite.

    Parameters
    ----------
    model : torch.nn.Module
        The model to explain. It is not changed outside of a call: every hook and canonizer is removed again,
        also when an exception occurs.
    device : torch.device, optional
        Device of the model; by default the device of its first parameter (or the CPU).
    overwrite_data_grad : bool
        Set ``data.grad`` to None before each call; otherwise warn when it holds a gradient (which then
        accumulates). Heatmaps never include a stale gradient.
    no_param_grad : bool
        Switch off ``requires_grad`` of all model parameters to save memory and time.

    Attributes
    ----------
    MODEL_OUTPUT_NAME : str
        Key that stands for the model output (the targets) in a condition, ``"y"``.

    Examples
    --------
    >>> attribution = CondAttribution(model)
    >>> conditions = [{"features.28": [c], "y": [target]} for c in range(4)]
    >>> result = attribution(sample.requires_grad_(), conditions, EpsilonPlusFlat())
    >>> result.heatmap.shape  # one heatmap per condition
    """

    MODEL_OUTPUT_NAME = "y"

    def __init__(self, model: torch.nn.Module, device: Optional[torch.device] = None,
                 overwrite_data_grad: bool = True, no_param_grad: bool = True) -> None:
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}.")
        if device is None:
            device = next((p.device for p in model.parameters()), torch.device("cpu"))
        self.model = model
        self.device = device
        self.overwrite_data_grad = overwrite_data_grad
        if no_param_grad:
            model.requires_grad_(False)

    # ----------------------------------------------------------------------------------------------------------
    # public API

    def __call__(
        self, data: torch.Tensor, conditions: List[Dict], composite: Optional[Composite] = None,
        record_layer: Sequence[str] = (), mask_map: MaskMap = ChannelConcept.mask, start_layer: Optional[str] = None,
        init_rel: InitRel = None, on_device: Optional[Union[str, torch.device]] = None, exclude_parallel: bool = True,
    ) -> attrResult:
        """Compute one conditional heatmap per (sample, condition) row.

        Parameters
        ----------
        data : torch.Tensor
            Input batch of N samples with ``requires_grad=True``.
        conditions : list of dict
            K conditions ``{layer_name: concept_ids, "y": target_ids}``. Concept ids are an int, a list (``[]``
            masks the whole layer) or, with ``mask_map=ChannelConcept.mask_rf``, a dict
            ``{channel: flat neuron indices}``. One sample and K conditions give K rows, N samples and one
            condition N rows, N and N are paired, otherwise N * K rows, sample-major.
        composite : zennit.core.Composite, optional
            The rules (and canonizers) of the relevance propagation; plain gradient if None.
        record_layer : sequence of str
            Layers whose activation and relevance are returned; conditioned layers and ``start_layer`` are
            always recorded.
        mask_map : callable or dict of str to callable
            ``mask_map(batch_id, concept_ids, layer_name)`` returns the mask function of one row; a dict gives
            one per conditioned layer.
        start_layer : str, optional
            Start the backward pass at this layer's output instead of the model output; a "y" condition is
            then ignored (with a warning).
        init_rel : None, number, torch.Tensor or callable
            Initial relevance: None takes the output (or ``start_layer`` activation) itself, a number a
            constant, a tensor is used as given, a callable is applied to the output. It is then restricted
            to the targets of each row, if any.
        on_device : str or torch.device, optional
            Move the results there.
        exclude_parallel : bool
            Let relevance reach the input only through the conditioned layers, in model order: no shortcut or
            parallel branch around them contributes. Conditions with different layer sets are computed in
            separate passes and returned in the order of the conditions.

        Returns
        -------
        attrResult
            ``(heatmap, activations, relevances, prediction)``, one row per (sample, condition) pair.
        """
        return self._call(data, conditions, composite, record_layer, mask_map, start_layer, init_rel, on_device,
                          exclude_parallel)

    def _call(self, data, conditions, composite, record_layer, mask_map, start_layer, init_rel, on_device,
              exclude_parallel, heatmap: bool = True) -> attrResult:
        """:meth:`__call__`; with ``heatmap=False`` the backward pass ends at the recorded layers (the part below
        the lowest one, which only the input heatmap needs, is skipped) and the result's heatmap is None."""
        request = self._prepare(data, conditions, record_layer, mask_map, start_layer, init_rel)
        samples, conds = broadcast_rows(len(data), len(request.conditions))
        self._reset_data_grad(data)
        groups = self._row_groups([request.conditions[c] for c in conds], exclude_parallel)
        parts = []
        for rows in groups:
            x = data[torch.as_tensor(samples[rows], device=data.device)]
            rows_conditions = [request.conditions[c] for c in conds[rows]]
            parts.append(self._attribute(data, x, rows_conditions, request, composite, exclude_parallel, on_device,
                                         heatmap))
        return _concat_rows(parts, np.concatenate(groups))

    def generate(
        self, data: torch.Tensor, conditions: List[Dict], composite: Optional[Composite] = None,
        record_layer: Sequence[str] = (), mask_map: MaskMap = ChannelConcept.mask, start_layer: Optional[str] = None,
        init_rel: InitRel = None, batch_size: int = 10, on_device: Optional[Union[str, torch.device]] = None,
        exclude_parallel: bool = True, verbose: bool = True,
    ) -> Iterator[attrResult]:
        """Yield the attributions of many conditions for one sample, ``batch_size`` conditions at a time.

        The arguments are those of :meth:`__call__`; ``data`` holds a single sample. Concatenated, the results
        equal ``__call__(data, conditions, ...)``. When every condition conditions the same layers and
        ``exclude_parallel`` is True, the relevance above the lowest conditioned layer is computed once per
        distinct target (and upper condition) and only the part below it once per batch of conditions;
        otherwise one forward pass of ``batch_size`` copies serves all batches.

        Parameters
        ----------
        batch_size : int
            Conditions per backward pass (and per yielded result).
        verbose : bool
            Show a tqdm progress bar.

        Yields
        ------
        attrResult
            The results of ``batch_size`` consecutive conditions (fewer in the last one).
        """
        if not isinstance(data, torch.Tensor) or len(data) != 1:
            shape = tuple(data.shape) if isinstance(data, torch.Tensor) else type(data).__name__
            raise ValueError(f"generate() explains one sample: data must have shape (1, ...), got {shape}. "
                             f"Use __call__ for batches of samples.")
        if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}.")
        request = self._prepare(data, conditions, record_layer, mask_map, start_layer, init_rel)
        self._reset_data_grad(data)
        layer_sets = {frozenset(self._layers_of(c)) for c in request.conditions}
        if exclude_parallel and len(layer_sets) > 1:
            return self._generate_calls(data, request, composite, int(batch_size), on_device, verbose)
        fast = len(layer_sets) == 1 and bool(next(iter(layer_sets))) and not isinstance(init_rel, torch.Tensor)
        runner = self._generate_split if fast else self._generate_shared
        return runner(data, request, composite, int(batch_size), on_device, exclude_parallel, verbose)

    def relevance_init(self, prediction: torch.Tensor, target_list: Optional[List], init_rel: InitRel) -> torch.Tensor:
        """Return the initial relevance for the backward pass.

        Parameters
        ----------
        prediction : torch.Tensor
            Model output (or ``start_layer`` activation), detached.
        target_list : list or None
            Per row, the target ids (or None for no restriction); None restricts no row.
        init_rel : None, number, torch.Tensor or callable
            See :meth:`__call__`.

        Returns
        -------
        torch.Tensor
            Tensor of the shape of ``prediction``.
        """
        if callable(init_rel):
            relevance = init_rel(prediction)
        elif isinstance(init_rel, torch.Tensor):
            relevance = init_rel
        elif isinstance(init_rel, numbers.Real) and not isinstance(init_rel, bool):
            relevance = torch.full_like(prediction, float(init_rel))
        elif init_rel is None:
            relevance = prediction
        else:
            raise TypeError(f"init_rel must be None, a number, a tensor or a callable, got {init_rel!r}.")
        relevance = _fit_init_rel(relevance, prediction)
        if not target_list:
            return relevance
        keep = torch.zeros_like(relevance)
        for row, targets in enumerate(target_list):
            if targets is None:
                keep[row] = 1
            else:
                keep[row, targets] = 1
        return relevance * keep

    def heatmap_modifier(self, data: torch.Tensor,
                         on_device: Optional[Union[str, torch.device]] = None) -> torch.Tensor:
        """Turn the input relevance ``data.grad`` into heatmaps: by default the sum over the channel axis."""
        heatmap = data.grad.detach()
        heatmap = heatmap.to(on_device) if on_device else heatmap
        return heatmap.sum(1)

    # ----------------------------------------------------------------------------------------------------------
    # argument handling

    def _prepare(self, data, conditions, record_layer, mask_map, start_layer, init_rel) -> _Request:
        if not isinstance(data, torch.Tensor):
            raise TypeError(f"data must be a torch.Tensor, got {type(data).__name__}.")
        if not data.requires_grad:
            raise ValueError("data must require gradients to receive relevance: call data.requires_grad_() first.")
        if data.dim() == 0 or len(data) == 0:
            raise ValueError(f"data must be a batch of at least one sample, got shape {tuple(data.shape)}.")
        if self.MODEL_OUTPUT_NAME in dict(self.model.named_modules()):
            raise ValueError(
                f"the model has a module named {self.MODEL_OUTPUT_NAME!r}, which is the key for the model output "
                f"in conditions; set attribution.MODEL_OUTPUT_NAME to another string."
            )
        conditions = canonical_conditions(conditions, self.MODEL_OUTPUT_NAME)
        record_layers = [record_layer] if isinstance(record_layer, str) else list(record_layer)
        cond_layers = list(dict.fromkeys(name for c in conditions for name in self._layers_of(c)))
        check_layer_names(self.model, cond_layers, "conditions")
        check_layer_names(self.model, record_layers, "record_layer")
        if start_layer is not None:
            check_layer_names(self.model, [start_layer], "start_layer")
        self._check_mask_map(mask_map, cond_layers)
        self._check_targets_given(conditions, start_layer, init_rel)
        layers = list(dict.fromkeys(record_layers + cond_layers + ([start_layer] if start_layer else [])))
        return _Request(conditions, cond_layers, layers, start_layer, mask_map, init_rel)

    def _check_mask_map(self, mask_map, cond_layers: List[str]) -> None:
        if isinstance(mask_map, dict):
            check_layer_names(self.model, list(mask_map), "mask_map")
            missing = [name for name in cond_layers if name not in mask_map]
            if missing:
                raise KeyError(f"mask_map has no entry for the conditioned layers {missing}; add them or pass "
                               f"one callable for all layers.")
        elif not callable(mask_map):
            raise TypeError(f"mask_map must be a callable or a dict of layer name -> callable, got {mask_map!r}.")

    def _check_targets_given(self, conditions: List[Condition], start_layer, init_rel) -> None:
        has_targets = [self.MODEL_OUTPUT_NAME in c for c in conditions]
        if start_layer is not None:
            if any(has_targets):
                warnings.warn(
                    f"the condition on {self.MODEL_OUTPUT_NAME!r} is ignored because the backward pass starts at "
                    f"start_layer={start_layer!r}; remove start_layer to explain the output.", stacklevel=4)
        elif init_rel is None and not all(has_targets):
            raise ValueError(
                f"every condition needs a target {self.MODEL_OUTPUT_NAME!r} (e.g. {{..., "
                f"{self.MODEL_OUTPUT_NAME!r}: [3]}}) unless start_layer or init_rel is given."
            )

    def _layers_of(self, condition: Condition) -> List[str]:
        return [name for name in condition if name != self.MODEL_OUTPUT_NAME]

    def _reset_data_grad(self, data: torch.Tensor) -> None:
        if self.overwrite_data_grad:
            data.grad = None
        elif data.grad is not None:
            warnings.warn("data.grad is not None and will accumulate; set it to None or use "
                          "overwrite_data_grad=True.", stacklevel=3)

    def _row_groups(self, row_conditions: List[Condition], exclude_parallel: bool) -> List[np.ndarray]:
        if not exclude_parallel:
            return [np.arange(len(row_conditions))]
        groups: Dict[frozenset, List[int]] = {}
        for row, condition in enumerate(row_conditions):
            groups.setdefault(frozenset(self._layers_of(condition)), []).append(row)
        return [np.asarray(rows) for rows in groups.values()]

    def _masks_for(self, request: _Request, rows: Sequence[Condition],
                   into: Optional[Dict[str, list]] = None) -> Dict[str, list]:
        """Mask functions of every recorded layer for ``rows``, refilled into the lists of ``into`` if given.

        The probes hold these lists, so refilling them changes the masks of the next backward pass.
        """
        masks = {} if into is None else into
        for name in request.record_layers:
            masks.setdefault(name, []).clear()
        for row, condition in enumerate(rows):
            for name in request.cond_layers:
                if name in condition:
                    factory = request.mask_map[name] if isinstance(request.mask_map, dict) else request.mask_map
                    masks[name].append(factory(row, condition[name], name))
        return masks

    # ----------------------------------------------------------------------------------------------------------
    # passes

    @contextlib.contextmanager
    def _hooks(self, composite: Optional[Composite], request: _Request, masks: Dict[str, list],
               stop_at: Optional[str] = None, lean: bool = False) -> Iterator[_Recording]:
        """Register the composite, then one probe per recorded layer; remove all of them on exit.

        ``lean`` copies only the outputs of conditioned layers and the start layer (see :class:`_Probe`).
        """
        recording = _Recording()
        for name in request.record_layers:
            masks.setdefault(name, [])
        needs_alias = set(request.cond_layers) | {request.start_layer, stop_at}
        probes = [([name], _Probe(name, recording, masks[name], stop=name == stop_at,
                                  alias=not lean or name in needs_alias))
                  for name in request.record_layers]
        composite = Composite() if composite is None else composite
        try:
            with preserved_tensors(self.model), composite.context(self.model), \
                    NameMapComposite(probes).context(self.model):
                yield recording
        finally:
            # zennit composites reference themselves (module_map=self.mapping) and are freed only by the cyclic
            # garbage collector; without this, each call's recording (activations, relevances, graph) would
            # stay alive until then
            probes.clear()

    def _forward(self, x: torch.Tensor, recording: _Recording) -> Optional[torch.Tensor]:
        try:
            return self.model(x)
        except _StopForward:
            return None

    def _root(self, output: torch.Tensor, recording: _Recording, request: _Request) -> torch.Tensor:
        if request.start_layer is None:
            return output
        if request.start_layer not in recording.outputs:
            raise RuntimeError(f"start_layer {request.start_layer!r} was not reached by the forward pass.")
        return recording.outputs[request.start_layer]

    def _check_targets(self, prediction: torch.Tensor, targets: Optional[List]) -> None:
        if targets is None:
            return
        size = prediction.shape[1] if prediction.dim() > 1 else 0
        for ids in targets:
            bad = [t for t in ids or () if not -size <= t < size]
            if bad:
                raise IndexError(f"targets {bad} under {self.MODEL_OUTPUT_NAME!r} are out of range for a model "
                                 f"output with {size} classes; use ids in [0, {size - 1}].")

    def _chain(self, recording: _Recording, layers: Sequence[str], start_layer: Optional[str]) -> List[str]:
        """Conditioned layers from the top of the model down, where the backward pass is relayed."""
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

    def _relay(self, root: torch.Tensor, grad: torch.Tensor, chain: Sequence[str],
               recording: _Recording) -> Tuple[torch.Tensor, torch.Tensor]:
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

    def _attribute(self, data, x, rows, request, composite, exclude_parallel, on_device, heatmap=True) -> attrResult:
        """Forward and backward pass of one group of rows that condition the same layers."""
        if heatmap:
            x.retain_grad()
        targets = request.targets(rows, self.MODEL_OUTPUT_NAME)
        masks = self._masks_for(request, rows)
        for lean in (True, False):  # without copies of recorded-only outputs, unless the model edits them in place
            with self._hooks(composite, request, masks, lean=lean) as recording:
                output = self.model(x)
                if lean and recording.edited_in_place():
                    continue
                root = self._root(output, recording, request)
                prediction = root.detach()
                self._check_targets(prediction, targets)
                grad = self.relevance_init(prediction, targets, request.init_rel)
                if exclude_parallel:
                    layers = [name for name in request.cond_layers if any(name in row for row in rows)]
                    chain = self._chain(recording, layers, request.start_layer)
                    root, grad = self._relay(root, grad, chain, recording)
                if heatmap:
                    torch.autograd.backward(root, grad, inputs=[x, data] if data.is_leaf else [x])
                else:
                    _backward_to_recorded(root, grad, recording)
            break
        heatmap = self.heatmap_modifier(x, on_device) if heatmap else None
        activations, relevances = _collect(recording, request.record_layers, on_device)
        return attrResult(heatmap, activations, relevances, _move(prediction, on_device))

    def _generate_calls(self, data, request, composite, batch_size, on_device, verbose):
        """Conditions with different layer sets need their own relay each: one full call per batch."""
        conditions = request.conditions
        for start in tqdm(range(0, len(conditions), batch_size), disable=not verbose, desc="CRP"):
            yield self(data, conditions[start:start + batch_size], composite, request.record_layers,
                       request.mask_map, request.start_layer, request.init_rel, on_device, exclude_parallel=True)

    def _generate_shared(self, data, request, composite, batch_size, on_device, exclude_parallel, verbose):
        """One forward pass of ``batch_size`` copies of the sample; one backward pass per batch of conditions."""
        conditions = request.conditions
        width = min(batch_size, len(conditions))
        x = data[torch.zeros(width, dtype=torch.long, device=data.device)]
        x.retain_grad()
        masks: Dict[str, list] = {}
        with self._hooks(composite, request, masks) as recording:
            output = self._root(self.model(x), recording, request)
            prediction = output.detach()
            for start in tqdm(range(0, len(conditions), width), disable=not verbose, desc="CRP"):
                rows = conditions[start:start + width]
                self._masks_for(request, rows, into=masks)
                targets = _pad(request.targets(rows, self.MODEL_OUTPUT_NAME), width)
                self._check_targets(prediction, targets)
                root, grad = output, self.relevance_init(prediction, targets, request.init_rel)
                recording.relevances.clear()
                x.grad = None
                if exclude_parallel:
                    chain = self._chain(recording, self._layers_of(rows[0]), request.start_layer)
                    root, grad = self._relay(root, grad, chain, recording)
                torch.autograd.backward(root, grad, inputs=[x], retain_graph=start + width < len(conditions))
                activations, relevances = _collect(recording, request.record_layers, on_device, len(rows))
                heatmap = self.heatmap_modifier(x, on_device)[:len(rows)]
                yield attrResult(heatmap, activations, relevances, _move(prediction[:len(rows)], on_device))

    def _generate_split(self, data, request, composite, batch_size, on_device, exclude_parallel, verbose):
        """Relevance above the lowest conditioned layer once per distinct upper condition, below it per batch.

        LRP rules are linear in the relevance they receive, so with ``exclude_parallel=False`` the relevance
        that bypasses the lowest layer (through parallel branches) is computed once per upper condition and
        added to the input gradient of every row before ``heatmap_modifier``.
        """
        conditions = request.conditions
        lowest, keys, upper = self._upper_relevances(data, request, composite, exclude_parallel)
        width = min(batch_size, len(conditions))
        x = data[torch.zeros(width, dtype=torch.long, device=data.device)]
        x.retain_grad()
        masks: Dict[str, list] = {}
        at_lowest = upper.relevances[lowest]
        with self._hooks(composite, request, masks, stop_at=lowest) as recording:
            self._forward(x, recording)
            if lowest not in recording.outputs:
                raise RuntimeError(f"layer {lowest!r} was not reached by the forward pass.")
            for start in tqdm(range(0, len(conditions), width), disable=not verbose, desc="CRP"):
                rows, row_keys = conditions[start:start + width], keys[start:start + width]
                self._masks_for(request, rows, into=masks)
                padding = at_lowest[:1].expand(width - len(rows), *at_lowest.shape[1:])
                grad = torch.cat([at_lowest[row_keys], torch.zeros_like(padding)])
                recording.relevances.clear()
                x.grad = None
                torch.autograd.backward(recording.outputs[lowest], grad, inputs=[x],
                                        retain_graph=start + width < len(conditions))
                if upper.heatmap is not None:
                    x.grad[:len(rows)] += upper.heatmap[row_keys]
                yield self._split_result(x, recording, upper, row_keys, request, lowest, on_device)

    def _upper_relevances(self, data, request, composite, exclude_parallel) -> Tuple[str, np.ndarray, attrResult]:
        """Relevance arriving at the lowest conditioned layer for every distinct upper condition (one row each).

        Returns the lowest layer, the key (row of the upper result) of every condition, and the upper result:
        relevances with one row per key (at the lowest layer: before its mask; below it: what bypasses it),
        ``heatmap`` the input gradient that bypasses the lowest layer (None with ``exclude_parallel``), and
        activations and prediction of the sample (one row).
        """
        x = data.detach().requires_grad_()
        masks: Dict[str, list] = {}
        with self._hooks(composite, request, masks) as recording:
            root = self._root(self.model(x), recording, request)
            prediction = root.detach()
            chain = self._chain(recording, request.cond_layers, request.start_layer)
            position = {name: index for index, name in enumerate(recording.order)}
            lowest = min(request.cond_layers, key=position.__getitem__)
            keys, distinct = _upper_keys(request.conditions, lowest, self.MODEL_OUTPUT_NAME)
            relevances: Dict[str, List[torch.Tensor]] = {}
            bypass: List[torch.Tensor] = []
            for representative in distinct:
                upper_rows = [{k: v for k, v in representative.items() if k != lowest}]
                self._masks_for(request, upper_rows, into=masks)
                targets = request.targets(upper_rows, self.MODEL_OUTPUT_NAME)
                self._check_targets(prediction, targets)
                grad = self.relevance_init(prediction, targets, request.init_rel)
                recording.relevances.clear()
                if exclude_parallel:
                    _, grad = self._relay(root, grad, chain, recording)  # ends at the lowest layer
                    recording.relevances[lowest] = grad
                else:
                    masks[lowest].append(torch.zeros_like)  # the part through the lowest layer comes per batch
                    x.grad = None
                    torch.autograd.backward(root, grad, inputs=[x], retain_graph=True)
                    bypass.append(x.grad.detach().clone())
                for name, relevance in recording.relevances.items():
                    relevances.setdefault(name, []).append(relevance.detach())
        upper = attrResult(torch.cat(bypass) if bypass else None, dict(recording.activations),
                           {k: torch.cat(v) for k, v in relevances.items()}, prediction)
        return lowest, keys, upper

    def _split_result(self, x, recording, upper, row_keys, request, lowest, on_device) -> attrResult:
        """Rows of the lower pass joined with the upper pass's relevances of their upper conditions."""
        n_rows = len(row_keys)
        activations, relevances = {}, {}
        for name in request.record_layers:
            if name not in upper.activations:
                continue
            activation = upper.activations[name]
            activations[name] = _move(activation.expand(n_rows, *activation.shape[1:]).clone(), on_device)
            upper_part = upper.relevances.get(name)
            relevance = torch.zeros_like(activations[name]) if upper_part is None else upper_part[row_keys]
            if name != lowest and name in recording.relevances:
                relevance = relevance + recording.relevances[name][:n_rows].detach()
            relevances[name] = _move(relevance, on_device)
        heatmap = self.heatmap_modifier(x, on_device)[:n_rows]
        prediction = upper.prediction.expand(n_rows, *upper.prediction.shape[1:]).clone()
        return attrResult(heatmap, activations, relevances, _move(prediction, on_device))


def _backward_to_recorded(root: torch.Tensor, grad: torch.Tensor, recording: _Recording) -> None:
    """Propagate ``grad`` from ``root`` only as far down as the outputs of the recorded layers; their probes
    record the relevance on the way."""
    ends = [output for output in recording.sources.values() if output.requires_grad and output is not root]
    if ends and root.requires_grad:
        torch.autograd.grad(root, ends, grad, allow_unused=True)


def _upper_keys(conditions: List[Condition], lowest: str, output_name: str) -> Tuple[np.ndarray, List[Condition]]:
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


def _fit_init_rel(relevance, prediction: torch.Tensor) -> torch.Tensor:
    if not isinstance(relevance, torch.Tensor):
        raise TypeError(f"init_rel must give a tensor, got {type(relevance).__name__}.")
    try:
        return relevance.to(prediction).expand_as(prediction)
    except RuntimeError:
        raise ValueError(f"init_rel has shape {tuple(relevance.shape)}, which does not fit the output of shape "
                         f"{tuple(prediction.shape)}; give a tensor of that shape (or broadcastable to it).") from None


def _move(tensor: Optional[torch.Tensor], on_device) -> Optional[torch.Tensor]:
    return tensor.to(on_device) if (on_device and tensor is not None) else tensor


def _collect(recording: _Recording, names: Sequence[str], on_device, n_rows: Optional[int] = None):
    """Activations and relevances of the recorded layers that ran (zeros where no relevance arrived)."""
    activations, relevances = {}, {}
    for name in names:
        if name not in recording.activations:
            continue
        activation = recording.activations[name][:n_rows]
        relevance = recording.relevances.get(name)
        relevance = torch.zeros_like(activation) if relevance is None else relevance[:n_rows].detach()
        activations[name], relevances[name] = _move(activation, on_device), _move(relevance, on_device)
    return activations, relevances


def _concat_rows(parts: List[attrResult], rows: np.ndarray) -> attrResult:
    """Concatenate the results of row groups and put the rows back into the order of the conditions."""
    if len(parts) == 1 and np.array_equal(rows, np.arange(len(rows))):
        return parts[0]
    order = torch.as_tensor(np.argsort(rows, kind="stable"))

    def join(tensors):
        return torch.cat(tensors)[order.to(tensors[0].device)]

    names = [name for name in parts[0].activations]
    return attrResult(
        None if parts[0].heatmap is None else join([p.heatmap for p in parts]),
        {name: join([p.activations[name] for p in parts]) for name in names},
        {name: join([p.relevances[name] for p in parts]) for name in names},
        join([p.prediction for p in parts]),
    )

