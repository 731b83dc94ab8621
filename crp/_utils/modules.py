"""Model lookups and scoped model state: layer names and their checks, output shapes, preserved tensors."""
import contextlib
import difflib
from typing import Dict, Iterable, Iterator, List, Sequence, Type

import torch

__all__ = ["get_layer_names", "get_output_shapes", "check_layer_names", "preserved_tensors"]


def get_layer_names(model: torch.nn.Module, types: Sequence[Type[torch.nn.Module]]) -> List[str]:
    """Return the names of all sub-modules of ``model`` that are instances of one of ``types``, in model order.

    Parameters
    ----------
    model : torch.nn.Module
        The model to search.
    types : sequence of type
        Module classes, e.g. ``[torch.nn.Conv2d, torch.nn.Linear]``.

    Returns
    -------
    list of str
        Names as in ``model.named_modules()``.
    """
    types = tuple(types)
    bad = [t for t in types if not (isinstance(t, type) and issubclass(t, torch.nn.Module))]
    if bad:
        raise TypeError(f"types must be torch.nn.Module subclasses, got {bad}; e.g. pass [torch.nn.Conv2d].")
    return [name for name, module in model.named_modules() if isinstance(module, types)]


def get_output_shapes(
    model: torch.nn.Module, single_sample: torch.Tensor, record_layers: Iterable[str]
) -> Dict[str, torch.Size]:
    """Return the output shape (without batch axis) of each layer in ``record_layers`` for one forward pass.

    Parameters
    ----------
    model : torch.nn.Module
        The model.
    single_sample : torch.Tensor
        A batch (usually of one sample) the model accepts.
    record_layers : iterable of str
        Layer names.

    Returns
    -------
    dict
        ``{layer_name: torch.Size}``; layers the forward pass does not reach are missing.
    """
    names = list(record_layers)
    modules = check_layer_names(model, names, "record_layers")
    shapes: Dict[str, torch.Size] = {}
    handles = []
    try:
        for name in names:
            def hook(_module, _inputs, output, name=name):
                shapes[name] = output.shape[1:]
            handles.append(modules[name].register_forward_hook(hook))
        with torch.no_grad():
            model(single_sample)
    finally:
        for handle in handles:
            handle.remove()
    return shapes


def check_layer_names(model: torch.nn.Module, names: Sequence[str], argument: str) -> Dict[str, torch.nn.Module]:
    """Return ``{name: module}`` for ``names``; raise a KeyError naming the closest existing layers otherwise."""
    modules = dict(model.named_modules())
    for name in names:
        if name not in modules:
            close = difflib.get_close_matches(str(name), [m for m in modules if m], n=3, cutoff=0.5)
            hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise KeyError(
                f"{argument}: layer {name!r} is not a module of the model.{hint} "
                f"Use names from model.named_modules()."
            )
    return {name: modules[name] for name in names}


@contextlib.contextmanager
def preserved_tensors(
    model: torch.nn.Module, *, buffer_values: bool = False, requires_grad: bool = False
) -> Iterator[None]:
    """Restore every module's parameter and buffer objects on exit, and drop attributes that shadow them.

    Canonizers and rules swap parameters for the duration of a pass; zennit 1.0 does so with
    ``load_state_dict(assign=True)`` and instance attributes that can outlive the composite (its
    ``MergeBatchNorm`` then leaves merged weights in ``state_dict()``). This guard puts back the very objects
    the model held before, whatever happened inside. Tensor data edited in place is not restored unless
    ``buffer_values`` asks for it.

    Parameters
    ----------
    model : torch.nn.Module
        The model whose tensors are restored.
    buffer_values : bool, default False
        Also restore the values of the buffers, e.g. the BatchNorm statistics a forward pass in training mode
        updates.
    requires_grad : bool, default False
        Let every floating-point parameter require grad inside the context, and restore the flags on exit.

    Yields
    ------
    None
        Inside the context, the model as it was (with gradients required if ``requires_grad``).
    """
    saved = []
    for module in model.modules():
        shadows = {k: module.__dict__[k] for k in (*module._parameters, *module._buffers) if k in module.__dict__}
        saved.append((module, dict(module._parameters), dict(module._buffers), shadows))
    flags = [(param, param.requires_grad) for param in model.parameters()]
    values = [(buffer, buffer.detach().clone()) for buffer in model.buffers()] if buffer_values else []
    try:
        if requires_grad:
            for param, _ in flags:
                if param.is_floating_point() or param.is_complex():
                    param.requires_grad_(True)
        yield
    finally:
        for module, parameters, buffers, shadows in saved:
            for name in (*parameters, *buffers):
                if name in module.__dict__ and name not in shadows:
                    del module.__dict__[name]
            module.__dict__.update(shadows)
            module._parameters.clear()
            module._parameters.update(parameters)
            module._buffers.clear()
            module._buffers.update(buffers)
        with torch.no_grad():
            for buffer, value in values:
                buffer.copy_(value)
        if requires_grad:
            for param, flag in flags:
                param.requires_grad_(flag)
