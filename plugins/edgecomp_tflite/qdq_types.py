"""INT8 element types read off a QDQ model: the :class:`~edgecomp_tflite.tensor_types.TensorTypes`
of full-integer, hybrid (int8 with float islands), QAT and dynamic-range lowering.

A QDQ model (ONNX QuantizeLinear/DequantizeLinear operator specs: ``q = saturate(round(x / scale) +
zero_point)``, ``x = (q - zero_point) * scale``, ties to even) is read against the TFLite int8
quantization specification (https://ai.google.dev/edge/litert/models/quantization_spec):

- **Groups.** A node runs in int8 when every non-constant data input comes from a DequantizeLinear
  of an int8 tensor, its weights/constant operands are DequantizeLinear of int8/int32 constants (or
  float constants, then quantized here), and its output goes only to QuantizeLinear nodes, directly
  or through a Relu/Clip (the QAT export pattern ``Conv -> Relu -> QuantizeLinear``: the activation
  becomes the operator's ``fused_activation_function``) or, for MatMul/Gemm, through an Add of a
  constant bias (tf2onnx's ``MatMul -> Add(bias)``: the FULLY_CONNECTED bias). Reshape, Transpose,
  Flatten, Squeeze, Unsqueeze and Identity applied to int8 ONNX tensors (tf2onnx puts them between
  the int8 graph input and its DequantizeLinear) move bytes and run in int8 as well. Every other
  node runs in float32: its int8 inputs are read through DEQUANTIZE, its output is quantized by a
  QUANTIZE where a QuantizeLinear follows (hybrid models: float islands with boundaries).
- **Folding.** A DequantizeLinear never becomes an operator: its output shares its int8 input's
  TFLite tensor (weights and biases become int8/int32 constants). A QuantizeLinear shares its
  input's tensor when that tensor is int8 with the same parameters (the output of a group);
  otherwise it is a QUANTIZE (float -> int8 at a float boundary; int8 -> int8 requantization when
  several QuantizeLinear with different parameters read one tensor).
- **Parameters.** An int8 activation gets the (scale, zero point) of the QuantizeLinear producing it
  or of the DequantizeLinear reading it, shared through int8 Reshape/Transpose/...; they must agree
  (a byte move cannot change parameters). Weights keep their int8 data and (per-channel) scales,
  biases their int32 data and scale: a QAT model's own values, nothing recomputed, unless the bias
  scale differs from ``s_in * s_w`` by more than LiteRT accepts (relative 1e-6), when the bias is
  requantized to ``s_in * s_w`` (counted in :attr:`QdqTensorTypes.rescaled_biases`). A missing bias
  is int32 zeros with scale ``s_in * s_w``.
- **Checks** (:meth:`QdqTensorTypes.unsupported`): int8 activations (uint8/int16 QDQ and per-axis
  activation scales have no TFLite int8 kernel here), symmetric int8 weights (zero point 0)
  quantized per tensor or along the output-channel axis, and the fixed output parameters the TFLite
  int8 kernels require: SOFTMAX and LOGISTIC (1/256, -128), TANH (1/128, 0).
- **Dynamic range** (``dynamic_kernels``): a float node reading an int8 weight either keeps it
  int8 in the operator, a TFLite hybrid kernel that quantizes its float input on every invoke
  (``tensorflow/lite/kernels/fully_connected.cc`` ``EvalHybrid``, ``conv.cc``
  ``EvalHybridPerChannel``), or reads it through a DEQUANTIZE of the int8 constant (float
  arithmetic, exactly what the QDQ simulation computes). Measured in LiteRT 2.3 (1 thread, default
  XNNPACK delegate): XNNPACK runs hybrid FULLY_CONNECTED (MLPerf Tiny AD: 13.7 us against 29.1 us
  float) but not hybrid convolutions, which fall back to LiteRT's own kernels (VWW: 992 us against
  348 us float), while DEQUANTIZE'd constant weights are folded by XNNPACK at load (VWW 351 us,
  KWS 127 us against 106 us float). Hence ``"auto"`` (default): hybrid FULLY_CONNECTED,
  DEQUANTIZE for convolutions; ``"hybrid"``: hybrid kernels for both; ``"dequantize"``: DEQUANTIZE
  everywhere (TensorFlow Lite Micro has no hybrid kernels; it runs DEQUANTIZE).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import onnx_ir as ir

from edgecomp.ir.values import constant_array
from edgecomp_tflite.tensor_types import FLOAT_TYPES, ElementType, QuantParams

DEFAULT_DOMAINS = ("", "ai.onnx")
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")

#: ONNX ops that only move int8 bytes: run on int8 tensors even outside Q/DQ groups.
DATA_MOVEMENT_OPS = frozenset({"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Identity"})

#: ONNX ops whose TFLite lowering has an int8 kernel (TFLite int8 spec; Div has none).
INT8_KERNEL_OPS = frozenset({
    "Conv", "ConvTranspose", "Gemm", "MatMul", "Add", "Sub", "Mul",
    "Relu", "Clip", "LeakyRelu", "PRelu", "Sigmoid", "Tanh", "HardSwish", "Softmax",
    "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool",
    "ReduceMean", "ReduceMax", "ReduceMin", "ReduceSum",
    "Concat", "Slice", "Pad", "Resize", *DATA_MOVEMENT_OPS,
})

#: Fixed output (scale, zero point) of TFLite int8 kernels (TFLite int8 spec; LiteRT
#: ``activations.cc`` checks the scale to a relative 1e-3 and the zero point exactly).
FIXED_OUTPUT_PARAMS = {"Softmax": ("SOFTMAX", 1.0 / 256.0, -128), "Sigmoid": ("LOGISTIC", 1.0 / 256.0, -128), "Tanh": ("TANH", 1.0 / 128.0, 0)}
FIXED_SCALE_TOLERANCE = 1e-3

#: LiteRT's bias check (``kernels/kernel_util.cc`` ``GetQuantizedConvolutionMultipler``):
#: ``|s_in * s_w - s_bias| <= 1e-6 * min(s_in * s_w, s_bias)``.
BIAS_SCALE_TOLERANCE = 1e-6

#: Ops with a TFLite hybrid (float activations, int8 weights) kernel, and the weight input index.
HYBRID_KERNEL_OPS = {"Conv": 1, "Gemm": 1, "MatMul": 1}
#: Of those, the ones ``dynamic_kernels="auto"`` keeps hybrid (module docstring: measured).
AUTO_HYBRID_OPS = ("Gemm", "MatMul")

DYNAMIC_KERNELS = ("auto", "hybrid", "dequantize")

INT8, INT32 = ir.DataType.INT8, ir.DataType.INT32


def data_inputs(node: ir.Node) -> tuple[int, ...]:
    """Indices of the inputs carrying data (activations, weights, bias, constant operands); the
    others are parameters (shapes, axes, pads, bounds, sizes)."""
    if node.op_type in ("Conv", "ConvTranspose", "Gemm"):
        return (0, 1, 2)
    if node.op_type in ("MatMul", "Add", "Sub", "Mul", "PRelu"):
        return (0, 1)
    if node.op_type == "Concat":
        return tuple(range(len(node.inputs)))
    return (0,)


def weight_axis(node: ir.Node) -> int | None:
    """Output-channel axis of input 1 of Conv/ConvTranspose/Gemm/MatMul (ONNX layout), or None."""
    if node.op_type == "Conv":
        return 0
    if node.op_type == "ConvTranspose":
        return 1
    if node.op_type == "Gemm":
        attr = node.attributes.get("transB")
        return 0 if attr is not None and attr.value else 1
    if node.op_type == "MatMul":
        return 1
    return None


def _is_default(node: ir.Node) -> bool:
    return node.domain in DEFAULT_DOMAINS


def _producer(value: ir.Value | None) -> ir.Node | None:
    return value.producer() if value is not None else None


def _consumers(value: ir.Value) -> list[ir.Node]:
    seen: dict[int, ir.Node] = {}
    for use in value.uses():
        seen.setdefault(id(use.node), use.node)
    return list(seen.values())


def _is_qdq(node: ir.Node | None, op_type: str) -> bool:
    return node is not None and node.op_type == op_type and _is_default(node)


def _input(node: ir.Node, index: int) -> ir.Value | None:
    return node.inputs[index] if index < len(node.inputs) else None


def qdq_parameters(node: ir.Node) -> QuantParams | str:
    """The (scale, zero point, axis) of a QuantizeLinear/DequantizeLinear node, or why not readable.

    ``axis`` is set (normalised, default 1 per the ONNX spec) only for a 1-D scale of more than one
    element (per-axis); a one-element 1-D scale counts as per tensor.
    """
    scale = constant_array(_input(node, 1))
    if scale is None:
        return "scale is not a constant"
    zero_value = _input(node, 2)
    zero_point = constant_array(zero_value) if zero_value is not None else None
    if zero_value is not None and zero_point is None:
        return "zero point is not a constant"
    if zero_point is None:
        zero_point = np.zeros(scale.shape, np.int8)
    if scale.size == 1:
        return QuantParams(np.asarray(scale, np.float32).reshape(()), np.asarray(zero_point).reshape(()).astype(np.int64), None)
    data = node.inputs[0]
    rank = len(data.shape) if data.shape is not None else (constant_array(data).ndim if constant_array(data) is not None else None)
    attr = node.attributes.get("axis")
    axis = int(attr.value) if attr is not None else 1
    if rank is not None:
        axis %= rank
    return QuantParams(np.asarray(scale, np.float32).reshape(-1), np.asarray(zero_point).reshape(-1).astype(np.int64), axis)


def same_params(a: QuantParams | None, b: QuantParams | None) -> bool:
    """True when two per-tensor parameter sets are identical (float32 scale bit-equal, same zero point)."""
    if a is None or b is None:
        return a is b
    return (
        np.array_equal(np.asarray(a.scale, np.float32), np.asarray(b.scale, np.float32))
        and np.array_equal(np.asarray(a.zero_point), np.asarray(b.zero_point))
        and a.axis == b.axis
    )


def describe(params: QuantParams) -> str:
    if np.ndim(params.scale) == 0:
        return f"scale {float(params.scale):.9g}, zero point {int(params.zero_point)}"
    return f"{np.size(params.scale)} per-channel scales along axis {params.axis}"


def quantize_symmetric(array: np.ndarray, axis: int | None) -> tuple[np.ndarray, QuantParams]:
    """Symmetric int8 in [-127, 127] with zero point 0, per channel along ``axis`` (TFLite int8 spec,
    weights): ``scale = max|w| / 127``, ``q = round_half_even(w / scale)``."""
    array = np.asarray(array, np.float32)
    if axis is None:
        absmax = np.float32(np.abs(array).max(initial=0.0))
        scale = np.float32(absmax / 127.0) if absmax > 0 else np.float32(1.0)
        q = np.clip(np.round(array / scale), -127, 127).astype(np.int8)
        return q, QuantParams(np.asarray(scale, np.float32), np.asarray(0, np.int64), None)
    reduce = tuple(i for i in range(array.ndim) if i != axis)
    absmax = np.abs(array).max(axis=reduce, initial=0.0).astype(np.float32)
    scale = np.where(absmax > 0, absmax / np.float32(127.0), np.float32(1.0)).astype(np.float32)
    shape = [1] * array.ndim
    shape[axis] = -1
    q = np.clip(np.round(array / scale.reshape(shape)), -127, 127).astype(np.int8)
    return q, QuantParams(scale, np.zeros(scale.shape, np.int64), axis)


def quantize_asymmetric(array: np.ndarray) -> tuple[np.ndarray, QuantParams]:
    """Per-tensor asymmetric int8 over [min(x, 0), max(x, 0)] (TFLite int8 spec, activations/constants)."""
    array = np.asarray(array, np.float32)
    low, high = min(float(array.min(initial=0.0)), 0.0), max(float(array.max(initial=0.0)), 0.0)
    scale = np.float32((high - low) / 255.0) if high > low else np.float32(1.0)
    zero_point = int(np.clip(np.round(-128 - low / scale), -128, 127))
    q = np.clip(np.round(array / scale) + zero_point, -128, 127).astype(np.int8)
    return q, QuantParams(np.asarray(scale, np.float32), np.asarray(zero_point, np.int64), None)


class QdqTensorTypes:
    """Element types of a QDQ model's tensors for TFLite lowering (module docstring).

    Args:
        model: the IR (QDQ form; not modified).
        dynamic_kernels: how a float node reads an int8 weight (module docstring): ``"auto"``
            (hybrid FULLY_CONNECTED, DEQUANTIZE elsewhere), ``"hybrid"`` (hybrid kernel where one
            exists) or ``"dequantize"`` (always DEQUANTIZE).

    Attributes:
        rescaled_biases: names of int32 biases requantized to ``s_in * s_w`` while lowering.
    """

    name = "int8"

    def __init__(self, model: ir.Model, *, dynamic_kernels: str = "auto") -> None:
        if dynamic_kernels not in DYNAMIC_KERNELS:
            raise ValueError(f"dynamic_kernels must be one of {', '.join(DYNAMIC_KERNELS)}, not {dynamic_kernels!r}")
        self.model = model
        self.dynamic_kernels = dynamic_kernels
        self.rescaled_biases: list[str] = []
        self._graph_outputs = {id(v) for v in model.graph.outputs}
        self._problems: dict[int, str] = {}  # id(node) -> reason
        self._constant_dequantize: dict[int, ir.Node] = {}  # id(initializer) -> its DequantizeLinear
        self._int8_params: dict[int, QuantParams] = {}  # id(int8 value) -> per-tensor params
        self._float_params: dict[int, QuantParams] = {}  # id(float value stored int8) -> params
        self._int8_nodes: set[int] = set()
        self._members: dict[int, ir.Node] = {}  # id(fused activation / bias Add) -> owner node
        self._bias_adds: dict[int, ir.Node] = {}  # id(MatMul/Gemm) -> its bias Add
        self._float_constants: dict[int, tuple[np.ndarray, QuantParams | None]] = {}
        nodes = list(model.graph)
        for node in nodes:
            if _is_qdq(node, "DequantizeLinear") and constant_array(node.inputs[0]) is not None:
                self._constant_dequantize.setdefault(id(node.inputs[0]), node)
        self._assign_int8_parameters(nodes)
        for node in nodes:
            if _is_qdq(node, "QuantizeLinear") or _is_qdq(node, "DequantizeLinear") or id(node) in self._members:
                continue
            self._classify(node)

    # ---------------------------------------------------------------------------- analysis

    def _is_graph_output(self, value: ir.Value) -> bool:
        return id(value) in self._graph_outputs

    def _assign_int8_parameters(self, nodes: list[ir.Node]) -> None:
        """Parameters of every non-constant int8 value: from the QuantizeLinear producing it or the
        DequantizeLinear reading it, shared across int8 byte moves (union of their in/out values)."""
        parent: dict[int, int] = {}
        values: dict[int, ir.Value] = {}

        def find(key: int) -> int:
            while parent.setdefault(key, key) != key:
                parent[key] = parent[parent[key]]
                key = parent[key]
            return key

        def union(a: ir.Value, b: ir.Value) -> None:
            values[id(a)], values[id(b)] = a, b
            parent[find(id(a))] = find(id(b))

        candidates: list[tuple[ir.Value, QuantParams, ir.Node]] = []
        for node in nodes:
            if _is_qdq(node, "QuantizeLinear"):
                params = qdq_parameters(node)
                if isinstance(params, QuantParams):
                    candidates.append((node.outputs[0], params, node))
            elif _is_qdq(node, "DequantizeLinear") and constant_array(node.inputs[0]) is None:
                params = qdq_parameters(node)
                if isinstance(params, QuantParams):
                    candidates.append((node.inputs[0], params, node))
            elif self._is_native_int8(node):
                union(node.inputs[0], node.outputs[0])
        chosen: dict[int, tuple[QuantParams, ir.Node]] = {}
        for value, params, node in candidates:
            values.setdefault(id(value), value)
            root = find(id(value))
            if root not in chosen:
                chosen[root] = (params, node)
            elif not same_params(chosen[root][0], params):
                first = chosen[root][1]
                self._problems[id(node)] = (
                    f"int8 tensor {value.name!r} is read with {describe(params)} but {first.name!r} gives it "
                    f"{describe(chosen[root][0])}; a TFLite int8 tensor has one quantization"
                )
        for key, value in values.items():
            entry = chosen.get(find(key))
            if entry is not None:
                self._int8_params[key] = entry[0]

    def _is_native_int8(self, node: ir.Node) -> bool:
        """A byte-moving op applied to an int8 ONNX tensor (tf2onnx's input Reshape/Transpose)."""
        if not _is_default(node) or node.op_type not in DATA_MOVEMENT_OPS or not node.inputs or node.inputs[0] is None:
            return False
        source = node.inputs[0]
        return source.dtype == INT8 and constant_array(source) is None and node.outputs[0].dtype == INT8

    def _dequantized_source(self, value: ir.Value | None) -> ir.Value | None:
        """The non-constant int8 value a DequantizeLinear turns into ``value``, or None."""
        producer = _producer(value)
        if _is_qdq(producer, "DequantizeLinear") and constant_array(producer.inputs[0]) is None and producer.inputs[0].dtype == INT8:
            return producer.inputs[0]
        return None

    def _constant_like(self, value: ir.Value | None) -> bool:
        """A constant, or a DequantizeLinear of a constant (weights, biases, quantized operands)."""
        if value is None:
            return False
        if constant_array(value) is not None:
            return True
        producer = _producer(value)
        return _is_qdq(producer, "DequantizeLinear") and constant_array(producer.inputs[0]) is not None

    def _quantize_consumers(self, value: ir.Value) -> list[ir.Node] | None:
        """The QuantizeLinear nodes that are ``value``'s only readers (None when another op reads it,
        when it is a graph output, or when nothing reads it)."""
        readers = _consumers(value)
        if not readers or self._is_graph_output(value) or not all(_is_qdq(r, "QuantizeLinear") for r in readers):
            return None
        return readers

    def _bias_add(self, node: ir.Node) -> ir.Node | None:
        """The Add of a constant bias [N] that is the only reader of a MatMul/Gemm(no C) output."""
        if node.op_type not in ("MatMul", "Gemm") or (node.op_type == "Gemm" and _input(node, 2) is not None):
            return None
        value = node.outputs[0]
        readers = _consumers(value)
        if len(readers) != 1 or self._is_graph_output(value):
            return None
        add = readers[0]
        if add.op_type != "Add" or not _is_default(add) or len(add.inputs) != 2:
            return None
        other = add.inputs[1] if add.inputs[0] is value else add.inputs[0]
        if other is value or not self._constant_like(other):
            return None
        out_shape = value.shape
        n = out_shape[-1] if out_shape is not None and len(out_shape) else None
        bias = self._constant_data(other)
        if bias is None or not isinstance(n, int) or bias.size != n or (bias.ndim > 1 and any(d != 1 for d in bias.shape[:-1])):
            return None
        return add

    def _constant_data(self, value: ir.Value) -> np.ndarray | None:
        array = constant_array(value)
        if array is not None:
            return array
        producer = _producer(value)
        if _is_qdq(producer, "DequantizeLinear"):
            return constant_array(producer.inputs[0])
        return None

    def _classify(self, node: ir.Node) -> None:
        """Decide whether ``node`` runs in int8 (module docstring: groups) and give its output
        tensors the parameters of the QuantizeLinear that ends the group."""
        if not _is_default(node):
            return
        if self._is_native_int8(node):
            self._int8_nodes.add(id(node))
            return
        if node.op_type not in INT8_KERNEL_OPS:
            return
        dynamic = 0
        for index in data_inputs(node):
            value = _input(node, index)
            if value is None:
                continue
            if self._constant_like(value):
                continue
            if self._dequantized_source(value) is None:
                return
            dynamic += 1
        if dynamic == 0:
            return
        if any(v is not None and (v.uses() or self._is_graph_output(v)) for v in node.outputs[1:]):
            return
        members: list[ir.Node] = []
        chain = [node.outputs[0]]
        tail = node.outputs[0]
        bias_add = self._bias_add(node)
        if bias_add is not None:
            members.append(bias_add)
            tail = bias_add.outputs[0]
            chain.append(tail)
        readers = _consumers(tail)
        if len(readers) == 1 and readers[0].op_type in ("Relu", "Clip") and _is_default(readers[0]) and readers[0].inputs[0] is tail and not self._is_graph_output(tail):
            activation = readers[0]
            if activation.op_type == "Relu" or all(i == 0 or constant_array(v) is not None for i, v in enumerate(activation.inputs) if v is not None):
                members.append(activation)
                tail = activation.outputs[0]
                chain.append(tail)
        quantizers = self._quantize_consumers(tail)
        if quantizers is None:
            return
        params = qdq_parameters(quantizers[0])
        if not isinstance(params, QuantParams) or params.axis is not None:
            return
        self._int8_nodes.add(id(node))
        if bias_add is not None:
            self._bias_adds[id(node)] = bias_add
        for member in members:
            self._members[id(member)] = node
            self._int8_nodes.add(id(member))
        for value in chain:
            self._float_params[id(value)] = params

    # ---------------------------------------------------------------------------- TensorTypes

    def precision(self, node: ir.Node) -> str:
        """``"int8"`` (runs on int8 tensors), ``"float"``, or ``"boundary"`` (QuantizeLinear/DequantizeLinear)."""
        if _is_qdq(node, "QuantizeLinear") or _is_qdq(node, "DequantizeLinear"):
            return "boundary"
        return "int8" if id(node) in self._int8_nodes else "float"

    def bias_add(self, node: ir.Node) -> ir.Node | None:
        """The Add of a constant bias that an int8 MatMul/Gemm absorbs into FULLY_CONNECTED, or None."""
        return self._bias_adds.get(id(node))

    def params(self, value: ir.Value) -> QuantParams | None:
        """Per-tensor parameters of the int8 tensor holding ``value`` (a DequantizeLinear output
        answers for its int8 input), or None when it is stored float."""
        source = self._dequantized_source(value)
        if source is not None:
            value = source
        if id(value) in self._int8_params:
            return self._int8_params[id(value)]
        return self._float_params.get(id(value))

    def activation(self, value: ir.Value) -> ElementType:
        params = self.params(value)
        if params is not None:
            return ElementType(np.dtype(np.int8), params)
        if value.dtype == INT8:
            raise ValueError(f"int8 tensor {value.name!r} has no quantization parameters (no QuantizeLinear/DequantizeLinear gives them)")
        return ElementType(np.dtype(np.float32))

    def folded(self, node: ir.Node) -> bool:
        if _is_qdq(node, "DequantizeLinear"):
            return True
        if _is_qdq(node, "QuantizeLinear"):
            params = qdq_parameters(node)
            return isinstance(params, QuantParams) and same_params(self._float_params.get(id(node.inputs[0])), params)
        return False

    def alias_of(self, value: ir.Value) -> ir.Value | None:
        producer = _producer(value)
        if producer is None or not producer.inputs:
            return None
        if _is_qdq(producer, "DequantizeLinear"):
            return producer.inputs[0]
        if _is_qdq(producer, "QuantizeLinear") and self.folded(producer):
            return producer.inputs[0]
        return None

    def _dequantize_node(self, value: ir.Value) -> ir.Node | None:
        producer = _producer(value)
        if _is_qdq(producer, "DequantizeLinear") and constant_array(producer.inputs[0]) is not None:
            return producer
        return self._constant_dequantize.get(id(value))

    def _reads_int8(self, value: ir.Value) -> bool:
        """True when an int8 node reads ``value`` (directly or through its DequantizeLinear)."""
        readers = list(_consumers(value))
        for reader in list(readers):
            if _is_qdq(reader, "DequantizeLinear"):
                readers += _consumers(reader.outputs[0])
        return any(id(r) in self._int8_nodes for r in readers)

    def constant(self, value: ir.Value) -> tuple[np.ndarray, QuantParams | None]:
        """Integer data and parameters of a DequantizeLinear'd constant; float32 data of a plain
        constant, quantized here (weights symmetric per channel, other operands asymmetric per
        tensor) when an int8 node reads it."""
        dequantize = self._dequantize_node(value)
        if dequantize is not None:
            params = qdq_parameters(dequantize)
            if isinstance(params, str):
                raise ValueError(f"{dequantize.name!r}: {params}")
            return constant_array(dequantize.inputs[0]), params
        if id(value) in self._float_constants:
            return self._float_constants[id(value)]
        array = constant_array(value)
        if array is None:
            raise ValueError(f"{value.name!r} is not a constant")
        result: tuple[np.ndarray, QuantParams | None] = (array.astype(np.float32), None)
        if array.dtype.kind == "f" and self._reads_int8(value):
            axis = None
            for reader in _consumers(value):
                if id(reader) in self._int8_nodes and _input(reader, 1) is value and weight_axis(reader) is not None:
                    axis = weight_axis(reader) % max(array.ndim, 1)
            result = quantize_symmetric(array, axis) if axis is not None else quantize_asymmetric(array)
        self._float_constants[id(value)] = result
        return result

    def bias(self, value: ir.Value | None, length: int, input_value: ir.Value, weight_value: ir.Value) -> tuple[np.ndarray, QuantParams | None]:
        """int32 bias with scale ``s_in * s_w`` (zero point 0) for an int8 node; float32 otherwise.

        A DequantizeLinear'd int32 bias is kept as the model carries it when its scale is within
        LiteRT's tolerance of ``s_in * s_w`` (:data:`BIAS_SCALE_TOLERANCE`), else requantized.
        """
        input_params = self.params(input_value)
        _, weight_params = self.constant(weight_value)
        if input_params is None or weight_params is None:
            if value is None:
                return np.zeros(length, np.float32), None
            data, params = self.constant(value)
            if params is not None:
                data = _dequantize_array(data, params)
            return np.ascontiguousarray(np.broadcast_to(np.asarray(data, np.float32).reshape(-1), (length,))), None
        expected = (np.float32(np.asarray(input_params.scale).reshape(())) * np.asarray(weight_params.scale, np.float32)).astype(np.float32)
        per_channel = expected.ndim > 0
        if value is None:
            scale = expected if per_channel else np.asarray(expected, np.float32).reshape(())
            return np.zeros(length, np.int32), QuantParams(scale, np.zeros(np.shape(scale), np.int64), 0 if per_channel else None)
        data, params = self.constant(value)
        if params is not None and data.dtype == np.int32:
            scale = np.asarray(params.scale, np.float32)
            full = np.broadcast_to(scale.reshape(-1), (length,)) if scale.size > 1 else np.full(length, scale.reshape(()), np.float32)
            reference = np.broadcast_to(expected.reshape(-1), (length,)) if per_channel else np.full(length, expected, np.float32)
            close = np.abs(full.astype(np.float64) - reference) <= BIAS_SCALE_TOLERANCE * np.minimum(full, reference)
            if np.all(close) and not np.any(np.asarray(params.zero_point)):
                values = np.broadcast_to(data.reshape(-1), (length,)).astype(np.int32)
                return np.ascontiguousarray(values), QuantParams(scale, np.zeros(scale.shape, np.int64), 0 if scale.size > 1 else None)
            self.rescaled_biases.append(value.name)
            real = _dequantize_array(data, params).reshape(-1)
        elif params is not None:
            real = _dequantize_array(data, params).reshape(-1)
        else:
            real = np.asarray(data, np.float64).reshape(-1)
        real = np.broadcast_to(real, (length,))
        scale = np.broadcast_to(expected.reshape(-1), (length,)) if per_channel else np.full(length, expected, np.float32)
        quantized = np.clip(np.round(real / scale.astype(np.float64)), -(2**31), 2**31 - 1).astype(np.int32)
        stored_scale = expected if per_channel else np.asarray(expected, np.float32).reshape(())
        return quantized, QuantParams(stored_scale, np.zeros(np.shape(stored_scale), np.int64), 0 if per_channel else None)

    def keeps_quantized(self, node: ir.Node | None, value: ir.Value) -> bool:
        """True when ``node``'s operator takes the quantized constant ``value`` as it is (int8 node,
        or a TFLite hybrid kernel's weight); False: a DEQUANTIZE feeds it float32."""
        if node is None:
            return False
        if id(node) in self._int8_nodes:
            return True
        if self.dynamic_kernels == "dequantize" or node.op_type not in HYBRID_KERNEL_OPS:
            return False
        if self.dynamic_kernels == "auto" and node.op_type not in AUTO_HYBRID_OPS:
            return False
        weight = _input(node, HYBRID_KERNEL_OPS[node.op_type])
        if weight is None or (weight is not value and self.alias_of(weight) is not value):
            return False
        if node.op_type == "Conv":
            group_attr = node.attributes.get("group")
            group = int(group_attr.value) if group_attr is not None else 1
            channels = node.inputs[0].shape[1] if node.inputs[0].shape is not None and len(node.inputs[0].shape) > 1 else None
            weight_data = self._constant_data(weight)
            depthwise = weight_data is not None and weight_data.shape[1] == 1 and group == channels
            return group == 1 or depthwise
        return True

    def unsupported(self, node: ir.Node) -> str | None:
        """Why ``node``'s element types have no TFLite kernel here (module docstring: checks), or None."""
        if id(node) in self._problems:
            return self._problems[id(node)]
        if _is_qdq(node, "QuantizeLinear") or _is_qdq(node, "DequantizeLinear"):
            return self._qdq_problem(node)
        if not _is_default(node):
            return None
        if id(node) in self._int8_nodes:
            return self._int8_problem(node)
        return self._float_problem(node)

    def _qdq_problem(self, node: ir.Node) -> str | None:
        params = qdq_parameters(node)
        if isinstance(params, str):
            return params
        data = node.inputs[0]
        is_constant = constant_array(data) is not None
        if node.op_type == "DequantizeLinear" and is_constant:
            if data.dtype not in (INT8, INT32):
                return f"constant {data.name!r} is {data.dtype.name}; TFLite int8 lowering stores int8 weights and int32 biases"
            return None
        quantized = node.outputs[0] if node.op_type == "QuantizeLinear" else data
        if quantized.dtype != INT8:
            return f"activation {quantized.name!r} is quantized to {quantized.dtype.name if quantized.dtype else 'unknown'}; the TFLite lowering handles int8 activations only"
        if params.axis is not None:
            return f"activation {quantized.name!r} has per-axis scales; TFLite int8 activations are quantized per tensor"
        return None

    def _int8_problem(self, node: ir.Node) -> str | None:
        if self._is_native_int8(node):
            if self.params(node.inputs[0]) is None:
                return f"int8 tensor {node.inputs[0].name!r} has no quantization parameters (no QuantizeLinear/DequantizeLinear gives them)"
            return None
        if id(node) in self._members:
            return None
        axis = weight_axis(node)
        if axis is not None and len(node.inputs) > 1:
            weight = node.inputs[1]
            dequantize = self._dequantize_node(weight)
            if dequantize is not None:
                data = constant_array(dequantize.inputs[0])
                params = qdq_parameters(dequantize)
                if data.dtype != np.int8:
                    return f"weight {weight.name!r} is {data.dtype}; TFLite int8 kernels take int8 weights"
                if isinstance(params, QuantParams):
                    if np.any(np.asarray(params.zero_point)):
                        return f"weight {weight.name!r} has a nonzero zero point; TFLite int8 weights are symmetric (zero point 0)"
                    if params.axis is not None and params.axis != axis % data.ndim:
                        return f"weight {weight.name!r} is quantized along axis {params.axis}; TFLite needs the output-channel axis {axis % data.ndim}"
        if node.op_type in FIXED_OUTPUT_PARAMS:
            kernel, scale, zero_point = FIXED_OUTPUT_PARAMS[node.op_type]
            params = self._float_params.get(id(node.outputs[0]))
            if params is not None:
                actual_scale, actual_zero = float(np.asarray(params.scale).reshape(())), int(np.asarray(params.zero_point).reshape(()))
                if abs(actual_scale - scale) > FIXED_SCALE_TOLERANCE * scale or actual_zero != zero_point:
                    return (
                        f"int8 {kernel} needs output scale {scale:g} and zero point {zero_point} (TFLite int8 spec); "
                        f"the model quantizes {node.outputs[0].name!r} with scale {actual_scale:.9g}, zero point {actual_zero}"
                    )
        return None

    def _float_problem(self, node: ir.Node) -> str | None:
        """A float node: its non-constant tensors are float32 (int8 ones come through DequantizeLinear)."""
        for value in (*node.inputs, *node.outputs):
            if value is None or self._constant_like(value):
                continue
            dtype = value.dtype
            if dtype is None:
                return f"tensor {value.name!r} has no known element type"
            if dtype == INT8 and node.op_type not in DATA_MOVEMENT_OPS:
                return f"tensor {value.name!r} is int8 outside a QuantizeLinear/DequantizeLinear group ({node.op_type} on raw int8 values has no TFLite kernel)"
            if dtype.name not in FLOAT_TYPES and dtype != INT8:
                return f"tensor {value.name!r} is {dtype.name}; the TFLite lowering handles float32 and int8 tensors only"
        return None

    # ---------------------------------------------------------------------------- reporting

    def int8_node_names(self) -> Iterable[str]:
        return [node.name for node in self.model.graph if id(node) in self._int8_nodes]


def _dequantize_array(data: np.ndarray, params: QuantParams) -> np.ndarray:
    """``(q - zero_point) * scale`` in float64 (per-axis along ``params.axis``)."""
    scale = np.asarray(params.scale, np.float64)
    zero_point = np.asarray(params.zero_point, np.float64)
    if params.axis is not None and scale.ndim == 1 and data.ndim > 0:
        shape = [1] * data.ndim
        shape[params.axis] = -1
        scale, zero_point = scale.reshape(shape), zero_point.reshape(shape)
    return (data.astype(np.float64) - zero_point) * scale
