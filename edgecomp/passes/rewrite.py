"""Node rewrite passes: pattern / check / rewrite, the check saying why it refused.

The onnxscript rewrite-rule style (``onnxscript/rewriter``): a pass names the operator its pattern
starts from, a check either returns a match (whatever the rewrite needs), a one-line reason for
leaving the node (kept in :attr:`NodeRewritePass.refusals`, for tests and ``--dump-ir`` debugging),
or None when the node is not a candidate at all; the rewrite then edits the graph. The loop, the
bookkeeping and the ``PassResult`` live here once.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

import onnx_ir as ir

from edgecomp.passes.base import InPlacePass, PassResult

logger = logging.getLogger(__name__)

DEFAULT_DOMAINS = ("", "ai.onnx")


class NodeRewritePass(InPlacePass):
    """Base class: visit every node of :attr:`op_type` (default domain), check it, rewrite matches.

    Subclasses set :attr:`op_type` (None visits every node) and implement :meth:`check` and
    :meth:`rewrite`. Nodes are visited in graph order over a snapshot of the node list, so a
    rewrite may remove or insert nodes.

    Attributes:
        refusals: after a run, node name -> why that candidate was left unchanged.
    """

    op_type: ClassVar[str | None] = None

    def __init__(self) -> None:
        super().__init__()
        self.refusals: dict[str, str] = {}

    def check(self, model: ir.Model, node: ir.Node) -> Any:
        """A match for :meth:`rewrite`, a ``str`` reason to leave ``node``, or None (not a candidate)."""
        raise NotImplementedError

    def rewrite(self, model: ir.Model, node: ir.Node, match: Any) -> None:
        """Edit the graph for a node :meth:`check` matched."""
        raise NotImplementedError

    def call(self, model: ir.Model) -> PassResult:
        self.refusals = {}
        rewritten = 0
        for node in list(model.graph):
            if self.op_type is not None and (node.op_type != self.op_type or node.domain not in DEFAULT_DOMAINS):
                continue
            match = self.check(model, node)
            if match is None:
                continue
            if isinstance(match, str):
                self.refusals[node.name] = match
                logger.debug("%s leaves %s (%s): %s", type(self).__name__, node.name, node.op_type, match)
                continue
            self.rewrite(model, node, match)
            rewritten += 1
        return PassResult(model, modified=rewritten > 0)
