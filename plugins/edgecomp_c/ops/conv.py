"""CONV_2D, DEPTHWISE_CONV_2D and FULLY_CONNECTED: int8 activations, int8 weights, int32 bias.

Each builder computes the kernel parameters the way the LiteRT 2.3 ``Prepare`` does
(``tensorflow/lite/kernels/conv.cc``, ``depthwise_conv.cc``, ``fully_connected.cc``) and checks what
that ``Prepare`` checks, so the C kernels in ``runtime/ec_conv.c`` are bit-exact with the reference
kernels (``OpResolverType.BUILTIN_REF``):

- output size and padding: ``ComputePaddingHeightWidth`` (``kernels/padding.h``); only the leading
  padding is passed, the reference kernels skip every tap outside the image;
- CONV_2D / DEPTHWISE_CONV_2D requantization: ``PopulateConvolutionQuantizationParams``
  (``kernels/kernel_util.cc``): per output channel ``QuantizeMultiplier(double(s_in) *
  double(s_w[c]) / double(s_out))``, a per-tensor filter scale broadcast to every channel; applied
  with the double-rounding ``MultiplyByQuantizedMultiplier`` (LiteRT is built without
  ``TFLITE_SINGLE_ROUNDING``; tests/test_kernels_conv.py checks this on rounding ties);
- FULLY_CONNECTED requantization: the reference kernel does it in double precision,
  ``round(double(acc) * (double(s_in) * double(s_w) / double(s_out)))``
  (``reference/integer_ops/fully_connected.h``, the overloads taking float scales, per-tensor and
  per-channel); the builder passes that double scale exactly, as a 53-bit mantissa and a
  power-of-two exponent, and the kernel reproduces both roundings in integers;
- fused activation: ``CalculateActivationRangeQuantized`` (:func:`~edgecomp_c.ops.quant.activation_range`).
"""

from __future__ import annotations

import math

import numpy as np
from ai_edge_litert import schema_py_generated as schema

from edgecomp_c.ops import builder
from edgecomp_c.ops.quant import activation_range, quantize_multiplier
from edgecomp_c.program import KernelCall, OpView, TensorInfo, Unlowerable

__all__ = ["compute_padding", "conv_2d", "depthwise_conv_2d", "double_scale", "fully_connected", "output_size"]


# ------------------------------------------------------------------------------------------ shared


def output_size(padding: int, image: int, filter_size: int, stride: int, dilation: int) -> int:
    """``ComputeOutSize`` (``kernels/padding.h``): output length of one spatial axis.

    Args:
        padding: ``schema.Padding.SAME`` or ``schema.Padding.VALID``.
        image, filter_size, stride, dilation: the axis' input length, filter length, stride and
            dilation factor.

    Raises:
        Unlowerable: another padding, a non-positive size/stride/dilation, or an empty output.
    """
    if padding not in (schema.Padding.SAME, schema.Padding.VALID):
        raise Unlowerable(f"padding {padding} is neither SAME nor VALID")
    if image <= 0 or filter_size <= 0 or stride <= 0 or dilation <= 0:
        raise Unlowerable(f"invalid window: image {image}, filter {filter_size}, stride {stride}, dilation {dilation}")
    effective = (filter_size - 1) * dilation + 1
    numerator = image + stride - 1 if padding == schema.Padding.SAME else image + stride - effective
    if numerator < stride:  # C++ truncating division gives 0 or less: no output
        raise Unlowerable(f"the filter (effective size {effective}) is larger than the input ({image}) with VALID padding")
    return numerator // stride


def compute_padding(stride: int, dilation: int, image: int, filter_size: int, out: int) -> int:
    """``ComputePaddingWithOffset``: the padding before the first element of one spatial axis,
    ``max((out - 1) * stride + effective_filter - image, 0) // 2`` (SAME puts the odd element after)."""
    effective = (filter_size - 1) * dilation + 1
    total = max((out - 1) * stride + effective - image, 0)
    return total // 2


def double_scale(value: float) -> tuple[int, int]:
    """A double as ``mantissa * 2**exponent`` with ``mantissa`` in ``[2**52, 2**53)`` (``(0, 0)`` for 0).

    Exact: every finite double has a 53-bit significand. The kernel parameter of
    ``ec_multiply_by_double_scale``."""
    if value == 0.0:
        return 0, 0
    if not math.isfinite(value) or value < 0.0:
        raise Unlowerable(f"effective output scale {value} is not a finite non-negative number")
    fraction, exponent = math.frexp(value)
    return int(fraction * (1 << 53)), exponent - 53


def _check_int8_activations(input: TensorInfo | None, output: TensorInfo) -> None:
    if input is None:
        raise Unlowerable("no input tensor")
    for tensor in (input, output):
        if tensor.dtype != np.int8:
            raise Unlowerable(f"tensor {tensor.name!r} is {np.dtype(tensor.dtype).name}; only int8 activations have a C kernel (float, hybrid and int16 do not)")
        if tensor.scale is None or tensor.scale.size != 1:
            raise Unlowerable(f"tensor {tensor.name!r} must be quantized per-tensor")


def _check_filter(filter: TensorInfo | None, channels: int, axis: int, *, zero_point_allowed: bool = False) -> np.ndarray:
    """The filter's scales broadcast to ``channels`` output channels (``PopulateConvolutionQuantizationParams``).

    Raises:
        Unlowerable: not int8, not quantized, a non-zero zero point unless ``zero_point_allowed``
            (the int8 spec's symmetric weights: TFLite's CONV_2D rejects one, its per-channel
            kernels ignore it), or per-channel scales along another axis or of another count.
    """
    if filter is None:
        raise Unlowerable("no filter tensor")
    if filter.dtype != np.int8:
        raise Unlowerable(f"filter {filter.name!r} is {np.dtype(filter.dtype).name}; only int8 weights have a C kernel")
    if filter.scale is None:
        raise Unlowerable(f"filter {filter.name!r} is not quantized")
    if not zero_point_allowed and filter.zero_point is not None and np.any(filter.zero_point != 0):
        raise Unlowerable(f"filter {filter.name!r} has a non-zero zero point; int8 weights must be symmetric")
    per_channel_ok = filter.scale.size == channels and filter.quantized_dimension == axis and filter.shape[axis] == channels
    if filter.scale.size != 1 and not per_channel_ok:
        raise Unlowerable(f"filter {filter.name!r} has {filter.scale.size} scales along axis {filter.quantized_dimension}; expected 1 or {channels} along axis {axis}")
    return np.broadcast_to(filter.scale.astype(np.float32), (channels,))


def _check_bias(bias: TensorInfo | None, channels: int) -> None:
    if bias is None:
        return
    if bias.dtype != np.int32:
        raise Unlowerable(f"bias {bias.name!r} is {np.dtype(bias.dtype).name}; only int32 bias has a C kernel")
    if bias.numel != channels:
        raise Unlowerable(f"bias {bias.name!r} has {bias.numel} elements for {channels} output channels")


def _per_channel_multipliers(input: TensorInfo, filter_scales: np.ndarray, output: TensorInfo) -> tuple[np.ndarray, np.ndarray]:
    """``PopulateConvolutionQuantizationParams``: per channel ``QuantizeMultiplier`` of
    ``double(input_scale) * double(filter_scale[c]) / double(output_scale)``; int32 arrays."""
    input_scale, output_scale = input.single_scale(), output.single_scale()
    pairs = [quantize_multiplier(input_scale * float(scale) / output_scale) for scale in filter_scales]
    return np.array([m for m, _ in pairs], dtype=np.int32), np.array([s for _, s in pairs], dtype=np.int32)


def _window(op: OpView, input: TensorInfo, kernel_hw: tuple[int, int], output: TensorInfo, output_depth: int) -> dict[str, int]:
    """Strides, dilations, output size and leading padding (``ComputePaddingHeightWidth``); checks
    the output tensor's shape against them."""
    options = op.options
    if options is None:
        raise Unlowerable("no builtin options")
    stride_h, stride_w = int(options.strideH), int(options.strideW)
    dilation_h, dilation_w = int(options.dilationHFactor), int(options.dilationWFactor)
    _, in_h, in_w, _ = input.shape
    out_h = output_size(options.padding, in_h, kernel_hw[0], stride_h, dilation_h)
    out_w = output_size(options.padding, in_w, kernel_hw[1], stride_w, dilation_w)
    expected = (input.shape[0], out_h, out_w, output_depth)
    if tuple(output.shape) != expected:
        raise Unlowerable(f"output shape {list(output.shape)} differs from the computed {list(expected)}")
    return {
        "output_height": out_h,
        "output_width": out_w,
        "stride_height": stride_h,
        "stride_width": stride_w,
        "dilation_height": dilation_h,
        "dilation_width": dilation_w,
        "pad_height": compute_padding(stride_h, dilation_h, in_h, kernel_hw[0], out_h),
        "pad_width": compute_padding(stride_w, dilation_w, in_w, kernel_hw[1], out_w),
    }


def _operands(op: OpView) -> tuple[TensorInfo, TensorInfo | None, TensorInfo | None, TensorInfo]:
    if len(op.inputs) not in (2, 3) or len(op.outputs) != 1:
        raise Unlowerable(f"{len(op.inputs)} inputs and {len(op.outputs)} outputs; expected 2 or 3 and 1")
    input, filter = op.inputs[0], op.inputs[1]
    bias = op.inputs[2] if len(op.inputs) == 3 else None
    output = op.outputs[0]
    _check_int8_activations(input, output)
    return input, filter, bias, output


def _rank4(*tensors: TensorInfo) -> None:
    for tensor in tensors:
        if len(tensor.shape) != 4:
            raise Unlowerable(f"tensor {tensor.name!r} has rank {len(tensor.shape)}; expected 4 (NHWC)")
        if min(tensor.shape) <= 0:
            raise Unlowerable(f"tensor {tensor.name!r} has an empty dimension {list(tensor.shape)}")


def _call(function: str, params_type: str, params: dict, arrays: dict, input, filter, bias, output) -> KernelCall:
    """The kernel call; an operator without bias calls the ``_nobias`` variant (no bias pointer)."""
    tensors = [input.index, filter.index] + ([bias.index] if bias is not None else []) + [output.index]
    return KernelCall(function if bias is not None else f"{function}_nobias", params_type, params, arrays, tensors)


def _spatial_operands(op: OpView) -> tuple[TensorInfo, TensorInfo, TensorInfo | None, TensorInfo]:
    """CONV_2D / DEPTHWISE_CONV_2D operands: int8 activations, a filter, all rank 4 (NHWC)."""
    input, filter, bias, output = _operands(op)
    if filter is None:
        raise Unlowerable("no filter tensor")
    _rank4(input, filter, output)
    return input, filter, bias, output


def _spatial_call(op: OpView, function: str, params_type: str, operands: tuple[TensorInfo, TensorInfo, TensorInfo | None, TensorInfo], *, filter_axis: int, depth_field: tuple[str, int]) -> KernelCall:
    """The part of CONV_2D's and DEPTHWISE_CONV_2D's ``Prepare`` they share, as the kernel call.

    Checks the filter (scales along ``filter_axis``) and the bias, computes the window
    (:func:`_window`), the per-channel multipliers and the activation range, and fills the
    parameter struct; ``ec_conv_params`` and ``ec_depthwise_conv_params`` differ only in the field
    ``depth_field`` (``filter_input_depth`` or ``depth_multiplier``), which follows ``filter_width``.
    The filter is ``[*, KH, KW, *]``, its output channels along ``filter_axis``.
    """
    input, filter, bias, output = operands
    _, kernel_h, kernel_w, _ = filter.shape
    output_depth = filter.shape[filter_axis]
    scales = _check_filter(filter, output_depth, filter_axis)
    _check_bias(bias, output_depth)
    window = _window(op, input, (kernel_h, kernel_w), output, output_depth)
    multiplier, shift = _per_channel_multipliers(input, scales, output)
    act_min, act_max = activation_range(op.options.fusedActivationFunction, output)
    params = {
        "batches": input.shape[0],
        "input_height": input.shape[1],
        "input_width": input.shape[2],
        "input_depth": input.shape[3],
        "filter_height": kernel_h,
        "filter_width": kernel_w,
        depth_field[0]: depth_field[1],
        "output_height": window["output_height"],
        "output_width": window["output_width"],
        "output_depth": output_depth,
        **{key: window[key] for key in ("stride_height", "stride_width", "dilation_height", "dilation_width", "pad_height", "pad_width")},
        "input_offset": -input.single_zero_point(),
        "output_offset": output.single_zero_point(),
        "activation_min": act_min,
        "activation_max": act_max,
        "output_multiplier": "output_multiplier",
        "output_shift": "output_shift",
    }
    arrays = {"output_multiplier": ("int32_t", multiplier), "output_shift": ("int32_t", shift)}
    return _call(function, params_type, params, arrays, input, filter, bias, output)


# ------------------------------------------------------------------------------------------ CONV_2D


@builder("CONV_2D")
def conv_2d(op: OpView) -> KernelCall:
    """CONV_2D -> ``ec_conv_s8(params, input, filter, bias, output)`` (``ec_conv_s8_nobias`` without bias).

    Tensors: input int8 ``[N, H, W, Cin]``, filter int8 ``[Cout, KH, KW, Cin / groups]`` (per-channel
    scales along axis 0, or one scale), bias int32 ``[Cout]`` (optional), output int8
    ``[N, OH, OW, Cout]``. Grouped convolution (``Cin / filter Cin`` groups, CONV_2D version 6) is
    the reference kernel's. Semantics: ``reference_integer_ops::ConvPerChannel``; parameters:
    ``conv.cc`` ``Prepare``.
    """
    operands = _spatial_operands(op)
    input, filter, _, _ = operands
    output_depth, _, _, filter_depth = filter.shape
    input_depth = input.shape[3]
    if input_depth % filter_depth or output_depth % (input_depth // filter_depth):
        raise Unlowerable(f"filter input depth {filter_depth} does not divide input depth {input_depth} into groups of output channels {output_depth}")
    return _spatial_call(op, "ec_conv_s8", "ec_conv_params", operands, filter_axis=0, depth_field=("filter_input_depth", filter_depth))


# ------------------------------------------------------------------------------------------ DEPTHWISE_CONV_2D


@builder("DEPTHWISE_CONV_2D")
def depthwise_conv_2d(op: OpView) -> KernelCall:
    """DEPTHWISE_CONV_2D -> ``ec_depthwise_conv_s8(params, input, filter, bias, output)``
    (``ec_depthwise_conv_s8_nobias`` without bias).

    Tensors: input int8 ``[N, H, W, C]``, filter int8 ``[1, KH, KW, C * M]`` (per-channel scales
    along axis 3, or one scale), bias int32 ``[C * M]`` (optional), output int8 ``[N, OH, OW, C * M]``.
    The depth multiplier ``M`` is ``filter channels / input channels``, from the shapes as TFLite
    computes it (``ComputeDepthMultiplier``), not the option. Semantics:
    ``reference_integer_ops::DepthwiseConvPerChannel``; parameters: ``depthwise_conv.cc`` ``Prepare``.
    """
    operands = _spatial_operands(op)
    input, filter, _, _ = operands
    one, _, _, output_depth = filter.shape
    input_depth = input.shape[3]
    if one != 1:
        raise Unlowerable(f"filter {filter.name!r} has shape {list(filter.shape)}; expected [1, KH, KW, C*M]")
    if output_depth % input_depth:
        raise Unlowerable(f"filter channels {output_depth} are not a multiple of input channels {input_depth}")
    return _spatial_call(op, "ec_depthwise_conv_s8", "ec_depthwise_conv_params", operands, filter_axis=3, depth_field=("depth_multiplier", output_depth // input_depth))


# ------------------------------------------------------------------------------------------ FULLY_CONNECTED


@builder("FULLY_CONNECTED")
def fully_connected(op: OpView) -> KernelCall:
    """FULLY_CONNECTED -> ``ec_fully_connected_s8(params, input, filter, bias, output)``
    (``ec_fully_connected_s8_nobias`` without bias).

    Tensors: input int8 of any shape whose element count is ``rows * K``, filter int8 ``[N, K]``
    (per-channel scales along axis 0, or one scale and then any zero point), bias int32 ``[N]``
    (optional), output int8 ``[rows, N]`` (or the input's shape with the last dim ``N`` when
    ``keep_num_dims``). Semantics: ``reference_integer_ops::FullyConnected`` /
    ``FullyConnectedPerChannel`` with float scales (requantization in double, see the module
    docstring); parameters: ``fully_connected.cc`` ``PrepareImpl``.
    """
    input, filter, bias, output = _operands(op)
    options = op.options
    if options is None:
        raise Unlowerable("no builtin options")
    if options.weightsFormat != schema.FullyConnectedOptionsWeightsFormat.DEFAULT:
        raise Unlowerable(f"weights format {options.weightsFormat} (shuffled) has no C kernel")
    if filter is None or len(filter.shape) != 2:
        raise Unlowerable(f"filter must be 2-D [units, depth], got {None if filter is None else list(filter.shape)}")
    units, depth = filter.shape
    if units <= 0 or depth <= 0 or input.numel % depth:
        raise Unlowerable(f"input of {input.numel} elements is not a whole number of rows of {depth}")
    rows = input.numel // depth
    if options.keepNumDims:
        if input.shape[-1] != depth:
            raise Unlowerable(f"keep_num_dims needs the input's last dim {input.shape[-1]} to equal the filter depth {depth}")
        expected = (*input.shape[:-1], units)
    else:
        expected = (rows, units)
    if tuple(output.shape) != tuple(expected):
        raise Unlowerable(f"output shape {list(output.shape)} differs from the computed {list(expected)}")
    _check_bias(bias, units)
    per_channel = filter.scale is not None and filter.scale.size > 1
    # a per-tensor filter's zero point is applied (FullyConnected's weights_offset)
    scales = _check_filter(filter, units, 0, zero_point_allowed=not per_channel)
    input_scale, output_scale = input.single_scale(), output.single_scale()
    filter_offset = 0
    if not per_channel:
        filter_offset = -int(filter.zero_point[0])
        # GetQuantizedConvolutionMultipler's check, kept for compatibility: Prepare fails when the
        # bias scale is off input_scale * filter_scale by more than 2% of the output scale.
        if bias is not None:
            bias_scale = float(bias.scale[0]) if bias.scale is not None and bias.scale.size == 1 else 0.0
            if abs(input_scale * float(scales[0]) - bias_scale) / output_scale > 0.02:
                raise Unlowerable(f"bias scale {bias_scale} differs from input scale x filter scale by more than 2% of the output scale (TFLite rejects it)")
        scales = scales[:1]
    effective = [double_scale(input_scale * float(scale) / output_scale) for scale in scales]
    act_min, act_max = activation_range(options.fusedActivationFunction, output)
    params = {
        "batches": rows,
        "input_depth": depth,
        "output_depth": units,
        "input_offset": -input.single_zero_point(),
        "filter_offset": filter_offset,
        "output_offset": output.single_zero_point(),
        "activation_min": act_min,
        "activation_max": act_max,
        "per_channel": int(per_channel),
        "scale_mantissa": "scale_mantissa",
        "scale_exponent": "scale_exponent",
    }
    arrays = {
        "scale_mantissa": ("int64_t", np.array([m for m, _ in effective], dtype=np.int64)),
        "scale_exponent": ("int32_t", np.array([e for _, e in effective], dtype=np.int32)),
    }
    return _call("ec_fully_connected_s8", "ec_fully_connected_params", params, arrays, input, filter, bias, output)
