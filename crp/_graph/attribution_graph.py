"""Concept composition graphs: decompose a concept into the lower-level concepts whose relevance feeds it.

Following Achtibat et al., "From attribution maps to human-understandable explanations through Concept
Relevance Propagation" (Nature Machine Intelligence 5, 2023, Sec. "Concept composition"), the relevance of a
concept of one layer is conditioned on that concept (and optionally on a target class or a parent concept)
and read at the layers that feed it (found by :class:`crp.graph.ModelGraph`); the lower concepts with the
largest relevance share become its children, and they are decomposed in turn, one level per entry of
``width``.

:class:`AttributionGraph` is re-exported by :mod:`crp.attribution`; this module does not import it at load
time.
"""
from collections import namedtuple
from typing import TYPE_CHECKING, Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import torch

from crp._graph.tracing import ModelGraph
from crp._utils.checks import check_int, check_kind, check_positive_int
from crp._utils.progress import tqdm

if TYPE_CHECKING:  # pragma: no cover
    from zennit.core import Composite

    from crp._attribution.concepts import Concept
    from crp._attribution.engine import CondAttribution

__all__ = ["AttributionGraph", "attrGraphResult", "Node", "Edge"]

#: A node of the graph: ``(layer_name, concept_id)``.
Node = Tuple[str, int]
#: An edge to a lower concept: ``(lower_layer_name, concept_id, relevance_share)``.
Edge = Tuple[str, int, float]

attrGraphResult = namedtuple("attrGraphResult", ("nodes", "connections"))
attrGraphResult.__doc__ = """Result of :class:`AttributionGraph`.

nodes : list of (str, int)
    Every concept in the graph as ``(layer_name, concept_id)``, each once, the decomposed concept first and
    then in the order they were found (level by level).
connections : dict of (str, int) to list of (str, int, float)
    For every decomposed concept, its most relevant lower concepts as ``(layer_name, concept_id, share)``, per
    input layer in forward order and by decreasing share; ``share`` is the lower concept's relevance in the
    conditioned backward pass, divided by the sum of absolute relevances of its layer when ``abs_norm``.
"""


class AttributionGraph:
    """Decompose a concept into the lower-level concepts that feed it, level by level.

    Parameters
    ----------
    attribution : crp.attribution.CondAttribution
        Computes the conditioned relevances (its :meth:`~crp.attribution.CondAttribution.generate`).
    graph : crp.graph.ModelGraph
        Which layers feed which, from :func:`crp.graph.trace_model_graph`.
    layer_map : dict of str to crp.concepts.Concept
        The concept type of every layer that may appear in the graph, e.g. ``{name: ChannelConcept() for name
        in layer_names}``.

    Notes
    -----
    The shares equal those of zennit-crp 0.6. Unlike it, ``nodes`` lists every concept once, and a concept
    reached from several parents is decomposed once (zennit-crp repeats the concept, its decomposition and
    its edges); lower layers are listed in forward order.

    Examples
    --------
    >>> graph = trace_model_graph(model, sample, layer_names)
    >>> attgraph = AttributionGraph(CondAttribution(model), graph, {n: ChannelConcept() for n in layer_names})
    >>> nodes, connections = attgraph(sample.requires_grad_(), composite, 3, "features.28", target=1)
    """

    def __init__(self, attribution: "CondAttribution", graph: ModelGraph, layer_map: Mapping[str, "Concept"]) -> None:
        if not isinstance(graph, ModelGraph):
            raise TypeError(f"graph must be a crp.graph.ModelGraph (from trace_model_graph), got "
                            f"{type(graph).__name__}.")
        self.attribution = attribution
        self.graph = graph
        self.set_layer_map(layer_map)

    def set_layer_map(self, layer_map: Mapping[str, "Concept"]) -> None:
        """Set the concept type of each layer (and the mask functions derived from it).

        Parameters
        ----------
        layer_map : dict of str to crp.concepts.Concept
            Layer name to concept; every concept needs ``mask`` and ``attribute``.
        """
        if not isinstance(layer_map, Mapping):
            raise TypeError(f"layer_map must be a dict of layer name -> Concept, got {type(layer_map).__name__}; "
                            f"e.g. {{name: ChannelConcept() for name in layer_names}}.")
        bad = [name for name, concept in layer_map.items()
               if not (callable(getattr(concept, "mask", None)) and callable(getattr(concept, "attribute", None)))]
        if bad:
            raise TypeError(f"layer_map entries {bad} are not concepts (objects with mask and attribute methods, "
                            f"such as crp.concepts.ChannelConcept()).")
        self.layer_map: Dict[str, "Concept"] = dict(layer_map)
        self.mask_map = {name: concept.mask for name, concept in self.layer_map.items()}

    def __call__(  # noqa: PLR0917 - zennit-crp's signature, positional up to verbose
        self, sample: torch.Tensor, composite: Optional["Composite"], concept_id: int, layer_name: str,
        target: Optional[int] = None, width: Sequence[int] = (4, 2), parent_c_id: Optional[int] = None,
        parent_layer: Optional[str] = None, abs_norm: bool = True, batch_size: int = 16, verbose: bool = True,
        *, exclude_parallel: bool = False,
    ) -> attrGraphResult:
        """Decompose concept ``concept_id`` of ``layer_name`` for one sample.

        Parameters
        ----------
        sample : torch.Tensor
            One sample, shape ``(1, ...)``, with ``requires_grad=True``.
        composite : zennit.core.Composite or None
            The LRP rules; plain gradient if None.
        concept_id : int
            The concept to decompose.
        layer_name : str
            Its layer.
        target : int, optional
            Explain the relevance for this model output (class); otherwise the backward pass starts at
            ``parent_layer`` or ``layer_name`` with its activation.
        width : sequence of int
            ``width[i]`` most relevant lower concepts kept per input layer at level ``i``; ``len(width)`` levels.
        parent_c_id, parent_layer : int and str, optional
            Decompose ``concept_id`` in the context of this higher concept, which then conditions every level
            instead of ``concept_id`` itself. Give both or neither.
        abs_norm : bool
            Divide the relevances of each lower layer by their absolute sum.
        batch_size : int
            Conditions per backward pass.
        verbose : bool
            Show a progress bar over the concepts decomposed (its total grows level by level).
        exclude_parallel : bool
            Passed to ``generate``. False (as in zennit-crp 0.6) lets relevance reach a lower layer also along
            shortcuts that bypass the decomposed concept; True counts only what flows through it (and batches
            the conditions of one layer into the fast split passes of ``generate``).

        Returns
        -------
        attrGraphResult
            ``(nodes, connections)``. Each concept is decomposed once, at the first level it is reached.
        """
        widths = _check_width(width)
        self._check_call(concept_id, layer_name, parent_c_id, parent_layer)
        start_layer, context = self._context(concept_id, layer_name, target, parent_c_id, parent_layer)
        run = _Run(sample, composite, context, start_layer=start_layer, batch_size=batch_size, verbose=verbose,
                   exclude_parallel=exclude_parallel)
        root = (layer_name, int(concept_id))
        nodes, connections, done, frontier = {root: None}, {}, set(), [root]
        with tqdm(total=0, desc="AttributionGraph", unit="concept", disable=not verbose, dynamic_ncols=True) as bar:
            for w in widths:
                frontier = [node for node in frontier if node not in done and self.graph.find_input_layers(node[0])]
                if not frontier:
                    break
                done.update(frontier)
                bar.total += len(frontier)
                bar.refresh()
                found: List[Node] = []
                for node, relevances in self._relevances(run, frontier):
                    connections[node] = self._children(relevances, w, abs_norm=abs_norm)
                    found.extend((layer, concept) for layer, concept, _ in connections[node])
                    bar.update()
                nodes.update(dict.fromkeys(found))
                frontier = list(dict.fromkeys(found))
        return attrGraphResult(list(nodes), connections)

    # ------------------------------------------------------------------------------------------------------------

    def _check_call(self, concept_id, layer_name, parent_c_id, parent_layer) -> None:
        _check_concept_id(concept_id, "concept_id")
        if (parent_c_id is None) != (parent_layer is None):
            raise ValueError(f"give parent_c_id and parent_layer together (got parent_c_id={parent_c_id!r}, "
                             f"parent_layer={parent_layer!r}), or neither.")
        self.graph.find_input_layers(layer_name)  # raises a KeyError naming close layers
        layers = [layer_name]
        if parent_layer is not None:
            _check_concept_id(parent_c_id, "parent_c_id")
            layers.append(parent_layer)
        self._check_in_layer_map(layers)

    def _check_in_layer_map(self, layers: Sequence[str]) -> None:
        missing = [name for name in layers if name not in self.layer_map]
        if missing:
            raise KeyError(f"layer_map has no concept for the layers {missing}; add them, e.g. "
                           f"layer_map = {{name: ChannelConcept() for name in layer_names}}.")

    def _context(self, concept_id, layer_name, target, parent_c_id, parent_layer) -> Tuple[Optional[str], dict]:
        """Return the start layer and the condition that every level shares (the decomposed or parent concept)."""
        if parent_layer is not None:
            context = {parent_layer: [int(parent_c_id)]}
        else:
            context = {layer_name: [int(concept_id)]}
        if target is not None:
            context[self.attribution.MODEL_OUTPUT_NAME] = [target]
            return None, context
        return (parent_layer or layer_name), context

    def _relevances(self, run: "_Run", frontier: List[Node]) -> Iterator[Tuple[Node, Dict[str, torch.Tensor]]]:
        """Yield every frontier concept with the relevances of its input layers, conditioned on it."""
        groups = _group_by_layer(frontier) if run.exclude_parallel else [frontier]
        for group in groups:
            inputs = {node: self.graph.find_input_layers(node[0]) for node in group}
            record = list(dict.fromkeys(name for names in inputs.values() for name in names))
            self._check_in_layer_map(record)
            conditions = [{**{layer: [concept]}, **run.context} for layer, concept in group]
            offset = 0
            for result in self.attribution.generate(
                    run.data, conditions, run.composite, record_layer=record, mask_map=self.mask_map,
                    start_layer=run.start_layer, batch_size=run.batch_size, verbose=False,
                    exclude_parallel=run.exclude_parallel):
                for row in range(len(result.heatmap)):
                    node = group[offset + row]
                    yield node, {name: result.relevances[name][row:row + 1] for name in inputs[node]}
                offset += len(result.heatmap)

    def _children(self, relevances: Dict[str, torch.Tensor], w: int, *, abs_norm: bool) -> List[Edge]:
        edges: List[Edge] = []
        for name, relevance in relevances.items():
            shares = self.layer_map[name].attribute(relevance, abs_norm=abs_norm)[0]
            top = torch.argsort(shares, descending=True, stable=True)[:w]
            edges.extend((name, int(c), float(shares[c])) for c in top)
        return edges


class _Run:
    """The arguments of one :class:`AttributionGraph` call that every level passes to ``generate``."""

    def __init__(self, data, composite, context, *, start_layer, batch_size, verbose, exclude_parallel) -> None:
        self.data, self.composite, self.context, self.start_layer = data, composite, context, start_layer
        self.batch_size, self.verbose, self.exclude_parallel = batch_size, verbose, exclude_parallel


def _group_by_layer(nodes: Sequence[Node]) -> List[List[Node]]:
    groups: Dict[str, List[Node]] = {}
    for node in nodes:
        groups.setdefault(node[0], []).append(node)
    return list(groups.values())


def _check_concept_id(value: Any, argument: str) -> None:
    check_int(value, name=argument, minimum=0, fix="Pass the index of a channel of the layer.")


def _check_width(width: Any) -> Tuple[int, ...]:
    expected = "a list of positive ints, one per level (e.g. width=[4, 2])"
    check_kind(isinstance(width, Sequence) and not isinstance(width, (str, bytes)), width, name="width",
               expected=expected)
    fix = f"Each entry is the number of concepts kept per layer at its level; got width={list(width)!r}."
    return tuple(check_positive_int(w, name=f"width[{level}]", fix=fix) for level, w in enumerate(width))
