"""QuantizeLinear / DequantizeLinear -> nothing (folded), QUANTIZE, or nothing else.

Which Q/DQ nodes vanish is decided by :class:`~edgecomp_tflite.qdq_types.QdqTensorTypes`
(:meth:`TensorTypes.folded`): a DequantizeLinear always does (its output shares its int8 input's
tensor; float nodes read that tensor through a DEQUANTIZE view made by the context, graph outputs
too), and a QuantizeLinear does when its input is already the int8 tensor with its parameters (the
output of an int8 group). The other QuantizeLinear nodes become QUANTIZE operators
(``tensorflow/lite/kernels/quantize.cc``): float -> int8 at a float boundary (a float graph input,
the output of a float node in a hybrid model), or int8 -> int8 requantization. Formula (ONNX
QuantizeLinear spec, TFLite ``quantize.cc``): ``q = saturate(round(x / scale) + zero_point)``, ties to
even in both.

The float32 lowering never sees these nodes (``support()`` reports them through
:meth:`edgecomp_tflite.tensor_types.FloatTensorTypes.unsupported`).
"""

from __future__ import annotations

import onnx_ir as ir
from ai_edge_litert import schema_py_generated as schema

from edgecomp_tflite.context import GraphInfo, LoweringContext
from edgecomp_tflite.ops import register

Builtin = schema.BuiltinOperator


def check_qdq(info: GraphInfo, node: ir.Node) -> str | None:
    """Element types are checked by the tensor types (:meth:`TensorTypes.unsupported`); nothing else."""
    return None


@register("QuantizeLinear", "DequantizeLinear", check=check_qdq)
def lower_qdq(ctx: LoweringContext, node: ir.Node) -> None:
    """Folded Q/DQ: nothing (the output shares the input's tensor); otherwise QUANTIZE."""
    if ctx.types.folded(node):
        return
    if node.op_type == "DequantizeLinear":  # not produced by QdqTensorTypes; kept for other TensorTypes
        x_value = node.inputs[0]
        ctx.emit(Builtin.DEQUANTIZE, [ctx.read(x_value)], [ctx.define(node.outputs[0], ctx.layout(x_value))])
        return
    x_value = node.inputs[0]
    ctx.emit(Builtin.QUANTIZE, [ctx.read(x_value)], [ctx.define(node.outputs[0], ctx.layout(x_value))])
