"""The compile pipeline's selective, equalization, bias-correction and friendliness options, end to end."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from realdata import MLPERF, MNIST_EVAL, MNIST_MODEL

from edgecomp.compile import SENSITIVITY_CHART, CompileOptions, compile_model
from edgecomp.errors import UnsupportedError


def compile_mnist(tmp_path, calibration, **options):
    return compile_model(CompileOptions(model=str(MNIST_MODEL), target="host-x86_64", calibration=str(calibration), output=str(tmp_path / "out"), **options))


def test_selective_with_an_sqnr_goal_keeps_the_most_sensitive_layer_float(tmp_path, mnist_small_calib):
    result = compile_mnist(tmp_path, mnist_small_calib, quantize="selective", min_sqnr_db=42.0)
    selective = result.report["selective"]
    assert selective["all_int8_sqnr_db"] < 42.0
    assert selective["float_nodes"] == ["Times212"]  # the dense layer: largest gain when left float
    assert selective["search"][-1]["meets_goal"] and selective["search"][-1]["sqnr_db"] >= 42.0
    assert {n.name: n.precision for n in result.plan.nodes}["Times212"] == "fp32"
    chart = Image.open(io.BytesIO((tmp_path / "out" / SENSITIVITY_CHART).read_bytes()))
    assert chart.format == "PNG" and chart.size[0] > 400


def test_selective_accuracy_goal_needs_no_float_layer_on_mnist(tmp_path, mnist_small_calib):
    result = compile_mnist(tmp_path, mnist_small_calib, quantize="selective", max_accuracy_drop=0.1, eval=str(MNIST_EVAL))
    assert result.report["selective"]["float_nodes"] == []
    output = result.report["evaluation"]["outputs"]["Plus214_Output_0"]
    assert output["accuracy_fp32"] - output["accuracy_compiled"] <= 0.001


def test_goals_belong_to_selective(tmp_path, mnist_small_calib):
    with pytest.raises(UnsupportedError, match="--min-sqnr and --max-accuracy-drop are goals of --quantize selective"):
        compile_mnist(tmp_path, mnist_small_calib, quantize="naive", min_sqnr_db=40.0)


def test_equalization_and_bias_correction_are_applied_and_noted(tmp_path, mnist_small_calib):
    result = compile_mnist(tmp_path, mnist_small_calib, equalize=True, bias_correction=True, eval=str(MNIST_EVAL))
    assert len(result.report["bias_correction"]) == 3  # two Conv, one Gemm
    assert result.report["equalization"]["pairs"], "mnist-8's Conv->Relu->MaxPool->Conv pairs are equalized"
    assert any("bias correction" in note for note in result.plan.notes)
    assert result.report["evaluation"]["outputs"]["Plus214_Output_0"]["accuracy_compiled"] >= 0.9925


def test_friendliness_warnings_reach_the_report(tmp_path):
    import numpy as np

    sample = tmp_path / "kws.npz"
    np.savez(sample, x=np.load(MLPERF / "kws" / "mlperf_kws_input_data_int8_1x49x10x1.npy"))
    result = compile_model(CompileOptions(model=str(MLPERF / "kws" / "kws_ref_model_float32.onnx"), target="host-x86_64",
                                          calibration=str(sample), output=str(tmp_path / "kws")))
    assert [w["kind"] for w in result.report["warnings"]] == ["softmax-saturation"]
