"""The NetworkX analysis view of the IR: dependency graph, topological order, cycles.

The IR is an :class:`onnx_ir.Model`; NetworkX is only a *view* of its main graph, rebuilt on demand
by :func:`to_networkx` and never written back (DESIGN.md, "Data flow"). Passes change the
``onnx_ir`` model; analyses (liveness, partitions, pattern search) read this view.

View layout (:func:`to_networkx`):

- one NetworkX node per ``ir.Node`` of the main graph, keyed by the node name (unique and non-empty
  in the IR), with attributes ``node`` (the ``ir.Node``), ``op_type`` (str) and ``index`` (int, the
  node's position in the graph's own order);
- one edge ``producer -> consumer`` per tensor the consumer reads, keyed by the tensor name, with
  attribute ``value`` (the ``ir.Value``). A tensor read by two consumers gives two edges; a tensor
  read twice by one consumer (``Mul(x, x)``) gives one edge. Graph inputs and initializers have no
  producer, so they give no edge.
- Values that a control-flow node's subgraph (``If``/``Loop``/``Scan`` bodies) reads from the main
  graph count as inputs of that node (:func:`consumed_values`), so the order respects them. Nodes
  *inside* subgraphs are not part of the view.
"""

from __future__ import annotations

import networkx as nx
import onnx_ir as ir

from edgecomp.errors import ModelError

__all__ = ["consumed_values", "find_cycle", "to_networkx", "topological_order"]


def consumed_values(node: ir.Node) -> list[ir.Value]:
    """Return the values of ``node``'s graph that the node reads, each once, in input order.

    These are the node's non-omitted inputs, followed by the values of the node's own graph that its
    subgraph attributes (``If`` branches, ``Loop``/``Scan`` bodies, at any depth) capture from
    the enclosing scope. Omitted optional inputs (``None``) are skipped.

    Args:
        node: a node of an ``ir.Graph``.

    Returns:
        list of ``ir.Value``, without duplicates, inputs first in ``node.inputs`` order.
    """
    seen: set[int] = set()
    values: list[ir.Value] = []
    for value in node.inputs:
        if value is not None and id(value) not in seen:
            seen.add(id(value))
            values.append(value)
    subgraphs = _subgraphs(node)
    if subgraphs:
        outer = node.graph
        for subgraph in subgraphs:
            for inner in ir.traversal.RecursiveGraphIterator(subgraph):
                for value in inner.inputs:
                    if value is not None and value.graph is outer and id(value) not in seen:
                        seen.add(id(value))
                        values.append(value)
    return values


def _subgraphs(node: ir.Node) -> list[ir.Graph]:
    graphs: list[ir.Graph] = []
    for attribute in node.attributes.values():
        if attribute.type == ir.AttributeType.GRAPH:
            graphs.append(attribute.value)
        elif attribute.type == ir.AttributeType.GRAPHS:
            graphs.extend(attribute.value)
    return graphs


def to_networkx(model: ir.Model) -> nx.MultiDiGraph:
    """Build the NetworkX dependency view of the model's main graph.

    Args:
        model: the IR; node names must be unique and non-empty (the loader guarantees this).

    Returns:
        ``nx.MultiDiGraph`` whose nodes are node names (attributes ``node``: ``ir.Node``,
        ``op_type``: str, ``index``: int position in ``model.graph``) and whose edges go
        producer -> consumer, keyed by tensor name, with attribute ``value``: ``ir.Value``.
        Nodes are inserted in the graph's own order. The graph attribute ``name`` is the ONNX
        graph name.

    Raises:
        ModelError: a node has an empty name or shares its name with another node.
    """
    graph = model.graph
    view = nx.MultiDiGraph(name=graph.name)
    for index, node in enumerate(graph):
        name = node.name
        if not name:
            raise ModelError(
                f"node #{index} ({node.op_type}) of graph {graph.name!r} has no name; "
                "the analysis view needs unique node names"
            )
        if name in view:
            raise ModelError(f"node name {name!r} is used twice in graph {graph.name!r}")
        view.add_node(name, node=node, op_type=node.op_type, index=index)
    for node in graph:
        for value in consumed_values(node):
            producer = value.producer()
            if producer is not None and producer.graph is graph:
                view.add_edge(producer.name, node.name, key=value.name, value=value)
    return view


def find_cycle(model: ir.Model) -> list[str] | None:
    """Return the names of the nodes on one dependency cycle of the main graph, or None if acyclic.

    Args:
        model: the IR.

    Returns:
        ``[n0, n1, ..., nk]`` where each node consumes an output of the one before it and ``n0``
        consumes an output of ``nk`` (a self-loop gives ``[n0]``); ``None`` when there is no cycle.
        The same model gives the same cycle (the search follows the graph's own node order).

    Raises:
        ModelError: as :func:`to_networkx`.
    """
    return _find_cycle(to_networkx(model))


def _find_cycle(view: nx.MultiDiGraph) -> list[str] | None:
    try:
        edges = nx.find_cycle(view)
    except nx.NetworkXNoCycle:
        return None
    return [edge[0] for edge in edges]


def topological_order(model: ir.Model) -> list[ir.Node]:
    """Return the nodes of the main graph in a deterministic topological (execution) order.

    Every node comes after the producers of all the values it consumes (:func:`consumed_values`).
    Among the nodes that are ready at once, the one that comes first in the graph's own order is
    taken (Kahn's algorithm with a lexicographic tie-break, ``nx.lexicographical_topological_sort``
    keyed on the node's index), so a graph that is already sorted keeps its order and the same model
    always gives the same list.

    Args:
        model: the IR.

    Returns:
        list of every ``ir.Node`` of ``model.graph``, each once.

    Raises:
        ModelError: the graph has a dependency cycle; the message names the nodes on one cycle.
            Also as :func:`to_networkx`.
    """
    view = to_networkx(model)
    try:
        names = list(nx.lexicographical_topological_sort(view, key=lambda name: view.nodes[name]["index"]))
    except nx.NetworkXUnfeasible:
        cycle = _find_cycle(view) or []
        path = " -> ".join(repr(name) for name in [*cycle, *cycle[:1]])
        raise ModelError(
            f"graph {model.graph.name!r} has a dependency cycle through node {cycle[0]!r}: {path}"
            if cycle
            else f"graph {model.graph.name!r} has a dependency cycle"
        ) from None
    return [view.nodes[name]["node"] for name in names]
