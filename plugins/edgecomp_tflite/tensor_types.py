"""Element types of the lowered tensors: the extension point for INT8 lowering.

Every op lowering asks the context, never the IR directly, which element type and quantization a
tensor gets (:meth:`TensorTypes.activation`), which data a constant operand stores
(:meth:`TensorTypes.constant`, :meth:`TensorTypes.bias`), and which Q/DQ nodes disappear into
quantized tensors (:meth:`TensorTypes.folded`, :meth:`TensorTypes.alias_of`). The same op
lowerings therefore write float32 or int8 TFLite operators depending on which :class:`TensorTypes`
the backend hands the context:

- :class:`FloatTensorTypes` (this module): float32 activations and constants, nothing folded.
- :class:`Float16TensorTypes` (this module): float32 activations, weights stored float16 and read
  through DEQUANTIZE (TFLite "float16 quantization" of weights).
- :class:`~edgecomp_tflite.qdq_types.QdqTensorTypes` (:mod:`edgecomp_tflite.qdq_types`): reads a
  QDQ model (DequantizeLinear -> Op -> QuantizeLinear groups, ONNX operator specs for
  QuantizeLinear/DequantizeLinear) and answers:

  * ``activation(v)``: ``int8`` with the (scale, zero point) of the QuantizeLinear producing or the
    DequantizeLinear consuming ``v``'s group, per tensor (``axis=None``); float32 outside groups.
  * ``constant(w)`` for a weight read through ``DequantizeLinear(w_q, s, zp, axis)``: the int8
    ``w_q`` and ``QuantParams(s, zp, axis)`` in ONNX axis terms; the context permutes the data
    and maps ``axis`` to ``quantized_dimension`` of the stored tensor (0 for CONV_2D and
    FULLY_CONNECTED, 3 for DEPTHWISE_CONV_2D; TFLite int8 quantization specification).
  * ``bias(b, input, weight)``: int32 ``round(b / (s_in * s_w))`` with scale ``s_in * s_w`` and
    zero point 0 (TFLite int8 spec), per channel when the weight is.
  * ``folded(node)``: True for the QuantizeLinear/DequantizeLinear nodes that only mark a group
    boundary; ``alias_of(v)`` maps a DequantizeLinear output to its int8 input (and a
    QuantizeLinear output to its float input), so both names share one TFLite tensor. Q/DQ nodes
    that are not folded (float <-> int8 boundaries, e.g. a float graph input) are lowered to
    QUANTIZE / DEQUANTIZE by the lowerings registered for them in :mod:`edgecomp_tflite.ops.qdq`.
  * ``unsupported(node)``: the reasons a group has no TFLite int8 kernel (e.g. a per-channel
    activation scale, uint8 weights, weights with a nonzero zero point), for ``support()``.

  Ops with fixed output scales in the TFLite int8 spec (SOFTMAX 1/256 & -128, LOGISTIC 1/256 &
  -128, TANH 1/128 & 0) are checked in ``unsupported``; operator versions follow from the tensor
  types automatically (:mod:`edgecomp_tflite.versions`).

  Beyond the methods above, INT8 lowering needs three more answers (optional on a
  :class:`TensorTypes`; the context treats their absence as "float node, constants as they are,
  no bias Add"):

  * ``precision(node)``: ``"int8"`` (its inputs are read as int8 tensors), ``"float"`` (int8
    inputs are read through a DEQUANTIZE view) or ``"boundary"`` (QuantizeLinear/DequantizeLinear).
  * ``keeps_quantized(node, value)``: whether ``node``'s TFLite kernel takes the quantized
    constant ``value`` as it is (int8 node, or a hybrid kernel's weight in dynamic range), else the
    context writes it quantized and adds a DEQUANTIZE.
  * ``bias_add(node)``: the Add of a constant bias that a MatMul/Gemm absorbs (QDQ models keep
    tf2onnx's ``MatMul -> Add(bias)``).
"""

from __future__ import annotations

import dataclasses
from typing import Protocol

import numpy as np
import onnx_ir as ir

from edgecomp.ir.values import constant_array


@dataclasses.dataclass(frozen=True)
class QuantParams:
    """Affine quantization in ONNX terms: ``real = (q - zero_point) * scale``.

    Attributes:
        scale: float32 array, shape [] (per tensor) or [C] (per channel).
        zero_point: integer array of the same shape.
        axis: the ONNX (logical) axis the per-channel scales run along; None per tensor.
    """

    scale: np.ndarray
    zero_point: np.ndarray
    axis: int | None = None


@dataclasses.dataclass(frozen=True)
class ElementType:
    """The element type of one lowered tensor: numpy dtype plus quantization (None when float)."""

    dtype: np.dtype
    quantization: QuantParams | None = None


class TensorTypes(Protocol):
    """What the lowering context asks about element types (module docstring)."""

    name: str

    def activation(self, value: ir.Value) -> ElementType:
        """Element type of the TFLite tensor holding a non-constant ONNX value."""

    def constant(self, value: ir.Value) -> tuple[np.ndarray, QuantParams | None]:
        """(data in ONNX layout, quantization) of a constant operand (weight, constant addend).

        ``value`` is the op's input, or the value it resolves to through :meth:`alias_of`
        (INT8: a DequantizeLinear output or its int8 initializer; both must be answered).
        """

    def bias(self, value: ir.Value | None, length: int, input_value: ir.Value, weight_value: ir.Value) -> tuple[np.ndarray, QuantParams | None]:
        """(data [length], quantization) of a Conv/Gemm bias; ``value`` None means zeros."""

    def folded(self, node: ir.Node) -> bool:
        """True when ``node`` disappears into quantized tensors (QDQ group boundaries)."""

    def alias_of(self, value: ir.Value) -> ir.Value | None:
        """The value whose TFLite tensor ``value`` shares (through a folded node), or None."""

    def unsupported(self, node: ir.Node) -> str | None:
        """Why ``node``'s element types have no TFLite kernel, or None."""


FLOAT_TYPES = ("FLOAT",)

#: ONNX ops whose input 1 is a weight (stored float16 by :class:`Float16TensorTypes`).
WEIGHT_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


class FloatTensorTypes:
    """float32 lowering: every activation and constant operand is float32; nothing is folded."""

    name = "float32"

    def activation(self, value: ir.Value) -> ElementType:
        return ElementType(np.dtype(np.float32))

    def constant(self, value: ir.Value) -> tuple[np.ndarray, QuantParams | None]:
        array = constant_array(value)
        if array is None:
            raise ValueError(f"{value.name!r} is not a constant")
        return array.astype(np.float32), None

    def bias(self, value: ir.Value | None, length: int, input_value: ir.Value, weight_value: ir.Value) -> tuple[np.ndarray, QuantParams | None]:
        if value is None:
            return np.zeros(length, np.float32), None
        return np.ascontiguousarray(np.broadcast_to(self.constant(value)[0].reshape(-1), (length,))), None

    def folded(self, node: ir.Node) -> bool:
        return False

    def alias_of(self, value: ir.Value) -> ir.Value | None:
        return None

    def unsupported(self, node: ir.Node) -> str | None:
        """Non-constant float tensors must be float32 (``FLOAT``); Q/DQ nodes need INT8 lowering."""
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            return "QuantizeLinear/DequantizeLinear in a float lowering: compile the quantized model with --quantize qat (or auto) to keep its scales"
        for value in (*node.inputs, *node.outputs):
            if value is None or constant_array(value) is not None:
                continue
            dtype = value.dtype
            if dtype is None:
                return f"tensor {value.name!r} has no known element type"
            if dtype.name not in FLOAT_TYPES:
                return f"tensor {value.name!r} is {dtype.name}; the float32 lowering handles float32 tensors only"
        return None


class Float16TensorTypes(FloatTensorTypes):
    """float32 activations with float16 weights: the constant input 1 of Conv/ConvTranspose/Gemm/
    MatMul is stored float16 and read through a DEQUANTIZE (version 3), TFLite's "float16
    quantization" layout (half the weight bytes; XNNPACK and the reference kernels compute in
    float32). Biases and other constants stay float32.

    Args:
        model: the float IR (its weights are found by their readers).
    """

    name = "float16 weights"

    def __init__(self, model: ir.Model) -> None:
        self._weights: set[int] = set()
        self.weight_names: list[str] = []
        for node in model.graph:
            if node.op_type in WEIGHT_OPS and node.domain in ("", "ai.onnx") and len(node.inputs) > 1:
                weight = node.inputs[1]
                if weight is not None and constant_array(weight) is not None and constant_array(weight).dtype == np.float32 and id(weight) not in self._weights:
                    self._weights.add(id(weight))
                    self.weight_names.append(weight.name)

    def constant(self, value: ir.Value) -> tuple[np.ndarray, QuantParams | None]:
        data, params = super().constant(value)
        if id(value) in self._weights:
            return data.astype(np.float16), params
        return data, params

    def simulation(self, proto) -> None:
        """Round the weights of ``proto`` (an ``onnx.ModelProto`` of the same model) to float16 in
        place: what the lowered model computes, for verification."""
        import onnx.numpy_helper

        names = set(self.weight_names)
        for index, tensor in enumerate(proto.graph.initializer):
            if tensor.name in names:
                array = onnx.numpy_helper.to_array(tensor).astype(np.float16).astype(np.float32)
                proto.graph.initializer[index].CopyFrom(onnx.numpy_helper.from_array(array, tensor.name))
