"""The informational commands: inspect, targets, plugins (JSON output checked against the models)."""

from __future__ import annotations

import json

from click.testing import CliRunner

from realdata import MLPERF, MNIST_MODEL

from edgecomp.cli import cli


def invoke(*args: str) -> dict | list:
    result = CliRunner().invoke(cli, list(args))
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_inspect_mnist():
    data = invoke("inspect", str(MNIST_MODEL), "--json")
    assert data["parameters"] == 5998
    # 2 Conv (5x5, 'same'): 8*28*28*1*25 + 16*14*14*8*25, dense 256x10
    assert data["macs"] == 8 * 28 * 28 * 25 + 16 * 14 * 14 * 8 * 25 + 256 * 10
    assert data["op_histogram"]["Conv"] == 2
    assert {name: data["support"][name] for name in ("c-array", "onnxruntime", "tflite")} == {"c-array": [], "onnxruntime": [], "tflite": []}


def test_inspect_reports_backend_support_per_target():
    data = invoke("inspect", str(MLPERF / "kws" / "kws_ref_model_float32.onnx"), "-t", "cortex-m4", "--json")
    assert data["support"]["c-array"] == []
    assert "bare-metal" in data["support"]["onnxruntime"][0]["reason"]


def test_targets_and_plugins_json():
    targets = invoke("targets", "--json")
    assert {"cortex-m4", "cortex-m7", "host-x86_64", "rpi4-aarch64"} <= {t["name"] for t in targets}
    plugins = invoke("plugins", "--json")
    assert {"c-array", "onnxruntime", "tflite"} <= set(plugins["backends"])
    rows = {p["name"]: p for p in plugins["plugins"]}
    assert rows["tflite"]["backends"] == ["tflite"] and rows["tflite"]["hooks"] == ["edgecomp_register_backends"]


def test_closed_stdout_pipe_after_the_work_is_exit_0(tmp_path):
    """``edgecomp compile ... | head -1``: the artifacts are written; a closed pipe is no error."""
    import subprocess
    import sys

    for extra in ([], ["--json"]):
        out = tmp_path / f"out{len(extra)}"
        process = subprocess.Popen(
            [sys.executable, "-m", "edgecomp", "compile", str(MNIST_MODEL), "-t", "host-x86_64", "-b", "tflite", "-q", "none", "-o", str(out), *extra],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        process.stdout.read(1)
        process.stdout.close()
        stderr = process.stderr.read().decode()
        assert process.wait() == 0, stderr
        assert "error" not in stderr and (out / "mnist-8.tflite").exists()
