"""Read what the ``c-array`` backend emits from a quantized IR: quantized initializers and graph I/O.

The IR is an ``onnx_ir.Model`` in QDQ form (ONNX ``QuantizeLinear``/``DequantizeLinear``, opset >= 13).
Semantics follow the ONNX operator specs of DequantizeLinear/QuantizeLinear
(https://onnx.ai/onnx/operators/onnx__DequantizeLinear.html):

    real = (q - zero_point) * scale                      (DequantizeLinear)
    q = saturate(round_half_to_even(real / scale) + zero_point)   (QuantizeLinear)

with a scalar ``scale`` (per-tensor) or a 1-D ``scale`` along ``axis`` (per-axis, ``axis`` defaults to
1, negative values count from the end). They match the TFLite int8 quantization specification
(https://ai.google.dev/edge/litert/models/quantization_spec): weights int8 symmetric per-channel,
zero point 0; biases int32 with zero point 0 and scale ``s_input * s_weight``.

A *quantized initializer* is a constant integer tensor that is input 0 of a DequantizeLinear node;
this module reads its values, scale, zero point and axis. Nothing here mutates the model.
"""

from __future__ import annotations

import dataclasses
from typing import Iterator

import numpy as np
import onnx_ir as ir

from edgecomp.backend import Unsupported
from edgecomp.ir.values import constant_array

# ONNX data type -> C type of the arrays the backend emits for quantized initializers.
INTEGER_CTYPES: dict[ir.DataType, str] = {
    ir.DataType.INT8: "int8_t",
    ir.DataType.UINT8: "uint8_t",
    ir.DataType.INT16: "int16_t",
    ir.DataType.UINT16: "uint16_t",
    ir.DataType.INT32: "int32_t",
}

# Graph-input/output data types that have a C type on the device.
IO_CTYPES: dict[ir.DataType, str] = {**INTEGER_CTYPES, ir.DataType.FLOAT: "float"}

# Tensor data types nothing on a microcontroller target can hold: any initializer, constant or graph
# input/output of these types is reported by :func:`find_unsupported`.
UNSUPPORTED_DTYPES: dict[ir.DataType, str] = {
    ir.DataType.DOUBLE: "float64 has no hardware support on the microcontroller targets (single-precision FPU at most)",
    ir.DataType.COMPLEX64: "complex numbers have no C representation on the device",
    ir.DataType.COMPLEX128: "complex numbers have no C representation on the device",
    ir.DataType.STRING: "string tensors have no C representation on the device",
}

# Scale data types accepted (float16 widens to float32 exactly).
SCALE_DTYPES = (ir.DataType.FLOAT, ir.DataType.FLOAT16)

# Operators that only move or relabel elements: the quantization of a graph input/output is found
# through them (tf2onnx puts a Reshape or Transpose between an int8 input and its DequantizeLinear).
LAYOUT_ONLY_OPS = frozenset({"Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Identity"})


@dataclasses.dataclass(frozen=True)
class QuantizedTensor:
    """One quantized initializer with its quantization parameters.

    Attributes:
        onnx_name: the initializer's ONNX name.
        role: ``"bias"`` for int32 data (TFLite int8 spec: biases are int32), else ``"weight"``.
        dtype: the ONNX data type of ``values`` (one of :data:`INTEGER_CTYPES`).
        values: the integer data, ONNX layout, C order (numpy array of the initializer's shape).
        scale: float32, 1-D with ``quant_count`` elements (1 for per-tensor).
        zero_point: 1-D, ``quant_count`` elements, same dtype as ``values`` (zeros when absent).
        axis: the per-axis dimension (normalized to >= 0), or None for per-tensor.
        layout: what the dimensions mean for the consuming operator
            (``Conv weight [C_out, C_in/group, kH, kW]``).
        dequantize_node: name of the DequantizeLinear node that reads it.
    """

    onnx_name: str
    role: str
    dtype: ir.DataType
    values: np.ndarray
    scale: np.ndarray
    zero_point: np.ndarray
    axis: int | None
    layout: str
    dequantize_node: str

    @property
    def quant_count(self) -> int:
        """Number of scales (and zero points): 1 per-tensor, the axis length per-channel."""
        return int(self.scale.size)


@dataclasses.dataclass(frozen=True)
class IOTensor:
    """A graph input or output as the device sees it.

    Attributes:
        name: the ONNX value name.
        dtype: numpy-style dtype name (``int8``, ``float32``).
        ctype: the C element type, or None when the dtype has none (:data:`IO_CTYPES`).
        shape: dimensions with every dynamic dimension fixed to 1 (the device runs one sample),
            or None when the model does not say.
        dynamic_dims: ``(index, symbol)`` of each dimension that was dynamic.
        scale: float32 scale of the tensor's quantization, or None when not quantized.
        zero_point: its zero point, or None.
        quantization_node: the Q/DQ node the parameters were read from, or None.
    """

    name: str
    dtype: str
    ctype: str | None
    shape: tuple[int, ...] | None
    dynamic_dims: tuple[tuple[int, str], ...]
    scale: np.float32 | None
    zero_point: int | None
    quantization_node: str | None


def node_label(node: ir.Node) -> str:
    """The node's name, or ``<OpType output>`` for an unnamed node (ONNX names are optional)."""
    if node.name:
        return node.name
    first_output = node.outputs[0].name if node.outputs else "?"
    return f"<{node.op_type} -> {first_output}>"


def _constant_dtype(value: ir.Value) -> ir.DataType | None:
    if value.const_value is not None:
        return value.const_value.dtype
    producer = value.producer()
    if producer is not None and producer.op_type == "Constant":
        attribute = producer.attributes.get("value")
        if attribute is not None and isinstance(attribute.value, ir.TensorProtocol):
            return attribute.value.dtype
    return value.dtype


def _is_constant(value: ir.Value | None) -> bool:
    return constant_array(value) is not None


def dequantized_initializers(graph: ir.Graph) -> Iterator[tuple[ir.Value, ir.Node]]:
    """Every (constant, DequantizeLinear node) pair where the constant is the node's input 0, in graph order."""
    for node in graph:
        if node.op_type == "DequantizeLinear" and node.domain in ("", "ai.onnx") and node.inputs:
            data = node.inputs[0]
            if data is not None and _is_constant(data):
                yield data, node


def _axis_attribute(node: ir.Node) -> int:
    attribute = node.attributes.get("axis")
    return 1 if attribute is None else int(attribute.value)


def _check_dequantize(data: ir.Value, node: ir.Node) -> str | None:
    """Why the c-array backend cannot emit ``data`` as dequantized by ``node``, or None."""
    dtype = _constant_dtype(data)
    if dtype not in INTEGER_CTYPES:
        kinds = ", ".join(str(np.dtype(t.numpy())) for t in INTEGER_CTYPES)
        return f"quantized initializer {data.name!r} has dtype {dtype}; the c-array backend emits {kinds} arrays"
    block_size = node.attributes.get("block_size")
    if block_size is not None and int(block_size.value) != 0:
        return f"blocked quantization (block_size={int(block_size.value)}) of {data.name!r} is not supported"
    scale_value = node.inputs[1] if len(node.inputs) > 1 else None
    scale = constant_array(scale_value)
    if scale is None:
        return f"the scale of {data.name!r} is not a constant"
    if _constant_dtype(scale_value) not in SCALE_DTYPES:
        return f"the scale of {data.name!r} has dtype {_constant_dtype(scale_value)}; float32 or float16 expected"
    if scale.ndim > 1:
        return f"the scale of {data.name!r} has rank {scale.ndim}; a scalar or 1-D scale expected"
    if not np.all(np.isfinite(scale)):
        return f"the scale of {data.name!r} is not finite"
    zero_point_value = node.inputs[2] if len(node.inputs) > 2 else None
    if zero_point_value is not None:
        zero_point = constant_array(zero_point_value)
        if zero_point is None:
            return f"the zero point of {data.name!r} is not a constant"
        if zero_point.shape != scale.shape:
            return f"the zero point of {data.name!r} has shape {list(zero_point.shape)}, its scale {list(scale.shape)}"
    if scale.ndim == 1:
        shape = constant_array(data).shape
        axis = _axis_attribute(node)
        if not -len(shape) <= axis < len(shape):
            return f"axis {axis} is out of range for {data.name!r} of rank {len(shape)}"
        if shape[axis] != scale.size:
            return f"{data.name!r} has {shape[axis]} elements along axis {axis} but {scale.size} scales"
    return None


def _layout(data: ir.Value, dequantize: ir.Node, rank: int) -> str:
    """What the dimensions of a quantized initializer mean for the operator consuming it (ONNX specs)."""
    uses = list(dequantize.outputs[0].uses()) if dequantize.outputs else []
    if not uses:
        return f"[{rank} dims]"
    consumer, index = uses[0].node, uses[0].idx
    op = consumer.op_type
    spatial = {1: "[k]", 2: "[kH, kW]", 3: "[kD, kH, kW]"}.get(rank - 2, f"[{rank - 2} kernel dims]")
    spatial_dims = spatial.strip("[]")
    if op == "Conv" and index == 1:
        return f"Conv weight [C_out, C_in/group, {spatial_dims}]"
    if op == "ConvTranspose" and index == 1:
        return f"ConvTranspose weight [C_in, C_out/group, {spatial_dims}]"
    if op in ("Conv", "ConvTranspose") and index == 2:
        return f"{op} bias [C_out]"
    if op == "MatMul" and index == 1 and rank == 2:
        return "MatMul B [K, N] (y = x @ B)"
    if op == "MatMul" and index == 0 and rank == 2:
        return "MatMul A [M, K] (y = A @ x)"
    if op == "Gemm" and index in (0, 1):
        transposed = consumer.attributes.get("transA" if index == 0 else "transB")
        flag = int(transposed.value) if transposed is not None else 0
        if index == 1:
            return "Gemm B [N, K] (transB=1)" if flag else "Gemm B [K, N]"
        return "Gemm A [K, M] (transA=1)" if flag else "Gemm A [M, K]"
    if op == "Gemm" and index == 2:
        return "Gemm C (bias), broadcast to [M, N]"
    if op == "Add":
        return f"Add operand {index} ({rank}-D, broadcast by ONNX rules)"
    return f"{op} input {index}"


def _read_quantized(data: ir.Value, node: ir.Node) -> QuantizedTensor:
    values = np.ascontiguousarray(constant_array(data))
    dtype = _constant_dtype(data)
    scale = np.asarray(constant_array(node.inputs[1]), dtype=np.float32).reshape(-1)
    zero_point_value = node.inputs[2] if len(node.inputs) > 2 else None
    zero_point = constant_array(zero_point_value)
    if zero_point is None:
        zero_point = np.zeros(scale.shape, dtype=values.dtype)
    zero_point = np.asarray(zero_point, dtype=values.dtype).reshape(-1)
    per_axis = np.asarray(constant_array(node.inputs[1])).ndim == 1
    axis = _axis_attribute(node) % values.ndim if per_axis else None
    return QuantizedTensor(
        onnx_name=data.name,
        role="bias" if dtype == ir.DataType.INT32 else "weight",
        dtype=dtype,
        values=values,
        scale=scale,
        zero_point=zero_point,
        axis=axis,
        layout=_layout(data, node, values.ndim),
        dequantize_node=node_label(node),
    )


def _same_parameters(a: QuantizedTensor, b: QuantizedTensor) -> bool:
    return (
        a.axis == b.axis
        and np.array_equal(a.scale.view(np.uint32), b.scale.view(np.uint32))
        and np.array_equal(a.zero_point, b.zero_point)
    )


def find_unsupported(model: ir.Model) -> list[Unsupported]:
    """Everything in ``model`` the c-array backend cannot represent, one entry per problem.

    Reported: quantized initializers of a dtype without a C array type here (int4, float8, ...),
    non-constant, non-finite or blocked scales, an initializer dequantized twice with different
    parameters, and any initializer, ``Constant`` or graph input/output whose dtype is in
    :data:`UNSUPPORTED_DTYPES` (float64, complex, string). Float32/float16 initializers that are not
    quantized are *not* reported: they stay inside the embedded model (see the backend docstring).

    Returns:
        entries in graph order (nodes), then graph inputs, then graph outputs.
    """
    graph = model.graph
    found: list[Unsupported] = []
    seen: dict[str, QuantizedTensor] = {}
    for data, node in dequantized_initializers(graph):
        reason = _check_dequantize(data, node)
        if reason is not None:
            found.append(Unsupported(node_label(node), node.op_type, reason))
            continue
        tensor = _read_quantized(data, node)
        first = seen.setdefault(data.name, tensor)
        if first is not tensor and not _same_parameters(first, tensor):
            found.append(Unsupported(
                node_label(node), node.op_type,
                f"initializer {data.name!r} is dequantized by {first.dequantize_node!r} and by this node "
                "with different scale/zero point/axis; one C array cannot carry both",
            ))
    for name, value in graph.initializers.items():
        dtype = _constant_dtype(value)
        if dtype in UNSUPPORTED_DTYPES:
            uses = list(value.uses())
            if uses:
                consumer = uses[0].node
                found.append(Unsupported(node_label(consumer), consumer.op_type, f"initializer {name!r}: {UNSUPPORTED_DTYPES[dtype]}"))
            else:
                found.append(Unsupported(name, "initializer", f"initializer {name!r}: {UNSUPPORTED_DTYPES[dtype]}"))
    for node in graph:
        if node.op_type == "Constant" and node.outputs and _constant_dtype(node.outputs[0]) in UNSUPPORTED_DTYPES:
            found.append(Unsupported(node_label(node), node.op_type, f"constant {node.outputs[0].name!r}: {UNSUPPORTED_DTYPES[_constant_dtype(node.outputs[0])]}"))
    for kind, values in (("graph input", graph.inputs), ("graph output", graph.outputs)):
        for value in values:
            if value.dtype in UNSUPPORTED_DTYPES:
                found.append(Unsupported(value.name, kind, f"{kind} {value.name!r}: {UNSUPPORTED_DTYPES[value.dtype]}"))
    return found


def quantized_tensors(model: ir.Model) -> list[QuantizedTensor]:
    """Every quantized initializer of ``model``, once each, in the order of their DequantizeLinear nodes.

    Call :func:`find_unsupported` first: this function assumes the model passed it.
    """
    found: dict[str, QuantizedTensor] = {}
    for data, node in dequantized_initializers(model.graph):
        if data.name not in found:
            found[data.name] = _read_quantized(data, node)
    return list(found.values())


def unquantized_float_initializers(model: ir.Model) -> list[tuple[str, str, int]]:
    """``(name, dtype, bytes)`` of float initializers used as something other than a Q/DQ scale.

    These are weights left in float (hybrid quantization, or layers the quantizer skipped); the
    backend does not emit them as named arrays: they exist only inside the embedded model.
    """
    result = []
    for name, value in model.graph.initializers.items():
        dtype = _constant_dtype(value)
        if dtype not in (ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.BFLOAT16):
            continue
        as_scale = all(
            use.node.op_type in ("QuantizeLinear", "DequantizeLinear") and use.idx == 1 for use in value.uses()
        )
        if not as_scale:
            array = constant_array(value)
            result.append((name, str(np.dtype(dtype.numpy())), int(array.nbytes)))
    return result


def _scalar_parameters(node: ir.Node) -> tuple[np.float32, int] | None:
    scale = constant_array(node.inputs[1]) if len(node.inputs) > 1 else None
    if scale is None or scale.size != 1:
        return None
    zero_point_value = node.inputs[2] if len(node.inputs) > 2 else None
    zero_point = constant_array(zero_point_value)
    zero = 0 if zero_point is None else int(np.asarray(zero_point).reshape(-1)[0])
    return np.float32(np.asarray(scale).reshape(-1)[0]), zero


def _is_qdq(node: ir.Node) -> bool:
    return node.op_type in ("QuantizeLinear", "DequantizeLinear") and node.domain in ("", "ai.onnx")


def _input_quantization(value: ir.Value) -> ir.Node | None:
    """The first Q/DQ node reading ``value`` (input 0), looking through layout-only operators."""
    pending = [value]
    visited: set[int] = set()
    while pending:
        current = pending.pop(0)
        for use in current.uses():
            node = use.node
            if use.idx != 0 or id(node) in visited:
                continue
            visited.add(id(node))
            if _is_qdq(node):
                return node
            if node.op_type in LAYOUT_ONLY_OPS and node.outputs:
                pending.append(node.outputs[0])
    return None


def _output_quantization(value: ir.Value) -> ir.Node | None:
    """The last Q/DQ node producing ``value``, looking back through layout-only operators."""
    current: ir.Value | None = value
    for _ in range(64):
        node = current.producer() if current is not None else None
        if node is None:
            return None
        if _is_qdq(node):
            return node
        if node.op_type not in LAYOUT_ONLY_OPS or not node.inputs:
            return None
        current = node.inputs[0]
    return None


def _io_tensor(value: ir.Value, quantization: ir.Node | None) -> IOTensor:
    shape: tuple[int, ...] | None = None
    dynamic: list[tuple[int, str]] = []
    if value.shape is not None:
        dims = []
        for index, dim in enumerate(value.shape):
            if isinstance(dim, int):
                dims.append(dim)
            else:
                dims.append(1)
                dynamic.append((index, str(dim.value) if getattr(dim, "value", None) is not None else "?"))
        shape = tuple(dims)
    parameters = _scalar_parameters(quantization) if quantization is not None else None
    dtype = value.dtype
    return IOTensor(
        name=value.name,
        dtype=str(np.dtype(dtype.numpy())) if dtype is not None else "unknown",
        ctype=IO_CTYPES.get(dtype) if dtype is not None else None,
        shape=shape,
        dynamic_dims=tuple(dynamic),
        scale=parameters[0] if parameters else None,
        zero_point=parameters[1] if parameters else None,
        quantization_node=node_label(quantization) if parameters else None,
    )


def io_tensors(model: ir.Model) -> tuple[list[IOTensor], list[IOTensor]]:
    """The graph inputs and outputs with their quantization parameters, in graph order.

    An input's parameters come from the first QuantizeLinear (float input) or DequantizeLinear (integer
    input) that reads it; an output's from the last DequantizeLinear (float output) or QuantizeLinear
    (integer output) that produces it; both looking through :data:`LAYOUT_ONLY_OPS`. Per-axis
    parameters on an input/output are not reported (``scale`` None).
    """
    graph = model.graph
    initializer_names = set(graph.initializers)
    inputs = [_io_tensor(v, _input_quantization(v)) for v in graph.inputs if v.name not in initializer_names]
    outputs = [_io_tensor(v, _output_quantization(v)) for v in graph.outputs]
    return inputs, outputs
