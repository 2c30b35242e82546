"""--quantize qat: a pre-quantized (QDQ) model keeps every scale and zero point it carries."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.numpy_helper
import pytest

from realdata import MLPERF, MNIST_MODEL

from edgecomp.compile import PLAN_FILE, CompileOptions, compile_model
from edgecomp.errors import UnsupportedError


def qdq_parameters(path) -> dict[str, tuple]:
    """Every Q/DQ node's (scale, zero point) of an ONNX file, read with the onnx package only."""
    model = onnx.load(path)
    constants = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    return {
        node.name or node.output[0]: (constants[node.input[1]].tolist(), constants[node.input[2]].tolist() if len(node.input) > 2 else None)
        for node in model.graph.node
        if node.op_type in ("QuantizeLinear", "DequantizeLinear")
    }


@pytest.mark.parametrize("name", ["kws/kws_ref_model_int8_qdq.onnx", "ad/ad01_int8_qdq.onnx"])
def test_pre_quantized_models_keep_every_scale(tmp_path, name):
    source = MLPERF / name
    sample = np.load(MLPERF / "kws" / "mlperf_kws_input_data_int8_1x49x10x1.npy") if "kws" in name else None
    data = None
    if sample is not None:
        data = tmp_path / "x.npz"
        np.savez(data, x=sample)
    result = compile_model(CompileOptions(model=str(source), target="host-x86_64", calibration=str(data) if data else None, output=str(tmp_path / "out")))
    assert result.report["quantize"] == "qat"  # detected automatically
    shipped = tmp_path / "out" / (source.stem + ".onnx")
    before, after = qdq_parameters(source), qdq_parameters(shipped)
    assert sorted(map(str, before.values())) == sorted(map(str, after.values()))
    plan = result.plan
    assert plan.mode == "qat" and all(t.method == "kept from the input model" for t in plan.tensors)
    assert (tmp_path / "out" / PLAN_FILE).is_file()


def test_kws_qat_output_equals_the_official_int8_result(tmp_path):
    """The MLPerf reference sample: class 5 'on' with int8 output 127, as the official int8 TFLite gives."""
    sample = np.load(MLPERF / "kws" / "mlperf_kws_input_data_int8_1x49x10x1.npy")
    np.savez(tmp_path / "x.npz", x=sample)
    result = compile_model(CompileOptions(model=str(MLPERF / "kws" / "kws_ref_model_int8_qdq.onnx"), target="host-x86_64",
                                          calibration=str(tmp_path / "x.npz"), eval=str(tmp_path / "x.npz"), output=str(tmp_path / "out")))
    from edgecomp.ir.run import make_session

    session = make_session((tmp_path / "out" / "kws_ref_model_int8_qdq.onnx").read_bytes(), optimize=True)
    output = session.run(None, {"input_1": sample})[0]
    assert int(np.argmax(output)) == 5 and int(output.max()) == 127
    assert result.report["backend_metadata"]["fused_kernel_check"]["sqnr_fused_db"] >= 40


def test_qat_on_a_float_model_is_refused(tmp_path):
    with pytest.raises(UnsupportedError, match="--quantize qat needs a model with QuantizeLinear/DequantizeLinear"):
        compile_model(CompileOptions(model=str(MNIST_MODEL), target="host-x86_64", quantize="qat", output=str(tmp_path / "o")))


def test_mixed_model_calibrates_only_its_float_parts(tmp_path, mnist_small_calib):
    """A QDQ model whose final dense layer was left in float: the Gemm is quantized, every other scale kept."""
    import onnx_ir as ir

    from edgecomp.ir.load import load_model

    compile_model(CompileOptions(model=str(MNIST_MODEL), target="host-x86_64", calibration=str(mnist_small_calib), output=str(tmp_path / "qdq")))
    model = load_model(tmp_path / "qdq" / "mnist-8.onnx")
    gemm = next(node for node in model.graph if node.op_type == "Gemm")
    for index in (1, 2):  # weight and bias back to float
        dequantize = gemm.inputs[index].producer()
        data, scale = dequantize.inputs[0].const_value.numpy(), dequantize.inputs[1].const_value.numpy()
        value = ir.Value(name=f"float_{index}", const_value=ir.tensor((data * scale).astype(np.float32), name=f"float_{index}"))
        model.graph.register_initializer(value)
        gemm.replace_input_with(index, value)
        model.graph.remove(dequantize, safe=True)
    quantize = next(use.node for use in gemm.outputs[0].uses())
    dequantize = next(use.node for use in quantize.outputs[0].uses())
    dequantize.outputs[0].replace_all_uses_with(gemm.outputs[0], replace_graph_outputs=True)
    for node in (dequantize, quantize):
        model.graph.remove(node, safe=True)
    mixed = tmp_path / "mixed.onnx"
    ir.save(model, mixed)
    before = {k: v for k, v in qdq_parameters(mixed).items()}

    result = compile_model(CompileOptions(model=str(mixed), target="host-x86_64", calibration=str(mnist_small_calib), output=str(tmp_path / "out")))
    assert result.report["quantize"] == "qat"
    assert {n.name: n.precision for n in result.plan.nodes}["Times212"] == "int8"
    after = qdq_parameters(tmp_path / "out" / "mixed.onnx")
    for name, parameters in before.items():
        assert after[name] == parameters, name  # every Q/DQ of the input kept exactly
    assert len(after) == len(before) + 4  # the Gemm's weight and bias DQ, its output Q and DQ; none on its DQ'd input
    assert "calibrated" in result.plan.notes[0]
