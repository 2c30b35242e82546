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

    Nodes the model quantizes (weights through a DequantizeLinear, or outputs only into
    QuantizeLinear) are ``int8``, the rest ``fp32``.
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
        if _already_quantized(node):
            nodes.append(NodePlan(node.name, node.op_type, "int8", f"quantized in the input model (QAT or pre-quantized): scales {KEPT}"))
        else:
            nodes.append(NodePlan(node.name, node.op_type, "fp32", "float in the input model"))
    return QuantizationPlan("qat", "none (scales kept)", 0, tuple(nodes), tuple(sorted(tensors.values(), key=lambda t: t.name)))


def _is_dequantized(value: ir.Value | None) -> bool:
    return value is not None and value.producer() is not None and value.producer().op_type == "DequantizeLinear"


def _already_quantized(node: ir.Node) -> bool:
    """The input model quantizes this node: its weight comes through a DequantizeLinear (Conv, Gemm,
    MatMul), or every output goes only to QuantizeLinear nodes."""
    if node.op_type in WEIGHT_OPS and len(node.inputs) > 1:
        return _is_dequantized(node.inputs[1])
    uses = [use for output in node.outputs for use in output.uses()]
    return bool(uses) and all(use.node.op_type == "QuantizeLinear" for use in uses)


def _dequantized_parameters(model: ir.Model) -> dict[str, tuple[float, int]]:
    """Per-tensor parameters of every activation a DequantizeLinear produces (to reuse, never recalibrate)."""
    found = {}
    for node in model.graph:
        if node.op_type == "DequantizeLinear" and node.inputs[0].const_value is None and node.inputs[1].const_value is not None:
            scale, zero_point, axis = _parameters(node)
            if axis is None:
                found[node.outputs[0].name] = (scale[0], zero_point[0])
    return found


def complete_qat(model: ir.Model, batches, method: str = "minmax", progress=None, rules=None) -> QuantizationPlan:
    """Mixed models: keep every Q/DQ the model carries and quantize only its float parts.

    Nodes fed by a DequantizeLinear are left as they are (their scales are kept exactly); the
    remaining quantizable float nodes are quantized like naive INT8, calibrated on ``batches``, with
    the backend's ``rules`` (:class:`~edgecomp.passes.quantize.qdq.QuantizationRules`; None: the
    TFLite int8 defaults). Modifies ``model`` in place.

    Returns:
        The plan: the kept entries of :func:`plan_from_qdq` plus the newly calibrated ones.
    """
    from edgecomp.passes.quantize.naive import quantize_int8

    kept = plan_from_qdq(model)
    added = quantize_int8(
        model, batches, method=method, mode="qat",
        choose=lambda node: f"quantized in the input model: scales {KEPT}" if _already_quantized(node) else None,
        fixed_params=_dequantized_parameters(model),
        progress=progress,
        **({"rules": rules} if rules is not None else {}),
    )
    precision = {entry.name: entry for entry in added.nodes if entry.precision == "int8"}
    nodes = tuple(precision.get(entry.name, entry) if entry.precision == "fp32" else entry for entry in kept.nodes)
    tensors = {entry.name: entry for entry in added.tensors}
    tensors.update({entry.name: entry for entry in kept.tensors})  # the model's own parameters win
    newly = sum(1 for entry in nodes if entry.name in precision)
    return QuantizationPlan("qat", method, added.calibration_samples, nodes, tuple(sorted(tensors.values(), key=lambda t: t.name)),
                            (f"{newly} float nodes of the input model calibrated ({method}); every Q/DQ it carried kept",))
