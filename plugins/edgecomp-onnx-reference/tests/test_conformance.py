"""The onnx-reference backend: edgecomp's conformance kit, and its own behaviour on real MNIST digits.

The CLI is driven as a user would (``python -m edgecomp``), so these tests use only public
interfaces: the entry point, the command line and its ``--json`` report, the conformance kit.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import ClassVar

import numpy as np
import onnx
import onnx.helper
import pytest

pytest.importorskip("edgecomp_onnx_reference", reason="not installed: pip install -e plugins/edgecomp-onnx-reference")

from edgecomp.testing.conformance import BackendConformance, kit_data


class TestOnnxReferenceConformance(BackendConformance):
    backend_name = "onnx-reference"
    target = "reference-host"
    # ONNX Runtime and the reference evaluator sum float32 in different orders (float model); in
    # the QDQ model such a difference may move a value across a rounding boundary of one
    # QuantizeLinear (one step, about 1 % of an output range in mnist-8).
    tolerance: ClassVar[dict[str, float]] = {"none": 1e-5, "naive": 0.02}


def edgecomp(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgecomp", *args], capture_output=True, text=True, check=False)


@pytest.fixture
def digits(tmp_path):
    """16 real MNIST digits as float32 pixels 0..255 (mnist-8's input) with their labels."""
    data = np.load(kit_data("mnist_digits_16.npz"))
    path = tmp_path / "digits.npz"
    np.savez(path, x=data["x"].astype(np.float32), y=data["y"])
    return path


def test_float_model_reproduces_onnxruntime_on_real_digits(tmp_path, digits):
    result = edgecomp("compile", str(kit_data("mnist-8.onnx")), "-t", "reference-host", "-q", "none",
                      "--calibration", str(digits), "--eval", str(digits), "-o", str(tmp_path / "out"), "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["backend"] == "onnx-reference"
    evaluation = report["evaluation"]["outputs"]["Plus214_Output_0"]
    assert evaluation["accuracy_fp32"] == evaluation["accuracy_compiled"] == 1.0  # all 16 digits right
    assert evaluation["top1_agreement"] == 1.0
    assert evaluation["sqnr_db"] > 100.0  # float32 summation order only
    assert report["backend_metadata"]["max_error_vs_fp32_of_range"] < 1e-5
    artifact = onnx.load(tmp_path / "out" / "mnist-8.onnx")
    assert [o.version for o in artifact.opset_import if o.domain in ("", "ai.onnx")] == [13]  # kept as it was


def test_int8_model_runs_at_upgraded_opset(tmp_path, digits):
    result = edgecomp("compile", str(kit_data("mnist-8.onnx")), "-t", "reference-host", "-q", "naive",
                      "--calibration", str(digits), "--eval", str(digits), "-o", str(tmp_path / "out"), "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    artifact = onnx.load(tmp_path / "out" / "mnist-8.onnx")
    ops = {node.op_type for node in artifact.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops
    # onnx.reference has no DequantizeLinear before opset 19: the backend upgraded the model
    assert [o.version for o in artifact.opset_import if o.domain in ("", "ai.onnx")] == [21]
    assert report["backend_metadata"]["opset"].startswith("upgraded from 13 to 21")
    evaluation = report["evaluation"]["outputs"]["Plus214_Output_0"]
    assert evaluation["top1_agreement"] >= 15 / 16
    assert 20.0 < evaluation["sqnr_db"] < 80.0  # int8 noise: clearly lossy, clearly not garbage


def _model_with_unimplemented_ops(path):
    """x[1,8,4,4] -> GlobalLpPool (in the ONNX spec, not in onnx.reference) -> Relu -> y."""
    graph = onnx.helper.make_graph(
        [
            onnx.helper.make_node("GlobalLpPool", ["x"], ["pooled"], name="lp_pool", p=2),
            onnx.helper.make_node("Relu", ["pooled"], ["y"], name="relu"),
        ],
        "unimplemented",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 8, 4, 4])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 8, 1, 1])],
    )
    onnx.save(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 13)]), path)
    return path


def test_support_names_the_node_the_evaluator_cannot_run(tmp_path):
    model = _model_with_unimplemented_ops(tmp_path / "lp.onnx")
    result = edgecomp("inspect", str(model), "-t", "reference-host", "--json")
    assert result.returncode == 0, result.stderr
    entries = json.loads(result.stdout)["support"]["onnx-reference"]
    assert [(e["node"], e["op_type"]) for e in entries] == [("lp_pool", "GlobalLpPool")]
    assert "no implementation of GlobalLpPool" in entries[0]["reason"]
    compiled = edgecomp("compile", str(model), "-t", "reference-host", "-q", "none", "-o", str(tmp_path / "out"))
    assert compiled.returncode == 7
    assert "lp_pool" in compiled.stderr and "GlobalLpPool" in compiled.stderr
    assert not (tmp_path / "out").exists()
