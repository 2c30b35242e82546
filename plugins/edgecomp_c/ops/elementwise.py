"""Element-wise int8 builders: ADD, SUB, MUL (numpy broadcasting) and LOGISTIC, TANH (lookup table).

Kernels: ``runtime/ec_elementwise.h``. The parameters are computed as the Prepare functions of the
TFLite kernels compute them for int8 (LiteRT ``tflite/kernels/add.cc``, ``sub.cc``, ``mul.cc``,
``activations.cc``), so the C kernels are bit-exact with ``OpResolverType.BUILTIN_REF``:

- ADD / SUB (8-bit general path): ``left_shift = 20``, ``twice_max_input_scale = 2 * max(s1, s2)``
  (float32), ``real_input{1,2}_multiplier = s{1,2} / twice_max_input_scale`` and
  ``real_output_multiplier = twice_max_input_scale / (2**20 * s_out)`` (doubles), each through
  ``QuantizeMultiplierSmallerThanOneExp``;
- MUL: ``real_multiplier = s1 * s2 / s_out`` evaluated in **float32** (``input1->params.scale *
  input2->params.scale / output->params.scale``: float operands) then ``QuantizeMultiplier``;
- the fused activation through ``CalculateActivationRangeQuantized``
  (:func:`~edgecomp_c.ops.quant.activation_range`);
- LOGISTIC / TANH: ``LUTPopulate<int8_t>`` (``kernels/internal/common.h``): for every int8 ``q``,
  ``round(f(s_in * (q - zp_in)) / s_out) + zp_out`` clamped, in float32 with the C library's
  ``expf`` / ``tanhf`` (the functions LiteRT calls).

Broadcasting follows TFLite's ``BroadcastBinaryOpSimple`` (numpy rules on the stored shapes, up to
6 axes); :func:`broadcast_walk` turns the shapes into the kernel's merged extents and strides.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import math
from collections.abc import Callable

import numpy as np
from ai_edge_litert import schema_py_generated as schema

from edgecomp_c.ops import builder
from edgecomp_c.ops.quant import activation_range, quantize_multiplier, tflite_round_f32
from edgecomp_c.program import KernelCall, OpView, TensorInfo, Unlowerable

__all__ = ["add_sub_parameters", "broadcast_walk", "lookup_table", "mul_parameters", "quantize_multiplier_smaller_than_one"]

#: Axes the C broadcast walk handles (``EC_BROADCAST_MAX_DIMS``).
MAX_BROADCAST_DIMS = 6
#: ``data->left_shift`` of the 8-bit ADD/SUB path.
LEFT_SHIFT = 20


# ------------------------------------------------------------------------------------------ helpers


def _int8_operand(tensor: TensorInfo | None, what: str) -> tuple[float, int]:
    """(scale as float32, zero point) of a per-tensor quantized int8 tensor."""
    if tensor is None:
        raise Unlowerable(f"{what} is missing")
    if np.dtype(tensor.dtype) != np.int8:
        raise Unlowerable(f"{what} {tensor.name!r} is {np.dtype(tensor.dtype).name}; the kernel is int8")
    return float(np.float32(tensor.single_scale())), tensor.single_zero_point()


def _fused_activation(op: OpView) -> int:
    return int(getattr(op.options, "fusedActivationFunction", schema.ActivationFunctionType.NONE) or 0)


def quantize_multiplier_smaller_than_one(real_multiplier: float) -> tuple[int, int]:
    """``QuantizeMultiplierSmallerThanOneExp``: ``(multiplier, shift)`` with shift <= 0, for
    ``0 < real_multiplier < 1`` (TFLite aborts otherwise; here :class:`Unlowerable`)."""
    if not 0.0 < real_multiplier < 1.0:
        raise Unlowerable(f"rescaling multiplier {real_multiplier!r} is outside (0, 1)")
    multiplier, shift = quantize_multiplier(real_multiplier)
    if shift > 0:
        raise Unlowerable(f"rescaling multiplier {real_multiplier!r} has a positive shift")
    return multiplier, shift


def broadcast_walk(shape1: tuple[int, ...], shape2: tuple[int, ...], output: tuple[int, ...]) -> tuple[list[int], list[int], list[int]]:
    """How the C kernels walk a numpy-broadcast binary op: ``(extents, strides1, strides2)``.

    The output is visited in row-major order; ``strides{1,2}[k]`` is the element step of input 1/2
    along axis ``k`` (0 where it is broadcast). Axes of extent 1 are dropped and adjacent axes that
    both inputs traverse contiguously are merged, so equal shapes give one axis with strides
    ``(1, 1)``, a per-channel operand ``[rows, C]`` with ``(C, 1)`` / ``(0, 1)``, a scalar ``[n]``
    with ``(1,)`` / ``(0,)``. An output of one element gives empty lists.

    Raises:
        Unlowerable: shapes that do not broadcast to ``output``, or more than 6 axes after merging.
    """
    rank = len(output)
    if len(shape1) > rank or len(shape2) > rank:
        raise Unlowerable(f"operand shapes {shape1}, {shape2} have more axes than the output {output}")
    try:
        expected = (1,) * rank + tuple(int(d) for d in np.broadcast_shapes(tuple(shape1), tuple(shape2)))
    except ValueError as error:
        raise Unlowerable(f"shapes {shape1} and {shape2} do not broadcast") from error
    if expected[len(expected) - rank :] != tuple(output):
        raise Unlowerable(f"shapes {shape1} and {shape2} do not broadcast to the output {output}")

    def strides(shape: tuple[int, ...]) -> list[int]:
        padded = [1] * (rank - len(shape)) + [int(d) for d in shape]
        result, step = [0] * rank, 1
        for axis in reversed(range(rank)):
            result[axis] = step if padded[axis] != 1 else 0
            step *= padded[axis]
        return result

    axes = [(int(output[k]), s1, s2) for k, (s1, s2) in enumerate(zip(strides(shape1), strides(shape2))) if output[k] != 1]
    merged: list[tuple[int, int, int]] = []
    for extent, s1, s2 in axes:
        if merged:
            outer, o1, o2 = merged[-1]
            if o1 == s1 * extent and o2 == s2 * extent:  # the outer axis continues this one
                merged[-1] = (outer * extent, s1, s2)
                continue
        merged.append((extent, s1, s2))
    if len(merged) > MAX_BROADCAST_DIMS:
        raise Unlowerable(f"broadcasting {shape1} with {shape2} needs {len(merged)} axes; the kernel walks at most {MAX_BROADCAST_DIMS}")
    return [m[0] for m in merged], [m[1] for m in merged], [m[2] for m in merged]


def _binary_operands(op: OpView) -> tuple[TensorInfo, TensorInfo, TensorInfo]:
    if len(op.inputs) != 2 or len(op.outputs) != 1:
        raise Unlowerable(f"{len(op.inputs)} inputs and {len(op.outputs)} outputs; the kernel takes 2 and 1")
    input1, input2 = op.inputs
    output = op.outputs[0]
    for tensor, what in ((input1, "input 1"), (input2, "input 2"), (output, "output")):
        _int8_operand(tensor, what)
    return input1, input2, output


def _walk_fields(input1: TensorInfo, input2: TensorInfo, output: TensorInfo) -> tuple[dict, dict]:
    """The broadcast fields of ``ec_add_params`` / ``ec_mul_params`` and their const arrays."""
    extents, strides1, strides2 = broadcast_walk(input1.shape, input2.shape, output.shape)
    params: dict = {"size": output.numel}
    arrays: dict = {}
    flat = len(extents) <= 1 and strides1 in ([], [1]) and strides2 in ([], [1])
    if flat:
        params["dims"] = 0
    else:
        params["dims"] = len(extents)
        for name, values in (("shape", extents), ("input1_strides", strides1), ("input2_strides", strides2)):
            arrays[name] = ("int32_t", np.asarray(values, dtype=np.int32))
            params[name] = name
    return params, arrays


# ------------------------------------------------------------------------------------------ ADD / SUB / MUL


def _binary_parameters(op: OpView, rescaling: Callable[[float, float, float], dict]) -> dict:
    """The scalar fields of ``ec_add_params`` / ``ec_mul_params``: the operands' offsets, the
    op-specific ``rescaling(s1, s2, s_out)`` fields (float32 scales), the fused activation range."""
    input1, input2, output = _binary_operands(op)
    s1, zp1 = _int8_operand(input1, "input 1")
    s2, zp2 = _int8_operand(input2, "input 2")
    so, zpo = _int8_operand(output, "output")
    fields = rescaling(s1, s2, so)
    low, high = activation_range(_fused_activation(op), output)
    return {"input1_offset": -zp1, "input2_offset": -zp2, "output_offset": zpo, **fields, "activation_min": low, "activation_max": high}


def _binary_call(op: OpView, function: str, params_type: str, parameters: Callable[[OpView], dict]) -> KernelCall:
    input1, input2, output = _binary_operands(op)
    params = parameters(op)
    walk, arrays = _walk_fields(input1, input2, output)
    params.update(walk)
    return KernelCall(function, params_type, params, arrays, [input1.index, input2.index, output.index])


def _add_sub_rescaling(s1: float, s2: float, so: float) -> dict:
    twice_max_input_scale = float(np.float32(2) * max(np.float32(s1), np.float32(s2)))  # float32 in C++
    real_input1 = s1 / twice_max_input_scale
    real_input2 = s2 / twice_max_input_scale
    real_output = twice_max_input_scale / float(np.float32(1 << LEFT_SHIFT) * np.float32(so))
    # sub.cc would take QuantizeMultiplierGreaterThanOne for real_output > 1 and then shift right by
    # a negative amount (undefined); add.cc aborts. Both need s_out < max(s1, s2) / 2**19.
    m1, shift1 = quantize_multiplier_smaller_than_one(real_input1)
    m2, shift2 = quantize_multiplier_smaller_than_one(real_input2)
    mo, shifto = quantize_multiplier_smaller_than_one(real_output)
    return {
        "left_shift": LEFT_SHIFT,
        "input1_multiplier": m1,
        "input1_shift": shift1,
        "input2_multiplier": m2,
        "input2_shift": shift2,
        "output_multiplier": mo,
        "output_shift": shifto,
    }


def add_sub_parameters(op: OpView) -> dict:
    """The ``ec_add_params`` scalar fields, as ``add.cc`` / ``sub.cc`` Prepare compute them for int8."""
    return _binary_parameters(op, _add_sub_rescaling)


@builder("ADD")
def build_add(op: OpView) -> KernelCall:
    """ADD int8 -> ``ec_add_s8(&params, input1, input2, output)``.

    Shapes: any two numpy-broadcastable shapes (up to 6 merged axes); dtypes int8, per-tensor
    quantization. Source: ``add.cc`` Prepare, ``reference_integer_ops::Add`` / ``BroadcastAdd6DSlow``.
    """
    return _binary_call(op, "ec_add_s8", "ec_add_params", add_sub_parameters)


@builder("SUB")
def build_sub(op: OpView) -> KernelCall:
    """SUB int8 -> ``ec_sub_s8(&params, input1, input2, output)`` (``input1 - input2``).

    Shapes and dtypes as ADD. Source: ``sub.cc`` ``PrepareGeneralSubOp``, ``reference_ops::Sub`` /
    ``BroadcastQuantSubSlow`` (int8 SUB always runs the reference code, whatever the resolver).
    """
    return _binary_call(op, "ec_sub_s8", "ec_sub_params", add_sub_parameters)


def _mul_rescaling(s1: float, s2: float, so: float) -> dict:
    real_multiplier = float(np.float32(s1) * np.float32(s2) / np.float32(so))  # float32 arithmetic in C++
    multiplier, shift = quantize_multiplier(real_multiplier)
    if shift > 30:
        raise Unlowerable(f"rescaling multiplier {real_multiplier!r} needs a left shift of {shift}")
    return {"output_multiplier": multiplier, "output_shift": shift}


def mul_parameters(op: OpView) -> dict:
    """The ``ec_mul_params`` scalar fields, as ``mul.cc`` Prepare computes them for int8."""
    return _binary_parameters(op, _mul_rescaling)


@builder("MUL")
def build_mul(op: OpView) -> KernelCall:
    """MUL int8 -> ``ec_mul_s8(&params, input1, input2, output)``.

    Shapes and dtypes as ADD. Source: ``mul.cc`` Prepare, ``reference_integer_ops::Mul`` /
    ``BroadcastMul6DSlow`` (``MulElementwise``).
    """
    return _binary_call(op, "ec_mul_s8", "ec_mul_params", mul_parameters)


# ------------------------------------------------------------------------------------------ LOGISTIC / TANH


def _libm_function(name: str) -> Callable[[np.float32], np.float32]:
    """The C library's single-precision ``name`` (what ``std::exp(float)`` / ``std::tanh(float)``
    call in LiteRT), or a float64 evaluation rounded to float32 when no C library is found."""
    path = ctypes.util.find_library("m")
    try:
        function = getattr(ctypes.CDLL(path), name)
    except (OSError, AttributeError, TypeError):
        fallback = {"expf": math.exp, "tanhf": math.tanh}[name]

        def evaluate(value: np.float32) -> np.float32:
            try:
                result = fallback(float(value))
            except OverflowError:
                result = math.inf
            with np.errstate(over="ignore"):
                return np.float32(result)

        return evaluate
    function.restype = ctypes.c_float
    function.argtypes = [ctypes.c_float]
    return lambda value: np.float32(function(float(value)))


def _logistic(value: np.float32) -> np.float32:
    """``1.0f / (1.0f + std::exp(-value))`` in float32."""
    return np.float32(1.0) / (np.float32(1.0) + _EXPF(np.float32(-value)))


def _tanh(value: np.float32) -> np.float32:
    return _TANHF(value)


_EXPF = _libm_function("expf")
_TANHF = _libm_function("tanhf")


def lookup_table(input_scale: float, input_zero_point: int, output_scale: float, output_zero_point: int, transform: Callable[[np.float32], np.float32]) -> np.ndarray:
    """``LUTPopulateInt8`` (``kernels/internal/common.h``): the int8 table, indexed by the input's
    bit pattern as uint8 (``table[q & 0xFF]`` is the output for input ``q``), int8 [256].

    Every step is float32 as in C++: ``dequantized = s_in * (q - zp_in)``, ``transform``,
    ``round(transformed * (1 / s_out))`` (ties away from zero) ``+ zp_out``, clamped to int8.
    """
    s_in = np.float32(input_scale)
    inverse_scale = np.float32(1.0) / np.float32(output_scale)
    table = np.zeros(256, dtype=np.int8)
    for q in range(-128, 128):
        dequantized = s_in * np.float32(q - input_zero_point)
        transformed = np.float32(transform(dequantized))
        rescaled = np.float32(tflite_round_f32(transformed * inverse_scale))
        quantized = int(rescaled + np.float32(output_zero_point))
        table[q & 0xFF] = min(127, max(-128, quantized))
    return table


def _lut_call(op: OpView, transform: Callable[[np.float32], np.float32]) -> KernelCall:
    if len(op.inputs) != 1 or len(op.outputs) != 1:
        raise Unlowerable("the kernel takes one input and one output")
    x, y = op.inputs[0], op.outputs[0]
    s_in, zp_in = _int8_operand(x, "input")
    s_out, zp_out = _int8_operand(y, "output")
    if x.numel != y.numel:
        raise Unlowerable(f"input {x.shape} and output {y.shape} differ in size")
    table = lookup_table(s_in, zp_in, s_out, zp_out, transform)
    return KernelCall("ec_lut_s8", "ec_lut_params", {"size": y.numel, "table": "table"}, {"table": ("int8_t", table)}, [x.index, y.index])


@builder("LOGISTIC")
def build_logistic(op: OpView) -> KernelCall:
    """LOGISTIC int8 -> ``ec_lut_s8(&params, input, output)``: any shape, output scale 1/256.

    Source: ``activations.cc`` ``SigmoidPrepare<kReference>`` (``LUTPopulate<int8_t>`` of
    ``1 / (1 + exp(-x))``; it requires ``output scale == 1/256`` exactly) and ``SigmoidEval``
    (``LookupTable``). (The fixed-point ``reference_integer_ops::Logistic`` is not what LiteRT runs.)
    """
    if op.outputs and op.outputs[0].scale is not None and float(op.outputs[0].scale[0]) != 1.0 / 256:
        raise Unlowerable("int8 LOGISTIC needs output scale 1/256")
    return _lut_call(op, _logistic)


@builder("TANH")
def build_tanh(op: OpView) -> KernelCall:
    """TANH int8 -> ``ec_lut_s8(&params, input, output)``: any shape and parameters.

    Source: ``activations.cc`` ``TanhPrepare<kReference>`` (``LUTPopulate<int8_t>`` of ``tanh``)
    and ``TanhEval`` (``LookupTable``).
    """
    return _lut_call(op, _tanh)
