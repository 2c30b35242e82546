"""Shared helpers of the spatial ops (Conv, ConvTranspose, pools): attributes, padding, channels-last reads.

ONNX gives padding as ``auto_pad`` or explicit ``pads`` ([x1_begin, x2_begin, ..., x1_end, x2_end]);
TFLite kernels take ``Padding.SAME`` or ``Padding.VALID`` (``tensorflow/lite/kernels/padding.h``):

- VALID: no padding, ``out = floor((in - k_eff) / s) + 1``;
- SAME: ``out = ceil(in / s)``, total padding ``max((out - 1) * s + k_eff - in, 0)``, of which
  ``total // 2`` before and the rest after (the extra element at the end, ONNX ``SAME_UPPER``);

with ``k_eff = (k - 1) * d + 1``. Padded positions are zeros for convolutions and are left out of
max and average pooling (TFLite average pooling divides by the number of input elements in the
window). :func:`plan_padding` picks SAME or VALID when one reproduces the ONNX windows exactly,
and otherwise an explicit PAD (or PADV2 with a fill value) before a VALID op.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np
import onnx_ir as ir
from ai_edge_litert import schema_py_generated as schema

from edgecomp_tflite.context import (
    GraphInfo,
    LoweringContext,
    attribute,
    stored_quantization,
)
from edgecomp_tflite.layout import Layout

Padding = schema.Padding
Builtin = schema.BuiltinOperator


@dataclasses.dataclass(frozen=True)
class Window:
    """Sliding-window parameters of a 2-D spatial op, spatial axes in (H, W) order.

    Attributes:
        input_size, output_size: spatial sizes of input and output.
        kernel, strides, dilations: per spatial axis.
        pads_begin, pads_end: ONNX padding per spatial axis (after resolving ``auto_pad``).
    """

    input_size: tuple[int, int]
    output_size: tuple[int, int]
    kernel: tuple[int, int]
    strides: tuple[int, int]
    dilations: tuple[int, int]
    pads_begin: tuple[int, int]
    pads_end: tuple[int, int]

    def effective_kernel(self, axis: int) -> int:
        return (self.kernel[axis] - 1) * self.dilations[axis] + 1

    def reach_end(self, axis: int) -> int:
        """Elements past the input end that the last window touches (negative: it stops short)."""
        return (self.output_size[axis] - 1) * self.strides[axis] + self.effective_kernel(axis) - self.input_size[axis] - self.pads_begin[axis]


@dataclasses.dataclass(frozen=True)
class PaddingPlan:
    """How to express a :class:`Window`'s padding in TFLite.

    Attributes:
        padding: ``Padding.SAME`` or ``Padding.VALID`` for the op itself.
        explicit: ((top, bottom), (left, right)) for a PAD before a VALID op, or None.
        uses_padding: True when any window covers padded positions.
    """

    padding: int
    explicit: tuple[tuple[int, int], tuple[int, int]] | None = None
    uses_padding: bool = False


def same_padding_before(window: Window, axis: int) -> int | None:
    """TFLite SAME padding before the input along ``axis``, or None when SAME gives another output size."""
    size, stride = window.input_size[axis], window.strides[axis]
    if window.output_size[axis] != math.ceil(size / stride):
        return None
    total = max((window.output_size[axis] - 1) * stride + window.effective_kernel(axis) - size, 0)
    return total // 2


def plan_padding(window: Window) -> PaddingPlan:
    """SAME, VALID or explicit padding reproducing the ONNX windows exactly (module docstring)."""
    uses = any(window.pads_begin[a] > 0 or window.reach_end(a) > 0 for a in (0, 1))
    valid = all(
        window.pads_begin[a] == 0 and window.output_size[a] == (window.input_size[a] - window.effective_kernel(a)) // window.strides[a] + 1
        for a in (0, 1)
    )
    if valid:
        return PaddingPlan(Padding.VALID, None, uses)
    if all(same_padding_before(window, a) == window.pads_begin[a] for a in (0, 1)):
        return PaddingPlan(Padding.SAME, None, uses)
    explicit = tuple((window.pads_begin[a], max(window.reach_end(a), 0)) for a in (0, 1))
    return PaddingPlan(Padding.VALID, explicit, True)  # type: ignore[arg-type]


def onnx_pads(node: ir.Node, input_size: Sequence[int], output_size: Sequence[int], kernel: Sequence[int], strides: Sequence[int], dilations: Sequence[int]) -> tuple[tuple[int, int], tuple[int, int]]:
    """(pads_begin, pads_end) of a Conv/pool node after resolving ``auto_pad`` (ONNX operator spec).

    ``SAME_UPPER``/``SAME_LOWER`` pad ``max((ceil(in/s) - 1) * s + k_eff - in, 0)`` in total, the odd
    element at the end (UPPER) or the beginning (LOWER); ``VALID`` pads nothing; ``NOTSET`` reads
    ``pads`` (default zeros).
    """
    auto_pad = attribute(node, "auto_pad", "NOTSET")
    if isinstance(auto_pad, bytes):
        auto_pad = auto_pad.decode()
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        begin, end = [], []
        for size, k, s, d in zip(input_size, kernel, strides, dilations):
            total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
            small, large = total // 2, total - total // 2
            begin.append(small if auto_pad == "SAME_UPPER" else large)
            end.append(large if auto_pad == "SAME_UPPER" else small)
        return tuple(begin), tuple(end)  # type: ignore[return-value]
    if auto_pad == "VALID":
        return (0, 0), (0, 0)
    pads = attribute(node, "pads", [0, 0, 0, 0])
    return (pads[0], pads[1]), (pads[2], pads[3])


def window_of(info: GraphInfo, node: ir.Node, kernel: Sequence[int]) -> Window:
    """The :class:`Window` of a 2-D Conv/pool node (input 0 NCHW, static H, W)."""
    input_shape = info.shape(node.inputs[0])
    output_shape = info.shape(node.outputs[0])
    strides = tuple(attribute(node, "strides", [1, 1]))
    dilations = tuple(attribute(node, "dilations", [1, 1]))
    input_size, output_size = tuple(input_shape[2:4]), tuple(output_shape[2:4])
    begin, end = onnx_pads(node, input_size, output_size, kernel, strides, dilations)
    return Window(input_size, output_size, tuple(kernel), strides, dilations, begin, end)  # type: ignore[arg-type]


def check_window(info: GraphInfo, node: ir.Node) -> str | None:
    """Common support check: 4-D input/output with static spatial dims, 2-D kernel attributes."""
    input_shape, output_shape = info.shape(node.inputs[0]), info.shape(node.outputs[0])
    if input_shape is None or output_shape is None:
        return "input or output shape unknown"
    if len(input_shape) != 4:
        return f"only 2-D spatial ops (4-D NCHW input) are lowered; input has rank {len(input_shape)}"
    if any(dim is None for dim in (*input_shape[1:], *output_shape[1:])):
        return "channel and spatial dimensions must be static"
    auto_pad = attribute(node, "auto_pad", "NOTSET")
    if isinstance(auto_pad, bytes):
        auto_pad = auto_pad.decode()
    if auto_pad not in ("NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID"):
        return f"auto_pad {auto_pad!r} is not an ONNX value"
    return None


def read_channels_last(ctx: LoweringContext, node: ir.Node) -> int:
    """Input 0 of a spatial node stored NHWC (converted if stored otherwise)."""
    return ctx.read(node.inputs[0], Layout.nhwc(4))


def pad_explicitly(ctx: LoweringContext, value: ir.Value, tensor: int, plan: PaddingPlan, fill: float) -> int:
    """PAD (``fill == 0``) or PADV2 an NHWC tensor by ``plan.explicit`` on H and W; returns the padded tensor.

    The fill value is written in ``value``'s element type (a quantized tensor gets the quantized fill).
    """
    (top, bottom), (left, right) = plan.explicit  # type: ignore[misc]
    paddings = ctx.int32_constant(f"{value.name}/paddings", [[0, 0], [top, bottom], [left, right], [0, 0]])
    shape = ctx.writer.tensor_shape(tensor)
    padded_shape = [shape[0], shape[1] + top + bottom, shape[2] + left + right, shape[3]]
    output = ctx.new_intermediate(value, "padded", padded_shape)
    if fill == 0.0:  # an int8 PAD pads with the zero point, i.e. real 0 (tensorflow/lite/kernels/pad.cc)
        ctx.emit(Builtin.PAD, [tensor, paddings], [output], schema.PadOptionsT())
    else:
        ctx.emit(Builtin.PADV2, [tensor, paddings, scalar_like(ctx, value, fill)], [output], schema.PadV2OptionsT())
    return output


def scalar_like(ctx: LoweringContext, value: ir.Value, real: float) -> int:
    """A scalar constant holding ``real`` in ``value``'s element type (quantized and clamped when
    ``value`` is quantized: ``q = clip(round(real / scale) + zero_point)``)."""
    element = ctx.element_type(value)
    if element.quantization is None:
        return ctx.writer.add_constant(ctx.unique_name(f"{value.name}/fill"), np.asarray(real, dtype=element.dtype))
    info = np.iinfo(element.dtype)
    scale = float(np.ravel(element.quantization.scale)[0])
    zero_point = int(np.ravel(element.quantization.zero_point)[0])
    q = np.clip(np.round(np.clip(real, -1e30, 1e30) / scale) + zero_point, info.min, info.max).astype(element.dtype)
    return ctx.writer.add_constant(ctx.unique_name(f"{value.name}/fill"), q, quantization=stored_quantization(element.quantization, None))
