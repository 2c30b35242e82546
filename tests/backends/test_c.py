"""The ``c`` backend on the real models and data (issue 5).

- naive INT8 mnist-8 and MLPerf Tiny KWS/VWW/IC/AD, and the official int8 files' QDQ twins (``-q
  qat``): the generated C built with host gcc (``-std=c99 -Wall -Wextra -Werror``) gives outputs
  bit-identical to the same ``.tflite`` in LiteRT's reference kernels on all their real data, and
  the same C cross-compiled with ``arm-none-eabi-gcc -mcpu=cortex-m4`` and run in QEMU
  (``mps2-an386``) gives the same bytes;
- the arena is the plan's size, never above TFLite Micro's greedy plan, at the lower bound here;
- budgets (RAM, flash) fail with the budget, the need and the largest layers; unsupported operators
  are listed; two compiles give byte-identical sources; the CMake example configures and builds.
"""

from __future__ import annotations

import json
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest
from ai_edge_litert.interpreter import Interpreter, OpResolverType
from edgecomp_c.backend import CBackend
from edgecomp_c.emit import c_identifier
from edgecomp_c.harness import build_host, build_qemu, qemu_available, read_sources, run_host, run_qemu
from model_zoo import OFFICIAL, TARGET, canonical, int8_inputs, litert_rows, mnist_digits, naive_model, needs_ad_data
from realdata import MNIST_CALIB, MNIST_EVAL, MNIST_MODEL, ROOT

from edgecomp.backend import LowerOptions
from edgecomp.errors import BudgetError, UnsupportedError
from edgecomp.targets import get_target

needs_gcc = pytest.mark.skipif(shutil.which("gcc") is None, reason="host gcc not installed")
needs_qemu = pytest.mark.skipif(not qemu_available(), reason="arm-none-eabi-gcc / qemu-system-arm not installed")
NAIVE = ["mnist", "kws", "vww", "ic", pytest.param("ad", marks=needs_ad_data)]
QAT = ["kws", "vww", "ic", pytest.param("ad", marks=needs_ad_data)]

_CACHE: dict = {}


def naive_c(name: str):
    """(artifact, feeds) of the naive INT8 model compiled by the c backend, without verification."""
    key = ("naive", name)
    if key not in _CACHE:
        model, input_name, feeds = naive_model(name)
        if name == "mnist":  # every eval digit: 2000 samples, one batch
            feeds = [{input_name: mnist_digits(2000)}]
        artifact = CBackend().lower(model, TARGET, LowerOptions(quantize="naive", model_name=name))
        _CACHE[key] = (artifact, feeds)
    return _CACHE[key]


def qat_c(name: str):
    key = ("qat", name)
    if key not in _CACHE:
        model = canonical(OFFICIAL[name][0], fold=False)
        input_name = model.graph.inputs[0].name
        x = int8_inputs(name)
        artifact = CBackend().lower(model, TARGET, LowerOptions(quantize="qat", model_name=f"{name}_qat"))
        _CACHE[key] = (artifact, [{input_name: x}])
    return _CACHE[key]


def write(artifact, directory: pathlib.Path) -> pathlib.Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, data in artifact.files.items():
        (directory / name).write_bytes(data)
    return directory


def tflite_of(artifact) -> bytes:
    """The .tflite the c backend generated its program from (the runner's lowering)."""
    return artifact.runner.lowered.data


# ---------------------------------------------------------------------------------- bit exactness


CASES = [("naive", name) for name in NAIVE] + [("qat", name) for name in QAT]


@needs_gcc
@pytest.mark.parametrize("kind, name", [pytest.param(k, n.values[0], marks=n.marks) if hasattr(n, "values") else (k, n) for k, n in CASES])
def test_c_is_bit_identical_to_litert_reference_kernels_on_all_real_data(kind, name):
    artifact, feeds = (naive_c if kind == "naive" else qat_c)(name)
    x = next(iter(feeds[0].values()))
    expected = litert_rows(tflite_of(artifact), x, "BUILTIN_REF")
    actual = artifact.runner(feeds[0])[0]
    assert actual.shape == expected.shape
    assert actual.tobytes() == expected.tobytes(), f"{np.count_nonzero(actual != expected)} of {expected.size} output values differ"
    if (kind, name) == ("naive", "mnist"):  # real accuracy, not a constant output
        labels = np.load(MNIST_EVAL)["y"][:2000]
        assert np.mean(actual.reshape(2000, -1).argmax(1) == labels) > 0.98


@needs_gcc
def test_int8_api_gives_the_int8_tensors_behind_the_float_api(tmp_path):
    """``<name>_invoke`` on the int8 input (quantized as TFLite's QUANTIZE does) returns the int8
    output whose dequantization (header scale and zero point) is the float API's output."""
    artifact, feeds = naive_c("vww")
    directory = write(artifact, tmp_path / "src")
    sources = read_sources(directory, "vww")
    assert sources.float_api
    x = next(iter(feeds[0].values()))
    (int8_out,) = run_host(build_host(sources, tmp_path / "build"), sources, [_quantized_inputs(artifact, x)])
    float_out = artifact.runner(feeds[0])[0].reshape(int8_out.shape)
    header = (directory / "vww.h").read_text()
    scale = np.float32(float(header.split("VWW_OUTPUT_0_SCALE ")[1].split("f")[0]))
    zero_point = int(header.split("VWW_OUTPUT_0_ZERO_POINT ")[1].split("\n")[0].strip("()"))
    assert zero_point == -128 and scale == np.float32(1 / 256)  # softmax output
    np.testing.assert_array_equal(float_out, (int8_out.astype(np.float32) - zero_point) * scale)
    assert len(np.unique(int8_out)) > 2


@needs_gcc
def test_int8_model_io_gets_the_int8_api_only(tmp_path):
    """The official KWS twin takes and returns int8: no float wrapper; the runner feeds int8."""
    artifact, feeds = qat_c("kws")
    header = artifact.files["kws_qat.h"].decode()
    assert "kws_qat_invoke(const int8_t *input0, int8_t *output0)" in header
    assert "invoke_float" not in header
    out = artifact.runner(feeds[0])[0]
    assert out.dtype == np.int8 and out.shape == (1, 12)


@needs_qemu
@pytest.mark.parametrize("name", NAIVE)
def test_cortex_m4_build_in_qemu_gives_the_host_bytes(name, tmp_path):
    artifact, feeds = naive_c(name)
    directory = write(artifact, tmp_path / "src")
    sources = read_sources(directory, c_identifier(name))
    x = next(iter(feeds[0].values()))
    if name == "mnist":
        x = x[:50]
    from edgecomp_c.harness import ARM_CFLAGS

    int8_in = _quantized_inputs(artifact, x)
    host = run_host(build_host(sources, tmp_path / "host"), sources, [int8_in])[0]
    elf = build_qemu(sources, tmp_path / "arm", [int8_in], cflags=ARM_CFLAGS)
    emulated = run_qemu(elf, sources)[0]
    assert emulated.shape == host.shape and emulated.tobytes() == host.tobytes()


def _quantized_inputs(artifact, x: np.ndarray) -> np.ndarray:
    """Input 0 quantized exactly as the program's float API does (LiteRT QUANTIZE, reference)."""
    from edgecomp_tflite.layout import store

    lowered = artifact.runner.lowered
    stored = np.ascontiguousarray(store(x, lowered.input_layouts[0]), dtype=np.float32)
    interpreter = Interpreter(model_content=lowered.data, experimental_op_resolver_type=OpResolverType.BUILTIN_REF, experimental_preserve_all_tensors=True)
    interpreter.allocate_tensors()
    subgraph_input = interpreter.get_input_details()[0]["index"]
    from edgecomp_tflite.writer import read_model

    model = read_model(lowered.data)
    quantize = next(op for op in model.subgraphs[0].operators if subgraph_input in list(op.inputs))
    rows = []
    for row in stored:
        interpreter.set_tensor(subgraph_input, row[None])
        interpreter.invoke()
        rows.append(interpreter.get_tensor(int(quantize.outputs[0])).copy())
    return np.concatenate(rows)


# ---------------------------------------------------------------------------------- memory


@pytest.mark.parametrize("name", NAIVE)
def test_arena_is_the_plan_at_most_tflm_greedy_and_at_the_lower_bound(name):
    artifact, _ = naive_c(name)
    memory = artifact.metadata["memory"]
    assert memory["arena_bytes"] <= memory["tflm_greedy_bytes"]
    assert memory["arena_bytes"] == memory["lower_bound_bytes"]
    source = artifact.files[f"{c_identifier(name)}.c"].decode()
    assert f"_arena[{memory['arena_bytes']}]" in source
    layers = artifact.metadata["layers"]
    assert len(layers) == artifact.metadata["kernel_calls"]
    assert max(row["arena_live_bytes"] for row in layers) <= memory["arena_bytes"]
    assert sum(row["flash_bytes"] for row in layers) == artifact.metadata["constant_bytes"]


def test_vww_arena_reaches_the_lower_bound_where_tflm_greedy_needs_more():
    artifact, _ = qat_c("vww")
    memory = artifact.metadata["memory"]
    assert memory["arena_bytes"] == memory["lower_bound_bytes"] == 55_296
    assert memory["tflm_greedy_bytes"] == 73_728


# ---------------------------------------------------------------------------------- budgets, errors


def _small_target(tmp_path, ram: int, flash: int = 1 << 20) -> pathlib.Path:
    text = (ROOT / "targets" / "cortex-m4.toml").read_text()
    text = text.replace('name = "cortex-m4"', 'name = "tiny-m4"').replace("ram_bytes = 196608", f"ram_bytes = {ram}").replace("flash_bytes = 1048576", f"flash_bytes = {flash}")
    path = tmp_path / "tiny-m4.toml"
    path.write_text(text)
    return path


def test_model_larger_than_ram_budget_fails_with_budget_need_and_layers(tmp_path):
    model, _, _ = naive_model("vww")
    target = get_target(str(_small_target(tmp_path, ram=32768)))
    with pytest.raises(BudgetError) as info:
        CBackend().lower(model, target, LowerOptions(quantize="naive", model_name="vww"))
    message = str(info.value)
    assert "32768" in message and "55296" in message and "ram_bytes" in message
    assert "op 0 CONV_2D" in message or "CONV_2D" in message


def test_cli_build_fails_with_exit_code_8_when_the_model_does_not_fit(tmp_path):
    target = _small_target(tmp_path, ram=2048)
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-m", "edgecomp", "compile", str(MNIST_MODEL), "-t", str(target), "-b", "c", "--calibration", str(MNIST_CALIB), "-o", str(out)],
        capture_output=True, text=True,
    )
    assert result.returncode == 8, result.stderr
    assert "2048" in result.stderr and "ram_bytes" in result.stderr and "Traceback" not in result.stderr
    assert not out.exists()


def _mnist_with(op_type: str, tmp_path) -> tuple[pathlib.Path, list[str]]:
    """mnist-8 with both Relu replaced by ``op_type`` (valid ONNX): path and the replaced node names."""
    import onnx

    proto = onnx.load(MNIST_MODEL)
    relus = [n for n in proto.graph.node if n.op_type == "Relu"]
    for relu in relus:
        relu.op_type = op_type
    path = tmp_path / f"mnist_{op_type.lower()}.onnx"
    onnx.save(proto, path)
    return path, [r.name for r in relus]


def test_cli_lists_every_node_without_a_c_kernel_with_exit_code_7(tmp_path):
    path, names = _mnist_with("LeakyRelu", tmp_path)
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-m", "edgecomp", "compile", str(path), "-t", "cortex-m4", "-b", "c", "--calibration", str(MNIST_CALIB), "-o", str(out)],
        capture_output=True, text=True,
    )
    assert result.returncode == 7, result.stderr
    assert names[0] in result.stderr and "and 1 more" in result.stderr and "Traceback" not in result.stderr
    assert not out.exists()
    refused = CBackend().support(canonical(path, fold=True), get_target("cortex-m4"), quantize="hybrid")
    assert [entry.node for entry in refused.unsupported] == ["*"]


def test_lowering_lists_every_tflite_operator_without_a_c_kernel(tmp_path):
    """Past the ONNX-level check, the program builder still names each operator it cannot run."""
    from edgecomp_c.lowering import lower_program
    from edgecomp_tflite.backend import TFLiteBackend
    from edgecomp_tflite.writer import read_model

    from edgecomp.passes.quantize.naive import quantize_int8

    path, _ = _mnist_with("LeakyRelu", tmp_path)
    model = canonical(path, fold=True)
    quantize_int8(model, [{"Input3": mnist_digits(16)[:1]}], method="minmax")
    data = TFLiteBackend().lower(model, TARGET, LowerOptions(quantize="naive", model_name="m")).files["m.tflite"]
    with pytest.raises(UnsupportedError) as info:
        lower_program(read_model(data))
    message = str(info.value)
    assert "\n" not in message and message.startswith("c backend cannot lower 2 operator(s)")
    problems = message.split(": ", 1)[1].split("; ")
    assert len(problems) == 2 and all("LEAKY_RELU" in problem and "no C kernel" in problem for problem in problems)


def test_two_compiles_give_byte_identical_sources():
    model, _, _ = naive_model("kws")
    first = CBackend(verify=False).lower(model, TARGET, LowerOptions(quantize="naive", model_name="kws")).files
    model, _, _ = naive_model("kws")
    second = CBackend(verify=False).lower(model, TARGET, LowerOptions(quantize="naive", model_name="kws")).files
    assert first.keys() == second.keys()
    assert all(first[name] == second[name] for name in first)


# ---------------------------------------------------------------------------------- CLI, CMake


@needs_gcc
def test_cli_compile_verifies_bit_exactness_and_reports_the_arena(tmp_path):
    out = tmp_path / "mnist-c"
    result = subprocess.run(
        [sys.executable, "-m", "edgecomp", "compile", str(MNIST_MODEL), "-t", "cortex-m4", "-b", "c", "--calibration", str(MNIST_CALIB), "-o", str(out), "--json"],
        capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    metadata = report["backend_metadata"]
    assert metadata["verification"]["bit_exact"] is True and metadata["verification"]["samples"] > 0
    assert report["memory"]["arena_bytes"] == report["memory"]["lower_bound_bytes"]
    assert (out / "mnist_8.c").exists() and (out / "mnist_8.h").exists() and (out / "ec_conv.c").exists()
    header = (out / "mnist_8.h").read_text()  # I/O macros named as the c-array backend names them
    for line in ('#define MNIST_8_INPUT_0_NAME "Input3"', "#define MNIST_8_INPUT_0_RANK 4", "#define MNIST_8_INPUT_0_SHAPE {1, 1, 28, 28}",
                 "#define MNIST_8_INPUT_0_ELEMENTS 784", "#define MNIST_8_INPUT_0_BYTES 784", '#define MNIST_8_OUTPUT_0_NAME "Plus214_Output_0"'):
        assert line in header, line
    if shutil.which("arm-none-eabi-size"):
        size = metadata["compiled_size"]
        assert size["bss"] >= report["memory"]["arena_bytes"]
        assert size["text"] >= metadata["constant_bytes"]


@needs_gcc
def test_cli_compiles_the_float_resnet8_with_its_input_transpose(tmp_path):
    """ResNet-8 as tf2onnx exported it (an NHWC -> NCHW Transpose after the input) from the CLI, on
    the cortex-m4 default backend: the support check lets the Transpose through (the tflite
    lowering folds it into the layout), no TRANSPOSE kernel is emitted, the C output is bit-exact
    and the arena is the lower bound (49,152 B). The QDQ twin compiles too."""
    from canonicalize_support import IC_FLOAT, image_batch

    calibration = tmp_path / "ic_photos.npz"
    np.savez(calibration, input_1=image_batch(32, 1.0))
    out = tmp_path / "ic-c"
    result = subprocess.run(
        [sys.executable, "-m", "edgecomp", "compile", str(IC_FLOAT), "-t", "cortex-m4", "--calibration", str(calibration), "-o", str(out), "--json"],
        capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["backend"] == "c" and report["backend_metadata"]["verification"]["bit_exact"] is True
    assert report["memory"]["arena_bytes"] == report["memory"]["lower_bound_bytes"] == 49_152
    assert "ec_transpose" not in (out / "pretrainedResnet.c").read_text()
    twin = subprocess.run(
        [sys.executable, "-m", "edgecomp", "compile", str(OFFICIAL["ic"][0]), "-t", "cortex-m4", "-q", "qat", "-o", str(tmp_path / "ic-qat")],
        capture_output=True, text=True,
    )
    assert twin.returncode == 0, twin.stderr


@needs_gcc
def test_selective_without_a_goal_is_full_integer_and_bit_exact(tmp_path):
    """-q selective (per-tensor calibration methods, no layer left float without a goal) on the
    cortex-m4 default backend: KWS's C output is bit-identical to LiteRT's reference kernels."""
    from canonicalize_support import KWS_FLOAT, kws_input_float

    calibration = tmp_path / "kws.npz"
    np.savez(calibration, input_1=kws_input_float())
    result = subprocess.run(
        [sys.executable, "-m", "edgecomp", "compile", str(KWS_FLOAT), "-t", "cortex-m4", "-q", "selective", "--calibration", str(calibration), "-o", str(tmp_path / "kws"), "--json"],
        capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["selective"]["float_nodes"] == [] and report["backend_metadata"]["verification"]["bit_exact"] is True


@needs_gcc
@pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake not installed")
def test_cmake_example_configures_builds_and_classifies_real_digits(tmp_path):
    edgecomp = shutil.which("edgecomp")
    if edgecomp is None:
        pytest.skip("the edgecomp console script is not on PATH")
    build = tmp_path / "build"
    subprocess.run(["cmake", "-S", str(ROOT / "examples" / "cmake-firmware"), "-B", str(build), "-DEDGECOMP_TARGET=host-x86_64"], check=True, capture_output=True)
    result = subprocess.run(["cmake", "--build", str(build)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    run = subprocess.run([str(build / "classify_digits")], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout
    assert "of 16 correct" in run.stdout
    report = json.loads((build / "edgecomp_mnist_model.json").read_text())
    assert report["backend"] == "c"
