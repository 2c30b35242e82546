"""FuseBiasAddPass: a constant Add after Conv goes into the Conv bias; MatMul + Add becomes Gemm."""

from __future__ import annotations

import logging

import numpy as np
import onnx_ir as ir

from edgecomp.passes.rewrite import NodeRewritePass
from edgecomp.passes.canonicalize._util import constant_array, fuse_nodes, make_initializer, sole_consumer

__all__ = ["FuseBiasAddPass"]

logger = logging.getLogger(__name__)

#: Element types Gemm accepts in every opset from 13 on (ONNX Gemm spec, type constraint T).
GEMM_FLOAT_DTYPES = frozenset({ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.DOUBLE, ir.DataType.BFLOAT16})


class FuseBiasAddPass(NodeRewritePass):
    """Folds ``Add(producer output, constant)`` into the producer, for Conv and MatMul producers.

    **Conv + Add.** ``Add(Conv(X, W[, b]), c)`` with c a constant that broadcasts (ONNX
    multidirectional broadcasting, right-aligned) to [1, C, 1, ..., 1] against the Conv output
    [N, C, D1, ...]: e.g. [C, 1, 1], [1, C, 1, 1], a scalar or [1]. The Add becomes the Conv bias
    (ONNX Conv spec: B is [C], added per output channel): ``b' = b + c`` broadcast to [C]
    (b = 0 when absent), named ``<add name>_folded_bias``. A constant of shape [C] alone is refused:
    it broadcasts along the last spatial axis, not along channels.

    **MatMul + Add -> Gemm.** ``Add(MatMul(A, W), c)`` with A of rank 2 (from its shape; run
    ``ShapeInferencePass`` first when the exporter left shapes out), W a constant [K, N] and c a
    constant [N] or [1, N], float/float16/double/bfloat16, becomes ``Gemm(A, W, c)`` with default
    ``alpha = beta = 1`` and ``transA = transB = 0``: ONNX Gemm computes ``Y = A W + C`` with C
    unidirectionally broadcast to [M, N], which is what Add's broadcasting of [N] or [1, N] against
    [M, N] gives. The Gemm takes the MatMul's name and the Add's output value.

    In both cases the producer must have no other consumer (and not be a graph output), and the Add
    operands may be in either order. The fused node keeps the producer's name and attributes and the
    Add's output value (name, type, shape). Other Adds are left, with the reason in :attr:`refusals`.

    Attributes:
        refusals: after a run, Add node name -> why it was left (Adds of two non-constants are not
            listed).

    Raises nothing.
    """

    op_type = "Add"

    def check(self, model: ir.Model, node: ir.Node) -> tuple | str | None:
        if len(node.inputs) != 2:
            return None
        operands = _split_operands(node)
        if operands is None:
            return None
        producer_output, constant = operands
        producer = producer_output.producer()
        if producer is not None and producer.op_type == "Conv" and producer.domain in ("", "ai.onnx"):
            return _check_conv(producer, node, constant)
        if producer is not None and producer.op_type == "MatMul" and producer.domain in ("", "ai.onnx"):
            return _check_matmul(producer, node, constant)
        return "the non-constant operand is not a Conv or MatMul output"

    def rewrite(self, model: ir.Model, node: ir.Node, match: tuple) -> None:
        kind, producer, operand = match
        if kind == "Conv":
            _fuse_conv(model.graph, producer, node, operand)
        else:
            _fuse_matmul(model.graph, producer, node, operand)

def _split_operands(add: ir.Node) -> tuple[ir.Value, np.ndarray] | None:
    """(non-constant operand, constant data) of an Add with exactly one constant operand, else None."""
    first, second = add.inputs
    first_constant, second_constant = constant_array(first), constant_array(second)
    if first_constant is None and second_constant is not None and first is not None:
        return first, second_constant
    if second_constant is None and first_constant is not None and second is not None:
        return second, first_constant
    return None


def _producer_is_exclusive(producer: ir.Node, add: ir.Node) -> bool:
    return len(producer.outputs) == 1 and sole_consumer(producer.outputs[0]) is add


def _check_conv(conv: ir.Node, add: ir.Node, constant: np.ndarray) -> tuple[str, ir.Node, np.ndarray] | str:
    """("Conv", conv, fused bias array), or why the Add's constant cannot become the Conv bias."""
    if not _producer_is_exclusive(conv, add):
        return "Conv output has another consumer or is a graph output"
    weight = constant_array(conv.inputs[1])
    if weight is None:
        return "Conv weight is not a constant"
    if constant.dtype != weight.dtype:
        return f"bias dtype {constant.dtype} differs from weight dtype {weight.dtype}"
    channels, rank = weight.shape[0], weight.ndim  # the Conv output has the weight's rank
    if constant.ndim > rank:
        return f"constant of rank {constant.ndim} would broadcast the rank-{rank} Conv output"
    padded = (1,) * (rank - constant.ndim) + constant.shape
    if padded[0] != 1 or any(size != 1 for size in padded[2:]) or padded[1] not in (1, channels):
        return f"constant shape {list(constant.shape)} does not broadcast to [1, {channels}, 1, ...]"
    bias = np.broadcast_to(constant.reshape(-1), (channels,))
    if len(conv.inputs) > 2 and conv.inputs[2] is not None:
        old_bias = constant_array(conv.inputs[2])
        if old_bias is None:
            return "Conv bias is not a constant"
        bias = old_bias + bias
    return ("Conv", conv, bias.astype(weight.dtype))


def _fuse_conv(graph: ir.Graph, conv: ir.Node, add: ir.Node, bias: np.ndarray) -> None:
    """Replaces Conv + Add by a Conv whose bias is ``bias`` ([C_out])."""
    new_bias = make_initializer(graph, f"{add.name or add.outputs[0].name}_folded_bias", bias)
    fused = ir.Node(
        "",
        "Conv",
        [conv.inputs[0], conv.inputs[1], new_bias],
        attributes=list(conv.attributes.values()),
        name=conv.name,
        num_outputs=1,
    )
    fuse_nodes(graph, [conv, add], fused)
    logger.debug("fused Add %s into Conv %s bias", add.name, conv.name)


def _check_matmul(matmul: ir.Node, add: ir.Node, constant: np.ndarray) -> tuple[str, ir.Node, ir.Value] | str:
    """("MatMul", matmul, bias value), or why MatMul + Add cannot become a Gemm."""
    if not _producer_is_exclusive(matmul, add):
        return "MatMul output has another consumer or is a graph output"
    a, w = matmul.inputs
    if constant_array(a) is not None:
        return "MatMul input A is a constant (left to constant folding)"
    if a.shape is None:
        return "rank of MatMul input A is unknown (run shape inference first)"
    if a.shape.rank() != 2:
        return f"MatMul input A has rank {a.shape.rank()}, Gemm needs 2"
    weight = constant_array(w)
    if weight is None or weight.ndim != 2:
        return "MatMul weight is not a 2-D constant"
    if w.dtype not in GEMM_FLOAT_DTYPES:
        return f"dtype {w.dtype} is not a Gemm float type"
    columns = weight.shape[1]
    if constant.shape not in ((columns,), (1, columns)):
        return f"bias shape {list(constant.shape)} is not [{columns}] or [1, {columns}]"
    return ("MatMul", matmul, add.inputs[1] if add.inputs[0] is matmul.outputs[0] else add.inputs[0])


def _fuse_matmul(graph: ir.Graph, matmul: ir.Node, add: ir.Node, bias: ir.Value) -> None:
    """Replaces MatMul + Add by a Gemm with ``bias`` as C."""
    a, w = matmul.inputs
    gemm = ir.Node("", "Gemm", [a, w, bias], name=matmul.name, num_outputs=1)
    fuse_nodes(graph, [matmul, add], gemm)
    logger.debug("fused MatMul %s + Add %s into Gemm", matmul.name, add.name)
