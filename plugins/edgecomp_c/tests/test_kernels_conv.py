"""The ``c`` backend's CONV_2D, DEPTHWISE_CONV_2D and FULLY_CONNECTED kernels, bit for bit against
LiteRT's reference kernels (``OpResolverType.BUILTIN_REF``).

Each case runs ``runtime/ec_conv.c`` with the parameters from ``edgecomp_c.ops.conv``, built with
``gcc`` by ``tests/c_kernel_support.py``, on int8 samples and compares every output byte with what
LiteRT computes for the same operator:

- single-operator int8 files written with the tflite backend's ``ModelWriter`` (int8 in -> op ->
  int8 out): strides, SAME/VALID padding on odd sizes, dilation, groups, depth multiplier, fused
  RELU/RELU6/RELU_N1_TO_1, per-tensor and per-channel filters, no bias, batches, keep_num_dims;
  mnist-8's trained filters where a real layer fits, seeded random ones otherwise;
- rounding ties that tell the requantization variants apart (CONV/DEPTHWISE: double-rounding
  ``MultiplyByQuantizedMultiplier``; FULLY_CONNECTED: the reference kernel's double-precision
  requantization);
- ONNX graphs (Conv + Relu, depthwise Conv + Clip, Gemm, MatMul) quantized by edgecomp's naive
  INT8 and lowered by the tflite backend, every kernel op against LiteRT's intermediates;
- every CONV_2D / DEPTHWISE_CONV_2D / FULLY_CONNECTED of the real naive-INT8 models (mnist-8,
  MLPerf Tiny KWS, VWW, IC, AD) on real data, each operator fed LiteRT's own int8 input;
- a sample of the single-operator and tie cases cross-compiled for a Cortex-M4 and run on QEMU.
"""

from __future__ import annotations

import collections
import math
import random
import subprocess
from fractions import Fraction

import numpy as np
import onnx
import onnx.helper as oh
import onnx.numpy_helper
import pytest
from ai_edge_litert import schema_py_generated as schema
from c_kernel_support import (
    HOST_CFLAGS,
    RUNTIME,
    STRICT_BUILDS,
    check,
    compile_strict,
    file_cases,
    interpreter,
    kernel_case,
    litert_output,
    naive_tflite,
    needs_gcc,
    needs_qemu,
    onnx_model,
    ops_of,
    real_model,
    single_op_model,
)
from edgecomp_c.ops import builders
from edgecomp_c.ops.conv import double_scale
from edgecomp_c.program import Unlowerable
from edgecomp_tflite.writer import Quantization
from model_zoo import mnist_digits, needs_ad_data
from realdata import MNIST_MODEL

KERNEL_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")
A = schema.ActivationFunctionType


def check_single_op(data: bytes, samples: list[np.ndarray], tmp_path, *, c_data: bytes | None = None, qemu: bool = False) -> int:
    """The file's one kernel op in C (lowered from ``c_data`` when given) equals LiteRT on ``data``
    for the int8 ``samples`` (on QEMU's Cortex-M4 with ``qemu``); returns the samples checked."""
    (op,) = ops_of(c_data or data)
    case = kernel_case(op, {op.inputs[0].index: samples}, {op.outputs[0].index: litert_output(data, [[x] for x in samples])})
    return check([case], tmp_path, qemu=qemu)[op.builtin]


# ------------------------------------------------------------------------------------------ single-op files


def mnist_conv_weights() -> dict[str, np.ndarray]:
    tensors = {t.name: onnx.numpy_helper.to_array(t) for t in onnx.load(MNIST_MODEL).graph.initializer}
    return {"conv1": tensors["Parameter5"], "conv2": tensors["Parameter87"], "dense": tensors["Parameter193"].reshape(256, 10)}


def symmetric_int8(weights: np.ndarray, axis: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 weights and float32 scales (per slice along ``axis``, or one scale)."""
    if axis is None:
        scale = np.array([np.abs(weights).max() / 127.0], np.float32)
        return np.clip(np.round(weights / scale[0]), -127, 127).astype(np.int8), scale
    moved = np.moveaxis(weights, axis, 0)
    scale = (np.abs(moved.reshape(moved.shape[0], -1)).max(1) / 127.0).astype(np.float32)
    scale[scale == 0] = 1.0
    shape = [1] * weights.ndim
    shape[axis] = -1
    return np.clip(np.round(weights / scale.reshape(shape)), -127, 127).astype(np.int8), scale


def single_op_file(
    builtin: int,
    options,
    input_shape: tuple[int, ...],
    filter_q: np.ndarray,
    filter_scale: np.ndarray,
    output_shape: tuple[int, ...],
    *,
    input_q=(0.05, -3),
    output_q=(0.1, 5),
    axis: int = 0,
    bias: np.ndarray | None | str = "random",
    filter_zero_point: int = 0,
    seed: int = 0,
) -> bytes:
    """int8 input -> one operator -> int8 output. ``bias``: an int32 array, "random", "zero", or None (no bias input)."""
    channels = filter_q.shape[axis]
    filter_quantization = Quantization(tuple(float(s) for s in filter_scale), (filter_zero_point,) * filter_scale.size, axis)
    inputs = [(input_shape, np.int8, input_q, None), (filter_q.shape, np.int8, filter_quantization, filter_q)]
    if bias is not None:
        if isinstance(bias, str):
            bias = np.random.default_rng(seed).integers(-3000, 3000, channels).astype(np.int32) if bias == "random" else np.zeros(channels, np.int32)
        bias_scale = tuple(float(np.float32(input_q[0]) * s) for s in filter_scale)  # one scale per filter scale
        inputs.append(((channels,), np.int32, Quantization(bias_scale, (0,) * len(bias_scale)), bias))
    grouped = builtin == schema.BuiltinOperator.CONV_2D and filter_q.shape[3] != input_shape[3]
    return single_op_model(builtin, inputs, (output_shape, np.int8, output_q), options, grouped_convolution=grouped)


def conv_options(padding, stride=(1, 1), dilation=(1, 1), activation=A.NONE, depth_multiplier=None):
    options = schema.Conv2DOptionsT() if depth_multiplier is None else schema.DepthwiseConv2DOptionsT()
    options.padding = padding
    options.strideH, options.strideW = stride
    options.dilationHFactor, options.dilationWFactor = dilation
    options.fusedActivationFunction = activation
    if depth_multiplier is not None:
        options.depthMultiplier = depth_multiplier
    return options


def out_len(size: int, kernel: int, stride: int, dilation: int, padding) -> int:
    effective = (kernel - 1) * dilation + 1
    return (size + stride - 1) // stride if padding == schema.Padding.SAME else (size - effective) // stride + 1


def int8_samples(shape, count=3, seed=0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(-128, 128, shape).astype(np.int8) for _ in range(count)]


SAME, VALID = schema.Padding.SAME, schema.Padding.VALID
MNIST = mnist_conv_weights()

#: name -> (input NHWC, filter source, kernel, stride, dilation, padding, activation, per-channel, bias, output_q)
CONV_CASES = {
    "mnist_conv1_same": ((1, 28, 28, 1), "conv1", 1, (1, 1), (1, 1), SAME, A.NONE, True, "random", (0.1, 5)),
    "mnist_conv2_stride2_same_odd": ((1, 13, 15, 8), "conv2", 1, (2, 2), (1, 1), SAME, A.RELU, True, "random", (0.1, -128)),
    "mnist_conv2_stride2_1_valid_relu6": ((2, 14, 11, 8), "conv2", 1, (2, 1), (1, 1), VALID, A.RELU6, True, "random", (0.03, -128)),
    "dilated_3x5_same_relu_n1_to_1": ((1, 9, 12, 4), (6, 3, 5, 4), 1, (1, 2), (2, 3), SAME, A.RELU_N1_TO_1, True, "random", (0.02, 3)),
    "per_tensor_stride3_same": ((1, 10, 10, 3), (5, 4, 4, 3), 1, (3, 3), (1, 1), SAME, A.NONE, False, "random", (0.2, -7)),
    "grouped_2_stride2_same": ((1, 7, 9, 8), "conv2_grouped", 2, (2, 2), (1, 1), SAME, A.NONE, True, "random", (0.1, 0)),
    "pointwise_batch3": ((3, 5, 5, 16), (32, 1, 1, 16), 1, (1, 1), (1, 1), VALID, A.RELU6, True, "random", (0.05, -128)),
}


def conv_filter(source, seed: int) -> tuple[np.ndarray, bool]:
    """OHWI float filter: a real mnist-8 layer or seeded random values."""
    if source == "conv1":
        return MNIST["conv1"].transpose(0, 2, 3, 1), True
    if source == "conv2":
        return MNIST["conv2"].transpose(0, 2, 3, 1), True
    if source == "conv2_grouped":  # 16 filters over 4 of the 8 channels each: 2 groups
        return MNIST["conv2"][:, :4].transpose(0, 2, 3, 1), True
    return np.random.default_rng(seed).normal(0, 0.3, source).astype(np.float32), False


def conv_case(case: str) -> tuple[bytes, list[np.ndarray]]:
    """(single-op file, int8 input samples) of ``CONV_CASES[case]``."""
    input_shape, source, _, stride, dilation, padding, activation, per_channel, bias, output_q = CONV_CASES[case]
    weights, _ = conv_filter(source, seed=len(case))
    filter_q, scale = symmetric_int8(weights, 0 if per_channel else None)
    kernel = filter_q.shape[1:3]
    out_shape = (input_shape[0], *(out_len(input_shape[1 + i], kernel[i], stride[i], dilation[i], padding) for i in range(2)), filter_q.shape[0])
    data = single_op_file(schema.BuiltinOperator.CONV_2D, conv_options(padding, stride, dilation, activation), input_shape, filter_q, scale, out_shape, output_q=output_q, bias=bias, seed=len(case))
    return data, int8_samples(input_shape, seed=len(case))


@needs_gcc
@pytest.mark.parametrize("case", sorted(CONV_CASES))
def test_conv_2d_matches_litert(case, tmp_path):
    assert check_single_op(*conv_case(case), tmp_path) == 3


@needs_gcc
def test_conv_2d_without_bias_equals_zero_bias(tmp_path):
    """LiteRT's CONV_2D requires a bias; ``ec_conv_s8_nobias`` must equal it with a zero bias."""
    weights, _ = conv_filter("conv2", 0)
    filter_q, scale = symmetric_int8(weights, 0)
    make = lambda bias: single_op_file(schema.BuiltinOperator.CONV_2D, conv_options(SAME, (2, 2)), (1, 9, 9, 8), filter_q, scale, (1, 5, 5, 16), bias=bias)
    (op,) = ops_of(make(None))
    call = builders()[op.builtin](op)
    assert call.function == "ec_conv_s8_nobias" and len(call.tensors) == 3
    check_single_op(make("zero"), int8_samples((1, 9, 9, 8)), tmp_path, c_data=make(None))


#: name -> (input NHWC, kernel, multiplier, stride, dilation, padding, activation, per-channel, bias, output_q)
DEPTHWISE_CASES = {
    "mnist_conv1_as_depthwise_m8": ((1, 12, 12, 1), None, 8, (1, 1), (1, 1), SAME, A.NONE, True, "random", (0.1, 5)),
    "k3_stride2_same_odd_relu6": ((1, 11, 13, 6), (3, 3), 1, (2, 2), (1, 1), SAME, A.RELU6, True, "random", (0.03, -128)),
    "k3_multiplier2_dilated_valid": ((2, 12, 10, 4), (3, 3), 2, (1, 1), (2, 2), VALID, A.RELU, True, "random", (0.1, -128)),
    "k5x3_stride1_2_same_per_tensor": ((1, 9, 10, 5), (5, 3), 1, (1, 2), (1, 1), SAME, A.RELU_N1_TO_1, False, "random", (0.02, 0)),
    "k3_no_bias": ((1, 8, 8, 8), (3, 3), 1, (1, 1), (1, 1), SAME, A.NONE, True, None, (0.1, 2)),
}


def depthwise_case(case: str) -> tuple[bytes, list[np.ndarray]]:
    """(single-op file, int8 input samples) of ``DEPTHWISE_CASES[case]``."""
    input_shape, kernel, multiplier, stride, dilation, padding, activation, per_channel, bias, output_q = DEPTHWISE_CASES[case]
    channels = input_shape[3] * multiplier
    if kernel is None:  # mnist-8's first layer [8,1,5,5] is a depthwise filter of one input channel
        weights = MNIST["conv1"].transpose(1, 2, 3, 0)
    else:
        weights = np.random.default_rng(len(case)).normal(0, 0.3, (1, *kernel, channels)).astype(np.float32)
    filter_q, scale = symmetric_int8(weights, 3 if per_channel else None)
    kernel = filter_q.shape[1:3]
    out_shape = (input_shape[0], *(out_len(input_shape[1 + i], kernel[i], stride[i], dilation[i], padding) for i in range(2)), channels)
    options = conv_options(padding, stride, dilation, activation, depth_multiplier=multiplier)
    data = single_op_file(schema.BuiltinOperator.DEPTHWISE_CONV_2D, options, input_shape, filter_q, scale, out_shape, output_q=output_q, axis=3, bias=bias, seed=len(case))
    return data, int8_samples(input_shape, seed=len(case))


@needs_gcc
@pytest.mark.parametrize("case", sorted(DEPTHWISE_CASES))
def test_depthwise_conv_2d_matches_litert(case, tmp_path):
    assert check_single_op(*depthwise_case(case), tmp_path) == 3


#: name -> (input shape, units, per-channel, filter zero point, bias, keep_num_dims, activation, output shape)
FC_CASES = {
    "mnist_dense_per_channel": ((1, 256), "dense", True, 0, "random", False, A.NONE, (1, 10)),
    "mnist_dense_per_tensor_4d_input": ((1, 4, 4, 16), "dense", False, 0, "random", False, A.NONE, (1, 10)),
    "per_tensor_filter_zero_point_relu": ((3, 40), 24, False, 7, "random", False, A.RELU, (3, 24)),
    "per_channel_no_bias_relu6": ((2, 33), 17, True, 0, None, False, A.RELU6, (2, 17)),
    "keep_num_dims_3d_relu_n1_to_1": ((2, 3, 20), 9, True, 0, "random", True, A.RELU_N1_TO_1, (2, 3, 9)),
    "batch_rows_from_3d": ((2, 3, 20), 9, False, 0, "random", False, A.NONE, (6, 9)),
}


def fc_case(case: str) -> tuple[bytes, list[np.ndarray]]:
    """(single-op file, int8 input samples) of ``FC_CASES[case]``."""
    input_shape, units, per_channel, zero_point, bias, keep, activation, out_shape = FC_CASES[case]
    depth = input_shape[-1] if keep else int(np.prod(input_shape)) // int(np.prod(out_shape[:-1]))
    weights = MNIST["dense"].T if units == "dense" else np.random.default_rng(len(case)).normal(0, 0.2, (units, depth)).astype(np.float32)
    filter_q, scale = symmetric_int8(weights, 0 if per_channel else None)
    if zero_point:
        filter_q = np.clip(filter_q.astype(np.int32) + zero_point, -128, 127).astype(np.int8)
    options = schema.FullyConnectedOptionsT()
    options.fusedActivationFunction = activation
    options.keepNumDims = keep
    data = single_op_file(
        schema.BuiltinOperator.FULLY_CONNECTED, options, input_shape, filter_q, scale, out_shape,
        output_q=(0.3, -4), bias=bias, filter_zero_point=zero_point, seed=len(case),
    )
    return data, int8_samples(input_shape, count=16, seed=len(case))


@needs_gcc
@pytest.mark.parametrize("case", sorted(FC_CASES))
def test_fully_connected_matches_litert(case, tmp_path):
    assert check_single_op(*fc_case(case), tmp_path) == 16


# ------------------------------------------------------------------------------------------ rounding ties


def tie_file(builtin: int, accumulators: np.ndarray, input_scale: float, filter_scale: float, output_scale: float, per_channel: bool) -> bytes:
    """One 1x1 operator whose filter is zero and whose bias is ``accumulators``: output channel c
    is the requantization of ``accumulators[c]`` alone."""
    n = accumulators.size
    scales = np.full(n if per_channel else 1, filter_scale, np.float32)
    if builtin == schema.BuiltinOperator.FULLY_CONNECTED:
        return single_op_file(builtin, schema.FullyConnectedOptionsT(), (1, 1), np.zeros((n, 1), np.int8), scales, (1, n), input_q=(input_scale, 0), output_q=(output_scale, 0), bias=accumulators)
    if builtin == schema.BuiltinOperator.CONV_2D:
        return single_op_file(builtin, conv_options(VALID), (1, 1, 1, 1), np.zeros((n, 1, 1, 1), np.int8), scales, (1, 1, 1, n), input_q=(input_scale, 0), output_q=(output_scale, 0), bias=accumulators)
    return single_op_file(builtin, conv_options(VALID, depth_multiplier=1), (1, 1, 1, n), np.zeros((1, 1, 1, n), np.int8), scales, (1, 1, 1, n), input_q=(input_scale, 0), output_q=(output_scale, 0), axis=3, bias=accumulators)


def _single_rounding(x: int, multiplier: int, shift: int) -> int:
    """``MultiplyByQuantizedMultiplier`` built with ``TFLITE_SINGLE_ROUNDING``."""
    total = 31 - shift
    return (x * multiplier + (1 << (total - 1))) >> total


def _double_rounding(x: int, multiplier: int, shift: int) -> int:
    """``MultiplyByQuantizedMultiplier`` without ``TFLITE_SINGLE_ROUNDING`` (gemmlowp)."""
    x = ((x << max(shift, 0)) + 2**31) % 2**32 - 2**31
    product = x * multiplier + ((1 << 30) if x * multiplier >= 0 else 1 - (1 << 30))
    high = abs(product) >> 31 if product >= 0 else -(abs(product) >> 31)
    exponent = max(-shift, 0)
    mask = (1 << exponent) - 1
    return (high >> exponent) + int((high & mask) > (mask >> 1) + int(high < 0))


def _double_product(x: int, scale: float) -> int:
    """``round(double(x) * scale)`` (the reference FULLY_CONNECTED)."""
    product = Fraction(float(x) * scale)
    return math.floor(abs(product) + Fraction(1, 2)) * (1 if product >= 0 else -1)


#: (input scale, filter scale, output scale): 0.25 exactly (a tie for both integer roundings), and
#: 0.5 + 2**-41 (the double scale just above a tie, the 31-bit multiplier exactly on it)
TIE_SCALES = [(0.5, 0.5, 1.0), (float(np.float32(1 + 2**-20)), float(np.float32(1 + 2**-20)), float(np.float32(2 + 2**-18)))]


@needs_gcc
@pytest.mark.parametrize("builtin", ["CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"])
@pytest.mark.parametrize("per_channel", [False, True], ids=["per_tensor", "per_channel"])
@pytest.mark.parametrize("scales", TIE_SCALES, ids=["quarter", "half_plus_2e-41"])
def test_requantization_variant_on_rounding_ties(builtin, per_channel, scales, tmp_path):
    """On accumulators -255..255 at these scales the three candidate requantizations disagree:
    LiteRT's reference CONV_2D/DEPTHWISE_CONV_2D use double rounding (gemmlowp, not
    TFLITE_SINGLE_ROUNDING), its reference FULLY_CONNECTED rounds ``double(acc) * scale``; the C
    kernels reproduce each."""
    from edgecomp_c.ops.quant import quantize_multiplier

    accumulators = np.arange(-255, 256, dtype=np.int32)
    code = getattr(schema.BuiltinOperator, builtin)
    data = tie_file(code, accumulators, *scales, per_channel)
    sample = [np.zeros(interpreter(data).get_input_details()[0]["shape"], np.int8)]
    check_single_op(data, sample, tmp_path)
    # and the file discriminates: LiteRT matches its variant and not another one
    expected = litert_output(data, [sample]).reshape(-1).astype(int)
    scale = scales[0] * scales[1] / scales[2]
    multiplier, shift = quantize_multiplier(scale)
    variants = {
        "double_rounding": [_double_rounding(int(a), multiplier, shift) for a in accumulators],
        "single_rounding": [_single_rounding(int(a), multiplier, shift) for a in accumulators],
        "double_product": [_double_product(int(a), scale) for a in accumulators],
    }
    agree = {name for name, values in variants.items() if (np.clip(values, -128, 127) == expected).all()}
    assert ("double_product" if builtin == "FULLY_CONNECTED" else "double_rounding") in agree
    assert len(agree) < 3


@needs_gcc
def test_multiply_by_double_scale_is_cpp_double_rounding(tmp_path):
    """``ec_multiply_by_double_scale`` against Python's IEEE double product then round-half-away,
    on random and near-tie scales and the int32 extremes."""
    rng = random.Random(0)
    rows, expected = [], []
    for i in range(20000):
        kind = i % 4
        if kind == 0:
            scale = rng.uniform(1e-6, 0.1)
        elif kind == 1:
            scale = rng.uniform(0.1, 4.0)
        elif kind == 2:
            scale = 2.0 ** rng.randint(-40, 3) * (1 + rng.randint(0, 2**20) * 2.0**-52)
        else:
            scale = (2 * rng.randint(1, 255) + 1) / 2 / rng.randint(1, 5000) * (1 + rng.choice([0, 2**-50, -(2**-50), 2**-45]))
        x = rng.choice([rng.randint(-(2**31), 2**31 - 1), rng.randint(-5000, 5000), -(2**31), 2**31 - 1, 0])
        product = Fraction(float(x) * scale)
        rounded = math.floor(abs(product) + Fraction(1, 2)) * (1 if product >= 0 else -1)
        mantissa, exponent = double_scale(scale)
        rows.append(f"{x} {mantissa} {exponent}")
        expected.append(max(-(2**31), min(2**31 - 1, rounded)))
    source = tmp_path / "scale.c"
    source.write_text(
        '#include <stdio.h>\n#include "ec_conv.h"\n'
        "int main(void) { long long x, m; int e; while (scanf(\"%lld %lld %d\", &x, &m, &e) == 3) "
        "printf(\"%ld\\n\", (long)ec_multiply_by_double_scale((int32_t)x, (int64_t)m, e)); return 0; }\n"
    )
    exe = tmp_path / "scale"
    subprocess.run(["gcc", *HOST_CFLAGS, "-fsanitize=undefined", "-fno-sanitize-recover", f"-I{RUNTIME}", str(source), str(RUNTIME / "ec_conv.c"), "-o", str(exe)], check=True, capture_output=True)
    got = subprocess.run([str(exe)], input="\n".join(rows), capture_output=True, text=True, check=True).stdout.split()
    assert [int(v) for v in got] == expected


# ------------------------------------------------------------------------------------------ options TFLite rejects or we do not lower


def test_unlowerable_variants_are_reported():
    table = builders()
    filter_q, scale = symmetric_int8(np.random.default_rng(0).normal(0, 1, (4, 3, 3, 2)).astype(np.float32), 0)

    def lower(data):
        (op,) = ops_of(data)
        return table[op.builtin](op)

    # float activations (float or hybrid kernels) are not implemented
    filter_operand = (filter_q.shape, np.int8, Quantization(tuple(map(float, scale)), (0,) * 4), filter_q)
    data = single_op_model(schema.BuiltinOperator.CONV_2D, [((1, 5, 5, 2), np.float32, None, None), filter_operand, None], ((1, 5, 5, 4), np.float32, None), conv_options(SAME))
    with pytest.raises(Unlowerable, match="int8 activations"):
        lower(data)
    # fused TANH has no int8 clamp here
    data = single_op_file(schema.BuiltinOperator.CONV_2D, conv_options(SAME, activation=A.TANH), (1, 5, 5, 2), filter_q, scale, (1, 5, 5, 4))
    with pytest.raises(Unlowerable, match="activation"):
        lower(data)
    # a filter zero point (TFLite's int8 CONV_2D rejects it)
    data = single_op_file(schema.BuiltinOperator.CONV_2D, conv_options(SAME), (1, 5, 5, 2), filter_q, scale, (1, 5, 5, 4), filter_zero_point=3)
    with pytest.raises(Unlowerable, match="zero point"):
        lower(data)
    # per-tensor FULLY_CONNECTED whose bias has no single scale: LiteRT's Prepare compares the
    # bias' legacy scale (0 unless there is exactly one) with input x filter scale and fails
    bias = ((2,), np.int32, Quantization((0.25, 0.25), (0, 0)), np.zeros(2, np.int32))
    inputs = [((1, 4), np.int8, (0.5, 0), None), ((2, 4), np.int8, (0.5, 0), np.ones((2, 4), np.int8)), bias]
    data = single_op_model(schema.BuiltinOperator.FULLY_CONNECTED, inputs, ((1, 2), np.int8, (1.0, 0)), schema.FullyConnectedOptionsT())
    with pytest.raises(RuntimeError, match="scale_diff"):
        interpreter(data)
    with pytest.raises(Unlowerable, match="bias scale"):
        lower(data)
    # an output shape inconsistent with the window
    data = single_op_file(schema.BuiltinOperator.CONV_2D, conv_options(VALID), (1, 5, 5, 2), filter_q, scale, (1, 5, 5, 4))
    with pytest.raises(Unlowerable, match="output shape"):
        lower(data)


# ------------------------------------------------------------------------------------------ ONNX -> naive INT8 -> tflite


def check_all_kernel_ops(data: bytes, samples: list[np.ndarray], tmp_path) -> collections.Counter:
    """Every CONV_2D / DEPTHWISE_CONV_2D / FULLY_CONNECTED of ``data`` in C, each fed LiteRT's own
    int8 input tensor, equals LiteRT's int8 output tensor. Returns op name -> operators checked."""
    cases = file_cases(data, [[x] for x in samples], KERNEL_OPS)
    assert cases, "no kernel op in the file"
    check(cases, tmp_path)
    return collections.Counter(case.builtin for case in cases)


ONNX_CASES = {
    # (nodes, initializers, expected kernel ops)
    "conv_relu_stride2": (
        [oh.make_node("Conv", ["x", "w", "b"], ["c"], strides=[2, 2], pads=[2, 2, 2, 2]), oh.make_node("Relu", ["c"], ["y"])],
        {"w": MNIST["conv1"], "b": np.linspace(-0.5, 0.5, 8, dtype=np.float32)},
        {"CONV_2D"},
    ),
    "conv_then_depthwise_clip6": (
        [
            oh.make_node("Conv", ["x", "w", "b"], ["c"], pads=[2, 2, 2, 2]),
            oh.make_node("Conv", ["c", "dw"], ["d"], group=8, pads=[1, 1, 1, 1], strides=[2, 2]),
            oh.make_node("Clip", ["d", "zero", "six"], ["y"]),
        ],
        {"w": MNIST["conv1"], "b": np.zeros(8, np.float32), "dw": np.random.default_rng(1).normal(0, 0.4, (8, 1, 3, 3)).astype(np.float32), "zero": np.float32(0), "six": np.float32(6)},
        {"CONV_2D", "DEPTHWISE_CONV_2D"},
    ),
    "flatten_gemm_relu_matmul": (
        [
            oh.make_node("Conv", ["x", "w2", "b2"], ["c"], strides=[7, 7]),
            oh.make_node("Flatten", ["c"], ["f"]),
            oh.make_node("Gemm", ["f", "g", "gb"], ["h"], transB=1),
            oh.make_node("Relu", ["h"], ["r"]),
            oh.make_node("MatMul", ["r", "m"], ["y"]),
        ],
        {
            "w2": np.random.default_rng(2).normal(0, 0.3, (16, 1, 7, 7)).astype(np.float32),
            "b2": np.zeros(16, np.float32),
            "g": np.random.default_rng(3).normal(0, 0.1, (32, 256)).astype(np.float32),
            "gb": np.random.default_rng(4).normal(0, 0.1, 32).astype(np.float32),
            "m": np.random.default_rng(5).normal(0, 0.3, (32, 10)).astype(np.float32),
        },
        {"CONV_2D", "FULLY_CONNECTED"},
    ),
}


@needs_gcc
@pytest.mark.parametrize("case", sorted(ONNX_CASES))
def test_onnx_graphs_quantized_by_edgecomp(case, tmp_path):
    nodes, initializers, expected = ONNX_CASES[case]
    x = mnist_digits(16) / np.float32(255)
    data = naive_tflite(onnx_model(nodes, {"x": ["N", 1, 28, 28]}, initializers), [{"x": x}])
    counts = check_all_kernel_ops(data, [x[i : i + 1] for i in range(4)], tmp_path)
    assert expected <= set(counts), counts


# ------------------------------------------------------------------------------------------ real models


#: real model -> samples checked (its first ones; AD: all 40 windows)
REAL_SAMPLES = {"mnist": 4, "kws": 1, "vww": 3, "ic": 3, "ad": 40}
REAL_MODELS = ["mnist", "kws", "vww", "ic", pytest.param("ad", marks=needs_ad_data)]


@needs_gcc
@pytest.mark.parametrize("name", REAL_MODELS)
def test_real_model_operators(name, tmp_path):
    data, x = real_model(name)
    counts = check_all_kernel_ops(data, [x[i : i + 1] for i in range(REAL_SAMPLES[name])], tmp_path)
    names = [op.builtin for op in ops_of(data)]
    assert counts == {kind: names.count(kind) for kind in KERNEL_OPS if kind in names}


# ------------------------------------------------------------------------------------------ Cortex-M4 (QEMU)


def _tie_case(builtin: str, scales) -> tuple[bytes, list[np.ndarray]]:
    data = tie_file(getattr(schema.BuiltinOperator, builtin), np.arange(-255, 256, dtype=np.int32), *scales, True)
    return data, [np.zeros(interpreter(data).get_input_details()[0]["shape"], np.int8)]


QEMU_CASES = {
    "conv_mnist_conv2_stride2_same_odd": lambda: conv_case("mnist_conv2_stride2_same_odd"),
    "conv_grouped_2_stride2_same": lambda: conv_case("grouped_2_stride2_same"),
    "depthwise_k3_multiplier2_dilated_valid": lambda: depthwise_case("k3_multiplier2_dilated_valid"),
    "fc_per_tensor_filter_zero_point_relu": lambda: fc_case("per_tensor_filter_zero_point_relu"),
    "conv_ties_quarter": lambda: _tie_case("CONV_2D", TIE_SCALES[0]),
    "fc_ties_quarter": lambda: _tie_case("FULLY_CONNECTED", TIE_SCALES[0]),
    "fc_ties_half_plus_2e-41": lambda: _tie_case("FULLY_CONNECTED", TIE_SCALES[1]),
}


@needs_qemu
@pytest.mark.parametrize("case", sorted(QEMU_CASES))
def test_kernels_on_cortex_m4_match_litert(case, tmp_path):
    """The same kernels cross-compiled for a Cortex-M4 (``-mcpu=cortex-m4 -mthumb``, QEMU
    mps2-an386): the 64-bit emulation of the double requantization included."""
    data, samples = QEMU_CASES[case]()
    assert check_single_op(data, samples, tmp_path, qemu=True) == len(samples)


# ------------------------------------------------------------------------------------------ strict compilers


@pytest.mark.parametrize("build", sorted(STRICT_BUILDS))
def test_runtime_compiles_strict_c99(build, tmp_path):
    compile_strict(["ec_conv.c"], build, tmp_path)
