"""zennit-crp's FeatVisHook: a zennit hook that hands a layer's activation and relevance to FeatureVisualization.

It is the seam of zennit-crp's flow (:meth:`crp.visualization.FeatureVisualization.run_distributed`): in the
forward pass it passes the layer's output to ``FV.analyze_activation``, in the backward pass the gradient
arriving there (the relevance) to ``FV.analyze_relevance``, with the dataset indices and targets of the batch
from the shared ``dict_inputs``. Subclasses of FeatureVisualization that write their own ``run_distributed``
around it work as with zennit-crp.
"""
import functools
import weakref
from typing import Any, Dict, Optional, Union

import torch
from zennit.core import RemovableHandle, RemovableHandleList

from crp._attribution.concepts import Concept

__all__ = ["FeatVisHook"]


class FeatVisHook:
    """Hand a layer's activation (forward) and relevance (backward) to a FeatureVisualization.

    It follows zennit's hook protocol (``copy``, ``register``, ``remove``), e.g. in
    ``NameMapComposite([([layer_name], FeatVisHook(...))])``; its forward hook accepts zennit 0.5's and 1.0's
    signatures.

    Parameters
    ----------
    FV : FeatureVisualization
        Receives ``analyze_activation`` and ``analyze_relevance`` calls.
    concept : Concept
        The layer's concept.
    layer_name : str
        The layer.
    dict_inputs : dict
        Shared with the caller, who sets ``"sample_indices"`` and ``"targets"`` (arrays, one per row) before
        every pass.
    on_device : str or torch.device, optional
        Where the activation and relevance are moved before the analysis.
    """

    def __init__(self, FV: Any, concept: Concept, layer_name: str, dict_inputs: Dict[str, Any],  # noqa: N803
                 on_device: Optional[Union[str, torch.device]]) -> None:
        self.FV, self.concept, self.layer_name = FV, concept, layer_name
        self.dict_inputs, self.on_device = dict_inputs, on_device

    def post_forward(self, module: torch.nn.Module, *args: Any) -> None:
        """Forward hook: analyze the activation and register the relevance analysis on the output."""
        output = args[-1]
        if isinstance(output, tuple):
            output = output[0]
        if not isinstance(output, torch.Tensor):
            raise TypeError(f"layer {self.layer_name!r} returns {type(output).__name__}; FeatVisHook needs a layer "
                            f"whose output is a tensor.")
        activation = output.detach()
        activation = activation.to(self.on_device) if self.on_device else activation
        self.FV.analyze_activation(activation, self.layer_name, self.concept, self.dict_inputs["sample_indices"],
                                   self.dict_inputs["targets"])
        if output.grad_fn is not None:
            hook_ref = weakref.ref(self)

            @functools.wraps(type(self).backward)  # not the bound method: the tensor must not keep ``self`` alive
            def wrapper(grad: torch.Tensor) -> Optional[torch.Tensor]:
                hook = hook_ref()
                return None if hook is None else hook.backward(module, grad)

            output.register_hook(wrapper)

    def backward(self, module: torch.nn.Module, grad: torch.Tensor) -> torch.Tensor:  # noqa: ARG002 (zennit's hook signature)
        """Analyze the relevance arriving at the layer's output; return it unchanged."""
        relevance = grad.detach()
        relevance = relevance.to(self.on_device) if self.on_device else relevance
        self.FV.analyze_relevance(relevance, self.layer_name, self.concept, self.dict_inputs["sample_indices"],
                                  self.dict_inputs["targets"])
        return grad

    def copy(self) -> "FeatVisHook":
        """Return a hook with the same FeatureVisualization, concept, layer and shared inputs."""
        return self.__class__(self.FV, self.concept, self.layer_name, self.dict_inputs, self.on_device)

    def remove(self) -> None:
        """Do nothing when zennit removes the hook's handles: there is nothing to undo."""

    def register(self, module: torch.nn.Module) -> RemovableHandleList:
        """Register the forward hook on ``module``; return zennit handles that undo it."""
        return RemovableHandleList([RemovableHandle(self), module.register_forward_hook(self.post_forward)])
