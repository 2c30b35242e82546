"""FuseBiasAddPass on real models: mnist-8 (Conv + Add, MatMul + Add) and MLPerf Tiny (MatMul + Add)."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx_ir.passes.common import ShapeInferencePass

from canonicalize_support import (
    AD_DATA,
    AD_FLOAT,
    IC_FLOAT,
    KWS_FLOAT,
    KWS_QDQ,
    VWW_FLOAT,
    add_initializer,
    image_batch,
    kws_input_float,
    load_mnist,
    max_relative_difference,
    mnist_feeds,
    mnist_images,
    op_counts,
    run_ort,
    serialized,
)
from edgecomp.passes.canonicalize import ConstantFoldingPass, FuseBiasAddPass

#: Largest accepted max |before - after| / (output range). Moving a bias into Conv/Gemm only
#: changes where float32 rounding happens (measured: 1.1e-7 mnist-8, 4e-17 KWS, 0 VWW and IC,
#: 1.3e-6 AD).
TOLERANCE = 1e-5

#: ONNX Runtime's own graph optimizations fuse Conv + Add and MatMul + Add too, which would make the
#: "before" run equal to the "after" run by construction; the comparisons run without them (and
#: without weight prepacking, see ``run_ort``).
UNOPTIMIZED = {"optimize": False}


def _mnist_with_constant_weights() -> ir.Model:
    """mnist-8 at opset 13 with its dense weight Reshape folded (MatMul then reads a constant)."""
    model = load_mnist()
    ConstantFoldingPass()(model)
    return model


def test_mnist_bias_adds_fused():
    # CNTK's mnist-8: Conv -> Add(bias [8,1,1]) twice and MatMul -> Add(bias [1,10]).
    model = _mnist_with_constant_weights()
    reference = _mnist_with_constant_weights()
    conv_bias = model.graph.initializers["Parameter6"].const_value.numpy()
    assert op_counts(model)["Add"] == 3

    result = FuseBiasAddPass()(model)

    assert result.modified is True
    counts = op_counts(model)
    assert counts["Add"] == 0 and counts["MatMul"] == 0
    assert counts["Gemm"] == 1 and counts["Conv"] == 2
    first_conv = next(node for node in model.graph if node.name == "Convolution28")
    np.testing.assert_array_equal(first_conv.inputs[2].const_value.numpy(), conv_bias.reshape(8))
    gemm = next(node for node in model.graph if node.op_type == "Gemm")
    assert gemm.name == "Times212"
    assert gemm.inputs[2].name == "Parameter194"  # the [1,10] bias, used as Gemm's C unchanged
    assert [value.name for value in model.graph.outputs] == ["Plus214_Output_0"]
    onnx.checker.check_model(ir.serde.serialize_model(model), full_check=True)
    # 2000 real eval digits: same logits within tolerance and the same 1986/2000 correct digits.
    x, labels = mnist_images("eval")
    (before,) = run_ort(reference, mnist_feeds(x), **UNOPTIMIZED)
    (after,) = run_ort(model, mnist_feeds(x), **UNOPTIMIZED)
    assert max_relative_difference(before, after) <= TOLERANCE
    assert (before.argmax(axis=1) == labels).sum() == (after.argmax(axis=1) == labels).sum() == 1986


def _shape_inferred(path) -> ir.Model:
    model = ir.load(path)
    ShapeInferencePass()(model)  # tf2onnx leaves intermediate shapes out; Gemm needs rank 2
    return model


@pytest.mark.parametrize(
    ("path", "feeds", "adds_left"),
    [
        (KWS_FLOAT, lambda: [{"input_1": kws_input_float()}], 0),
        (VWW_FLOAT, lambda: [{"input_1": image_batch(96, 1 / 255)}], 0),
        (IC_FLOAT, lambda: [{"input_1": image_batch(32, 1.0)}], 3),  # 3 residual Adds stay
    ],
    ids=["kws", "vww", "ic"],
)
def test_mlperf_dense_layer_becomes_gemm(path, feeds, adds_left):
    model = _shape_inferred(path)
    reference = _shape_inferred(path)
    result = FuseBiasAddPass()(model)
    assert result.modified is True
    assert op_counts(model)["Gemm"] == 1
    assert op_counts(model)["MatMul"] == 0
    assert op_counts(model)["Add"] == adds_left
    gemm = next(node for node in model.graph if node.op_type == "Gemm")
    assert gemm.inputs[2].shape.rank() == 1  # a [N] bias broadcast by Gemm like Add did
    (before,) = run_ort(reference, feeds(), **UNOPTIMIZED)
    (after,) = run_ort(model, feeds(), **UNOPTIMIZED)
    assert max_relative_difference(before, after) <= TOLERANCE
    np.testing.assert_array_equal(before.argmax(axis=1), after.argmax(axis=1))


@pytest.mark.skipif(not AD_DATA.exists(), reason="AD log-mel data is only in the shared store")
def test_ad_autoencoder_dense_layers_become_gemm():
    model = _shape_inferred(AD_FLOAT)
    reference = _shape_inferred(AD_FLOAT)
    assert FuseBiasAddPass()(model).modified is True
    assert op_counts(model) == {"Gemm": 10, "Relu": 9}
    assert [value.name for value in model.graph.outputs] == ["Identity"]
    windows = np.fromfile(AD_DATA, np.float32).reshape(40, 640)  # 40 real 5-frame log-mel windows
    (before,) = run_ort(reference, [{"input_1": windows}], **UNOPTIMIZED)
    (after,) = run_ort(model, [{"input_1": windows}], **UNOPTIMIZED)
    assert max_relative_difference(before, after) <= TOLERANCE


def test_unknown_rank_is_refused():
    model = ir.load(KWS_FLOAT)  # no shape inference: the MatMul input's rank is unknown
    fuse = FuseBiasAddPass()
    assert fuse(model).modified is False
    assert list(fuse.refusals.values()) == ["rank of MatMul input A is unknown (run shape inference first)"]


def test_constant_not_along_channels_is_refused():
    # A [28] constant broadcasts along the Conv output's last (width) axis, not along channels.
    model = _mnist_with_constant_weights()
    add = next(node for node in model.graph if node.name == "Plus30")
    add.replace_input_with(1, add_initializer(model, "width_bias", np.ones(28, np.float32)))
    fuse = FuseBiasAddPass()
    fuse(model)
    assert fuse.refusals["Plus30"] == "constant shape [28] does not broadcast to [1, 8, 1, ...]"
    assert add.graph is model.graph


def test_weights_still_in_graph_inputs_are_not_fused():
    # IR 3 mnist-8 without RemoveLegacyInitializerInputsPass: its biases are graph inputs, which
    # the passes do not treat as constants; the model is left unchanged.
    model = load_mnist(remove_legacy_inputs=False)
    before = serialized(model)
    assert FuseBiasAddPass()(model).modified is False
    assert serialized(model) == before


def test_qdq_model_left_alone():
    # kws int8 QDQ: the MatMul reads DequantizeLinear outputs, not constants.
    model = ir.load(KWS_QDQ)
    ShapeInferencePass()(model)
    before = serialized(model)
    assert FuseBiasAddPass()(model).modified is False
    assert serialized(model) == before
