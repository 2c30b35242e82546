"""Softmax and reductions: Softmax -> SOFTMAX; ReduceMean/ReduceMax/ReduceMin/ReduceSum -> MEAN/REDUCE_MAX/REDUCE_MIN/SUM.

TFLite's SOFTMAX normalises over the last stored axis (``tensorflow/lite/kernels/activations.cc``,
``beta`` = 1 here); ONNX Softmax (opset >= 13) over ``axis``. The input is read in a layout whose
last stored axis is ``axis`` (the current one when it already is, else the current order with
``axis`` moved last: a TRANSPOSE). Reductions take their axes in stored terms
(``Layout.stored_axis``); with ``keepdims=0`` the output keeps the stored order of the remaining
axes (``tensorflow/lite/kernels/reduce.cc``).
"""

from __future__ import annotations

import onnx_ir as ir
from ai_edge_litert import schema_py_generated as schema

from edgecomp_tflite.context import GraphInfo, LoweringContext, attribute
from edgecomp_tflite.layout import Layout
from edgecomp_tflite.ops import register

Builtin = schema.BuiltinOperator

_REDUCERS = {"ReduceMean": Builtin.MEAN, "ReduceMax": Builtin.REDUCE_MAX, "ReduceMin": Builtin.REDUCE_MIN, "ReduceSum": Builtin.SUM}
#: Opset from which each reduction takes ``axes`` as an input instead of an attribute.
_AXES_INPUT_OPSET = {"ReduceMean": 18, "ReduceMax": 18, "ReduceMin": 18, "ReduceSum": 13}


def check_softmax(info: GraphInfo, node: ir.Node) -> str | None:
    """Softmax: opset >= 13 semantics (one axis); earlier opsets only on the last axis."""
    rank = info.rank(node.inputs[0])
    if rank is None:
        return "input shape unknown"
    axis = attribute(node, "axis", -1 if info.opset >= 13 else 1) % rank
    if info.opset < 13 and axis != rank - 1:
        return f"opset {info.opset} Softmax flattens from axis {axis}; only the last axis is lowered"
    return None


@register("Softmax", check=check_softmax)
def lower_softmax(ctx: LoweringContext, node: ir.Node) -> None:
    """ONNX Softmax(axis) -> SOFTMAX(beta=1) with ``axis`` stored last."""
    x_value = node.inputs[0]
    rank = len(ctx.static_shape(x_value))
    axis = attribute(node, "axis", -1 if ctx.opset >= 13 else 1) % rank
    layout = ctx.layout(x_value)
    if layout.feature_order is not None:
        layout = Layout.onnx(rank)
    if layout.perm[-1] != axis:
        layout = Layout((*(p for p in layout.perm if p != axis), axis))
    x = ctx.read(x_value, layout)
    options = schema.SoftmaxOptionsT()
    options.beta = 1.0
    ctx.emit(Builtin.SOFTMAX, [x], [ctx.define(node.outputs[0], layout)], options)


def _reduction_axes(info: GraphInfo, node: ir.Node) -> list[int] | None | str:
    """Axes of a reduction (normalised), None for "all axes", or a reason string."""
    rank = info.rank(node.inputs[0])
    if rank is None:
        return "input shape unknown"
    if info.opset >= _AXES_INPUT_OPSET[node.op_type]:
        value = info.input(node, 1)
        if value is None:
            return [] if attribute(node, "noop_with_empty_axes", 0) else None
        array = info.constant(value)
        if array is None:
            return f"{node.op_type} axes must be constant"
        axes = [int(a) for a in array.reshape(-1)]
        if not axes:
            return [] if attribute(node, "noop_with_empty_axes", 0) else None
    else:
        axes = attribute(node, "axes")
        if axes is None:
            return None
    return sorted({a % rank for a in axes})


def check_reduce(info: GraphInfo, node: ir.Node) -> str | None:
    axes = _reduction_axes(info, node)
    if isinstance(axes, str):
        return axes
    if axes == []:
        return "a reduction over no axes (noop_with_empty_axes) is an identity; not lowered"
    return None


@register("ReduceMean", "ReduceMax", "ReduceMin", "ReduceSum", check=check_reduce)
def lower_reduce(ctx: LoweringContext, node: ir.Node) -> None:
    """ONNX ReduceMean/Max/Min/Sum(axes, keepdims) -> MEAN/REDUCE_MAX/REDUCE_MIN/SUM on stored axes."""
    x_value = node.inputs[0]
    rank = len(ctx.static_shape(x_value))
    axes = _reduction_axes(ctx, node)
    axes = list(range(rank)) if axes is None else axes
    layout = ctx.layout(x_value)
    if layout.feature_order is not None:
        layout = Layout.onnx(rank)
    x = ctx.read(x_value, layout)
    keep = bool(attribute(node, "keepdims", 1))
    if keep:
        out_layout = layout
    else:
        kept = [axis for axis in layout.perm if axis not in axes]
        out_layout = Layout(tuple(sorted(kept).index(axis) for axis in kept))
    options = schema.ReducerOptionsT()
    options.keepDims = keep
    stored_axes = sorted(layout.stored_axis(axis) for axis in axes)
    code = _REDUCERS[node.op_type]
    # int8 REDUCE_MAX/REDUCE_MIN compare raw values (same parameters in and out); MEAN/SUM requantize
    same_params = code in (Builtin.REDUCE_MAX, Builtin.REDUCE_MIN)
    y = ctx.define_output_like(node.outputs[0], out_layout, x) if same_params else ctx.define(node.outputs[0], out_layout)
    ctx.emit(code, [x, ctx.int32_constant(f"{node.name}/axes", stored_axes)], [y], options)
