"""Graph edits that express quantization in the IR as QuantizeLinear/DequantizeLinear (QDQ).

Semantics follow the ONNX operator specs (QuantizeLinear-13/19/21, DequantizeLinear-13/19/21):
``q = saturate(round_half_to_even(x / scale) + zero_point)`` and ``x' = (q - zero_point) * scale``,
per-tensor (scalar scale) or per-axis (1-D scale along ``axis``). Weights follow the TFLite int8
quantization specification (https://ai.google.dev/edge/litert/models/quantization_spec): symmetric
per-channel int8 in [-127, 127] with zero point 0; biases int32 with zero point 0 and scale
``s_in * s_w`` per output channel; activations asymmetric per-tensor int8.

Every created name is derived from the tensor it quantizes (``<tensor>_scale``,
``<tensor>_QuantizeLinear``...), so the same model always gives the same graph.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx_ir as ir

from edgecomp.passes.quantize.observers import quantization_params, symmetric_scale
from edgecomp.passes.quantize.plan import TensorPlan

INT8_MIN, INT8_MAX = -128, 127
WEIGHT_MAX = 127  # symmetric weights use [-127, 127] (TFLite int8 spec)
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1


@dataclasses.dataclass(frozen=True)
class QuantizationRules:
    """What a backend's int8 kernels need of the quantizer, known before calibration.

    A backend gives them through its optional ``quantization_rules(target)`` method; the pipeline
    hands them to every quantizer (naive, hybrid, selective with its sensitivity variants, dynamic,
    QAT completion), so calibration choices, the selective search and bias correction all see the
    weights and output parameters the artifact will have.

    Attributes:
        weight_qmax: symmetric weights in ``[-weight_qmax, weight_qmax]`` (127: the TFLite int8
            specification; 64: 7-bit weights for x86 u8s8 kernels without AVX-VNNI, whose int16
            pair sums saturate, as ONNX Runtime's ``reduce_range``; see :func:`narrow_weight_range`).
        fixed_output_params: Softmax/Sigmoid/Tanh outputs get the fixed scale and zero point int8
            kernels expect (TFLite: 1/256 and -128, 1/128 and 0). False: calibrated like any other
            activation (ONNX Runtime's QLinearSoftmax/QLinearSigmoid take any output scale, and a
            calibrated [0, 1] range represents a probability of 1.0 exactly).
        weight_reason / output_reason: why (for the plan's notes); empty for the defaults.
    """

    weight_qmax: int = WEIGHT_MAX
    fixed_output_params: bool = True
    weight_reason: str = ""
    output_reason: str = ""


DEFAULT_RULES = QuantizationRules()


def _initializer(graph: ir.Graph, name: str, array: np.ndarray) -> ir.Value:
    value = ir.Value(name=name, const_value=ir.tensor(array, name=name), shape=ir.Shape(array.shape), type=ir.TensorType(ir.DataType.from_numpy(array.dtype)))
    graph.register_initializer(value)
    return value


def _dequantize(graph: ir.Graph, base: str, quantized: ir.Value, scale: ir.Value, zero_point: ir.Value, axis: int | None) -> ir.Node:
    attributes = {"axis": axis} if axis is not None else {}
    return ir.node(
        "DequantizeLinear",
        [quantized, scale, zero_point],
        attributes,
        name=f"{base}_DequantizeLinear",
        outputs=[ir.Value(name=f"{base}_dequantized", type=ir.TensorType(ir.DataType.FLOAT), shape=quantized.shape)],
    )


FLOAT_VALUE_KEY = "edgecomp.float_value"


def _feed_dequantized(graph: ir.Graph, node: ir.Node, input_index: int, quantized: np.ndarray, scale: np.ndarray, zero_point: np.ndarray, axis: int | None) -> None:
    """Store ``quantized`` with its parameters as initializers and feed ``node`` their DequantizeLinear.

    The float constant it replaces stays in the DequantizeLinear node's in-memory ``meta`` under
    :data:`FLOAT_VALUE_KEY` (not serialised), so a later requantization starts from the float
    values instead of rounding twice.
    """
    value = node.inputs[input_index]
    base = value.name
    if f"{base}_quantized" in graph.initializers:  # a constant shared by several nodes: one copy each
        base = f"{base}_{node.name}"
    dequantize = _dequantize(
        graph,
        base,
        _initializer(graph, f"{base}_quantized", quantized),
        _initializer(graph, f"{base}_scale", scale),
        _initializer(graph, f"{base}_zero_point", zero_point),
        axis,
    )
    dequantize.meta[FLOAT_VALUE_KEY] = value.const_value.numpy()
    graph.insert_before(node, dequantize)
    node.replace_input_with(input_index, dequantize.outputs[0])
    _drop_if_unused(graph, value)


def quantize_activation(graph: ir.Graph, value: ir.Value, scale: float, zero_point: int) -> None:
    """Insert ``QuantizeLinear -> DequantizeLinear`` on float tensor ``value`` (per-tensor int8).

    Every consumer of ``value`` then reads the dequantized tensor. When ``value`` is a graph output,
    the dequantized tensor takes over its name and its place in the graph outputs (so users find
    outputs by their original names), and the float tensor is renamed ``<name>_unquantized``.
    """
    name = value.name
    scale_value = _initializer(graph, f"{name}_scale", np.array(scale, dtype=np.float32))
    zero_point_value = _initializer(graph, f"{name}_zero_point", np.array(zero_point, dtype=np.int8))
    uses = list(value.uses())
    quantize = ir.node(
        "QuantizeLinear",
        [value, scale_value, zero_point_value],
        name=f"{name}_QuantizeLinear",
        outputs=[ir.Value(name=f"{name}_quantized", type=ir.TensorType(ir.DataType.INT8), shape=value.shape)],
    )
    dequantize = _dequantize(graph, name, quantize.outputs[0], scale_value, zero_point_value, None)
    dequantized = dequantize.outputs[0]
    for use in uses:
        use.node.replace_input_with(use.idx, dequantized)
    if value.is_graph_output():
        value.name = f"{name}_unquantized"
        dequantized.name = name
        for index, output in enumerate(graph.outputs):
            if output is value:
                graph.outputs[index] = dequantized
    producer = value.producer()
    if producer is None:
        graph.insert_before(graph.node(0), [quantize, dequantize])
    else:
        graph.insert_after(producer, [quantize, dequantize])


def quantize_weight(graph: ir.Graph, node: ir.Node, input_index: int, axis: int, qmax: int = WEIGHT_MAX) -> TensorPlan:
    """Replace constant float input ``input_index`` of ``node`` by int8 per-channel weights + DequantizeLinear.

    ``scale[c] = max|w[c]| / qmax`` along ``axis`` (symmetric, zero point 0; ``qmax`` 127 is the
    TFLite int8 spec, :class:`QuantizationRules` may narrow it); ``q = clip(round_half_to_even(w /
    scale), -qmax, qmax)``.

    Returns:
        The plan entry of the weight (float32 scales, one per channel along ``axis``).
    """
    value = node.inputs[input_index]
    weights = value.const_value.numpy().astype(np.float32)
    axis = axis % weights.ndim
    reduce_axes = tuple(i for i in range(weights.ndim) if i != axis)
    absmax = np.max(np.abs(weights), axis=reduce_axes)
    scale = symmetric_scale(absmax, qmax=qmax).astype(np.float32)
    broadcast = [1] * weights.ndim
    broadcast[axis] = -1
    quantized = np.clip(np.round(weights / scale.reshape(broadcast)), -qmax, qmax).astype(np.int8)
    _feed_dequantized(graph, node, input_index, quantized, scale, np.zeros(scale.shape, dtype=np.int8), axis)
    return TensorPlan(value.name, "weight", "int8", "per-channel", axis, tuple(scale.tolist()), (0,) * len(scale), "absmax")


def quantize_bias(graph: ir.Graph, node: ir.Node, input_index: int, input_scale: float, weight_scale: np.ndarray) -> TensorPlan:
    """Replace the constant float bias of ``node`` by int32 + DequantizeLinear with scale ``s_in * s_w``.

    ``q = clip(round_half_to_even(b / (s_in * s_w[c])), INT32_MIN, INT32_MAX)``, zero point 0
    (TFLite int8 spec, "bias": int32, scale = input_scale * weight_scale). A Gemm bias of shape
    [1, N] is stored as [N] (same broadcast result).
    """
    value = node.inputs[input_index]
    bias = value.const_value.numpy().astype(np.float64).reshape(-1)
    scale = (np.float32(input_scale) * np.asarray(weight_scale, dtype=np.float32)).astype(np.float32)
    if scale.size == 1:
        scale = np.full(bias.shape, scale.reshape(()), dtype=np.float32)
    quantized = np.clip(np.round(bias / scale.astype(np.float64)), INT32_MIN, INT32_MAX).astype(np.int32)
    _feed_dequantized(graph, node, input_index, quantized, scale, np.zeros(scale.shape, dtype=np.int32), 0)
    return TensorPlan(value.name, "bias", "int32", "per-channel", 0, tuple(scale.tolist()), (0,) * len(scale), "s_in*s_w")


def quantize_constant(graph: ir.Graph, node: ir.Node, input_index: int) -> TensorPlan:
    """Replace another constant float input (e.g. an Add/Mul operand) by per-tensor asymmetric int8 + DequantizeLinear."""
    value = node.inputs[input_index]
    array = value.const_value.numpy().astype(np.float32)
    scale, zero_point = quantization_params(float(array.min(initial=0.0)), float(array.max(initial=0.0)))
    quantized = np.clip(np.round(array / np.float32(scale)) + zero_point, INT8_MIN, INT8_MAX).astype(np.int8)
    _feed_dequantized(graph, node, input_index, quantized, np.array(scale, dtype=np.float32), np.array(zero_point, dtype=np.int8), None)
    return TensorPlan(value.name, "constant", "int8", "per-tensor", None, (float(np.float32(scale)),), (int(zero_point),), "minmax")


def _drop_if_unused(graph: ir.Graph, value: ir.Value) -> None:
    if not value.uses() and not value.is_graph_output() and value.name in graph.initializers:
        del graph.initializers[value.name]


WEIGHT_CONSUMERS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def _constant_dequantize(value: ir.Value | None) -> ir.Node | None:
    """The DequantizeLinear producing ``value`` from a constant, or None."""
    producer = value.producer() if value is not None else None
    if producer is None or producer.op_type != "DequantizeLinear" or producer.inputs[0].const_value is None:
        return None
    return producer


def largest_weight(model: ir.Model) -> int:
    """The largest ``|q|`` of the int8 weights (input 1 of Conv/Gemm/MatMul/ConvTranspose through a
    constant DequantizeLinear) of a QDQ model; 0 without any."""
    largest = 0
    for node in model.graph:
        if node.op_type not in WEIGHT_CONSUMERS or len(node.inputs) < 2:
            continue
        weight_dq = _constant_dequantize(node.inputs[1])
        if weight_dq is not None and weight_dq.inputs[0].dtype == ir.DataType.INT8:
            largest = max(largest, int(np.abs(weight_dq.inputs[0].const_value.numpy().astype(np.int16)).max(initial=0)))
    return largest


def narrow_weight_range(model: ir.Model, qmax: int = 64) -> int:
    """Requantize every int8 weight of a QDQ model to ``[-qmax, qmax]`` (7 bits), biases to match.

    Used when a runtime's integer kernels cannot take full-range int8 weights: ONNX Runtime's x86
    u8s8 kernels without AVX-VNNI add pairs of u8*s8 products in saturating int16
    (``vpmaddubsw``), which overflows for |w| near 127; weights in [-64, 64] keep
    2 * 255 * 64 = 32640 <= 32767 (ONNX Runtime's ``reduce_range`` uses the same [-64, 64]).

    Weights are requantized from their float values when the quantizer kept them (see
    :func:`_feed_dequantized`), else from the dequantized ones ``w = q * s`` (a QDQ model from
    elsewhere): ``s' = max|w| / qmax`` per channel, ``q' = round(w / s')``. The bias of the same
    node gets ``scale = s_in * s'`` with ``s_in = s_bias / s`` and ``q_b' = round(b / s_bias')``,
    ``b`` again the float bias when kept. Modifies ``model`` in place.

    Returns:
        The number of weight tensors requantized.
    """
    count = 0
    for node in model.graph:
        if node.op_type not in WEIGHT_CONSUMERS or len(node.inputs) < 2:
            continue
        weight_dq = _constant_dequantize(node.inputs[1])
        if weight_dq is None or weight_dq.inputs[0].dtype != ir.DataType.INT8:
            continue
        quantized = weight_dq.inputs[0].const_value.numpy().astype(np.float64)
        old_scale = weight_dq.inputs[1].const_value.numpy().astype(np.float32)
        axis = weight_dq.attributes.get_int("axis", 1) % quantized.ndim if old_scale.ndim else None
        shape = [1] * quantized.ndim
        if axis is not None:
            shape[axis] = -1
        weights = weight_dq.meta.get(FLOAT_VALUE_KEY)
        if weights is None:
            weights = quantized * old_scale.astype(np.float64).reshape(shape if axis is not None else ())
        weights = np.asarray(weights, dtype=np.float64)
        reduce_axes = tuple(i for i in range(quantized.ndim) if i != axis)
        new_scale = symmetric_scale(np.max(np.abs(weights), axis=reduce_axes), qmax=qmax).astype(np.float32)
        new_quantized = np.clip(np.round(weights / new_scale.astype(np.float64).reshape(shape if axis is not None else ())), -qmax, qmax).astype(np.int8)
        _replace_constant(weight_dq.inputs[0], new_quantized)
        _replace_constant(weight_dq.inputs[1], new_scale)
        bias_dq = _constant_dequantize(node.inputs[2]) if len(node.inputs) > 2 else None
        if bias_dq is not None and bias_dq.inputs[0].dtype == ir.DataType.INT32:
            bias_scale = bias_dq.inputs[1].const_value.numpy().astype(np.float32)
            bias = bias_dq.meta.get(FLOAT_VALUE_KEY)
            if bias is None:
                bias = bias_dq.inputs[0].const_value.numpy() * bias_scale.astype(np.float64)
            new_bias_scale = (bias_scale / old_scale.reshape(-1) * new_scale.reshape(-1)).astype(np.float32)
            new_bias = np.clip(np.round(np.asarray(bias, np.float64).reshape(-1) / new_bias_scale), INT32_MIN, INT32_MAX).astype(np.int32)
            _replace_constant(bias_dq.inputs[0], new_bias)
            _replace_constant(bias_dq.inputs[1], new_bias_scale.reshape(bias_scale.shape))
        count += 1
    return count


def _replace_constant(value: ir.Value, array: np.ndarray) -> None:
    value.const_value = ir.tensor(array, name=value.name)
