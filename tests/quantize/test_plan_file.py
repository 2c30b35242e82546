"""--plan FILE: a user-edited quantization plan is applied, and a bad one is refused with the key at fault."""

from __future__ import annotations

import json

import pytest

from realdata import MNIST_MODEL

from edgecomp.compile import PLAN_FILE, CompileOptions, compile_model
from edgecomp.errors import PlanError


@pytest.fixture
def written_plan(tmp_path, mnist_small_calib) -> dict:
    compile_model(CompileOptions(model=str(MNIST_MODEL), target="host-x86_64", calibration=str(mnist_small_calib), output=str(tmp_path / "first")))
    return json.loads((tmp_path / "first" / PLAN_FILE).read_text())


def compile_with(tmp_path, calibration, plan: dict, name="edited"):
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(plan))
    return compile_model(CompileOptions(model=str(MNIST_MODEL), target="host-x86_64", quantize="naive", calibration=str(calibration),
                                        plan=str(path), output=str(tmp_path / name)))


def test_edited_plan_is_applied(tmp_path, mnist_small_calib, written_plan):
    for node in written_plan["nodes"]:
        if node["op_type"] == "Gemm":
            node["precision"] = "fp32"
    tensors = {t["name"]: t for t in written_plan["tensors"]}
    tensors["ReLU32_Output_0"]["method"] = "percentile"
    tensors["Input3"].update(method="fixed", scale=[0.5], zero_point=[-128])  # pixels 0..127.5: the user's choice
    result = compile_with(tmp_path, mnist_small_calib, written_plan)
    plan = result.plan
    assert {n.name: n.precision for n in plan.nodes if n.op_type == "Gemm"} == {"Times212": "fp32"}
    assert plan.tensor("ReLU32_Output_0").method == "percentile"
    assert plan.tensor("Input3").method == "fixed" and plan.tensor("Input3").scale == (0.5,)
    assert not any(t.role == "weight" and t.name == "Parameter193_reshape1" for t in plan.tensors)  # Gemm stays float


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda p: p["nodes"][0].update(name="Convolution999"), r"nodes\[0\]\.name: unknown node 'Convolution999'"),
        (lambda p: p["nodes"][1].update(precision="fp16"), r"nodes\[1\]\.precision of node '.*': 'fp16' is not supported \(use int8 or fp32\)"),
        (lambda p: p["tensors"].append({"name": "nowhere", "role": "activation", "method": "minmax"}), r"unknown tensor 'nowhere'"),
        (lambda p: next(t for t in p["tensors"] if t["name"] == "Input3").update(method="median"), r"method of tensor 'Input3': 'median' is not one of"),
        (lambda p: next(t for t in p["tensors"] if t["name"] == "Input3").update(method="fixed", scale=[-1.0]), r"tensor 'Input3'\): 'scale' must be a positive finite number"),
        (lambda p: next(t for t in p["tensors"] if t["name"] == "Input3").update(method="fixed", zero_point=[300]), r"'zero_point' must be an integer in \[-128, 127\]"),
        (lambda p: p.update(format_version=7), r"key 'format_version' must be 1"),
    ],
)
def test_bad_plans_are_refused_naming_the_key(tmp_path, mnist_small_calib, written_plan, edit, message):
    edit(written_plan)
    with pytest.raises(PlanError, match=message):
        compile_with(tmp_path, mnist_small_calib, written_plan)
    assert not (tmp_path / "edited").exists()
