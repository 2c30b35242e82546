"""Selective INT8 on real models: per-tensor calibration methods, the search for the fewest float
layers meeting a goal (output SQNR or accuracy drop), and the plan it writes."""

from __future__ import annotations

import json
import math
import pathlib

import numpy as np
import onnx_ir as ir
import pytest
from PIL import Image
from realdata import ASSETS, MLPERF, MNIST_CALIB, MNIST_EVAL, MNIST_MODEL

from edgecomp.errors import CalibrationDataError
from edgecomp.ir.load import load_model, to_bytes
from edgecomp.ir.run import make_session, run_batches
from edgecomp.passes.base import PassManager
from edgecomp.passes.canonicalize import canonicalization_passes
from edgecomp.passes.quantize import metrics
from edgecomp.passes.quantize.calibrate import collect_ranges
from edgecomp.passes.quantize.naive import quantize_int8, select_int8_nodes
from edgecomp.passes.quantize.observers import METHODS
from edgecomp.passes.quantize.plan_file import read_plan
from edgecomp.passes.quantize.selective import (
    SelectiveQuantizationPass,
    calibrate_selective,
    choose_tensor_methods,
    observed_tensors,
    quantize_selective,
    run_selective,
)


def canonical(path: pathlib.Path) -> ir.Model:
    return PassManager(canonicalization_passes(fold_weight_dequantize=False))(load_model(path)).model


def mnist_batches(count: int = 200) -> list[dict[str, np.ndarray]]:
    digits = np.load(MNIST_CALIB)["x"][:count].astype(np.float32)
    return [{"Input3": digits[i : i + 1]} for i in range(len(digits))]


@pytest.fixture(scope="module")
def mnist_eval_batches():
    data = np.load(MNIST_EVAL)
    x = data["x"].astype(np.float32)
    return [{"Input3": x[i : i + 1]} for i in range(len(x))], data["y"]


def resnet_batches() -> list[dict[str, np.ndarray]]:
    """The 4 real photos of tests/assets/images as 32x32 RGB 0..255 NHWC float (MLPerf IC input)."""
    paths = sorted((ASSETS / "images").glob("skimage_*.[pj][np]g"))
    images = np.stack([np.asarray(Image.open(p).convert("RGB").resize((32, 32), Image.BILINEAR), np.float32) for p in paths])
    return [{"input_1": images}]


def output_sqnr(model: ir.Model, batches, reference) -> float:
    return metrics.sqnr_db(reference, run_batches(make_session(model, optimize=False), batches)[0])


@pytest.fixture(scope="module")
def mnist():
    model = canonical(MNIST_MODEL)
    batches = mnist_batches()
    reference = run_batches(make_session(model, optimize=False), batches)[0]
    return model, batches, reference


@pytest.fixture(scope="module")
def mnist_calibration(mnist):
    model, batches, _ = mnist
    return calibrate_selective(model, batches)


def tensor_values(model: ir.Model, names, batches) -> dict[str, np.ndarray]:
    inputs = {v.name for v in model.graph.inputs}
    computed = [n for n in names if n not in inputs]
    session = make_session(model, optimize=False, extra_outputs=computed)
    values = {n: [] for n in names}
    for batch in batches:
        for name, array in zip(computed, session.run(computed, batch)):
            values[name].append(array.ravel())
        for name in names:
            if name in inputs:
                values[name].append(batch[name].ravel())
    return {n: np.concatenate(v).astype(np.float64) for n, v in values.items()}


def expected_error(values: np.ndarray, low: float, high: float) -> float:
    """The selection criterion computed on raw values (no histogram): nonzero values cost their
    clipping error outside the representable range and scale**2/12 inside; exact zeros cost 0."""
    scale = (high - low) / 255
    zero_point = np.clip(np.round(-128 - low / scale), -128, 127)
    lowest, highest = (-128 - zero_point) * scale, (127 - zero_point) * scale
    nonzero = values[values != 0]
    error = np.where(nonzero < lowest, (lowest - nonzero) ** 2, np.where(nonzero > highest, (nonzero - highest) ** 2, scale * scale / 12))
    return float(error.sum() / values.size)


# ---------------------------------------------------------------------------------------------
# per-tensor methods


def test_every_tensor_an_int8_mix_may_quantize_is_observed(mnist):
    model, _, _ = mnist
    assert observed_tensors(model) == [
        "Input3", "Plus30_Output_0", "ReLU32_Output_0", "Pooling66_Output_0", "Plus112_Output_0",
        "ReLU114_Output_0", "Pooling160_Output_0", "Pooling160_Output_0_reshape0", "Plus214_Output_0",
    ]


def test_each_method_range_from_the_shared_histogram_equals_its_own_observer(mnist, mnist_calibration):
    model, batches, _ = mnist
    names = list(mnist_calibration.choices)
    for method in METHODS:
        ranges, samples = collect_ranges(model, dict.fromkeys(names, method), batches)
        assert samples == 200
        for name in names:
            assert mnist_calibration.choices[name].ranges[method] == pytest.approx(ranges[name], rel=1e-12, abs=1e-12), (method, name)


@pytest.mark.parametrize("which", ["mnist", "resnet"])
def test_chosen_method_has_expected_error_no_larger_than_minmax(which, mnist, mnist_calibration):
    if which == "mnist":
        model, batches, _ = mnist
        calibration = mnist_calibration
    else:
        model, batches = canonical(MLPERF / "ic" / "pretrainedResnet.onnx"), resnet_batches()
        calibration = calibrate_selective(model, batches)
    values = tensor_values(model, list(calibration.choices), batches)
    chosen_not_minmax = 0
    for name, choice in calibration.choices.items():
        data = values[name]
        minmax = (min(data.min(), 0.0), max(data.max(), 0.0))
        assert choice.ranges["minmax"] == pytest.approx(minmax, rel=1e-6)  # the observed extremes
        assert choice.errors[choice.method] == min(choice.errors.values())
        if minmax[1] > minmax[0]:
            assert expected_error(data, *choice.range) <= expected_error(data, *minmax) * (1 + 1e-3), name
        chosen_not_minmax += choice.method != "minmax"
    assert chosen_not_minmax >= 5  # the choice is not a formality on real activations


def test_relu_outputs_pay_nothing_for_exact_zeros(mnist_calibration):
    """ReLU32's output is ~2/3 exact zeros; charged as rounding noise they would make mse (which
    clips) look better than percentile, whose range is measurably better on the raw values."""
    choice = mnist_calibration.choices["ReLU32_Output_0"]
    assert choice.method == "percentile"
    assert choice.range[0] == 0.0
    assert choice.errors["percentile"] < choice.errors["mse"] < choice.errors["minmax"]


def test_choices_are_usable_as_quantize_int8_tensor_methods(mnist):
    model, batches, _ = mnist
    choices = choose_tensor_methods(model, batches)
    methods = {name: choice.method for name, choice in choices.items()}
    quantized = model.clone()
    plan = quantize_int8(quantized, batches, tensor_methods=methods)
    calibrated = [t for t in plan.tensors if t.role == "activation" and t.method in METHODS]
    assert {t.name for t in calibrated} == {"Input3", "ReLU32_Output_0", "ReLU114_Output_0", "Plus214_Output_0"}
    for entry in calibrated:
        assert entry.method == methods[entry.name]
        assert entry.range == pytest.approx(choices[entry.name].range, rel=1e-12)


# ---------------------------------------------------------------------------------------------
# the search


@pytest.fixture(scope="module")
def mnist_start(mnist):
    """selective without a goal on the 200-digit calibration set, and naive minmax for comparison."""
    model, batches, reference = mnist
    quantized = model.clone()
    result = run_selective(quantized, batches)
    naive = model.clone()
    quantize_int8(naive, batches, method="minmax")
    return result, quantized, output_sqnr(naive, batches, reference)


def test_without_a_goal_everything_quantizable_is_int8_with_per_tensor_methods(mnist, mnist_start):
    _, batches, reference = mnist
    result, quantized, _ = mnist_start
    assert result.float_nodes == () and len(result.steps) == 1
    assert {n.precision for n in result.plan.nodes} == {"int8"}
    assert result.plan.mode == "selective"
    # the model was rewritten in place to what step 0 measured
    assert output_sqnr(quantized, batches, reference) == pytest.approx(result.all_int8_sqnr_db, abs=1e-3)
    assert 38.5 < result.all_int8_sqnr_db < 41
    methods = {t.name: t.method for t in result.plan.tensors if t.role == "activation"}
    assert methods["ReLU32_Output_0"] == result.calibration.choices["ReLU32_Output_0"].method == "percentile"
    assert methods["Pooling66_Output_0"] == "shared:ReLU32_Output_0"
    weights = [t for t in result.plan.tensors if t.role == "weight"]
    assert len(weights) == 3 and all(t.granularity == "per-channel" for t in weights)
    assert any("per-channel int8 always" in note for note in result.plan.notes)


def test_goal_just_above_all_int8_keeps_layers_float_and_is_met(mnist, mnist_start):
    model, batches, reference = mnist
    start, _, naive_db = mnist_start
    goal = max(start.all_int8_sqnr_db, naive_db) + 0.1
    quantized = model.clone()
    result = run_selective(quantized, batches, min_sqnr_db=goal)
    assert len(result.float_nodes) >= 1
    assert result.steps[-1].sqnr_db >= goal and all(step.sqnr_db < goal for step in result.steps[:-1])
    assert output_sqnr(quantized, batches, reference) >= goal - 1e-3  # measured on the rewritten model
    # fewest along the sensitivity order: one layer fewer along it misses the goal (built independently)
    walked, covered = [], set()
    for entry in result.sensitivities:
        if not set(entry.nodes) <= covered:
            walked.append(entry)
            covered |= set(entry.nodes)
    count = len(result.float_layers)
    assert list(result.float_layers) == [entry.node for entry in walked[:count]]
    assert set(result.float_nodes) == {name for entry in walked[:count] for name in entry.nodes}
    fewer = {name for entry in walked[: count - 1] for name in entry.nodes}
    check = model.clone()
    quantize_int8(check, batches, choose=lambda node: "float" if node.name in fewer else None,
                  tensor_methods=result.calibration.tensor_methods())
    assert output_sqnr(check, batches, reference) < goal
    float_entries = [n for n in result.plan.nodes if n.precision == "fp32"]
    assert {n.name for n in float_entries} == set(result.float_nodes)
    for entry in float_entries:
        if entry.name in result.float_layers:
            assert entry.reason.startswith("kept in float (fp32) by selective: sensitivity +"), entry
        else:  # the other node of a fused Conv/Gemm + Relu layer kept in float
            assert entry.reason.startswith("kept in float (fp32) by selective with "), entry
        assert "fp16 islands are future work" in entry.reason
    assert sum(note.startswith("search step") for note in result.plan.notes) == len(result.steps)


def test_goal_below_all_int8_keeps_no_layer_float(mnist, mnist_start):
    model, batches, _ = mnist
    start, _, naive_db = mnist_start
    result = run_selective(model.clone(), batches, min_sqnr_db=min(start.all_int8_sqnr_db, naive_db) - 1.0, analyze=False)
    assert result.float_nodes == () and len(result.steps) == 1 and result.steps[0].meets_goal
    assert result.sensitivities == ()  # not needed, not run


def test_max_accuracy_drop_on_mnist_is_met_with_the_fewest_float_layers(mnist_eval_batches):
    eval_batches, labels = mnist_eval_batches
    model = canonical(MNIST_MODEL)
    float_bytes = to_bytes(model)
    batches = mnist_batches(1000)
    result = run_selective(model, batches, max_accuracy_drop=0.1, eval_batches=eval_batches, eval_labels=labels)
    assert result.fp32_accuracy == pytest.approx(0.993)  # 1986/2000, as documented for mnist-8
    final = result.steps[-1]
    assert final.meets_goal and (result.fp32_accuracy - final.accuracy) * 100 <= 0.1 + 1e-9
    # fewest: every earlier step along the greedy order missed the goal (here all-int8 already meets it)
    assert all(not step.meets_goal for step in result.steps[:-1])
    assert len(result.float_layers) == len(result.steps) - 1
    # measured independently on the rewritten model and the untouched float model
    compiled = metrics.accuracy(run_batches(make_session(model, optimize=False), eval_batches)[0], labels)
    fp32 = metrics.accuracy(run_batches(make_session(float_bytes, optimize=False), eval_batches)[0], labels)
    assert compiled == pytest.approx(final.accuracy) and (fp32 - compiled) * 100 <= 0.1 + 1e-9
    assert any("accuracy 99.30%" in note for note in result.plan.notes if note.startswith("search step 0"))


def test_compare_uniform_methods_starts_at_least_as_good_as_naive_with_any_method(mnist):
    model, batches, reference = mnist
    result = run_selective(model.clone(), batches, compare_uniform_methods=True, analyze=False)
    for method in METHODS:
        naive = model.clone()
        quantize_int8(naive, batches, method=method)
        assert result.all_int8_sqnr_db >= output_sqnr(naive, batches, reference) - 1e-3, method
    assert any(note.startswith("all-int8 start candidates") for note in result.plan.notes)


def test_residual_adds_stay_int8_on_resnet():
    model = canonical(MLPERF / "ic" / "pretrainedResnet.onnx")
    plan = quantize_selective(model, resnet_batches())
    adds = [n for n in plan.nodes if n.op_type == "Add"]
    assert len(adds) == 3 and all(n.precision == "int8" for n in adds)
    softmax = plan.tensor("Identity")
    assert softmax.method == "fixed" and softmax.scale == (1 / 256,) and softmax.zero_point == (-128,)


def test_same_inputs_give_the_same_plan_and_model(mnist):
    model, batches, _ = mnist
    first, second = model.clone(), model.clone()
    goal = 41.0
    plan_a = quantize_selective(first, batches, min_sqnr_db=goal)
    plan_b = quantize_selective(second, batches, min_sqnr_db=goal)
    assert plan_a.to_json() == plan_b.to_json()
    assert to_bytes(first) == to_bytes(second)


def test_bad_goals_are_refused(mnist):
    model, batches, _ = mnist
    with pytest.raises(CalibrationDataError, match="labelled evaluation data"):
        quantize_selective(model.clone(), batches, max_accuracy_drop=0.1)
    for bad in (math.nan, math.inf):
        with pytest.raises(ValueError, match="min_sqnr_db"):
            quantize_selective(model.clone(), batches, min_sqnr_db=bad)
    with pytest.raises(ValueError, match="max_accuracy_drop"):
        quantize_selective(model.clone(), batches, max_accuracy_drop=-1, eval_batches=batches, eval_labels=np.zeros(200))
    with pytest.raises(CalibrationDataError, match="empty"):
        quantize_selective(model.clone(), [])


def test_candidates_are_the_naive_int8_nodes(mnist, mnist_start):
    model, _, _ = mnist
    start, _, _ = mnist_start
    candidates, _ = select_int8_nodes(model)
    assert sorted(entry.node for entry in start.sensitivities) == sorted(node.name for node in candidates)


def test_the_plan_fed_back_with_plan_file_rebuilds_the_same_model(mnist, tmp_path):
    """quantization_plan.json from selective, applied with ``--plan`` (read_plan + quantize_int8),
    recalibrates each tensor with its recorded method and gives byte-identical QDQ."""
    model, batches, _ = mnist
    selective = model.clone()
    plan = quantize_selective(selective, batches, min_sqnr_db=45.0)
    assert any(n.precision == "fp32" for n in plan.nodes)
    path = tmp_path / "quantization_plan.json"
    path.write_text(plan.to_json())
    request = read_plan(path, model)
    again = model.clone()
    replay = quantize_int8(again, batches, choose=request.choose, tensor_methods=request.tensor_methods, fixed_params=request.fixed_params)
    assert to_bytes(again) == to_bytes(selective)
    assert {t.name: (t.scale, t.zero_point) for t in replay.tensors} == {t.name: (t.scale, t.zero_point) for t in plan.tensors}


def test_pass_and_report_summary(mnist):
    model, batches, _ = mnist
    quantizer = SelectiveQuantizationPass(batches, min_sqnr_db=41.0)
    quantized = PassManager([quantizer])(model.clone()).model
    assert quantizer.plan.mode == "selective" and quantized.graph is not None
    summary = quantizer.result.report()
    text = json.dumps(summary, allow_nan=False, sort_keys=True)  # strict JSON: no inf/nan
    assert json.loads(text)["float_layers"] == ["Times212"]
    assert [row["node"] for row in summary["sensitivity"]][:1] == ["Times212"]
    assert summary["sensitivity"][0]["gain_db"] > 2.0
    assert summary["search"][-1]["meets_goal"] and not summary["search"][0]["meets_goal"]
    assert set(summary["tensor_methods"]) == set(observed_tensors(model))


# --------------------------------------------------------------------------------------------------
# memory: a re-iterable source is read again instead of kept


def test_a_batch_factory_gives_the_same_plan_and_model_as_kept_batches(mnist):
    """A zero-argument callable (compile passes ``lambda: data.batches(n)``) is read again for every
    measurement instead of kept; the plan, the search and the model are the same as with a
    one-shot generator, whose batches are kept."""
    model, batches, _ = mnist
    calls = []

    def factory():
        calls.append(1)
        return (dict(batch) for batch in batches)

    kept, streamed = model.clone(), model.clone()
    result_kept = run_selective(kept, (dict(batch) for batch in batches), min_sqnr_db=41.0, analyze=False, compare_uniform_methods=True)
    result_streamed = run_selective(streamed, factory, min_sqnr_db=41.0, analyze=False, compare_uniform_methods=True)
    assert isinstance(result_kept.calibration.batches, tuple) and len(result_kept.calibration.batches) == len(batches)
    assert not isinstance(result_streamed.calibration.batches, (tuple, list))
    assert len(calls) > 3  # calibration, then again for the variants and the final model
    assert result_streamed.plan.to_json() == result_kept.plan.to_json()
    assert result_streamed.steps == result_kept.steps
    assert to_bytes(streamed) == to_bytes(kept)


def test_a_list_is_read_again_not_copied(mnist, mnist_calibration):
    model, batches, _ = mnist
    calibration = calibrate_selective(model, batches)
    assert not isinstance(calibration.batches, tuple)
    assert calibration.largest_batch == 1 and calibration.samples == len(batches)
    for again, original in zip(calibration.batches, batches):
        assert again["Input3"] is original["Input3"] or np.shares_memory(again["Input3"], original["Input3"])
    assert calibration.choices == mnist_calibration.choices


def test_a_source_giving_other_data_on_a_later_pass_is_refused(mnist):
    model, batches, _ = mnist
    passes = []

    def shrinking():
        passes.append(1)
        return iter(batches if len(passes) == 1 else batches[:-1])

    with pytest.raises(CalibrationDataError, match="changed between passes"):
        quantize_selective(model.clone(), shrinking)
