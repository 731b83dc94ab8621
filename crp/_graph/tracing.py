"""The model graph: which of the recorded layers feed which.

CRP decomposes a concept of one layer into the concepts of the layers that feed it (the concept-composition
graphs of Achtibat et al., "From attribution maps to human-understandable explanations through Concept
Relevance Propagation", Nature Machine Intelligence 5, 2023). :func:`trace_model_graph` finds, for every
layer in a list, the listed layers nearest to its input along every path, through any number of unlisted
modules and functional operations (``F.relu``, ``torch.cat``, ``+``, views, indexing).

Two tracers produce the same kind of graph:

``"fx"``
    :mod:`torch.fx` symbolic tracing, with the listed layers kept as leaves. It needs no forward pass and
    sees every call of the ``forward`` code, but it cannot trace data-dependent control flow (``if
    x.sum() > 0``), Python calls on tensor values or modules that are not symbolically traceable.
``"autograd"``
    One forward pass of the sample with hooks on the listed layers; the links between their outputs are read
    from the autograd graph (``grad_fn.next_functions``). It works for any model that autograd can
    differentiate, but it only sees the branches the sample actually takes.

``method="auto"`` (the default) uses torch.fx and falls back to the autograd graph when tracing fails or does
not reach every listed layer; :attr:`ModelGraph.method` says which path was taken and
:attr:`ModelGraph.fallback_reason` why.
"""

import difflib
import logging
from dataclasses import dataclass
from typing import Any, Dict, Hashable, Iterable, Iterator, List, Optional, Sequence, Tuple

import torch
from torch import fx

from crp._utils.checks import check_choice, check_type
from crp._utils.modules import check_layer_names, preserved_tensors
from crp._utils.text import one_line

__all__ = ["TRACE_METHODS", "GraphNode", "ModelGraph", "trace_model_graph", "dump_pytorch_graph"]

logger = logging.getLogger(__name__)

#: Values accepted by the ``method`` argument of :func:`trace_model_graph`.
TRACE_METHODS = ("auto", "fx", "autograd")

_INPUT_LABEL = "(model input)"


@dataclass(frozen=True)
class _Trace:
    """A traced data-flow graph reduced to what the layer search needs.

    ``parents`` maps every node to the nodes whose values it consumes, ``outputs`` maps the node that carries
    a listed layer's output to the layer's name, ``inputs`` maps every listed layer to the nodes that carry its
    inputs (over all its calls), and ``order`` lists the layers in the order of their first call.
    """

    parents: Dict[Hashable, Tuple[Hashable, ...]]
    outputs: Dict[Hashable, str]
    inputs: Dict[str, Tuple[Hashable, ...]]
    order: Tuple[str, ...]


@dataclass(frozen=True)
class GraphNode:
    """One listed layer of a :class:`ModelGraph` and its neighbours among the listed layers.

    zennit-crp 0.6 had a node per operation of a torch.jit graph; here every node is a layer
    (``is_layer`` is always True), and its neighbours are the nearest listed layers along every path.

    Attributes
    ----------
    layer_name : str
        The layer's name in ``model.named_modules()``.
    input_layers : tuple of str
        The listed layers that feed it (:meth:`ModelGraph.find_input_layers`).
    output_layers : tuple of str
        The listed layers it feeds.
    """

    layer_name: str
    input_layers: Tuple[str, ...]
    output_layers: Tuple[str, ...]
    is_layer: bool = True


class _LayersNotTraced(Exception):
    """Raised by a tracer when some listed layers never appear in the traced graph."""

    def __init__(self, missing: Sequence[str]) -> None:
        super().__init__(f"layers {list(missing)} are not called in the traced graph")
        self.missing = list(missing)


class ModelGraph:
    """Which of the traced layers feed which, built by :func:`trace_model_graph`.

    Parameters
    ----------
    trace : _Trace
        The reduced data-flow graph produced by one of the tracers.
    method : {"fx", "autograd"}
        The tracer that produced ``trace``.
    fallback_reason : str, optional
        Why torch.fx was not used, when ``method`` is ``"autograd"`` after a failed attempt.

    Attributes
    ----------
    method : str
        ``"fx"`` (symbolic tracing) or ``"autograd"`` (the autograd graph of one forward pass).
    fallback_reason : str or None
        Why torch.fx was not used; ``None`` when it was, or when ``"autograd"`` was asked for.
    traced_layers : tuple of str
        All layers the graph was traced with, in the order of their first call in the forward pass.
    """

    def __init__(self, trace: _Trace, method: str, fallback_reason: Optional[str] = None) -> None:
        self._trace = trace
        self.method = method
        self.fallback_reason = fallback_reason
        self.traced_layers: Tuple[str, ...] = trace.order
        self._rank = {name: i for i, name in enumerate(trace.order)}
        self._listed = frozenset(trace.order)
        self._cache: Dict[str, Tuple[str, ...]] = {}

    @property
    def layer_names(self) -> List[str]:
        """The layers the search stops at (by default all traced layers), in forward order."""
        return [name for name in self.traced_layers if name in self._listed]

    @layer_names.setter
    def layer_names(self, layer_names: Sequence[str]) -> None:
        self.set_layer_names(layer_names)

    def set_layer_names(self, layer_names: Sequence[str]) -> None:
        """Restrict the layers the search stops at to a subset of ``traced_layers``.

        Parameters
        ----------
        layer_names : sequence of str
            Names among ``traced_layers``; unlisted layers are passed through like any other operation.
        """
        names = _as_name_list(layer_names, "layer_names")
        for name in names:
            self._check_traced(name, "layer_names")
        self._listed = frozenset(names)
        self._cache.clear()

    def find_input_layers(self, layer_name: str) -> List[str]:
        """Return the listed layers nearest to the input of ``layer_name`` along every path.

        Parameters
        ----------
        layer_name : str
            One of ``traced_layers``.

        Returns
        -------
        list of str
            Layers among :attr:`layer_names` in forward order; empty when only the model input (or constants)
            feed ``layer_name``.
        """
        self._check_traced(layer_name, "layer_name")
        if layer_name not in self._cache:
            self._cache[layer_name] = self._search(layer_name)
        return list(self._cache[layer_name])

    def _search(self, layer_name: str) -> Tuple[str, ...]:
        stack, seen, found = list(self._trace.inputs[layer_name]), set(), set()
        while stack:
            node = stack.pop()
            if node in seen:
                continue
            seen.add(node)
            layer = self._trace.outputs.get(node)
            if layer in self._listed:
                found.add(layer)
            else:
                stack.extend(self._trace.parents.get(node, ()))
        return tuple(sorted(found, key=self._rank.__getitem__))

    def _check_traced(self, layer_name: str, argument: str) -> None:
        if isinstance(layer_name, str) and layer_name in self._rank:
            return
        close = difflib.get_close_matches(str(layer_name), self.traced_layers, n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise KeyError(
            f"{argument}: layer {layer_name!r} is not in the model graph.{hint} The graph knows the layers passed "
            f"to trace_model_graph ({len(self.traced_layers)} layers); trace again with it in layer_names."
        )

    @property
    def layer_node_map(self) -> Dict[str, GraphNode]:
        """``{layer_name: GraphNode}`` of every listed layer (zennit-crp's attribute of the same name)."""
        inputs = {name: tuple(self.find_input_layers(name)) for name in self.layer_names}
        outputs: Dict[str, List[str]] = {name: [] for name in self.layer_names}
        for name, feeding in inputs.items():
            for source in feeding:
                outputs[source].append(name)
        return {name: GraphNode(name, inputs[name], tuple(outputs[name])) for name in self.layer_names}

    def __str__(self) -> str:
        how = "torch.fx symbolic tracing" if self.method == "fx" else "the autograd graph of one forward pass"
        lines = [f"ModelGraph of {len(self.layer_names)} layers, traced with {how}"]
        if self.fallback_reason:
            lines[0] += f" (torch.fx failed: {self.fallback_reason})"
        width = max((len(name) for name in self.layer_names), default=0)
        for name in self.layer_names:
            inputs = self.find_input_layers(name)
            lines.append(f"  {name:<{width}} <- {', '.join(inputs) if inputs else _INPUT_LABEL}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"ModelGraph(method={self.method!r}, layers={len(self.layer_names)})"


def dump_pytorch_graph(graph: ModelGraph) -> str:
    """Return a table of every listed layer of ``graph`` and the layers that feed it.

    zennit-crp 0.6 printed the operations of a torch.jit graph; this library traces with torch.fx and prints
    nothing: the table is returned, e.g. for ``print(dump_pytorch_graph(graph))``.

    Parameters
    ----------
    graph : ModelGraph
        A graph from :func:`trace_model_graph`.

    Returns
    -------
    str
        One line per layer, ``name <- input layers``.
    """
    if not isinstance(graph, ModelGraph):
        raise TypeError(f"graph must be a ModelGraph from trace_model_graph, got {type(graph).__name__}.")
    return str(graph)


def trace_model_graph(
    model: torch.nn.Module, sample: torch.Tensor, layer_names: Sequence[str], debug: bool = False,
    method: str = "auto",
) -> ModelGraph:
    """Trace which of ``layer_names`` feed which in ``model``.

    Parameters
    ----------
    model : torch.nn.Module
        The model; it is not changed (hooks, ``requires_grad`` flags and buffers are restored).
    sample : torch.Tensor
        An input batch the model accepts, e.g. one sample of shape ``(1, C, H, W)``. Only the autograd tracer
        runs it; torch.fx needs no data.
    layer_names : sequence of str
        Names from ``model.named_modules()`` (e.g. ``crp.helper.get_layer_names(model, [nn.Conv2d,
        nn.Linear])``). A listed module and one of its sub-modules cannot both be listed.
    debug : bool
        Log the traced graph (``str(graph)``) at level INFO on the logger ``crp.graph``.
    method : {"auto", "fx", "autograd"}
        ``"fx"`` or ``"autograd"`` force a tracer; ``"auto"`` tries torch.fx and falls back to the autograd
        graph of one forward pass (logging why at level DEBUG).

    Returns
    -------
    ModelGraph
        Use :meth:`ModelGraph.find_input_layers`; ``ModelGraph.method`` says which tracer was used.

    Raises
    ------
    KeyError
        A name in ``layer_names`` is not a module of ``model``.
    ValueError
        ``layer_names`` is empty or nests modules, a layer is not called by the forward pass, or ``method``
        is unknown.
    RuntimeError
        ``method="fx"`` and torch.fx cannot trace the model.
    """
    names = _check_layer_names(model, layer_names)
    check_choice(method, TRACE_METHODS, name="method")
    check_type(sample, torch.Tensor, name="sample", expected="a torch.Tensor batch the model accepts")
    graph = _trace_with(model, sample, names, method)
    if debug:
        logger.info("%s", graph)
    return graph


def _trace_with(model: torch.nn.Module, data: torch.Tensor, names: Tuple[str, ...], method: str) -> ModelGraph:
    reason = None
    if method in ("auto", "fx"):
        try:
            return ModelGraph(_trace_fx(model, names), "fx")
        except _LayersNotTraced as error:
            if method == "fx":
                raise ValueError(
                    f"layer_names: {error.missing} are never called in the forward code traced by torch.fx "
                    f"(unused modules, or called inside a module torch.fx keeps as a leaf); remove them, or use "
                    f"method='autograd'."
                ) from None
            reason = f"layers {error.missing} do not appear in the torch.fx graph"
        except Exception as error:  # torch.fx raises many kinds (TraceError, TypeError, RuntimeError, ...)
            reason = f"{type(error).__name__}: {one_line(error, limit=200)}"
            if method == "fx":
                raise RuntimeError(
                    f"torch.fx cannot trace the model ({reason}); use method='autograd' or method='auto'."
                ) from error
        logger.debug("torch.fx tracing not used (%s); reading the autograd graph of one forward pass", reason)
    try:
        trace = _trace_autograd(model, data, names)
    except _LayersNotTraced as error:
        raise ValueError(
            f"layer_names: {error.missing} are not called in the forward pass of the sample (unused modules or "
            f"branches this sample does not take); remove them from layer_names or pass a sample that reaches them."
        ) from None
    return ModelGraph(trace, "autograd", reason)


def _as_name_list(layer_names: Any, argument: str) -> List[str]:
    if isinstance(layer_names, str):
        raise TypeError(f"{argument} must be a list of layer names, got the string {layer_names!r}; "
                        f"wrap it in a list: [{layer_names!r}].")
    try:
        names = list(layer_names)
    except TypeError:
        raise TypeError(f"{argument} must be a list of layer names, got {type(layer_names).__name__}.") from None
    bad = [name for name in names if not isinstance(name, str)]
    if bad:
        raise TypeError(f"{argument} must contain strings (module names), got {bad!r}.")
    return list(dict.fromkeys(names))


def _check_layer_names(model: torch.nn.Module, layer_names: Sequence[str]) -> Tuple[str, ...]:
    names = _as_name_list(layer_names, "layer_names")
    if not names:
        raise ValueError("layer_names is empty; pass the layers to connect, e.g. "
                         "crp.helper.get_layer_names(model, [torch.nn.Conv2d, torch.nn.Linear]).")
    check_layer_names(model, names, "layer_names")
    listed = set(names)
    for name in names:
        parts = name.split(".")
        parents = [".".join(parts[:i]) for i in range(1, len(parts)) if ".".join(parts[:i]) in listed]
        if parents:
            raise ValueError(f"layer_names lists both {parents[-1]!r} and its sub-module {name!r}; list either "
                             f"the container or its parts.")
    return tuple(names)


class _LeafTracer(fx.Tracer):
    """A torch.fx tracer that keeps the listed layers as leaves and traces into modules containing them."""

    def __init__(self, leaves: Iterable[str]) -> None:
        super().__init__()
        self._leaves = frozenset(leaves)
        self._ancestors = frozenset(
            ".".join(name.split(".")[:i]) for name in self._leaves for i in range(1, name.count(".") + 1))

    def is_leaf_module(self, m: torch.nn.Module, module_qualified_name: str) -> bool:
        if module_qualified_name in self._leaves:
            return True
        if module_qualified_name in self._ancestors:
            return False
        return super().is_leaf_module(m, module_qualified_name)


def _trace_fx(model: torch.nn.Module, names: Tuple[str, ...]) -> _Trace:
    graph = _LeafTracer(names).trace(model)
    listed = set(names)
    parents: Dict[Hashable, Tuple[Hashable, ...]] = {}
    outputs: Dict[Hashable, str] = {}
    inputs: Dict[str, List[Hashable]] = {}
    for node in graph.nodes:
        parents[node.name] = tuple(arg.name for arg in node.all_input_nodes)
        if node.op == "call_module" and node.target in listed:
            outputs[node.name] = node.target
            inputs.setdefault(node.target, []).extend(parents[node.name])
    return _finish_trace(parents, outputs, inputs, names)


def _finish_trace(parents: dict, outputs: dict, inputs: dict, names: Sequence[str]) -> _Trace:
    missing = [name for name in names if name not in inputs]
    if missing:
        raise _LayersNotTraced(missing)
    return _Trace(parents, outputs, {name: tuple(nodes) for name, nodes in inputs.items()}, tuple(inputs))


def _tensors(value: Any) -> Iterator[torch.Tensor]:
    """Yield the tensors in a (nested) tuple, list or dict."""
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (tuple, list)):
        for item in value:
            yield from _tensors(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _tensors(item)


class _AutogradRecorder:
    """Forward hooks that note the autograd nodes feeding each listed layer and tag each output.

    Every tensor output of a listed layer is replaced by a clone, so its ``CloneBackward`` node marks that
    layer's output uniquely (even when the layer returns its input, as ``nn.Identity`` does, or when a later
    operation changes the tensor in place).
    """

    def __init__(self) -> None:
        self.inputs: Dict[str, list] = {}
        self.tags: Dict[int, Tuple[Any, str]] = {}

    def pre_hook(self, name: str, _module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        nodes = self.inputs.setdefault(name, [])
        nodes.extend(t.grad_fn for t in _tensors((args, kwargs)) if t.grad_fn is not None)

    def post_hook(self, name: str, _module: torch.nn.Module, _args: tuple, _kwargs: dict, output: Any) -> Any:
        return self._tag(output, name)

    def _tag(self, value: Any, name: str) -> Any:
        if isinstance(value, torch.Tensor):
            if not value.requires_grad:
                return value
            tagged = value.clone()
            self.tags[id(tagged.grad_fn)] = (tagged.grad_fn, name)
            return tagged
        if isinstance(value, list):
            return [self._tag(item, name) for item in value]
        if type(value) is tuple:
            return tuple(self._tag(item, name) for item in value)
        if isinstance(value, tuple) and hasattr(value, "_fields"):
            return type(value)(*(self._tag(item, name) for item in value))
        if type(value) is dict:
            return {key: self._tag(item, name) for key, item in value.items()}
        return value


def _trace_autograd(model: torch.nn.Module, data: torch.Tensor, names: Tuple[str, ...]) -> _Trace:
    recorder, modules = _AutogradRecorder(), dict(model.named_modules())
    with preserved_tensors(model, buffer_values=True, requires_grad=True):
        handles = []
        try:
            for name in names:
                handles.append(modules[name].register_forward_pre_hook(
                    _bind(recorder.pre_hook, name), with_kwargs=True))
                handles.append(modules[name].register_forward_hook(_bind(recorder.post_hook, name), with_kwargs=True))
            leaf = data.detach().clone()
            if leaf.is_floating_point() or leaf.is_complex():
                leaf.requires_grad_(True)
            with torch.enable_grad():
                output = model(leaf)
        finally:
            for handle in handles:
                handle.remove()
        return _reduce_autograd(recorder, output, names)


def _bind(hook, name: str):
    def bound(*args):
        return hook(name, *args)
    return bound


def _reduce_autograd(recorder: _AutogradRecorder, output: Any, names: Sequence[str]) -> _Trace:
    """Walk the autograd graph once and turn it into a :class:`_Trace` with integer node ids."""
    ids: Dict[int, int] = {}
    keep: List[Any] = []  # holds every visited node so that no id() is reused during the walk
    parents: Dict[int, Tuple[int, ...]] = {}

    def index(node: Any) -> int:
        key = id(node)
        if key not in ids:
            ids[key] = len(keep)
            keep.append(node)
            stack.append(node)
        return ids[key]

    stack: List[Any] = []
    roots = [t.grad_fn for t in _tensors(output) if t.grad_fn is not None]
    roots += [node for node, _ in recorder.tags.values()]
    roots += [node for nodes in recorder.inputs.values() for node in nodes]
    for node in roots:
        index(node)
    while stack:
        node = stack.pop()
        parents[ids[id(node)]] = tuple(index(fn) for fn, _ in node.next_functions if fn is not None)
    outputs = {ids[key]: name for key, (_, name) in recorder.tags.items()}
    inputs = {name: [ids[id(node)] for node in recorder.inputs[name]] for name in recorder.inputs}
    return _finish_trace(parents, outputs, inputs, names)
