"""The lowering context: what every op lowering reads (shapes, constants, layouts, element types)
and the few ways it writes the TFLite graph.

:class:`GraphInfo` is the read-only view of the IR used by ``support()`` checks and by lowering:
logical shapes (dynamic dims as ``None``), constants, consumers, attributes.
:class:`LoweringContext` adds the TFLite side: one :class:`~edgecomp_tflite.writer.ModelWriter`,
the stored :class:`~edgecomp_tflite.layout.Layout` of each ONNX value, the element types
(:mod:`edgecomp_tflite.tensor_types`, the INT8 extension point), layout changes on demand
(:meth:`LoweringContext.read`: RESHAPE when the flat order allows it, else a counted TRANSPOSE),
constant operands permuted into the layout their op needs, and activation fusion.

Element types (INT8 lowering, :mod:`edgecomp_tflite.qdq_types`) are handled here too, so op
lowerings stay the same for float32 and int8: the driver tells the context which node it lowers
(:attr:`LoweringContext.current_node`); a float node reading an int8 tensor gets a DEQUANTIZE view
of it (:meth:`LoweringContext.read`, cached like layout views); a quantized constant read by a node
whose kernel wants float (dynamic range without a hybrid kernel, FP16 weights) is stored quantized
and read through a DEQUANTIZE; an output that must keep its input's quantization (byte-moving
TFLite int8 kernels: RESHAPE, pools, CONCATENATION, STRIDED_SLICE, PAD ..., TFLite int8 spec
"restriction: input and outputs must all have the same scale/zero point") is written with the
input's parameters and requantized by a QUANTIZE (int8 -> int8) when the model gives it other
ones (:meth:`LoweringContext.define_output_like`, :meth:`LoweringContext.define` with a shared
tensor); these requantizations are counted.
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
#: Ops whose output layout follows their inputs' (element-wise or axis-mapped ops; Q/DQ are
#: folded or element-wise QUANTIZE/DEQUANTIZE).
LAYOUT_FOLLOWING_OPS = frozenset({
    "Add", "Sub", "Mul", "Div", "Relu", "Clip", "LeakyRelu", "PRelu", "Sigmoid", "Tanh", "HardSwish",
    "Concat", "Pad", "Slice", "QuantizeLinear", "DequantizeLinear",
})
FLOAT32 = np.dtype(np.float32)


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

    def before_qdq(self, value: ir.Value) -> ir.Value:
        """``value`` followed back through QuantizeLinear/DequantizeLinear producers (element-wise,
        same elements in the same layout)."""
        for _ in range(64):
            producer = value.producer()
            if producer is None or producer.op_type not in ("QuantizeLinear", "DequantizeLinear") or producer.domain not in DEFAULT_DOMAINS:
                break
            value = producer.inputs[0]
        return value

    def readers(self, value: ir.Value) -> list[ir.Node] | None:
        """The nodes reading ``value``'s elements: its consumers, looking through Q/DQ nodes (folded
        into the same tensor, or element-wise QUANTIZE keeping the layout); None when one of those
        values is a graph output."""
        found: list[ir.Node] = []
        pending = [value]
        while pending:
            current = pending.pop()
            if self.is_graph_output(current):
                return None
            for node in self.consumers(current):
                if node.op_type in ("QuantizeLinear", "DequantizeLinear") and node.domain in DEFAULT_DOMAINS:
                    pending.append(node.outputs[0])  # folded, or an element-wise QUANTIZE in the same layout
                elif node not in found:
                    found.append(node)
        return found

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
        fused: names of nodes whose work another operator does (fused activations, bias Adds).
        fused_activations: activation nodes of the IR folded into the preceding operator (a Relu
            that naive/selective quantization already fused into its producer's output parameters
            is no longer a node, so it is not counted; the quantization plan lists those).
        current_node: the node being lowered (set by the driver); its precision decides whether
            int8 inputs are read as they are or through a DEQUANTIZE.
        requantizations: QUANTIZE int8 -> int8 operators added because a byte-moving int8 kernel
            needs equal input/output parameters and the model gives different ones.
        dequantize_views: DEQUANTIZE operators added so float nodes read int8 tensors.
        source_of_view: tensor index of a DEQUANTIZE view -> the int8 tensor it dequantizes.
        bypassed: output tensor of a RESHAPE an operator read around -> the RESHAPE's input
            (same elements in the same order), so verification still finds the values.
    """

    def __init__(self, model: ir.Model, writer: ModelWriter, types: TensorTypes, settings: LoweringSettings | None = None) -> None:
        super().__init__(model, types)
        self.writer = writer
        self.settings = settings or LoweringSettings()
        self.transposes_added = 0
        self.fused: set[str] = set()
        self.fused_activations = 0
        self.current_node: ir.Node | None = None
        self.requantizations = 0
        self.dequantize_views = 0
        self.source_of_view: dict[int, int] = {}
        self.bypassed: dict[int, int] = {}
        self._primary: dict[int, tuple[int, Layout]] = {}
        self._views: dict[tuple, int] = {}
        self._names: set[str] = set()
        self._pending_requantize: dict[int, list[int]] = {}
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
        """Element type of the TFLite tensor holding ``value`` (after aliases)."""
        return self.types.activation(self.resolve(value))

    def precision(self, node: ir.Node | None = None) -> str:
        """``"int8"``, ``"float"`` or ``"boundary"`` (Q/DQ) for ``node`` (default: the current node)."""
        node = node if node is not None else self.current_node
        if node is None:
            return "boundary"
        decide = getattr(self.types, "precision", None)
        return decide(node) if decide is not None else "float"

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
        bytes, e.g. an ONNX Transpose or a Reshape keeping the stored shape) when their element
        types agree; an int8 tensor with other parameters than ``value``'s is requantized into a new
        tensor by a QUANTIZE (counted in :attr:`requantizations`). Otherwise a new activation tensor
        with the stored shape and ``value``'s element type is added.
        """
        value = self.resolve(value)
        if tensor is None:
            shape = layout.stored_shape(self.static_shape(value))
            tensor = self._new_activation(value.name, shape, self.element_type(value))
        else:
            element = self.element_type(value)
            if not self._same_quantization(tensor, element):
                target = self._new_activation(value.name, self.writer.tensor_shape(tensor), element)
                self._emit_requantize(tensor, target)
                tensor = target
        self._primary[id(value)] = (tensor, layout)
        return tensor

    def define_output_like(self, value: ir.Value, layout: Layout, source: int) -> int:
        """The tensor an operator whose int8 kernel keeps its input's parameters (RESHAPE, pools,
        STRIDED_SLICE, PAD, CONCATENATION, MAXIMUM/MINIMUM, RESIZE ...) writes for ``value``.

        ``value``'s own tensor when its parameters equal those of the input tensor ``source`` (or
        either is float); else an intermediate tensor with ``source``'s parameters, requantized into
        ``value``'s tensor by a QUANTIZE emitted right after the operator (:meth:`emit`).
        """
        final = self.define(value, layout)
        source_quantization = self.writer.tensor_quantization(source)
        final_quantization = self.writer.tensor_quantization(final)
        if source_quantization is None or final_quantization is None or source_quantization == final_quantization:
            return final
        intermediate = self.writer.add_tensor(
            self.unique_name(f"{value.name}/before_requantize"), self.writer.tensor_shape(final), self.writer.tensor_dtype(final), quantization=source_quantization
        )
        self._pending_requantize.setdefault(intermediate, []).append(final)
        return intermediate

    def requantized(self, tensor: int, like: int) -> int:
        """``tensor`` with the quantization of tensor ``like`` (a QUANTIZE int8 -> int8 when they
        differ, counted): inputs of CONCATENATION, which needs one scale for all (TFLite int8 spec)."""
        quantization = self.writer.tensor_quantization(like)
        if quantization is None or self.writer.tensor_quantization(tensor) in (None, quantization):
            return tensor
        key = ("requantized", tensor, quantization)
        if key not in self._views:
            target = self.writer.add_tensor(
                self.unique_name(f"{self.writer.tensor_name(tensor)}/requantized"), self.writer.tensor_shape(tensor), self.writer.tensor_dtype(tensor), quantization=quantization
            )
            self._emit_requantize(tensor, target)
            self._views[key] = target
        return self._views[key]

    def _same_quantization(self, tensor: int, element: ElementType) -> bool:
        current = self.writer.tensor_quantization(tensor)
        wanted = None if element.quantization is None else stored_quantization(element.quantization, None)
        if current is None or wanted is None:
            return True
        return current == wanted

    def _emit_requantize(self, source: int, target: int) -> None:
        self.writer.add_operator(Builtin.QUANTIZE, [source], [target])
        self.requantizations += 1
        logger.debug("QUANTIZE (requantize) %s -> %s", self.writer.tensor_name(source), self.writer.tensor_name(target))

    def _new_activation(self, name: str, shape: Sequence[int | None], element: ElementType) -> int:
        quantization = None
        if element.quantization is not None:
            quantization = stored_quantization(element.quantization, None)
        return self.writer.add_tensor(self.unique_name(name), shape, element.dtype, quantization=quantization)

    def new_intermediate(self, like: ir.Value, suffix: str, shape: Sequence[int | None]) -> int:
        """A fresh activation tensor with ``like``'s element type (a step inside one op's lowering)."""
        return self._new_activation(f"{like.name}/{suffix}", shape, self.element_type(like))

    def read(self, value: ir.Value, layout: Layout | None = None, *, logical_shape: Sequence[int | None] | None = None, dtype: np.dtype | None = None) -> int:
        """The TFLite tensor holding ``value`` stored as ``layout`` (default: as it is).

        A constant is written as a constant tensor in the requested layout. A non-constant stored
        differently is converted once (and cached): RESHAPE when both layouts hold the elements in
        the same flat order (:func:`edgecomp_tflite.layout.same_flat_order`), else TRANSPOSE
        (counted in :attr:`transposes_added`), after a RESHAPE when ``logical_shape`` asks for
        leading size-1 axes (broadcasting a lower-rank operand). An int8 tensor read by a float node
        (or with ``dtype`` float32) is dequantized once by a DEQUANTIZE (cached too).

        Args:
            value: the ONNX value.
            layout: wanted stored layout; None keeps the current one.
            logical_shape: the logical shape wanted (default: the value's own). Only adding leading
                size-1 axes is allowed (ONNX broadcasting).
            dtype: wanted element type (float32); None: as the current node's precision wants.
        """
        tensor = self._read_stored(value, layout, logical_shape)
        want_float = (dtype is not None and np.dtype(dtype) == FLOAT32) or (dtype is None and self.precision() == "float")
        if want_float and self.writer.tensor_quantization(tensor) is not None and not self.writer.is_constant(tensor):
            return self.dequantized(tensor)
        return tensor

    def dequantized(self, tensor: int) -> int:
        """A float32 DEQUANTIZE of int8 ``tensor`` (one per tensor, cached)."""
        key = ("dequantized", tensor)
        if key not in self._views:
            view = self.writer.add_tensor(self.unique_name(f"{self.writer.tensor_name(tensor)}/dequantized"), self.writer.tensor_shape(tensor), np.float32)
            self.writer.add_operator(Builtin.DEQUANTIZE, [tensor], [view])
            self.dequantize_views += 1
            self.source_of_view[view] = tensor
            self._views[key] = view
        return self._views[key]

    def _read_stored(self, value: ir.Value, layout: Layout | None, logical_shape: Sequence[int | None] | None) -> int:
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
        stored in ``layout`` (:func:`edgecomp_tflite.layout.broadcast_constant`), times ``scale``.
        Quantized (or float16) data the current node cannot take as it is goes through a DEQUANTIZE
        (:meth:`runtime_dequantized`)."""
        data, quantization = _scaled(*self.types.constant(value), scale, value)
        rank = data.ndim if rank is None else rank
        stored = layouts.broadcast_constant(data, rank, layout)
        stored_params = None
        if quantization is not None:
            axis = None if quantization.axis is None else layout.stored_axis(quantization.axis + rank - data.ndim)
            stored_params = stored_quantization(quantization, axis)
        tensor = self.writer.add_constant(self.unique_name(value.name), stored, quantization=stored_params)
        return self.runtime_dequantized(value, tensor)

    def runtime_dequantized(self, value: ir.Value, tensor: int) -> int:
        """Constant ``tensor`` as the current node's kernel takes it: as it is, or through a
        DEQUANTIZE to float32 when it is quantized and the node runs in float without a hybrid
        kernel for it (:meth:`TensorTypes.keeps_quantized`), or float16 (FP16 weights)."""
        dtype = self.writer.tensor_dtype(tensor)
        quantized = self.writer.tensor_quantization(tensor) is not None
        if dtype == np.float16 or (quantized and not self._keeps_quantized(value)):
            view = self.writer.add_tensor(self.unique_name(f"{self.writer.tensor_name(tensor)}/dequantized"), self.writer.tensor_shape(tensor), np.float32)
            self.writer.add_operator(Builtin.DEQUANTIZE, [tensor], [view])
            return view
        return tensor

    def _keeps_quantized(self, value: ir.Value) -> bool:
        keeps = getattr(self.types, "keeps_quantized", None)
        if keeps is None:
            return True
        return keeps(self.current_node, value) or keeps(self.current_node, self.resolve(value))

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
        tensor = self.writer.add_constant(self.unique_name(name or value.name), np.ascontiguousarray(stored), quantization=stored_params)
        return self.runtime_dequantized(value, tensor)

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
        weight_scale: float = 1.0,
    ) -> int:
        """A bias operand [length] (zeros when ``value`` is None; a scalar or [1, length] constant
        is broadcast); INT8 lowering makes it int32.

        ``channels`` keeps a slice of it (one group of a split grouped convolution); ``scale``
        multiplies it (Gemm ``beta``). ``weight_scale`` is the factor the weights were multiplied
        by (Gemm ``alpha``): an int32 bias must have scale ``s_in * s_w`` of the *stored* weights, so
        it is re-expressed as ``round(q * beta / alpha)`` with scale ``s_bias * alpha``.
        """
        data, quantization = self.types.bias(value, length, input_value, weight_value)
        if quantization is not None and scale != weight_scale:
            if weight_scale <= 0.0:
                raise UnsupportedError(f"bias {name!r}: a non-positive weight factor {weight_scale} on quantized weights")
            data = np.clip(np.round(data.astype(np.float64) * (scale / weight_scale)), -(2**31), 2**31 - 1).astype(np.int32)
            quantization = QuantParams(np.asarray(quantization.scale) * weight_scale, quantization.zero_point, quantization.axis)
        elif quantization is not None:
            quantization = QuantParams(np.asarray(quantization.scale) * scale, quantization.zero_point, quantization.axis) if scale != 1.0 else quantization
        else:
            data, quantization = _scaled(data, quantization, scale, value)
        data = data.reshape(length)
        if channels is not None:
            data = data[channels]
            quantization = _slice_channels(quantization, channels, 0)
        stored_params = None if quantization is None else stored_quantization(quantization, 0)
        return self.writer.add_constant(self.unique_name(name), np.ascontiguousarray(data), quantization=stored_params)

    # ---------------------------------------------------------------------------- operators

    def emit(self, code: int, inputs: Sequence[int], outputs: Sequence[int], options: Any = None, **flags: Any) -> int:
        """Append a TFLite operator (see :meth:`ModelWriter.add_operator`), then the requantizations
        :meth:`define_output_like` planned for its outputs."""
        position = self.writer.add_operator(code, inputs, outputs, options, **flags)
        for output in outputs:
            for target in self._pending_requantize.pop(output, []):
                self._emit_requantize(output, target)
        return position

    def stored_tensors(self) -> dict[int, tuple[int, Layout]]:
        """id(ONNX value) -> (tensor index, layout) of every value given a tensor so far."""
        return dict(self._primary)

    def fused_bias_add(self, node: ir.Node) -> tuple[ir.Value | None, ir.Node]:
        """(bias value, node whose output continues) for a MatMul/Gemm whose bias is a following
        Add (tf2onnx's ``MatMul -> Add(bias)`` in QDQ models, :meth:`QdqTensorTypes.bias_add`);
        ``(None, node)`` when there is none. The Add is marked fused."""
        find = getattr(self.types, "bias_add", None)
        add = find(node) if find is not None else None
        if add is None:
            return None, node
        self.fused.add(add.name)
        output = node.outputs[0]
        bias = add.inputs[1] if add.inputs[0] is output else add.inputs[0]
        return bias, add

    def fused_activation(self, node: ir.Node) -> tuple[int, ir.Value]:
        """Fold the activation after ``node`` into its TFLite operator when that is exact.

        The activation is fused when ``node``'s output is read only by it and is not a graph
        output, it runs in the same precision as ``node``, and it is ``Relu``, or ``Clip`` with
        constant bounds (0, 6), (-1, 1) or (0, none). TFLite applies ``fused_activation_function``
        to the operator's result (``tensorflow/lite/kernels/internal/common.h``,
        ``ActivationFunctionWithMinMax``; for int8 outputs the clamp is in quantized units,
        ``CalculateActivationRangeQuantized``), i.e. the same clamp. In a QDQ model the activation
        may sit behind a folded QuantizeLinear -> DequantizeLinear pair (``Conv -> Q -> DQ -> Relu
        -> Q``): it is looked through when the activation's output keeps the pair's parameters, so
        clamping the int8 result equals requantizing the clamped value. (The QAT export pattern
        ``Conv -> Relu -> Q`` is the direct case.)

        Returns:
            (``ActivationFunctionType`` value, the ONNX value the operator must write): the
            activation's output when fused (the activation node is then skipped), else
            ``(NONE, node.outputs[0])``.
        """
        value = node.outputs[0]
        follower = self._sole_reader(value)
        if follower is None:
            return Activation.NONE, value
        if follower.op_type == "QuantizeLinear" and self.types.folded(follower):
            # look through a folded QuantizeLinear -> DequantizeLinear pair: exact when the
            # activation keeps the pair's parameters (clamping int8 values at the quantized bounds)
            dequantize = self._sole_reader(follower.outputs[0])
            if dequantize is None or dequantize.op_type != "DequantizeLinear":
                return Activation.NONE, value
            activation = self._sole_reader(dequantize.outputs[0])
            if activation is None or activation_kind(self, activation) is None or activation.inputs[0] is not dequantize.outputs[0]:
                return Activation.NONE, value
            if self.precision(activation) != "int8" or not same_element(self.element_type(value), self.element_type(activation.outputs[0])):
                return Activation.NONE, value
            follower = activation
        kind = activation_kind(self, follower)
        if kind is None or self.types.folded(follower) or self.precision(follower) != self.precision(node):
            return Activation.NONE, value
        self.fused.add(follower.name)
        self.fused_activations += 1
        return kind, follower.outputs[0]

    def _sole_reader(self, value: ir.Value) -> ir.Node | None:
        consumers = self.consumers(value)
        if self.is_graph_output(value) or len(consumers) != 1 or consumers[0].inputs[0] is not value:
            return None
        return consumers[0]


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


def same_element(a: ElementType, b: ElementType) -> bool:
    """True when two tensors share dtype and quantization (scales, zero points, axis), or are both float."""
    if a.dtype != b.dtype or (a.quantization is None) != (b.quantization is None):
        return False
    if a.quantization is None:
        return True
    return stored_quantization(a.quantization, None) == stored_quantization(b.quantization, None)


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
