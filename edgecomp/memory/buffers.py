"""From an IR model to the buffers a tensor arena must hold: sizes, lifetimes, execution steps.

The memory planner (:mod:`edgecomp.memory.planner`) places :class:`Buffer` objects; this module
builds them from an :class:`onnx_ir.Model`, in one of two views:

**int8 view** (``int8=True``, the default; what a microcontroller runs, the TFLite view). The compile
pipeline writes INT8 models in QDQ form (``op -> QuantizeLinear -> int8 -> DequantizeLinear -> op``).
An int8 kernel reads and writes the int8 tensors and keeps its int32 accumulators internally, so:

- a ``QuantizeLinear`` whose float input comes straight from an int8 kernel (or is a graph input
  read only by it) and the ``DequantizeLinear`` nodes that read its int8 output are **one int8
  tensor**: one buffer of ``numel`` bytes. The Q/DQ nodes are not steps of their own.
- an *int8 kernel* is a maximal group of non-Q/DQ nodes joined by float tensors that no Q/DQ
  separates, whose activation inputs all come from ``DequantizeLinear`` of an int8 activation and
  whose outputs each go to exactly one ``QuantizeLinear``. One node after naive quantization
  (Conv with fused Relu); ``MatMul -> Add -> Relu`` in a QDQ file converted from TFLite (one
  FULLY_CONNECTED). The float tensors inside a group are kernel-internal: no buffer.
- a group that is not int8 (a float island of a hybrid model) is run node by node, in float: its
  tensors are float buffers, and the Q/DQ nodes at its border are real quantize/dequantize steps.
- weights and other constants (initializers, ``Constant`` outputs, and what is computed from
  constants only, such as ``DequantizeLinear`` of an int8 weight) live in flash, not in the arena.

**float view** (``int8=False``): every non-constant node is one step and every non-constant tensor
is one buffer of its own dtype (Q/DQ nodes, if any, are ordinary steps). It is
:func:`edgecomp.ir.analysis.tensor_lifetimes` with constant-only nodes counted as flash.

Lifetimes use steps of the execution order (:func:`arena_steps`): the topological order of
:func:`edgecomp.ir.graph.topological_order` restricted to the steps above. A buffer is alive from
the step that writes it (step 0 for a graph input) to the step of its last reader, inclusive (the
last step for a graph output; its own step for a tensor nobody reads). At step ``s`` the inputs and
the outputs of step ``s`` are alive together. This is TensorFlow Lite Micro's model
(``micro_allocation_info.cc``: inputs created before the first op, outputs kept to the end),
shifted by one step, which changes no overlap.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping

import networkx as nx
import onnx_ir as ir

from edgecomp.errors import ModelError
from edgecomp.ir.analysis import tensor_bytes
from edgecomp.ir.graph import consumed_values, topological_order

__all__ = ["IN_PLACE_OPS", "Buffer", "arena_buffers", "arena_steps"]

_DEFAULT_DOMAINS = ("", "ai.onnx")

IN_PLACE_OPS = frozenset(
    {
        "Relu", "Clip", "LeakyRelu", "Sigmoid", "Tanh", "HardSwish", "HardSigmoid", "Abs", "Neg",
        "Add", "Sub", "Mul", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity",
    }
)
"""Ops whose output may take over the buffer of an input that dies at that op (``in_place=True``).

Element-wise ops compute ``out[i]`` from ``in[i]`` (and the other operand) and may write ``out[i]``
over ``in[i]`` after reading it: the TFLite reference int8 kernels (``reference_integer_ops/add.h``,
``mul.h``, ``activations``) read index ``i`` before writing it. Reshape-like ops only relabel the
bytes. A step whose nodes are all in this set is in-place capable."""


@dataclasses.dataclass(frozen=True)
class Buffer:
    """One block of the tensor arena and when it is alive.

    Attributes:
        name: the buffer's name: its int8 tensor's ONNX value name (or ``scratch:<node>``).
        size: bytes reserved in the arena, a multiple of the plan's alignment.
        first_step: the step that writes it (0 for a graph input), 0-based.
        last_step: the step of its last reader, inclusive (the last step for a graph output).
        tensors: the ONNX value names stored in this buffer: the int8 tensor and the float views of
            it that a Q/DQ pair collapses into it (and, with ``in_place``, the tensors that reuse
            it). Empty for hand-built buffers.
    """

    name: str
    size: int
    first_step: int
    last_step: int
    tensors: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.size < 0 or self.first_step < 0 or self.last_step < self.first_step:
            raise ValueError(
                f"buffer {self.name!r}: need size >= 0 and 0 <= first_step <= last_step, "
                f"got size={self.size}, steps {self.first_step}..{self.last_step}"
            )

    def overlaps_in_time(self, other: Buffer) -> bool:
        """True when both buffers are alive at some step (inclusive intervals)."""
        return self.first_step <= other.last_step and other.first_step <= self.last_step


# --------------------------------------------------------------------------------------------
# the execution view


def _is_op(node: ir.Node, op_type: str) -> bool:
    return node.op_type == op_type and node.domain in _DEFAULT_DOMAINS


class _UnionFind:
    def __init__(self) -> None:
        self.parent: dict[int, int] = {}

    def find(self, key: int) -> int:
        self.parent.setdefault(key, key)
        root = key
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[key] != root:
            self.parent[key], key = root, self.parent[key]
        return root

    def union(self, a: int, b: int) -> None:
        root_a, root_b = self.find(a), self.find(b)
        if root_a != root_b:
            self.parent[max(root_a, root_b)] = min(root_a, root_b)


@dataclasses.dataclass
class _View:
    """The execution view of a model: steps (groups of nodes) and tensor classes (buffers).

    Values are numbered in first-seen order (graph inputs, then node outputs in topological order);
    ``classes`` joins the numbers of values stored in one buffer, its root being the smallest.
    """

    steps: list[list[ir.Node]]
    step_of: dict[int, int]  # id(node) -> step; nodes that do not run (constants, collapsed Q/DQ) absent
    number: dict[int, int]  # id(value) -> its number, for every non-constant value
    values: list[ir.Value]  # by number
    classes: _UnionFind  # over value numbers
    internal: set[int]  # numbers of kernel-internal float tensors (no buffer)


def _runs_at_compile_time(node: ir.Node, constants: set[int]) -> bool:
    """A Constant node, or a node computing only from constants: folded into flash, never run."""
    inputs = consumed_values(node)
    return _is_op(node, "Constant") or (bool(inputs) and all(id(value) in constants for value in inputs))


def _build_view(model: ir.Model, *, int8: bool) -> _View:
    graph = model.graph
    order = topological_order(model)
    position = {id(node): index for index, node in enumerate(order)}
    constants = {id(value) for value in graph.initializers.values()}
    constants.update(id(value) for value in graph.inputs if value.is_initializer())
    running: list[ir.Node] = []
    for node in order:
        if _runs_at_compile_time(node, constants):
            constants.update(id(value) for value in node.outputs)
        else:
            running.append(node)
    values: list[ir.Value] = [value for value in graph.inputs if id(value) not in constants]
    values += [value for node in running for value in node.outputs if id(value) not in constants]
    number = {id(value): index for index, value in enumerate(values)}
    classes = _UnionFind()
    internal: set[int] = set()
    graph_outputs = {id(value) for value in graph.outputs}
    graph_inputs = {id(value) for value in graph.inputs}

    def activation(value: ir.Value | None) -> bool:
        return value is not None and id(value) not in constants

    groups: list[list[ir.Node]] = [[node] for node in running]
    if int8:
        is_q = {id(n) for n in running if _is_op(n, "QuantizeLinear") and activation(n.inputs[0])}
        is_dq = {id(n) for n in running if _is_op(n, "DequantizeLinear") and activation(n.inputs[0])}
        compute = [n for n in running if id(n) not in is_q and id(n) not in is_dq]
        compute_ids = {id(n) for n in compute}
        # candidate kernels: compute nodes joined by direct float edges (no Q/DQ between them)
        joined = _UnionFind()
        for node in compute:
            joined.find(position[id(node)])
            for value in consumed_values(node):
                producer = value.producer()
                if activation(value) and producer is not None and id(producer) in compute_ids:
                    joined.union(position[id(producer)], position[id(node)])
        members: dict[int, list[ir.Node]] = {}
        for node in compute:
            members.setdefault(joined.find(position[id(node)]), []).append(node)

        def is_int8_kernel(nodes: list[ir.Node]) -> bool:
            inside = {id(n) for n in nodes}
            for node in nodes:
                for value in consumed_values(node):
                    producer = value.producer()
                    if not activation(value) or (producer is not None and id(producer) in inside):
                        continue
                    if producer is None or id(producer) not in is_dq:
                        return False  # reads a float graph input or a float tensor directly
                for value in node.outputs:
                    if id(value) in graph_outputs:
                        return False
                    readers = {id(use.node) for use in value.uses()}
                    outside = readers - inside
                    if not outside:
                        continue  # kernel-internal (or unused) tensor
                    if len(readers) != 1 or not outside <= is_q:
                        return False
            return True

        kernels = [nodes for nodes in members.values() if is_int8_kernel(nodes)]
        in_kernel = {id(n) for nodes in kernels for n in nodes}
        for nodes in kernels:
            inside = {id(n) for n in nodes}
            for node in nodes:
                for value in node.outputs:
                    if value.uses() and all(id(use.node) in inside for use in value.uses()):
                        internal.add(number[id(value)])
        collapsed: set[int] = set()
        for node in running:
            if id(node) in is_q:  # written in int8 by an int8 kernel, or a graph input only it reads
                source = node.inputs[0]
                producer = source.producer()
                by_kernel = producer is not None and id(producer) in in_kernel
                by_caller = id(source) in graph_inputs and len(source.uses()) == 1 and id(source) not in graph_outputs
                if by_kernel or by_caller:
                    collapsed.add(id(node))
                    classes.union(number[id(node.outputs[0])], number[id(source)])
            elif id(node) in is_dq:  # every reader is an int8 kernel (a graph output is read as int8)
                output = node.outputs[0]
                readers = [use.node for use in output.uses()]
                if (readers or id(output) in graph_outputs) and all(id(reader) in in_kernel for reader in readers):
                    collapsed.add(id(node))
                    classes.union(number[id(output)], number[id(node.inputs[0])])
        groups = kernels + [[node] for node in running if id(node) not in in_kernel and id(node) not in collapsed]

    steps = _order_groups(groups, position)
    step_of = {id(node): index for index, nodes in enumerate(steps) for node in nodes}
    return _View(steps, step_of, number, values, classes, internal)


def _order_groups(groups: list[list[ir.Node]], position: dict[int, int]) -> list[list[ir.Node]]:
    """Topological order of the contracted group graph, ties by the first member's position."""
    for nodes in groups:
        nodes.sort(key=lambda node: position[id(node)])
    if all(len(nodes) == 1 for nodes in groups):
        return sorted(groups, key=lambda nodes: position[id(nodes[0])])
    group_of = {id(node): index for index, nodes in enumerate(groups) for node in nodes}
    view = nx.DiGraph()
    view.add_nodes_from(range(len(groups)))
    for index, nodes in enumerate(groups):
        for node in nodes:
            for value in consumed_values(node):
                producer = value.producer()
                if producer is not None and id(producer) in group_of and group_of[id(producer)] != index:
                    view.add_edge(group_of[id(producer)], index)
    try:
        ordered = list(nx.lexicographical_topological_sort(view, key=lambda index: position[id(groups[index][0])]))
    except nx.NetworkXUnfeasible:
        names = ", ".join(node.name for nodes in groups if len(nodes) > 1 for node in nodes)
        raise ModelError(f"the int8 kernel groups ({names}) depend on each other in a cycle; cannot order them") from None
    return [groups[index] for index in ordered]


def arena_steps(model: ir.Model, *, int8: bool = True) -> list[tuple[str, ...]]:
    """Return the execution steps of the model: per step, the names of the nodes it runs.

    In the int8 view (module docstring) one step is one int8 kernel, which may cover several ONNX
    nodes (``MatMul``, ``Add``, ``Relu`` of one FULLY_CONNECTED); collapsed Q/DQ nodes and
    constant-only nodes are in no step. In the float view every non-constant node is one step.

    Args:
        model: the shape-inferred IR (for instance after canonicalization and naive quantization).
        int8: the int8 (TFLite) view when True, the float view when False.

    Returns:
        list over steps of tuples of node names in topological order; step ``i`` is the ``i`` of
        :attr:`Buffer.first_step` / :attr:`Buffer.last_step`.

    Raises:
        ModelError: the graph has a cycle, or int8 kernel groups depend on each other in a cycle.
    """
    view = _build_view(model, int8=int8)
    return [tuple(node.name for node in nodes) for nodes in view.steps]


def _align(size: int, alignment: int) -> int:
    return -(-size // alignment) * alignment


def arena_buffers(
    model: ir.Model,
    *,
    batch: int = 1,
    alignment: int = 16,
    int8: bool = True,
    in_place: bool = False,
    scratch: Mapping[str, int] | None = None,
) -> list[Buffer]:
    """Return the buffers the tensor arena of ``model`` must hold, with sizes and lifetimes.

    Each non-constant tensor class (module docstring: in the int8 view a Q/DQ pair and the tensors
    it separates are one int8 tensor) is one buffer of ``ceil(bytes / alignment) * alignment``
    bytes, ``bytes = numel * bitwidth / 8`` (:func:`edgecomp.ir.analysis.tensor_bytes` of its
    smallest member: the int8 one). TensorFlow Lite Micro rounds sizes the same way
    (``micro_allocator.cc``, ``AlignSizeUp(bytes, MicroArenaBufferAlignment())``, 16).

    Args:
        model: the shape-inferred IR, e.g. canonicalized then quantized with
            :func:`edgecomp.passes.quantize.naive.quantize_naive`, or a float model.
        batch: substituted for a symbolic first dimension (default 1).
        alignment: bytes; every size is rounded up to a multiple of it (default 16, TFLM's).
        int8: the int8 view (True, default) or the float view (False); see the module docstring.
        in_place: let the output of a step whose nodes are all element-wise or reshape-like
            (:data:`IN_PLACE_OPS`) reuse the buffer of an input of the same element count and
            dtype width that dies at that step (the first such input in input order; a graph
            input too, which is then overwritten). The two become one buffer, so planners keep
            them at one offset. Off by default: only valid when the kernels are written for it
            (read ``in[i]`` before writing ``out[i]``); TFLite Micro does not do it.
        scratch: node name -> bytes of a scratch buffer the node's kernel needs while it runs
            (e.g. CMSIS-NN's im2col buffer); planned in the same arena, alive at that node's step
            only, named ``scratch:<node>``.

    Returns:
        list of :class:`Buffer`: graph inputs first, then in the order of the step that writes
        them (ties in output order), then scratch buffers in step order. Names are the int8
        tensors' value names (in the float view the tensors' own).

    Raises:
        ModelError: a tensor's size is unknown (a symbolic dimension other than the first, or no
            shape), ``scratch`` names a node that runs in no step, or the graph has a cycle.
        ValueError: ``alignment < 1`` or ``batch < 1``.
    """
    if alignment < 1 or batch < 1:
        raise ValueError(f"alignment and batch must be >= 1, got alignment={alignment}, batch={batch}")
    view = _build_view(model, int8=int8)
    last_step = max(len(view.steps) - 1, 0)
    graph_outputs = {id(value) for value in model.graph.outputs}
    members: dict[int, list[int]] = {}  # class root -> value numbers, ascending
    for index in range(len(view.values)):
        if index not in view.internal:
            members.setdefault(view.classes.find(index), []).append(index)
    first: dict[int, int] = {}
    last: dict[int, int] = {}
    nbytes: dict[int, int] = {}
    width: dict[int, int] = {}
    primary: dict[int, ir.Value] = {}
    for root, indices in members.items():
        starts, ends = [], []
        for index in indices:
            value = view.values[index]
            producer = value.producer()
            if producer is None:
                starts.append(0)  # a graph input: in memory before the first step
            elif id(producer) in view.step_of:
                starts.append(view.step_of[id(producer)])
            ends += [view.step_of[id(use.node)] for use in value.uses() if id(use.node) in view.step_of]
            if id(value) in graph_outputs:
                ends.append(last_step)
        first[root] = min(starts)  # every class holds a value written by a step or the caller
        last[root] = max([*ends, first[root]])
        known = [(size, index) for index in indices if (size := tensor_bytes(view.values[index], batch=batch)) is not None]
        if not known:
            value = view.values[root]
            raise ModelError(
                f"tensor {value.name!r} has shape {value.shape} and dtype {value.dtype}: its size is not static "
                f"with batch={batch}, so the arena cannot be planned (run shape inference or fix the dims)"
            )
        nbytes[root], smallest = min(known)
        primary[root] = view.values[smallest]
        width[root] = primary[root].dtype.bitwidth if primary[root].dtype is not None else 0

    holder = {root: root for root in members}  # in-place: class -> the class whose buffer it uses
    if in_place:
        for step, nodes in enumerate(view.steps):
            if not all(node.domain in _DEFAULT_DOMAINS and node.op_type in IN_PLACE_OPS for node in nodes):
                continue
            inside = {id(node) for node in nodes}
            outputs = {view.classes.find(view.number[id(v)]) for n in nodes for v in n.outputs} & members.keys()
            if len(outputs) != 1:
                continue
            (output,) = outputs
            donors: list[int] = []
            for node in nodes:
                for value in consumed_values(node):
                    producer = value.producer()
                    if id(value) in view.number and not (producer is not None and id(producer) in inside):
                        root = view.classes.find(view.number[id(value)])
                        if root in members and root not in donors:
                            donors.append(root)
            for donor in donors:
                target = _holder(holder, donor)
                if last[target] == step == first[output] and nbytes[donor] == nbytes[output] and width[donor] == width[output]:
                    holder[output] = target
                    last[target] = max(last[target], last[output])
                    break

    roots = sorted(members, key=lambda root: (first[root] if view.values[root].producer() is not None else -1, root))
    buffers: list[Buffer] = []
    for root in roots:
        if holder[root] != root:
            continue
        names = [view.values[index].name for other in roots if _holder(holder, other) == root for index in members[other]]
        buffers.append(Buffer(primary[root].name, _align(nbytes[root], alignment), first[root], last[root], tuple(names)))

    scratch_buffers: list[Buffer] = []
    for node_name, size in (scratch or {}).items():
        step = next((index for index, nodes in enumerate(view.steps) if any(node.name == node_name for node in nodes)), None)
        if step is None:
            raise ModelError(f"scratch buffer for node {node_name!r}: no step of the model runs that node")
        scratch_buffers.append(Buffer(f"scratch:{node_name}", _align(int(size), alignment), step, step))
    return buffers + sorted(scratch_buffers, key=lambda buffer: (buffer.first_step, buffer.name))


def _holder(owner: dict[int, int], root: int) -> int:
    while owner[root] != root:
        root = owner[root]
    return root
