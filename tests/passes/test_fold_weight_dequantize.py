"""FoldWeightDequantizePass on the real MLPerf Tiny KWS int8 QDQ model and on DequantizeLinear variants."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from canonicalize_support import (
    KWS_FLOAT,
    KWS_QDQ,
    kws_input_int8,
    model_from_proto,
    op_counts,
    run_ort,
    serialized,
)
from edgecomp.errors import ModelError
from edgecomp.passes.canonicalize import FoldWeightDequantizePass

#: ONNX Runtime's graph optimizations turn DequantizeLinear -> Conv -> QuantizeLinear into integer
#: kernels, and it prepacks constant (but not computed) weights, both changing float rounding;
#: comparisons run without either, so the folded (float-weight) model and the original compute the
#: same float graph and must agree bit for bit.
UNOPTIMIZED = {"optimize": False}

#: The KWS float logits before their QuantizeLinear (the int8 softmax output saturates: 127 / -128).
KWS_LOGITS = "Add__33:0"


def test_kws_weight_dequantize_nodes_folded():
    model = ir.load(KWS_QDQ)
    reference = ir.load(KWS_QDQ)
    weight_dequantize = [
        node.outputs[0].name
        for node in model.graph
        if node.op_type == "DequantizeLinear" and all(value.const_value is not None for value in node.inputs)
    ]
    # 10 int8 weights (9 conv per-channel, the dense one per-tensor) and their 10 int32 biases.
    assert len(weight_dequantize) == 20
    assert op_counts(model)["DequantizeLinear"] == 32

    fold = FoldWeightDequantizePass()
    result = fold(model)

    assert result.modified is True
    assert fold.refusals == {}
    assert op_counts(model)["DequantizeLinear"] == 12  # the activation DequantizeLinear nodes stay
    assert op_counts(model)["QuantizeLinear"] == 12
    # Each folded initializer equals ONNX Runtime's DequantizeLinear output, bit for bit.
    ort_values = run_ort(reference, [{"input_1": kws_input_int8()}], extra_outputs=weight_dequantize, **UNOPTIMIZED)[1:]
    for name, expected in zip(weight_dequantize, ort_values):
        folded = model.graph.initializers[name].const_value.numpy()
        assert folded.dtype == np.float32
        np.testing.assert_array_equal(folded, expected, err_msg=name)
    # The real MLPerf sample: same int8 output and bit-identical float logits.
    before = run_ort(reference, [{"input_1": kws_input_int8()}], extra_outputs=[KWS_LOGITS], **UNOPTIMIZED)
    after = run_ort(model, [{"input_1": kws_input_int8()}], extra_outputs=[KWS_LOGITS], **UNOPTIMIZED)
    np.testing.assert_array_equal(before[0], after[0])
    np.testing.assert_array_equal(before[1], after[1])
    assert before[0].argmax() == 5  # "on", as the shared README observes


def _kws_conv_weight() -> tuple[np.ndarray, np.ndarray]:
    """The first KWS conv weight, int8 [64, 1, 10, 4], and its per-output-channel scale [64]."""
    model = ir.load(KWS_QDQ)
    node = next(node for node in model.graph if node.name == "functional_1/conv2d/Conv2D_dequant")
    return node.inputs[0].const_value.numpy(), node.inputs[1].const_value.numpy()


def _dequantize_then_add(
    x: np.ndarray, scale: np.ndarray, zero_point: np.ndarray | None, opset: int = 13, **attributes
) -> ir.Model:
    """Y = DequantizeLinear(x, scale, zero_point) + X, so the dequantized weight feeds a real op."""
    inputs = ["x", "scale"] + (["zero_point"] if zero_point is not None else [])
    initializers = [numpy_helper.from_array(x, "x"), numpy_helper.from_array(scale, "scale")]
    if zero_point is not None:
        initializers.append(numpy_helper.from_array(zero_point, "zero_point"))
    graph = helper.make_graph(
        [
            helper.make_node("DequantizeLinear", inputs, ["weight"], name="dequantize", **attributes),
            helper.make_node("Add", ["weight", "X"], ["Y"], name="add"),
        ],
        "dequantize_then_add",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, list(x.shape))],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, list(x.shape))],
        initializers,
    )
    return model_from_proto(graph, opset)


@pytest.mark.parametrize(
    "variant",
    ["int8, axis 0", "int8, axis -4", "uint8 zero point 128, axis -4", "int8 per-tensor, no zero point"],
)
def test_dequantize_semantics_match_onnx_runtime(variant):
    weight, scale = _kws_conv_weight()
    zero_point, attributes = np.zeros(64, np.int8), {"axis": 0}
    if "-4" in variant:
        attributes = {"axis": -4}
    if variant.startswith("uint8"):
        weight, zero_point = (weight.astype(np.int16) + 128).astype(np.uint8), np.full(64, 128, np.uint8)
    if "per-tensor" in variant:
        scale, zero_point, attributes = scale[:1].reshape(()), None, {}
    model = _dequantize_then_add(weight, scale, zero_point, **attributes)
    reference = _dequantize_then_add(weight, scale, zero_point, **attributes)
    feeds = [{"X": np.zeros(weight.shape, np.float32)}]

    assert FoldWeightDequantizePass()(model).modified is True
    assert op_counts(model) == {"Add": 1}
    (before,) = run_ort(reference, feeds, **UNOPTIMIZED)
    (after,) = run_ort(model, feeds, **UNOPTIMIZED)
    np.testing.assert_array_equal(before, after)  # tolerance 0: same float32 arithmetic as ONNX Runtime
    assert np.abs(after).max() > 0


def test_block_size_is_refused():
    weight = np.arange(-8, 8, dtype=np.int8).reshape(4, 4)
    model = _dequantize_then_add(weight, np.full((4, 2), 0.5, np.float32), None, opset=21, axis=1, block_size=2)
    before = serialized(model)
    fold = FoldWeightDequantizePass()
    assert fold(model).modified is False
    assert serialized(model) == before
    assert fold.refusals == {"dequantize": "block_size is set (blocked quantization is out of scope)"}


def test_axis_out_of_range_raises_model_error():
    # person_detect.tflite's quirk after tf2onnx: a bias DequantizeLinear with axis 3 on a 1-D tensor.
    bias = ir.val("bias", const_value=ir.tensor(np.arange(8, dtype=np.int32)))
    scale = ir.val("bias_scale", const_value=ir.tensor(np.full(8, 0.25, np.float32)))
    x = ir.val("X", ir.DataType.FLOAT, [8])
    dequantize = ir.node("DequantizeLinear", [bias, scale], {"axis": 3}, name="bias_dequantize")
    add = ir.node("Add", [dequantize.outputs[0], x], name="add")
    graph = ir.Graph([x], add.outputs, nodes=[dequantize, add], initializers=[bias, scale], opset_imports={"": 13})
    with pytest.raises(ModelError, match="bias_dequantize.*axis 3 is out of range for x of rank 1"):
        FoldWeightDequantizePass()(ir.Model(graph, ir_version=8))


def test_float_model_left_alone():
    model = ir.load(KWS_FLOAT)
    before = serialized(model)
    assert FoldWeightDequantizePass()(model).modified is False
    assert serialized(model) == before
