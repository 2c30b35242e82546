"""Gemm and MatMul -> FULLY_CONNECTED (constant weights) or BATCH_MATMUL.

Semantics (ONNX operator specs; TFLite ``tensorflow/lite/kernels/fully_connected.cc``,
``batch_matmul.cc``):

- ONNX Gemm: ``Y [M, N] = alpha * A' [M, K] @ B' [K, N] + beta * C`` with ``A' = A`` or ``A^T``
  (``transA``), ``B' = B`` or ``B^T`` (``transB``), C broadcast to [M, N].
- ONNX MatMul: numpy ``matmul``; ``A [..., M, K] @ B [K, N]``.
- FULLY_CONNECTED: ``output [..., N] = input [..., K] @ weights [N, K]^T + bias [N]``: the weights
  are stored transposed (rows = output features). ``keep_num_dims=True`` (version 5) keeps the
  leading axes of a rank > 2 input; otherwise the input is flattened to [-1, K].
- A flattened channels-last input (:class:`edgecomp_tflite.layout.Layout` ``feature_order``) is
  consumed as it is stored: the weight columns are permuted to the stored feature order instead
  (``W_stored[:, j] = W[:, order[j]]``), which keeps mnist-8's Flatten -> Gemm free of TRANSPOSE.
- A rank-2 input made by a RESHAPE that keeps the batch axis is read before that RESHAPE:
  FULLY_CONNECTED flattens any input to [-1, K] itself (``keep_num_dims=False``), so the
  RESHAPE is dropped when nothing else reads it (as in TFLite's own int8 micro_speech model).
- A non-constant right operand, or one of rank > 2, gives BATCH_MATMUL (broadcasting batch axes,
  ``adj_x``/``adj_y`` for the transposes), then MUL by alpha and ADD of C when needed.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from ai_edge_litert import schema_py_generated as schema

from edgecomp_tflite.context import GraphInfo, LoweringContext, attribute
from edgecomp_tflite.layout import Layout
from edgecomp_tflite.ops import register
from edgecomp_tflite.ops.elementwise import emit_binary, read_broadcast

Builtin = schema.BuiltinOperator
Activation = schema.ActivationFunctionType


def check_gemm(info: GraphInfo, node: ir.Node) -> str | None:
    """Gemm: non-constant rank-2 A; C, when present, constant or of the output's shape."""
    a_shape = info.shape(node.inputs[0])
    if a_shape is None or len(a_shape) != 2:
        return "Gemm input A must be a known rank-2 tensor"
    if info.constant(node.inputs[0]) is not None:
        return "Gemm with a constant A should have been folded"
    c_value = info.input(node, 2)
    if c_value is not None and info.constant(c_value) is None and attribute(node, "beta", 1.0) != 1.0:
        return "Gemm with a non-constant C and beta != 1 is not lowered"
    return None


def _bias_like(info: GraphInfo, c_value: ir.Value | None, n: int) -> bool:
    """True when constant C broadcasts as a per-output-feature bias ([N], [1, N] or a scalar)."""
    if c_value is None:
        return True
    array = info.constant(c_value)
    return array is not None and (array.size == n or array.size == 1) and (array.ndim < 2 or array.shape[0] == 1)


@register("Gemm", check=check_gemm)
def lower_gemm(ctx: LoweringContext, node: ir.Node) -> None:
    """ONNX Gemm -> FULLY_CONNECTED (constant B) or BATCH_MATMUL (+ MUL alpha, ADD C)."""
    a_value, b_value, c_value = node.inputs[0], node.inputs[1], ctx.input(node, 2)
    trans_a, trans_b = attribute(node, "transA", 0), attribute(node, "transB", 0)
    alpha, beta = float(attribute(node, "alpha", 1.0)), float(attribute(node, "beta", 1.0))
    out_value = node.outputs[0]
    n = ctx.static_shape(out_value)[1]
    b_constant = ctx.constant(b_value)
    if b_constant is None:
        _lower_batch_matmul(ctx, node, a_value, b_value, bool(trans_a), bool(trans_b), alpha, c_value, Layout.onnx(2))
        return
    a_layout = ctx.layout(a_value)
    if trans_a:
        a, rows = ctx.read(a_value, Layout((1, 0))), None
    elif a_layout.feature_order is not None:
        a, rows = ctx.read(a_value), a_layout.feature_order
    else:
        a, rows = ctx.read(a_value, Layout.onnx(2)), None
    if not trans_a:
        a = before_flatten(ctx, a)
    bias_fused = _bias_like(ctx, c_value, n)
    tail = node
    if c_value is None:
        c_value, tail = ctx.fused_bias_add(node)  # a QDQ model's Gemm -> Add(bias)
    if bias_fused:
        activation, final_value = ctx.fused_activation(tail)
        y = ctx.define(final_value, Layout.onnx(2))
    else:  # FC writes alpha * A' @ B'; an ADD of beta * C follows
        activation = Activation.NONE
        y = ctx.new_intermediate(out_value, "matmul", ctx.static_shape(out_value))
    weights = ctx.weight(b_value, (1, 0) if not trans_b else (0, 1), rows=rows, scale=alpha)
    if bias_fused:
        bias = ctx.bias(c_value, n, a_value, b_value, name=f"{node.name}/bias", scale=beta, weight_scale=alpha)
    else:
        bias = ctx.bias(None, n, a_value, b_value, name=f"{node.name}/bias", weight_scale=alpha)
    options = fully_connected_options(ctx, a, weights, activation)
    ctx.emit(Builtin.FULLY_CONNECTED, [a, weights, bias], [y], options)
    if not bias_fused:
        _add_c(ctx, node, y, out_value, c_value, beta)


def before_flatten(ctx: LoweringContext, a: int) -> int:
    """The input of the RESHAPE that made the rank-2 tensor ``a`` when it keeps ``a``'s batch axis
    and element type (FULLY_CONNECTED then flattens it alike), else ``a``."""
    producer = ctx.writer.producer(a)
    if producer is None or producer[0] != Builtin.RESHAPE:
        return a
    source = producer[1][0]
    writer = ctx.writer
    if (
        writer.tensor_shape(source)[:1] != writer.tensor_shape(a)[:1]
        or writer.tensor_dtype(source) != writer.tensor_dtype(a)
        or writer.tensor_quantization(source) != writer.tensor_quantization(a)
        or writer.is_constant(source)
    ):
        return a
    ctx.bypassed[a] = source
    return source


def fully_connected_options(ctx: LoweringContext, a: int, weights: int, activation: int) -> schema.FullyConnectedOptionsT:
    """FULLY_CONNECTED options; a float input with int8 weights (TFLite dynamic range, hybrid
    kernel) sets ``asymmetric_quantize_inputs``: the kernel quantizes each input row with its own
    zero point, closer to float than symmetric (``fully_connected.cc``; version 9, 12 per channel)."""
    options = schema.FullyConnectedOptionsT()
    options.fusedActivationFunction = activation
    hybrid = ctx.writer.tensor_dtype(weights) == np.int8 and ctx.writer.tensor_dtype(a) == np.float32
    options.asymmetricQuantizeInputs = bool(hybrid)
    return options


def _add_c(ctx: LoweringContext, node: ir.Node, product: int, out_value: ir.Value, c_value: ir.Value, beta: float) -> None:
    """``Y = product + beta * C`` with ``product`` the tensor of ``alpha * A' @ B'``; fuses an activation."""
    activation, final_value = ctx.fused_activation(node)
    y = ctx.define(final_value, Layout.onnx(2))
    c = read_broadcast(ctx, c_value, 2, Layout.onnx(2), scale=beta)
    emit_binary(ctx, Builtin.ADD, product, c, y, activation)


def check_matmul(info: GraphInfo, node: ir.Node) -> str | None:
    """MatMul: both operands of rank >= 2 (1-D numpy promotion is not lowered)."""
    for value in node.inputs[:2]:
        shape = info.shape(value)
        if shape is None or len(shape) < 2:
            return f"MatMul operand {value.name!r} must have rank >= 2"
    return None


@register("MatMul", check=check_matmul)
def lower_matmul(ctx: LoweringContext, node: ir.Node) -> None:
    """ONNX MatMul -> FULLY_CONNECTED (constant 2-D B; keep_num_dims for rank > 2 A) or BATCH_MATMUL."""
    a_value, b_value = node.inputs[0], node.inputs[1]
    b_constant = ctx.constant(b_value)
    rank = len(ctx.static_shape(a_value))
    if b_constant is None or b_constant.ndim != 2:
        _lower_batch_matmul(ctx, node, a_value, b_value, False, False, 1.0, None, Layout.onnx(len(ctx.static_shape(node.outputs[0]))))
        return
    a_layout = ctx.layout(a_value)
    rows = None
    if a_layout.feature_order is not None:
        a, out_layout, rows = ctx.read(a_value), Layout.onnx(2), a_layout.feature_order
    elif a_layout.perm[-1] == rank - 1:
        a, out_layout = ctx.read(a_value), a_layout
    else:
        a, out_layout = ctx.read(a_value, Layout.onnx(rank)), Layout.onnx(rank)
    if rank == 2:
        a = before_flatten(ctx, a)
    bias_value, tail = ctx.fused_bias_add(node)  # a QDQ model's MatMul -> Add(bias)
    activation, final_value = ctx.fused_activation(tail)
    y = ctx.define(final_value, Layout(out_layout.perm))
    n = b_constant.shape[1]
    weights = ctx.weight(b_value, (1, 0), rows=rows)
    bias = ctx.bias(bias_value, n, a_value, b_value, name=f"{node.name}/bias")
    options = fully_connected_options(ctx, a, weights, activation)
    options.keepNumDims = rank > 2
    ctx.emit(Builtin.FULLY_CONNECTED, [a, weights, bias], [y], options)


def _lower_batch_matmul(ctx: LoweringContext, node: ir.Node, a_value: ir.Value, b_value: ir.Value, adj_x: bool, adj_y: bool, alpha: float, c_value: ir.Value | None, out_layout: Layout) -> None:
    """BATCH_MATMUL of ONNX-layout operands, then ``* alpha`` (MUL) and ``+ C`` (ADD) when needed."""
    out_value = node.outputs[0]
    a = ctx.read(a_value, Layout.onnx(len(ctx.static_shape(a_value))))
    b = ctx.read(b_value, Layout.onnx(len(ctx.static_shape(b_value))))
    extra_steps = (alpha != 1.0) + (c_value is not None)
    shape = out_layout.stored_shape(ctx.static_shape(out_value))
    # BATCH_MATMUL has no fused activation: a following Relu stays its own operator
    result = ctx.define(out_value, out_layout) if extra_steps == 0 else ctx.new_intermediate(out_value, "matmul", shape)
    options = schema.BatchMatMulOptionsT()
    options.adjX, options.adjY = adj_x, adj_y
    ctx.emit(Builtin.BATCH_MATMUL, [a, b], [result], options)
    if alpha != 1.0:
        scaled = ctx.define(out_value, out_layout) if c_value is None else ctx.new_intermediate(out_value, "scaled", shape)
        alpha_tensor = ctx.writer.add_constant(ctx.unique_name(f"{node.name}/alpha"), np.asarray(alpha, np.float32))
        emit_binary(ctx, Builtin.MUL, result, alpha_tensor, scaled, Activation.NONE)
        result = scaled
    if c_value is not None:
        _add_c(ctx, node, result, out_value, c_value, float(attribute(node, "beta", 1.0)))

