"""The lowering driver: support check over the whole IR, then one pass in topological order.

Layout tracking happens here, during lowering, not in an IR pass (``legalize``): DESIGN.md keeps
every IR stage a valid ONNX model that ONNX Runtime runs, and an NHWC ONNX graph would need a
Transpose around every Conv (ONNX Conv is NCHW-only), Transposes the lowering would then have to
remove again. The lowering instead records per tensor how its TFLite tensor stores it
(:class:`~edgecomp_tflite.layout.Layout`) and converts only where an op needs another layout
(:meth:`~edgecomp_tflite.context.LoweringContext.read`).
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import logging

import numpy as np
import onnx_ir as ir

from edgecomp import __version__
from edgecomp.backend import Unsupported
from edgecomp.errors import UnsupportedError
from edgecomp.ir.graph import topological_order
from edgecomp.ir.values import constant_array
from edgecomp_tflite.context import (
    DEFAULT_DOMAINS,
    GraphInfo,
    LoweringContext,
    LoweringSettings,
)
from edgecomp_tflite.layout import Layout
from edgecomp_tflite.ops import load_all
from edgecomp_tflite.tensor_types import TensorTypes
from edgecomp_tflite.versions import builtin_name
from edgecomp_tflite.writer import (
    PLAN_DIGEST_METADATA,
    PLAN_METADATA,
    PRODUCER_METADATA,
    ModelWriter,
    Quantization,
    constant_data_bytes,
    hybrid_operator_count,
    operator_histogram,
)

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class LoweredModel:
    """A lowered model: the ``.tflite`` bytes and what running and reporting it needs.

    Attributes:
        data: the ``.tflite`` file.
        input_names, output_names: ONNX graph input/output names, in graph order (= the subgraph's
            input/output tensor order and the signature keys).
        input_layouts, output_layouts: stored layout of each graph input/output.
        transposes_added: TRANSPOSE operators emitted to change a stored layout.
        fused_activations: activation nodes of the IR folded into the preceding operator (a Relu
            that naive/selective quantization already fused into its producer's output parameters
            is no longer a node, so it is not counted; the quantization plan lists those).
        op_histogram: TFLite builtin name -> number of operators.
        operator_versions: TFLite builtin name -> OperatorCode version.
        output_quantization: per graph output, the quantization of the int8 tensor it is (int8
            output) or is dequantized from (float output of a quantized model); None for a float
            result. Verification measures differences in these LSBs.
        requantizations: QUANTIZE int8 -> int8 operators added where a TFLite int8 kernel needs
            equal input/output parameters and the model gives different ones.
        dequantize_views: DEQUANTIZE operators added for float nodes (and float outputs) reading
            int8 tensors.
        constant_bytes: bytes of constant data (weights, biases, shape operands) in the buffers.
        hybrid_operators: operators with float activations and int8 weights (dynamic range).
        int8_values: ONNX name of every int8 value (QuantizeLinear outputs, int8 graph inputs and
            their byte moves) -> (tensor index in the file, stored layout, stored shape), for
            per-operator verification (:func:`edgecomp_tflite.runner.operator_figures`); a value
            whose RESHAPE was bypassed maps to the RESHAPE's input, read with the value's shape.
    """

    data: bytes
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    input_layouts: tuple[Layout, ...]
    output_layouts: tuple[Layout, ...]
    transposes_added: int
    fused_activations: int
    op_histogram: dict[str, int]
    operator_versions: dict[str, int]
    output_quantization: tuple[Quantization | None, ...] = ()
    requantizations: int = 0
    dequantize_views: int = 0
    constant_bytes: int = 0
    hybrid_operators: int = 0
    int8_values: dict[str, tuple[int, Layout, tuple]] = dataclasses.field(default_factory=dict)


def _op_label(node: ir.Node) -> str:
    return node.op_type if node.domain in DEFAULT_DOMAINS else f"{node.domain}::{node.op_type}"


def _shape_problem(info: GraphInfo, node: ir.Node) -> str | None:
    """Non-constant inputs/outputs need a known shape, static except for the first (batch) dim."""
    for value in (*node.inputs, *node.outputs):
        if value is None or constant_array(value) is not None:
            continue
        if not value.uses() and not info.is_graph_output(value) and value in node.outputs[1:]:
            continue  # an unused optional output (e.g. MaxPool Indices)
        shape = info.shape(value)
        if shape is None:
            return f"tensor {value.name!r} has no known shape after shape inference"
        dynamic = [axis for axis, dim in enumerate(shape) if dim is None and axis != 0]
        if dynamic:
            return f"tensor {value.name!r} has dynamic dimension(s) at axis {dynamic}; only the first (batch) dimension may be dynamic"
    return None


def find_unsupported(model: ir.Model, types: TensorTypes) -> list[Unsupported]:
    """Every node (and graph input/output) this backend cannot lower, with the reason, in graph order.

    Reasons checked, first one reported per node: a non-default operator domain (custom ops have no
    TFLite builtin), an op type without a lowering, element types (:meth:`TensorTypes.unsupported`),
    unknown or non-batch dynamic shapes, then the op's own check (attribute values, constant
    weights ...). Nothing is written or changed.
    """
    registry = load_all()
    info = GraphInfo(model, types)
    problems: list[Unsupported] = []
    for value in model.graph.inputs:  # element types are checked at the nodes reading them
        shape = info.shape(value)
        if shape is None:
            problems.append(Unsupported(value.name, "graph input", "shape unknown"))
        elif any(dim is None for dim in shape[1:]):
            problems.append(Unsupported(value.name, "graph input", "only the first (batch) dimension may be dynamic"))
    for node in model.graph:
        label = _op_label(node)
        if node.domain not in DEFAULT_DOMAINS:
            reason = f"operator of the custom domain {node.domain!r}: TFLite has no builtin for it"
        elif node.op_type not in registry:
            reason = f"no TFLite lowering for ONNX {node.op_type}"
        else:
            try:
                reason = types.unsupported(node) or _shape_problem(info, node) or registry[node.op_type].check(info, node)
            except Exception as error:  # a malformed node must be reported, not crash support()
                reason = f"cannot analyse the node: {error}"
        if reason:
            problems.append(Unsupported(node.name, label, reason))
    return problems


def raise_if_unsupported(problems: list[Unsupported]) -> None:
    """Raises UnsupportedError naming the first problem and the count of the others."""
    if problems:
        first = problems[0]
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise UnsupportedError(f"tflite cannot lower node {first.node!r} ({first.op_type}): {first.reason}{more}")


def lower_model(
    model: ir.Model, types: TensorTypes, settings: LoweringSettings, *, quantization_plan: bytes | None = None, plan_digest_only: bool = False
) -> LoweredModel:
    """Lower the IR to ``.tflite`` bytes.

    Args:
        model: the IR (shape-inferred, canonicalized; not modified).
        types: element types (:class:`~edgecomp_tflite.tensor_types.FloatTensorTypes` for float32).
        settings: I/O layout and grouped-convolution strategy.
        quantization_plan: JSON of the quantization plan, stored as metadata when given.
        plan_digest_only: store only the plan's sha256 (the plan itself is written beside the file).

    Returns:
        :class:`LoweredModel`.

    Raises:
        UnsupportedError: :func:`find_unsupported` lists a problem (the first named, count given).
    """
    raise_if_unsupported(find_unsupported(model, types))
    registry = load_all()
    writer = ModelWriter(f"edgecomp {__version__}")
    ctx = LoweringContext(model, writer, types, settings)

    inputs, input_layouts = [], []
    for value in model.graph.inputs:
        layout = settings.boundary_layout(len(ctx.static_shape(value)))
        inputs.append(ctx.define(value, layout))
        input_layouts.append(layout)

    for node in topological_order(model):
        if node.name in ctx.fused:
            continue
        ctx.current_node = node
        registry[node.op_type].lower(ctx, node)
    ctx.current_node = None

    outputs, output_layouts, output_quantization = [], [], []
    for value in model.graph.outputs:
        layout = settings.boundary_layout(len(ctx.static_shape(value)))
        float_output = value.dtype is not None and value.dtype.name in ("FLOAT", "FLOAT16")
        tensor = ctx.read(value, layout, dtype=np.float32 if float_output else None)
        if writer.tensor_name(tensor) != value.name:
            _take_name(writer, value.name, tensor)
        outputs.append(tensor)
        output_layouts.append(layout)
        output_quantization.append(writer.tensor_quantization(ctx.source_of_view.get(tensor, tensor)))

    writer.set_io(inputs, outputs)
    writer.set_signature(
        {value.name: index for value, index in zip(model.graph.inputs, inputs)},
        {value.name: index for value, index in zip(model.graph.outputs, outputs)},
    )
    writer.add_metadata(PRODUCER_METADATA, f"edgecomp {__version__}".encode())
    if quantization_plan is not None and plan_digest_only:
        writer.add_metadata(PLAN_DIGEST_METADATA, hashlib.sha256(quantization_plan).hexdigest().encode())
    elif quantization_plan is not None:
        writer.add_metadata(PLAN_METADATA, quantization_plan)
    int8_values = _int8_values(model, ctx)
    data = writer.finish()
    int8_values = {name: (writer.tensor_remap[tensor], layout, shape) for name, (tensor, layout, shape) in int8_values.items() if tensor in writer.tensor_remap}
    versions = {builtin_name(code): version for code, version in sorted(writer.operator_versions().items())}
    lowered = LoweredModel(
        data=data,
        input_names=tuple(v.name for v in model.graph.inputs),
        output_names=tuple(v.name for v in model.graph.outputs),
        input_layouts=tuple(input_layouts),
        output_layouts=tuple(output_layouts),
        transposes_added=ctx.transposes_added,
        fused_activations=ctx.fused_activations,
        op_histogram=operator_histogram(data),
        operator_versions=versions,
        output_quantization=tuple(output_quantization),
        requantizations=ctx.requantizations,
        dequantize_views=ctx.dequantize_views,
        constant_bytes=constant_data_bytes(data),
        hybrid_operators=hybrid_operator_count(data),
        int8_values=int8_values,
    )
    logger.info(
        "tflite: %d operators %s, %d TRANSPOSE, %d requantizations, %d DEQUANTIZE views added",
        sum(lowered.op_histogram.values()), dict(collections.Counter(lowered.op_histogram)), lowered.transposes_added,
        lowered.requantizations, lowered.dequantize_views,
    )
    return lowered


def _int8_values(model: ir.Model, ctx: LoweringContext) -> dict[str, tuple[int, Layout, tuple]]:
    """ONNX name -> (tensor, layout) of the int8 ONNX values (see :class:`LoweredModel`)."""
    stored = ctx.stored_tensors()
    values = [v for v in model.graph.inputs if v.dtype == ir.DataType.INT8]
    values += [o for node in model.graph for o in node.outputs if o is not None and o.dtype == ir.DataType.INT8]
    result = {}
    for value in values:
        entry = stored.get(id(ctx.resolve(value)))
        if entry is not None and ctx.writer.tensor_quantization(entry[0]) is not None:
            tensor, layout = entry
            shape = tuple(-1 if dim is None else dim for dim in ctx.writer.tensor_shape(tensor))
            result[value.name] = (ctx.bypassed.get(tensor, tensor), layout, shape)
    return result


def _take_name(writer: ModelWriter, name: str, tensor: int) -> None:
    """Give graph output ``tensor`` the ONNX name; a tensor already holding it is renamed ``<name>/stored``."""
    for index in range(writer.num_tensors):
        if writer.tensor_name(index) == name and index != tensor:
            writer.rename_tensor(index, f"{name}/stored")
    writer.rename_tensor(tensor, name)
