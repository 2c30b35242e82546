"""Data movement: Reshape, Flatten, Squeeze, Unsqueeze, Transpose, Concat, Slice, Pad.

These ops are where layouts are decided rather than followed (:mod:`edgecomp_tflite.layout`):

- **Transpose** never emits an operator: the output reuses the input's stored tensor with the
  permutation folded into its layout (:func:`~edgecomp_tflite.layout.after_transpose`). The
  tf2onnx models' NHWC -> NCHW Transpose after the input thus vanishes: the NCHW tensor is
  stored exactly as the NHWC input.
- **Reshape family** (ONNX C-order reshape, inferred output shape): the output takes the first of
  (its preferred layout, the ONNX layout) whose stored tensor has the same flat element order as
  the input's (:func:`~edgecomp_tflite.layout.same_flat_order`) -> one RESHAPE, or nothing when the
  stored shapes are equal. Otherwise, a flatten to [N, K] read only by fully connected layers keeps
  the stored order and records it as ``feature_order`` (the consumers permute their weight rows);
  anything else is brought to the ONNX layout first (a counted TRANSPOSE).
- **Concat, Slice, Pad** work in the stored layout with axes mapped through it
  (``Layout.stored_axis``): CONCATENATION, STRIDED_SLICE (begin/end/strides per stored axis,
  ``begin_mask``/``end_mask`` for whole axes), PAD / PADV2 / MIRROR_PAD (paddings per stored axis).

Spec sources: ONNX operator specs (Slice clamping rules, Pad modes); TFLite
``tensorflow/lite/kernels/strided_slice.cc``, ``pad.cc``, ``mirror_pad.cc``, ``concatenation.cc``.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from ai_edge_litert import schema_py_generated as schema

from edgecomp_tflite import layout as layouts
from edgecomp_tflite.context import GraphInfo, LoweringContext, attribute
from edgecomp_tflite.layout import Layout
from edgecomp_tflite.ops import register
from edgecomp_tflite.ops.elementwise import common_layout, read_broadcast
from edgecomp_tflite.ops.spatial import scalar_like

Builtin = schema.BuiltinOperator

#: ONNX Slice "to the end" sentinels are huge int64s; anything beyond this is clamped.
_HUGE = 2**31 - 1


# ------------------------------------------------------------------------------------- reshape family


def check_reshape(info: GraphInfo, node: ir.Node) -> str | None:
    """Reshape/Flatten/Squeeze/Unsqueeze: input and output shapes known, at most one dynamic dim each."""
    for value in (node.inputs[0], node.outputs[0]):
        shape = info.shape(value)
        if shape is None:
            return f"shape of {value.name!r} unknown after shape inference"
        if shape.count(None) > 1:
            return f"{value.name!r} has more than one dynamic dimension"
    return None


def _fully_connected_reader(info: GraphInfo, value: ir.Value, node: ir.Node) -> bool:
    """True when ``node`` reads ``value`` (through folded Q/DQ nodes) as the left operand of a
    fully connected layer with constant 2-D weights (Gemm without transA, or MatMul)."""
    if info.before_qdq(node.inputs[0]) is not value or any(v is not None and info.before_qdq(v) is value for v in node.inputs[1:]):
        return False
    weights = info.constant(info.input(node, 1))
    if weights is None or weights.ndim != 2:
        return False
    if node.op_type == "Gemm":
        return not attribute(node, "transA", 0)
    return node.op_type == "MatMul"


@register("Reshape", "Flatten", "Squeeze", "Unsqueeze", check=check_reshape)
def lower_reshape(ctx: LoweringContext, node: ir.Node) -> None:
    """Any reshape of the logical tensor (module docstring for the layout choice)."""
    x_value, y_value = node.inputs[0], node.outputs[0]
    in_shape, out_shape = ctx.static_shape(x_value), ctx.static_shape(y_value)
    if ctx.constant(x_value) is not None and not ctx.has_tensor(x_value):
        data = ctx.constant(x_value).reshape(out_shape)
        ctx.define(y_value, Layout.onnx(len(out_shape)), tensor=ctx.writer.add_constant(ctx.unique_name(y_value.name), data))
        return
    source = ctx.layout(x_value)
    x = ctx.read(x_value)
    candidates = [ctx.preferred_layout(y_value), Layout.onnx(len(out_shape))]
    if source.feature_order is None:
        for candidate in candidates:
            if layouts.same_flat_order(in_shape, source, out_shape, candidate):
                _reshape_into(ctx, y_value, x, candidate, out_shape)
                return
    elif list(out_shape) == list(in_shape):
        ctx.define(y_value, source, tensor=x)
        return
    consumers = ctx.readers(y_value)
    if (
        source.feature_order is None
        and len(out_shape) == 2
        and source.perm[0] == 0
        and out_shape[0] == in_shape[0]
        and consumers
        and all(_fully_connected_reader(ctx, y_value, consumer) for consumer in consumers)
        and None not in in_shape[1:]
    ):
        flattened = Layout(layouts.identity(2), layouts.flatten_feature_order(in_shape, source))
        _reshape_into(ctx, y_value, x, flattened, out_shape)
        return
    x = ctx.read(x_value, Layout.onnx(len(in_shape)))
    _reshape_into(ctx, y_value, x, Layout.onnx(len(out_shape)), out_shape)


def _reshape_into(ctx: LoweringContext, y_value: ir.Value, x: int, layout: Layout, out_shape: list) -> None:
    stored = layout.stored_shape(out_shape)
    if list(ctx.writer.tensor_shape(x)) == list(stored):
        ctx.define(y_value, layout, tensor=x)
        return
    y = ctx.define_output_like(y_value, layout, x)  # int8 RESHAPE copies bytes: input's parameters
    ctx.reshape(y_value, x, stored, suffix="shape", output=y)


@register("Transpose", check=check_reshape)
def lower_transpose(ctx: LoweringContext, node: ir.Node) -> None:
    """ONNX Transpose: no operator; the output's layout absorbs the permutation."""
    x_value = node.inputs[0]
    rank = len(ctx.static_shape(x_value))
    perm = attribute(node, "perm", list(reversed(range(rank))))
    source = ctx.layout(x_value)
    if ctx.constant(x_value) is not None and not ctx.has_tensor(x_value):
        data = np.transpose(ctx.constant(x_value), perm)
        ctx.define(node.outputs[0], Layout.onnx(rank), tensor=ctx.writer.add_constant(ctx.unique_name(node.outputs[0].name), data))
        return
    if source.feature_order is not None:
        source = Layout.onnx(rank)
    x = ctx.read(x_value, source)
    ctx.define(node.outputs[0], Layout(layouts.after_transpose(source.perm, perm)), tensor=x)


# ------------------------------------------------------------------------------------- concat


def check_concat(info: GraphInfo, node: ir.Node) -> str | None:
    shape = info.shape(node.outputs[0])
    if shape is None:
        return "output shape unknown"
    return None


@register("Concat", check=check_concat)
def lower_concat(ctx: LoweringContext, node: ir.Node) -> None:
    """ONNX Concat(axis) -> CONCATENATION on the stored axis, inputs in one shared layout."""
    out_value = node.outputs[0]
    rank = len(ctx.static_shape(out_value))
    layout = common_layout(ctx, list(node.inputs), out_value)
    if layout.feature_order is not None:
        layout = Layout.onnx(rank)
    inputs = [v for v in node.inputs if v is not None and 0 not in ctx.static_shape(v)]
    tensors = [read_broadcast(ctx, value, rank, layout) for value in inputs]
    activation, final_value = ctx.fused_activation(node)
    options = schema.ConcatenationOptionsT()
    options.axis = layout.stored_axis(attribute(node, "axis", 0))
    options.fusedActivationFunction = activation
    y = ctx.define(final_value, layout)
    # TFLite int8 spec: CONCATENATION inputs and output share one scale/zero point (TFLM requires it)
    tensors = [ctx.requantized(tensor, y) for tensor in tensors]
    ctx.emit(Builtin.CONCATENATION, tensors, [y], options)


# ------------------------------------------------------------------------------------- slice


def _slice_spec(info: GraphInfo, node: ir.Node) -> list[tuple[int, int, int, int]] | str:
    """Normalised (axis, begin, end, step) per sliced axis (ONNX Slice clamping rules); ``end`` of
    -1 with a negative step means "through index 0"."""
    shape = info.shape(node.inputs[0])
    if shape is None:
        return "input shape unknown"
    arrays = []
    for index, what in ((1, "starts"), (2, "ends"), (3, "axes"), (4, "steps")):
        value = info.input(node, index)
        if value is None:
            arrays.append(None)
            continue
        array = info.constant(value)
        if array is None:
            return f"Slice {what} must be constant"
        arrays.append([int(v) for v in array.reshape(-1)])
    starts, ends, axes, steps = arrays
    if starts is None or ends is None:
        return "Slice needs starts and ends"
    rank = len(shape)
    axes = axes if axes is not None else list(range(len(starts)))
    steps = steps if steps is not None else [1] * len(starts)
    spec = []
    for start, end, axis, step in zip(starts, ends, axes, steps):
        axis %= rank
        dim = shape[axis]
        if step == 0:
            return "Slice step 0 is invalid"
        if dim is None:
            if start == 0 and end >= _HUGE and step == 1:
                continue
            return f"Slice of the dynamic axis {axis}"
        if start < 0:
            start += dim
        if end < 0:
            end += dim
        if step > 0:
            start, end = min(max(start, 0), dim), min(max(end, 0), dim)
        else:
            start, end = min(max(start, 0), dim - 1), min(max(end, -1), dim - 1)
        spec.append((axis, start, end, step))
    return spec


def check_slice(info: GraphInfo, node: ir.Node) -> str | None:
    """Slice: constant starts/ends/axes/steps; sliced axes static."""
    spec = _slice_spec(info, node)
    return spec if isinstance(spec, str) else None


@register("Slice", check=check_slice)
def lower_slice(ctx: LoweringContext, node: ir.Node) -> None:
    """ONNX Slice -> STRIDED_SLICE in the input's layout (whole axes masked)."""
    x_value = node.inputs[0]
    rank = len(ctx.static_shape(x_value))
    layout = ctx.layout(x_value)
    spec = _slice_spec(ctx, node)
    if layout.feature_order is not None and any(axis == rank - 1 for axis, *_ in spec):  # type: ignore[misc]
        layout = Layout.onnx(rank)
    x = ctx.read(x_value, layout)
    by_axis = {axis: (start, end, step) for axis, start, end, step in spec}  # type: ignore[misc]
    begin, end, strides = [0] * rank, [0] * rank, [1] * rank
    begin_mask = end_mask = 0
    for stored_axis, logical_axis in enumerate(layout.perm):
        if logical_axis not in by_axis:
            begin_mask |= 1 << stored_axis
            end_mask |= 1 << stored_axis
            continue
        start, stop, step = by_axis[logical_axis]
        begin[stored_axis], end[stored_axis], strides[stored_axis] = start, stop, step
        if stop == -1 and step < 0:
            end_mask |= 1 << stored_axis
    options = schema.StridedSliceOptionsT()
    options.beginMask, options.endMask = begin_mask, end_mask
    operands = [x] + [ctx.int32_constant(f"{node.name}/{what}", values) for what, values in (("begin", begin), ("end", end), ("strides", strides))]
    ctx.emit(Builtin.STRIDED_SLICE, operands, [ctx.define_output_like(node.outputs[0], layout, x)], options)


# ------------------------------------------------------------------------------------- pad


def _pads(info: GraphInfo, node: ir.Node) -> list[int] | str:
    """ONNX pads [x1_begin, ..., xn_begin, x1_end, ..., xn_end] over every axis (``axes`` applied)."""
    rank = info.rank(node.inputs[0])
    if rank is None:
        return "input shape unknown"
    if len(node.inputs) > 1:
        pads = info.constant(node.inputs[1])
        if pads is None:
            return "Pad pads must be constant"
        pads = [int(p) for p in pads.reshape(-1)]
    else:
        pads = list(attribute(node, "pads", []))
    axes_value = info.input(node, 3)
    if axes_value is not None:
        axes = info.constant(axes_value)
        if axes is None:
            return "Pad axes must be constant"
        full = [0] * (2 * rank)
        for position, axis in enumerate(int(a) % rank for a in axes.reshape(-1)):
            full[axis], full[axis + rank] = pads[position], pads[position + len(axes.reshape(-1))]
        pads = full
    if len(pads) != 2 * rank:
        return f"Pad has {len(pads)} pads for rank {rank}"
    return pads


def check_pad(info: GraphInfo, node: ir.Node) -> str | None:
    """Pad: constant non-negative pads and constant value; mode constant or reflect."""
    pads = _pads(info, node)
    if isinstance(pads, str):
        return pads
    if any(p < 0 for p in pads):
        return "negative pads (cropping) are not lowered"
    mode = attribute(node, "mode", "constant")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    if mode not in ("constant", "reflect"):
        return f"Pad mode {mode!r} has no TFLite kernel"
    value = info.input(node, 2)
    if value is not None and info.constant(value) is None:
        return "Pad constant_value must be constant"
    return None


@register("Pad", check=check_pad)
def lower_pad(ctx: LoweringContext, node: ir.Node) -> None:
    """ONNX Pad -> PAD (zeros), PADV2 (other constant) or MIRROR_PAD (reflect), in the input's layout."""
    x_value = node.inputs[0]
    rank = len(ctx.static_shape(x_value))
    layout = ctx.layout(x_value)
    if layout.feature_order is not None:
        layout = Layout.onnx(rank)
    x = ctx.read(x_value, layout)
    pads = _pads(ctx, node)
    paddings = ctx.int32_constant(f"{node.name}/paddings", [[pads[axis], pads[axis + rank]] for axis in layout.perm])  # type: ignore[index]
    y = ctx.define_output_like(node.outputs[0], layout, x)  # int8 PAD copies bytes: input's parameters
    mode = attribute(node, "mode", "constant")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    if mode == "reflect":
        options = schema.MirrorPadOptionsT()
        options.mode = schema.MirrorPadMode.REFLECT
        ctx.emit(Builtin.MIRROR_PAD, [x, paddings], [y], options)
        return
    value = ctx.constant(ctx.input(node, 2)) if ctx.input(node, 2) is not None else None
    fill = 0.0 if value is None or value.size == 0 else float(value.reshape(-1)[0])
    if fill == 0.0:  # an int8 PAD pads with the zero point, i.e. real 0 (tensorflow/lite/kernels/pad.cc)
        ctx.emit(Builtin.PAD, [x, paddings], [y], schema.PadOptionsT())
    else:
        ctx.emit(Builtin.PADV2, [x, paddings, scalar_like(ctx, x_value, fill)], [y], schema.PadV2OptionsT())
