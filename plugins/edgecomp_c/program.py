"""The INT8 ``.tflite`` written by the tflite backend, read back as a list of kernel calls.

The ``c`` backend does not lower ONNX itself: it reuses the tflite backend's lowering (layout,
fusion, the TFLite int8 quantization specification) and turns each TFLite operator into one call
of a C kernel whose arithmetic is the TFLite reference kernel's, so the generated program is
bit-exact with LiteRT's reference kernels (``OpResolverType.BUILTIN_REF``) on the same file.

Data model:

- :class:`TensorInfo`: one TFLite tensor: shape (NHWC for 4-D activations), element type, per-tensor
  or per-channel quantization parameters, and for constants their data as a typed numpy array.
- :class:`OpView`: one TFLite operator: builtin name, input/output tensors, builtin options object
  (``schema_py_generated`` object API, e.g. ``Conv2DOptionsT``).
- :class:`KernelCall`: what an op builder (:mod:`edgecomp_c.ops`) returns: the C function, a const
  parameter struct (designated initializer), per-op const arrays, and the tensors passed as pointers.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
from ai_edge_litert import schema_py_generated as schema

__all__ = ["KernelCall", "OpView", "TensorInfo", "TensorList", "Unlowerable", "read_ops"]

#: schema.TensorType code -> (numpy dtype, C type)
ELEMENT_TYPES = {
    schema.TensorType.FLOAT32: (np.float32, "float"),
    schema.TensorType.INT32: (np.int32, "int32_t"),
    schema.TensorType.INT8: (np.int8, "int8_t"),
    schema.TensorType.UINT8: (np.uint8, "uint8_t"),
    schema.TensorType.INT16: (np.int16, "int16_t"),
    schema.TensorType.INT64: (np.int64, "int64_t"),
}


class Unlowerable(Exception):
    """An operator (or a combination of its types/options) the C kernels do not implement.

    The message is the reason, one line, without the operator's name (the caller adds it)."""


@dataclasses.dataclass(frozen=True)
class TensorInfo:
    """One TFLite tensor.

    Attributes:
        index: the tensor's index in the subgraph.
        name: the tensor's name (the ONNX value name where the tflite backend kept it).
        shape: dimensions; 4-D activations are NHWC.
        dtype: numpy dtype of the elements (``np.int8``, ``np.int32``, ``np.float32`` ...).
        ctype: the C element type (``"int8_t"``, ``"int32_t"``, ``"float"`` ...).
        scale: float32 scales, shape ``(1,)`` per-tensor or ``(C,)`` per-channel; None if not quantized.
        zero_point: int64 zero points, same shape as ``scale``; None if not quantized.
        quantized_dimension: the per-channel axis (TFLite ``quantized_dimension``).
        data: the constant's elements, ``dtype`` and ``shape``; None for activations.
    """

    index: int
    name: str
    shape: tuple[int, ...]
    dtype: Any
    ctype: str
    scale: np.ndarray | None
    zero_point: np.ndarray | None
    quantized_dimension: int
    data: np.ndarray | None

    @property
    def is_constant(self) -> bool:
        return self.data is not None

    @property
    def numel(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) if self.shape else 1

    @property
    def nbytes(self) -> int:
        return self.numel * np.dtype(self.dtype).itemsize

    def single_scale(self) -> float:
        """The per-tensor scale (raises :class:`Unlowerable` when per-channel or unquantized)."""
        if self.scale is None or self.scale.size != 1:
            raise Unlowerable(f"tensor {self.name!r} must have one scale")
        return float(self.scale[0])

    def single_zero_point(self) -> int:
        if self.zero_point is None or self.zero_point.size != 1:
            raise Unlowerable(f"tensor {self.name!r} must have one zero point")
        return int(self.zero_point[0])


@dataclasses.dataclass(frozen=True)
class OpView:
    """One TFLite operator.

    Attributes:
        index: position in the subgraph's operator list (execution order).
        builtin: ``schema.BuiltinOperator`` name, e.g. ``"CONV_2D"``.
        version: the operator code's version.
        inputs: input tensors in TFLite order; None for an omitted optional input (index -1).
        outputs: output tensors.
        options: the builtin options object (``schema.Conv2DOptionsT`` ...) or None.
    """

    index: int
    builtin: str
    version: int
    inputs: tuple[TensorInfo | None, ...]
    outputs: tuple[TensorInfo, ...]
    options: Any


@dataclasses.dataclass(frozen=True)
class TensorList:
    """A ``KernelCall.params`` value: an array of pointers to tensors (e.g. CONCATENATION's inputs).

    The emitter writes ``static const <ctype> *const op<k>_<field>[] = {<pointer>, ...};`` and puts
    its name in the field. ``ctype`` is the element type (``"int8_t"``)."""

    tensors: tuple[int, ...]
    ctype: str = "int8_t"


@dataclasses.dataclass
class KernelCall:
    """One call of a C kernel, as an op builder describes it.

    The emitter writes, for operator ``k``::

        static const <ctype> op<k>_<array name>[N] = {...};          // for each entry of arrays
        static const <params_type> op<k>_params = {.field = value, ...};
        ...
        <function>(&op<k>_params, <tensor pointer>, <tensor pointer>, ...);

    Attributes:
        function: the kernel's C name, declared in ``runtime/ec_kernels.h`` (e.g. ``"ec_conv_s8"``).
        params_type: the const parameter struct's C type (e.g. ``"ec_conv_params"``), or None when
            the kernel takes no struct (then only the tensor pointers are passed).
        params: ordered field name -> value: an ``int`` (written as a C integer), a ``float`` (written
            with full float32 precision, ``f`` suffix), or a ``str`` naming an entry of ``arrays``
            (written as the array's C name) or a C expression written as is, or a
            :class:`TensorList` (written as the name of a const array of tensor pointers).
        arrays: ordered name -> (C element type, 1-D numpy array): per-op const data such as
            per-channel multipliers and shifts.
        tensors: TFLite tensor indices passed as pointers after the struct, in the kernel's order
            (inputs first, then outputs). Constant tensors are passed as their const array; the
            emitter casts activations to the tensor's C type.
    """

    function: str
    params_type: str | None
    params: dict[str, Any] = dataclasses.field(default_factory=dict)
    arrays: dict[str, tuple[str, np.ndarray]] = dataclasses.field(default_factory=dict)
    tensors: list[int] = dataclasses.field(default_factory=list)


def _builtin_name(code: int) -> str:
    from edgecomp_tflite.versions import builtin_name

    return builtin_name(code)


def tensor_info(model: schema.ModelT, subgraph: schema.SubGraphT, index: int) -> TensorInfo:
    """Read tensor ``index`` of ``subgraph`` (raises :class:`Unlowerable` for an element type
    without a C type here)."""
    tensor = subgraph.tensors[index]
    if tensor.type not in ELEMENT_TYPES:
        raise Unlowerable(f"tensor {tensor.name!r} has TFLite element type {tensor.type}, which the C kernels do not handle")
    dtype, ctype = ELEMENT_TYPES[tensor.type]
    shape = tuple(int(d) for d in (tensor.shape if tensor.shape is not None else ()))
    name = tensor.name.decode() if isinstance(tensor.name, bytes) else str(tensor.name)
    scale = zero_point = None
    axis = 0
    q = tensor.quantization
    if q is not None and q.scale is not None and len(q.scale):
        scale = np.asarray(q.scale, dtype=np.float32).reshape(-1)
        zp = q.zeroPoint if q.zeroPoint is not None and len(q.zeroPoint) else np.zeros(scale.size, np.int64)
        zero_point = np.asarray(zp, dtype=np.int64).reshape(-1)
        axis = int(q.quantizedDimension or 0)
    data = None
    buffer = model.buffers[tensor.buffer] if tensor.buffer else None
    if buffer is not None and buffer.data is not None and len(buffer.data):
        raw = np.asarray(buffer.data, dtype=np.uint8).tobytes()
        data = np.frombuffer(raw, dtype=dtype).reshape(shape).copy()
    return TensorInfo(index, name, shape, dtype, ctype, scale, zero_point, axis, data)


def read_ops(model: schema.ModelT) -> tuple[list[OpView], dict[int, TensorInfo]]:
    """Every operator of subgraph 0 in execution order, and every tensor they use by index.

    Raises:
        Unlowerable: more than one subgraph, a custom operator, or an element type without a C type.
    """
    if len(model.subgraphs) != 1:
        raise Unlowerable(f"{len(model.subgraphs)} subgraphs; the C backend lowers one")
    subgraph = model.subgraphs[0]
    tensors: dict[int, TensorInfo] = {}

    def info(index: int) -> TensorInfo:
        if index not in tensors:
            tensors[index] = tensor_info(model, subgraph, index)
        return tensors[index]

    ops = []
    for position, op in enumerate(subgraph.operators or []):
        code = model.operatorCodes[op.opcodeIndex]
        builtin = _builtin_name(max(code.builtinCode, code.deprecatedBuiltinCode))
        inputs = tuple(None if i < 0 else info(int(i)) for i in (op.inputs if op.inputs is not None else ()))
        outputs = tuple(info(int(i)) for i in (op.outputs if op.outputs is not None else ()))
        ops.append(OpView(position, builtin, int(code.version), inputs, outputs, op.builtinOptions))
    for index in list(subgraph.inputs) + list(subgraph.outputs):
        info(int(index))
    return ops, tensors
