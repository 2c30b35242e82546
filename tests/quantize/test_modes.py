"""hybrid (INT8 for chosen operator types) and dynamic (INT8 weights only) on the real MNIST model."""

from __future__ import annotations

import collections

import onnx
import pytest

from realdata import MNIST_CALIB, MNIST_EVAL, MNIST_MODEL

from edgecomp.compile import CompileOptions, compile_model


def compile_mnist(tmp_path, quantize, **extra):
    result = compile_model(CompileOptions(model=str(MNIST_MODEL), target="host-x86_64", quantize=quantize, calibration=str(MNIST_CALIB),
                                          eval=str(MNIST_EVAL), output=str(tmp_path / quantize), **extra))
    shipped = onnx.load(tmp_path / quantize / "mnist-8.onnx")
    return result, collections.Counter(node.op_type for node in shipped.graph.node)


def test_hybrid_keeps_the_chosen_ops_int8_and_the_rest_float(tmp_path):
    result, ops = compile_mnist(tmp_path, "hybrid")
    precision = {(n.op_type, n.precision) for n in result.plan.nodes}
    assert precision == {("Conv", "int8"), ("Relu", "int8"), ("Gemm", "int8"), ("MaxPool", "fp32"), ("Reshape", "fp32")}
    assert result.plan.mode == "hybrid"
    assert ops["Relu"] == 0  # fused into the int8 Conv
    output = result.report["evaluation"]["outputs"]["Plus214_Output_0"]
    assert output["accuracy_compiled"] >= 0.9925


def test_hybrid_with_only_conv(tmp_path):
    result, ops = compile_mnist(tmp_path, "hybrid", int8_ops=("Conv",))
    assert {n.op_type for n in result.plan.nodes if n.precision == "int8"} == {"Conv", "Relu"}
    assert [t.name for t in result.plan.tensors if t.role == "weight"] == ["Parameter5", "Parameter87"]  # no Gemm weight


def test_dynamic_range_quantizes_weights_only(tmp_path):
    result, ops = compile_mnist(tmp_path, "dynamic")
    assert ops["QuantizeLinear"] == 0 and ops["DequantizeLinear"] == 3  # one per Conv/Gemm weight
    assert {t.role for t in result.plan.tensors} == {"weight"}
    output = result.report["evaluation"]["outputs"]["Plus214_Output_0"]
    assert output["accuracy_compiled"] == pytest.approx(0.993)
    assert output["sqnr_db"] > 40  # only weight rounding: better than full INT8 (about 37 dB)
    assert result.report["sizes"]["flash_bytes"] < 0.7 * result.report["sizes"]["float_model_bytes"]
