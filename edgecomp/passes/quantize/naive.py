"""Naive INT8 post-training quantization: every quantizable operator INT8, one calibration method for all.

Steps (one direction, no back and forth):

1. choose the int8 nodes: every node whose operator has an int8 kernel in the QDQ op set
   (:data:`INT8_OPS`) and whose data tensors are float32; a Relu directly after an int8
   Conv/Gemm/MatMul/Add is *fused* (its producer's output is quantized with the Relu's range, zero
   point -128, which is exactly Relu: ``Q(max(x, 0)) = max(Q(x), zp)``; TFLite fuses it the same way);
2. decide where each activation tensor's parameters come from: calibration, the input of a
   value-preserving op (MaxPool, Reshape, ... share their input's scale and zero point, as the
   TFLite int8 spec requires), or fixed by the spec (Softmax/Sigmoid output 1/256 with zero point
   -128, Tanh 1/128 with zero point 0);
3. calibrate the remaining tensors in one streaming pass (:func:`collect_ranges`);
4. rewrite the graph into QDQ form (:mod:`edgecomp.passes.quantize.qdq`) and return the plan.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Iterable, Mapping

import numpy as np
import onnx_ir as ir

from edgecomp.passes.base import InPlacePass, PassResult
from edgecomp.passes.quantize.calibrate import collect_ranges
from edgecomp.passes.quantize.observers import quantization_params
from edgecomp.passes.quantize.plan import NodePlan, QuantizationPlan, TensorPlan
from edgecomp.passes.quantize.qdq import (
    DEFAULT_RULES,
    QuantizationRules,
    quantize_activation,
    quantize_bias,
    quantize_constant,
    quantize_weight,
)

INT8_OPS = frozenset(
    {
        "Conv", "ConvTranspose", "Gemm", "MatMul", "Add", "Mul", "Sub",
        "AveragePool", "GlobalAveragePool", "MaxPool", "Concat", "Reshape", "Flatten", "Transpose",
        "Squeeze", "Unsqueeze", "Softmax", "Sigmoid", "Tanh", "Relu", "Clip", "LeakyRelu",
        "Resize", "ReduceMean", "Pad", "Slice", "HardSwish",
    }
)
# Operators whose output values are a subset of their input values (or averages of them): the
# output keeps the input's scale and zero point (TFLite int8 spec: "same scale/zero point").
SHARES_INPUT_PARAMS = frozenset({"MaxPool", "AveragePool", "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Slice", "Pad", "Resize"})
# Fixed output parameters of the TFLite int8 spec: (scale, zero point).
FIXED_OUTPUT_PARAMS = {"Softmax": (1.0 / 256.0, -128), "Sigmoid": (1.0 / 256.0, -128), "Tanh": (1.0 / 128.0, 0)}
ACTIVATION_FUSING_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul", "Add"})
BIAS_INPUT = {"Conv": 2, "ConvTranspose": 2, "Gemm": 2}
# Operators whose constant float inputs are data combined with the activations (quantized as int8
# constants); other ops' constant inputs are parameters that stay as they are.
CONSTANT_OPERAND_OPS = frozenset({"Add", "Sub", "Mul", "Concat"})


def weight_axis(node: ir.Node) -> int | None:
    """The output-channel axis of input 1 of a Conv/ConvTranspose/Gemm/MatMul (per-channel weights).

    Conv weight [C_out, C_in/group, kH, kW] -> 0; ConvTranspose [C_in, C_out/group, kH, kW] -> 1
    (ONNX operator specs); Gemm B -> 0 with ``transB=1`` ([N, K]), else 1 ([K, N]); MatMul B [.., K, N] -> -1.
    """
    if node.op_type == "Conv":
        return 0
    if node.op_type == "ConvTranspose":
        return 1
    if node.op_type == "Gemm":
        return 0 if node.attributes.get_int("transB", 0) else 1
    if node.op_type == "MatMul":
        return -1
    return None


def _is_float(value: ir.Value | None) -> bool:
    return value is not None and value.dtype == ir.DataType.FLOAT


def _is_constant(value: ir.Value | None) -> bool:
    return value is not None and value.const_value is not None and not value.is_graph_input()


def _is_bias(node: ir.Node, index: int) -> bool:
    """A constant float per-output-channel bias: Conv's B, or a Gemm C of shape [N] or [1, N]
    (a full [M, N] C is an operand, not a bias, and stays float)."""
    if len(node.inputs) <= index or not (_is_float(node.inputs[index]) and _is_constant(node.inputs[index])):
        return False
    shape = node.inputs[index].const_value.shape
    return len(shape) == 1 or (node.op_type == "Gemm" and len(shape) == 2 and shape[0] == 1)


def _data_inputs(node: ir.Node) -> list[ir.Value]:
    """Float, non-constant inputs (activations) of a node, in input order, without duplicates."""
    seen: list[ir.Value] = []
    for value in node.inputs:
        if _is_float(value) and not _is_constant(value) and value not in seen:
            seen.append(value)
    return seen


NodeChooser = Callable[[ir.Node], "str | None"]
"""Decides a quantizable node's precision: None for int8, else the reason it stays in float."""


def select_int8_nodes(model: ir.Model, choose: NodeChooser | None = None) -> tuple[list[ir.Node], dict[ir.Node, str]]:
    """The nodes that run in int8, and a reason for every node left in float.

    A node can be int8 when its operator is in :data:`INT8_OPS`, it has at least one float32 input
    that is not a constant, and all its outputs are float32; ``choose`` (hybrid, selective, a
    user's plan) may then keep it in float. Without ``choose`` every such node is int8 (naive).
    """
    selected, reasons = [], {}
    for node in model.graph:
        if node.domain not in ("", "ai.onnx") or node.op_type not in INT8_OPS:
            reasons[node] = f"{node.op_type} has no int8 kernel in the QDQ operator set"
        elif not any(_is_float(v) for v in node.inputs) or not all(_is_float(v) for v in node.outputs):
            reasons[node] = "operates on non-float32 tensors"
        elif not _data_inputs(node):
            reasons[node] = "all its inputs are constants (a constant computation, left in float)"
        elif choose is not None and (reason := choose(node)) is not None:
            reasons[node] = reason
        else:
            selected.append(node)
    return selected, reasons


def _fused_activations(int8_nodes: list[ir.Node]) -> dict[ir.Node, ir.Node]:
    """Relu nodes fusable into their int8 producer: Relu -> producer."""
    selected = set(int8_nodes)
    fused = {}
    for node in int8_nodes:
        if node.op_type != "Relu":
            continue
        source = node.inputs[0]
        producer = source.producer()
        if (
            producer in selected
            and producer.op_type in ACTIVATION_FUSING_OPS
            and len(source.uses()) == 1
            and not source.is_graph_output()
        ):
            fused[node] = producer
    return fused


def quantize_naive(
    model: ir.Model,
    batches: Iterable[Mapping[str, np.ndarray]],
    method: str = "minmax",
    progress: Callable[[int], None] | None = None,
) -> QuantizationPlan:
    """Quantize ``model`` in place to naive INT8 QDQ form (every quantizable node, one method).

    See :func:`quantize_int8`; this is it with no node chooser and no per-tensor methods.
    """
    return quantize_int8(model, batches, method=method, progress=progress)


def quantize_int8(
    model: ir.Model,
    batches: Iterable[Mapping[str, np.ndarray]],
    *,
    method: str = "minmax",
    choose: NodeChooser | None = None,
    tensor_methods: Mapping[str, str] | None = None,
    fixed_params: Mapping[str, tuple[float, int]] | None = None,
    mode: str = "naive",
    progress: Callable[[int], None] | None = None,
    rules: QuantizationRules = DEFAULT_RULES,
) -> QuantizationPlan:
    """Quantize ``model`` in place to INT8 QDQ form and return the plan.

    Args:
        model: float IR model, canonicalized and topologically sorted; modified in place.
        batches: calibration batches (input name -> array, batch axis first).
        method: default activation calibration method (``minmax``, ``percentile``, ``entropy``, ``mse``).
        choose: keeps chosen nodes in float (see :func:`select_int8_nodes`); None: all int8.
        tensor_methods: per activation tensor name, a calibration method overriding ``method``.
        fixed_params: per activation tensor name, (scale, zero point) to use instead of calibrating.
        mode: the plan's mode name (``naive``, ``hybrid``, ``selective``).
        progress: called with the sample count of each calibration batch.
        rules: the backend's weight range and fixed-output rule (:class:`QuantizationRules`).

    Returns:
        The :class:`QuantizationPlan` (nodes in graph order, tensors sorted by name).

    Raises:
        CalibrationDataError: the calibration set is empty.
    """
    graph = model.graph
    original_order = list(graph)
    int8_nodes, reasons = select_int8_nodes(model, choose)
    tensor_methods = dict(tensor_methods or {})
    fixed_params = dict(fixed_params or {})
    fused = _fused_activations(int8_nodes)
    fused_outputs = {producer.outputs[0] for producer in fused.values()}

    # Where each activation's parameters come from, in graph (topological) order.
    source: dict[ir.Value, tuple[str, object]] = {}
    for node in int8_nodes:
        for value in _data_inputs(node):
            if value not in source and value not in fused_outputs:
                source[value] = ("fixed", fixed_params[value.name]) if value.name in fixed_params else ("calibrate", value.name)
        for value in node.outputs:
            if value in fused_outputs:
                continue
            if value.name in fixed_params:
                source[value] = ("fixed", fixed_params[value.name])
            elif rules.fixed_output_params and node.op_type in FIXED_OUTPUT_PARAMS:
                source[value] = ("fixed", FIXED_OUTPUT_PARAMS[node.op_type])
            elif node.op_type in SHARES_INPUT_PARAMS:
                source[value] = ("shared", _data_inputs(node)[0])
            else:
                source[value] = ("calibrate", value.name)
    calibrated = {v.name: tensor_methods.get(v.name, method) for v, (kind, _) in source.items() if kind == "calibrate"}
    ranges, samples = collect_ranges(model, calibrated, batches, progress)

    params: dict[ir.Value, tuple[float, int, str, tuple[float, float] | None]] = {}
    for value, (kind, detail) in source.items():
        if kind == "calibrate":
            low, high = ranges[value.name]
            if value.producer() is not None and value.producer().op_type == "Relu":
                low = 0.0
            scale, zero_point = quantization_params(low, high)
            params[value] = (scale, zero_point, calibrated[value.name], (low, high))
        elif kind == "fixed":
            scale, zero_point = detail
            params[value] = (scale, zero_point, "fixed", None)
        else:  # the input's parameters were decided earlier: ``source`` is in graph order
            scale, zero_point, _, _ = params[detail]
            params[value] = (scale, zero_point, f"shared:{detail.name}", None)

    tensors: list[TensorPlan] = []
    # Fuse Relu: the producer writes the Relu's output tensor directly.
    for relu, producer in fused.items():
        relu_output, producer_output = relu.outputs[0], producer.outputs[0]
        name = relu_output.name
        relu_output.replace_all_uses_with(producer_output, replace_graph_outputs=True)
        graph.remove(relu, safe=True)
        producer_output.name = name
        params[producer_output] = params.pop(relu_output)
    weight_scales: dict[ir.Node, np.ndarray] = {}
    for node in int8_nodes:
        if node in fused:
            continue
        axis = weight_axis(node)
        for index, value in enumerate(node.inputs):
            if not (_is_float(value) and _is_constant(value)):
                continue
            if index == 1 and axis is not None:
                entry = quantize_weight(graph, node, index, axis, rules.weight_qmax)
                weight_scales[node] = np.asarray(entry.scale, dtype=np.float32)
            elif index == BIAS_INPUT.get(node.op_type):
                continue  # after the weight, which gives its scale
            elif node.op_type in CONSTANT_OPERAND_OPS:
                entry = quantize_constant(graph, node, index)
            else:
                continue  # a parameter, not data: Pad's constant_value, Clip's min/max, Resize's scales
            tensors.append(entry)
        bias_index = BIAS_INPUT.get(node.op_type)
        if bias_index is not None and _is_bias(node, bias_index) and node in weight_scales:
            input_scale = params[node.inputs[0]][0]
            tensors.append(quantize_bias(graph, node, bias_index, input_scale, weight_scales[node]))
    for value, (scale, zero_point, how, clip_range) in params.items():
        producer = value.producer()
        if producer is not None and producer.op_type == "DequantizeLinear":
            continue  # already the output of a DequantizeLinear (a QDQ input model): nothing to insert
        tensors.append(
            TensorPlan(value.name, "activation", "int8", "per-tensor", None, (float(np.float32(scale)),), (int(zero_point),), how, clip_range)
        )
        quantize_activation(graph, value, scale, zero_point)
    graph.sort()

    nodes = []
    for node in original_order:
        if node in reasons:
            nodes.append(NodePlan(node.name, node.op_type, "fp32", reasons[node]))
        elif node in fused:
            nodes.append(NodePlan(node.name, node.op_type, "int8", f"fused into {fused[node].name}: its int8 output clamps at the zero point"))
        else:
            nodes.append(NodePlan(node.name, node.op_type, "int8", f"{mode}: runs in int8" if choose else "naive: every quantizable operator runs in int8"))
    return QuantizationPlan(mode, method, samples, tuple(nodes), tuple(sorted(tensors, key=lambda t: t.name)), rules_notes(rules))


def rules_notes(rules: QuantizationRules) -> tuple[str, ...]:
    """The plan notes saying how ``rules`` differ from the TFLite int8 defaults (empty if they do not)."""
    notes = []
    if rules.weight_qmax != DEFAULT_RULES.weight_qmax:
        notes.append(f"weights quantized to [-{rules.weight_qmax}, {rules.weight_qmax}]: {rules.weight_reason or 'backend rule'}")
    if not rules.fixed_output_params:
        notes.append(f"Softmax/Sigmoid/Tanh outputs calibrated, not fixed: {rules.output_reason or 'backend rule'}")
    return tuple(notes)


class Int8QuantizationPass(InPlacePass):
    """:func:`quantize_int8` as a pass, so the pass manager's instruments (timing, ``--dump-ir``)
    see it like every other stage.

    Args:
        batches: calibration batches; options: keyword arguments of :func:`quantize_int8`.

    Attributes:
        plan: the :class:`QuantizationPlan` after the pass ran, else None.
    """

    def __init__(self, batches: Iterable[Mapping[str, np.ndarray]], **options) -> None:
        super().__init__()
        self.batches, self.options = batches, options
        self.plan: QuantizationPlan | None = None

    def call(self, model: ir.Model) -> PassResult:
        self.plan = quantize_int8(model, self.batches, **self.options)
        return PassResult(model, modified=True)


HYBRID_DEFAULT_OPS = ("Conv", "Gemm", "MatMul")


def hybrid_chooser(int8_ops: Iterable[str] = HYBRID_DEFAULT_OPS, int8_nodes: Iterable[str] = ()) -> NodeChooser:
    """Hybrid: int8 for the given operator types and node names (and a Relu right after one, which
    fuses into it), fp32 for every other node."""
    ops, names = frozenset(int8_ops), frozenset(int8_nodes)

    def chosen(node: ir.Node | None) -> bool:
        return node is not None and (node.op_type in ops or node.name in names)

    def choose(node: ir.Node) -> str | None:
        if chosen(node):
            return None
        if node.op_type == "Relu" and chosen(node.inputs[0].producer()):
            return None  # fused into its int8 producer: the producer's output clamps at zero
        return f"hybrid: {node.op_type} is not among the int8 operator types ({', '.join(sorted(ops))}) or nodes"

    return choose


def quantize_weights_only(model: ir.Model, rules: QuantizationRules = DEFAULT_RULES) -> QuantizationPlan:
    """Dynamic-range quantization: int8 per-channel weights of Conv/ConvTranspose/Gemm/MatMul, float activations.

    Weights are stored int8 (TFLite int8 spec layout: symmetric, zero point 0) and dequantized by a
    DequantizeLinear in the graph; activations and biases stay float32. Modifies ``model`` in place.
    """
    graph = model.graph
    tensors, nodes = [], []
    for node in list(graph):
        axis = weight_axis(node)
        if axis is not None and len(node.inputs) > 1 and _is_float(node.inputs[1]) and _is_constant(node.inputs[1]):
            tensors.append(quantize_weight(graph, node, 1, axis, rules.weight_qmax))
            nodes.append(NodePlan(node.name, node.op_type, "int8", "dynamic range: int8 weights, float activations"))
        else:
            nodes.append(NodePlan(node.name, node.op_type, "fp32", "dynamic range: only Conv/Gemm/MatMul weights are quantized"))
    notes = rules_notes(dataclasses.replace(rules, fixed_output_params=True))
    return QuantizationPlan("dynamic", "none (weights only)", 0, tuple(nodes), tuple(sorted(tensors, key=lambda t: t.name)), notes)
