"""ConstantFoldingPass on real models (mnist-8, MLPerf Tiny) and on its guards."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from canonicalize_support import (
    AD_FLOAT,
    IC_FLOAT,
    KWS_QDQ,
    VWW_FLOAT,
    load_mnist,
    mnist_feeds,
    mnist_images,
    model_from_proto,
    op_counts,
    run_ort,
    serialized,
)
from edgecomp.passes.canonicalize import ConstantFoldingPass


def test_mnist_dense_weight_reshape_is_folded():
    # mnist-8 reshapes its dense weight Parameter193 [16,4,4,10] to [256,10] at run time.
    model = load_mnist()
    reference = load_mnist()
    weight = model.graph.initializers["Parameter193"].const_value.numpy()
    assert op_counts(model)["Reshape"] == 2

    result = ConstantFoldingPass()(model)

    assert result.modified is True
    assert op_counts(model)["Reshape"] == 1  # the activation Reshape stays
    folded = model.graph.initializers["Parameter193_reshape1"].const_value.numpy()
    assert folded.dtype == np.float32
    np.testing.assert_array_equal(folded, weight.reshape(256, 10))
    # Tolerance 0: the fold only moves data. 2000 real eval digits.
    x, _ = mnist_images("eval")
    (before,) = run_ort(reference, mnist_feeds(x))
    (after,) = run_ort(model, mnist_feeds(x))
    np.testing.assert_array_equal(before, after)


def test_initializer_graph_inputs_are_not_constants():
    # IR >= 4: an initializer that is also a graph input is an overridable default, not a constant.
    model = load_mnist(remove_legacy_inputs=False)
    model.ir_version = 7
    before = serialized(model)
    result = ConstantFoldingPass()(model)
    assert result.modified is False
    assert serialized(model) == before


def test_quantization_ops_are_not_folded():
    # kws int8 QDQ: 20 DequantizeLinear nodes have only constant inputs (weights and biases); they
    # are FoldWeightDequantizePass's business, so constant folding leaves the model unchanged.
    model = ir.load(KWS_QDQ)
    before = serialized(model)
    constant_pass = ConstantFoldingPass()
    result = constant_pass(model)
    assert result.modified is False
    assert serialized(model) == before
    assert op_counts(model)["DequantizeLinear"] == 32
    assert len(constant_pass.refusals) == 20
    assert set(constant_pass.refusals.values()) == {"quantization op (see FoldWeightDequantizePass)"}


@pytest.mark.parametrize("path", [VWW_FLOAT, IC_FLOAT, AD_FLOAT], ids=["vww", "ic", "ad"])
def test_models_without_constant_subgraphs_left_alone(path):
    model = ir.load(path)
    before = serialized(model)
    result = ConstantFoldingPass()(model)
    assert result.modified is False
    assert serialized(model) == before


def _model_with_constant_producer(op_type: str, constant_input: np.ndarray, **attributes) -> ir.Model:
    """Y = Add(op_type(constant), X): a constant-only node whose output feeds a real computation."""
    x = helper.make_tensor_value_info("X", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["rows", "columns"])
    graph = helper.make_graph(
        [
            helper.make_node(op_type, ["c"], ["produced"], name="producer", **attributes),
            helper.make_node("Add", ["produced", "X"], ["Y"], name="add"),
        ],
        "guard",
        [x],
        [y],
        [numpy_helper.from_array(constant_input, "c")],
    )
    return model_from_proto(graph, 13)


def test_output_size_limit():
    # ConstantOfShape([1001, 1000]) would make a 1,001,000-element initializer.
    shape = np.array([1001, 1000], np.int64)
    model = _model_with_constant_producer("ConstantOfShape", shape)
    before = serialized(model)
    limited = ConstantFoldingPass()
    assert limited(model).modified is False
    assert serialized(model) == before
    assert limited.refusals["producer"] == "output 'produced' has 1001000 elements > 1000000"

    assert ConstantFoldingPass(max_output_elements=2_000_000)(model).modified is True
    assert op_counts(model)["ConstantOfShape"] == 0
    assert model.graph.initializers["produced"].const_value.numpy().shape == (1001, 1000)


def test_random_ops_are_not_folded():
    model = _model_with_constant_producer("RandomUniformLike", np.zeros((2, 2), np.float32), seed=1.0)
    before = serialized(model)
    random_pass = ConstantFoldingPass()
    assert random_pass(model).modified is False
    assert serialized(model) == before
    assert random_pass.refusals == {"producer": "random op"}


def test_constant_nodes_count_as_constants():
    # The same fold as in mnist-8, but with the shape given by a Constant node instead of an initializer.
    model = load_mnist()
    reference = load_mnist()
    shape_value = model.graph.initializers["Parameter193_reshape1_shape"]
    constant = ir.node("Constant", [], {"value": ir.tensor(np.array([256, 10], np.int64))}, name="shape_constant")
    model.graph.insert_before(next(iter(model.graph)), constant)
    shape_value.replace_all_uses_with(constant.outputs[0])

    assert ConstantFoldingPass()(model).modified is True
    assert op_counts(model)["Reshape"] == 1
    x, _ = mnist_images("eval", 200)
    np.testing.assert_array_equal(run_ort(reference, mnist_feeds(x))[0], run_ort(model, mnist_feeds(x))[0])
    onnx.checker.check_model(ir.serde.serialize_model(model), full_check=True)
