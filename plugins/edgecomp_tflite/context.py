"""The lowering context: what every op lowering reads (shapes, constants, layouts, element types)
and the few ways it writes the TFLite graph.

:class:`GraphInfo` is the read-only view of the IR used by ``support()`` checks and by lowering:
logical shapes (dynamic dims as ``None``), constants, consumers, attributes.
:class:`LoweringContext` adds the TFLite side: one :class:`~edgecomp_tflite.writer.ModelWriter`,
the stored :class:`~edgecomp_tflite.layout.Layout` of each ONNX value, the element types
(:mod:`edgecomp_tflite.tensor_types`, the INT8 extension point), layout changes on demand
(:meth:`LoweringContext.read`: RESHAPE when the flat order allows it, else a counted TRANSPOSE),
constant operands permuted into the layout their op needs, and activation fusion.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Sequence

import numpy as np
import onnx_ir as ir
from ai_edge_litert import schema_py_generated as schema

from edgecomp.errors import UnsupportedError
from edgecomp.ir.graph import topological_order
from edgecomp.ir.values import constant_array
from edgecomp_tflite import layout as layouts
from edgecomp_tflite.layout import Layout
from edgecomp_tflite.tensor_types import ElementType, QuantParams, TensorTypes
from edgecomp_tflite.writer import ModelWriter, Quantization

logger = logging.getLogger(__name__)

Builtin = schema.BuiltinOperator
Activation = schema.ActivationFunctionType

DEFAULT_DOMAINS = ("", "ai.onnx")

#: Ops whose first input is an NCHW tensor their TFLite kernel wants channels-last.
SPATIAL_OPS = frozenset({"Conv", "ConvTranspose", "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "Resize"})
#: Ops whose output layout follows their inputs' (element-wise or axis-mapped ops).
LAYOUT_FOLLOWING_OPS = frozenset({
    "Add", "Sub", "Mul", "Div", "Relu", "Clip", "LeakyRelu", "PRelu", "Sigmoid", "Tanh", "HardSwish",
    "Concat", "Pad", "Slice",
})


def attribute(node: ir.Node, name: str, default: Any = None) -> Any:
    """The value of attribute ``name`` of ``node`` (ints/floats/strings/lists as Python values), or ``default``."""
    attr = node.attributes.get(name)
    if attr is None:
        return default
    value = attr.value
    if isinstance(value, (list, tuple)):
        return list(value)
    return value


class GraphInfo:
    """Read-only facts about the IR that ``support()`` checks and lowerings share.

    Args:
        model: the IR (shape-inferred; canonicalized by the pipeline).
        types: element types; when given, :meth:`constant` looks through the values it aliases
            (INT8: a weight's DequantizeLinear output resolves to the int8 initializer, so the op
            checks see a constant weight of the right shape).
    """

    def __init__(self, model: ir.Model, types: TensorTypes | None = None) -> None:
        self.model = model
        self.types = types
        self.graph = model.graph
        self.graph_outputs = {id(value) for value in model.graph.outputs}
        self.opset = model.opset_imports.get("", model.opset_imports.get("ai.onnx", 13))

    def shape(self, value: ir.Value) -> list[int | None] | None:
        """Logical dims of ``value`` (a dynamic/symbolic dim as None), or None when the rank is unknown."""
        array = constant_array(value)
        if array is not None:
            return list(array.shape)
        if value.shape is None:
            return None
        return [dim if isinstance(dim, int) else None for dim in value.shape.dims]

    def rank(self, value: ir.Value) -> int | None:
        shape = self.shape(value)
        return None if shape is None else len(shape)

    def constant(self, value: ir.Value | None) -> np.ndarray | None:
        """The data of a constant input (initializer or Constant output, after the aliases of
        :attr:`types`), else None. Float lowering: the ONNX constant itself."""
        return constant_array(None if value is None else self.resolve(value))

    def resolve(self, value: ir.Value) -> ir.Value:
        """The value whose TFLite tensor ``value`` shares (:meth:`TensorTypes.alias_of`, followed
        to the end); ``value`` itself when nothing aliases it (always, in float lowering)."""
        for _ in range(64):
            alias = self.types.alias_of(value) if self.types is not None else None
            if alias is None:
                break
            value = alias
        return value

    def consumers(self, value: ir.Value) -> list[ir.Node]:
        """Nodes reading ``value``, each once, in graph order."""
        seen: dict[int, ir.Node] = {}
        for use in value.uses():
            seen.setdefault(id(use.node), use.node)
        return list(seen.values())

    def is_graph_output(self, value: ir.Value) -> bool:
        return id(value) in self.graph_outputs

    def input(self, node: ir.Node, index: int) -> ir.Value | None:
        """Input ``index`` of ``node``, None when absent (omitted optional input)."""
        return node.inputs[index] if index < len(node.inputs) else None


IO_LAYOUTS = ("onnx", "nhwc")


@dataclasses.dataclass(frozen=True)
class LoweringSettings:
    """Choices of one lowering that are not in the IR.

    Attributes:
        io_layout: ``"onnx"`` keeps every graph input/output in its ONNX layout; ``"nhwc"``
            presents 4-D inputs/outputs channels-last (an NCHW ONNX tensor becomes NHWC).
        grouped_convolution: ``"native"`` (one grouped CONV_2D, version 6) or ``"split"``
            (SPLIT + CONV_2D per group + CONCATENATION, for runtimes without grouped kernels).
    """

    io_layout: str = "onnx"
    grouped_convolution: str = "native"

    def __post_init__(self) -> None:
        if self.io_layout not in IO_LAYOUTS:
            raise ValueError(f"io_layout must be one of {', '.join(IO_LAYOUTS)}, not {self.io_layout!r}")
        if self.grouped_convolution not in ("native", "split"):
            raise ValueError(f"grouped_convolution must be 'native' or 'split', not {self.grouped_convolution!r}")

    def boundary_layout(self, rank: int) -> Layout:
        """Stored layout of a graph input/output of rank ``rank``."""
        return Layout.nhwc(rank) if self.io_layout == "nhwc" and rank == 4 else Layout.onnx(rank)


class LoweringContext(GraphInfo):
    """State of one lowering: the writer, stored layouts, element types, fused nodes.

    Args:
        model: the IR to lower.
        writer: receives tensors and operators.
        types: element types (float32, or INT8 from a QDQ model; :mod:`edgecomp_tflite.tensor_types`).
        settings: :class:`LoweringSettings`.

    Attributes:
        transposes_added: TRANSPOSE operators emitted to change a stored layout.
        fused: names of nodes whose work another operator does (fused activations, folded Q/DQ).
    """

    def __init__(self, model: ir.Model, writer: ModelWriter, types: TensorTypes, settings: LoweringSettings | None = None) -> None:
        super().__init__(model, types)
        self.writer = writer
        self.settings = settings or LoweringSettings()
        self.transposes_added = 0
        self.fused: set[str] = set()
        self.fused_activations = 0
        self._primary: dict[int, tuple[int, Layout]] = {}
        self._views: dict[tuple[int, Layout, tuple], int] = {}
        self._names: set[str] = set()
        self._channels_last = self._plan_channels_last()

    # ---------------------------------------------------------------------------- layout planning

    def _plan_channels_last(self) -> set[int]:
        """Values that should be stored channels-last: rank-4 values read by a spatial op, directly
        or through layout-following ops (decided backwards over the topological order)."""
        wanted: set[int] = set()
        for node in reversed(topological_order(self.model)):
            for value in node.outputs:
                if self.rank(value) != 4:
                    continue
                for consumer in self.consumers(value):
                    spatial = consumer.op_type in SPATIAL_OPS and consumer.inputs[0] is value
                    following = consumer.op_type in LAYOUT_FOLLOWING_OPS and any(id(out) in wanted for out in consumer.outputs)
                    if spatial or following:
                        wanted.add(id(value))
        return wanted

    def preferred_layout(self, value: ir.Value) -> Layout:
        """Channels-last for rank-4 values headed for spatial ops, else the ONNX layout."""
        rank = self.rank(value) or 0
        return Layout.nhwc(rank) if id(value) in self._channels_last else Layout.onnx(rank)

    # ---------------------------------------------------------------------------- shapes

    def static_shape(self, value: ir.Value) -> list[int | None]:
        """Logical dims; raises when the rank is unknown (``support()`` reports it first)."""
        shape = self.shape(value)
        if shape is None:
            raise UnsupportedError(f"tensor {value.name!r} has no known shape after shape inference")
        return shape

    def element_type(self, value: ir.Value) -> ElementType:
        return self.types.activation(value)

    # ---------------------------------------------------------------------------- names

    def unique_name(self, base: str) -> str:
        name, index = base, 1
        while name in self._names:
            index += 1
            name = f"{base}_{index}"
        self._names.add(name)
        return name

    # ---------------------------------------------------------------------------- tensors of values

    def has_tensor(self, value: ir.Value) -> bool:
        return id(self.resolve(value)) in self._primary

    def layout(self, value: ir.Value) -> Layout:
        """The stored layout of ``value``'s primary tensor (constants: the ONNX layout)."""
        value = self.resolve(value)
        entry = self._primary.get(id(value))
        if entry is None:
            if constant_array(value) is not None:
                return Layout.onnx(len(constant_array(value).shape))
            raise RuntimeError(f"tensor {value.name!r} is read before it is written (lowering order bug)")
        return entry[1]

    def define(self, value: ir.Value, layout: Layout, *, tensor: int | None = None) -> int:
        """Register the TFLite tensor holding ``value`` stored as ``layout``; returns its index.

        With ``tensor`` given, ``value`` shares that existing tensor (a layout change that moves no
        bytes, e.g. an ONNX Transpose or a Reshape keeping the stored shape); otherwise a new
        activation tensor with the stored shape and ``value``'s element type is added.
        """
        value = self.resolve(value)
        if tensor is None:
            shape = layout.stored_shape(self.static_shape(value))
            tensor = self._new_activation(value.name, shape, self.element_type(value))
        self._primary[id(value)] = (tensor, layout)
        return tensor

    def _new_activation(self, name: str, shape: Sequence[int | None], element: ElementType) -> int:
        quantization = None
        if element.quantization is not None:
            quantization = stored_quantization(element.quantization, None)
        return self.writer.add_tensor(self.unique_name(name), shape, element.dtype, quantization=quantization)

    def new_intermediate(self, like: ir.Value, suffix: str, shape: Sequence[int | None]) -> int:
        """A fresh activation tensor with ``like``'s element type (a step inside one op's lowering)."""
        return self._new_activation(f"{like.name}/{suffix}", shape, self.element_type(like))

    def read(self, value: ir.Value, layout: Layout | None = None, *, logical_shape: Sequence[int | None] | None = None) -> int:
        """The TFLite tensor holding ``value`` stored as ``layout`` (default: as it is).

        A constant is written as a constant tensor in the requested layout. A non-constant stored
        differently is converted once (and cached): RESHAPE when both layouts hold the elements in
        the same flat order (:func:`edgecomp_tflite.layout.same_flat_order`), else TRANSPOSE
        (counted in :attr:`transposes_added`), after a RESHAPE when ``logical_shape`` asks for
        leading size-1 axes (broadcasting a lower-rank operand).

        Args:
            value: the ONNX value.
            layout: wanted stored layout; None keeps the current one.
            logical_shape: the logical shape wanted (default: the value's own). Only adding leading
                size-1 axes is allowed (ONNX broadcasting).
        """
        value = self.resolve(value)
        array = constant_array(value) if not self.has_tensor(value) else None
        if array is not None:
            return self.constant_operand(value, layout or Layout.onnx(array.ndim), rank=len(logical_shape) if logical_shape else None)
        tensor, current = self._primary.get(id(value), (None, None))
        if tensor is None:
            raise RuntimeError(f"tensor {value.name!r} is read before it is written (lowering order bug)")
        source_shape = self.static_shape(value)
        target_shape = list(logical_shape) if logical_shape is not None else source_shape
        if layout is None or (layout == current and target_shape == source_shape):
            return tensor
        key = (id(value), layout, tuple(target_shape))
        if key in self._views:
            return self._views[key]
        if current.feature_order is not None:
            raise UnsupportedError(f"tensor {value.name!r} is stored flattened channels-last and can only feed a fully connected layer")
        result = self._convert(value, tensor, source_shape, current, target_shape, layout)
        self._views[key] = result
        return result

    def _convert(self, value: ir.Value, tensor: int, source_shape: list, source: Layout, target_shape: list, target: Layout) -> int:
        if layouts.same_flat_order(source_shape, source, target_shape, target):
            return self.reshape(value, tensor, target.stored_shape(target_shape), suffix=target.describe())
        if len(target_shape) != len(source_shape):
            # add leading size-1 axes in front of the stored tensor (same flat order), then transpose
            extra = len(target_shape) - len(source_shape)
            expanded = Layout((*range(extra), *(axis + extra for axis in source.perm)))
            tensor = self.reshape(value, tensor, expanded.stored_shape(target_shape), suffix=f"rank{len(target_shape)}")
            source = expanded
        return self.transpose(value, tensor, source, target, target_shape)

    def reshape(self, value: ir.Value, tensor: int, stored_shape: Sequence[int | None], *, suffix: str, output: int | None = None) -> int:
        """RESHAPE ``tensor`` to ``stored_shape`` (a dynamic dim becomes -1 in the new-shape operand)."""
        if output is None and list(self.writer.tensor_shape(tensor)) == list(stored_shape):
            return tensor
        if output is None:
            output = self.new_intermediate(value, suffix, stored_shape)
        dims = [-1 if dim is None else int(dim) for dim in stored_shape]
        if dims.count(-1) > 1:
            raise UnsupportedError(f"tensor {value.name!r}: cannot reshape with more than one dynamic dimension")
        new_shape = self.int32_constant(f"{value.name}/{suffix}/shape", dims)
        options = schema.ReshapeOptionsT()
        options.newShape = dims
        self.emit(Builtin.RESHAPE, [tensor, new_shape], [output], options)
        return output

    def transpose(self, value: ir.Value, tensor: int, source: Layout, target: Layout, logical_shape: Sequence[int | None]) -> int:
        """TRANSPOSE a stored tensor from ``source`` to ``target`` layout (counted)."""
        perm = layouts.transpose_perm(source.perm, target.perm)
        output = self.new_intermediate(value, target.describe(), target.stored_shape(logical_shape))
        self.emit(Builtin.TRANSPOSE, [tensor, self.int32_constant(f"{value.name}/perm", list(perm))], [output])
        self.transposes_added += 1
        logger.debug("TRANSPOSE %s: %s -> %s", value.name, source.describe(), target.describe())
        return output

    # ---------------------------------------------------------------------------- constants

    def int32_constant(self, name: str, values: Sequence[int] | np.ndarray) -> int:
        """An int32 constant tensor (shape operands, axes, paddings)."""
        return self.writer.add_constant(self.unique_name(name), np.asarray(values, dtype=np.int32))

    def constant_operand(self, value: ir.Value, layout: Layout, *, rank: int | None = None, scale: float = 1.0) -> int:
        """A constant input of an element-wise/axis op, broadcast to ``rank`` (default: its own) and
        stored in ``layout`` (:func:`edgecomp_tflite.layout.broadcast_constant`), times ``scale``."""
        data, quantization = _scaled(*self.types.constant(value), scale, value)
        rank = data.ndim if rank is None else rank
        stored = layouts.broadcast_constant(data, rank, layout)
        stored_params = None
        if quantization is not None:
            axis = None if quantization.axis is None else layout.stored_axis(quantization.axis + rank - data.ndim)
            stored_params = stored_quantization(quantization, axis)
        return self.writer.add_constant(self.unique_name(value.name), stored, quantization=stored_params)

    def weight(
        self,
        value: ir.Value,
        perm: Sequence[int],
        *,
        shape: Sequence[int] | None = None,
        rows: Sequence[int] | None = None,
        output_channels: slice | None = None,
        scale: float = 1.0,
        name: str | None = None,
    ) -> int:
        """A weight operand: the constant transposed by ``perm``, optionally reshaped to ``shape``
        and its axis 1 reordered by ``rows`` (FULLY_CONNECTED reading a flattened channels-last
        input). A per-channel quantization axis follows ``perm`` (its position in the stored tensor
        becomes ``quantized_dimension``).

        Args:
            value: the ONNX weight (e.g. Conv ``W`` [O, I/g, kH, kW], Gemm ``B`` [K, N]).
            perm: ONNX axis order of the stored weight (Conv: ``(0, 2, 3, 1)`` -> [O, kH, kW, I]).
            shape: stored shape after the transpose, when it differs (same element order).
            rows: for a 2-D stored weight [N, K], the K index order (see :class:`Layout.feature_order`).
            output_channels: keep only these indices of ONNX axis 0 (one group of a split
                grouped convolution); per-channel scales along axis 0 are sliced alike.
            scale: multiplies the weight (Gemm ``alpha``).
        """
        data, quantization = _scaled(*self.types.constant(value), scale, value)
        if output_channels is not None:
            data = data[output_channels]
            quantization = _slice_channels(quantization, output_channels, 0)
        stored = np.transpose(data, perm)
        if rows is not None:
            stored = stored[:, list(rows)]
        if shape is not None:
            stored = stored.reshape(shape)
        stored_params = None
        if quantization is not None:
            axis = None if quantization.axis is None else list(perm).index(quantization.axis % data.ndim)
            stored_params = stored_quantization(quantization, axis)
        return self.writer.add_constant(self.unique_name(name or value.name), np.ascontiguousarray(stored), quantization=stored_params)

    def bias(
        self,
        value: ir.Value | None,
        length: int,
        input_value: ir.Value,
        weight_value: ir.Value,
        *,
        name: str,
        channels: slice | None = None,
        scale: float = 1.0,
    ) -> int:
        """A bias operand [length] (zeros when ``value`` is None; a scalar or [1, length] constant
        is broadcast); INT8 lowering makes it int32.

        ``channels`` keeps a slice of it (one group of a split grouped convolution); ``scale``
        multiplies it (Gemm ``beta``).
        """
        data, quantization = _scaled(*self.types.bias(value, length, input_value, weight_value), scale, value)
        data = data.reshape(length)
        if channels is not None:
            data = data[channels]
            quantization = _slice_channels(quantization, channels, 0)
        stored_params = None if quantization is None else stored_quantization(quantization, 0)
        return self.writer.add_constant(self.unique_name(name), np.ascontiguousarray(data), quantization=stored_params)

    # ---------------------------------------------------------------------------- operators

    def emit(self, code: int, inputs: Sequence[int], outputs: Sequence[int], options: Any = None, **flags: Any) -> int:
        """Append a TFLite operator (see :meth:`ModelWriter.add_operator`)."""
        return self.writer.add_operator(code, inputs, outputs, options, **flags)

    def fused_activation(self, node: ir.Node) -> tuple[int, ir.Value]:
        """Fold the activation after ``node`` into its TFLite operator when that is exact.

        The activation is fused when ``node``'s output is read only by it and is not a graph
        output, and it is ``Relu``, or ``Clip`` with constant bounds (0, 6), (-1, 1) or (0, none).
        TFLite applies ``fused_activation_function`` to the operator's result
        (``tensorflow/lite/kernels/internal/common.h``, ``ActivationFunctionWithMinMax``), i.e. the
        same clamp.

        Returns:
            (``ActivationFunctionType`` value, the ONNX value the operator must write): the
            activation's output when fused (the activation node is then skipped), else
            ``(NONE, node.outputs[0])``.
        """
        value = node.outputs[0]
        consumers = self.consumers(value)
        if self.is_graph_output(value) or len(consumers) != 1:
            return Activation.NONE, value
        follower = consumers[0]
        kind = activation_kind(self, follower)
        if kind is None or follower.inputs[0] is not value or self.types.folded(follower):
            return Activation.NONE, value
        self.fused.add(follower.name)
        self.fused_activations += 1
        return kind, follower.outputs[0]


def activation_kind(info: GraphInfo, node: ir.Node) -> int | None:
    """The ``ActivationFunctionType`` equal to ``node`` (Relu, Clip(0,6), Clip(-1,1), Clip(0,)), or None."""
    if node.domain not in DEFAULT_DOMAINS:
        return None
    if node.op_type == "Relu":
        return Activation.RELU
    if node.op_type != "Clip":
        return None
    low, high = clip_bounds(info, node)
    if low is None and high is None:
        return None
    if low == 0.0 and high is None:
        return Activation.RELU
    if low == 0.0 and high == 6.0:
        return Activation.RELU6
    if low == -1.0 and high == 1.0:
        return Activation.RELU_N1_TO_1
    return None


def clip_bounds(info: GraphInfo, node: ir.Node) -> tuple[float | None, float | None]:
    """(min, max) of a Clip node (opset >= 11 inputs, else attributes); None for an absent bound.

    Raises:
        ValueError: a bound is an input that is not constant.
    """
    if len(node.inputs) > 1 or info.opset >= 11:
        bounds = []
        for index in (1, 2):
            value = info.input(node, index)
            if value is None:
                bounds.append(None)
                continue
            array = info.constant(value)
            if array is None:
                raise ValueError(f"Clip {node.name!r}: bound input {value.name!r} is not constant")
            bounds.append(float(array.reshape(())))
        return bounds[0], bounds[1]
    low, high = attribute(node, "min"), attribute(node, "max")
    return (None if low is None else float(low)), (None if high is None else float(high))


def _scaled(data: np.ndarray, quantization: QuantParams | None, scale: float, value: ir.Value | None) -> tuple[np.ndarray, QuantParams | None]:
    """``data * scale``: multiplies float data, or the scales of quantized data (exact)."""
    if scale == 1.0:
        return data, quantization
    if quantization is None:
        return (data * np.asarray(scale, dtype=data.dtype)).astype(data.dtype), None
    if scale <= 0.0:
        raise UnsupportedError(f"constant {getattr(value, 'name', '?')!r}: a non-positive factor {scale} on quantized data")
    return data, QuantParams(np.asarray(quantization.scale) * scale, quantization.zero_point, quantization.axis)


def _slice_channels(params: QuantParams | None, channels: slice, axis: int) -> QuantParams | None:
    if params is None or params.axis != axis or np.ndim(params.scale) == 0:
        return params
    return QuantParams(np.asarray(params.scale)[channels], np.asarray(params.zero_point)[channels], params.axis)


def stored_quantization(params: QuantParams, axis: int | None) -> Quantization:
    """TFLite quantization parameters from ONNX ones, the per-channel axis given in stored terms."""
    scale = np.atleast_1d(np.asarray(params.scale, dtype=np.float64)).ravel()
    zero_point = np.atleast_1d(np.asarray(params.zero_point, dtype=np.int64)).ravel()
    return Quantization(tuple(float(s) for s in scale), tuple(int(z) for z in zero_point), int(axis or 0))
