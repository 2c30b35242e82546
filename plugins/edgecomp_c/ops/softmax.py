"""SOFTMAX int8 -> int8 builder (kernel: ``runtime/ec_softmax.h``).

With ``OpResolverType.BUILTIN_REF`` LiteRT registers ``Register_SOFTMAX_REF``:
``SoftmaxPrepare<kReference>`` (``tflite/kernels/activations.cc``) computes the gemmlowp fixed-point
parameters below and ``SoftmaxEval`` runs ``reference_ops::Softmax``
(``kernels/internal/reference/softmax.h``). The lookup-table paths (``PopulateSoftmaxLookupTable``,
``SoftmaxInt8LUT``) belong to the optimized kernels only.

Parameters (``kernels/internal/quantization_util.cc``), with ``kScaledDiffIntegerBits = 5``:

- ``PreprocessSoftmaxScaling``: ``real = min(double(beta) * double(input_scale) * 2**26, 2**31 - 1)``
  then ``QuantizeMultiplierGreaterThanOne(real) -> (input_multiplier, input_left_shift)``;
- ``CalculateInputRadius(5, input_left_shift)``: ``floor(31 * 2**26 / 2**input_left_shift)``, and
  ``diff_min = -radius``: input differences ``x - max(row)`` below it output -128 and add nothing.

Prepare also requires the int8 output to have zero point -128 and a scale within 0.1% of 1/256.
"""

from __future__ import annotations

import math

import numpy as np

from edgecomp_c.ops import builder
from edgecomp_c.ops.quant import quantize_multiplier
from edgecomp_c.program import KernelCall, OpView, Unlowerable

__all__ = ["calculate_input_radius", "preprocess_softmax_scaling"]

#: ``kScaledDiffIntegerBits``: the scaled input differences are Q5.26.
SCALED_DIFF_INTEGER_BITS = 5


def preprocess_softmax_scaling(beta: float, input_scale: float, input_integer_bits: int = SCALED_DIFF_INTEGER_BITS) -> tuple[int, int]:
    """``PreprocessSoftmaxScaling`` (double-rounding build): ``(input_multiplier, input_left_shift)``.

    Args:
        beta: the SOFTMAX option, a float32 value.
        input_scale: the input's scale, a float32 value.

    Raises:
        Unlowerable: ``beta * input_scale * 2**(31 - input_integer_bits) <= 1`` (TFLite's
            ``QuantizeMultiplierGreaterThanOne`` aborts).
    """
    real = min(float(np.float32(beta)) * float(np.float32(input_scale)) * float(1 << (31 - input_integer_bits)), float((1 << 31) - 1))
    if not real > 1.0:
        raise Unlowerable(f"beta * input scale = {beta!r} * {input_scale!r} is too small for the fixed-point softmax")
    multiplier, shift = quantize_multiplier(real)
    if shift < 0:  # cannot happen for real > 1; TFLite checks it
        raise Unlowerable(f"softmax multiplier {real!r} has a negative shift")
    return multiplier, shift


def calculate_input_radius(input_integer_bits: int, input_left_shift: int, total_signed_bits: int = 31) -> int:
    """``CalculateInputRadius``: the largest input difference whose rescaled value fits the format."""
    max_input_rescaled = 1.0 * ((1 << input_integer_bits) - 1) * (1 << (total_signed_bits - input_integer_bits)) / (1 << input_left_shift)
    return math.floor(max_input_rescaled)


@builder("SOFTMAX")
def build_softmax(op: OpView) -> KernelCall:
    """SOFTMAX int8 -> int8 over the last axis -> ``ec_softmax_s8(&params, input, output)``.

    Shapes: input and output equal, any rank >= 1 (``rows`` = product of all axes but the last,
    ``depth`` = the last). Dtypes: int8 per-tensor input; int8 output with zero point -128 and
    scale 1/256 (TFLite's Prepare check: within 0.001/256).
    """
    if len(op.inputs) != 1 or len(op.outputs) != 1:
        raise Unlowerable("the kernel takes one input and one output")
    x, y = op.inputs[0], op.outputs[0]
    if x is None or np.dtype(x.dtype) != np.int8 or np.dtype(y.dtype) != np.int8:
        raise Unlowerable("the kernel is int8 -> int8")
    if not x.shape or x.shape != y.shape:
        raise Unlowerable(f"input {x.shape} and output {y.shape} must be equal, rank >= 1")
    if y.single_zero_point() != -128:
        raise Unlowerable(f"output zero point {y.single_zero_point()}; int8 SOFTMAX needs -128")
    reference = np.float32(1.0 / 256)
    if abs(np.float32(y.single_scale()) - reference) > np.float32(0.001) * reference:
        raise Unlowerable(f"output scale {y.single_scale()!r}; int8 SOFTMAX needs 1/256")
    beta = getattr(op.options, "beta", None)
    if beta is None:
        raise Unlowerable("no beta (SoftmaxOptions missing)")
    multiplier, shift = preprocess_softmax_scaling(float(beta), x.single_scale())
    diff_min = -calculate_input_radius(SCALED_DIFF_INTEGER_BITS, shift)
    depth = int(x.shape[-1])
    if depth < 1:
        raise Unlowerable("empty softmax axis")
    params = {
        "input_multiplier": multiplier,
        "input_left_shift": shift,
        "diff_min": diff_min,
        "rows": x.numel // depth,
        "depth": depth,
    }
    return KernelCall("ec_softmax_s8", "ec_softmax_params", params, {}, [x.index, y.index])
