"""RemoveLegacyInitializerInputsPass: IR version < 4 weights become plain initializers."""

from __future__ import annotations

import logging

import onnx_ir as ir
from onnx_ir.passes.common import RemoveInitializersFromInputsPass

from edgecomp.passes.base import InPlacePass, PassResult

__all__ = ["RemoveLegacyInitializerInputsPass"]

logger = logging.getLogger(__name__)

#: First ONNX IR version that lets an initializer exist without a graph input of the same name.
FIRST_IR_VERSION_WITH_FREE_INITIALIZERS = 4


class RemoveLegacyInitializerInputsPass(InPlacePass):
    """Removes initializers from the graph inputs of IR version < 4 models, then sets IR version 4.

    Before IR version 4 every initializer had to be listed as a graph input too (the ONNX checker
    still enforces this for such models), so the listing says nothing about the caller being
    allowed to override it: ONNX Runtime treats all initializers of an IR < 4 model as constants
    (OrtApi ``Graph_GetInitializers``: "For ONNX IR version < 4, all initializers are constant").
    From IR version 4 on, an initializer listed as an input is an overridable default (ONNX
    ``docs/IR.md``, "Graphs"), and the other canonicalization passes do not treat it as a constant.

    This pass makes the IR < 4 meaning explicit: it runs onnx-ir's ``RemoveInitializersFromInputsPass``
    and raises ``model.ir_version`` to 4, the lowest version in which the result is valid. Outputs are
    unchanged. The real case is the ONNX Model Zoo ``mnist-8.onnx`` (IR 3): its 8 weights leave the
    input list and only ``Input3`` remains.

    Models with IR version >= 4 are left alone (``modified`` is False), including their overridable
    initializer inputs. Raises nothing.
    """

    def call(self, model: ir.Model) -> PassResult:
        if model.ir_version >= FIRST_IR_VERSION_WITH_FREE_INITIALIZERS:
            return PassResult(model, modified=False)
        RemoveInitializersFromInputsPass()(model)
        logger.debug(
            "IR version %d -> %d; graph inputs now %s",
            model.ir_version,
            FIRST_IR_VERSION_WITH_FREE_INITIALIZERS,
            [value.name for value in model.graph.inputs],
        )
        model.ir_version = FIRST_IR_VERSION_WITH_FREE_INITIALIZERS
        return PassResult(model, modified=True)
