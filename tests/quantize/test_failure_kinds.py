"""Known failure kinds of INT8 quantizers, each reproduced by a small model with mnist-8's real
weights and real digits, must come out right."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.helper as oh
import onnx.numpy_helper as nh
import pytest

from realdata import MNIST_CALIB, MNIST_MODEL

from edgecomp.ir.load import load_model, to_bytes
from edgecomp.ir.run import make_session
from edgecomp.passes.base import PassManager
from edgecomp.passes.canonicalize import canonicalization_passes
from edgecomp.passes.quantize.metrics import sqnr_db
from edgecomp.passes.quantize.naive import quantize_naive

WEIGHTS = {t.name: nh.to_array(t) for t in onnx.load(MNIST_MODEL).graph.initializer}
CONV1 = WEIGHTS["Parameter5"].astype(np.float32)  # [8,1,5,5]
CONV2 = WEIGHTS["Parameter87"].astype(np.float32)  # [16,8,5,5]
DENSE = WEIGHTS["Parameter193"].reshape(256, 10).astype(np.float32)
DIGITS = np.load(MNIST_CALIB)["x"][:64].astype(np.float32)


def build(tmp_path, nodes, inputs, outputs, initializers) -> tuple:
    graph = oh.make_graph(nodes, "case", inputs, outputs, [nh.from_array(array, name) for name, array in initializers.items()])
    path = tmp_path / "case.onnx"
    onnx.save(oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)]), path)
    model = PassManager(canonicalization_passes(fold_weight_dequantize=False))(load_model(path)).model
    return model, to_bytes(model)


def quantize(model, feeds):
    plan = quantize_naive(model, ({name: array[i : i + 1] for name, array in feeds.items()} for i in range(len(next(iter(feeds.values()))))), "minmax")
    return plan, to_bytes(model)


def run(model_bytes, feeds):
    session = make_session(model_bytes)
    return [np.concatenate(parts) for parts in zip(*(session.run(None, {k: v[i : i + 1] for k, v in feeds.items()}) for i in range(len(next(iter(feeds.values()))))))]


def dense_inputs():
    return {"x": (DIGITS[:, 0, 6:22, 6:22].reshape(-1, 256) / 255.0).astype(np.float32)}


def vt(name, shape):
    return oh.make_tensor_value_info(name, onnx.TensorProto.FLOAT, shape)


def test_softmax_near_one_saturates_instead_of_wrapping(tmp_path):
    model, float_bytes = build(tmp_path, [oh.make_node("Gemm", ["x", "w"], ["logits"], name="dense"), oh.make_node("Softmax", ["logits"], ["p"], name="softmax")],
                               [vt("x", [1, 256])], [vt("p", [1, 10])], {"w": DENSE * 40})  # sharp: max p = 1.0
    feeds = dense_inputs()
    expected = run(float_bytes, feeds)[0]
    assert expected.max() > 0.999
    plan, quantized = quantize(model, feeds)
    assert plan.tensor("p").scale == (1 / 256,) and plan.tensor("p").zero_point == (-128,)
    actual = run(quantized, feeds)[0]
    top = expected.argmax(axis=1)
    rows = np.arange(len(top))
    confident = expected[rows, top] > 0.999
    assert confident.sum() >= 40  # most real digits give p(top) ~ 1.0 with these sharpened weights
    assert np.all(actual[rows, top][confident] >= 0.99)  # saturates at 127 -> 0.996; a wrap would give -128 -> 0.0
    assert np.mean(actual.argmax(axis=1) == top) >= 0.95


def test_final_gemm_and_every_graph_output_are_quantized(tmp_path):
    model, _ = build(tmp_path, [oh.make_node("Gemm", ["x", "w"], ["logits"], name="dense"), oh.make_node("Relu", ["logits"], ["positive"], name="relu")],
                     [vt("x", [1, 256])], [vt("logits", [1, 10]), vt("positive", [1, 10])], {"w": DENSE})
    plan, _ = quantize(model, dense_inputs())
    for output in model.graph.outputs:
        assert output.producer().op_type == "DequantizeLinear", output.name
    assert plan.tensor("logits").scale[0] > 0 and plan.tensor("positive").zero_point == (-128,)


def test_single_input_concat(tmp_path):
    model, float_bytes = build(tmp_path, [oh.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[2, 2, 2, 2]), oh.make_node("Concat", ["c"], ["y"], name="concat", axis=1)],
                               [vt("x", [1, 1, 28, 28])], [vt("y", [1, 8, 28, 28])], {"w": CONV1})
    feeds = {"x": DIGITS}
    plan, quantized = quantize(model, feeds)
    assert {n.name: n.precision for n in plan.nodes}["concat"] == "int8"
    assert sqnr_db(run(float_bytes, feeds)[0], run(quantized, feeds)[0]) > 30


def test_conv_transpose_weights_per_channel_on_axis_1(tmp_path):
    nodes = [oh.make_node("Conv", ["x", "w1"], ["a"], name="conv1", pads=[2, 2, 2, 2]), oh.make_node("Relu", ["a"], ["b"], name="relu1"),
             oh.make_node("Conv", ["b", "w2"], ["c"], name="conv2", pads=[2, 2, 2, 2]),
             oh.make_node("ConvTranspose", ["c", "w2"], ["y"], name="deconv")]  # ConvTranspose weight [C_in=16, C_out=8, 5, 5]
    model, float_bytes = build(tmp_path, nodes, [vt("x", [1, 1, 28, 28])], [vt("y", [1, 8, 32, 32])], {"w1": CONV1, "w2": CONV2})
    feeds = {"x": DIGITS[:16]}
    plan, quantized = quantize(model, feeds)
    deconv = next(n for n in model.graph if n.op_type == "ConvTranspose")
    weight_dq = deconv.inputs[1].producer()
    assert weight_dq.attributes.get_int("axis") == 1
    assert weight_dq.inputs[1].const_value.numpy().shape == (8,)  # one scale per output channel
    np.testing.assert_allclose(weight_dq.inputs[1].const_value.numpy(), np.abs(CONV2).max(axis=(0, 2, 3)) / 127, rtol=1e-6)
    assert sqnr_db(run(float_bytes, feeds)[0], run(quantized, feeds)[0]) > 25


@pytest.mark.parametrize("op, scale, zero_point", [("Sigmoid", 1 / 256, -128), ("Tanh", 1 / 128, 0), ("Softmax", 1 / 256, -128)])
def test_fixed_output_scales(tmp_path, op, scale, zero_point):
    model, float_bytes = build(tmp_path, [oh.make_node("Gemm", ["x", "w"], ["logits"], name="dense"), oh.make_node(op, ["logits"], ["y"], name="activation")],
                               [vt("x", [1, 256])], [vt("y", [1, 10])], {"w": DENSE})
    feeds = dense_inputs()
    plan, quantized = quantize(model, feeds)
    assert plan.tensor("y").scale == (scale,) and plan.tensor("y").zero_point == (zero_point,) and plan.tensor("y").method == "fixed"
    assert sqnr_db(run(float_bytes, feeds)[0], run(quantized, feeds)[0]) > 25


def test_minus_infinity_padding_before_maxpool(tmp_path):
    nodes = [oh.make_node("Conv", ["x", "w"], ["c"], name="conv"),
             oh.make_node("Pad", ["c", "pads", "neg_inf"], ["padded"], name="pad", mode="constant"),
             oh.make_node("MaxPool", ["padded"], ["y"], name="pool", kernel_shape=[3, 3], strides=[2, 2])]
    initializers = {"w": CONV1, "pads": np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64), "neg_inf": np.array(-np.inf, np.float32)}
    model, float_bytes = build(tmp_path, nodes, [vt("x", [1, 1, 28, 28])], [vt("y", [1, 8, 12, 12])], initializers)
    feeds = {"x": DIGITS}
    plan, quantized = quantize(model, feeds)
    assert all(np.isfinite(t.scale).all() and min(t.scale) > 0 for t in plan.tensors)
    expected, actual = run(float_bytes, feeds)[0], run(quantized, feeds)[0]
    assert np.isfinite(actual).all() and sqnr_db(expected, actual) > 30


def test_zero_width_range_gives_a_valid_scale(tmp_path):
    nodes = [oh.make_node("Mul", ["x", "zero"], ["silent"], name="mute"), oh.make_node("Add", ["silent", "x"], ["y"], name="add")]
    model, float_bytes = build(tmp_path, nodes, [vt("x", [1, 256])], [vt("y", [1, 256])], {"zero": np.zeros((1, 256), np.float32)})
    feeds = dense_inputs()
    plan, quantized = quantize(model, feeds)
    silent = plan.tensor("silent")
    assert silent.range == (0.0, 0.0) and silent.scale[0] > 0 and np.isfinite(silent.scale[0])
    assert sqnr_db(run(float_bytes, feeds)[0], run(quantized, feeds)[0]) > 35


def test_gemm_with_a_full_c_matrix_keeps_it_float(tmp_path):
    """Gemm's C of shape [M, N] is an operand, not a per-channel bias: it must not become an int32 bias."""
    full_c = np.tile(WEIGHTS["Parameter194"].reshape(1, 10).astype(np.float32), (1, 1)) * np.ones((1, 10), np.float32)
    model, float_bytes = build(tmp_path, [oh.make_node("Gemm", ["x", "w", "c"], ["y"], name="dense", beta=0.5)],
                               [vt("x", [1, 256])], [vt("y", [1, 10])], {"w": DENSE, "c": np.vstack([full_c])})
    feeds = dense_inputs()
    plan, quantized = quantize(model, feeds)
    assert sqnr_db(run(float_bytes, feeds)[0], run(quantized, feeds)[0]) > 30
    full = np.ones((4, 10), np.float32)  # [M, N] with M = 4: the case that used to crash
    model, _ = build(tmp_path, [oh.make_node("Gemm", ["x", "w", "c"], ["y"], name="dense")], [vt("x", [4, 256])], [vt("y", [4, 10])], {"w": DENSE, "c": full})
    batch = {"x": dense_inputs()["x"][:4][None]}  # one calibration sample of 4 rows
    plan = quantize_naive(model, iter([{"x": batch["x"][0]}]), "minmax")
    assert not any(t.role == "bias" for t in plan.tensors)
