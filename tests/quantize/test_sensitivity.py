"""Per-layer sensitivity analysis on real models (mnist-8, MLPerf Tiny ResNet-8) and its PNG chart."""

from __future__ import annotations

import io
import math
import pathlib
import time

import numpy as np
import onnx_ir as ir
import pytest
from PIL import Image
from realdata import ASSETS, MLPERF, MNIST_CALIB, MNIST_MODEL

from edgecomp.ir.load import load_model, to_bytes
from edgecomp.ir.run import make_session, run_batches
from edgecomp.passes.base import PassManager
from edgecomp.passes.canonicalize import canonicalization_passes
from edgecomp.passes.quantize import metrics
from edgecomp.passes.quantize.naive import quantize_int8, select_int8_nodes
from edgecomp.passes.quantize.selective import calibrate_selective
from edgecomp.passes.quantize.sensitivity import (
    LayerSensitivity,
    VariantEvaluator,
    analyze_sensitivity,
    layer_sensitivity,
)
from edgecomp.report_plots import (
    ALL_BUT_THIS,
    ONLY_THIS_INT8,
    ROW_HEIGHT,
    TOP,
    chart_size,
    sensitivity_bar_chart,
)


def canonical(path: pathlib.Path) -> ir.Model:
    return PassManager(canonicalization_passes(fold_weight_dequantize=False))(load_model(path)).model


def mnist_batches(count: int = 200) -> list[dict[str, np.ndarray]]:
    digits = np.load(MNIST_CALIB)["x"][:count].astype(np.float32)
    return [{"Input3": digits[i : i + 1]} for i in range(len(digits))]


def resnet_batches() -> list[dict[str, np.ndarray]]:
    """The 4 real photos of tests/assets/images as 32x32 RGB 0..255 NHWC float (MLPerf IC input)."""
    paths = sorted((ASSETS / "images").glob("skimage_*.[pj][np]g"))
    images = np.stack([np.asarray(Image.open(p).convert("RGB").resize((32, 32), Image.BILINEAR), np.float32) for p in paths])
    return [{"input_1": images}]


class Analysed:
    def __init__(self, path: pathlib.Path, batches) -> None:
        self.model = canonical(path)
        self.float_bytes = to_bytes(self.model)
        self.batches = batches
        self.reference = run_batches(make_session(self.model, optimize=False), batches)[0]
        start = time.perf_counter()
        self.calibration = calibrate_selective(self.model, batches)
        self.evaluator = VariantEvaluator(self.model, self.calibration)
        self.sensitivities = analyze_sensitivity(self.evaluator)
        self.seconds = time.perf_counter() - start
        self.variants = self.evaluator.variants_built

    def independent_sqnr(self, float_nodes) -> float:
        """A mix built the ordinary way (quantize_int8 recalibrating with the chosen methods), run batch by batch."""
        quantized = self.model.clone()
        quantize_int8(quantized, self.batches, choose=lambda node: "float" if node.name in float_nodes else None,
                      tensor_methods=self.calibration.tensor_methods())
        return metrics.sqnr_db(self.reference, run_batches(make_session(quantized, optimize=False), self.batches)[0])


@pytest.fixture(scope="module")
def mnist():
    return Analysed(MNIST_MODEL, mnist_batches())


@pytest.fixture(scope="module")
def resnet():
    return Analysed(MLPERF / "ic" / "pretrainedResnet.onnx", resnet_batches())


@pytest.mark.parametrize("which, count", [("mnist", 8), ("resnet", 24)])
def test_every_candidate_has_finite_sensitivities_above_all_int8(which, count, request):
    analysed = request.getfixturevalue(which)
    candidates, _ = select_int8_nodes(analysed.model)
    assert len(analysed.sensitivities) == count
    assert sorted(s.node for s in analysed.sensitivities) == sorted(n.name for n in candidates)
    assert {s.node: s.op_type for s in analysed.sensitivities} == {n.name: n.op_type for n in candidates}
    all_int8 = analysed.independent_sqnr(set())
    assert analysed.evaluator.measure((), accuracy=False).sqnr_db == pytest.approx(all_int8, abs=1e-3)
    for entry in analysed.sensitivities:
        assert math.isfinite(entry.only_this_int8_db) and math.isfinite(entry.all_but_this_db)
        # one layer's rounding alone costs at most what every layer's does, up to the way errors of
        # different layers partly cancel: ResNet-8's last residual Add, whose output grid dominates
        # the all-int8 error, measures 0.13 dB below all-int8 alone (and keeping it float gains 0 dB)
        assert entry.only_this_int8_db > all_int8 - 0.25, entry
    assert sum(entry.only_this_int8_db > all_int8 for entry in analysed.sensitivities) >= 0.9 * count


def test_order_is_by_gain_of_keeping_the_layer_float(mnist, resnet):
    for analysed in (mnist, resnet):
        gains = [s.all_but_this_db for s in analysed.sensitivities]
        assert gains == sorted(gains, reverse=True)
    # mnist-8: the dense layer (Gemm) is the one whose int8 costs the most output SQNR
    top = mnist.sensitivities[0]
    assert (top.node, top.op_type) == ("Times212", "Gemm")
    assert top.all_but_this_db > mnist.evaluator.measure((), accuracy=False).sqnr_db + 2.0


def test_variants_reuse_the_one_calibration_and_match_an_independent_build(mnist, resnet):
    for analysed in (mnist, resnet):
        entry = analysed.sensitivities[0]
        assert entry.all_but_this_db == pytest.approx(analysed.independent_sqnr({entry.node}), abs=1e-3)
        others = {s.node for s in analysed.sensitivities} - {entry.node}
        assert entry.only_this_int8_db == pytest.approx(analysed.independent_sqnr(others), abs=1e-3)
        _, plan = analysed.evaluator.build({entry.node})
        methods = {t.method for t in plan.tensors if t.role == "activation"}
        assert all(m == "fixed" or m.startswith("shared:") for m in methods)  # nothing recalibrated


def test_analysis_is_vectorized_cached_and_leaves_the_model_alone(mnist):
    assert mnist.evaluator.stacked  # mnist-8's fixed batch of 1 was lifted for measuring (checked numerically)
    # 6 layers (Conv+Relu fused pairs count once, their entries share figures): 2 * 6 + 1 variants
    assert mnist.variants == 2 * 6 + 1
    by_node = {s.node: s for s in mnist.sensitivities}
    assert by_node["ReLU114"].nodes == by_node["Convolution110"].nodes == ("Convolution110", "ReLU114")
    assert by_node["ReLU114"].all_but_this_db == by_node["Convolution110"].all_but_this_db
    assert by_node["Pooling66"].nodes == ("Pooling66",)
    assert to_bytes(mnist.model) == mnist.float_bytes
    assert mnist.seconds < 60  # about 1-2 s on one core; generous for loaded CI machines


def test_layer_sensitivity_convenience_matches(mnist):
    result = layer_sensitivity(canonical(MNIST_MODEL), mnist_batches())
    assert result == mnist.sensitivities


# ---------------------------------------------------------------------------------------------
# the chart


def bar_lengths(image: Image.Image, rows: int, colour) -> list[int]:
    pixels = np.asarray(image)
    mask = np.all(pixels == np.array(colour, np.uint8), axis=-1)
    return [int(mask[TOP + row * ROW_HEIGHT : TOP + (row + 1) * ROW_HEIGHT].sum()) for row in range(rows)]


def test_chart_is_a_deterministic_png_of_the_expected_size(resnet, tmp_path):
    entries = resnet.sensitivities
    all_int8 = resnet.evaluator.measure((), accuracy=False).sqnr_db
    path = tmp_path / "sensitivity.png"
    data = sensitivity_bar_chart(entries, path, all_int8_db=all_int8)
    assert path.read_bytes() == data
    assert sensitivity_bar_chart(entries, None, all_int8_db=all_int8) == data
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG" and image.mode == "RGB"
    assert image.size == chart_size(24) == (960, TOP + 24 * ROW_HEIGHT + 56)
    image = image.convert("RGB")
    # bar lengths follow the values (blue: only this int8, orange: all but this)
    for colour, values in ((ONLY_THIS_INT8, [e.only_this_int8_db for e in entries]), (ALL_BUT_THIS, [e.all_but_this_db for e in entries])):
        lengths = bar_lengths(image, len(entries), colour)
        assert all(length > 0 for length in lengths)
        for (value_a, length_a), (value_b, length_b) in zip(zip(values, lengths), list(zip(values, lengths))[1:]):
            if value_a > value_b + 1.0:
                assert length_a > length_b
            elif value_b > value_a + 1.0:
                assert length_b > length_a


def test_chart_handles_lossless_and_negative_values():
    entries = [LayerSensitivity("a", "Conv", math.inf, -3.0), LayerSensitivity("b" * 200, "Relu", 12.5, 7.0)]
    image = Image.open(io.BytesIO(sensitivity_bar_chart(entries, None)))
    assert image.size == chart_size(2)
    lengths = bar_lengths(image.convert("RGB"), 2, ONLY_THIS_INT8)
    assert lengths[0] > lengths[1] > 0  # inf is drawn to the axis end


def test_chunks_cut_like_stack_one_chunk_at_a_time():
    from edgecomp.passes.quantize.sensitivity import _chunks, _stack

    rng = np.random.default_rng(0)
    for sizes in ([1] * 70, [12] * 8 + [4], [5, 1, 9, 33, 2], [100]):
        batches = [{"a": rng.standard_normal((n, 3)).astype(np.float32), "b": rng.integers(0, 9, (n, 2))} for n in sizes]
        for chunk in (1, 7, 12, 32, 64, 512):
            expected = _stack(batches, chunk)
            got = list(_chunks(iter(batches), chunk))
            assert len(got) == len(expected)
            for g, e in zip(got, expected):
                assert g.keys() == e.keys() and all(np.array_equal(g[k], e[k]) for k in e)
                assert len(g["a"]) <= chunk


def test_measuring_chunks_follow_the_calibration_batch_size(mnist):
    """One sample per batch (mnist-8's fixed batch of 1): stacked into MEASURE_CHUNK samples; larger
    batches: chunks of the largest batch, so measuring holds no more samples than calibrating."""
    from edgecomp.passes.quantize.sensitivity import MEASURE_CHUNK

    assert mnist.evaluator.stacked and mnist.evaluator.chunk == MEASURE_CHUNK
    model = canonical(MLPERF / "ic" / "pretrainedResnet.onnx")
    images = resnet_batches()[0]["input_1"]
    whole = VariantEvaluator(model, calibrate_selective(model, [{"input_1": images}]))
    pairs = VariantEvaluator(model, calibrate_selective(model, lambda: ({"input_1": images[i : i + 2]} for i in range(0, len(images), 2))))
    assert whole.stacked and whole.chunk == 4 and pairs.stacked and pairs.chunk == 2
    assert [len(chunk["input_1"]) for chunk in pairs._inputs()] == [2, 2]
    stacked4 = pairs.with_calibration(pairs.calibration)  # the same calibration, measured 4 samples at a time
    stacked4.chunk = 4
    assert [len(chunk["input_1"]) for chunk in stacked4._inputs()] == [4]
    assert pairs.measure(()).sqnr_db == pytest.approx(stacked4.measure(()).sqnr_db, abs=1e-6)
