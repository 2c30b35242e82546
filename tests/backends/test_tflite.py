"""The tflite backend on the real models: float32 .tflite run in LiteRT against ONNX Runtime FP32.

Models and data (tests/assets/PROVENANCE.md, examples/mnist/PROVENANCE.md): mnist-8 with real
digits; MLPerf Tiny KWS (its one real MFCC sample), VWW and ResNet-8 (real photos, resized as the
shared README says), AD (the real ToyCar spectrogram, read from the shared store only: its license
is unverified), and TFLM hello_world (x in [0, 2*pi]). The ONNX Runtime reference is computed here,
from the original .onnx file, independently of the pipeline; LiteRT is driven through the file's
``serving_default`` signature by ONNX name, so the test does not rely on the backend's runner.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import onnx.helper as oh
import onnx.numpy_helper
import onnx_ir as ir
import onnxruntime
import pytest
from ai_edge_litert import schema_py_generated as schema
from canonicalize_support import (
    AD_DATA,
    AD_FLOAT,
    IC_FLOAT,
    KWS_FLOAT,
    VWW_FLOAT,
    image_batch,
    kws_input_float,
)
from edgecomp_tflite.backend import TFLiteBackend
from edgecomp_tflite.writer import (
    BUFFER_ALIGNMENT,
    PLACEHOLDER_FOR_GREATER_OP_CODES,
    ModelWriter,
    read_model,
)
from realdata import ASSETS, MNIST_EVAL, MNIST_MODEL, ROOT

from edgecomp.backend import LowerOptions
from edgecomp.errors import UnsupportedError, VerificationError
from edgecomp.ir.load import load_model
from edgecomp.passes.base import PassManager
from edgecomp.passes.canonicalize import canonicalization_passes
from edgecomp.plugins import get_backend
from edgecomp.targets import get_target
from edgecomp.testing.conformance import BackendConformance

HELLO_WORLD = ASSETS / "tflm" / "hello_world" / "hello_world_float.onnx"
TOLERANCE = 1e-4  # of the output range (max - min over the samples)
TARGET = "host-x86_64"


def mnist_digits(count: int = 64) -> np.ndarray:
    return np.load(MNIST_EVAL)["x"][:count].astype(np.float32)  # raw 0..255, as the model expects


def real_inputs(name: str) -> list[dict[str, np.ndarray]]:
    """One feed per call; mnist-8 has a fixed batch of 1, the others take a batch."""
    if name == "mnist":
        return [{"Input3": digit[None]} for digit in mnist_digits()]
    if name == "kws":
        return [{"input_1": kws_input_float()}]
    if name == "vww":
        return [{"input_1": image_batch(96, 1 / 255)}]
    if name == "ic":
        return [{"input_1": image_batch(32, 1.0)}]
    if name == "ad":
        return [{"input_1": np.fromfile(AD_DATA, np.float32).reshape(40, 640)}]  # 40 windows of 5 frames x 128 mel
    if name == "hello_world":
        return [{"serving_default_dense_input:0": np.linspace(0.0, 2 * np.pi, 200, dtype=np.float32).reshape(200, 1)}]
    raise KeyError(name)


MODELS = {"mnist": MNIST_MODEL, "kws": KWS_FLOAT, "vww": VWW_FLOAT, "ic": IC_FLOAT, "ad": AD_FLOAT, "hello_world": HELLO_WORLD}
needs_ad_data = pytest.mark.skipif(not AD_DATA.exists(), reason="AD log-mel data is only in the shared store")
PARAMS = [pytest.param(name, marks=needs_ad_data) if name == "ad" else name for name in MODELS]


def canonical(path) -> ir.Model:
    """The IR the pipeline hands a backend for ``-q none``."""
    return PassManager(canonicalization_passes(fold_weight_dequantize=True))(load_model(path)).model


def onnxruntime_outputs(path, feeds: list[dict[str, np.ndarray]]) -> list[list[np.ndarray]]:
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return [session.run(None, feed) for feed in feeds]


_CACHE: dict[str, object] = {}


def lowered(name: str):
    """The artifact of ``name`` (lowered once per test session, with the backend's own verification)."""
    if name not in _CACHE:
        feeds = real_inputs(name)
        options = LowerOptions(model_name=name, verification_inputs=tuple(feeds), reference_outputs=tuple(tuple(o) for o in onnxruntime_outputs(MODELS[name], feeds)))
        _CACHE[name] = TFLiteBackend().lower(canonical(MODELS[name]), get_target(TARGET), options)
    return _CACHE[name]


def tflite_bytes(name: str) -> bytes:
    return lowered(name).files[f"{name}.tflite"]


def litert_by_signature(data: bytes, feeds: list[dict[str, np.ndarray]], output_names: list[str]) -> list[list[np.ndarray]]:
    from ai_edge_litert.interpreter import Interpreter

    runner = Interpreter(model_content=data, num_threads=1).get_signature_runner("serving_default")
    results = []
    for feed in feeds:
        out = runner(**feed)
        results.append([out[name] for name in output_names])
    return results


def relative_difference(expected: np.ndarray, actual: np.ndarray) -> float:
    expected, actual = np.asarray(expected, np.float64), np.asarray(actual, np.float64)
    return float(np.abs(expected - actual).max() / (expected.max() - expected.min()))


@pytest.mark.parametrize("name", PARAMS)
def test_float_tflite_matches_onnxruntime_on_real_data(name):
    feeds = real_inputs(name)
    reference = onnxruntime_outputs(MODELS[name], feeds)
    output_names = [o.name for o in onnx.load(MODELS[name]).graph.output]
    actual = litert_by_signature(tflite_bytes(name), feeds, output_names)
    for index in range(len(output_names)):
        expected = np.concatenate([r[index] for r in reference])
        got = np.concatenate([a[index] for a in actual])
        assert got.shape == expected.shape
        assert relative_difference(expected, got) <= TOLERANCE
    figure = lowered(name).metadata["verification"]["max_abs_difference_relative_to_range"]
    assert figure <= TOLERANCE


def test_real_models_keep_their_predictions():
    """The values that matter on the real data: digits, KWS class 5 ("on"), ResNet-8 cat on chelsea, sin(x)."""
    digits = mnist_digits()
    logits = np.concatenate([o[0] for o in litert_by_signature(tflite_bytes("mnist"), real_inputs("mnist"), ["Plus214_Output_0"])])
    assert (logits.argmax(1) == np.load(MNIST_EVAL)["y"][: len(digits)]).mean() >= 0.98
    kws = litert_by_signature(tflite_bytes("kws"), real_inputs("kws"), ["Identity"])[0][0]
    assert kws.argmax() == 5 and kws.max() > 0.99
    ic = litert_by_signature(tflite_bytes("ic"), real_inputs("ic"), ["Identity"])[0][0]
    chelsea = [p.name for p in sorted((ASSETS / "images").glob("skimage_*.[pj][np]g"))].index("skimage_chelsea.png")
    assert ic[chelsea].argmax() == 3  # cat
    x = real_inputs("hello_world")[0]["serving_default_dense_input:0"]
    y = litert_by_signature(tflite_bytes("hello_world"), real_inputs("hello_world"), ["StatefulPartitionedCall:0"])[0][0]
    assert np.abs(y - np.sin(x)).max() < 0.06  # the model's own error is 0.049 (shared README)


def operator_names(data: bytes) -> list[str]:
    model = read_model(data)
    names = {value: key for key, value in vars(schema.BuiltinOperator).items() if not key.startswith("_")}
    codes = [model.operatorCodes[op.opcodeIndex] for op in model.subgraphs[0].operators]
    return [names[max(code.builtinCode, code.deprecatedBuiltinCode)] for code in codes]


def test_mnist_has_zero_transpose_operators():
    """NCHW mnist-8: NHWC kernels, its C=1 input becomes NHWC by a RESHAPE, Flatten -> Gemm permutes
    the dense weight rows instead of transposing the activations, and FULLY_CONNECTED reads the
    pooled [1, 4, 4, 16] tensor itself (it flattens to [-1, 256]), so the flatten RESHAPE is gone."""
    ops = operator_names(tflite_bytes("mnist"))
    assert "TRANSPOSE" not in ops
    assert ops == ["RESHAPE", "CONV_2D", "MAX_POOL_2D", "CONV_2D", "MAX_POOL_2D", "FULLY_CONNECTED"]
    assert lowered("mnist").metadata["transposes_added"] == 0
    assert lowered("mnist").metadata["fused_activations"] == 2  # both Relu into CONV_2D


@pytest.mark.parametrize("name, onnx_op", [("vww", "Transpose"), ("ic", "Transpose"), ("kws", "Reshape")])
def test_mlperf_boundary_transpose_vanished(name, onnx_op):
    """tf2onnx put an NHWC -> NCHW Transpose (KWS: an equivalent Reshape, C = 1) after the input."""
    first = next(iter(canonical(MODELS[name]).graph))
    assert first.op_type == onnx_op and first.inputs[0].name == "input_1"
    ops = operator_names(tflite_bytes(name))
    assert "TRANSPOSE" not in ops
    assert ops[0] in ("CONV_2D", "DEPTHWISE_CONV_2D")  # the input feeds the first convolution directly
    assert lowered(name).metadata["transposes_added"] == 0


@pytest.mark.parametrize("name", PARAMS)
def test_signature_keys_are_the_onnx_names(name):
    from ai_edge_litert.interpreter import Interpreter

    graph = onnx.load(MODELS[name]).graph
    inputs = [v.name for v in graph.input if v.name not in {t.name for t in graph.initializer}]
    outputs = [v.name for v in graph.output]
    signature = Interpreter(model_content=tflite_bytes(name)).get_signature_list()
    assert signature == {"serving_default": {"inputs": sorted(inputs), "outputs": sorted(outputs)}}
    model = read_model(tflite_bytes(name))
    subgraph = model.subgraphs[0]
    assert [subgraph.tensors[i].name.decode() for i in subgraph.inputs] == inputs
    assert [subgraph.tensors[i].name.decode() for i in subgraph.outputs] == outputs


@pytest.mark.parametrize("name", ["mnist", "vww", "hello_world"])
def test_two_lowerings_give_identical_bytes(name):
    again = TFLiteBackend().lower(canonical(MODELS[name]), get_target(TARGET), LowerOptions(model_name=name))
    assert again.files == lowered(name).files


def test_file_layout_buffers_aligned_codes_and_metadata():
    data = tflite_bytes("vww")
    buffer = bytearray(data)
    root = schema.Model.GetRootAs(buffer, 0)
    assert root.Version() == 3 and schema.Model.ModelBufferHasIdentifier(buffer, 0)
    assert root.Buffers(0).DataLength() == 0  # buffer 0 is the empty sentinel
    base = np.frombuffer(buffer, np.uint8).ctypes.data
    offsets = [root.Buffers(i).DataAsNumpy().ctypes.data - base for i in range(1, root.BuffersLength()) if root.Buffers(i).DataLength()]
    assert offsets and all(offset % BUFFER_ALIGNMENT == 0 for offset in offsets)
    model = read_model(data)
    codes = [c.builtinCode for c in model.operatorCodes]
    assert len(codes) == len(set(codes))  # one OperatorCode per builtin
    assert all(c.deprecatedBuiltinCode == min(c.builtinCode, PLACEHOLDER_FOR_GREATER_OP_CODES) for c in model.operatorCodes)
    metadata = {m.name.decode(): bytes(model.buffers[m.buffer].data) for m in model.metadata}
    assert metadata["edgecomp.producer"].startswith(b"edgecomp ")
    subgraph = model.subgraphs[0]
    assert list(subgraph.tensors[subgraph.inputs[0]].shapeSignature) == [-1, 96, 96, 3]  # dynamic batch kept


def test_quantization_plan_json_is_stored_as_metadata():
    """The writer's plan slot (for INT8 lowering): a real naive plan of mnist-8 (16 real digits) is kept byte for byte."""
    from edgecomp_tflite.context import LoweringSettings
    from edgecomp_tflite.lower import lower_model
    from edgecomp_tflite.tensor_types import FloatTensorTypes

    from edgecomp.passes.quantize.naive import quantize_naive

    quantized = PassManager(canonicalization_passes(fold_weight_dequantize=False))(load_model(MNIST_MODEL)).model
    plan = quantize_naive(quantized, [{"Input3": d[None]} for d in mnist_digits(16)], "minmax").to_json().encode()
    data = lower_model(canonical(MNIST_MODEL), FloatTensorTypes(), LoweringSettings(), quantization_plan=plan).data
    model = read_model(data)
    metadata = {m.name.decode(): bytes(model.buffers[m.buffer].data) for m in model.metadata}
    assert metadata["edgecomp.quantization_plan"] == plan and json.loads(plan)

def test_operator_code_above_127_uses_the_placeholder():
    """Schema v3a: codes >= 127 live in builtin_code; deprecated_builtin_code holds 127. Run on real digits."""
    writer = ModelWriter("edgecomp test")
    x = writer.add_tensor("x", [None, 784], np.float32)
    y = writer.add_tensor("y", [None, 784], np.float32)
    writer.add_operator(schema.BuiltinOperator.RELU_0_TO_1, [x], [y])
    writer.set_io([x], [y])
    data = writer.finish()
    code = read_model(data).operatorCodes[0]
    assert (code.builtinCode, code.deprecatedBuiltinCode) == (schema.BuiltinOperator.RELU_0_TO_1, 127)
    from ai_edge_litert.interpreter import Interpreter

    digits = (mnist_digits(4).reshape(4, 784) / 127.5 - 0.5).astype(np.float32)  # spans [-0.5, 1.5]
    interpreter = Interpreter(model_content=data, num_threads=1)
    interpreter.resize_tensor_input(0, [4, 784])
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], digits)
    interpreter.invoke()
    np.testing.assert_array_equal(interpreter.get_tensor(interpreter.get_output_details()[0]["index"]), np.clip(digits, 0, 1))


def test_io_layout_nhwc_presents_channels_last_and_runner_keeps_onnx_layout():
    backend = TFLiteBackend(io_layout="nhwc")
    artifact = backend.lower(canonical(MNIST_MODEL), get_target(TARGET), LowerOptions(model_name="mnist"))
    model = read_model(artifact.files["mnist.tflite"])
    subgraph = model.subgraphs[0]
    assert list(subgraph.tensors[subgraph.inputs[0]].shape) == [1, 28, 28, 1]
    assert artifact.metadata["io_layout"] == "nhwc"
    assert operator_names(artifact.files["mnist.tflite"])[0] == "CONV_2D"  # no input RESHAPE any more
    feeds = real_inputs("mnist")[:8]
    reference = onnxruntime_outputs(MNIST_MODEL, feeds)
    for feed, expected in zip(feeds, reference):
        assert relative_difference(expected[0], artifact.runner(feed)[0]) <= TOLERANCE  # runner takes/returns ONNX layout


def test_support_reports_nothing_for_the_real_models():
    backend = get_backend("tflite")
    for name, path in MODELS.items():
        assert backend.support(canonical(path), get_target(TARGET)).ok, name


def test_verification_failure_raises():
    """A reference that disagrees by 1e-3 of the output range (above the 1e-4 tolerance) fails the lowering."""
    feeds = real_inputs("hello_world")
    reference = onnxruntime_outputs(HELLO_WORLD, feeds)
    shifted = [[r[0] + np.float32(1e-3 * np.ptp(r[0]))] for r in reference]
    options = LowerOptions(model_name="hw", verification_inputs=tuple(feeds), reference_outputs=tuple(tuple(s) for s in shifted))
    with pytest.raises(VerificationError, match="StatefulPartitionedCall:0.*1.00e-03 of its range"):
        TFLiteBackend().lower(canonical(HELLO_WORLD), get_target(TARGET), options)


# ------------------------------------------------------------------------------------- unsupported models


def mnist_initializers() -> dict[str, np.ndarray]:
    return {t.name: onnx.numpy_helper.to_array(t) for t in onnx.load(MNIST_MODEL).graph.initializer}


def lstm_model(tmp_path):
    """mnist-8's convolution and pooling, then its 16 channels x 16 positions read as a 16-step sequence
    by an LSTM whose weights are real mnist-8 weights, then mnist-8's dense bias added."""
    w = mnist_initializers()
    conv2 = w["Parameter87"].reshape(-1)
    nodes = [
        oh.make_node("Conv", ["x", "conv1", "bias1"], ["c1"], name="conv1", pads=[2, 2, 2, 2]),
        oh.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        oh.make_node("MaxPool", ["r1"], ["p1"], name="pool1", kernel_shape=[7, 7], strides=[7, 7]),
        oh.make_node("Reshape", ["p1", "sequence_shape"], ["sequence"], name="to_sequence"),
        oh.make_node("LSTM", ["sequence", "W", "R"], ["", "h"], name="lstm", hidden_size=10),
        oh.make_node("Reshape", ["h", "logits_shape"], ["hidden"], name="flatten_hidden"),
        oh.make_node("Add", ["hidden", "dense_bias"], ["logits"], name="bias"),
    ]
    arrays = {
        "conv1": w["Parameter5"], "bias1": w["Parameter6"].reshape(8),
        "sequence_shape": np.asarray([8, 1, 16], np.int64),
        "W": conv2[:640].reshape(1, 40, 16).copy(), "R": conv2[640:1040].reshape(1, 40, 10).copy(),
        "logits_shape": np.asarray([1, 10], np.int64), "dense_bias": w["Parameter194"].reshape(1, 10),
    }
    graph = oh.make_graph(
        nodes, "mnist_lstm", [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 1, 28, 28])],
        [oh.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, [1, 10])],
        [onnx.numpy_helper.from_array(np.asarray(a), name) for name, a in arrays.items()],
    )
    proto = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 13)])
    proto.ir_version = 8
    path = tmp_path / "mnist_lstm.onnx"
    onnx.save(proto, path)
    onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": mnist_digits(1)})  # a valid, runnable model
    return path


def custom_domain_model() -> ir.Model:
    """mnist-8 with its first Relu replaced by a custom-domain op and a com.microsoft op added after the pool."""
    model = canonical(MNIST_MODEL)
    relu = next(node for node in model.graph if node.op_type == "Relu")
    relu.op_type, relu.domain = "FancyActivation", "com.example.edge"
    pool = next(node for node in model.graph if node.op_type == "MaxPool")
    gelu = ir.node("Gelu", [pool.outputs[0]], domain="com.microsoft", name="gelu_after_pool")
    gelu.outputs[0].name = "gelu_output"
    gelu.outputs[0].shape, gelu.outputs[0].type = pool.outputs[0].shape, pool.outputs[0].type
    for use in list(pool.outputs[0].uses()):
        use.node.replace_input_with(use.idx, gelu.outputs[0])
    model.graph.insert_after(pool, gelu)
    model.opset_imports["com.example.edge"] = 1
    model.opset_imports["com.microsoft"] = 1
    return model


def test_lstm_model_is_reported_with_the_node_and_reason(tmp_path):
    model = canonical(lstm_model(tmp_path))
    report = TFLiteBackend().support(model, get_target(TARGET))
    assert [(u.node, u.op_type) for u in report.unsupported] == [("lstm", "LSTM")]
    assert report.unsupported[0].reason == "no TFLite lowering for ONNX LSTM"
    with pytest.raises(UnsupportedError, match="'lstm' \\(LSTM\\)"):
        TFLiteBackend().lower(model, get_target(TARGET), LowerOptions(model_name="m"))


def test_custom_domain_nodes_are_all_reported():
    report = TFLiteBackend().support(custom_domain_model(), get_target(TARGET))
    entries = [(u.node, u.op_type) for u in report.unsupported]
    assert entries == [("ReLU32", "com.example.edge::FancyActivation"), ("gelu_after_pool", "com.microsoft::Gelu")]
    assert all("custom domain" in u.reason for u in report.unsupported)


def run_cli(*args: str):
    return subprocess.run([sys.executable, "-m", "edgecomp", *args], capture_output=True, text=True, cwd=ROOT)


def test_cli_refuses_unsupported_model_with_exit_code_7(tmp_path):
    out = tmp_path / "out"
    result = run_cli("compile", str(lstm_model(tmp_path)), "-t", TARGET, "-b", "tflite", "-q", "none", "-o", str(out))
    assert result.returncode == 7, result.stderr
    assert "lstm" in result.stderr and "LSTM" in result.stderr and "Traceback" not in result.stderr
    assert not out.exists()


def test_cli_compiles_mnist_to_tflite_with_the_fp32_accuracy(tmp_path):
    out = tmp_path / "mnist-tflite"
    result = run_cli(
        "compile", "examples/mnist/mnist-8.onnx", "-t", TARGET, "-b", "tflite", "-q", "none",
        "--eval", "examples/mnist/mnist_eval_2000.npz", "--json", "-o", str(out),
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    evaluation = report["evaluation"]["outputs"]["Plus214_Output_0"]
    assert evaluation["accuracy_compiled"] == pytest.approx(0.993) and evaluation["accuracy_fp32"] == pytest.approx(0.993)
    assert evaluation["top1_agreement"] == 1.0
    assert report["backend"] == "tflite" and report["backend_metadata"]["transposes_added"] == 0
    assert sorted(p.name for p in out.iterdir()) == [".edgecomp-output", "mnist-8.tflite"]
    assert report["sizes"]["flash_bytes"] == (out / "mnist-8.tflite").stat().st_size


@pytest.mark.parametrize("name", ["mnist", "kws", "hello_world"])
def test_tflite_micro_runs_the_float_files(name):
    """TFLM (the ``tflite-micro`` interpreter) accepts the operator versions, options and buffer
    layout, and computes the same outputs (it has no dynamic batch: one sample per invoke)."""
    runtime = pytest.importorskip("tflite_micro.python.tflite_micro.runtime")
    interpreter = runtime.Interpreter.from_bytes(tflite_bytes(name), arena_size=1 << 20)
    for feed, expected in zip(real_inputs(name), onnxruntime_outputs(MODELS[name], real_inputs(name))):
        batch = next(iter(feed.values()))
        outputs = []
        for row in range(len(batch)):
            interpreter.set_input(batch[row : row + 1], 0)
            interpreter.invoke()
            outputs.append(interpreter.get_output(0).copy())
        assert relative_difference(expected[0], np.concatenate(outputs)) <= TOLERANCE


class TestTFLiteConformance(BackendConformance):
    """The plugin-author conformance kit, float32 and naive INT8."""

    backend_name = "tflite"

    @pytest.mark.parametrize("quantize", ["none", "naive"])
    def test_compiles_deterministically_or_refuses_cleanly(self, quantize, tmp_path, mnist_data, dense_data):
        super().test_compiles_deterministically_or_refuses_cleanly(quantize, tmp_path, mnist_data, dense_data)

    @pytest.mark.parametrize("quantize", ["none", "naive"])
    def test_outputs_agree_with_onnxruntime(self, quantize, tmp_path, mnist_data, dense_data):
        super().test_outputs_agree_with_onnxruntime(quantize, tmp_path, mnist_data, dense_data)
