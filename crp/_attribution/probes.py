"""Probes: what a conditional attribution records in a pass, and the hooks that record it and apply the masks.

Every recorded or conditioned layer gets one :class:`Probe` (a zennit hook, see :class:`crp.hooks.MaskHook`).
In the forward pass it records the layer's output; in the backward pass it records the relevance arriving at
the output (before the layer's own mask) and then applies the masks of the current rows. The masks of all
layers live in one table on the :class:`Recording`, replaced as a whole by :meth:`Recording.set_masks`
between backward passes.
"""
import contextlib
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Union

import torch
from zennit.composites import NameMapComposite
from zennit.core import Composite

from crp._attribution.hooks import GradFn, MaskHook, apply_masks
from crp._utils.modules import preserved_tensors

__all__ = [
    "StopForward", "Recording", "Probe", "probe_hooks", "collect", "move", "input_grad", "check_device",
    "named_shape_errors",
]

Device = Union[str, torch.device, None]


class StopForward(Exception):
    """Raised by a probe to end a forward pass early once the layers it needs have run."""


@dataclass
class Recording:
    """What the probes saw in one forward pass and the backward passes that follow it, and the current masks."""

    outputs: Dict[str, torch.Tensor] = field(default_factory=dict)
    activations: Dict[str, torch.Tensor] = field(default_factory=dict)
    relevances: Dict[str, torch.Tensor] = field(default_factory=dict)
    order: List[str] = field(default_factory=list)
    versions: Dict[str, int] = field(default_factory=dict)
    #: The outputs themselves (``outputs`` holds the copies handed on to the model where a probe makes one).
    sources: Dict[str, torch.Tensor] = field(default_factory=dict)
    #: Mask functions per layer for the next backward pass.
    masks: Dict[str, List[GradFn]] = field(default_factory=dict)

    def set_masks(self, masks: Dict[str, List[GradFn]]) -> None:
        """Use ``masks`` (layer name -> mask functions) from the next backward pass on."""
        self.masks = masks

    def edited_in_place(self) -> bool:
        """Whether an in-place operation changed an output that was recorded without a copy."""
        return any(self.outputs[name]._version != version for name, version in self.versions.items())


class Probe(MaskHook):
    """Records a layer's output and the relevance arriving there (before masking), then applies the masks.

    With ``alias``, the probe hands a clone of the output on to the rest of the model. The clone is the point
    where relevance is captured without passing through this layer's mask, and where a backward pass restarts
    so that it passes through the mask exactly once; it also keeps the recorded activation safe from in-place
    operations downstream. Without it (layers that are only recorded), the output's version is noted so that
    an in-place edit can be detected.

    Parameters
    ----------
    name : str
        The layer's name.
    recording : Recording
        Where the probe writes, and where it reads its masks.
    stop : bool
        End the forward pass (:class:`StopForward`) after this layer.
    alias : bool
        Hand a clone of the output on to the model (see above).
    """

    def __init__(self, name: str, recording: Recording, *, stop: bool = False, alias: bool = True) -> None:
        # the callback must not reference the probe: a probe -> bound method -> probe cycle would keep the
        # recording (activations, relevances, autograd graph) alive until the next full garbage collection
        super().__init__((), on_grad=_relevance_recorder(recording, name))
        self.name, self.recording, self.stop, self.alias = name, recording, stop, alias

    def post_forward(self, module: torch.nn.Module, *args) -> Optional[torch.Tensor]:
        """Record the output, register the masking hook, and hand on a clone where the probe aliases."""
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
            raise StopForward
        return alias

    def backward(self, module: torch.nn.Module, grad: torch.Tensor) -> torch.Tensor:
        """Record ``grad``, then return it masked with the recording's current masks of this layer."""
        if self.on_grad is not None:
            self.on_grad(module, grad)
        return apply_masks(self.recording.masks.get(self.name, ()), grad)

    def copy(self) -> "Probe":
        """Return a probe of the same layer that writes to the same recording."""
        return Probe(self.name, self.recording, stop=self.stop, alias=self.alias)


def _relevance_recorder(recording: Recording, name: str) -> Callable[[torch.nn.Module, torch.Tensor], None]:
    def record(module: torch.nn.Module, grad: torch.Tensor) -> None:  # noqa: ARG001 (zennit's callback signature)
        recording.relevances[name] = grad
    return record


@contextlib.contextmanager
def probe_hooks(model: torch.nn.Module, composite: Optional[Composite], layers: Sequence[str], *,
                aliased: Sequence[str], stop_at: Optional[str] = None) -> Iterator[Recording]:
    """Register ``composite`` (unless None: it is registered already), then a probe per layer; undo on exit.

    Parameters
    ----------
    model : torch.nn.Module
        The model.
    composite : zennit.core.Composite or None
        The rules to register with the probes, or None when the caller registered them for many passes
        (:meth:`crp.attribution.CondAttribution.context`).
    layers : sequence of str
        The recorded layers.
    aliased : sequence of str
        The layers whose probes hand a clone of the output on (conditioned layers, the start layer).
    stop_at : str, optional
        End the forward pass after this layer.

    Yields
    ------
    Recording
        What the probes record; masks are set with :meth:`Recording.set_masks`.
    """
    recording = Recording()
    probes = [([name], Probe(name, recording, stop=name == stop_at, alias=name in aliased or name == stop_at))
              for name in layers]
    try:
        with contextlib.ExitStack() as stack:
            if composite is not None:
                stack.enter_context(preserved_tensors(model))
                stack.enter_context(composite.context(model))
            stack.enter_context(NameMapComposite(probes).context(model))
            yield recording
    finally:
        # zennit composites reference themselves (module_map=self.mapping) and are freed only by the cyclic
        # garbage collector; without this, each call's recording (activations, relevances, graph) would
        # stay alive until then
        probes.clear()


def check_device(on_device: Device, *, name: str = "on_device") -> Device:
    """Return ``on_device`` if it names a device torch knows (or is None); a ValueError naming it otherwise."""
    if on_device is None:
        return None
    try:
        torch.device(on_device)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"{name} must be None, a torch.device or a device name such as 'cpu' or 'cuda:0', got "
                         f"{on_device!r}.") from None
    return on_device


@contextlib.contextmanager
def named_shape_errors(model: torch.nn.Module, data: torch.Tensor) -> Iterator[None]:
    """Re-raise a forward pass's shape error naming the module where shapes stopped matching.

    A module-level forward pre-hook notes the last module entered; only errors that torch raises about shapes
    (``mat1 and mat2 shapes cannot be multiplied``, ``size mismatch``, ``Expected ... channels``) are rewritten.
    """
    names = {module: name for name, module in model.named_modules()}
    entered: List[str] = []

    def note(module: torch.nn.Module, _args: Any) -> None:
        if module in names:
            entered.append(names[module] or type(module).__name__)

    handle = torch.nn.modules.module.register_module_forward_pre_hook(note)
    try:
        yield
    except RuntimeError as error:
        text = str(error)
        shape_error = any(key in text for key in ("shapes cannot be multiplied", "size mismatch", "Expected",
                                                  "must match the size", "Given groups"))
        if not shape_error or not entered:
            raise
        layer = entered[-1]
        module = dict(model.named_modules()).get(layer)
        expects = _expected_input(module)
        raise ValueError(f"data of shape {tuple(data.shape)} does not fit the model: shapes stopped matching at "
                         f"layer {layer!r} ({type(module).__name__}{expects}): {text.splitlines()[0]}. Pass samples "
                         f"of the shape the model was built for.") from None
    finally:
        handle.remove()


def _expected_input(module: Optional[torch.nn.Module]) -> str:
    for attribute in ("in_features", "in_channels", "normalized_shape", "num_features"):
        if module is not None and hasattr(module, attribute):
            return f", expects {attribute}={getattr(module, attribute)}"
    return ""


def move(tensor: torch.Tensor, on_device: Device) -> torch.Tensor:
    """Return ``tensor`` on ``on_device`` (unchanged if that is None)."""
    return tensor.to(on_device) if on_device else tensor


def input_grad(data: torch.Tensor) -> torch.Tensor:
    """Return ``data.grad``, the relevance that reached the input; a RuntimeError if none did."""
    if data.grad is None:
        raise RuntimeError("no relevance reached the input (data.grad is None): the model's output does not depend "
                           "on data, or the backward pass was stopped before it.")
    return data.grad


def collect(recording: Recording, names: Sequence[str], on_device: Device, n_rows: Optional[int] = None):
    """Activations and relevances of the recorded layers that ran (zeros where no relevance arrived)."""
    activations, relevances = {}, {}
    for name in names:
        if name not in recording.activations:
            continue
        activation = recording.activations[name][:n_rows]
        relevance = recording.relevances.get(name)
        relevance = torch.zeros_like(activation) if relevance is None else relevance[:n_rows].detach()
        activations[name], relevances[name] = move(activation, on_device), move(relevance, on_device)
    return activations, relevances
