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
import logging

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
    PLAN_METADATA,
    PRODUCER_METADATA,
    ModelWriter,
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
        fused_activations: activations folded into the preceding operator.
        op_histogram: TFLite builtin name -> number of operators.
        operator_versions: TFLite builtin name -> OperatorCode version.
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


def lower_model(model: ir.Model, types: TensorTypes, settings: LoweringSettings, *, quantization_plan: bytes | None = None) -> LoweredModel:
    """Lower the IR to ``.tflite`` bytes.

    Args:
        model: the IR (shape-inferred, canonicalized; not modified).
        types: element types (:class:`~edgecomp_tflite.tensor_types.FloatTensorTypes` for float32).
        settings: I/O layout and grouped-convolution strategy.
        quantization_plan: JSON of the quantization plan, stored as metadata when given.

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
        registry[node.op_type].lower(ctx, node)

    outputs, output_layouts = [], []
    for value in model.graph.outputs:
        layout = settings.boundary_layout(len(ctx.static_shape(value)))
        tensor = ctx.read(value, layout)
        if writer.tensor_name(tensor) != value.name:
            _take_name(writer, value.name, tensor)
        outputs.append(tensor)
        output_layouts.append(layout)

    writer.set_io(inputs, outputs)
    writer.set_signature(
        {value.name: index for value, index in zip(model.graph.inputs, inputs)},
        {value.name: index for value, index in zip(model.graph.outputs, outputs)},
    )
    writer.add_metadata(PRODUCER_METADATA, f"edgecomp {__version__}".encode())
    if quantization_plan is not None:
        writer.add_metadata(PLAN_METADATA, quantization_plan)
    data = writer.finish()
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
    )
    logger.info("tflite: %d operators %s, %d TRANSPOSE added", sum(lowered.op_histogram.values()), dict(collections.Counter(lowered.op_histogram)), lowered.transposes_added)
    return lowered


def _take_name(writer: ModelWriter, name: str, tensor: int) -> None:
    """Give graph output ``tensor`` the ONNX name; a tensor already holding it is renamed ``<name>/stored``."""
    for index in range(writer.num_tensors):
        if writer.tensor_name(index) == name and index != tensor:
            writer.rename_tensor(index, f"{name}/stored")
    writer.rename_tensor(tensor, name)
