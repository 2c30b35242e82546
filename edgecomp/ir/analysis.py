"""Static analyses of the IR: tensor sizes, MACs, parameters, tensor lifetimes, peak memory.

Every function reads an already shape-inferred :class:`onnx_ir.Model` (or one of its nodes/values)
and changes nothing. Conventions shared by all of them:

- **Sizes are bytes**: number of elements x the dtype's bit width / 8, rounded up for the sub-byte
  types (INT4, UINT4, FLOAT4E2M1). ``STRING`` tensors have no fixed size (``None``).
- **Dynamic batch**: models converted from TFLite/Keras have a symbolic first dimension
  (``unk__63`` in the MLPerf Tiny files). Functions that take ``batch`` substitute it for the
  **first** dimension when (and only when) that dimension is symbolic or unknown; a static first
  dimension is kept as it is (``mnist-8.onnx`` is fixed at 1 whatever ``batch`` says). Any other
  symbolic dimension makes the size unknown.
- **Constants** are initializers (including IR-version-3 initializers that are also listed as
  graph inputs, as in ``mnist-8.onnx``) and the outputs of ``Constant`` nodes. They are the
  *parameters*; every other tensor (graph inputs and node outputs) is an *activation*. An
  activation computed only from constants (``Reshape(weight, shape)`` in ``mnist-8.onnx``) stays
  an activation here until a canonicalization pass folds it.
- **Steps**: the node at position ``i`` of :func:`edgecomp.ir.graph.topological_order` runs at
  step ``i`` (0-based). Only the main graph is analysed; nodes inside ``If``/``Loop`` bodies are not
  counted (their captured outer values do keep those values alive).
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import math
from typing import Sequence

import numpy as np
import onnx_ir as ir

from edgecomp.errors import ModelError
from edgecomp.ir.graph import consumed_values, topological_order

__all__ = [
    "ModelSummary",
    "TensorLifetime",
    "node_macs",
    "node_parameters",
    "peak_live_bytes",
    "summarize",
    "tensor_bytes",
    "tensor_lifetimes",
]

logger = logging.getLogger(__name__)

_DEFAULT_DOMAINS = ("", "ai.onnx")


# --------------------------------------------------------------------------------------------
# shapes and sizes


def _dims(value: ir.Value, batch: int | None) -> list[int] | None:
    """Static dims of ``value`` (a constant's tensor shape if the value has none), ``batch``
    substituted for a symbolic first dim; None when any dim stays unknown or the rank is unknown."""
    shape = value.shape
    if shape is None:
        tensor = _constant_tensor(value)
        if tensor is None:
            return None
        shape = tensor.shape
    dims = list(shape.dims)
    if dims and not isinstance(dims[0], int) and batch is not None:
        dims[0] = batch
    if all(isinstance(dim, int) for dim in dims):
        return dims
    return None


def _bytes_of(num_elements: int, dtype: ir.DataType | None) -> int | None:
    if dtype is None:
        return None
    try:
        bitwidth = dtype.bitwidth  # onnx-ir's itemsize is a float (0.5 for INT4): use bits
    except TypeError:  # STRING, UNDEFINED
        return None
    return (num_elements * bitwidth + 7) // 8


def tensor_bytes(value: ir.Value, *, batch: int | None = None) -> int | None:
    """Return the size of a tensor in bytes, or None when it is not static.

    ``bytes = prod(shape) * bitwidth(dtype) / 8``, rounded up to a whole byte for sub-byte dtypes
    (the packed layout of the ONNX spec, "4 bit integer types"). A scalar (shape ``[]``) has one
    element.

    Args:
        value: an ``ir.Value`` with a shape and dtype (after shape inference), e.g. ``float32
            [N, 96, 96, 3]``. For an initializer without a value shape, its tensor's shape is used.
        batch: when given, substituted for the first dimension if that dimension is symbolic
            (``N``, ``unk__12``) or unknown; a static first dimension is kept. ``None`` (the
            default) substitutes nothing.

    Returns:
        size in bytes (int >= 0), or ``None`` when the shape or dtype is unknown, a dimension is
        still symbolic (any symbolic dim when ``batch`` is None, a symbolic dim other than the
        first otherwise), or the dtype has no fixed size (``STRING``).
    """
    dims = _dims(value, batch)
    if dims is None:
        return None
    dtype = value.dtype
    if dtype is None:
        tensor = _constant_tensor(value)
        dtype = tensor.dtype if tensor is not None else None
    return _bytes_of(math.prod(dims), dtype)


# --------------------------------------------------------------------------------------------
# constants and parameters


def _constant_tensor(value: ir.Value) -> ir.TensorProtocol | None:
    """The tensor of an initializer or of a Constant node's output; None for activations (and for
    an initializer registered without a tensor)."""
    if value.is_initializer():
        return value.const_value
    producer = value.producer()
    if producer is not None and producer.op_type == "Constant" and producer.domain in _DEFAULT_DOMAINS:
        try:
            return ir.convenience.get_const_tensor(value)
        except (ValueError, TypeError) as error:  # sparse_value or a malformed Constant node
            raise ModelError(f"Constant node {producer.name!r}: cannot read its tensor: {error}") from error
    return None


def _is_constant(value: ir.Value) -> bool:
    if value.is_initializer():
        return True
    producer = value.producer()
    return producer is not None and producer.op_type == "Constant" and producer.domain in _DEFAULT_DOMAINS


def _constant_elements(value: ir.Value) -> int:
    tensor = _constant_tensor(value)
    if tensor is not None:
        return math.prod(tensor.shape.numpy())
    dims = _dims(value, None)
    if dims is None:
        raise ModelError(f"constant {value.name!r} has no tensor and no static shape")
    return math.prod(dims)


def _constant_bytes(value: ir.Value) -> int:
    tensor = _constant_tensor(value)
    dtype = tensor.dtype if tensor is not None else value.dtype
    size = _bytes_of(_constant_elements(value), dtype)
    if size is None:
        raise ModelError(f"constant {value.name!r} has dtype {dtype} without a fixed size")
    return size


def node_parameters(node: ir.Node) -> int:
    """Return the number of parameters of a node: elements of its constant inputs.

    A constant input is an initializer or the output of a ``Constant`` node (module docstring).
    Every element counts, whatever its dtype, so integer shape tensors count too (``Reshape``'s
    int64 ``shape`` input has 2 or 4 elements); a constant read twice by the node counts once.
    Summing this over nodes double-counts initializers shared by several nodes: use
    :func:`summarize` for a model total.

    Args:
        node: an ``ir.Node``.

    Returns:
        number of elements (int >= 0); e.g. ``Conv`` with weight ``[8, 1, 5, 5]`` and bias ``[8]``
        gives 208.

    Raises:
        ModelError: a constant input has neither a tensor nor a static shape.
    """
    return sum(_constant_elements(value) for value in consumed_values(node) if _is_constant(value))


# --------------------------------------------------------------------------------------------
# MACs


@dataclasses.dataclass(frozen=True)
class _MacRule:
    weight: int  # input index of W (Conv family) or of A (MatMul family)
    kind: str  # "conv", "conv_transpose", "gemm", "matmul"


# Input positions follow the ONNX operator specs (onnx/docs/Operators.md).
_MAC_RULES: dict[str, _MacRule] = {
    "Conv": _MacRule(1, "conv"),
    "ConvInteger": _MacRule(1, "conv"),
    "QLinearConv": _MacRule(3, "conv"),  # x, x_scale, x_zero_point, w, ...
    "ConvTranspose": _MacRule(1, "conv_transpose"),
    "Gemm": _MacRule(0, "gemm"),
    "MatMul": _MacRule(0, "matmul"),
    "MatMulInteger": _MacRule(0, "matmul"),
    "QLinearMatMul": _MacRule(0, "matmul"),  # a, a_scale, a_zero_point, b, ...
}


def node_macs(node: ir.Node, *, batch: int = 1) -> int:
    """Return the multiply-accumulate operations (MACs) one run of the node performs.

    One MAC is one ``acc += a * b``. Bias additions, activations, pooling, elementwise and data
    movement ops count 0. Formulas (shapes are the static shapes after shape inference, with
    ``batch`` substituted for a symbolic first dimension; ONNX operator specs for the layouts):

    - ``Conv`` / ``ConvInteger`` / ``QLinearConv``, weight ``W [C_out, C_in/group, k1, ..., kn]``,
      output ``Y [N, C_out, o1, ..., on]``: ``MACs = numel(Y) * prod(W.shape[1:])``, i.e. for 2-D
      ``N*C_out*H_out*W_out*(C_in/group)*kH*kW``. A depthwise conv (``group = C_in = C_out``,
      ``W [C, 1, kH, kW]``) gives ``N*C*H_out*W_out*kH*kW``.
    - ``ConvTranspose``, input ``X [N, C_in, i1, ...]``, weight ``W [C_in, C_out/group, k1, ...]``:
      every input element is multiplied into ``(C_out/group)*k1*...*kn`` outputs, so
      ``MACs = numel(X) * prod(W.shape[1:])``.
    - ``Gemm``: ``Y [M, N] = A' [M, K] @ B' [K, N]`` (``'`` = after ``transA``/``transB``):
      ``MACs = M*N*K``; ``alpha``/``beta``/``C`` are not counted.
    - ``MatMul`` / ``MatMulInteger`` / ``QLinearMatMul`` (numpy ``matmul`` semantics, with
      broadcasting of the leading dims): ``MACs = numel(Y) * K`` with ``K = A.shape[-1]``.

    Args:
        node: an ``ir.Node`` whose inputs/outputs carry shapes (run shape inference first).
        batch: substituted for a symbolic first dimension of the tensors used (default 1).

    Returns:
        MACs (int >= 0); 0 for op types not listed above and for non-default domains.

    Raises:
        ModelError: the node is one of the listed ops but a shape needed by the formula is unknown
            or has a symbolic dimension other than the first; the message names the node and tensor.
    """
    rule = _MAC_RULES.get(node.op_type)
    if rule is None or node.domain not in _DEFAULT_DOMAINS:
        return 0

    def dims_of(index: int, role: str, *, outputs: bool = False) -> list[int]:
        values = node.outputs if outputs else node.inputs
        value = values[index] if index < len(values) else None
        dims = _dims(value, batch) if value is not None else None
        if dims is None:
            name = value.name if value is not None else f"#{index}"
            shape = value.shape if value is not None else None
            raise ModelError(
                f"node {node.name!r} ({node.op_type}): cannot count MACs, {role} {name!r} has shape "
                f"{shape}, not static after substituting batch={batch} for the first dimension"
            )
        return dims

    output_elements = math.prod(dims_of(0, "output", outputs=True))
    if rule.kind == "conv":
        weight = dims_of(rule.weight, "weight")
        return output_elements * math.prod(weight[1:])
    if rule.kind == "conv_transpose":
        weight = dims_of(rule.weight, "weight")
        return math.prod(dims_of(0, "input")) * math.prod(weight[1:])
    a = dims_of(rule.weight, "input A")
    if rule.kind == "gemm":
        attribute = node.attributes.get("transA")
        trans_a = bool(attribute.value) if attribute is not None else False
        return output_elements * (a[0] if trans_a else a[-1])
    return output_elements * (a[-1] if a else 1)


# --------------------------------------------------------------------------------------------
# lifetimes and peak memory


@dataclasses.dataclass(frozen=True)
class TensorLifetime:
    """When an activation tensor is alive, in steps of the topological order.

    Attributes:
        name: the tensor (ONNX value) name.
        first_step: step at which it is written: its producer's step; 0 for a graph input.
        last_step: step of its last consumer (inclusive); the last step for a graph output;
            ``first_step`` for a tensor nobody reads.
        bytes: its size in bytes (:func:`tensor_bytes` with the batch given), None when unknown.
    """

    name: str
    first_step: int
    last_step: int
    bytes: int | None


def _lifetimes(order: Sequence[ir.Node], graph: ir.Graph, batch: int) -> dict[str, TensorLifetime]:
    last_step_index = max(len(order) - 1, 0)
    first: dict[str, int] = {}
    last: dict[str, int] = {}
    values: dict[str, ir.Value] = {}
    for value in graph.inputs:
        if value.name and not _is_constant(value):
            values[value.name] = value
            first[value.name] = last[value.name] = 0
    for step, node in enumerate(order):
        for value in consumed_values(node):
            if value.name in first:
                last[value.name] = step
        if node.op_type == "Constant" and node.domain in _DEFAULT_DOMAINS:
            continue
        for value in node.outputs:
            if value.name:
                values[value.name] = value
                first[value.name] = last[value.name] = step
    for value in graph.outputs:
        if value.name in first:
            last[value.name] = last_step_index
    return {
        name: TensorLifetime(name, first[name], last[name], tensor_bytes(value, batch=batch))
        for name, value in values.items()
    }


def tensor_lifetimes(model: ir.Model, *, batch: int = 1) -> dict[str, TensorLifetime]:
    """Return the lifetime of every activation tensor of the main graph.

    Activations are the graph inputs that are not initializers, and the node outputs except those of
    ``Constant`` nodes (module docstring). A tensor is alive from ``first_step`` to ``last_step``
    inclusive, where step ``i`` is the ``i``-th node of :func:`edgecomp.ir.graph.topological_order`:

    - a graph input is alive from step 0 (it is in memory before the first node runs);
    - a node output is alive from its producer's step;
    - it stays alive until the step of its last consumer; a graph output stays alive until the last
      step (the caller reads it after the run); a tensor nobody reads lives one step.

    At step ``i`` both the inputs and the outputs of node ``i`` are alive (no in-place reuse).

    Args:
        model: the shape-inferred IR.
        batch: substituted for a symbolic first dimension when computing ``bytes`` (default 1).

    Returns:
        dict tensor name -> :class:`TensorLifetime`, graph inputs first, then node outputs in
        topological order.

    Raises:
        ModelError: the graph has a cycle (from :func:`topological_order`).
    """
    return _lifetimes(topological_order(model), model.graph, batch)


def _peak(lifetimes: dict[str, TensorLifetime], num_steps: int) -> tuple[int, int]:
    unknown = [life.name for life in lifetimes.values() if life.bytes is None]
    if unknown:
        logger.warning(
            "peak live bytes leaves out %d tensor(s) of unknown size (the result stays a lower bound): %s",
            len(unknown),
            ", ".join(unknown[:5]) + (", ..." if len(unknown) > 5 else ""),
        )
    num_steps = max(num_steps, 1)
    count = len(lifetimes)
    first = np.fromiter((life.first_step for life in lifetimes.values()), np.int64, count)
    last = np.fromiter((life.last_step for life in lifetimes.values()), np.int64, count)
    size = np.fromiter((life.bytes or 0 for life in lifetimes.values()), np.int64, count)
    # difference array: +size at first_step, -size after last_step; running sum = live bytes/step
    delta = np.zeros(num_steps + 1, np.int64)
    np.add.at(delta, first, size)
    np.add.at(delta, last + 1, -size)
    live = np.cumsum(delta[:num_steps])
    step = int(np.argmax(live))  # first step reaching the maximum
    return int(live[step]), step


def peak_live_bytes(model: ir.Model, *, batch: int = 1) -> tuple[int, int]:
    """Return the tensor-arena lower bound: the largest total size of activations alive at one step.

    ``live(s) = sum(bytes(t) for t alive at step s)`` over :func:`tensor_lifetimes`; the result is
    ``max_s live(s)`` and the first step reaching it. No arena planner can use less memory for this
    order (tensors alive together cannot share bytes; in-place ops and a different order could).
    Tensors of unknown size are left out with a warning, so the result is still a lower bound.
    Constants (weights) are not counted: they live in flash/initializers, not in the arena.

    Args:
        model: the shape-inferred IR.
        batch: substituted for a symbolic first dimension (default 1).

    Returns:
        ``(bytes, step)``: peak live bytes (int) and the 0-based step of the topological order at
        which it is first reached; ``(0, 0)`` for an empty graph.

    Raises:
        ModelError: the graph has a cycle.
    """
    order = topological_order(model)
    return _peak(_lifetimes(order, model.graph, batch), len(order))


# --------------------------------------------------------------------------------------------
# summary


@dataclasses.dataclass(frozen=True)
class ModelSummary:
    """Key figures of a model, as shown in the compile report.

    Attributes:
        op_histogram: op type -> number of nodes, most frequent first (ties by name); ops outside
            the default ONNX domain are written ``domain::OpType``.
        parameters: elements of all the distinct constants the nodes read, each counted once.
        parameter_bytes: their size in bytes (dtype bit width / 8 per element).
        macs: sum of :func:`node_macs` over the nodes.
        largest_tensors: the 5 largest activation tensors as (name, bytes), largest first (ties by
            name).
        peak_live_bytes: :func:`peak_live_bytes` (bytes).
        num_nodes: number of nodes of the main graph.
    """

    op_histogram: dict[str, int]
    parameters: int
    parameter_bytes: int
    macs: int
    largest_tensors: list[tuple[str, int]]
    peak_live_bytes: int
    num_nodes: int


def summarize(model: ir.Model, *, batch: int = 1) -> ModelSummary:
    """Summarize a shape-inferred model: op histogram, parameters, MACs, memory.

    Args:
        model: the shape-inferred IR.
        batch: substituted for a symbolic first dimension in MACs and tensor sizes (default 1).

    Returns:
        :class:`ModelSummary`.

    Raises:
        ModelError: the graph has a cycle, or a Conv/ConvTranspose/Gemm/MatMul node lacks the static
            shapes :func:`node_macs` needs.
    """
    order = topological_order(model)
    histogram = collections.Counter(
        node.op_type if node.domain in _DEFAULT_DOMAINS else f"{node.domain}::{node.op_type}" for node in order
    )
    constants: dict[int, ir.Value] = {}
    for node in order:
        for value in consumed_values(node):
            if _is_constant(value):
                constants.setdefault(id(value), value)
    lifetimes = _lifetimes(order, model.graph, batch)
    sized = [(life.name, life.bytes) for life in lifetimes.values() if life.bytes is not None]
    sized.sort(key=lambda item: (-item[1], item[0]))
    peak, _ = _peak(lifetimes, len(order))
    return ModelSummary(
        op_histogram=dict(sorted(histogram.items(), key=lambda item: (-item[1], item[0]))),
        parameters=sum(_constant_elements(value) for value in constants.values()),
        parameter_bytes=sum(_constant_bytes(value) for value in constants.values()),
        macs=sum(node_macs(node, batch=batch) for node in order),
        largest_tensors=sized[:5],
        peak_live_bytes=peak,
        num_nodes=len(order),
    )
