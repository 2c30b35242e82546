"""Quantization arithmetic shared by the op builders, as TFLite's ``Prepare`` functions compute it.

Sources: ``tensorflow/lite/kernels/internal/quantization_util.cc`` (``QuantizeMultiplier``,
``QuantizeMultiplierSmallerThanOneExp``, ``QuantizeMultiplierGreaterThanOne``) and
``tensorflow/lite/kernels/kernel_util.cc`` (``CalculateActivationRangeQuantized``). The C side of
this arithmetic is ``runtime/ec_fixedpoint.h``.
"""

from __future__ import annotations

import math

import numpy as np
from ai_edge_litert import schema_py_generated as schema

from edgecomp_c.program import TensorInfo, Unlowerable

__all__ = ["activation_range", "quantize_multiplier", "round_half_away", "tflite_round_f32"]


def round_half_away(value: float) -> int:
    """``std::round`` (``TfLiteRound``): to nearest, ties away from zero, of a double."""
    return int(math.copysign(math.floor(abs(value) + 0.5), value))


def tflite_round_f32(value) -> int:
    """``std::round`` of a float32 value (the argument is converted to float32 first)."""
    v = np.float32(value)
    return int(np.copysign(np.floor(np.abs(v) + np.float32(0.5)), v))


def quantize_multiplier(real_multiplier: float) -> tuple[int, int]:
    """``QuantizeMultiplier``: ``real_multiplier ~= quantized_multiplier * 2**(shift - 31)``.

    Returns:
        ``(quantized_multiplier, shift)``: int32 multiplier in [2**30, 2**31) (0 for 0), and the
        power-of-two exponent (positive: left shift). Exponents below -31 give ``(0, 0)``.
    """
    if real_multiplier == 0.0:
        return 0, 0
    q, shift = math.frexp(real_multiplier)
    q_fixed = round_half_away(q * (1 << 31))
    if q_fixed == (1 << 31):
        q_fixed //= 2
        shift += 1
    if shift < -31:
        return 0, 0
    return int(q_fixed), int(shift)


def activation_range(fused: int, output: TensorInfo) -> tuple[int, int]:
    """``CalculateActivationRangeQuantized`` for an int8 output: the clamp ``[min, max]`` of a fused
    activation (``schema.ActivationFunctionType``) in the output's quantized domain.

    Raises:
        Unlowerable: an activation other than NONE, RELU, RELU6, RELU_N1_TO_1.
    """
    qmin, qmax = -128, 127
    scale = np.float32(output.single_scale())
    zero_point = output.single_zero_point()

    def quantize(value: float) -> int:
        return zero_point + tflite_round_f32(np.float32(value) / scale)

    A = schema.ActivationFunctionType
    if fused == A.NONE:
        return qmin, qmax
    if fused == A.RELU:
        return max(qmin, quantize(0.0)), qmax
    if fused == A.RELU6:
        return max(qmin, quantize(0.0)), min(qmax, quantize(6.0))
    if fused == A.RELU_N1_TO_1:
        return max(qmin, quantize(-1.0)), min(qmax, quantize(1.0))
    raise Unlowerable(f"fused activation {fused} has no int8 kernel")
