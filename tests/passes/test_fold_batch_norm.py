"""FoldBatchNormPass on test models built from mnist-8's real weights and real activations.

None of the real models keeps a BatchNormalization (TFLite converters fold them, CNTK's MNIST has
none), so each test model takes real mnist-8 weights (Conv: Parameter5/Parameter87, ConvTranspose:
Parameter87, Gemm: Parameter193/Parameter194) and appends a BatchNormalization whose mean and
variance are the per-channel statistics of that layer's real output on the 1000 MNIST calibration
digits. gamma and beta are set by the test (gamma = linspace(0.5, 2, C), beta = linspace(-1, 1, C)
times the channel's standard deviation) so that every channel is rescaled and shifted differently.
Outputs are compared on the 2000 MNIST evaluation digits (disjoint from the calibration digits).
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from canonicalize_support import (
    VWW_FLOAT,
    add_initializer,
    insert_after,
    load_mnist,
    max_relative_difference,
    mnist_feeds,
    mnist_images,
    model_from_proto,
    op_counts,
    run_ort,
    serialized,
)
from edgecomp.passes.canonicalize import FoldBatchNormPass

#: Largest accepted max |before - after| / (output range): float32 rounding of the folded weights
#: (measured: 1.2e-7 mnist-8 Conv, 4.4e-8 ConvTranspose, 5.4e-8 Gemm; a ConvTranspose fold with
#: the two channel groups swapped gives 5.8e-3).
TOLERANCE = 1e-5


def _statistics(activations: np.ndarray) -> list[np.ndarray]:
    """[gamma, beta, mean, var] float32 [C] for activations [N, C, ...] (channel axis 1)."""
    axes = tuple(i for i in range(activations.ndim) if i != 1)
    mean = activations.mean(axis=axes, dtype=np.float64)
    variance = activations.var(axis=axes, dtype=np.float64)
    channels = mean.size
    gamma = np.linspace(0.5, 2.0, channels)
    beta = np.linspace(-1.0, 1.0, channels) * np.sqrt(variance)
    return [array.astype(np.float32) for array in (gamma, beta, mean, variance)]


def _mnist_activations(names: list[str], split: str) -> list[np.ndarray]:
    x, _ = mnist_images(split)
    return run_ort(load_mnist(), mnist_feeds(x), extra_outputs=names)[1:]


def _assert_same_outputs(reference: ir.Model, folded: ir.Model, feeds: list[dict]) -> None:
    # Without ONNX Runtime's graph optimizations, which fold Conv + BatchNormalization themselves.
    (before,) = run_ort(reference, feeds, optimize=False)
    (after,) = run_ort(folded, feeds, optimize=False)
    assert max_relative_difference(before, after) <= TOLERANCE
    if before.ndim == 2:  # logits: the predicted class must not change either
        np.testing.assert_array_equal(before.argmax(axis=1), after.argmax(axis=1))


def _mnist_with_batch_norms() -> ir.Model:
    """mnist-8 with a BatchNormalization after each Conv (before its bias Add)."""
    conv_outputs = ["Convolution28_Output_0", "Convolution110_Output_0"]
    model = load_mnist()
    for name, activations in zip(conv_outputs, _mnist_activations(conv_outputs, "calib")):
        parameters = [
            add_initializer(model, f"{name}_bn_{kind}", array)
            for kind, array in zip(("scale", "B", "mean", "var"), _statistics(activations))
        ]
        insert_after(model, name, "BatchNormalization", parameters, {"epsilon": 1e-3}, name=f"{name}_bn")
    return model


def test_conv_batch_norm_folds_in_mnist():
    model = _mnist_with_batch_norms()
    reference = _mnist_with_batch_norms()
    old_weight = model.graph.initializers["Parameter5"].const_value.numpy()
    gamma, variance = (
        model.graph.initializers[f"Convolution28_Output_0_bn_{kind}"].const_value.numpy() for kind in ("scale", "var")
    )
    assert op_counts(model)["BatchNormalization"] == 2

    result = FoldBatchNormPass()(model)

    assert result.modified is True
    assert op_counts(model)["BatchNormalization"] == 0
    assert op_counts(model)["Conv"] == 2
    conv = next(node for node in model.graph if node.name == "Convolution28")
    assert len(conv.inputs) == 3  # the fold gave the bias-less Conv a bias
    # w' = w * gamma / sqrt(var + eps), per output channel (axis 0 of a Conv weight).
    expected = old_weight * (gamma / np.sqrt(variance.astype(np.float64) + 1e-3))[:, None, None, None]
    np.testing.assert_allclose(conv.inputs[1].const_value.numpy(), expected, rtol=1e-6)
    onnx.checker.check_model(ir.serde.serialize_model(model), full_check=True)
    x, _ = mnist_images("eval")
    _assert_same_outputs(reference, model, mnist_feeds(x))


def _layer_then_batch_norm(
    layer: onnx.NodeProto, initializers: list, x_shape: list, calibration_input: np.ndarray
) -> ir.Model:
    """X -> layer -> BatchNormalization -> Y, the statistics from the layer's output on ``calibration_input``."""
    x = helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", *x_shape])
    output_dims = [f"d{i}" for i in range(len(x_shape) + 1)]  # the layer keeps X's rank
    layer_output = helper.make_tensor_value_info("layer_output", TensorProto.FLOAT, output_dims)
    without_bn = model_from_proto(helper.make_graph([layer], "layer", [x], [layer_output], initializers), 15)
    (activations,) = run_ort(without_bn, [{"X": calibration_input}])
    statistics = [
        numpy_helper.from_array(array, name)
        for array, name in zip(_statistics(activations), ("gamma", "beta", "mean", "var"))
    ]
    batch_norm = helper.make_node(
        "BatchNormalization", ["layer_output", "gamma", "beta", "mean", "var"], ["Y"], name="bn", epsilon=1e-5
    )
    y = helper.make_tensor_value_info("Y", TensorProto.FLOAT, output_dims)
    return model_from_proto(helper.make_graph([layer, batch_norm], "layer_bn", [x], [y], initializers + statistics), 15)


def _mnist_initializer(name: str) -> np.ndarray:
    return load_mnist().graph.initializers[name].const_value.numpy()


def test_grouped_conv_transpose_batch_norm_folds():
    # ConvTranspose weight [C_in=16, C_out/group=8, 5, 5] with group=2: 16 output channels, the
    # scale of output channel g*8+j lands on weight[g*8:(g+1)*8, j].
    (calibration,) = _mnist_activations(["Pooling160_Output_0"], "calib")
    (evaluation,) = _mnist_activations(["Pooling160_Output_0"], "eval")
    layer = helper.make_node("ConvTranspose", ["X", "W"], ["layer_output"], name="deconv", group=2)
    weights = [numpy_helper.from_array(_mnist_initializer("Parameter87"), "W")]
    model = _layer_then_batch_norm(layer, weights, [16, 4, 4], calibration)
    reference = _layer_then_batch_norm(layer, weights, [16, 4, 4], calibration)

    assert FoldBatchNormPass()(model).modified is True
    assert op_counts(model) == {"ConvTranspose": 1}
    _assert_same_outputs(reference, model, [{"X": evaluation}])


@pytest.mark.parametrize("trans_b", [0, 1])
def test_gemm_batch_norm_folds(trans_b):
    # Gemm Y = alpha * X B + beta * C with mnist-8's dense weight [256, 10] and bias [1, 10];
    # alpha = 0.5 and beta = 2 check that the fold keeps alpha and moves beta into the new C.
    (calibration,) = _mnist_activations(["Pooling160_Output_0_reshape0"], "calib")
    (evaluation,) = _mnist_activations(["Pooling160_Output_0_reshape0"], "eval")
    weight = _mnist_initializer("Parameter193").reshape(256, 10)
    weight = weight.T.copy() if trans_b else weight
    initializers = [
        numpy_helper.from_array(weight, "B"),
        numpy_helper.from_array(_mnist_initializer("Parameter194"), "C"),
    ]
    layer = helper.make_node(
        "Gemm", ["X", "B", "C"], ["layer_output"], name="dense", alpha=0.5, beta=2.0, transB=trans_b
    )
    model = _layer_then_batch_norm(layer, initializers, [256], calibration)
    reference = _layer_then_batch_norm(layer, initializers, [256], calibration)

    assert FoldBatchNormPass()(model).modified is True
    assert op_counts(model) == {"Gemm": 1}
    gemm = next(iter(model.graph))
    assert gemm.attributes.get_float("beta") == 1.0
    assert gemm.attributes.get_float("alpha") == 0.5
    _assert_same_outputs(reference, model, [{"X": evaluation}])


def test_conv_output_with_second_consumer_is_refused():
    model = _mnist_with_batch_norms()
    conv_output = next(node for node in model.graph if node.name == "Convolution28").outputs[0]
    model.graph.outputs.append(conv_output)  # the un-normalized Conv output is needed too
    before = serialized(model)
    fold = FoldBatchNormPass()
    assert fold(model).modified is True  # the second BatchNormalization still folds
    assert fold.refusals == {"Convolution28_Output_0_bn": "Conv output has another consumer or is a graph output"}
    assert op_counts(model)["BatchNormalization"] == 1
    assert serialized(model) != before


def test_training_mode_batch_norm_is_refused():
    model = _mnist_with_batch_norms()
    for node in model.graph:
        if node.op_type == "BatchNormalization":
            node.attributes["training_mode"] = ir.AttrInt64("training_mode", 1)
    before = serialized(model)
    fold = FoldBatchNormPass()
    assert fold(model).modified is False
    assert serialized(model) == before
    assert set(fold.refusals.values()) == {"training_mode is 1"}


def test_model_without_batch_norm_left_alone():
    model = ir.load(VWW_FLOAT)
    before = serialized(model)
    assert FoldBatchNormPass()(model).modified is False
    assert serialized(model) == before
