"""QuantizeLinear / DequantizeLinear: the INT8 extension point of the op registry.

The float32 lowering never sees these nodes (``support()`` reports them through
:meth:`edgecomp_tflite.tensor_types.FloatTensorTypes.unsupported`). INT8 lowering replaces the two
functions below: Q/DQ nodes that :meth:`TensorTypes.folded` marks vanish (their output shares their
input's int8 tensor, :meth:`TensorTypes.alias_of`), the others become QUANTIZE (float -> int8,
and int8 -> int8 requantization) or DEQUANTIZE (int8 -> float) operators
(``tensorflow/lite/kernels/quantize.cc``, ``dequantize.cc``; ONNX QuantizeLinear/DequantizeLinear
specs for the formula ``q = saturate(round(x / scale) + zero_point)``, ties to even in both).
"""

from __future__ import annotations

import onnx_ir as ir
from ai_edge_litert import schema_py_generated as schema

from edgecomp_tflite.context import GraphInfo, LoweringContext
from edgecomp_tflite.ops import register

Builtin = schema.BuiltinOperator

NOT_IMPLEMENTED = "QDQ (INT8) lowering to TFLite is not implemented yet"


def check_qdq(info: GraphInfo, node: ir.Node) -> str | None:
    return NOT_IMPLEMENTED


@register("QuantizeLinear", "DequantizeLinear", check=check_qdq)
def lower_qdq(ctx: LoweringContext, node: ir.Node) -> None:
    """Folded Q/DQ: the output shares the input's tensor; otherwise QUANTIZE / DEQUANTIZE.

    Only reached once a :class:`~edgecomp_tflite.tensor_types.TensorTypes` for QDQ models exists.
    """
    x_value = node.inputs[0]
    if ctx.types.folded(node):
        return  # the context resolves the output to the input's tensor (TensorTypes.alias_of)
    code = Builtin.QUANTIZE if node.op_type == "QuantizeLinear" else Builtin.DEQUANTIZE
    ctx.emit(code, [ctx.read(x_value)], [ctx.define(node.outputs[0], ctx.layout(x_value))])
