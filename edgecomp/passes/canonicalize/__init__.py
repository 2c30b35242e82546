"""Canonicalization: the passes that bring any imported ONNX model into one plain float form.

After these passes a model has: no weights hidden in IR < 4 graph inputs, no ``Constant`` nodes,
nothing left that constants alone determine, no Identity/inference Dropout, BatchNormalization
folded into Conv/ConvTranspose/Gemm, constant bias Adds folded into Conv biases or Gemm, whole-input
AveragePools as GlobalAveragePool, optionally no DequantizeLinear on constant weights, no unused
nodes or initializers, and nodes in topological order. Every pass keeps ONNX Runtime outputs equal (see each pass's tolerance in its test).

Library passes (onnx-ir ``onnx_ir.passes.common``) are used wherever they exist; the modules here
add only what onnx-ir lacks, one pass per module. Our passes rewrite the main graph only (not
If/Loop/Scan bodies or model-local functions). Each records why it left a candidate node in its
``refusals`` attribute (node name -> reason) and logs it at debug level.
"""

from __future__ import annotations

from onnx_ir.passes.common import (
    IdentityEliminationPass,
    LiftConstantsToInitializersPass,
    RemoveUnusedNodesPass,
    ShapeInferencePass,
    TopologicalSortPass,
)

from edgecomp.passes.base import PassBase
from edgecomp.passes.canonicalize.constant_folding import ConstantFoldingPass
from edgecomp.passes.canonicalize.dropout_to_identity import DropoutToIdentityPass
from edgecomp.passes.canonicalize.fold_batch_norm import FoldBatchNormPass
from edgecomp.passes.canonicalize.fold_weight_dequantize import FoldWeightDequantizePass
from edgecomp.passes.canonicalize.fuse_bias_add import FuseBiasAddPass
from edgecomp.passes.canonicalize.global_average_pool import WholeWindowAveragePoolPass
from edgecomp.passes.canonicalize.legacy_initializer_inputs import RemoveLegacyInitializerInputsPass

__all__ = [
    "ConstantFoldingPass",
    "DropoutToIdentityPass",
    "FoldBatchNormPass",
    "FoldWeightDequantizePass",
    "FuseBiasAddPass",
    "RemoveLegacyInitializerInputsPass",
    "WholeWindowAveragePoolPass",
    "canonicalization_passes",
]


def canonicalization_passes(*, fold_weight_dequantize: bool) -> list[PassBase]:
    """Returns the standard canonicalization pipeline, new pass objects in run order.

    1. ``RemoveLegacyInitializerInputsPass``: IR < 4 weights listed as graph inputs become plain
       initializers (they were constants), so the passes below see them as constants.
    2. ``LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0)`` (onnx-ir): every
       ``Constant`` node becomes an initializer, one representation for constants.
    3. ``FoldWeightDequantizePass``, only when ``fold_weight_dequantize``: constant weights of a
       QDQ model become float. It runs before constant folding so that ops applied to the
       dequantized weight (Transpose, Reshape) fold too, and before the fusions below so that they
       see constant weights.
    4. ``ConstantFoldingPass``: e.g. mnist-8's ``Reshape`` of its dense weight.
    5. ``DropoutToIdentityPass`` then ``IdentityEliminationPass`` (onnx-ir).
    6. ``ShapeInferencePass`` (onnx-ir): ranks for the MatMul + Add -> Gemm check (tf2onnx files
       leave intermediate shapes out). It leaves the model unchanged if inference fails.
    7. ``FuseBiasAddPass`` before ``FoldBatchNormPass``: Conv -> Add(bias) -> BatchNormalization
       becomes Conv(bias) -> BatchNormalization, which then folds; MatMul -> Add -> BatchNormalization
       becomes Gemm -> BatchNormalization, which folds too.
    8. ``WholeWindowAveragePoolPass``: an AveragePool over its whole input (ResNet-8's 8x8 pool)
       becomes GlobalAveragePool, so that in int8 it gets its own output parameters (TFLite MEAN).
    9. ``RemoveUnusedNodesPass`` (unused nodes and initializers, e.g. the int8 weights replaced in
       step 3) and ``TopologicalSortPass`` (onnx-ir).

    Args:
        fold_weight_dequantize: True to fold DequantizeLinear of constant weights into float
            initializers (re-quantize from float); False to keep a QAT/pre-quantized model's weight
            scales as they are.

    Returns:
        a list of ``onnx_ir.passes.PassBase`` objects for ``edgecomp.passes.base.PassManager``.
    """
    passes: list[PassBase] = [
        RemoveLegacyInitializerInputsPass(),
        LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0),
    ]
    if fold_weight_dequantize:
        passes.append(FoldWeightDequantizePass())
    passes += [
        ConstantFoldingPass(),
        DropoutToIdentityPass(),
        IdentityEliminationPass(),
        ShapeInferencePass(),
        FuseBiasAddPass(),
        FoldBatchNormPass(),
        WholeWindowAveragePoolPass(),
        RemoveUnusedNodesPass(),
        TopologicalSortPass(),
    ]
    return passes
