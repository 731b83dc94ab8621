"""Conditional attributions: LRP heatmaps restricted to the relevance that flows through chosen concepts.

:class:`CondAttribution` implements Concept Relevance Propagation (Achtibat et al., "From attribution maps
to human-understandable explanations through Concept Relevance Propagation", Nature Machine Intelligence 5,
2023, Eq. 6-8): the relevance of a zennit composite is initialized at the model output (or at a chosen
layer), masked at every conditioned layer so that only the chosen concepts pass, and propagated to the
input, where it forms one heatmap per condition. The arguments are coerced in
:mod:`crp._attribution.conditions`, the passes run in :mod:`crp._attribution.passes`.
"""
import contextlib
import numbers
import warnings
from typing import Dict, Iterator, List, Optional, Sequence, Union

import numpy as np
import torch
from zennit.core import Composite

from crp._attribution.concepts import ChannelConcept
from crp._attribution.conditions import InitRel, MaskMap, Request, broadcast_rows, layers_of, prepare_request
from crp._attribution.passes import Passes, attrResult, concat_rows, row_groups
from crp._attribution.probes import check_device, input_grad
from crp._utils.checks import check_positive_int
from crp._utils.modules import preserved_tensors
from crp._utils.transfer import to_device

__all__ = ["CondAttribution", "attrResult"]


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
        self._registered: Optional[Composite] = None
        if no_param_grad:
            model.requires_grad_(False)

    # ----------------------------------------------------------------------------------------------------------
    # public API

    def __call__(  # noqa: PLR0917 (zennit-crp's positional signature)
        self, data: torch.Tensor, conditions: List[Dict], composite: Optional[Composite] = None,
        record_layer: Sequence[str] = (), mask_map: MaskMap = ChannelConcept.mask, start_layer: Optional[str] = None,
        init_rel: InitRel = None, on_device: Optional[Union[str, torch.device]] = None, exclude_parallel: bool = True,
        *, heatmap: bool = True,
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
        heatmap : bool
            Compute the input heatmap. With False the backward pass ends at the recorded layers (the part below
            the lowest of them, which only the heatmap needs, is skipped) and the result's heatmap is None;
            activations, relevances and predictions are those of a full pass.

        Returns
        -------
        attrResult
            ``(heatmap, activations, relevances, prediction)``, one row per (sample, condition) pair.
        """
        request = self._prepare(data, conditions, record_layer=record_layer, mask_map=mask_map,
                                start_layer=start_layer, init_rel=init_rel)
        check_device(on_device)
        if heatmap:  # FeatureVisualization (heatmap=False) checks its batches without a device sync per call
            _warn_if_not_finite(data)
        samples, conds = broadcast_rows(len(data), len(request.conditions))
        self._reset_data_grad(data)
        passes = self._passes(request, composite, on_device=on_device, exclude_parallel=exclude_parallel)
        groups = row_groups([request.conditions[c] for c in conds], exclude_parallel=exclude_parallel,
                            output_name=self.MODEL_OUTPUT_NAME)
        parts = []
        for rows in groups:
            identity = not heatmap and len(rows) == len(data) and np.array_equal(samples[rows], np.arange(len(data)))
            x = data if identity else data[to_device(samples[rows], data.device)]
            rows_conditions = [request.conditions[c] for c in conds[rows]]
            parts.append(passes.attribute(data, x, rows_conditions, heatmap=heatmap))
        return concat_rows(parts, np.concatenate(groups))

    def generate(  # noqa: PLR0917 (zennit-crp's positional signature)
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
        batch_size = check_positive_int(batch_size, name="batch_size")
        check_device(on_device)
        _warn_if_not_finite(data)
        request = self._prepare(data, conditions, record_layer=record_layer, mask_map=mask_map,
                                start_layer=start_layer, init_rel=init_rel)
        self._reset_data_grad(data)
        passes = self._passes(request, composite, on_device=on_device, exclude_parallel=exclude_parallel)
        layer_sets = {frozenset(layers_of(c, self.MODEL_OUTPUT_NAME)) for c in request.conditions}
        if exclude_parallel and len(layer_sets) > 1:
            return passes.generate_calls(data, batch_size=batch_size, verbose=verbose)
        fast = len(layer_sets) == 1 and bool(next(iter(layer_sets))) and not isinstance(init_rel, torch.Tensor)
        runner = passes.generate_split if fast else passes.generate_shared
        return runner(data, batch_size=batch_size, verbose=verbose)

    @contextlib.contextmanager
    def context(self, composite: Optional[Composite] = None) -> Iterator["CondAttribution"]:
        """Register ``composite`` once for many calls, as zennit's ``Attributor`` does.

        Inside the ``with`` block, calls pass no composite (or this same one) and skip registering and removing
        the rules and canonizers per call; on exit the model is restored, also after an exception.

        Parameters
        ----------
        composite : zennit.core.Composite, optional
            The rules (and canonizers); None for the plain gradient.

        Yields
        ------
        CondAttribution
            This attribution.

        Examples
        --------
        >>> with attribution.context(EpsilonPlusFlat()):
        ...     for batch in batches:
        ...         result = attribution(batch.requires_grad_(), conditions, heatmap=False, record_layer=layers)
        """
        if composite is not None and not isinstance(composite, Composite):
            raise TypeError(f"composite must be a zennit.core.Composite (e.g. EpsilonPlusFlat()) or None, got "
                            f"{type(composite).__name__}.")
        if self._registered is not None:
            raise RuntimeError("this CondAttribution is already inside context(); nest no second context.")
        registered = Composite() if composite is None else composite
        with preserved_tensors(self.model), registered.context(self.model):
            self._registered = registered
            try:
                yield self
            finally:
                self._registered = None

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
        return relevance * _target_mask(relevance, target_list)

    def heatmap_modifier(self, data: torch.Tensor,
                         on_device: Optional[Union[str, torch.device]] = None) -> torch.Tensor:
        """Turn the input relevance ``data.grad`` into heatmaps: by default the sum over the channel axis."""
        heatmap = input_grad(data).detach()
        heatmap = heatmap.to(on_device) if on_device else heatmap
        return heatmap.sum(1)

    # ----------------------------------------------------------------------------------------------------------
    # steps shared by __call__ and generate

    def _prepare(self, data, conditions, *, record_layer, mask_map, start_layer, init_rel) -> Request:
        return prepare_request(self.model, data, conditions, record_layer=record_layer, mask_map=mask_map,
                               start_layer=start_layer, init_rel=init_rel, output_name=self.MODEL_OUTPUT_NAME)

    def _passes(self, request: Request, composite: Optional[Composite], *, on_device,
                exclude_parallel: bool) -> Passes:
        """Return the passes of one call; the composite is registered per pass unless :meth:`context` holds it."""
        if composite is not None and not isinstance(composite, Composite):
            raise TypeError(f"composite must be a zennit.core.Composite (e.g. EpsilonPlusFlat()) or None, got "
                            f"{type(composite).__name__}.")
        if self._registered is not None:
            if composite is not None and composite is not self._registered:
                raise ValueError("a composite is registered by context(); call without composite inside it, or "
                                 "leave the context to use another composite.")
            composite = None
        return Passes(self, request, composite, on_device=on_device, exclude_parallel=exclude_parallel)

    def _reset_data_grad(self, data: torch.Tensor) -> None:
        if self.overwrite_data_grad:
            data.grad = None
        elif data.grad is not None:
            warnings.warn("data.grad is not None and will accumulate; set it to None or use "
                          "overwrite_data_grad=True.", stacklevel=3)


def _fit_init_rel(relevance, prediction: torch.Tensor) -> torch.Tensor:
    if not isinstance(relevance, torch.Tensor):
        raise TypeError(f"init_rel must give a tensor, got {type(relevance).__name__}.")
    try:
        return relevance.to(prediction).expand_as(prediction)
    except RuntimeError:
        raise ValueError(f"init_rel has shape {tuple(relevance.shape)}, which does not fit the output of shape "
                         f"{tuple(prediction.shape)}; give a tensor of that shape (or broadcastable to it).") from None


def _target_mask(relevance: torch.Tensor, target_list: List) -> torch.Tensor:
    """1 at every row's targets (the whole row where they are None), else 0; built with one write on the device."""
    rows = [row for row, targets in enumerate(target_list) for _ in (targets if targets is not None else ())]
    columns = [t for targets in target_list if targets is not None for t in targets]
    whole = [row for row, targets in enumerate(target_list) if targets is None]
    keep = torch.zeros_like(relevance)
    if columns:
        index = to_device(np.asarray([rows, columns], dtype=np.int64), keep.device)
        keep.index_put_((index[0], index[1]), torch.ones((), dtype=keep.dtype, device=keep.device))
    if whole:
        keep.index_fill_(0, to_device(np.asarray(whole, dtype=np.int64), keep.device), 1)
    return keep


def _warn_if_not_finite(data: torch.Tensor) -> None:
    if not bool(torch.isfinite(data).all()):
        warnings.warn(f"data holds NaN or infinite values ({int((~torch.isfinite(data)).sum())} of {data.numel()}); "
                      f"the heatmaps will hold NaN. Clean the input first.", stacklevel=3)
