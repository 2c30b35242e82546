"""canonicalization_passes(): the pipeline's order and its result on real models."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from canonicalize_support import (
    IC_FLOAT,
    KWS_QDQ,
    VWW_FLOAT,
    image_batch,
    kws_input_int8,
    load_mnist,
    max_relative_difference,
    mnist_feeds,
    mnist_images,
    op_counts,
    run_ort,
)
from edgecomp.passes.base import PassManager
from edgecomp.passes.canonicalize import canonicalization_passes

#: Largest accepted max |before - after| / (output range) after the whole pipeline.
TOLERANCE = 1e-5


def _names(passes) -> list[str]:
    return [type(pass_).__name__ for pass_ in passes]


def test_pass_order():
    common_tail = [
        "ConstantFoldingPass",
        "DropoutToIdentityPass",
        "IdentityEliminationPass",
        "ShapeInferencePass",
        "FuseBiasAddPass",
        "FoldBatchNormPass",
        "WholeWindowAveragePoolPass",
        "RemoveUnusedNodesPass",
        "TopologicalSortPass",
    ]
    head = ["RemoveLegacyInitializerInputsPass", "LiftConstantsToInitializersPass"]
    assert _names(canonicalization_passes(fold_weight_dequantize=False)) == head + common_tail
    with_fold = head + ["FoldWeightDequantizePass"] + common_tail
    assert _names(canonicalization_passes(fold_weight_dequantize=True)) == with_fold


def test_each_call_returns_new_pass_objects():
    first = canonicalization_passes(fold_weight_dequantize=True)
    second = canonicalization_passes(fold_weight_dequantize=True)
    assert not {id(pass_) for pass_ in first} & {id(pass_) for pass_ in second}


def test_mnist_pipeline():
    model = load_mnist(remove_legacy_inputs=False)  # as loaded: IR 3, opset 13 after conversion
    reference = load_mnist(remove_legacy_inputs=False)

    result = PassManager(canonicalization_passes(fold_weight_dequantize=False))(model)

    assert result.modified is True
    assert op_counts(model) == {"Conv": 2, "Relu": 2, "MaxPool": 2, "Reshape": 1, "Gemm": 1}
    assert [value.name for value in model.graph.inputs] == ["Input3"]
    assert [value.name for value in model.graph.outputs] == ["Plus214_Output_0"]
    # The unused originals (biases Parameter6/88, dense weight Parameter193 and its shape) are gone.
    assert set(model.graph.initializers) == {
        "Parameter5", "Parameter87", "Plus30_folded_bias", "Plus112_folded_bias",  # Conv W, B
        "Parameter193_reshape1", "Parameter194",  # Gemm B (folded Reshape), C
        "Pooling160_Output_0_reshape0_shape",  # the activation Reshape's shape
    }
    onnx.checker.check_model(ir.serde.serialize_model(model), full_check=True)
    x, labels = mnist_images("eval")
    (before,) = run_ort(reference, mnist_feeds(x), optimize=False)
    (after,) = run_ort(model, mnist_feeds(x), optimize=False)
    assert max_relative_difference(before, after) <= TOLERANCE
    assert (after.argmax(axis=1) == labels).sum() == 1986  # 99.30 %, as the original


@pytest.mark.parametrize("fold_weight_dequantize", [False, True])
def test_kws_qdq_pipeline(fold_weight_dequantize):
    model = ir.load(KWS_QDQ)
    reference = ir.load(KWS_QDQ)

    PassManager(canonicalization_passes(fold_weight_dequantize=fold_weight_dequantize))(model)

    counts = op_counts(model)
    assert counts["QuantizeLinear"] == 12
    if fold_weight_dequantize:
        # Weights and biases are float now, so the dense MatMul + Add became a Gemm.
        assert counts["DequantizeLinear"] == 12 and counts["Gemm"] == 1 and counts["MatMul"] == 0
    else:
        # QAT import: every weight DequantizeLinear and its scales are kept.
        assert counts["DequantizeLinear"] == 32 and counts["MatMul"] == 1 and counts["Gemm"] == 0
    feeds = [{"input_1": kws_input_int8()}]
    (before,) = run_ort(reference, feeds, optimize=False)
    (after,) = run_ort(model, feeds, optimize=False)
    np.testing.assert_array_equal(before, after)  # int8 output; class 5 "on"
    assert after.argmax() == 5


def test_pipeline_is_deterministic():
    # Same input model -> same output bytes (names come from the model, never from time or chance).
    outputs = []
    for _ in range(2):
        model = ir.load(KWS_QDQ)
        PassManager(canonicalization_passes(fold_weight_dequantize=True))(model)
        outputs.append(ir.serde.serialize_model(model).SerializeToString(deterministic=True))
    assert outputs[0] == outputs[1]


@pytest.mark.parametrize(
    ("path", "inputs"),
    [(VWW_FLOAT, lambda: image_batch(96, 1 / 255)), (IC_FLOAT, lambda: image_batch(32, 1.0))],
    ids=["vww", "ic"],
)
def test_float_image_models_pipeline(path, inputs):
    model = ir.load(path)
    reference = ir.load(path)
    PassManager(canonicalization_passes(fold_weight_dequantize=True))(model)
    assert op_counts(model)["Gemm"] == 1
    onnx.checker.check_model(ir.serde.serialize_model(model), full_check=True)
    feeds = [{"input_1": inputs()}]
    (before,) = run_ort(reference, feeds, optimize=False)
    (after,) = run_ort(model, feeds, optimize=False)
    assert max_relative_difference(before, after) <= TOLERANCE
    np.testing.assert_array_equal(before.argmax(axis=1), after.argmax(axis=1))
