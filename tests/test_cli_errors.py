"""Bad input: one clear line on stderr, a documented exit code, no traceback, no output folder left behind."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import numpy as np
import onnx
import pytest

from realdata import MNIST_CALIB, MNIST_MODEL

from edgecomp.errors import CalibrationDataError, ModelError, OutputError, PluginError, TargetError, UnsupportedError


def run_cli(*args: str, cwd: pathlib.Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgecomp", *args], capture_output=True, text=True, cwd=cwd)


def assert_clean_failure(result: subprocess.CompletedProcess, exit_code: int, *fragments: str) -> None:
    assert result.returncode == exit_code, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("edgecomp: error: ")
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def mnist_with(tmp_path: pathlib.Path, edit) -> pathlib.Path:
    proto = onnx.load(MNIST_MODEL)
    edit(proto)
    path = tmp_path / "broken.onnx"
    path.write_bytes(proto.SerializeToString())
    return path


def _drop_initializer(proto):
    for field in (proto.graph.initializer, proto.graph.input):
        kept = [item for item in field if item.name != "Parameter87"]
        del field[:]
        field.extend(kept)


def _make_cycle(proto):
    next(n for n in proto.graph.node if n.name == "Convolution110").input[0] = "Plus112_Output_0"


def _unknown_domain(proto):
    proto.graph.node[3].domain = "org.example"


MODEL_CASES = {
    "not-onnx": (lambda tmp: (tmp / "x.onnx").write_text("hello, not a model") and tmp / "x.onnx", ["x.onnx", "not an ONNX model"]),
    "truncated": (lambda tmp: (tmp / "t.onnx").write_bytes(MNIST_MODEL.read_bytes()[:9000]) and tmp / "t.onnx", ["t.onnx", "truncated"]),
    "missing-initializer": (lambda tmp: mnist_with(tmp, _drop_initializer), ["Convolution110", "Parameter87"]),
    "cycle": (lambda tmp: mnist_with(tmp, _make_cycle), ["cycle"]),
    "unknown-domain": (lambda tmp: mnist_with(tmp, _unknown_domain), ["ReLU32", "org.example"]),
}


@pytest.mark.parametrize("case", sorted(MODEL_CASES))
def test_bad_model(tmp_path, case):
    make, fragments = MODEL_CASES[case]
    model = make(tmp_path)
    before = model.read_bytes()
    result = run_cli("compile", str(model), "-t", "host-x86_64", "--calibration", str(MNIST_CALIB), "-o", "out", cwd=tmp_path)
    assert_clean_failure(result, ModelError.exit_code, *fragments)
    assert not (tmp_path / "out").exists()
    assert model.read_bytes() == before  # the input is never modified


def _npz(tmp_path: pathlib.Path, **arrays) -> pathlib.Path:
    path = tmp_path / "calib.npz"
    np.savez(path, **arrays)
    return path


def real_digits(count: int) -> np.ndarray:
    return np.load(MNIST_CALIB)["x"][:count]


CALIBRATION_CASES = {
    "wrong-shape": (lambda tmp: _npz(tmp, Input3=real_digits(4)[:, :, :27, :]), ["calib.npz", "Input3"]),
    "wrong-dtype": (lambda tmp: _npz(tmp, Input3=np.array([["a"] * 784] * 2).reshape(2, 1, 28, 28)), ["calib.npz", "Input3"]),
    "wrong-name": (lambda tmp: _npz(tmp, image=real_digits(4)), ["calib.npz", "image"]),
    "empty": (lambda tmp: _npz(tmp, Input3=real_digits(0)), ["calib.npz"]),
}


@pytest.mark.parametrize("case", sorted(CALIBRATION_CASES))
def test_bad_calibration_data(tmp_path, case):
    make, fragments = CALIBRATION_CASES[case]
    result = run_cli("compile", str(MNIST_MODEL), "-t", "host-x86_64", "--calibration", str(make(tmp_path)), "-o", "out", cwd=tmp_path)
    assert_clean_failure(result, CalibrationDataError.exit_code, *fragments)
    assert not (tmp_path / "out").exists()


def test_eval_labels_outside_the_output_classes(tmp_path):
    """mnist-8 has 10 classes: a label 42 would make accuracy 0 % silently; it is refused instead."""
    evaluation = tmp_path / "eval.npz"
    np.savez(evaluation, x=real_digits(8), y=np.array([7, 2, 1, 0, 4, 1, 4, 42]))
    result = run_cli("compile", str(MNIST_MODEL), "-t", "host-x86_64", "-q", "none", "--eval", str(evaluation), "-o", "out", cwd=tmp_path)
    assert_clean_failure(result, CalibrationDataError.exit_code, "eval.npz", "label 42", "Plus214_Output_0", "0..9")
    assert not (tmp_path / "out").exists()


def test_unknown_target(tmp_path):
    result = run_cli("compile", str(MNIST_MODEL), "-t", "cortex-m99", "--calibration", str(MNIST_CALIB), "-o", "out", cwd=tmp_path)
    assert_clean_failure(result, TargetError.exit_code, "cortex-m99", "cortex-m4")
    assert not (tmp_path / "out").exists()


def test_target_file_with_an_unknown_default_backend(tmp_path):
    text = (pathlib.Path(__file__).parents[1] / "targets" / "cortex-m4.toml").read_text()
    board = tmp_path / "board.toml"
    board.write_text(text.replace('default_backend = "c"', 'default_backend = "cmsis"'))
    assert 'default_backend = "cmsis"' in board.read_text()
    result = run_cli("compile", str(MNIST_MODEL), "-t", str(board), "--calibration", str(MNIST_CALIB), "-o", "out", cwd=tmp_path)
    assert_clean_failure(result, TargetError.exit_code, "board.toml", "'default_backend'", "cmsis")
    assert not (tmp_path / "out").exists()


def test_unknown_backend(tmp_path):
    result = run_cli("compile", str(MNIST_MODEL), "-t", "host-x86_64", "-b", "tensorrt", "--calibration", str(MNIST_CALIB), "-o", "out", cwd=tmp_path)
    assert_clean_failure(result, PluginError.exit_code, "tensorrt", "onnxruntime")
    assert not (tmp_path / "out").exists()


def test_output_path_is_a_file(tmp_path):
    (tmp_path / "out").write_text("keep me")
    result = run_cli("compile", str(MNIST_MODEL), "-t", "host-x86_64", "--calibration", str(MNIST_CALIB), "-o", "out", cwd=tmp_path)
    assert_clean_failure(result, OutputError.exit_code, "out", "existing file")
    assert (tmp_path / "out").read_text() == "keep me"


def test_missing_model_file(tmp_path):
    result = run_cli("compile", "nowhere.onnx", "-t", "host-x86_64", "-q", "none", cwd=tmp_path)
    assert_clean_failure(result, ModelError.exit_code, "nowhere.onnx", "not found")


def test_no_leftover_staging_folders(tmp_path):
    result = run_cli("compile", str(MNIST_MODEL), "-t", "nope", "-q", "none", "-o", "out", cwd=tmp_path)
    assert result.returncode == TargetError.exit_code
    assert os.listdir(tmp_path) == []


def test_foreign_output_folder_is_never_replaced(tmp_path):
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "main.c").write_text("int main(void) { return 0; }\n")
    result = run_cli("compile", str(MNIST_MODEL), "-t", "host-x86_64", "-q", "none", "-o", "project", cwd=tmp_path)
    assert_clean_failure(result, OutputError.exit_code, "project", "not written by edgecomp")
    assert sorted(p.name for p in folder.iterdir()) == ["main.c"]


def test_output_folder_holding_an_input_is_refused(tmp_path):
    model = tmp_path / "models" / "mnist-8.onnx"
    model.parent.mkdir()
    model.write_bytes(MNIST_MODEL.read_bytes())
    result = run_cli("compile", str(model), "-t", "host-x86_64", "-q", "none", "-o", "models", cwd=tmp_path)
    assert_clean_failure(result, OutputError.exit_code, "contains the input")
    assert model.read_bytes() == MNIST_MODEL.read_bytes()


def test_edgecomp_output_folder_is_replaced_whole(tmp_path):
    """A folder holding only what the last compile wrote (its marker lists each file and its
    sha256) is replaced as a whole, older files included (the naive compile's plan here)."""
    first = run_cli("compile", str(MNIST_MODEL), "-t", "host-x86_64", "-q", "naive", "--calibration", str(MNIST_CALIB), "-o", "out", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "quantization_plan.json" in (tmp_path / "out" / ".edgecomp-output").read_text()
    second = run_cli("compile", str(MNIST_MODEL), "-t", "host-x86_64", "-q", "none", "-o", "out", cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [".edgecomp-output", "mnist-8.onnx", "mnist-8.ort"]


@pytest.mark.parametrize("change", ["add", "edit"])
def test_a_file_added_or_edited_in_an_edgecomp_folder_is_never_deleted(tmp_path, change):
    first = run_cli("compile", str(MNIST_MODEL), "-t", "host-x86_64", "-q", "none", "-o", "out", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    touched = tmp_path / "out" / ("notes.txt" if change == "add" else "mnist-8.onnx")
    touched.write_text("the user's own words")
    second = run_cli("compile", str(MNIST_MODEL), "-t", "host-x86_64", "-q", "none", "-o", "out", cwd=tmp_path)
    assert_clean_failure(second, OutputError.exit_code, touched.name, "added or changed after edgecomp wrote this folder")
    assert touched.read_text() == "the user's own words"


def test_io_layout_on_a_backend_without_one(tmp_path):
    result = run_cli("compile", str(MNIST_MODEL), "-t", "host-x86_64", "-q", "none", "--io-layout", "nhwc", "-o", "out", cwd=tmp_path)
    assert_clean_failure(result, UnsupportedError.exit_code, "--io-layout nhwc")
    assert not (tmp_path / "out").exists()


def test_dump_ir_writes_each_pass_and_never_overwrites_other_files(tmp_path):
    first = run_cli("compile", str(MNIST_MODEL), "-t", "host-x86_64", "-q", "none", "-o", "out", "--dump-ir", "dump", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    dumps = sorted(p.name for p in (tmp_path / "dump").iterdir())
    assert dumps[0] == "00-input.onnx" and "05-DropoutToIdentityPass.onnx" in dumps and len(dumps) >= 10
    assert len(onnx.load(tmp_path / "dump" / dumps[-1]).graph.node) < len(onnx.load(tmp_path / "dump" / dumps[0]).graph.node)
    again = run_cli("compile", str(MNIST_MODEL), "-t", "host-x86_64", "-q", "none", "-o", "out", "--dump-ir", "dump", cwd=tmp_path)
    assert again.returncode == 0, again.stderr  # over an earlier dump
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "00-input.onnx").write_text("my own file")
    (tmp_path / "mine" / "notes.txt").write_text("my notes")
    refused = run_cli("compile", str(MNIST_MODEL), "-t", "host-x86_64", "-q", "none", "-o", "out2", "--dump-ir", "mine", cwd=tmp_path)
    assert_clean_failure(refused, OutputError.exit_code, "--dump-ir", "notes.txt")
    assert (tmp_path / "mine" / "00-input.onnx").read_text() == "my own file" and not (tmp_path / "out2").exists()


def test_a_mode_the_backend_refuses_is_named_as_a_mode(tmp_path):
    result = run_cli("compile", str(MNIST_MODEL), "-t", "cortex-m4", "-q", "hybrid", "--calibration", str(MNIST_CALIB), "-o", "out", cwd=tmp_path)
    assert_clean_failure(result, UnsupportedError.exit_code, "backend 'c' does not take --quantize hybrid", "full-integer int8")
    assert "node '*'" not in result.stderr and not (tmp_path / "out").exists()


def test_a_selective_goal_on_an_int8_only_backend_is_refused_before_any_work(tmp_path):
    result = run_cli("compile", str(MNIST_MODEL), "-t", "cortex-m4", "-q", "selective", "--min-sqnr", "42", "--calibration", str(MNIST_CALIB), "-o", "out", cwd=tmp_path)
    assert_clean_failure(result, 2, "backend 'c' has int8 kernels only", "selective goal")
    assert not (tmp_path / "out").exists()
