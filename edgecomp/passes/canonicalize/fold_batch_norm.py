"""FoldBatchNormPass: inference BatchNormalization folded into the preceding Conv/ConvTranspose/Gemm."""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import onnx_ir as ir

from edgecomp.passes.rewrite import NodeRewritePass
from edgecomp.passes.canonicalize._util import constant_array, fuse_nodes, make_initializer, sole_consumer

__all__ = ["FoldBatchNormPass", "fold_into_weights"]

logger = logging.getLogger(__name__)

#: Producers a BatchNormalization can be folded into.
FOLDABLE_PRODUCERS = frozenset({"Conv", "ConvTranspose", "Gemm"})


@dataclasses.dataclass(frozen=True)
class _Match:
    producer: ir.Node
    batch_norm: ir.Node
    weight: np.ndarray
    bias: np.ndarray | None
    gamma: np.ndarray
    beta: np.ndarray
    mean: np.ndarray
    variance: np.ndarray
    epsilon: float


class FoldBatchNormPass(NodeRewritePass):
    """Folds ``BatchNormalization`` (inference mode) into the Conv, ConvTranspose or Gemm before it.

    ONNX BatchNormalization (operator spec, opsets 9/14/15, inference mode) computes per channel c
    (dimension 1 of X) ``Y = (X - mean) / sqrt(var + epsilon) * scale + B``. With
    ``s = scale / sqrt(var + epsilon)`` (shape [C]) this is ``Y = X * s + (B - mean * s)``, so for
    ``X = W (*) x + b``:

    - ``w'[c] = w[c] * s[c]`` for each output channel c, and
    - ``b' = (b - mean) * s + B`` (b = 0 when the producer has no bias).

    The output channel axis of the weight depends on the producer:

    - Conv: W is [C_out, C_in/group, k...], channel axis 0.
    - ConvTranspose: W is [C_in, C_out/group, k...] and output channel ``g*(C_out/group) + j``
      is ``W[g*(C_in/group):(g+1)*(C_in/group), j]``.
    - Gemm (``Y = alpha * A' B' + beta * C``, Y is [M, N], N = channel): B is [K, N], or [N, K] when
      ``transB=1``; the new C is ``(beta * C - mean) * s + B`` (broadcast, so [N] or [M, N]) and the
      new ``beta`` is 1.

    The fold happens when: BatchNormalization is in inference mode (``training_mode`` absent or 0,
    no used extra output, opset < 9 ``spatial`` absent or 1); its X is the only output of a Conv,
    ConvTranspose or Gemm that no other node reads and that is not a graph output; the producer's
    weight and bias (if any) and the four BatchNormalization parameters are constants. The result
    is one node with the producer's name and op type and the BatchNormalization's output value;
    new weights are float computed in float64 and cast to the weight's dtype, named
    ``<batch norm name>_folded_weight`` / ``_folded_bias``. Otherwise the node is left and the
    reason recorded in :attr:`refusals`.

    Attributes:
        refusals: after a run, BatchNormalization node name -> why it was left.

    Raises nothing.
    """

    op_type = "BatchNormalization"

    def check(self, model: ir.Model, node: ir.Node) -> _Match | str:
        return _match(node)

    def rewrite(self, model: ir.Model, node: ir.Node, match: _Match) -> None:
        _rewrite(model.graph, match)

def _match(batch_norm: ir.Node) -> _Match | str:
    """Returns the fold's operands, or why ``batch_norm`` cannot be folded."""
    if batch_norm.attributes.get_int("training_mode", 0) != 0:
        return "training_mode is 1"
    if batch_norm.attributes.get_int("spatial", 1) != 1:
        return "spatial is 0 (opset < 9 per-element statistics)"
    if any(output.uses() or output.is_graph_output() for output in batch_norm.outputs[1:]):
        return "a training output (mean/var) is used"
    x = batch_norm.inputs[0]
    producer = x.producer() if x is not None else None
    if producer is None or producer.op_type not in FOLDABLE_PRODUCERS or producer.domain not in ("", "ai.onnx"):
        return "X is not produced by Conv, ConvTranspose or Gemm"
    if len(producer.outputs) != 1 or sole_consumer(x) is not batch_norm:
        return f"{producer.op_type} output has another consumer or is a graph output"
    parameters = [constant_array(value) for value in batch_norm.inputs[1:5]]
    if len(parameters) != 4 or any(parameter is None for parameter in parameters):
        return "scale, B, mean or var is not a constant"
    weight = constant_array(producer.inputs[1])
    if weight is None:
        return f"{producer.op_type} weight is not a constant"
    bias = None
    if len(producer.inputs) > 2 and producer.inputs[2] is not None:
        bias = constant_array(producer.inputs[2])
        if bias is None:
            return f"{producer.op_type} bias is not a constant"
    gamma, beta, mean, variance = parameters
    channels = _output_channel_count(producer, weight)
    if any(parameter.shape != (channels,) for parameter in parameters):
        return f"BatchNormalization parameters are not [{channels}] (the producer's output channels)"
    return _Match(
        producer=producer,
        batch_norm=batch_norm,
        weight=weight,
        bias=bias,
        gamma=gamma,
        beta=beta,
        mean=mean,
        variance=variance,
        epsilon=batch_norm.attributes.get_float("epsilon", 1e-5),
    )


def _output_channel_count(producer: ir.Node, weight: np.ndarray) -> int:
    if producer.op_type == "Conv":
        return weight.shape[0]
    if producer.op_type == "ConvTranspose":
        return weight.shape[1] * producer.attributes.get_int("group", 1)
    return weight.shape[0] if producer.attributes.get_int("transB", 0) else weight.shape[1]


def fold_into_weights(
    op_type: str, weight: np.ndarray, scale: np.ndarray, *, group: int = 1, trans_b: int = 0
) -> np.ndarray:
    """Multiplies each output channel c of a Conv/ConvTranspose/Gemm weight by ``scale[c]``.

    Args:
        op_type: "Conv" (W [C_out, C_in/group, k...]), "ConvTranspose" (W [C_in, C_out/group, k...],
            ONNX ConvTranspose spec) or "Gemm" (B [K, N], or [N, K] with ``trans_b=1``).
        weight: the weight, any float dtype.
        scale: float array [C_out] (Gemm: [N]).
        group: the Conv/ConvTranspose ``group`` attribute.
        trans_b: the Gemm ``transB`` attribute.

    Returns:
        float64 array of the weight's shape.
    """
    weight = weight.astype(np.float64)
    if op_type == "Conv":
        return weight * scale.reshape((-1,) + (1,) * (weight.ndim - 1))
    if op_type == "ConvTranspose":
        c_in, c_out_per_group = weight.shape[:2]
        kernel = weight.shape[2:]
        grouped = weight.reshape((group, c_in // group, c_out_per_group) + kernel)
        grouped = grouped * scale.reshape((group, 1, c_out_per_group) + (1,) * len(kernel))
        return grouped.reshape(weight.shape)
    if trans_b:
        return weight * scale[:, None]
    return weight * scale[None, :]


def _rewrite(graph: ir.Graph, match: _Match) -> None:
    producer, batch_norm = match.producer, match.batch_norm
    scale = match.gamma.astype(np.float64) / np.sqrt(match.variance.astype(np.float64) + match.epsilon)
    weight = fold_into_weights(
        producer.op_type,
        match.weight,
        scale,
        group=producer.attributes.get_int("group", 1),
        trans_b=producer.attributes.get_int("transB", 0),
    )
    attributes = dict(producer.attributes)
    if producer.op_type == "Gemm":
        bias = 0.0 if match.bias is None else producer.attributes.get_float("beta", 1.0) * match.bias.astype(np.float64)
        attributes["beta"] = ir.AttrFloat32("beta", 1.0)
    else:
        bias = 0.0 if match.bias is None else match.bias.astype(np.float64)
    bias = (bias - match.mean.astype(np.float64)) * scale + match.beta.astype(np.float64)
    dtype = match.weight.dtype
    name = batch_norm.name or batch_norm.outputs[0].name
    new_weight = make_initializer(graph, f"{name}_folded_weight", weight.astype(dtype))
    new_bias = make_initializer(graph, f"{name}_folded_bias", np.asarray(bias).astype(dtype))
    fused = ir.Node(
        "",
        producer.op_type,
        [producer.inputs[0], new_weight, new_bias],
        attributes=list(attributes.values()),
        name=producer.name,
        num_outputs=1,
    )
    fuse_nodes(graph, [producer, batch_norm], fused)
    logger.debug("folded BatchNormalization %s into %s %s", batch_norm.name, producer.op_type, producer.name)
