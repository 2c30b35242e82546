"""The onnxruntime backend: fused-kernel verification, 7-bit fallback, .ort twin, determinism."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from realdata import MNIST_CALIB, MNIST_MODEL

import edgecomp_onnxruntime.backend as ort_backend
from edgecomp.backend import LowerOptions
from edgecomp.errors import VerificationError
from edgecomp.ir.load import load_model, to_bytes
from edgecomp.ir.run import make_session
from edgecomp.passes.base import PassManager
from edgecomp.passes.canonicalize import canonicalization_passes
from edgecomp.passes.quantize.naive import quantize_naive
from edgecomp.targets import get_target


def quantized_mnist(samples: int = 200):
    model = PassManager(canonicalization_passes(fold_weight_dequantize=False))(load_model(MNIST_MODEL)).model
    digits = np.load(MNIST_CALIB)["x"][:samples].astype(np.float32)
    quantize_naive(model, ({"Input3": digits[i : i + 1]} for i in range(len(digits))), "minmax")
    return model


def verification_inputs(count: int = 32):
    digits = np.load(MNIST_CALIB)["x"][-count:].astype(np.float32)
    return tuple({"Input3": digits[i : i + 1]} for i in range(count))


def float_outputs(inputs):
    reference = make_session(to_bytes(load_model(MNIST_MODEL)))
    return tuple(tuple(reference.run(None, feed)) for feed in inputs)


def lower(model):
    backend = ort_backend.OnnxRuntimeBackend()
    inputs = verification_inputs()
    options = LowerOptions(quantize="naive", verification_inputs=inputs, reference_outputs=float_outputs(inputs), model_name="mnist")
    return backend.lower(model, get_target("host-x86_64"), options)


def weight_ranges(model) -> list[int]:
    return [
        int(np.abs(node.inputs[1].producer().inputs[0].const_value.numpy()).max())
        for node in model.graph
        if node.op_type in ("Conv", "Gemm")
    ]


def test_shipped_model_runs_fused_as_simulated():
    """Whatever this CPU is, the shipped .onnx run with default optimisations matches the QDQ simulation."""
    artifact = lower(quantized_mnist())
    onnx_bytes = artifact.files["mnist.onnx"]
    inputs = verification_inputs()
    check = ort_backend.check_fused_kernels(artifact.model, onnx_bytes, inputs, float_outputs(inputs))
    assert check.sqnr_loss_db <= ort_backend.MAX_FUSED_SQNR_LOSS_DB
    assert check.sqnr_simulated_db > 30  # mnist logits, 32 real digits
    assert artifact.metadata["fused_kernel_check"]["sqnr_fused_db"] == check.sqnr_fused_db
    if "fused_kernel_check_full_range" in artifact.metadata:  # this CPU saturates (x86 without VNNI)
        full = artifact.metadata["fused_kernel_check_full_range"]
        assert full["sqnr_simulated_db"] - full["sqnr_fused_db"] > ort_backend.MAX_FUSED_SQNR_LOSS_DB
        assert max(weight_ranges(artifact.model)) == ort_backend.NARROW_WEIGHT_QMAX
    else:
        assert max(weight_ranges(artifact.model)) == 127


def test_disagreement_narrows_weights_to_7_bits(monkeypatch):
    """Decision logic, independent of the CPU: a disagreeing first check leads to 7-bit weights."""
    real_check = ort_backend.check_fused_kernels
    calls = []

    def first_disagrees(model, onnx_bytes, inputs, reference):
        calls.append(max(weight_ranges(model)))
        result = real_check(model, onnx_bytes, inputs, reference)
        return dataclasses.replace(result, sqnr_fused_db=result.sqnr_simulated_db - 20) if len(calls) == 1 else result

    monkeypatch.setattr(ort_backend, "check_fused_kernels", first_disagrees)
    model = quantized_mnist()
    simulated_before = make_session(to_bytes(model)).run(None, verification_inputs(1)[0])[0]
    artifact = lower(model)
    assert calls == [127, 64]
    assert weight_ranges(artifact.model) == [64, 64, 64]
    assert artifact.metadata["weight_range"] == "7-bit [-64, 64] on 3 weight tensors"
    # 7-bit weights still compute nearly the same logits as the 8-bit QDQ model
    simulated_after = make_session(artifact.files["mnist.onnx"]).run(None, verification_inputs(1)[0])[0]
    assert np.argmax(simulated_after) == np.argmax(simulated_before)
    assert np.max(np.abs(simulated_after - simulated_before)) < 0.05 * np.ptp(simulated_before)


def test_persistent_disagreement_fails_the_compile(monkeypatch):
    def always_disagrees(model, onnx_bytes, inputs, reference):
        return ort_backend.KernelCheck(sqnr_simulated_db=38.0, sqnr_fused_db=16.5, max_lsb=40.0, fraction_over_1_lsb=0.3, samples=32)

    monkeypatch.setattr(ort_backend, "check_fused_kernels", always_disagrees)
    with pytest.raises(VerificationError, match=r"lose 21.5 dB SQNR against the QDQ simulation \(16.5 vs 38.0 dB vs FP32\) even with 7-bit weights"):
        lower(quantized_mnist())


def test_ort_twin_gives_identical_outputs_and_is_reproducible():
    model = quantized_mnist()
    first = lower(model)
    second = lower(quantized_mnist())
    assert first.files["mnist.ort"] == second.files["mnist.ort"]
    assert first.files["mnist.onnx"] == second.files["mnist.onnx"]
    feeds = verification_inputs(4)
    from_onnx = make_session(first.files["mnist.onnx"], optimize=True)
    from_ort = make_session(first.files["mnist.ort"], optimize=True)
    for feed in feeds:
        np.testing.assert_array_equal(from_onnx.run(None, feed)[0], from_ort.run(None, feed)[0])


def test_mcu_target_is_reported_unsupported():
    report = ort_backend.OnnxRuntimeBackend().support(load_model(MNIST_MODEL), get_target("cortex-m4"))
    assert not report.ok
    assert "bare-metal" in report.unsupported[0].reason
