"""Element-wise ops: Add, Sub, Mul, Div and the activations Relu, Clip, LeakyRelu, PRelu, Sigmoid,
Tanh, HardSwish (and Identity).

Element-wise ops follow their inputs' layout (:mod:`edgecomp_tflite.layout`): the output is stored
like the non-constant input of full rank (preferring the channels-last one when the output heads
for a spatial op); a constant operand is broadcast to the output rank and permuted to match
(:func:`edgecomp_tflite.layout.broadcast_constant`), a lower-rank non-constant one is reshaped then
permuted. TFLite's binary kernels broadcast numpy-style on the stored shapes
(``tensorflow/lite/kernels/add.cc``, ``sub.cc``, ``mul.cc``, ``div.cc``), which equals ONNX
broadcasting once both operands share rank and layout.

Activation formulas (ONNX operator specs vs ``tensorflow/lite/kernels/activations.cc``):
Relu = RELU; Sigmoid = LOGISTIC; Tanh = TANH; HardSwish ``x * max(0, min(1, x/6 + 1/2))`` = HARD_SWISH
``x * relu6(x + 3) / 6``; LeakyRelu(alpha) = LEAKY_RELU(alpha); PRelu(slope) = PRELU(alpha=slope);
Clip(0, 6) = RELU6, Clip(-1, 1) = RELU_N1_TO_1, Clip(0, none) = RELU, other bounds = MAXIMUM
and/or MINIMUM with a scalar.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from ai_edge_litert import schema_py_generated as schema

from edgecomp_tflite.context import (
    GraphInfo,
    LoweringContext,
    activation_kind,
    attribute,
    clip_bounds,
    stored_quantization,
)
from edgecomp_tflite.layout import Layout
from edgecomp_tflite.ops import register
from edgecomp_tflite.ops.spatial import scalar_like

Builtin = schema.BuiltinOperator
Activation = schema.ActivationFunctionType

_BINARY = {"Add": Builtin.ADD, "Sub": Builtin.SUB, "Mul": Builtin.MUL, "Div": Builtin.DIV}
_BINARY_OPTIONS = {
    Builtin.ADD: schema.AddOptionsT,
    Builtin.SUB: schema.SubOptionsT,
    Builtin.MUL: schema.MulOptionsT,
    Builtin.DIV: schema.DivOptionsT,
}
_UNARY = {"Relu": Builtin.RELU, "Sigmoid": Builtin.LOGISTIC, "Tanh": Builtin.TANH, "HardSwish": Builtin.HARD_SWISH}


def emit_binary(ctx: LoweringContext, code: int, a: int, b: int, y: int, activation: int) -> None:
    """ADD/SUB/MUL/DIV of two stored tensors with a fused activation."""
    options = _BINARY_OPTIONS[code]()
    options.fusedActivationFunction = activation
    ctx.emit(code, [a, b], [y], options)


def read_broadcast(ctx: LoweringContext, value: ir.Value, rank: int, layout: Layout, *, scale: float = 1.0) -> int:
    """``value`` as an operand broadcast against a rank-``rank`` tensor stored in ``layout``.

    A constant is written broadcast and permuted (times ``scale``); a non-constant of lower rank
    gets leading size-1 axes (ONNX broadcasting), then the layout (RESHAPE/TRANSPOSE as needed).

    Raises:
        ValueError: ``scale`` != 1 on a non-constant operand.
    """
    if ctx.constant(value) is not None and not ctx.has_tensor(value):
        return ctx.constant_operand(value, layout, rank=rank, scale=scale)
    if scale != 1.0:
        raise ValueError(f"cannot scale the non-constant operand {value.name!r}")
    shape = ctx.static_shape(value)
    if len(shape) == rank and ctx.layout(value) == layout:
        return ctx.read(value)
    logical = [1] * (rank - len(shape)) + list(shape)
    if layout.feature_order is not None:
        return ctx.read(value, layout)
    return ctx.read(value, Layout(layout.perm), logical_shape=logical)


def common_layout(ctx: LoweringContext, values: list[ir.Value], output: ir.Value) -> Layout:
    """The layout an element-wise/concat output takes: that of a full-rank non-constant input,
    preferring the output's preferred layout (channels-last before spatial ops)."""
    rank = len(ctx.static_shape(output))
    candidates = [ctx.layout(v) for v in values if v is not None and not _is_plain_constant(ctx, v) and len(ctx.static_shape(v)) == rank]
    preferred = ctx.preferred_layout(output)
    if preferred in candidates:
        return preferred
    return candidates[0] if candidates else Layout.onnx(rank)


def _is_plain_constant(ctx: LoweringContext, value: ir.Value) -> bool:
    return ctx.constant(value) is not None and not ctx.has_tensor(value)


def check_binary(info: GraphInfo, node: ir.Node) -> str | None:
    if info.shape(node.outputs[0]) is None:
        return "output shape unknown"
    return None


@register("Add", "Sub", "Mul", "Div", check=check_binary)
def lower_binary(ctx: LoweringContext, node: ir.Node) -> None:
    """ONNX Add/Sub/Mul/Div -> ADD/SUB/MUL/DIV in a shared layout, with a fused activation."""
    out_value = node.outputs[0]
    layout = common_layout(ctx, list(node.inputs[:2]), out_value)
    rank = len(ctx.static_shape(out_value))
    a = read_broadcast(ctx, node.inputs[0], rank, layout)
    b = read_broadcast(ctx, node.inputs[1], rank, layout)
    activation, final_value = ctx.fused_activation(node)
    y = ctx.define(final_value, layout)
    emit_binary(ctx, _BINARY[node.op_type], a, b, y, activation)


@register("Relu", "Sigmoid", "Tanh", "HardSwish")
def lower_unary(ctx: LoweringContext, node: ir.Node) -> None:
    """ONNX Relu/Sigmoid/Tanh/HardSwish -> RELU/LOGISTIC/TANH/HARD_SWISH, same layout as the input.

    An int8 Relu whose input already has the output's parameters with zero point -128 (the naive
    quantizer's fused Relu: nothing below zero is representable) is the identity: no operator.
    """
    x_value = node.inputs[0]
    layout = ctx.layout(x_value)
    x = ctx.read(x_value)
    if node.op_type == "Relu" and clamp_is_identity(ctx, x, node.outputs[0], 0.0, None):
        ctx.define(node.outputs[0], layout, tensor=x)
        return
    ctx.emit(_UNARY[node.op_type], [x], [ctx.define(node.outputs[0], layout)])


def clamp_is_identity(ctx: LoweringContext, x: int, out_value: ir.Value, low: float | None, high: float | None) -> bool:
    """True when clamping the int8 tensor ``x`` to [low, high] changes nothing: ``out_value`` has
    ``x``'s parameters and every representable value ``(q - zp) * scale``, q in [-128, 127], lies
    inside the bounds."""
    quantization = ctx.writer.tensor_quantization(x)
    element = ctx.element_type(out_value)
    if quantization is None or element.quantization is None or quantization.per_channel:
        return False
    if stored_quantization(element.quantization, None) != quantization:
        return False
    scale, zero_point = quantization.scale[0], quantization.zero_point[0]
    lowest, highest = (-128 - zero_point) * scale, (127 - zero_point) * scale
    return (low is None or lowest >= low) and (high is None or highest <= high)


@register("Identity")
def lower_identity(ctx: LoweringContext, node: ir.Node) -> None:
    """ONNX Identity: the output shares the input's tensor (no operator)."""
    x_value = node.inputs[0]
    if ctx.constant(x_value) is not None and not ctx.has_tensor(x_value):
        ctx.define(node.outputs[0], Layout.onnx(len(ctx.static_shape(x_value))), tensor=ctx.read(x_value))
        return
    ctx.define(node.outputs[0], ctx.layout(x_value), tensor=ctx.read(x_value))


@register("LeakyRelu")
def lower_leaky_relu(ctx: LoweringContext, node: ir.Node) -> None:
    """ONNX LeakyRelu(alpha, default 0.01) -> LEAKY_RELU(alpha)."""
    x_value = node.inputs[0]
    options = schema.LeakyReluOptionsT()
    options.alpha = float(attribute(node, "alpha", 0.01))
    ctx.emit(Builtin.LEAKY_RELU, [ctx.read(x_value)], [ctx.define(node.outputs[0], ctx.layout(x_value))], options)


@register("PRelu")
def lower_prelu(ctx: LoweringContext, node: ir.Node) -> None:
    """ONNX PRelu(X, slope) -> PRELU(input, alpha): the slope broadcast to X's rank and layout."""
    x_value, slope_value = node.inputs[0], node.inputs[1]
    layout = ctx.layout(x_value)
    rank = len(ctx.static_shape(x_value))
    alpha = read_broadcast(ctx, slope_value, rank, layout)
    ctx.emit(Builtin.PRELU, [ctx.read(x_value), alpha], [ctx.define(node.outputs[0], layout)])


def check_clip(info: GraphInfo, node: ir.Node) -> str | None:
    """Clip: constant bounds."""
    try:
        clip_bounds(info, node)
    except ValueError as error:
        return str(error)
    return None


@register("Clip", check=check_clip)
def lower_clip(ctx: LoweringContext, node: ir.Node) -> None:
    """ONNX Clip -> RELU / RELU6 / RELU_N1_TO_1 when the bounds match, else MAXIMUM and/or MINIMUM."""
    x_value, out_value = node.inputs[0], node.outputs[0]
    layout = ctx.layout(x_value)
    x = ctx.read(x_value)
    kind = activation_kind(ctx, node)
    special = {Activation.RELU: Builtin.RELU, Activation.RELU6: Builtin.RELU6, Activation.RELU_N1_TO_1: Builtin.RELU_N1_TO_1}
    low, high = clip_bounds(ctx, node)
    if clamp_is_identity(ctx, x, out_value, low, high):
        ctx.define(out_value, layout, tensor=x)
        return
    if kind in special:
        ctx.emit(special[kind], [x], [ctx.define(out_value, layout)])
        return
    steps = [(Builtin.MAXIMUM, low), (Builtin.MINIMUM, high)]
    steps = [(code, bound) for code, bound in steps if bound is not None]
    if not steps:
        ctx.define(out_value, layout, tensor=x)
        return
    shape = layout.stored_shape(ctx.static_shape(out_value))
    for index, (code, bound) in enumerate(steps):
        last = index == len(steps) - 1
        # int8 MAXIMUM/MINIMUM compare raw values: input's parameters throughout, requantized at the end
        y = ctx.define_output_like(out_value, layout, x) if last else ctx.new_intermediate(x_value, "clip_low", shape)
        ctx.emit(code, [x, scalar_like(ctx, x_value, float(np.float32(bound)))], [y])
        x = y
