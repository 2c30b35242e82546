"""The compile pipeline's selective, equalization, bias-correction and friendliness options, end to end."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from realdata import MLPERF, MNIST_EVAL, MNIST_MODEL

from edgecomp.compile import SENSITIVITY_CHART, CompileOptions, compile_model
from edgecomp.errors import UsageError


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
    with pytest.raises(UsageError, match="--min-sqnr and --max-accuracy-drop are goals of --quantize selective"):
        compile_mnist(tmp_path, mnist_small_calib, quantize="naive", min_sqnr_db=40.0)


@pytest.mark.parametrize(
    ("quantize", "int8_ops", "message"),
    [("naive", ("Conv",), "--int8-ops chooses the INT8 operators of --quantize hybrid, not naive"),
     ("hybrid", ("Conv", "Foo"), "--int8-ops Foo: not an operator type with an int8 kernel")],
)
def test_int8_ops_belong_to_hybrid_and_name_int8_operators(tmp_path, mnist_small_calib, quantize, int8_ops, message):
    with pytest.raises(UsageError, match=message):
        compile_mnist(tmp_path, mnist_small_calib, quantize=quantize, int8_ops=int8_ops)
    assert not (tmp_path / "out").exists()


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
    # tflite: the Softmax output has the fixed int8 grid (1/256), so its range is not calibrated and
    # the logit range decides; onnxruntime calibrates that output (top probability 0.84 observed here)
    result = compile_model(CompileOptions(model=str(MLPERF / "kws" / "kws_ref_model_float32.onnx"), target="host-x86_64", backend="tflite",
                                          calibration=str(sample), output=str(tmp_path / "kws")))
    assert [w["kind"] for w in result.report["warnings"]] == ["softmax-saturation"]
    calibrated = compile_model(CompileOptions(model=str(MLPERF / "kws" / "kws_ref_model_float32.onnx"), target="host-x86_64",
                                              calibration=str(sample), output=str(tmp_path / "kws-ort")))
    assert calibrated.report["warnings"] == []
    softmax_output = next(t for t in calibrated.plan.tensors if t.name == "Identity")
    assert softmax_output.method == "minmax" and softmax_output.range[1] < 255 / 256


# ---------------------------------------------------------------------------------- backend rules


class _NarrowingBackend:
    """Narrows the int8 weights to [-64, 64] while lowering (as onnxruntime does on x86 without
    AVX-VNNI) and counts the quantization rules it was quantized with."""

    name = "narrowing"
    description = "test backend: narrows weights while lowering"

    def __init__(self) -> None:
        self.lowered_ranges: list[int] = []

    def support(self, model, target):
        from edgecomp.backend import SupportReport

        return SupportReport(self.name)

    def legalize(self, target):
        return []

    def lower(self, model, target, options):
        from edgecomp.backend import Artifact
        from edgecomp.ir.load import to_bytes
        from edgecomp.passes.quantize.qdq import largest_weight, narrow_weight_range

        self.lowered_ranges.append(largest_weight(model))
        narrow_weight_range(model, 64)
        data = to_bytes(model)
        return Artifact(self.name, {"m.onnx": data}, len(data), {"weight_range": "int8 [-64, 64]"}, model=model)


def _registered(backend):
    """``backend`` registered as a plugin for a ``with`` block."""
    from edgecomp.hookspecs import hookimpl
    from edgecomp.testing import registered_plugin

    class Plugin:
        @hookimpl
        def edgecomp_register_backends(self, register):
            register(backend)

    return registered_plugin(Plugin(), "narrowing-test")


def test_weights_narrowed_by_the_backend_are_quantized_again_for_bias_correction(tmp_path, mnist_small_calib):
    """Bias correction computed for 8-bit weights is wrong for the 7-bit ones a backend ships: the
    pipeline quantizes again with the backend's range, and the plan says so."""
    from edgecomp.passes.quantize.qdq import largest_weight

    backend = _NarrowingBackend()
    with _registered(backend):
        result = compile_model(CompileOptions(model=str(MNIST_MODEL), target="host-x86_64", backend="narrowing", calibration=str(mnist_small_calib),
                                              bias_correction=True, output=str(tmp_path / "out")))
    assert backend.lowered_ranges == [127, 64]  # first full range, then quantized again at 7 bits
    assert any("narrowed the weights while lowering" in note and "[-64, 64]" in note for note in result.plan.notes)
    import onnx_ir as ir

    shipped = ir.load(str(tmp_path / "out" / "m.onnx"))
    assert largest_weight(shipped) == 64
    assert len(result.report["bias_correction"]) == 3


def test_naive_is_not_quantized_twice_when_the_backend_narrows(tmp_path, mnist_small_calib):
    """Narrowing requantizes naive weights exactly as quantizing at 7 bits would: one pass only."""
    backend = _NarrowingBackend()
    with _registered(backend):
        compile_model(CompileOptions(model=str(MNIST_MODEL), target="host-x86_64", backend="narrowing", calibration=str(mnist_small_calib), output=str(tmp_path / "out")))
    assert backend.lowered_ranges == [127]


def test_rules_set_the_weight_range_and_free_the_softmax_grid():
    import numpy as np
    from canonicalize_support import load_mnist

    from edgecomp.passes.quantize.naive import quantize_int8
    from edgecomp.passes.quantize.qdq import QuantizationRules, largest_weight

    digits = np.load(MNIST_EVAL)["x"][:8].astype(np.float32)
    model = load_mnist()
    plan = quantize_int8(model, [{"Input3": digit[None]} for digit in digits], rules=QuantizationRules(weight_qmax=64, weight_reason="test kernels"))
    assert largest_weight(model) == 64
    assert plan.notes == ("weights quantized to [-64, 64]: test kernels",)
    weights = [t for t in plan.tensors if t.role == "weight"]
    assert weights and all(t.dtype == "int8" for t in weights)


def test_selective_tries_bias_correction_and_keeps_it_only_when_it_helps(tmp_path, mnist_small_calib):
    result = compile_mnist(tmp_path, mnist_small_calib, quantize="selective")
    tried = result.report["selective"]["bias_correction"]
    assert tried["kept"] == (tried["sqnr_db_with"] > tried["sqnr_db_without"])
    assert ("bias_correction" in result.report) == tried["kept"]
    assert any(note.startswith("selective tried bias correction") and ("not kept" in note) != tried["kept"] for note in result.plan.notes)
    forced = compile_model(CompileOptions(model=str(MNIST_MODEL), target="host-x86_64", calibration=str(mnist_small_calib), quantize="selective",
                                          bias_correction=True, output=str(tmp_path / "forced")))
    assert "bias_correction" not in forced.report["selective"] and len(forced.report["bias_correction"]) == 3
