"""Helpers shared by the canonicalization passes (one place, no copies in the pass modules).

Most of the graph surgery is onnx-ir's own: ``ir.convenience.get_const_tensor`` reads initializers
and ``Constant`` nodes, ``ir.convenience.replace_nodes_and_values`` swaps nodes and rewires their
users (graph outputs included). This module only adds the edgecomp policies on top of them:

- what counts as a constant (an initializer that is also a graph input is an overridable default
  in IR version >= 4, so it is *not* a constant here);
- the single-consumer check that every fusion needs;
- deterministic, collision-free names for new initializers.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import onnx_ir as ir

from edgecomp.ir.values import constant_array

__all__ = [
    "constant_array",
    "fuse_nodes",
    "make_initializer",
    "replace_with_initializers",
    "sole_consumer",
]


def sole_consumer(value: ir.Value) -> ir.Node | None:
    """Returns the one node that reads ``value``, or None.

    None when the value is a graph output, has no user, or is read more than once (by two nodes,
    or twice by the same node), i.e. whenever removing its producer would change something else.
    """
    if value.is_graph_output():
        return None
    uses = value.uses()
    if len(uses) != 1:
        return None
    return uses[0].node


def make_initializer(graph: ir.Graph, name: str, array: np.ndarray) -> ir.Value:
    """Registers ``array`` as a new initializer of ``graph`` and returns its value.

    The name is ``name`` when no initializer, graph input or node output already uses it, else
    ``name_1``, ``name_2``, ... (deterministic: no time or random component).

    Args:
        graph: the graph that receives the initializer.
        name: the preferred name.
        array: the data; its numpy dtype gives the ONNX dtype.
    """
    taken = set(graph.initializers)
    taken.update(value.name for value in graph.inputs)
    taken.update(value.name for node in graph for value in node.outputs)
    unique = name
    suffix = 0
    while unique in taken:
        suffix += 1
        unique = f"{name}_{suffix}"
    tensor = ir.tensor(np.ascontiguousarray(array), name=unique)
    value = ir.Value(
        name=unique, shape=ir.Shape(array.shape), type=ir.TensorType(tensor.dtype), const_value=tensor
    )
    graph.register_initializer(value)
    return value


def fuse_nodes(graph: ir.Graph, old_nodes: Sequence[ir.Node], new_node: ir.Node) -> None:
    """Replaces the chain ``old_nodes`` (producer first) by the single-output ``new_node``.

    ``new_node`` takes over the last old node's first output: its users, and its place, name,
    type and shape when it is a graph output (``ir.convenience.replace_nodes_and_values``).
    The caller has checked that no other output of the old nodes is used.
    """
    last = old_nodes[-1]
    ir.convenience.replace_nodes_and_values(
        graph,
        last,
        old_nodes=list(old_nodes),
        new_nodes=[new_node],
        old_values=[last.outputs[0]],
        new_values=[new_node.outputs[0]],
    )


def replace_with_initializers(graph: ir.Graph, node: ir.Node, arrays: Sequence[np.ndarray]) -> None:
    """Replaces each used output of ``node`` by an initializer holding its computed data.

    Each initializer takes the output's name (the node is removed, so the name is free again); its
    shape and dtype are the array's. Unused outputs are dropped with the node. The caller has
    checked that no output is a graph output.

    Args:
        graph: the graph that holds ``node``.
        node: the node computed ahead of time.
        arrays: one array per output of ``node``, in order (anything for an unused output).
    """
    initializers = []
    for output, array in zip(node.outputs, arrays):
        if not output.uses():
            continue
        tensor = ir.tensor(array, name=output.name)
        initializer = ir.Value(
            name=output.name, shape=ir.Shape(array.shape), type=ir.TensorType(tensor.dtype), const_value=tensor
        )
        output.replace_all_uses_with(initializer)
        initializers.append(initializer)
    graph.remove(node, safe=True)
    for initializer in initializers:
        graph.register_initializer(initializer)
