"""Builtin operator versions: which ``OperatorCode.version`` an operator needs.

A TFLite runtime refuses an operator whose version it does not implement, and a too-high version
shuts out older runtimes (TensorFlow Lite Micro registers only some versions). The rules below are
those of TensorFlow's ``tensorflow/lite/tools/versioning/op_version.cc``
(``GetBuiltinOperatorVersion``) for the operators this backend emits, written from that file's
facts: the version depends on the operand types, ranks and a few options. Operators not listed
are version 1. INT8 and INT16 branches are included so that quantized lowering gets correct versions
without touching this module.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

from ai_edge_litert import schema_py_generated as schema

Builtin = schema.BuiltinOperator
TensorType = schema.TensorType

#: TensorType value standing for an absent optional operand (``-1`` tensor index).
NO_TYPE = -1


@dataclasses.dataclass(frozen=True)
class OperandSignature:
    """What a version rule needs to know of one operand.

    Attributes:
        type: a ``schema.TensorType`` value, or :data:`NO_TYPE` for an absent optional input.
        rank: number of dimensions (0 for a scalar or an absent operand).
        per_channel: True when its quantization has more than one scale (per-channel).
        scale: the single quantization scale (0.0 when not quantized or per-channel).
    """

    type: int
    rank: int
    per_channel: bool = False
    scale: float = 0.0


@dataclasses.dataclass(frozen=True)
class OperatorSignature:
    """An operator as seen by the versioning rules: operands, options, and the grouped flag."""

    code: int
    inputs: tuple[OperandSignature, ...]
    outputs: tuple[OperandSignature, ...]
    options: Any = None
    grouped_convolution: bool = False

    def input_type(self, index: int) -> int:
        return self.inputs[index].type if index < len(self.inputs) else NO_TYPE

    def output_type(self, index: int) -> int:
        return self.outputs[index].type if index < len(self.outputs) else NO_TYPE

    def needs_broadcast_over_4d(self) -> bool:
        """op_version.cc ``NeedBroadcastForBinaryInputs && GetInputMaxDims > 4`` (ranks stand in for dims)."""
        ranks = [operand.rank for operand in self.inputs[:2]]
        return len(ranks) == 2 and max(ranks) > 4


def _types(signature: OperatorSignature, *types: int) -> bool:
    """True when input 0 (and input 1, output 0 when given) have the listed types, in that order."""
    actual = (signature.input_type(0), signature.input_type(1), signature.output_type(0))
    return all(a == b for a, b in zip(actual, types))


def _conv_2d(s: OperatorSignature) -> int:
    if s.grouped_convolution:
        return 6
    if _types(s, TensorType.INT16, TensorType.INT16, TensorType.INT16):
        return 4
    if _types(s, TensorType.INT8, TensorType.INT8, TensorType.INT8):
        return 3
    if _types(s, TensorType.INT8, TensorType.INT4, TensorType.INT8):
        return 7
    if _types(s, TensorType.FLOAT32, TensorType.INT8, TensorType.FLOAT32):
        return 5 if s.inputs[1].per_channel else 2
    return 1


def _depthwise_conv_2d(s: OperatorSignature) -> int:
    if _types(s, TensorType.INT16, TensorType.INT16, TensorType.INT16):
        return 5
    if _types(s, TensorType.FLOAT32, TensorType.INT8, TensorType.FLOAT32):
        return 6 if s.inputs[1].per_channel else 4
    if _types(s, TensorType.INT8, TensorType.INT8, TensorType.INT8):
        return 3
    if _types(s, TensorType.INT8, TensorType.INT4, TensorType.INT8):
        return 7
    options = s.options
    if options is not None and (options.dilationWFactor != 1 or options.dilationHFactor != 1):
        return 2
    return 1


def _fully_connected(s: OperatorSignature) -> int:
    options = s.options
    if _types(s, TensorType.FLOAT32, TensorType.INT8, TensorType.FLOAT32) and s.inputs[1].per_channel:
        return 12
    if _types(s, TensorType.INT16, TensorType.INT16, TensorType.INT16):
        return 7
    if len(s.inputs) == 2:
        return 6
    if options is not None and options.keepNumDims:
        return 5
    if _types(s, TensorType.INT8, TensorType.INT8, TensorType.INT8):
        return 4
    if _types(s, TensorType.INT8, TensorType.INT4, TensorType.INT8):
        return 10
    if _types(s, TensorType.FLOAT32, TensorType.INT8, TensorType.FLOAT32):
        return 9 if (options is not None and options.asymmetricQuantizeInputs) else 3
    return 1


def _mul(s: OperatorSignature) -> int:
    first = s.input_type(0)
    if first in (TensorType.INT16, TensorType.UINT32):
        return 7
    if first == TensorType.INT64:
        return 5
    scales = (s.inputs[0].scale, s.inputs[1].scale if len(s.inputs) > 1 else 0.0, s.outputs[0].scale if s.outputs else 0.0)
    if all(scales) and scales[0] * scales[1] / scales[2] >= 1.0:
        return 3
    if first == TensorType.INT8:
        return 2
    return 1


def _int8_2_int16_3(s: OperatorSignature) -> int:
    if s.input_type(0) == TensorType.INT16:
        return 3
    if s.input_type(0) == TensorType.INT8:
        return 2
    return 1


def _pool(s: OperatorSignature) -> int:
    if s.input_type(0) == TensorType.INT16 and s.output_type(0) == TensorType.INT16:
        return 3
    return 2 if s.input_type(0) == TensorType.INT8 else 1


def _transpose(s: OperatorSignature) -> int:
    rank = s.inputs[0].rank
    if rank > 5:
        return 6
    if s.input_type(0) == TensorType.INT16:
        return 5
    if rank > 4:
        return 4
    if s.input_type(0) == TensorType.BOOL:
        return 3
    return 2 if s.input_type(0) == TensorType.INT8 else 1


def _transpose_conv(s: OperatorSignature) -> int:
    options = s.options
    if options is not None and options.fusedActivationFunction:
        return 4
    if len(s.inputs) == 4 and s.input_type(3) != NO_TYPE:
        return 3
    return 2 if s.input_type(1) == TensorType.INT8 else 1


def _strided_slice(s: OperatorSignature) -> int:
    options = s.options
    if options is not None and options.offset:
        return 8
    if options is not None and (options.ellipsisMask or options.newAxisMask):
        return 6
    if s.inputs[0].rank > 4:
        return 4
    return 2 if s.input_type(0) == TensorType.INT8 else 1


def _slice(s: OperatorSignature) -> int:
    if s.inputs[0].rank > 4:
        return 5
    if s.input_type(0) == TensorType.INT16:
        return 4
    return 2 if s.input_type(0) == TensorType.INT8 else 1


def _resize_bilinear(s: OperatorSignature) -> int:
    if s.input_type(0) == TensorType.INT16:
        return 4
    if s.options is not None and s.options.halfPixelCenters:
        return 3
    return 2 if s.input_type(0) == TensorType.INT8 else 1


def _resize_nearest(s: OperatorSignature) -> int:
    if s.input_type(0) == TensorType.INT16:
        return 4
    if s.options is not None and (s.options.halfPixelCenters or s.options.alignCorners):
        return 3
    return 2 if s.input_type(0) == TensorType.INT8 else 1


def _maximum_minimum(s: OperatorSignature) -> int:
    if s.input_type(0) == TensorType.INT16 and s.output_type(0) == TensorType.INT16:
        return 4
    if s.needs_broadcast_over_4d():
        return 3
    return 2 if s.input_type(0) == TensorType.INT8 else 1


def _add(s: OperatorSignature) -> int:
    if s.input_type(0) == TensorType.INT16 and s.inputs[0].scale == 0.0:
        return 5
    if s.input_type(0) == TensorType.INT64:
        return 4
    if s.input_type(0) == TensorType.INT16 and s.output_type(0) == TensorType.INT16:
        options = s.options
        if options is not None and not options.potScaleInt16:
            return 3
    return 2 if s.input_type(0) == TensorType.INT8 else 1


def _sub(s: OperatorSignature) -> int:
    if s.input_type(0) == TensorType.INT16 and s.output_type(0) == TensorType.INT16:
        options = s.options
        if options is not None and not options.potScaleInt16:
            return 5
    if s.input_type(0) == TensorType.INT64:
        return 4
    if s.needs_broadcast_over_4d():
        return 3
    return 2 if s.input_type(0) == TensorType.INT8 else 1


def _div(s: OperatorSignature) -> int:
    return 2 if s.needs_broadcast_over_4d() else 1


def _pad(s: OperatorSignature) -> int:
    if s.inputs[0].rank > 4:
        return 4
    return _int8_2_int16_3(s)


def _relu(s: OperatorSignature) -> int:
    if s.input_type(0) == TensorType.INT16:
        return 3
    return 2 if s.input_type(0) in (TensorType.INT8, TensorType.UINT8) else 1


def _logistic_tanh(s: OperatorSignature) -> int:
    if s.input_type(0) == TensorType.INT16 and s.output_type(0) == TensorType.INT16:
        return 3
    return 2 if s.input_type(0) == TensorType.INT8 else 1


def _leaky_relu(s: OperatorSignature) -> int:
    return 2 if s.input_type(0) == TensorType.INT16 else 1


def _concatenation(s: OperatorSignature) -> int:
    if s.input_type(0) == TensorType.UINT32:
        return 4
    return _int8_2_int16_3(s)


def _batch_matmul(s: OperatorSignature) -> int:
    if s.input_type(0) == TensorType.INT16:
        return 3
    if s.input_type(0) == TensorType.INT8:
        return 2
    if _types(s, TensorType.FLOAT32, TensorType.INT8, TensorType.FLOAT32) and s.options is not None and s.options.asymmetricQuantizeInputs:
        return 4
    return 1


def _split(s: OperatorSignature) -> int:
    data = s.input_type(1)  # input 0 is the axis
    if data == TensorType.INT16:
        return 4
    if data == TensorType.INT32:
        return 3
    return 2 if data == TensorType.INT8 else 1


def _quantize(s: OperatorSignature) -> int:
    if TensorType.INT4 in (s.input_type(0), s.output_type(0)):
        return 4
    if s.outputs and s.outputs[0].per_channel:
        return 3
    return 2 if s.output_type(0) == TensorType.INT16 else 1


def _dequantize(s: OperatorSignature) -> int:
    first = s.input_type(0)
    if first == TensorType.INT4:
        return 6
    if first in (TensorType.INT16, TensorType.FLOAT16):
        return 3
    if first == TensorType.INT8:
        return 5 if s.inputs[0].per_channel else 2
    return 1


_RULES: dict[int, Callable[[OperatorSignature], int]] = {
    Builtin.CONV_2D: _conv_2d,
    Builtin.DEPTHWISE_CONV_2D: _depthwise_conv_2d,
    Builtin.FULLY_CONNECTED: _fully_connected,
    Builtin.MUL: _mul,
    Builtin.MAX_POOL_2D: _pool,
    Builtin.AVERAGE_POOL_2D: _pool,
    Builtin.TRANSPOSE: _transpose,
    Builtin.TRANSPOSE_CONV: _transpose_conv,
    Builtin.STRIDED_SLICE: _strided_slice,
    Builtin.SLICE: _slice,
    Builtin.RESIZE_BILINEAR: _resize_bilinear,
    Builtin.RESIZE_NEAREST_NEIGHBOR: _resize_nearest,
    Builtin.MAXIMUM: _maximum_minimum,
    Builtin.MINIMUM: _maximum_minimum,
    Builtin.ADD: _add,
    Builtin.SUB: _sub,
    Builtin.DIV: _div,
    Builtin.PAD: _pad,
    Builtin.PADV2: _pad,
    Builtin.RELU: _relu,
    Builtin.TANH: _logistic_tanh,
    Builtin.LOGISTIC: _logistic_tanh,
    Builtin.LEAKY_RELU: _leaky_relu,
    Builtin.CONCATENATION: _concatenation,
    Builtin.SOFTMAX: _int8_2_int16_3,
    Builtin.MEAN: _int8_2_int16_3,
    Builtin.MIRROR_PAD: _int8_2_int16_3,
    Builtin.REDUCE_MAX: _int8_2_int16_3,
    Builtin.RELU6: _int8_2_int16_3,
    Builtin.BATCH_MATMUL: _batch_matmul,
    Builtin.SPLIT: _split,
    Builtin.QUANTIZE: _quantize,
    Builtin.DEQUANTIZE: _dequantize,
}


def operator_version(signature: OperatorSignature) -> int:
    """The ``OperatorCode.version`` the operator needs (op_version.cc ``GetBuiltinOperatorVersion``).

    Args:
        signature: the operator's code, operand types/ranks/quantization and options object
            (a ``schema.*OptionsT``, or None).

    Returns:
        the version, >= 1; 1 for operators without a rule here (e.g. RESHAPE, HARD_SWISH, PRELU).
    """
    rule = _RULES.get(signature.code)
    return rule(signature) if rule is not None else 1


def builtin_name(code: int) -> str:
    """``schema.BuiltinOperator`` name of ``code`` (``3`` -> ``"CONV_2D"``)."""
    return _NAMES.get(code, f"BUILTIN_{code}")


_NAMES = {value: name for name, value in vars(Builtin).items() if not name.startswith("_") and isinstance(value, int)}

