"""The pool/mean and shape/boundary kernels of the ``c`` backend, bit-exact with LiteRT's reference kernels.

Every case runs LiteRT 2.3 (``OpResolverType.BUILTIN_REF``, ``experimental_preserve_all_tensors``)
on a ``.tflite`` file, then, for each operator of MAX_POOL_2D, AVERAGE_POOL_2D, MEAN, RESHAPE, PAD,
PADV2, CONCATENATION, QUANTIZE and DEQUANTIZE, runs the C kernel its builder (``edgecomp_c.ops``)
chooses on LiteRT's own input tensors and compares the output with LiteRT's byte for byte (float
outputs bit for bit). The C kernels are compiled with ``gcc -std=c99 -Wall -Wextra -Werror -O2``
into one program per test (``tests/c_kernel_support.py``).

Files:

- single-op ONNX models (onnx.helper) through edgecomp's canonicalization, naive INT8 calibration and
  the tflite backend: the operators the backend really emits (float input -> QUANTIZE -> op ->
  DEQUANTIZE -> float output, plus TRANSPOSE/RESHAPE/PAD around some);
- the naive INT8 lowering of the real models (mnist-8, MLPerf Tiny KWS/VWW/IC, and AD when its data
  is present) on their real inputs;
- hand-written int8 single-op files (``edgecomp_tflite.writer.ModelWriter``) for the parameters the
  backend rarely produces: SAME windows larger than the input, fused RELU/RELU6, every MEAN axis
  pattern and scale ratio, PADV2 constants, 1-D to 5-D PAD, N-input CONCATENATION on every axis,
  int8 -> int8 QUANTIZE up and down, exhaustive DEQUANTIZE, and QUANTIZE of float edge values
  (ties, +-inf, NaN, out of int32 range).

The runtime sources also compile for a Cortex-M4 (``arm-none-eabi-gcc``); when QEMU is installed the
hand-written cases run there too (soft-float ABI included) and must match LiteRT.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from ai_edge_litert import schema_py_generated as schema
from c_kernel_support import (
    ARM_CFLAGS,
    STRICT_BUILDS,
    KernelCase,
    check,
    compile_strict,
    file_cases,
    naive_tflite,
    needs_gcc,
    needs_qemu,
    onnx_model,
    ops_of,
    real_model,
    single_op_model,
)
from edgecomp_c.ops import builders
from model_zoo import needs_ad_data
from onnx import helper

KERNEL_SOURCES = ("ec_pool.c", "ec_shape.c")
OPS = frozenset({"MAX_POOL_2D", "AVERAGE_POOL_2D", "MEAN", "RESHAPE", "PAD", "PADV2", "CONCATENATION", "QUANTIZE", "DEQUANTIZE"})
Builtin = schema.BuiltinOperator
Act = schema.ActivationFunctionType

pytestmark = needs_gcc


def op_cases(data: bytes, feeds: list[list[np.ndarray]], label: str) -> list[KernelCase]:
    """A case per operator of ours in ``data``, on LiteRT's tensors for ``feeds``."""
    cases = file_cases(data, feeds, OPS, label)
    assert cases, f"{label}: no operator of {sorted(OPS)}"
    return cases


# ------------------------------------------------------------------------------------------ ONNX single-op models


def _node(op_type: str, inputs: list[str], **attrs) -> onnx.NodeProto:
    return helper.make_node(op_type, inputs, ["y"], **attrs)


_RNG = np.random.default_rng(20240607)
_W = (_RNG.normal(size=(8, 3, 3, 3)) * 0.3).astype(np.float32)

#: name -> (nodes, input shapes, initializers, builtins the tflite backend must emit for it)
ONNX_CASES = {
    "maxpool_3x3_s2_same": ([_node("MaxPool", ["x"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])], {"x": [2, 3, 7, 9]}, {}, {"MAX_POOL_2D"}),
    "maxpool_2x2_s2_valid": ([_node("MaxPool", ["x"], kernel_shape=[2, 2], strides=[2, 2])], {"x": [1, 4, 8, 10]}, {}, {"MAX_POOL_2D"}),
    "maxpool_explicit_pads": ([_node("MaxPool", ["x"], kernel_shape=[3, 2], strides=[1, 2], pads=[2, 0, 0, 1])], {"x": [1, 3, 6, 7]}, {}, {"MAX_POOL_2D", "PADV2"}),
    "avgpool_same_upper": ([_node("AveragePool", ["x"], kernel_shape=[3, 3], strides=[2, 2], auto_pad="SAME_UPPER")], {"x": [2, 3, 7, 9]}, {}, {"AVERAGE_POOL_2D"}),
    "avgpool_same_upper_odd_total": ([_node("AveragePool", ["x"], kernel_shape=[3, 2], strides=[2, 2], auto_pad="SAME_UPPER")], {"x": [1, 2, 8, 7]}, {}, {"AVERAGE_POOL_2D"}),
    "maxpool_same_end_padding": ([_node("MaxPool", ["x"], kernel_shape=[2, 2], strides=[2, 2], pads=[0, 0, 1, 1])], {"x": [1, 3, 7, 9]}, {}, {"MAX_POOL_2D"}),
    "avgpool_count_include_pad": ([_node("AveragePool", ["x"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], count_include_pad=1)], {"x": [1, 4, 6, 5]}, {}, {"AVERAGE_POOL_2D", "PAD"}),
    "avgpool_4x4_valid": ([_node("AveragePool", ["x"], kernel_shape=[4, 4], strides=[4, 4])], {"x": [1, 5, 8, 8]}, {}, {"AVERAGE_POOL_2D"}),
    "global_avgpool_nchw": ([_node("GlobalAveragePool", ["x"])], {"x": [2, 3, 7, 9]}, {}, {"MEAN"}),
    "conv_global_avgpool_nhwc": (
        [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c"], ["r"]), helper.make_node("GlobalAveragePool", ["r"], ["y"])],
        {"x": [1, 3, 9, 11]},
        {"w": _W},
        {"MEAN"},
    ),
    "reduce_mean_axes_1_3": ([_node("ReduceMean", ["x"], axes=[1, 3], keepdims=0)], {"x": [2, 3, 7, 9]}, {}, {"MEAN"}),
    "reduce_mean_axis_1_keep": ([_node("ReduceMean", ["x"], axes=[1], keepdims=1)], {"x": [2, 5, 4]}, {}, {"MEAN"}),
    "reduce_mean_all": ([_node("ReduceMean", ["x"], keepdims=0)], {"x": [3, 4, 5]}, {}, {"MEAN"}),
    "pad_zeros": ([_node("Pad", ["x", "p"])], {"x": [2, 3, 7, 9]}, {"p": np.array([0, 0, 1, 2, 0, 1, 2, 1], np.int64)}, {"PAD"}),
    "pad_constant": ([_node("Pad", ["x", "p", "v"])], {"x": [1, 2, 5, 6]}, {"p": np.array([0, 1, 2, 0, 0, 0, 1, 3], np.int64), "v": np.array(0.7, np.float32)}, {"PADV2"}),
    "concat_two_inputs": ([_node("Concat", ["x", "z"], axis=1)], {"x": [1, 3, 4, 5], "z": [1, 2, 4, 5]}, {}, {"CONCATENATION", "QUANTIZE"}),
    "concat_three_axis_3": ([_node("Concat", ["x", "z", "x"], axis=3)], {"x": [2, 3, 4, 5], "z": [2, 3, 4, 2]}, {}, {"CONCATENATION"}),
    "flatten": ([_node("Flatten", ["x"])], {"x": [2, 3, 7, 9]}, {}, {"RESHAPE"}),
    "reshape": ([_node("Reshape", ["x", "s"])], {"x": [2, 3, 4, 5]}, {"s": np.array([6, 20], np.int64)}, {"RESHAPE"}),
}


def _onnx_feeds(inputs: dict[str, list[int]], count: int) -> list[dict[str, np.ndarray]]:
    """Real-valued inputs: per input a different range, so calibration gives different scales."""
    feeds = []
    for n in range(count):
        feed = {}
        for k, (name, shape) in enumerate(inputs.items()):
            feed[name] = (_RNG.normal(size=shape) * (1.0 + 2.5 * k) + 0.3 * k).astype(np.float32)
        feeds.append(feed)
    return feeds


@pytest.mark.parametrize("name", sorted(ONNX_CASES))
def test_onnx_single_op_models_are_bit_exact(name, tmp_path):
    """Each ONNX op through edgecomp's INT8 pipeline: the TFLite ops the backend emits (checked),
    then every kernel of ours in the file (QUANTIZE and DEQUANTIZE on the float I/O included)
    bit-exact on 4 calibration inputs and 4 unseen ones (which saturate some values)."""
    nodes, inputs, initializers, expected_ops = ONNX_CASES[name]
    data = naive_tflite(onnx_model(nodes, inputs, initializers), _onnx_feeds(inputs, 4))
    emitted = {op.builtin for op in ops_of(data)}
    assert expected_ops <= emitted, (expected_ops, emitted)
    feeds = [list(feed.values()) for feed in _onnx_feeds(inputs, 4)]
    feeds += [[value * 1.5 for value in feed] for feed in feeds]
    counts = check(op_cases(data, feeds, name), tmp_path)
    assert set(counts) >= expected_ops | {"QUANTIZE", "DEQUANTIZE"}, counts


def test_the_backend_emits_mean_for_global_average_pool_and_requantizes_before_concat():
    """What the tflite backend emits (the kernels' real inputs): GlobalAveragePool -> MEAN (keep_dims,
    H,W axes of the stored layout, output calibrated separately), and an int8 -> int8 QUANTIZE in
    front of a CONCATENATION input calibrated differently (TFLite int8 CONCATENATION requires one
    scale)."""
    nodes, inputs, initializers, _ = ONNX_CASES["conv_global_avgpool_nhwc"]
    data = naive_tflite(onnx_model(nodes, inputs, initializers), _onnx_feeds(inputs, 2))
    views = ops_of(data)
    (mean,) = [op for op in views if op.builtin == "MEAN"]
    assert mean.options.keepDims and mean.inputs[1].data.tolist() == [1, 2] and len(mean.inputs[0].shape) == 4
    assert mean.inputs[0].single_scale() != mean.outputs[0].single_scale()
    nodes, inputs, initializers, _ = ONNX_CASES["concat_two_inputs"]
    data = naive_tflite(onnx_model(nodes, inputs, initializers), _onnx_feeds(inputs, 2))
    views = ops_of(data)
    requantize = [op for op in views if op.builtin == "QUANTIZE" and op.inputs[0].dtype == np.int8]
    assert requantize
    call = builders()["QUANTIZE"](requantize[0])
    assert call.function == "ec_requantize_s8"


# ------------------------------------------------------------------------------------------ real models


@pytest.mark.parametrize("name", ["mnist", "kws", "vww", "ic", pytest.param("ad", marks=needs_ad_data)])
def test_real_model_operators_are_bit_exact(name, tmp_path):
    """The naive INT8 lowering of each real model, on its real inputs, one sample per invoke: every
    operator of ours bit-exact with LiteRT (mnist: RESHAPE, 2 MAX_POOL_2D; KWS, VWW, IC: the global
    average pool, a MEAN with its own output parameters; all: the QUANTIZE of the float input and
    the DEQUANTIZE of the output)."""
    data, samples = real_model(name)
    feeds = [[samples[i : i + 1]] for i in range(min(len(samples), 8))]
    counts = check(op_cases(data, feeds, name), tmp_path)
    assert counts["QUANTIZE"] >= len(feeds) and counts["DEQUANTIZE"] >= len(feeds)
    if name == "mnist":
        assert counts["MAX_POOL_2D"] == 2 * len(feeds) and counts["RESHAPE"] >= len(feeds)
    if name in ("kws", "vww", "ic"):
        assert counts["MEAN"] == len(feeds)


# ------------------------------------------------------------------------------------------ hand-written int8 files


def _int8(shape, rng) -> np.ndarray:
    """Random int8 with the extremes present."""
    values = rng.integers(-128, 128, size=shape).astype(np.int8)
    flat = values.reshape(-1)
    flat[: min(4, flat.size)] = [-128, 127, -128, 127][: min(4, flat.size)]
    return values


def _pool_options(padding, filter_hw, stride_hw, activation=Act.NONE):
    options = schema.Pool2DOptionsT()
    options.padding = padding
    options.filterHeight, options.filterWidth = filter_hw
    options.strideH, options.strideW = stride_hw
    options.fusedActivationFunction = activation
    return options


def _pool_case(code, shape, padding, filter_hw, stride_hw, activation, quant):
    from edgecomp_c.ops.pool import pool_padding

    out_h, _ = pool_padding(padding, shape[1], filter_hw[0], stride_hw[0])
    out_w, _ = pool_padding(padding, shape[2], filter_hw[1], stride_hw[1])
    out_shape = (shape[0], out_h, out_w, shape[3])
    return single_op_model(code, [(shape, np.int8, quant, None)], (out_shape, np.int8, quant), _pool_options(padding, filter_hw, stride_hw, activation))


POOL_CASES = [
    # (input NHWC, padding, filter, stride, activation, (scale, zero point))
    ((1, 7, 9, 5), schema.Padding.SAME, (3, 3), (2, 2), Act.NONE, (0.05, 3)),
    ((2, 8, 6, 3), schema.Padding.SAME, (2, 4), (2, 1), Act.RELU, (0.1, -20)),
    ((1, 5, 5, 4), schema.Padding.SAME, (7, 7), (1, 1), Act.RELU6, (0.03, -100)),  # window larger than the image
    ((1, 6, 7, 2), schema.Padding.VALID, (3, 2), (3, 2), Act.RELU_N1_TO_1, (0.01, 5)),
    ((1, 1, 11, 3), schema.Padding.SAME, (1, 4), (1, 3), Act.NONE, (1.0, 0)),
    ((1, 25, 5, 64), schema.Padding.VALID, (25, 5), (25, 5), Act.NONE, (0.06, -128)),  # KWS global pool
]


def test_pools_bit_exact_on_random_int8(tmp_path):
    """MAX_POOL_2D and AVERAGE_POOL_2D over SAME/VALID, odd sizes, windows larger than the input,
    every fused activation, on random int8 with -128/127 (and all-equal inputs that make average
    rounding ties)."""
    rng = np.random.default_rng(7)
    cases = []
    for n, (shape, padding, filter_hw, stride_hw, activation, quant) in enumerate(POOL_CASES):
        for code in (Builtin.MAX_POOL_2D, Builtin.AVERAGE_POOL_2D):
            data = _pool_case(code, shape, padding, filter_hw, stride_hw, activation, quant)
            feeds = [[_int8(shape, rng)] for _ in range(3)] + [[np.full(shape, v, np.int8)] for v in (-128, 127, -3)]
            cases += op_cases(data, feeds, f"pool{n}")
    counts = check(cases, tmp_path)
    assert counts["MAX_POOL_2D"] == counts["AVERAGE_POOL_2D"] == 6 * len(POOL_CASES)


MEAN_CASES = [
    # (input shape, axes, keep_dims, input (scale, zp), output (scale, zp))
    ((1, 5, 5, 64), [1, 2], True, (0.05, -128), (0.05, -128)),  # equal parameters
    ((1, 5, 5, 64), [1, 2], True, (0.05, -128), (0.011, 7)),  # output scale finer: multiplier > 1
    ((2, 7, 9, 3), [1, 2], False, (0.02, 13), (0.3, -5)),
    ((2, 3, 7, 9), [2, 3], True, (0.0268, 13), (0.00095, 47)),  # NCHW global average
    ((2, 3, 7, 9), [1, 3], False, (0.0268, 13), (0.0024, 38)),
    ((2, 3, 7, 9), [-1], False, (0.1, 0), (0.1, 0)),
    ((3, 4, 5), [0, 1, 2], False, (0.2, -3), (0.01, 0)),
    ((4, 6), [0], True, (0.5, 10), (0.004, -1)),
    ((2, 3, 4, 5), [0, 2], False, (1e-3, 0), (2.0, 0)),  # tiny multiplier
    ((1, 32, 32, 16), [1, 2], True, (0.08, -128), (0.0003, -20)),  # 1024 elements, saturation
    ((2, 1, 6, 1), [1, 3], True, (0.07, 2), (0.05, 1)),  # reduced axes of size 1
]


def test_mean_bit_exact_on_every_axis_pattern(tmp_path):
    """MEAN (reference QuantizedMeanOrSum): kept/reduced axis patterns, keep_dims both ways, negative
    axes, output scales finer and coarser than the input's, tiny and saturating multipliers."""
    rng = np.random.default_rng(11)
    cases = []
    for n, (shape, axes, keep, in_quant, out_quant) in enumerate(MEAN_CASES):
        rank = len(shape)
        resolved = {a % rank for a in axes}
        out_shape = tuple(1 if a in resolved else d for a, d in enumerate(shape)) if keep else tuple(d for a, d in enumerate(shape) if a not in resolved)
        options = schema.ReducerOptionsT()
        options.keepDims = keep
        data = single_op_model(Builtin.MEAN, [(shape, np.int8, in_quant, None), ((len(axes),), np.int32, None, np.array(axes, np.int32))], (out_shape, np.int8, out_quant), options)
        feeds = [[_int8(shape, rng)] for _ in range(3)] + [[np.full(shape, v, np.int8)] for v in (-128, 127)]
        cases += op_cases(data, feeds, f"mean{n}")
    counts = check(cases, tmp_path)
    assert counts["MEAN"] == 5 * len(MEAN_CASES)


def test_pad_and_padv2_bit_exact_from_1d_to_5d(tmp_path):
    """PAD pads with the output zero point, PADV2 with its constant (same parameters as the output);
    ranks 1 to 5, padding on every axis, zero paddings."""
    rng = np.random.default_rng(3)
    cases = []
    quant = (0.04, -17)
    for n, (shape, pads) in enumerate([((5,), [[2, 3]]), ((3, 4), [[0, 1], [2, 0]]), ((2, 3, 4), [[1, 1], [0, 0], [3, 2]]), ((2, 3, 4, 5), [[0, 0], [1, 2], [2, 1], [0, 0]]), ((1, 2, 3, 4, 2), [[1, 0], [0, 2], [1, 1], [0, 3], [2, 1]]), ((1, 3, 3, 2), [[0, 0], [0, 0], [0, 0], [0, 0]])]):
        out_shape = tuple(d + lo + hi for d, (lo, hi) in zip(shape, pads))
        paddings = ((len(shape), 2), np.int32, None, np.array(pads, np.int32))
        variants = [(Builtin.PAD, [(shape, np.int8, quant, None), paddings], schema.PadOptionsT())]
        variants.append((Builtin.PADV2, [(shape, np.int8, quant, None), paddings, ((1,), np.int8, quant, np.array([93], np.int8))], schema.PadV2OptionsT()))
        for code, inputs, options in variants:
            data = single_op_model(code, inputs, (out_shape, np.int8, quant), options)
            cases += op_cases(data, [[_int8(shape, rng)] for _ in range(2)], f"pad{n}")
    counts = check(cases, tmp_path)
    assert counts["PAD"] == counts["PADV2"] == 12


def test_concatenation_bit_exact_on_every_axis(tmp_path):
    """CONCATENATION of 1 to 3 inputs (one a constant) on every axis, negative axes included."""
    rng = np.random.default_rng(5)
    quant = (0.07, 9)
    cases = []
    base = (2, 3, 4, 5)
    for n, axis in enumerate([0, 1, 2, 3, -1, -3]):
        resolved = axis % 4
        sizes = [1, 3, 2] if n % 2 else [2, 1]
        shapes = [tuple(s if d == resolved else base[d] for d in range(4)) for s in sizes]
        inputs = [(shape, np.int8, quant, None) for shape in shapes]
        inputs[0] = (shapes[0], np.int8, quant, _int8(shapes[0], rng))  # a constant input
        out_shape = tuple(sum(sizes) if d == resolved else base[d] for d in range(4))
        options = schema.ConcatenationOptionsT()
        options.axis = axis
        data = single_op_model(Builtin.CONCATENATION, inputs, (out_shape, np.int8, quant), options)
        cases += op_cases(data, [[_int8(shape, rng) for shape in shapes[1:]] for _ in range(2)], f"concat{n}")
    single = single_op_model(Builtin.CONCATENATION, [((3, 4), np.int8, quant, None)], ((3, 4), np.int8, quant), schema.ConcatenationOptionsT())
    cases += op_cases(single, [[_int8((3, 4), rng)]], "concat_one")
    counts = check(cases, tmp_path)
    assert counts["CONCATENATION"] == 13


def test_concatenation_with_mismatched_parameters_is_refused():
    """TFLite's int8 CONCATENATION refuses inputs quantized unlike the output (Prepare fails); the
    builder refuses them too instead of requantizing."""
    from edgecomp_c.program import Unlowerable

    options = schema.ConcatenationOptionsT()
    options.axis = 1
    data = single_op_model(Builtin.CONCATENATION, [((1, 2), np.int8, (0.1, 0), None), ((1, 3), np.int8, (0.2, 0), None)], ((1, 5), np.int8, (0.1, 0)), options)
    (op,) = ops_of(data)
    with pytest.raises(Unlowerable, match="quantization parameters"):
        builders()["CONCATENATION"](op)


REQUANTIZE_CASES = [((0.02, 5), (0.05, -10)), ((0.05, -10), (0.02, 5)), ((0.1, 0), (0.1, 0)), ((0.0123, -128), (0.0123, 127)), ((1.0, 3), (0.0039, -128)), ((0.003, 100), (0.9, -1)), ((0.25, 0), (0.125, 0))]


def test_quantize_int8_to_int8_is_bit_exact_on_all_256_values(tmp_path):
    """int8 -> int8 QUANTIZE (reference Requantize with MultiplyByQuantizedMultiplier), every input
    value, multipliers below and above 1 (left shift), equal scales and pure zero-point moves."""
    cases = []
    values = np.arange(-128, 128, dtype=np.int8).reshape(1, 256)
    for n, (in_quant, out_quant) in enumerate(REQUANTIZE_CASES):
        data = single_op_model(Builtin.QUANTIZE, [((1, 256), np.int8, in_quant, None)], ((1, 256), np.int8, out_quant))
        cases += op_cases(data, [[values]], f"requantize{n}")
    counts = check(cases, tmp_path)
    assert counts["QUANTIZE"] == len(REQUANTIZE_CASES)
    assert {case.call.function for case in cases} == {"ec_requantize_s8"}


DEQUANTIZE_CASES = [(0.02, 5), (0.0123456789, -128), (53.49821472167969, -20), (1.0, 0), (3.0e-38, 17), (1.1e-40, 0), (7.7e37, -3)]


def test_dequantize_is_bit_exact_on_all_256_values(tmp_path):
    """DEQUANTIZE int8 -> float32, every input value, ordinary and extreme scales (subnormal, near
    FLT_MAX): one float32 multiplication equals TFLite's double product rounded to float."""
    cases = []
    values = np.arange(-128, 128, dtype=np.int8).reshape(2, 128)
    for n, quant in enumerate(DEQUANTIZE_CASES):
        data = single_op_model(Builtin.DEQUANTIZE, [((2, 128), np.int8, quant, None)], ((2, 128), np.float32, None))
        cases += op_cases(data, [[values]], f"dequantize{n}")
    counts = check(cases, tmp_path)
    assert counts["DEQUANTIZE"] == len(DEQUANTIZE_CASES)


def _float_edges(scale: float, zero_point: int, rng) -> np.ndarray:
    """Float inputs where QUANTIZE can go wrong: exact ties (k + 0.5) * scale and their neighbours,
    signed zeros, the saturation borders, huge and non-finite values, random values."""
    s = np.float32(scale)
    k = np.arange(-140, 140, dtype=np.float32)
    ties = (k + np.float32(0.5)) * s
    values = [ties, np.nextafter(ties, np.float32(np.inf)), np.nextafter(ties, np.float32(-np.inf)), k * s]
    special = [0.0, -0.0, np.inf, -np.inf, np.nan, -np.nan, 1e10, -1e10, 3.0e9 * s, -3.0e9 * s, 2.0**31 * s, -(2.0**31) * s, 2.0**30 * s, -(2.0**30) * s, 1e-45, -1e-45, 3.4e38, -3.4e38, (127.5 - zero_point) * s, (-128.5 - zero_point) * s]
    values.append(np.array(special, np.float32))
    values.append((rng.normal(size=256) * 200 * s).astype(np.float32))
    flat = np.concatenate([np.asarray(v, np.float32).reshape(-1) for v in values])
    return flat


QUANTIZE_CASES = [(0.014231493696570396, 35), (1.0, -128), (0.003921568859368563, -128), (0.5503086447715759, 96), (0.1, 0), (2.5e-5, -7), (0.2704029381275177, 119), (0.3, -128)]


def test_quantize_float_to_int8_is_bit_exact_on_edge_values(tmp_path):
    """float32 -> int8 QUANTIZE (reference AffineQuantize): x / scale in float32, rounding ties away
    from zero, saturation, and LiteRT-on-x86-64's results for +-inf, NaN and quotients beyond
    int32 (INT32_MIN plus the zero point with wrap-around, then the clamp)."""
    rng = np.random.default_rng(13)
    cases = []
    for n, (scale, zero_point) in enumerate(QUANTIZE_CASES):
        values = _float_edges(scale, zero_point, rng)
        data = single_op_model(Builtin.QUANTIZE, [((values.size,), np.float32, None, None)], ((values.size,), np.int8, (scale, zero_point)))
        cases += op_cases(data, [[values]], f"quantize{n}")
    counts = check(cases, tmp_path)
    assert counts["QUANTIZE"] == len(QUANTIZE_CASES)
    assert {case.call.function for case in cases} == {"ec_quantize_f32_s8"}


def test_reshape_copies_bytes_of_any_type(tmp_path):
    """RESHAPE int8 and float32 (a byte copy; the shape operand is not passed)."""
    rng = np.random.default_rng(17)
    cases = []
    for dtype, quant in ((np.int8, (0.1, 3)), (np.float32, None)):
        options = schema.ReshapeOptionsT()
        options.newShape = [4, 15]
        data = single_op_model(Builtin.RESHAPE, [((3, 4, 5), dtype, quant, None), ((2,), np.int32, None, np.array([4, 15], np.int32))], ((4, 15), dtype, quant), options)
        value = _int8((3, 4, 5), rng) if dtype == np.int8 else rng.normal(size=(3, 4, 5)).astype(np.float32)
        cases += op_cases(data, [[value]], f"reshape_{np.dtype(dtype).name}")
    counts = check(cases, tmp_path)
    assert counts["RESHAPE"] == 2


# ------------------------------------------------------------------------------------------ builders: TFLite's Prepare arithmetic


def test_pool_padding_matches_tflite_same_and_valid():
    from edgecomp_c.ops.pool import pool_padding

    assert pool_padding(schema.Padding.SAME, 7, 3, 2) == (4, 1)
    assert pool_padding(schema.Padding.SAME, 8, 3, 2) == (4, 0)  # total 1: the extra row goes after
    assert pool_padding(schema.Padding.SAME, 5, 7, 1) == (5, 3)
    assert pool_padding(schema.Padding.VALID, 25, 25, 25) == (1, 0)
    assert pool_padding(schema.Padding.VALID, 6, 3, 3) == (2, 0)


def test_mean_multiplier_folds_the_count_like_the_reference():
    """(multiplier << s) / n with s = floor(log2 n) (clamped to 32 and 31 + shift), shift - s."""
    from edgecomp_c.ops.pool import mean_multiplier
    from edgecomp_c.ops.quant import quantize_multiplier

    multiplier, shift = quantize_multiplier(1.0)
    assert mean_multiplier(1.0, 1.0, 25) == (((multiplier << 4) // 25), shift - 4)
    assert mean_multiplier(1.0, 1.0, 1) == (multiplier, shift)
    tiny_m, tiny_shift = quantize_multiplier(float(np.float32(1e-3)) / float(np.float32(2.0)))
    assert mean_multiplier(1e-3, 2.0, 8) == ((tiny_m << 3) // 8, tiny_shift - 3)


# ------------------------------------------------------------------------------------------ Cortex-M4


@pytest.mark.parametrize("build", sorted(STRICT_BUILDS))
def test_runtime_compiles_strict_c99(build, tmp_path):
    compile_strict(KERNEL_SOURCES, build, tmp_path)


@needs_qemu
@pytest.mark.parametrize("float_abi", ["soft", "hard"])
def test_kernels_on_qemu_cortex_m4_are_bit_exact(float_abi, tmp_path):
    """A sample of the hand-written cases (pools, MEAN, PADV2, CONCATENATION, requantize, and the
    float boundary kernels on their edge values) on an emulated Cortex-M4 (mps2-an386): the same
    bytes as LiteRT on the host, with software and with FPv4-SP hardware floating point."""
    rng = np.random.default_rng(19)
    cases: list[KernelCase] = []
    for n, (shape, padding, filter_hw, stride_hw, activation, quant) in enumerate(POOL_CASES[:3]):
        for code in (Builtin.MAX_POOL_2D, Builtin.AVERAGE_POOL_2D):
            cases += op_cases(_pool_case(code, shape, padding, filter_hw, stride_hw, activation, quant), [[_int8(shape, rng)]], f"pool{n}")
    for n, (shape, axes, keep, in_quant, out_quant) in enumerate(MEAN_CASES[:5]):
        rank = len(shape)
        out_shape = tuple(1 if a in {x % rank for x in axes} else d for a, d in enumerate(shape)) if keep else tuple(d for a, d in enumerate(shape) if a not in {x % rank for x in axes})
        options = schema.ReducerOptionsT()
        options.keepDims = keep
        data = single_op_model(Builtin.MEAN, [(shape, np.int8, in_quant, None), ((len(axes),), np.int32, None, np.array(axes, np.int32))], (out_shape, np.int8, out_quant), options)
        cases += op_cases(data, [[_int8(shape, rng)]], f"mean{n}")
    pads = ((4, 2), np.int32, None, np.array([[0, 0], [1, 2], [2, 1], [0, 0]], np.int32))
    data = single_op_model(Builtin.PADV2, [((1, 3, 4, 2), np.int8, (0.1, 4), None), pads, ((1,), np.int8, (0.1, 4), np.array([-50], np.int8))], ((1, 6, 7, 2), np.int8, (0.1, 4)), schema.PadV2OptionsT())
    cases += op_cases(data, [[_int8((1, 3, 4, 2), rng)]], "padv2")
    options = schema.ConcatenationOptionsT()
    options.axis = 2
    data = single_op_model(Builtin.CONCATENATION, [((2, 3, 2), np.int8, (0.1, 0), None), ((2, 3, 5), np.int8, (0.1, 0), None)], ((2, 3, 7), np.int8, (0.1, 0)), options)
    cases += op_cases(data, [[_int8((2, 3, 2), rng), _int8((2, 3, 5), rng)]], "concat")
    values = np.arange(-128, 128, dtype=np.int8).reshape(1, 256)
    for n, (in_quant, out_quant) in enumerate(REQUANTIZE_CASES[:3]):
        cases += op_cases(single_op_model(Builtin.QUANTIZE, [((1, 256), np.int8, in_quant, None)], ((1, 256), np.int8, out_quant)), [[values]], f"requantize{n}")
    for n, quant in enumerate(DEQUANTIZE_CASES):
        cases += op_cases(single_op_model(Builtin.DEQUANTIZE, [((1, 256), np.int8, quant, None)], ((1, 256), np.float32, None)), [[values]], f"dequantize{n}")
    for n, (scale, zero_point) in enumerate(QUANTIZE_CASES[:4]):
        edges = _float_edges(scale, zero_point, rng)
        cases += op_cases(single_op_model(Builtin.QUANTIZE, [((edges.size,), np.float32, None, None)], ((edges.size,), np.int8, (scale, zero_point))), [[edges]], f"quantize{n}")

    abi = ("-mfloat-abi=hard", "-mfpu=fpv4-sp-d16") if float_abi == "hard" else ()
    counts = check(cases, tmp_path, qemu=True, cflags=(*ARM_CFLAGS, *abi))
    assert set(counts) == {"MAX_POOL_2D", "AVERAGE_POOL_2D", "MEAN", "PADV2", "CONCATENATION", "QUANTIZE", "DEQUANTIZE"}
