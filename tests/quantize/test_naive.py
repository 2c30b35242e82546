"""Naive INT8 PTQ on the real MNIST model: QDQ structure, the plan's numbers, and accuracy."""

from __future__ import annotations

import json

import numpy as np
import onnx_ir as ir
import pytest

from realdata import MNIST_CALIB, MNIST_MODEL

from edgecomp.ir.load import load_model, to_bytes
from edgecomp.ir.run import make_session
from edgecomp.passes.base import PassManager
from edgecomp.passes.canonicalize import canonicalization_passes
from edgecomp.passes.quantize.naive import quantize_naive


def canonical_mnist() -> ir.Model:
    return PassManager(canonicalization_passes(fold_weight_dequantize=False))(load_model(MNIST_MODEL)).model


def calibration_batches(count: int | None = None):
    digits = np.load(MNIST_CALIB)["x"][:count].astype(np.float32)
    return ({"Input3": digits[i : i + 1]} for i in range(len(digits)))


@pytest.fixture(scope="module")
def quantized():
    model = canonical_mnist()
    float_bytes = to_bytes(model)
    plan = quantize_naive(model, calibration_batches(), "minmax")
    return float_bytes, model, plan


def test_every_compute_node_is_int8_and_relu_is_fused(quantized):
    _, model, plan = quantized
    precisions = {entry.op_type: entry.precision for entry in plan.nodes}
    assert precisions == {"Conv": "int8", "Relu": "int8", "MaxPool": "int8", "Reshape": "int8", "Gemm": "int8"}
    ops = [node.op_type for node in model.graph]
    assert "Relu" not in ops  # fused: the Conv output is quantized with zero point -128
    assert ops.count("Conv") == 2 and ops.count("Gemm") == 1
    for node in model.graph:
        if node.op_type in ("Conv", "Gemm"):
            assert all(v.producer() is not None and v.producer().op_type == "DequantizeLinear" for v in node.inputs)
            assert [c.op_type for c in node.outputs[0].consumers()] == ["QuantizeLinear"]


def test_weights_symmetric_per_channel_and_bias_scale_is_input_times_weight(quantized):
    _, model, plan = quantized
    weights = [t for t in plan.tensors if t.role == "weight"]
    assert len(weights) == 3
    for entry in weights:
        assert entry.granularity == "per-channel" and set(entry.zero_point) == {0}
        stored = model.graph.initializers[f"{entry.name}_quantized"].const_value.numpy()
        assert stored.dtype == np.int8 and stored.min() >= -127 and stored.max() <= 127
        # each output channel uses the full symmetric range: its largest |q| is 127
        axis = entry.axis
        per_channel_max = np.max(np.abs(stored), axis=tuple(i for i in range(stored.ndim) if i != axis))
        assert np.all(per_channel_max == 127)
    for node in model.graph:
        if node.op_type not in ("Conv", "Gemm"):
            continue
        x_scale = node.inputs[0].producer().inputs[1].const_value.numpy()
        w_scale = node.inputs[1].producer().inputs[1].const_value.numpy()
        b_dq = node.inputs[2].producer()
        assert b_dq.inputs[0].const_value.numpy().dtype == np.int32
        np.testing.assert_array_equal(b_dq.inputs[1].const_value.numpy(), (np.float32(x_scale) * w_scale).astype(np.float32))


def test_activation_parameters_asymmetric_from_calibrated_range(quantized):
    _, _, plan = quantized
    activations = [t for t in plan.tensors if t.role == "activation"]
    calibrated = [t for t in activations if t.method == "minmax"]
    assert calibrated
    for entry in calibrated:
        low, high = entry.range
        scale, zero_point = entry.scale[0], entry.zero_point[0]
        assert low <= 0 <= high
        assert scale == pytest.approx((high - low) / 255, rel=1e-6)
        assert -128 <= zero_point <= 127
        # q = -128 dequantizes to the range minimum (within half a step: zero point is rounded)
        assert abs((-128 - zero_point) * scale - low) <= scale / 2 + 1e-6
    input_entry = plan.tensor("Input3")
    assert input_entry.range == (0.0, 255.0)  # real pixels 0..255
    assert input_entry.zero_point == (-128,) and input_entry.scale[0] == pytest.approx(1.0)
    shared = [t for t in activations if t.method.startswith("shared:")]
    assert shared, "MaxPool/Reshape outputs share their input's parameters"


def test_plan_json_is_deterministic_and_complete(quantized):
    _, model, plan = quantized
    data = json.loads(plan.to_json())
    assert data["mode"] == "naive" and data["calibration_samples"] == 1000
    assert plan.to_json() == plan.to_json()
    assert len(data["nodes"]) == 8  # every node of the canonical float graph: 2 Conv, 2 Relu, 2 MaxPool, Reshape, Gemm


def test_accuracy_on_real_eval_digits(quantized, mnist_eval):
    float_bytes, model, _ = quantized
    x, y = mnist_eval
    simulated = make_session(to_bytes(model), optimize=False)
    reference = make_session(float_bytes, optimize=False)
    quantized_logits = np.concatenate([simulated.run(None, {"Input3": x[i : i + 1]})[0] for i in range(len(x))])
    float_logits = np.concatenate([reference.run(None, {"Input3": x[i : i + 1]})[0] for i in range(len(x))])
    assert np.mean(float_logits.argmax(1) == y) == pytest.approx(0.993)
    assert np.mean(quantized_logits.argmax(1) == y) >= 0.9925
