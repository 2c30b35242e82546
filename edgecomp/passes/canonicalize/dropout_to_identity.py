"""DropoutToIdentityPass: inference-mode Dropout becomes Identity (then removed by onnx-ir)."""

from __future__ import annotations

import logging

import onnx_ir as ir

from edgecomp.passes.rewrite import NodeRewritePass
from edgecomp.passes.canonicalize._util import constant_array, fuse_nodes

__all__ = ["DropoutToIdentityPass"]

logger = logging.getLogger(__name__)


class DropoutToIdentityPass(NodeRewritePass):
    """Rewrites every inference-mode ``Dropout`` whose mask is unused into an ``Identity``.

    ONNX ``Dropout`` (opset 12/13/22: inputs ``data``, optional ``ratio``, optional ``training_mode``;
    outputs ``output``, optional ``mask``) returns ``output = data`` when ``training_mode`` is absent
    or false (operator spec, "Dropout"); before opset 7 the same holds when the ``is_test``
    attribute is 1. The Identity keeps the Dropout's name and output value (name, type, shape); its
    removal, including the graph-output naming rules, is left to onnx-ir's
    ``IdentityEliminationPass``, which the canonicalization pipeline runs next.

    A Dropout is refused (left unchanged, reason in :attr:`refusals`) when its ``mask`` output is
    used or is a graph output, when ``training_mode`` is not a constant or is true, or when an
    opset < 7 ``is_test`` attribute is 0.

    Attributes:
        refusals: after a run, Dropout node name -> why it was left.

    Raises nothing.
    """

    op_type = "Dropout"

    def check(self, model: ir.Model, node: ir.Node) -> ir.Node | str:
        return _check(node) or node

    def rewrite(self, model: ir.Model, node: ir.Node, match: ir.Node) -> None:
        identity = ir.Node("", "Identity", [node.inputs[0]], name=node.name, num_outputs=1)
        fuse_nodes(model.graph, [node], identity)

def _check(node: ir.Node) -> str | None:
    """Returns why ``node`` (a Dropout) cannot become an Identity, or None."""
    if len(node.outputs) > 1:
        mask = node.outputs[1]
        if mask.uses() or mask.is_graph_output():
            return "mask output is used"
    if len(node.inputs) > 2 and node.inputs[2] is not None:
        training_mode = constant_array(node.inputs[2])
        if training_mode is None:
            return "training_mode is not a constant"
        if bool(training_mode):
            return "training_mode is true"
    if node.attributes.get_int("is_test", 1) == 0:
        return "is_test is 0 (opset < 7 training mode)"
    return None
