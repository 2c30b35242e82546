"""A small builder over the TFLite flatbuffer schema (object API of ``ai_edge_litert.schema_py_generated``).

The file layout follows ``tensorflow/compiler/mlir/lite/schema/schema.fbs`` (file identifier
``TFL3``, schema version 3):

- **Buffers.** ``buffers[0]`` is the empty buffer by convention; every tensor without constant data
  (activations, graph inputs) points to it. Constant data gets its own buffer, shared by constants
  with identical dtype and bytes. The schema declares ``Buffer.data`` with ``force_align: 16``, but
  the Python generated code ignores ``force_align`` (``CreateNumpyVector`` aligns to the element size
  only), so :class:`AlignedBufferT` writes the vector itself, aligned to :data:`BUFFER_ALIGNMENT`
  bytes. The flatbuffers builder then pads the finished file to a multiple of the largest alignment
  it has seen (``Builder.minalign``), so offsets aligned from the end of the buffer are aligned from
  its start too: constant data is 16-byte aligned within the file (LiteRT and TFLM read int8/float
  arrays in place, some kernels with vector loads).
- **Default values.** ``Builder.ForceDefaults`` stays off: scalar fields equal to their schema
  default are omitted, which every reader resolves to the same default (e.g. ``builtin_code`` 0 is
  ``ADD``, ``Tensor.type`` 0 is ``FLOAT32``).
- **Operator codes** are deduplicated per builtin code; each gets the highest version any of its
  operators needs (:func:`edgecomp_tflite.versions.operator_version`, the rule of TensorFlow's
  ``UpdateOpVersion``). ``deprecated_builtin_code`` is ``min(code, 127)``: schema v3a readers take
  ``max(builtin_code, deprecated_builtin_code)``, and old readers only know the byte field, where
  127 is ``PLACEHOLDER_FOR_GREATER_OP_CODES``.
- **Signature** ``serving_default`` maps the ONNX input/output names to the subgraph's I/O tensors,
  so users find I/O by name (``Interpreter.get_signature_runner()``).
- **Metadata**: ``edgecomp.producer`` (``edgecomp <version>``) and, when given, the quantization
  plan JSON under ``edgecomp.quantization_plan``, or only its sha256 (hex) under
  ``edgecomp.quantization_plan.sha256`` naming the ``quantization_plan.json`` written beside the
  file; the model ``description`` names the producer too.
- **Pruning**: operators whose outputs nothing reads (a RESHAPE a FULLY_CONNECTED bypassed, a
  DEQUANTIZE left unused) are dropped at :meth:`ModelWriter.finish`, then tensors no operator or
  graph interface refers to and buffers no tensor uses; :attr:`ModelWriter.tensor_remap` maps the
  indices handed out by :meth:`ModelWriter.add_tensor` to those in the file.
- **Determinism**: the bytes are a pure function of the calls made (no time stamps, no dict or set
  order of unknown origin), so the same model gives the same file.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any, Mapping, Sequence

import flatbuffers
import numpy as np
from ai_edge_litert import schema_py_generated as schema

from edgecomp_tflite.versions import (
    OperandSignature,
    OperatorSignature,
    operator_version,
)

FILE_IDENTIFIER = b"TFL3"
SCHEMA_VERSION = 3
BUFFER_ALIGNMENT = 16
SIGNATURE_KEY = "serving_default"
PLACEHOLDER_FOR_GREATER_OP_CODES = 127
PRODUCER_METADATA = "edgecomp.producer"
PLAN_METADATA = "edgecomp.quantization_plan"
PLAN_DIGEST_METADATA = "edgecomp.quantization_plan.sha256"

_TENSOR_TYPES: dict[np.dtype, int] = {
    np.dtype(np.float32): schema.TensorType.FLOAT32,
    np.dtype(np.float16): schema.TensorType.FLOAT16,
    np.dtype(np.int32): schema.TensorType.INT32,
    np.dtype(np.uint8): schema.TensorType.UINT8,
    np.dtype(np.int64): schema.TensorType.INT64,
    np.dtype(np.bool_): schema.TensorType.BOOL,
    np.dtype(np.int16): schema.TensorType.INT16,
    np.dtype(np.int8): schema.TensorType.INT8,
    np.dtype(np.float64): schema.TensorType.FLOAT64,
    np.dtype(np.uint16): schema.TensorType.UINT16,
    np.dtype(np.uint32): schema.TensorType.UINT32,
}
_NUMPY_TYPES = {value: key for key, value in _TENSOR_TYPES.items()}


def tensor_type(dtype: np.dtype | type) -> int:
    """``schema.TensorType`` value of a numpy dtype (``np.float32`` -> ``FLOAT32``).

    Raises:
        ValueError: the dtype has no TFLite tensor type here.
    """
    try:
        return _TENSOR_TYPES[np.dtype(dtype)]
    except KeyError:
        raise ValueError(f"no TFLite tensor type for numpy dtype {np.dtype(dtype)}") from None


def numpy_type(tensor_type_value: int) -> np.dtype:
    """numpy dtype of a ``schema.TensorType`` value (inverse of :func:`tensor_type`)."""
    return _NUMPY_TYPES[tensor_type_value]


@dataclasses.dataclass(frozen=True)
class Quantization:
    """Affine quantization of a tensor: ``real = (q - zero_point) * scale`` (TFLite int8 spec).

    Attributes:
        scale: one scale (per-tensor) or one per slice along ``quantized_dimension`` (per-channel).
        zero_point: as many zero points as scales (0 for symmetric int8 weights).
        quantized_dimension: the axis of the *stored TFLite* tensor the scales run along
            (0 for CONV_2D/FULLY_CONNECTED weights, 3 for DEPTHWISE_CONV_2D weights).
    """

    scale: tuple[float, ...]
    zero_point: tuple[int, ...]
    quantized_dimension: int = 0

    def __post_init__(self) -> None:
        if len(self.scale) != len(self.zero_point) or not self.scale:
            raise ValueError(f"quantization needs as many zero points as scales (got {len(self.scale)} and {len(self.zero_point)})")

    @property
    def per_channel(self) -> bool:
        return len(self.scale) > 1

    def to_schema(self) -> schema.QuantizationParametersT:
        params = schema.QuantizationParametersT()
        params.scale = [float(s) for s in self.scale]
        params.zeroPoint = [int(z) for z in self.zero_point]
        params.quantizedDimension = int(self.quantized_dimension)
        return params


class AlignedBufferT(schema.BufferT):
    """A ``BufferT`` whose data vector starts on a :data:`BUFFER_ALIGNMENT`-byte boundary.

    Implements the schema's ``data: [ubyte] (force_align: 16)``, which the Python generated code
    does not honour: ``Builder.StartVector(1, n, 16)`` pads so that the vector's first byte is
    16-aligned relative to the buffer end; ``Builder.Finish`` pads the file to a multiple of 16.
    """

    def Pack(self, builder: flatbuffers.Builder) -> int:
        data_offset = None
        if self.data is not None:
            payload = bytes(self.data)
            builder.StartVector(1, len(payload), BUFFER_ALIGNMENT)
            builder.head -= len(payload)
            builder.Bytes[builder.head : builder.head + len(payload)] = payload
            data_offset = builder.EndVector()
        schema.BufferStart(builder)
        if data_offset is not None:
            schema.BufferAddData(builder, data_offset)
        return schema.BufferEnd(builder)


@dataclasses.dataclass
class _Operator:
    code: int
    inputs: list[int]
    outputs: list[int]
    options: Any
    grouped_convolution: bool


class ModelWriter:
    """Collects tensors, buffers and operators of one subgraph and writes the ``.tflite`` bytes.

    Tensors are numbered in the order they are added; operators run in the order they are added
    (TFLite executes a subgraph's operator list in order, so callers add them topologically).

    Args:
        description: the model's ``description`` string (e.g. ``"edgecomp 0.1.0"``).
    """

    def __init__(self, description: str) -> None:
        self.description = description
        self._tensors: list[schema.TensorT] = []
        self._quantizations: list[Quantization | None] = []
        self._buffers: list[schema.BufferT] = [schema.BufferT()]
        self._buffer_index: dict[tuple[int, str], int] = {}
        self._operators: list[_Operator] = []
        self._inputs: list[int] = []
        self._outputs: list[int] = []
        self._signature: tuple[dict[str, int], dict[str, int]] | None = None
        self._metadata: list[tuple[str, bytes]] = []
        self._producer: dict[int, int] = {}
        self.tensor_remap: dict[int, int] = {}

    # ---------------------------------------------------------------------------- tensors

    def add_tensor(
        self,
        name: str,
        shape: Sequence[int | None],
        dtype: np.dtype | type,
        *,
        data: np.ndarray | None = None,
        quantization: Quantization | None = None,
    ) -> int:
        """Add a tensor; returns its index.

        Args:
            name: tensor name (kept in the file; graph I/O tensors carry the ONNX names).
            shape: dims in TFLite (stored) order; ``None`` marks a dynamic dim (stored as 1 in
                ``shape`` and -1 in ``shape_signature``, so the runtime can resize it).
            dtype: numpy dtype of the elements (``np.float32``, ``np.int8``, ``np.int32`` ...).
            data: constant contents (C order, converted to ``dtype``), or None for an activation.
            quantization: affine quantization parameters, or None for a float/plain tensor.

        Raises:
            ValueError: ``data`` does not have ``shape``'s element count, or a dynamic dim on a constant.
        """
        dims = [1 if dim is None else int(dim) for dim in shape]
        tensor = schema.TensorT()
        tensor.name = name
        tensor.shape = dims
        tensor.type = tensor_type(dtype)
        if any(dim is None for dim in shape):
            tensor.shapeSignature = [-1 if dim is None else int(dim) for dim in shape]
        if quantization is not None:
            tensor.quantization = quantization.to_schema()
        if data is not None:
            if tensor.shapeSignature is not None:
                raise ValueError(f"constant tensor {name!r} cannot have a dynamic dimension")
            array = np.ascontiguousarray(np.asarray(data).astype(np.dtype(dtype), copy=False))
            if array.size != int(np.prod(dims, dtype=np.int64)):
                raise ValueError(f"constant tensor {name!r}: {array.size} values for shape {dims}")
            tensor.buffer = self._buffer_for(array)
        else:
            tensor.buffer = 0
        self._tensors.append(tensor)
        self._quantizations.append(quantization)
        return len(self._tensors) - 1

    def add_constant(self, name: str, array: np.ndarray, *, quantization: Quantization | None = None) -> int:
        """Add a constant tensor holding ``array`` (shape and dtype from the array); returns its index."""
        array = np.asarray(array)
        return self.add_tensor(name, array.shape, array.dtype, data=array, quantization=quantization)

    def _buffer_for(self, array: np.ndarray) -> int:
        payload = array.tobytes(order="C")
        key = (tensor_type(array.dtype), hashlib.sha256(payload).hexdigest())
        index = self._buffer_index.get(key)
        if index is None:
            buffer = AlignedBufferT()
            buffer.data = payload
            self._buffers.append(buffer)
            index = self._buffer_index[key] = len(self._buffers) - 1
        return index

    def tensor_shape(self, index: int) -> list[int | None]:
        """The dims of tensor ``index`` in stored order, ``None`` for a dynamic dim."""
        tensor = self._tensors[index]
        signature = tensor.shapeSignature or tensor.shape
        return [None if dim == -1 else int(dim) for dim in signature]

    def tensor_dtype(self, index: int) -> np.dtype:
        return numpy_type(self._tensors[index].type)

    def tensor_quantization(self, index: int) -> Quantization | None:
        """The quantization tensor ``index`` was added with, or None (float / plain tensor)."""
        return self._quantizations[index]

    def tensor_name(self, index: int) -> str:
        return self._tensors[index].name

    def rename_tensor(self, index: int, name: str) -> None:
        self._tensors[index].name = name

    def is_constant(self, index: int) -> bool:
        return self._tensors[index].buffer != 0

    @property
    def num_tensors(self) -> int:
        return len(self._tensors)

    # ---------------------------------------------------------------------------- operators

    def add_operator(
        self,
        code: int,
        inputs: Sequence[int],
        outputs: Sequence[int],
        options: Any = None,
        *,
        grouped_convolution: bool = False,
    ) -> int:
        """Append an operator; returns its position in the execution order.

        Args:
            code: a ``schema.BuiltinOperator`` value.
            inputs: tensor indices (-1 for an absent optional input).
            outputs: tensor indices.
            options: the builtin options object (``schema.Conv2DOptionsT()`` ...) or None; its
                ``BuiltinOptions`` union type is derived from the class name.
            grouped_convolution: CONV_2D whose filter has fewer input channels than its input
                (needs version 6).
        """
        self._operators.append(_Operator(int(code), [int(i) for i in inputs], [int(o) for o in outputs], options, grouped_convolution))
        for output in outputs:
            self._producer[int(output)] = len(self._operators) - 1
        return len(self._operators) - 1

    def producer(self, tensor: int) -> tuple[int, list[int]] | None:
        """(builtin code, input tensor indices) of the operator writing ``tensor``, or None."""
        index = self._producer.get(tensor)
        if index is None:
            return None
        op = self._operators[index]
        return op.code, list(op.inputs)

    @property
    def operator_codes(self) -> list[int]:
        """Builtin code of every operator, in execution order."""
        return [op.code for op in self._operators]

    # ---------------------------------------------------------------------------- graph interface

    def set_io(self, inputs: Sequence[int], outputs: Sequence[int]) -> None:
        """Set the subgraph's input and output tensor indices (in ONNX graph order)."""
        self._inputs = list(inputs)
        self._outputs = list(outputs)

    def set_signature(self, inputs: Mapping[str, int], outputs: Mapping[str, int]) -> None:
        """The ``serving_default`` signature: ONNX input/output name -> tensor index."""
        self._signature = (dict(inputs), dict(outputs))

    def add_metadata(self, name: str, data: bytes) -> None:
        """A named metadata entry (its bytes go to their own buffer)."""
        self._metadata.append((name, bytes(data)))

    # ---------------------------------------------------------------------------- output

    def _operand(self, index: int) -> OperandSignature:
        if index < 0:
            return OperandSignature(-1, 0)
        tensor = self._tensors[index]
        quantization = tensor.quantization
        scales = list(quantization.scale) if quantization is not None and quantization.scale is not None else []
        return OperandSignature(
            type=tensor.type,
            rank=len(tensor.shape),
            per_channel=len(scales) > 1,
            scale=float(scales[0]) if len(scales) == 1 else 0.0,
        )

    def _signature_of(self, op: _Operator) -> OperatorSignature:
        return OperatorSignature(
            code=op.code,
            inputs=tuple(self._operand(i) for i in op.inputs),
            outputs=tuple(self._operand(o) for o in op.outputs),
            options=op.options,
            grouped_convolution=op.grouped_convolution,
        )

    def operator_versions(self) -> dict[int, int]:
        """Builtin code -> version its ``OperatorCode`` entry gets (highest needed by any use)."""
        versions: dict[int, int] = {}
        for op in self._operators:
            versions[op.code] = max(versions.get(op.code, 1), operator_version(self._signature_of(op)))
        return versions

    def _prune(self) -> None:
        """Drop dead operators, then unreferenced tensors and buffers (module docstring: pruning)."""
        keep_outputs = set(self._outputs)
        while True:
            read = {i for op in self._operators for i in op.inputs} | keep_outputs
            alive = [op for op in self._operators if any(o in read for o in op.outputs)]
            if len(alive) == len(self._operators):
                break
            self._operators = alive
        used = sorted({i for op in self._operators for i in (*op.inputs, *op.outputs) if i >= 0} | set(self._inputs) | set(self._outputs))
        remap = {old: new for new, old in enumerate(used)}
        self.tensor_remap = remap
        tensors = [self._tensors[old] for old in used]
        self._quantizations = [self._quantizations[old] for old in used]
        buffers_used = sorted({t.buffer for t in tensors if t.buffer})
        buffer_remap = {0: 0, **{old: new for new, old in enumerate(buffers_used, start=1)}}
        self._buffers = [self._buffers[0]] + [self._buffers[old] for old in buffers_used]
        for tensor in tensors:
            tensor.buffer = buffer_remap[tensor.buffer]
        self._tensors = tensors
        self._buffer_index = {}
        for op in self._operators:
            op.inputs = [remap[i] if i >= 0 else i for i in op.inputs]
            op.outputs = [remap[o] for o in op.outputs]
        self._inputs = [remap[i] for i in self._inputs]
        self._outputs = [remap[o] for o in self._outputs]
        if self._signature is not None:
            self._signature = ({k: remap[v] for k, v in self._signature[0].items()}, {k: remap[v] for k, v in self._signature[1].items()})
        self._producer = {}

    def finish(self) -> bytes:
        """Serialise the model to ``.tflite`` bytes (see the module docstring for the layout rules).

        Prunes first (module docstring); call once, after every tensor and operator is added.
        """
        self._prune()
        versions = self.operator_versions()
        code_index: dict[int, int] = {}
        operator_codes = []
        for op in self._operators:
            if op.code in code_index:
                continue
            entry = schema.OperatorCodeT()
            entry.builtinCode = op.code
            entry.deprecatedBuiltinCode = min(op.code, PLACEHOLDER_FOR_GREATER_OP_CODES)
            entry.version = versions[op.code]
            code_index[op.code] = len(operator_codes)
            operator_codes.append(entry)

        operators = []
        for op in self._operators:
            operator = schema.OperatorT()
            operator.opcodeIndex = code_index[op.code]
            operator.inputs = list(op.inputs)
            operator.outputs = list(op.outputs)
            if op.options is not None:
                operator.builtinOptionsType = getattr(schema.BuiltinOptions, type(op.options).__name__[:-1])
                operator.builtinOptions = op.options
            operators.append(operator)

        subgraph = schema.SubGraphT()
        subgraph.tensors = list(self._tensors)
        subgraph.inputs = list(self._inputs)
        subgraph.outputs = list(self._outputs)
        subgraph.operators = operators
        subgraph.name = "main"

        buffers = list(self._buffers)
        metadata = []
        for name, data in self._metadata:
            buffer = AlignedBufferT()
            buffer.data = data
            buffers.append(buffer)
            entry = schema.MetadataT()
            entry.name = name
            entry.buffer = len(buffers) - 1
            metadata.append(entry)

        model = schema.ModelT()
        model.version = SCHEMA_VERSION
        model.description = self.description
        model.operatorCodes = operator_codes
        model.subgraphs = [subgraph]
        model.buffers = buffers
        model.metadata = metadata or None
        if self._signature is not None:
            signature = schema.SignatureDefT()
            signature.signatureKey = SIGNATURE_KEY
            signature.subgraphIndex = 0
            signature.inputs = [_tensor_map(name, index) for name, index in self._signature[0].items()]
            signature.outputs = [_tensor_map(name, index) for name, index in self._signature[1].items()]
            model.signatureDefs = [signature]

        builder = flatbuffers.Builder(1024 + sum(len(b.data) for b in buffers if b.data is not None))
        builder.Finish(model.Pack(builder), file_identifier=FILE_IDENTIFIER)
        return bytes(builder.Output())


def _tensor_map(name: str, index: int) -> schema.TensorMapT:
    entry = schema.TensorMapT()
    entry.name = name
    entry.tensorIndex = index
    return entry


def read_model(data: bytes) -> schema.ModelT:
    """Parse ``.tflite`` bytes back into the object API (for inspection and tests)."""
    return schema.ModelT.InitFromPackedBuf(bytearray(data), 0)


def constant_data_bytes(data: bytes) -> int:
    """Bytes of tensor data in the ``.tflite`` bytes: the buffers that tensors point to (weights,
    biases, shape operands), without metadata buffers and flatbuffer structure."""
    model = read_model(data)
    used = {tensor.buffer for subgraph in model.subgraphs for tensor in subgraph.tensors or []}
    return sum(len(model.buffers[index].data) for index in used if index and model.buffers[index].data is not None)


def hybrid_operator_count(data: bytes) -> int:
    """Operators whose input 0 is float32 and input 1 a quantized int8 tensor (TFLite hybrid,
    dynamic-range kernels) in the ``.tflite`` bytes."""
    model = read_model(data)
    count = 0
    for subgraph in model.subgraphs:
        for operator in subgraph.operators:
            operands = list(operator.inputs)
            if len(operands) > 1 and operands[0] >= 0 and operands[1] >= 0:
                first, second = subgraph.tensors[operands[0]], subgraph.tensors[operands[1]]
                count += first.type == schema.TensorType.FLOAT32 and second.type == schema.TensorType.INT8
    return count


def operator_histogram(data: bytes) -> dict[str, int]:
    """Builtin operator name -> number of operators in the ``.tflite`` bytes, most frequent first."""
    from edgecomp_tflite.versions import builtin_name

    model = read_model(data)
    counts: dict[str, int] = {}
    for subgraph in model.subgraphs:
        for operator in subgraph.operators:
            code = model.operatorCodes[operator.opcodeIndex]
            name = builtin_name(max(code.builtinCode, code.deprecatedBuiltinCode))
            counts[name] = counts.get(name, 0) + 1
    return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))
