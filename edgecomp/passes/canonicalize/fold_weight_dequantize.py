"""FoldWeightDequantizePass: DequantizeLinear of constant weights becomes a float initializer."""

from __future__ import annotations

import logging

import numpy as np
import onnx_ir as ir

from edgecomp.errors import ModelError
from edgecomp.passes.rewrite import NodeRewritePass
from edgecomp.passes.canonicalize._util import constant_array, replace_with_initializers

__all__ = ["FoldWeightDequantizePass", "dequantize"]

logger = logging.getLogger(__name__)

#: Quantized element types folded here (numpy dtypes). float8, int4/uint4 and float4 are not.
INTEGER_QUANTIZED_DTYPES = frozenset(np.dtype(name) for name in ("int8", "uint8", "int16", "uint16", "int32"))


class FoldWeightDequantizePass(NodeRewritePass):
    """Replaces ``DequantizeLinear`` nodes whose x, scale and zero point are constants by initializers.

    These are the weights and biases of a pre-quantized or quantization-aware-trained (QAT) QDQ model,
    e.g. the 20 DequantizeLinear nodes of MLPerf Tiny ``kws_ref_model_int8_qdq.onnx`` (10 int8 weights,
    9 per-channel and 1 per-tensor, and 10 int32 biases).
    Running this pass turns such a model's weights back into float (its activation
    QuantizeLinear/DequantizeLinear pairs stay), so only run it when the learned weight scales are not
    to be kept (``canonicalization_passes(fold_weight_dequantize=True)``).

    The value is computed as in :func:`dequantize`. Supported: x int8, uint8, int16, uint16 or int32;
    per-tensor (scale a scalar or one element) or per-axis (scale 1-D [x.shape[axis]], ``axis``
    default 1, negative counts from the end, opset >= 13); zero point absent (0) or of the scale's
    shape. The initializer takes the DequantizeLinear output's name; its dtype is ``output_dtype``
    when set (opset >= 23), else the scale's dtype (float32 in practice).

    Refused (left as a node, reason in :attr:`refusals`): ``block_size`` set or a scale of rank > 1
    (blocked quantization, opset >= 21); float8/int4/float4 x; an output that is a graph output.

    Attributes:
        refusals: after a run, DequantizeLinear node name -> why it was left (only nodes whose
            inputs are all constants are listed).

    Raises:
        ModelError: a per-axis DequantizeLinear whose ``axis`` is out of range or whose scale length
            differs from ``x.shape[axis]``, or whose zero point shape differs from the scale's (the
            model is invalid; ONNX Runtime would refuse it too).
    """

    op_type = "DequantizeLinear"

    def check(self, model: ir.Model, node: ir.Node) -> tuple[np.ndarray, np.ndarray, np.ndarray | None] | str | None:
        x, scale = constant_array(node.inputs[0]), constant_array(node.inputs[1])
        has_zero_point = len(node.inputs) > 2 and node.inputs[2] is not None
        zero_point = constant_array(node.inputs[2]) if has_zero_point else None
        if x is None or scale is None or (has_zero_point and zero_point is None):
            return None  # an activation: not a weight
        return _check(node, x, scale) or (x, scale, zero_point)

    def rewrite(self, model: ir.Model, node: ir.Node, match: tuple[np.ndarray, np.ndarray, np.ndarray | None]) -> None:
        x, scale, zero_point = match
        output_dtype = node.attributes.get_int("output_dtype", 0)
        dtype = ir.DataType(output_dtype).numpy() if output_dtype else scale.dtype
        try:
            value = dequantize(x, scale, zero_point, axis=node.attributes.get_int("axis", 1), dtype=dtype)
        except ValueError as error:
            raise ModelError(f"DequantizeLinear node {node.name!r}: {error}") from error
        replace_with_initializers(model.graph, node, [value])

def _check(node: ir.Node, x: np.ndarray, scale: np.ndarray) -> str | None:
    if node.attributes.get_int("block_size", 0):
        return "block_size is set (blocked quantization is out of scope)"
    if scale.ndim > 1:
        return f"scale has rank {scale.ndim} (blocked quantization is out of scope)"
    if x.dtype not in INTEGER_QUANTIZED_DTYPES:
        return f"x has dtype {node.inputs[0].dtype}, not int8/uint8/int16/uint16/int32"
    if node.outputs[0].is_graph_output():
        return "output is a graph output"
    return None


def dequantize(
    x: np.ndarray,
    scale: np.ndarray,
    zero_point: np.ndarray | None,
    *,
    axis: int = 1,
    dtype: np.dtype | type = np.float32,
) -> np.ndarray:
    """Computes ONNX DequantizeLinear ``y = (x - zero_point) * scale`` in numpy.

    Semantics of the ONNX DequantizeLinear spec (opsets 13, 19, 21): per-tensor when scale has one
    element, else per-axis along ``axis`` (negative counts from the end), scale and zero point
    being 1-D [x.shape[axis]]. ``x - zero_point`` is exact (int64), converted to float32 and
    multiplied by the float32 scale in float32, as ONNX Runtime's CPU kernel does, then cast to
    ``dtype``; so float32 results are bit-identical to ONNX Runtime's.

    Args:
        x: integer array, any shape.
        scale: float array, shape [] / [1] (per-tensor) or [x.shape[axis]] (per-axis).
        zero_point: integer array of the scale's shape, or None for 0.
        axis: the quantization axis for a per-axis scale, in [-x.ndim, x.ndim).
        dtype: the output dtype (float32, float16 or bfloat16).

    Returns:
        array of ``dtype`` and x's shape.

    Raises:
        ValueError: ``axis`` out of range, scale length not ``x.shape[axis]``, or a zero point
            whose shape differs from the scale's.
    """
    if zero_point is None:
        zero_point = np.zeros(scale.shape, np.int64)
    if zero_point.shape != scale.shape:
        raise ValueError(f"zero point shape {list(zero_point.shape)} differs from scale shape {list(scale.shape)}")
    shifted = x.astype(np.int64)
    if scale.size == 1:
        shifted = shifted - zero_point.astype(np.int64).reshape(())
        result = shifted.astype(np.float32) * scale.astype(np.float32).reshape(())
        return result.astype(dtype)
    if not -x.ndim <= axis < x.ndim:
        raise ValueError(f"axis {axis} is out of range for x of rank {x.ndim}")
    axis = axis % x.ndim
    if x.shape[axis] != scale.size:
        raise ValueError(f"scale has {scale.size} elements but x.shape[{axis}] is {x.shape[axis]}")
    broadcast_shape = [1] * x.ndim
    broadcast_shape[axis] = scale.size
    shifted = shifted - zero_point.astype(np.int64).reshape(broadcast_shape)
    result = shifted.astype(np.float32) * scale.astype(np.float32).reshape(broadcast_shape)
    return result.astype(dtype)
