"""Pooling: MaxPool, AveragePool -> MAX_POOL_2D, AVERAGE_POOL_2D; GlobalAveragePool, GlobalMaxPool -> MEAN, REDUCE_MAX.

Semantics (ONNX operator specs; TFLite ``tensorflow/lite/kernels/internal/reference/pooling.h``):
TFLite pools take an NHWC input and ``Padding.SAME``/``VALID``; padded positions never enter a
window (max ignores them, average divides by the number of real elements). That is ONNX MaxPool
(padding is -inf) and AveragePool with ``count_include_pad=0``. ONNX ``count_include_pad=1``
counts padded zeros: lowered as an explicit zero PAD then a VALID average, exact as long as every
window lies inside the padded input (no ``ceil_mode`` overhang past ``pads_end``). Global pools
reduce the spatial axes wherever the input's layout stores them, keeping them as size-1 axes. An
int8 GlobalAveragePool whose output keeps its input's parameters (a QAT/pre-quantized model's
whole-window average pool, see ``WholeWindowAveragePoolPass``) becomes a whole-window
AVERAGE_POOL_2D instead: the kernel the TFLite converter emits for it, whose rounding (half away
from zero, ``reference_integer_ops::AveragePool``) the official int8 files were computed with.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from ai_edge_litert import schema_py_generated as schema

from edgecomp_tflite.context import GraphInfo, LoweringContext, attribute, same_element
from edgecomp_tflite.layout import Layout
from edgecomp_tflite.ops import register
from edgecomp_tflite.ops.spatial import (
    PaddingPlan,
    Window,
    check_window,
    pad_explicitly,
    plan_padding,
    read_channels_last,
    window_of,
)

Builtin = schema.BuiltinOperator
Padding = schema.Padding

#: Fill of an explicit PAD before a max pool: the lowest float32, which no window maximum can be.
MAX_POOL_FILL = float(np.finfo(np.float32).min)


def _pool_plan(info: GraphInfo, node: ir.Node) -> tuple[Window, PaddingPlan] | str:
    kernel = attribute(node, "kernel_shape")
    if kernel is None or len(kernel) != 2:
        return "only 2-D pooling (kernel_shape of length 2) is lowered"
    if any(d != 1 for d in attribute(node, "dilations", [1, 1])):
        return "dilated pooling has no TFLite kernel"
    window = window_of(info, node, kernel)
    plan = plan_padding(window)
    if node.op_type == "AveragePool" and plan.uses_padding:
        if attribute(node, "count_include_pad", 0):
            if any(window.reach_end(a) > window.pads_end[a] for a in (0, 1)):
                return "AveragePool with count_include_pad=1 and ceil_mode windows past the padding has no exact TFLite form"
            explicit = tuple((window.pads_begin[a], max(window.reach_end(a), 0)) for a in (0, 1))
            plan = PaddingPlan(Padding.VALID, explicit, True)  # type: ignore[arg-type]
        elif plan.explicit is not None:
            return f"AveragePool padding {window.pads_begin}/{window.pads_end} with count_include_pad=0 is neither TFLite SAME nor VALID"
    return window, plan


def check_pool(info: GraphInfo, node: ir.Node) -> str | None:
    """MaxPool/AveragePool: 4-D input, 2-D kernel, no dilation, no Indices output, exact padding."""
    reason = check_window(info, node)
    if reason:
        return reason
    if len(node.outputs) > 1 and node.outputs[1] is not None and (info.consumers(node.outputs[1]) or info.is_graph_output(node.outputs[1])):
        return "MaxPool Indices output has no TFLite equivalent"
    planned = _pool_plan(info, node)
    return planned if isinstance(planned, str) else None


@register("MaxPool", "AveragePool", check=check_pool)
def lower_pool(ctx: LoweringContext, node: ir.Node) -> None:
    """MaxPool -> MAX_POOL_2D, AveragePool -> AVERAGE_POOL_2D (NHWC), with a fused activation."""
    window, plan = _pool_plan(ctx, node)  # type: ignore[misc]
    x_value = node.inputs[0]
    x = read_channels_last(ctx, node)
    is_max = node.op_type == "MaxPool"
    if plan.explicit is not None:
        x = pad_explicitly(ctx, x_value, x, plan, MAX_POOL_FILL if is_max else 0.0)
    activation, out_value = ctx.fused_activation(node)
    y = ctx.define_output_like(out_value, Layout.nhwc(4), x)  # int8 pools keep the input's parameters
    options = schema.Pool2DOptionsT()
    options.padding = plan.padding
    options.strideH, options.strideW = window.strides
    options.filterHeight, options.filterWidth = window.kernel
    options.fusedActivationFunction = activation
    ctx.emit(Builtin.MAX_POOL_2D if is_max else Builtin.AVERAGE_POOL_2D, [x], [y], options)


def check_global_pool(info: GraphInfo, node: ir.Node) -> str | None:
    shape = info.shape(node.inputs[0])
    if shape is None or len(shape) < 3:
        return "input must have a channel and at least one spatial axis"
    return None


@register("GlobalAveragePool", "GlobalMaxPool", check=check_global_pool)
def lower_global_pool(ctx: LoweringContext, node: ir.Node) -> None:
    """GlobalAveragePool -> MEAN, GlobalMaxPool -> REDUCE_MAX over the spatial axes, keep_dims=True;
    an int8 4-D GlobalAveragePool with its input's parameters -> VALID whole-window AVERAGE_POOL_2D."""
    x_value = node.inputs[0]
    layout = ctx.layout(x_value)
    shape = ctx.static_shape(x_value)
    rank = len(shape)
    whole_window = node.op_type == "GlobalAveragePool" and rank == 4 and None not in shape[2:] and ctx.precision(node) == "int8"
    if whole_window and same_element(ctx.element_type(x_value), ctx.element_type(node.outputs[0])):
        x = read_channels_last(ctx, node)
        y = ctx.define(node.outputs[0], Layout.nhwc(4))
        options = schema.Pool2DOptionsT()
        options.padding = Padding.VALID
        options.strideH = options.strideW = 1
        options.filterHeight, options.filterWidth = shape[2], shape[3]
        ctx.emit(Builtin.AVERAGE_POOL_2D, [x], [y], options)
        return
    x = ctx.read(x_value)
    axes = sorted(layout.stored_axis(axis) for axis in range(2, rank))
    code = Builtin.MEAN if node.op_type == "GlobalAveragePool" else Builtin.REDUCE_MAX
    # int8 MEAN requantizes; int8 REDUCE_MAX compares raw values (same parameters in and out)
    y = ctx.define(node.outputs[0], layout) if code == Builtin.MEAN else ctx.define_output_like(node.outputs[0], layout, x)
    options = schema.ReducerOptionsT()
    options.keepDims = True
    ctx.emit(code, [x, ctx.int32_constant(f"{node.name}/axes", axes)], [y], options)
