"""Conv and ConvTranspose -> CONV_2D, DEPTHWISE_CONV_2D, TRANSPOSE_CONV.

Layouts (ONNX operator specs; TFLite ``tensorflow/lite/kernels/conv.cc``, ``depthwise_conv.cc``,
``transpose_conv.cc``):

- ONNX Conv: X [N, C, H, W], W [O, C/group, kH, kW], B [O] -> Y [N, O, H', W'].
- CONV_2D: input [N, H, W, C], filter [O, kH, kW, C/groups], bias [O] -> [N, H', W', O]; the filter
  is ``W`` transposed by (0, 2, 3, 1). A filter with fewer input channels than the input is a grouped
  convolution (``groups = C / filter_C``, operator version 6).
- DEPTHWISE_CONV_2D (ONNX ``group == C`` and ``W.shape[1] == 1``): filter [1, kH, kW, O], i.e. ``W``
  transposed by (1, 2, 3, 0), ``depth_multiplier = O / C``; output channel ``c * m + j`` reads input
  channel ``c``, as ONNX group ``c`` does.
- ONNX ConvTranspose: X [N, C, H, W], W [C, O/group, kH, kW] -> Y [N, O, H', W'] with
  ``H' = s * (H - 1) + output_padding + k - pad_begin - pad_end``.
- TRANSPOSE_CONV: inputs (output_shape int32 [4], filter [O, kH, kW, C], input [N, H, W, C],
  bias [O]); the filter is ``W`` transposed by (1, 2, 3, 0). Output position ``o`` receives input
  ``i`` through tap ``t`` when ``o = i * s + t - pad_before``, with ``pad_before = 0`` (VALID) or the
  SAME padding computed from the output size; positions no tap reaches get the bias only, as in ONNX.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from ai_edge_litert import schema_py_generated as schema

from edgecomp_tflite.context import GraphInfo, LoweringContext, attribute
from edgecomp_tflite.layout import Layout
from edgecomp_tflite.ops import register
from edgecomp_tflite.ops.spatial import (
    Window,
    check_window,
    pad_explicitly,
    plan_padding,
    read_channels_last,
    window_of,
)

Builtin = schema.BuiltinOperator
Padding = schema.Padding
Activation = schema.ActivationFunctionType

#: How grouped (not depthwise) convolutions are written: one CONV_2D with a grouped filter
#: ("native", LiteRT runs it), or SPLIT + one CONV_2D per group + CONCATENATION ("split").
GROUPED_CONVOLUTION_MODES = ("native", "split")


def _check_weights(info: GraphInfo, node: ir.Node) -> str | None:
    weight = info.constant(info.input(node, 1))
    if weight is None:
        return "weights are not constant (TFLite convolutions take constant filters)"
    if weight.ndim != 4:
        return f"weights have rank {weight.ndim}; only 2-D convolutions are lowered"
    bias = info.input(node, 2)
    if bias is not None and info.constant(bias) is None:
        return "bias is not constant"
    return None


def check_conv(info: GraphInfo, node: ir.Node) -> str | None:
    """Conv: 4-D NCHW input, constant 4-D weights and bias, static spatial dims."""
    reason = check_window(info, node) or _check_weights(info, node)
    if reason:
        return reason
    weight = info.constant(node.inputs[1])
    group = attribute(node, "group", 1)
    channels = info.shape(node.inputs[0])[1]
    if channels != weight.shape[1] * group:
        return f"input has {channels} channels but weights expect {weight.shape[1]} x group {group}"
    return None


def _conv_options(code: int, window: Window, padding: int, activation: int, depth_multiplier: int = 1):
    options = schema.DepthwiseConv2DOptionsT() if code == Builtin.DEPTHWISE_CONV_2D else schema.Conv2DOptionsT()
    options.padding = padding
    options.strideH, options.strideW = window.strides
    options.dilationHFactor, options.dilationWFactor = window.dilations
    options.fusedActivationFunction = activation
    if code == Builtin.DEPTHWISE_CONV_2D:
        options.depthMultiplier = depth_multiplier
    return options


@register("Conv", check=check_conv)
def lower_conv(ctx: LoweringContext, node: ir.Node) -> None:
    """ONNX Conv -> CONV_2D (plain or grouped), DEPTHWISE_CONV_2D, or SPLIT/CONV_2D/CONCATENATION.

    A following Relu/Relu6/Clip is fused; padding becomes SAME/VALID or an explicit PAD
    (:func:`edgecomp_tflite.ops.spatial.plan_padding`).
    """
    x_value, w_value = node.inputs[0], node.inputs[1]
    b_value = ctx.input(node, 2)
    weight = ctx.constant(w_value)
    out_channels, group_channels, kernel_h, kernel_w = weight.shape
    channels = ctx.static_shape(x_value)[1]
    group = attribute(node, "group", 1)
    window = window_of(ctx, node, (kernel_h, kernel_w))
    plan = plan_padding(window)
    x = read_channels_last(ctx, node)
    if plan.explicit is not None:
        x = pad_explicitly(ctx, x_value, x, plan, 0.0)
    activation, out_value = ctx.fused_activation(node)
    y = ctx.define(out_value, Layout.nhwc(4))
    if group > 1 and group == channels and group_channels == 1:
        bias = ctx.bias(b_value, out_channels, x_value, w_value, name=f"{node.name}/bias")
        filter_ = ctx.weight(w_value, (1, 2, 3, 0))
        options = _conv_options(Builtin.DEPTHWISE_CONV_2D, window, plan.padding, activation, out_channels // channels)
        ctx.emit(Builtin.DEPTHWISE_CONV_2D, [x, filter_, bias], [y], options)
    elif group > 1 and ctx.settings.grouped_convolution == "split":
        _split_grouped(ctx, node, x, y, window, plan.padding, activation, group)
    else:
        bias = ctx.bias(b_value, out_channels, x_value, w_value, name=f"{node.name}/bias")
        filter_ = ctx.weight(w_value, (0, 2, 3, 1))
        ctx.emit(Builtin.CONV_2D, [x, filter_, bias], [y], _conv_options(Builtin.CONV_2D, window, plan.padding, activation), grouped_convolution=group > 1)


def _split_grouped(ctx: LoweringContext, node: ir.Node, x: int, y: int, window: Window, padding: int, activation: int, group: int) -> None:
    """A grouped convolution as SPLIT (channels) + one CONV_2D per group + CONCATENATION (channels)."""
    x_value, w_value = node.inputs[0], node.inputs[1]
    out_channels = ctx.constant(w_value).shape[0]
    per_group = out_channels // group
    shape = ctx.writer.tensor_shape(x)
    parts = [ctx.new_intermediate(x_value, f"group{g}", [*shape[:3], shape[3] // group]) for g in range(group)]
    split = schema.SplitOptionsT()
    split.numSplits = group
    ctx.emit(Builtin.SPLIT, [ctx.int32_constant(f"{node.name}/split_axis", np.asarray(3)), x], parts, split)
    y_shape = ctx.writer.tensor_shape(y)
    results = []
    for g, part in enumerate(parts):
        channels = slice(g * per_group, (g + 1) * per_group)
        bias = ctx.bias(ctx.input(node, 2), out_channels, x_value, w_value, name=f"{node.name}/bias{g}", channels=channels)
        filter_ = ctx.weight(w_value, (0, 2, 3, 1), output_channels=channels, name=f"{w_value.name}/group{g}")
        result = ctx.new_intermediate(node.outputs[0], f"group{g}", [*y_shape[:3], per_group])
        ctx.emit(Builtin.CONV_2D, [part, filter_, bias], [result], _conv_options(Builtin.CONV_2D, window, padding, Activation.NONE))
        results.append(result)
    concat = schema.ConcatenationOptionsT()
    concat.axis = 3
    concat.fusedActivationFunction = activation
    ctx.emit(Builtin.CONCATENATION, results, [y], concat)


def _transpose_pads(info: GraphInfo, node: ir.Node) -> tuple[list[int], list[int]]:
    """ConvTranspose (pad_begin per axis, output size per axis) following the ONNX spec's
    ``total_padding`` rule for ``auto_pad``/``output_shape`` (ONNX Runtime: NOTSET with an
    explicit ``output_shape`` pads like SAME_LOWER)."""
    input_size = info.shape(node.inputs[0])[2:4]
    output_size = info.shape(node.outputs[0])[2:4]
    kernel = info.constant(node.inputs[1]).shape[2:4]
    strides = attribute(node, "strides", [1, 1])
    output_padding = attribute(node, "output_padding", [0, 0])
    auto_pad = attribute(node, "auto_pad", "NOTSET")
    if isinstance(auto_pad, bytes):
        auto_pad = auto_pad.decode()
    if auto_pad in ("SAME_UPPER", "SAME_LOWER") or (auto_pad == "NOTSET" and attribute(node, "output_shape") is not None):
        begin = []
        for size, out, k, s, extra in zip(input_size, output_size, kernel, strides, output_padding):
            total = s * (size - 1) + extra + k - out
            begin.append(total // 2 if auto_pad == "SAME_UPPER" else total - total // 2)
        return begin, list(output_size)
    if auto_pad == "VALID":
        return [0, 0], list(output_size)
    pads = attribute(node, "pads", [0, 0, 0, 0])
    return [pads[0], pads[1]], list(output_size)


def check_conv_transpose(info: GraphInfo, node: ir.Node) -> str | None:
    """ConvTranspose: group 1, dilation 1, constant weights, non-negative padding."""
    reason = check_window(info, node) or _check_weights(info, node)
    if reason:
        return reason
    if attribute(node, "group", 1) != 1:
        return "grouped ConvTranspose has no TFLite kernel"
    if any(d != 1 for d in attribute(node, "dilations", [1, 1])):
        return "dilated ConvTranspose has no TFLite kernel"
    begin, output_size = _transpose_pads(info, node)
    if any(b < 0 for b in begin):
        return f"negative padding {begin} is not supported"
    input_size = info.shape(node.inputs[0])[2:4]
    kernel = info.constant(node.inputs[1]).shape[2:4]
    for i, o, b, s, k in zip(input_size, output_size, begin, attribute(node, "strides", [1, 1]), kernel):
        if b + o > (i - 1) * s + k + s - 1:
            return "ConvTranspose output extends more than stride - 1 past the last tap; no TFLite TRANSPOSE_CONV output_shape gives it"
    return None


@register("ConvTranspose", check=check_conv_transpose)
def lower_conv_transpose(ctx: LoweringContext, node: ir.Node) -> None:
    """ONNX ConvTranspose -> TRANSPOSE_CONV (+ STRIDED_SLICE when the ONNX crop is neither VALID nor SAME).

    The activation is not fused (fused TRANSPOSE_CONV activations need version 4, which TFLM lacks).
    """
    x_value, w_value, b_value = node.inputs[0], node.inputs[1], ctx.input(node, 2)
    weight = ctx.constant(w_value)
    out_channels = weight.shape[1]
    kernel = weight.shape[2:4]
    strides = attribute(node, "strides", [1, 1])
    begin, output_size = _transpose_pads(ctx, node)
    x = read_channels_last(ctx, node)
    if all(b == 0 for b in begin):
        padding, full_size = Padding.VALID, output_size
    elif all(transpose_conv_same_before(output_size[a], kernel[a], strides[a]) == begin[a] for a in (0, 1)):
        padding, full_size = Padding.SAME, output_size
    else:  # VALID over the whole result, then crop; TFLite accepts up to stride - 1 extra rows (bias only)
        input_size = ctx.static_shape(x_value)[2:4]
        full = [(i - 1) * s + k for i, s, k in zip(input_size, strides, kernel)]
        padding, full_size = Padding.VALID, [max(b + o, f) for b, o, f in zip(begin, output_size, full)]
    y_value = node.outputs[0]
    y = ctx.define(y_value, Layout.nhwc(4))
    batch = ctx.static_shape(x_value)[0]
    target = y if full_size == output_size else ctx.new_intermediate(y_value, "uncropped", [batch, *full_size, out_channels])
    output_shape = _output_shape_operand(ctx, node, x, batch, [*full_size, out_channels])
    filter_ = ctx.weight(w_value, (1, 2, 3, 0))
    bias = ctx.bias(b_value, out_channels, x_value, w_value, name=f"{node.name}/bias")
    options = schema.TransposeConvOptionsT()
    options.padding = padding
    options.strideH, options.strideW = strides
    ctx.emit(Builtin.TRANSPOSE_CONV, [output_shape, filter_, x, bias], [target], options)
    if target != y:
        begin_tensor = ctx.int32_constant(f"{node.name}/crop_begin", [0, begin[0], begin[1], 0])
        end_tensor = ctx.int32_constant(f"{node.name}/crop_end", [0, begin[0] + output_size[0], begin[1] + output_size[1], 0])
        strides_tensor = ctx.int32_constant(f"{node.name}/crop_strides", [1, 1, 1, 1])
        crop = schema.StridedSliceOptionsT()
        crop.beginMask, crop.endMask = 0b1001, 0b1001  # whole batch and channel axes
        ctx.emit(Builtin.STRIDED_SLICE, [target, begin_tensor, end_tensor, strides_tensor], [y], crop)


def transpose_conv_same_before(output_size: int, kernel: int, stride: int) -> int:
    """TRANSPOSE_CONV SAME padding before the output: the forward-convolution SAME padding for an
    input of ``output_size`` (``tensorflow/lite/kernels/padding.h``, applied to the output size):
    ``max((ceil(out / s) - 1) * s + k - out, 0) // 2``."""
    return max((-(-output_size // stride) - 1) * stride + kernel - output_size, 0) // 2


def _output_shape_operand(ctx: LoweringContext, node: ir.Node, x: int, batch: int | None, rest: list[int]) -> int:
    """TRANSPOSE_CONV's int32 output_shape [N, H, W, C]: constant for a static batch; for a dynamic
    batch SHAPE(input)[0:1] concatenated with the constant [H, W, C]."""
    if batch is not None:
        return ctx.int32_constant(f"{node.name}/output_shape", [batch, *rest])
    shape = ctx.writer.add_tensor(ctx.unique_name(f"{node.name}/input_shape"), [4], np.int32)
    shape_options = schema.ShapeOptionsT()
    shape_options.outType = schema.TensorType.INT32
    ctx.emit(Builtin.SHAPE, [x], [shape], shape_options)
    batch_tensor = ctx.writer.add_tensor(ctx.unique_name(f"{node.name}/batch"), [1], np.int32)
    ctx.emit(
        Builtin.STRIDED_SLICE,
        [shape, ctx.int32_constant(f"{node.name}/b0", [0]), ctx.int32_constant(f"{node.name}/b1", [1]), ctx.int32_constant(f"{node.name}/b_step", [1])],
        [batch_tensor],
        schema.StridedSliceOptionsT(),
    )
    output_shape = ctx.writer.add_tensor(ctx.unique_name(f"{node.name}/output_shape"), [4], np.int32)
    concat = schema.ConcatenationOptionsT()
    concat.axis = 0
    ctx.emit(Builtin.CONCATENATION, [batch_tensor, ctx.int32_constant(f"{node.name}/output_hwc", rest)], [output_shape], concat)
    return output_shape
