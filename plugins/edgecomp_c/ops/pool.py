"""Pooling and mean builders: MAX_POOL_2D, AVERAGE_POOL_2D, MEAN (int8) -> ``runtime/ec_pool.h``.

Sources (LiteRT 2.3, ``tflite/kernels``; the same files as TensorFlow's ``tensorflow/lite/kernels``):

- ``pooling.cc`` ``GenericPrepare``: output size and padding by ``ComputePaddingHeightWidth``
  (``padding.h``: SAME pads ``total // 2`` before, the odd extra row/column after; VALID pads
  nothing); int8 pools assume equal input/output parameters (a ``TFLITE_DCHECK``: release builds do
  not check, the kernels simply move raw values) and clamp to ``CalculateActivationRangeQuantized``
  of the fused activation. Arithmetic: ``reference/integer_ops/pooling.h``.
- ``reduce.cc`` ``PrepareMeanOrSum`` / ``EvalMean<kReference>``: for int8 the reference resolver
  always runs ``reference_ops::QuantizedMeanOrSum`` (``reference/reduce.h``), any axes, input and
  output parameters free: ``(multiplier, shift) = QuantizeMultiplier(double(in_scale) /
  double(out_scale))``, then, with ``n`` the number of averaged elements,
  ``s = min(floor(log2 n), 32, 31 + shift)``, ``multiplier = (multiplier << s) // n`` (int64),
  ``shift -= s``; each output is ``MultiplyByQuantizedMultiplier(sum(q) - in_zp * n, multiplier,
  shift) + out_zp`` clamped to int8. (The optimized resolver's 4-D H,W fast path,
  ``optimized_integer_ops::Mean``, rounds differently; it is not what BUILTIN_REF runs.)
"""

from __future__ import annotations

import numpy as np
from ai_edge_litert import schema_py_generated as schema

from edgecomp_c.ops import builder
from edgecomp_c.ops.quant import activation_range, quantize_multiplier
from edgecomp_c.program import KernelCall, OpView, TensorInfo, Unlowerable

__all__ = ["build_mean", "build_pool", "mean_multiplier", "pool_padding"]

#: ``EC_MEAN_MAX_GROUPS`` in ``runtime/ec_pool.h``.
MEAN_MAX_GROUPS = 8


def _require_int8(*tensors: TensorInfo) -> None:
    for tensor in tensors:
        if tensor.dtype != np.int8:
            raise Unlowerable(f"tensor {tensor.name!r} is {np.dtype(tensor.dtype).name}; only int8 is lowered")


def pool_padding(padding: int, in_size: int, filter_size: int, stride: int) -> tuple[int, int]:
    """TFLite's output size and leading padding of one spatial axis (``ComputeOutSizeChecked`` and
    ``ComputePaddingWithOffset``, dilation 1).

    Args:
        padding: ``schema.Padding.SAME`` or ``VALID``.
        in_size, filter_size, stride: the axis' input size, window size and stride.

    Returns:
        ``(out_size, pad_before)``: SAME gives ``ceil(in / stride)`` outputs and ``total // 2`` rows
        before (``total = max((out - 1) * stride + filter - in, 0)``), VALID ``(in - filter + stride)
        // stride`` and 0 (its ``total`` is never positive).
    """
    if padding == schema.Padding.SAME:
        out = (in_size + stride - 1) // stride
    elif padding == schema.Padding.VALID:
        out = (in_size + stride - filter_size) // stride
    else:
        raise Unlowerable(f"padding {padding} is neither SAME nor VALID")
    total = max((out - 1) * stride + filter_size - in_size, 0)
    return out, total // 2


@builder("MAX_POOL_2D", "AVERAGE_POOL_2D")
def build_pool(op: OpView) -> KernelCall:
    """MAX_POOL_2D / AVERAGE_POOL_2D, int8 NHWC ``[N, H, W, C] -> [N, OH, OW, C]`` -> ``ec_max_pool_s8`` /
    ``ec_avg_pool_s8`` with an ``ec_pool_params`` (shapes, window, SAME/VALID leading padding,
    fused activation range)."""
    x, y = op.inputs[0], op.outputs[0]
    if x is None:
        raise Unlowerable("input is missing")
    _require_int8(x, y)
    if len(x.shape) != 4 or len(y.shape) != 4:
        raise Unlowerable(f"input {x.shape} / output {y.shape} must be 4-D NHWC")
    options = op.options
    if options is None:
        raise Unlowerable("Pool2DOptions missing")
    stride_h, stride_w = int(options.strideH), int(options.strideW)
    filter_h, filter_w = int(options.filterHeight), int(options.filterWidth)
    if min(stride_h, stride_w, filter_h, filter_w) <= 0:
        raise Unlowerable(f"strides {stride_h}x{stride_w} and window {filter_h}x{filter_w} must be positive")
    # pooling.cc: TFLITE_DCHECK that int8 pools keep their input's parameters (the kernels move raw values)
    if abs(x.single_scale() - y.single_scale()) > 1.0e-6 or x.single_zero_point() != y.single_zero_point():
        raise Unlowerable("int8 pools need equal input and output scale/zero point (TFLite pooling.cc)")
    batches, height, width, channels = x.shape
    out_h, pad_h = pool_padding(int(options.padding), height, filter_h, stride_h)
    out_w, pad_w = pool_padding(int(options.padding), width, filter_w, stride_w)
    if (batches, out_h, out_w, channels) != tuple(y.shape):
        raise Unlowerable(f"output shape {y.shape} is not TFLite's {(batches, out_h, out_w, channels)}")
    act_min, act_max = activation_range(int(options.fusedActivationFunction), y)
    is_max = op.builtin == "MAX_POOL_2D"
    params = {
        "batches": batches,
        "input_height": height,
        "input_width": width,
        "channels": channels,
        "output_height": out_h,
        "output_width": out_w,
        "filter_height": filter_h,
        "filter_width": filter_w,
        "stride_height": stride_h,
        "stride_width": stride_w,
        "pad_height": pad_h,
        "pad_width": pad_w,
        "activation_min": act_min,
        "activation_max": act_max,
    }
    return KernelCall("ec_max_pool_s8" if is_max else "ec_avg_pool_s8", "ec_pool_params", params, tensors=[x.index, y.index])


def mean_multiplier(input_scale: float, output_scale: float, num_elements: int) -> tuple[int, int]:
    """The MEAN requantization of ``reference_ops::QuantizedMeanOrSum``: ``QuantizeMultiplier`` of
    ``double(input_scale) / double(output_scale)`` (``PrepareMeanOrSum``), with ``1 / num_elements``
    folded in at Eval as the reference does it (integer arithmetic, exact).

    Returns:
        ``(multiplier, shift)`` for ``MultiplyByQuantizedMultiplier`` (shift > 0: left shift).
    """
    multiplier, shift = quantize_multiplier(float(np.float32(input_scale)) / float(np.float32(output_scale)))
    if num_elements <= 0:
        raise Unlowerable("MEAN over an empty axis")
    # 63 - CountLeadingZeros(uint64 n) = floor(log2 n), clamped so that shift - s >= -31; s >= 0
    # because QuantizeMultiplier never returns a shift below -31
    s = min(num_elements.bit_length() - 1, 32, 31 + shift)
    folded = (multiplier << s) // num_elements  # int64 (multiplier << s) / n, both non-negative
    return int(folded), int(shift - s)


def _merge_groups(shape: tuple[int, ...], reduced: set[int]) -> list[tuple[bool, int, int]]:
    """Adjacent axes of the same kind (kept or reduced) merged, size-1 axes dropped:
    ``[(is_reduced, size, input stride in elements)]`` in axis order."""
    strides = [int(np.prod(shape[axis + 1 :], dtype=np.int64)) for axis in range(len(shape))]
    groups: list[list] = []
    for axis, size in enumerate(shape):
        if size == 1:
            continue
        kind = axis in reduced
        if groups and groups[-1][0] == kind and groups[-1][2] == size * strides[axis]:
            groups[-1][1] *= size
            groups[-1][2] = strides[axis]
        else:
            groups.append([kind, size, strides[axis]])
    return [(kind, size, stride) for kind, size, stride in groups]


@builder("MEAN")
def build_mean(op: OpView) -> KernelCall:
    """MEAN, int8, any constant axes, ``keep_dims`` either way -> ``ec_mean_s8`` with an
    ``ec_mean_params``: the input's kept and reduced axes merged into groups (arrays
    ``kept_dims``/``kept_strides``/``reduced_dims``/``reduced_strides``, int32, input strides in
    elements) and the folded requantization (:func:`mean_multiplier`).

    Examples: NHWC ``[1, 5, 5, 64]`` over ``[1, 2]`` -> kept ``[64]`` (stride 1), reduced ``[25]``
    (stride 64); NCHW ``[2, 3, 7, 9]`` over ``[2, 3]`` -> kept ``[6]`` (stride 63), reduced ``[63]`` (stride 1)."""
    x, axes, y = op.inputs[0], op.inputs[1] if len(op.inputs) > 1 else None, op.outputs[0]
    if x is None or axes is None:
        raise Unlowerable("input or axes missing")
    _require_int8(x, y)
    if axes.data is None:
        raise Unlowerable("axes must be a constant tensor")
    rank = len(x.shape)
    resolved = sorted({int(a) + rank if int(a) < 0 else int(a) for a in axes.data.reshape(-1)})  # ResolveAxis
    if any(not 0 <= a < rank for a in resolved):
        raise Unlowerable(f"axes {axes.data.tolist()} out of range for rank {rank}")
    if any(d <= 0 for d in x.shape):
        raise Unlowerable(f"input shape {x.shape} has an empty dimension")
    num_elements = int(np.prod([x.shape[a] for a in resolved], dtype=np.int64))
    kept_shape = [d for a, d in enumerate(x.shape) if a not in resolved]
    if int(np.prod(kept_shape, dtype=np.int64)) != y.numel:
        raise Unlowerable(f"output shape {y.shape} does not match input {x.shape} reduced over {resolved}")
    groups = _merge_groups(x.shape, set(resolved))
    kept = [(size, stride) for is_reduced, size, stride in groups if not is_reduced]
    reduced = [(size, stride) for is_reduced, size, stride in groups if is_reduced]
    if len(kept) > MEAN_MAX_GROUPS or len(reduced) > MEAN_MAX_GROUPS:
        raise Unlowerable(f"more than {MEAN_MAX_GROUPS} alternating kept/reduced axis groups")
    if x.numel >= 2**31 or num_elements * 255 >= 2**31:
        raise Unlowerable("tensor too large for the int32 index and sum arithmetic")
    multiplier, shift = mean_multiplier(x.single_scale(), y.single_scale(), num_elements)

    def array(values: list[int]) -> tuple[str, np.ndarray]:
        return ("int32_t", np.asarray(values, dtype=np.int32))

    arrays = {
        "kept_dims": array([size for size, _ in kept]),
        "kept_strides": array([stride for _, stride in kept]),
        "reduced_dims": array([size for size, _ in reduced]),
        "reduced_strides": array([stride for _, stride in reduced]),
    }
    params = {
        "kept_count": len(kept),
        "kept_dims": "kept_dims",
        "kept_strides": "kept_strides",
        "reduced_count": len(reduced),
        "reduced_dims": "reduced_dims",
        "reduced_strides": "reduced_strides",
        "num_elements": num_elements,
        "input_zero_point": x.single_zero_point(),
        "output_zero_point": y.single_zero_point(),
        "multiplier": multiplier,
        "shift": shift,
    }
    return KernelCall("ec_mean_s8", "ec_mean_params", params, arrays, tensors=[x.index, y.index])
