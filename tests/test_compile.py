"""End-to-end compiles of the real models through the Python API and the CLI."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from realdata import ASSETS, MLPERF, MNIST_CALIB, MNIST_EVAL, MNIST_MODEL

from edgecomp.compile import PLAN_FILE, CompileOptions, compile_model
from edgecomp.errors import BudgetError
from edgecomp.ir.run import make_session


def test_mnist_for_cortex_m4_as_in_the_readme(tmp_path):
    """The README's first command: real digits, INT8, microcontroller target, report on stdout."""
    result = subprocess.run(
        [sys.executable, "-m", "edgecomp", "compile", str(MNIST_MODEL), "-t", "cortex-m4",
         "--calibration", str(MNIST_CALIB), "--eval", str(MNIST_EVAL), "-o", "build", "--json"],
        capture_output=True, text=True, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    names = sorted(pathlib.Path(a["path"]).name for a in report["artifacts"])
    assert "mnist_8.c" in names and "mnist_8.h" in names and PLAN_FILE in names
    assert {name for name in names if name.startswith("ec_")} == {"ec_conv.c", "ec_conv.h", "ec_elementwise.c", "ec_elementwise.h", "ec_fixedpoint.h", "ec_kernels.h", "ec_pool.c", "ec_pool.h", "ec_shape.c", "ec_shape.h", "ec_softmax.c", "ec_softmax.h"}
    assert sorted(p.name for p in (tmp_path / "build").iterdir()) == [".edgecomp-output", *names]
    output = report["evaluation"]["outputs"]["Plus214_Output_0"]
    assert output["accuracy_fp32"] == pytest.approx(0.993)
    assert output["accuracy_compiled"] >= 0.9925
    assert output["sqnr_db"] > 25
    assert report["sizes"]["flash_bytes"] <= report["sizes"]["flash_budget_bytes"] == 1048576
    assert report["backend"] == "c" and report["backend_metadata"]["verification"]["bit_exact"] is True
    assert set(report["timings_s"]) >= {"load", "canonicalize", "quantize", "lower", "evaluate", "write"}


def test_float_compile_json_is_standard_and_says_when_nothing_was_verified(tmp_path):
    """-q none with --eval on the onnxruntime backend: the artifact's outputs equal the reference's,
    an infinite SQNR, printed as null (RFC 8259 JSON has no Infinity); without any data the report
    warns that the artifact was never run."""
    evaluated = subprocess.run(
        [sys.executable, "-m", "edgecomp", "compile", str(MNIST_MODEL), "-t", "host-x86_64", "-q", "none",
         "--eval", str(MNIST_EVAL), "-o", "a", "--json"], capture_output=True, text=True, cwd=tmp_path,
    )
    assert evaluated.returncode == 0, evaluated.stderr
    report = json.loads(evaluated.stdout, parse_constant=lambda name: pytest.fail(f"non-standard JSON constant {name}"))
    output = report["evaluation"]["outputs"]["Plus214_Output_0"]
    assert output["accuracy_compiled"] == output["accuracy_fp32"] == pytest.approx(0.993)
    assert output["sqnr_db"] is None and output["max_abs_error"] == 0.0
    assert not [w for w in report["warnings"] if w["kind"] == "not-verified"]
    bare = subprocess.run(
        [sys.executable, "-m", "edgecomp", "compile", str(MNIST_MODEL), "-t", "host-x86_64", "-q", "none", "-o", "b", "--json"],
        capture_output=True, text=True, cwd=tmp_path,
    )
    assert bare.returncode == 0, bare.stderr
    assert [w["kind"] for w in json.loads(bare.stdout)["warnings"]] == ["not-verified"]
    assert "edgecomp: warning: mnist-8.onnx: not-verified:" in bare.stderr


def test_same_inputs_give_byte_identical_artifacts(tmp_path, mnist_small_calib):
    digests = []
    for run in ("a", "b"):
        result = compile_model(CompileOptions(model=str(MNIST_MODEL), target="cortex-m4", calibration=str(mnist_small_calib), output=str(tmp_path / run)))
        digests.append({pathlib.Path(a["path"]).name: a["sha256"] for a in result.report["artifacts"]})
    assert digests[0] == digests[1]
    for name in digests[0]:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_flash_budget_exceeded_names_both_sizes(tmp_path, mnist_small_calib):
    small = tmp_path / "tiny-mcu.toml"
    text = (pathlib.Path(__file__).resolve().parent.parent / "targets" / "cortex-m4.toml").read_text()
    small.write_text(text.replace('name = "cortex-m4"', 'name = "tiny-mcu"').replace("flash_bytes = 1048576", "flash_bytes = 4096"))
    with pytest.raises(BudgetError, match=r"needs \d+ bytes of flash \(.*\); target 'tiny-mcu' has 4096 \(flash_bytes\); layers with the most constant bytes: op 2 CONV_2D"):
        compile_model(CompileOptions(model=str(MNIST_MODEL), target=str(small), calibration=str(mnist_small_calib), output=str(tmp_path / "out")))
    with pytest.raises(BudgetError, match=r"needs \d+ bytes of flash; target 'tiny-mcu' has 4096"):
        compile_model(CompileOptions(model=str(MNIST_MODEL), target=str(small), backend="c-array", calibration=str(mnist_small_calib), output=str(tmp_path / "out")))
    assert not (tmp_path / "out").exists()


def test_float_compile_matches_the_model(tmp_path):
    result = compile_model(CompileOptions(model=str(MNIST_MODEL), target="host-x86_64", quantize="none", eval=str(MNIST_EVAL), output=str(tmp_path / "f")))
    output = result.report["evaluation"]["outputs"]["Plus214_Output_0"]
    assert output["top1_agreement"] == 1.0 and output["max_abs_error"] < 1e-3
    assert not (tmp_path / "f" / PLAN_FILE).exists()


def _images(size: int, scale: float) -> np.ndarray:
    folder = ASSETS / "images"
    files = sorted(p for p in folder.iterdir() if p.suffix in (".png", ".jpg"))
    return np.stack([np.asarray(Image.open(p).convert("RGB").resize((size, size), Image.BILINEAR), np.float32) * scale for p in files])


def _kws_sample() -> np.ndarray:
    q = np.load(MLPERF / "kws" / "mlperf_kws_input_data_int8_1x49x10x1.npy")
    return (q.astype(np.float32) - 83) * 0.5847029089927673


# (model file, input builder, minimum SQNR dB on the real inputs)
MLPERF_CASES = {
    "kws": ("kws/kws_ref_model_float32.onnx", _kws_sample, 20.0),
    "vww": ("vww/vww_96_float.onnx", lambda: _images(96, 1 / 255), 15.0),
    "ic": ("ic/pretrainedResnet.onnx", lambda: _images(32, 1.0), 15.0),
}


@pytest.mark.parametrize("name", sorted(MLPERF_CASES))
def test_mlperf_tiny_naive_int8_for_host(tmp_path, name):
    path, make_inputs, min_sqnr = MLPERF_CASES[name]
    x = make_inputs()
    data = tmp_path / "data.npz"
    np.savez(data, x=x)
    result = compile_model(CompileOptions(model=str(MLPERF / path), target="host-x86_64", calibration=str(data), eval=str(data), output=str(tmp_path / "out")))
    output = next(iter(result.report["evaluation"]["outputs"].values()))
    assert output["sqnr_db"] >= min_sqnr
    # the shipped file runs in ONNX Runtime with its default settings and agrees with the report
    session = make_session((tmp_path / "out" / (pathlib.Path(path).stem + ".onnx")).read_bytes(), optimize=True)
    probabilities = session.run(None, {session.get_inputs()[0].name: x})[0]
    assert probabilities.shape == (len(x), {"kws": 12, "vww": 2, "ic": 10}[name])
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=0.02)


def test_float_compile_with_verification_data_checks_the_ort_twin(tmp_path, mnist_small_calib):
    """-q none with --calibration: the .ort twin is compared with the .onnx within 1e-4 of the range."""
    result = compile_model(CompileOptions(model=str(MNIST_MODEL), target="host-x86_64", quantize="none", calibration=str(mnist_small_calib), output=str(tmp_path / "f")))
    metadata = result.report["backend_metadata"]
    assert metadata["ort_vs_onnx_max_difference"] <= 1.0
    assert metadata["fused_kernel_check"] == "not run: float model"
    assert "weight_range" not in metadata


def test_tensor_arena_is_planned_and_checked_against_the_ram_budget(tmp_path, mnist_small_calib):
    result = compile_model(CompileOptions(model=str(MNIST_MODEL), target="cortex-m4", calibration=str(mnist_small_calib), output=str(tmp_path / "m4")))
    memory = result.report["memory"]
    # int8 activations: the 28x28x8 Conv output (6,272 B) and the 14x14x8 pooled map (1,568 B) are the peak pair
    assert memory["lower_bound_bytes"] == memory["arena_bytes"] == 6272 + 1568
    assert memory["ram_budget_bytes"] == 196608
    small = tmp_path / "tiny-ram.toml"
    text = (pathlib.Path(__file__).resolve().parent.parent / "targets" / "cortex-m4.toml").read_text()
    small.write_text(text.replace('name = "cortex-m4"', 'name = "tiny-ram"').replace("ram_bytes = 196608", "ram_bytes = 4096"))
    # the c backend (cortex-m4's default) plans the arena of the program it generates
    with pytest.raises(BudgetError, match=r"tensor arena needs 7840 bytes of RAM; target 'tiny-ram' has 4096 \(ram_bytes\); at the peak .*6272 B"):
        compile_model(CompileOptions(model=str(MNIST_MODEL), target=str(small), calibration=str(mnist_small_calib), output=str(tmp_path / "out")))
    # other backends: the pipeline plans the IR's arena
    with pytest.raises(BudgetError, match=r"activations need a 7840-byte tensor arena; target 'tiny-ram' has 4096 bytes of RAM \(largest tensors alive together: .*6272 B"):
        compile_model(CompileOptions(model=str(MNIST_MODEL), target=str(small), backend="c-array", calibration=str(mnist_small_calib), output=str(tmp_path / "out")))
    assert not (tmp_path / "out").exists()
