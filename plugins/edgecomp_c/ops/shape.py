"""Data-movement and boundary builders: RESHAPE, PAD, PADV2, CONCATENATION, QUANTIZE, DEQUANTIZE
-> ``runtime/ec_shape.h``.

Sources (LiteRT 2.3, ``tflite/kernels``; the same files as TensorFlow's ``tensorflow/lite/kernels``):

- ``reshape.cc``: a byte copy (no check of the quantization parameters).
- ``pad.cc`` ``EvalInt``: int8 PAD pads with the *output's* zero point; PADV2 with its int8
  constant, whose scale and zero point must equal the output's (``TF_LITE_ENSURE_EQ``). At most 5
  dimensions (``PadKernelMaxDimensionCount``), non-negative paddings. Input and output parameters
  are not compared (raw bytes move). ``reference/pad.h``.
- ``concatenation.cc`` ``Prepare``: int8 inputs must all have the output's scale and zero point
  (``TF_LITE_ENSURE_EQ``, exact float equality) and no fused activation: int8 CONCATENATION never
  requantizes (only uint8 goes through ``ConcatenationWithScaling``), so the tflite backend inserts
  an int8 -> int8 QUANTIZE before an input calibrated differently. ``reference/concatenation.h``.
- ``quantize.cc``: float32 -> int8 is ``reference_ops::AffineQuantize`` (``reference/quantize.h``):
  ``clamp(int32(round(x / float(scale))) + zero_point)``, in float32; int8 -> int8 is
  ``reference_ops::Requantize`` (``reference/requantize.h``) with ``QuantizeMultiplier(
  double(in_scale) / double(out_scale))``. Per-channel output quantization is not lowered.
- ``dequantize.cc`` (``kReference``, int8): ``reference_integer_ops::Dequantize``
  (``reference/integer_ops/dequantize.h``): ``float(double(scale) * (q - zero_point))``.
"""

from __future__ import annotations

import numpy as np
from ai_edge_litert import schema_py_generated as schema

from edgecomp_c.ops import builder
from edgecomp_c.ops.quant import quantize_multiplier
from edgecomp_c.program import KernelCall, OpView, TensorInfo, TensorList, Unlowerable

__all__ = ["build_concatenation", "build_dequantize", "build_pad", "build_quantize", "build_reshape"]

#: ``EC_PAD_MAX_DIMS`` in ``runtime/ec_shape.h`` (TFLite's ``PadKernelMaxDimensionCount``).
PAD_MAX_DIMS = 5


def _input(op: OpView, position: int) -> TensorInfo:
    tensor = op.inputs[position] if position < len(op.inputs) else None
    if tensor is None:
        raise Unlowerable(f"input {position} is missing")
    return tensor


def _require_int8(*tensors: TensorInfo) -> None:
    for tensor in tensors:
        if tensor.dtype != np.int8:
            raise Unlowerable(f"tensor {tensor.name!r} is {np.dtype(tensor.dtype).name}; only int8 is lowered")


def _per_tensor(tensor: TensorInfo) -> tuple[float, int]:
    """(scale, zero point) of a per-tensor quantized tensor (raises for per-channel or none)."""
    return tensor.single_scale(), tensor.single_zero_point()


@builder("RESHAPE")
def build_reshape(op: OpView) -> KernelCall:
    """RESHAPE (any element type) -> ``ec_reshape``: ``ec_reshape_params{bytes}`` copies the input's
    bytes to the output (the shape operand is not passed). The emitter may instead store the output
    in the input's buffer; the kernel returns at once when both pointers are equal."""
    x, y = _input(op, 0), op.outputs[0]
    if x.nbytes != y.nbytes:
        raise Unlowerable(f"input {x.shape} and output {y.shape} differ in size")
    return KernelCall("ec_reshape", "ec_reshape_params", {"bytes": x.nbytes}, tensors=[x.index, y.index])


@builder("PAD", "PADV2")
def build_pad(op: OpView) -> KernelCall:
    """PAD / PADV2, int8, rank <= 5, constant paddings ``[rank, 2]`` -> ``ec_pad_s8`` with an
    ``ec_pad_params``: arrays ``input_shape``, ``before``, ``after`` (int32, right-aligned to 5
    dimensions like reference ``Pad``) and the int8 ``pad_value`` (output zero point, or PADV2's
    constant)."""
    x, paddings, y = _input(op, 0), _input(op, 1), op.outputs[0]
    _require_int8(x, y)
    rank = len(x.shape)
    if rank > PAD_MAX_DIMS:
        raise Unlowerable(f"rank {rank} > {PAD_MAX_DIMS} (TFLite's PadKernelMaxDimensionCount)")
    if paddings.data is None:
        raise Unlowerable("paddings must be a constant tensor")
    pads = np.asarray(paddings.data, dtype=np.int64).reshape(-1)
    if pads.size != 2 * rank:
        raise Unlowerable(f"paddings {paddings.shape} do not match rank {rank}")
    pads = pads.reshape(rank, 2)
    if (pads < 0).any():
        raise Unlowerable("negative paddings")
    expected = tuple(int(d + lo + hi) for d, (lo, hi) in zip(x.shape, pads))
    if expected != tuple(y.shape):
        raise Unlowerable(f"output shape {y.shape} is not the padded {expected}")
    value_tensor = op.inputs[2] if op.builtin == "PADV2" and len(op.inputs) > 2 else None
    _, out_zero_point = _per_tensor(y)
    if value_tensor is None:
        pad_value = out_zero_point  # pad.cc EvalInt: the output's zero point (real 0)
        if not -128 <= pad_value <= 127:
            raise Unlowerable(f"output zero point {pad_value} outside int8")
    else:
        _require_int8(value_tensor)
        if value_tensor.data is None or value_tensor.numel != 1:
            raise Unlowerable("the PADV2 constant must be one constant value")
        if _per_tensor(value_tensor) != _per_tensor(y):
            raise Unlowerable("the PADV2 constant needs the output's scale and zero point (TFLite pad.cc)")
        pad_value = int(value_tensor.data.reshape(-1)[0])
    lead = PAD_MAX_DIMS - rank
    shape = [1] * lead + [int(d) for d in x.shape]
    before = [0] * lead + [int(lo) for lo, _ in pads]
    after = [0] * lead + [int(hi) for _, hi in pads]
    arrays = {name: ("int32_t", np.asarray(values, dtype=np.int32)) for name, values in (("input_shape", shape), ("before", before), ("after", after))}
    params = {"input_shape": "input_shape", "before": "before", "after": "after", "pad_value": pad_value}
    return KernelCall("ec_pad_s8", "ec_pad_params", params, arrays, tensors=[x.index, y.index])


@builder("CONCATENATION")
def build_concatenation(op: OpView) -> KernelCall:
    """CONCATENATION, int8, any axis, N inputs -> ``ec_concat_s8`` with an ``ec_concat_params``: the
    inputs as a :class:`~edgecomp_c.program.TensorList`, per-input ``copy_sizes`` (int32 array:
    ``dims_i[axis] * inner``), ``input_count`` and ``outer_count``; only the output is passed as a
    pointer. Inputs must share the output's scale and zero point (TFLite int8 does not requantize)."""
    inputs = [_input(op, i) for i in range(len(op.inputs))]
    y = op.outputs[0]
    if not inputs:
        raise Unlowerable("no inputs")
    _require_int8(y, *inputs)
    options = op.options
    if options is not None and int(options.fusedActivationFunction) != schema.ActivationFunctionType.NONE:
        raise Unlowerable("a fused activation (TFLite's CONCATENATION requires NONE)")
    rank = len(y.shape)
    if rank == 0:
        raise Unlowerable("scalar concatenation")
    axis = int(options.axis) if options is not None else 0
    axis = axis + rank if axis < 0 else axis
    if not 0 <= axis < rank:
        raise Unlowerable(f"axis {axis} out of range for rank {rank}")
    out_params = _per_tensor(y)
    for tensor in inputs:
        if len(tensor.shape) != rank or any(tensor.shape[d] != y.shape[d] for d in range(rank) if d != axis):
            raise Unlowerable(f"input {tensor.shape} does not fit output {y.shape} on axis {axis}")
        if _per_tensor(tensor) != out_params:
            raise Unlowerable(f"input {tensor.name!r} has other quantization parameters than the output (TFLite int8 CONCATENATION requires equal ones)")
    if sum(tensor.shape[axis] for tensor in inputs) != y.shape[axis]:
        raise Unlowerable(f"inputs do not add up to the output's axis {axis}")
    inner = int(np.prod(y.shape[axis + 1 :], dtype=np.int64))
    outer = int(np.prod(y.shape[:axis], dtype=np.int64))
    copy_sizes = np.asarray([tensor.shape[axis] * inner for tensor in inputs], dtype=np.int32)
    params = {
        "inputs": TensorList(tuple(tensor.index for tensor in inputs), "int8_t"),
        "copy_sizes": "copy_sizes",
        "input_count": len(inputs),
        "outer_count": outer,
    }
    return KernelCall("ec_concat_s8", "ec_concat_params", params, {"copy_sizes": ("int32_t", copy_sizes)}, tensors=[y.index])


@builder("QUANTIZE")
def build_quantize(op: OpView) -> KernelCall:
    """QUANTIZE: float32 -> int8 (``ec_quantize_f32_s8``, ``ec_quantize_params{size, scale,
    zero_point}``) or int8 -> int8 (``ec_requantize_s8``, ``ec_requantize_params{size, multiplier,
    shift, input_zero_point, output_zero_point}``); per-tensor output parameters."""
    x, y = _input(op, 0), op.outputs[0]
    _require_int8(y)
    if x.numel != y.numel:
        raise Unlowerable(f"input {x.shape} and output {y.shape} differ in size")
    out_scale, out_zero_point = _per_tensor(y)
    if x.dtype == np.float32:
        params = {"size": y.numel, "scale": out_scale, "zero_point": out_zero_point}
        return KernelCall("ec_quantize_f32_s8", "ec_quantize_params", params, tensors=[x.index, y.index])
    if x.dtype == np.int8:
        in_scale, in_zero_point = _per_tensor(x)
        multiplier, shift = quantize_multiplier(in_scale / out_scale)  # double(in) / double(out)
        params = {"size": y.numel, "multiplier": multiplier, "shift": shift, "input_zero_point": in_zero_point, "output_zero_point": out_zero_point}
        return KernelCall("ec_requantize_s8", "ec_requantize_params", params, tensors=[x.index, y.index])
    raise Unlowerable(f"QUANTIZE from {np.dtype(x.dtype).name} (float32 and int8 inputs are lowered)")


@builder("DEQUANTIZE")
def build_dequantize(op: OpView) -> KernelCall:
    """DEQUANTIZE int8 -> float32, per-tensor -> ``ec_dequantize_s8_f32`` with
    ``ec_dequantize_params{size, scale, zero_point}``."""
    x, y = _input(op, 0), op.outputs[0]
    _require_int8(x)
    if y.dtype != np.float32:
        raise Unlowerable(f"DEQUANTIZE to {np.dtype(y.dtype).name} (float32 is lowered)")
    if x.numel != y.numel:
        raise Unlowerable(f"input {x.shape} and output {y.shape} differ in size")
    scale, zero_point = _per_tensor(x)
    return KernelCall("ec_dequantize_s8_f32", "ec_dequantize_params", {"size": x.numel, "scale": scale, "zero_point": zero_point}, tensors=[x.index, y.index])
