"""QAT and pre-quantized models: keep the QuantizeLinear/DequantizeLinear the model already carries.

A model exported from quantization-aware training (PyTorch, TensorFlow) or converted from an int8
TFLite file already is in QDQ form with learned (or calibrated) scales. Compiling it with
``--quantize qat`` (chosen automatically for such models) changes no scale or zero point: the plan
is read off the model, so it documents what the model carries.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from edgecomp.passes.quantize.plan import NodePlan, QuantizationPlan, TensorPlan

QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
WEIGHT_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
KEPT = "kept from the input model"


def has_qdq(model: ir.Model) -> bool:
    """True when the graph contains QuantizeLinear or DequantizeLinear nodes."""
    return any(node.op_type in QDQ_OPS and node.domain in ("", "ai.onnx") for node in model.graph)


def _parameters(node: ir.Node) -> tuple[tuple[float, ...], tuple[int, ...], int | None]:
    scale = np.atleast_1d(node.inputs[1].const_value.numpy()).astype(np.float32)
    zero_point_value = node.inputs[2] if len(node.inputs) > 2 else None
    zero_point = (
        np.atleast_1d(zero_point_value.const_value.numpy()).astype(np.int64)
        if zero_point_value is not None and zero_point_value.const_value is not None
        else np.zeros(scale.shape, np.int64)
    )
    axis = node.attributes.get_int("axis", 1) if scale.size > 1 else None
    return tuple(float(s) for s in scale), tuple(int(z) for z in zero_point), axis


def _role(dequantize: ir.Node) -> str:
    data = dequantize.inputs[0]
    if data.dtype == ir.DataType.INT32:
        return "bias"
    for use in dequantize.outputs[0].uses():
        if use.node.op_type in WEIGHT_OPS and use.idx == 1:
            return "weight"
    return "constant"


def plan_from_qdq(model: ir.Model) -> QuantizationPlan:
    """The quantization plan a QDQ model carries: every Q/DQ's scale, zero point and axis, unchanged.

    Nodes fed by a DequantizeLinear are ``int8`` (they run on quantized inputs), the rest ``fp32``.
    Activations are named by the tensor a QuantizeLinear quantizes, or by the int8 graph input a
    DequantizeLinear reads; constants by their initializer.

    Raises:
        KeyError: never for valid models; a Q/DQ whose scale is not a constant is skipped.
    """
    tensors: dict[str, TensorPlan] = {}
    nodes: list[NodePlan] = []
    for node in model.graph:
        if node.op_type in QDQ_OPS:
            if node.inputs[1].const_value is None:
                continue
            scale, zero_point, axis = _parameters(node)
            data = node.inputs[0]
            quantized = node.outputs[0] if node.op_type == "QuantizeLinear" else data
            if node.op_type == "DequantizeLinear" and data.const_value is not None:
                role = _role(node)
            elif node.op_type == "DequantizeLinear" and not data.is_graph_input():
                continue  # the DequantizeLinear of an activation a QuantizeLinear already described
            else:
                role = "activation"
            dtype = str(quantized.dtype.name).lower() if quantized.dtype is not None else "int8"
            granularity = "per-channel" if axis is not None else "per-tensor"
            tensors.setdefault(data.name, TensorPlan(data.name, role, dtype, granularity, axis, scale, zero_point, KEPT))
            continue
        quantized_inputs = any(v is not None and v.producer() is not None and v.producer().op_type == "DequantizeLinear" for v in node.inputs)
        if quantized_inputs:
            nodes.append(NodePlan(node.name, node.op_type, "int8", f"quantized in the input model (QAT or pre-quantized): scales {KEPT}"))
        else:
            nodes.append(NodePlan(node.name, node.op_type, "fp32", "float in the input model"))
    return QuantizationPlan("qat", "none (scales kept)", 0, tuple(nodes), tuple(sorted(tensors.values(), key=lambda t: t.name)))
