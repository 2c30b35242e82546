"""ConstantFoldingPass: nodes computed from constants only become initializers."""

from __future__ import annotations

import logging
import math

import numpy as np
import onnx
import onnx_ir as ir
from onnx.reference import ReferenceEvaluator

from edgecomp.passes.rewrite import NodeRewritePass
from edgecomp.passes.canonicalize._util import constant_array, replace_with_initializers

__all__ = ["ConstantFoldingPass", "DEFAULT_MAX_OUTPUT_ELEMENTS"]

logger = logging.getLogger(__name__)

#: Default limit on the element count of one folded output (1,000,000 elements = 4 MB of float32).
#: Larger results (a ``ConstantOfShape``/``Expand``/``Tile`` that blows up a small constant) stay
#: as nodes: they would cost more flash as an initializer than as the op.
DEFAULT_MAX_OUTPUT_ELEMENTS = 1_000_000

#: Ops whose output is random: evaluating them once would freeze one sample.
NONDETERMINISTIC_OPS = frozenset(
    {"Bernoulli", "Multinomial", "RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike"}
)

#: Quantization ops carry scales that later stages read (QAT import keeps them); folding weight
#: DequantizeLinear is FoldWeightDequantizePass's job, chosen by the caller.
QUANTIZATION_OPS = frozenset({"DequantizeLinear", "DynamicQuantizeLinear", "QuantizeLinear"})


class ConstantFoldingPass(NodeRewritePass):
    """Evaluates nodes whose inputs are all constants and replaces them by initializers.

    A node is folded when it is in the ONNX domain, has at least one input, every present input is
    a constant (an initializer that is not a graph input, or a ``Constant`` node's output; see
    :func:`edgecomp.passes.canonicalize._util.constant_array`), it is deterministic (not in
    :data:`NONDETERMINISTIC_OPS`), it is not a quantization op (:data:`QUANTIZATION_OPS`), it has no
    subgraph attribute, none of its outputs is a graph output, and no output has more than
    ``max_output_elements`` elements. Nodes are visited in graph (topological) order, so chains of
    constant nodes fold in one run.

    The node is evaluated by ``onnx.reference.ReferenceEvaluator`` (the ONNX reference
    implementation) on a one-node model with the model's opset imports. Each used output becomes an
    initializer with the output's name, shape and dtype; the node is removed. Inputs it no longer
    needs are left for ``RemoveUnusedNodesPass``. When the reference evaluator cannot evaluate a
    node (an op it does not implement, a result that is not a tensor), the node is kept and the
    reason recorded in :attr:`refusals`: not folding never changes the model's outputs.

    Args:
        max_output_elements: largest element count of one folded output
            (default :data:`DEFAULT_MAX_OUTPUT_ELEMENTS`).

    Attributes:
        refusals: after a run, node name -> why a node with all-constant inputs was not folded.

    Raises nothing of its own; ``ir`` errors on a malformed ``Constant`` node propagate.
    """

    def __init__(self, max_output_elements: int = DEFAULT_MAX_OUTPUT_ELEMENTS) -> None:
        super().__init__()
        self.max_output_elements = max_output_elements

    def check(self, model: ir.Model, node: ir.Node) -> list[np.ndarray] | str | None:
        inputs = _constant_inputs(node)
        if inputs is None:
            return None
        reason = self._check(node)
        if reason is not None:
            return reason
        outputs = _evaluate(node, inputs, model.opset_imports)
        return outputs if isinstance(outputs, str) else (self._check_outputs(node, outputs) or outputs)

    def rewrite(self, model: ir.Model, node: ir.Node, match: list[np.ndarray]) -> None:
        replace_with_initializers(model.graph, node, match)
        logger.debug("folded %s (%s)", node.name, node.op_type)

    def _check(self, node: ir.Node) -> str | None:
        """Returns why ``node`` (all inputs constant) must not be folded, or None."""
        if node.op_type in NONDETERMINISTIC_OPS:
            return "random op"
        if node.op_type in QUANTIZATION_OPS:
            return "quantization op (see FoldWeightDequantizePass)"
        if any(attr.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS) for attr in node.attributes.values()):
            return "has a subgraph"
        if any(output.is_graph_output() for output in node.outputs):
            return "an output is a graph output"
        for output in node.outputs:
            if output.shape is not None and output.shape.is_static():
                size = math.prod(output.shape.numpy())
                if size > self.max_output_elements:
                    return f"output {output.name!r} has {size} elements > {self.max_output_elements}"
        return None

    def _check_outputs(self, node: ir.Node, outputs: list[np.ndarray]) -> str | None:
        for output, array in zip(node.outputs, outputs):
            if array.size > self.max_output_elements:
                return f"output {output.name!r} has {array.size} elements > {self.max_output_elements}"
        return None


def _constant_inputs(node: ir.Node) -> dict[str, np.ndarray] | None:
    """Input name -> data when the node is an ONNX-domain node with only constant inputs, else None."""
    if node.domain not in ("", "ai.onnx") or not node.inputs:
        return None
    arrays: dict[str, np.ndarray] = {}
    for value in node.inputs:
        if value is None:
            continue
        array = constant_array(value)
        if array is None or not value.name:
            return None
        arrays[value.name] = array
    return arrays if arrays else None


def _evaluate(
    node: ir.Node, inputs: dict[str, np.ndarray], opset_imports: dict[str, int]
) -> list[np.ndarray] | str:
    """Runs ``node`` alone in ``ReferenceEvaluator``; returns its outputs, or why it could not."""
    node_proto = ir.serde.serialize_node(node)
    graph_proto = onnx.helper.make_graph(
        [node_proto],
        "constant_folding",
        [
            onnx.helper.make_tensor_value_info(
                name, onnx.helper.np_dtype_to_tensor_dtype(array.dtype), array.shape
            )
            for name, array in inputs.items()
        ],
        [onnx.helper.make_empty_tensor_value_info(name) for name in node_proto.output if name],
    )
    model_proto = onnx.helper.make_model(
        graph_proto,
        opset_imports=[onnx.helper.make_opsetid(domain, version) for domain, version in opset_imports.items()],
    )
    try:
        results = ReferenceEvaluator(model_proto).run(None, inputs)
    except Exception as error:  # noqa: BLE001 - any evaluator failure means "do not fold"
        return f"reference evaluator failed: {type(error).__name__}: {error}"
    outputs: list[np.ndarray] = []
    results_iter = iter(results)
    for output in node.outputs:
        if not output.name:
            outputs.append(np.empty(0))  # absent optional output, never used
            continue
        result = next(results_iter)
        if not isinstance(result, np.ndarray):
            return f"output {output.name!r} is a {type(result).__name__}, not a tensor"
        if output.dtype is not None and result.dtype != output.dtype.numpy():
            result = result.astype(output.dtype.numpy())
        outputs.append(result)
    return outputs

