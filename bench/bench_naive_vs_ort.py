"""Benchmark: edgecomp naive INT8 against ONNX Runtime's ``quantize_static``, side by side.

For every real float model (mnist-8 and the MLPerf Tiny KWS, VWW, IC and AD models) both tools
quantize the same model with the same calibration samples, the same calibration method and the
same granularity:

- edgecomp: ``compile_model(quantize="naive", target="host-x86_64")`` (onnxruntime backend);
- ONNX Runtime: ``quantize_static(quant_format=QDQ, per_channel=True, activation_type=QInt8,
  weight_type=QInt8, calibrate_method=<method>)``, i.e. per-channel symmetric int8 weights and
  per-tensor (asymmetric) int8 activations in QDQ form, after ONNX Runtime's own recommended
  pre-processing (``quant_pre_process``; see :func:`prepare_for_ort`).

Both quantized ``.onnx`` files are then measured by the same code: per-sample (batch 1) runs in an
ONNX Runtime session with default options, compared with the FP32 model (SQNR dB, top-1
agreement, accuracy when labels exist), and timed (median ms per ``session.run`` after warm-up).

ONNX Runtime quirks handled on its side only (each documented where it is handled):
mnist-8 must be converted from opset 8 to 13 and its [1, 10] Gemm bias reshaped to [10]
(:func:`prepare_for_ort`); ``quantize_static``'s Entropy uses 128 histogram bins, which makes it
equal to MinMax (``--ort-entropy-bins 2048`` calibrates like edgecomp, :func:`write_ort_entropy_cache`);
``mse`` has no ONNX Runtime counterpart, so only edgecomp runs.

This is a benchmark, not a test: it reads the models and data from ``../shared`` at run time and
prints tables (``--json`` for tools). Run ``python bench/bench_naive_vs_ort.py --help``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import math
import os
import pathlib
import statistics
import sys
import tempfile
import time
from typing import Any, Callable, Sequence

import numpy as np

log = logging.getLogger("bench_naive_vs_ort")

REPO = pathlib.Path(__file__).resolve().parent.parent
DEFAULT_SHARED = pathlib.Path(os.environ.get("EDGECOMP_SHARED", REPO.parent / "shared"))
MNIST_DIR = REPO / "examples" / "mnist"
TARGET = "host-x86_64"

METHODS = ("minmax", "percentile", "entropy", "mse")
ORT_METHOD_NAMES = {"minmax": "MinMax", "percentile": "Percentile", "entropy": "Entropy"}
"""edgecomp calibration method -> ``onnxruntime.quantization.CalibrationMethod`` member (mse has none)."""

SQNR_GOAL_DB = 1.0
"""Project goal: edgecomp's SQNR vs FP32 is no more than this many dB below ORT's."""
MNIST_ACCURACY_GOAL = 0.9925
"""Project goal: edgecomp naive INT8 keeps at least this accuracy on mnist_eval_2000."""
ORT_MIN_OPSET = 13
"""Per-channel QDQ (DequantizeLinear with ``axis``) needs ai.onnx opset 13."""

VWW_SIZE, IC_SIZE = 96, 32
KWS_INPUT_SCALE, KWS_INPUT_ZERO_POINT = 0.5847029089927673, 83
AD_FRAMES, AD_MELS, AD_WINDOW_FRAMES = 200, 128, 5


@dataclasses.dataclass(frozen=True)
class Settings:
    """How both tools are run and measured.

    Attributes:
        method: calibration method, one of :data:`METHODS` (the same for both tools).
        ort_reduce_range: pass ``reduce_range=True`` to ONNX Runtime (7-bit weights, its advice for
            x86 CPUs without VNNI, the counterpart of edgecomp's automatic weight narrowing).
        ort_entropy_bins: histogram bins of ONNX Runtime's Entropy calibration (None: what
            ``quantize_static`` does, 128; see :func:`write_ort_entropy_cache`).
        runs: timed ``session.run`` calls per model for the latency median.
        warmup: untimed ``session.run`` calls per model before timing.
    """

    method: str = "minmax"
    ort_reduce_range: bool = False
    ort_entropy_bins: int | None = None
    runs: int = 200
    warmup: int = 20


# --------------------------------------------------------------------------------------------------
# models and data


@dataclasses.dataclass(frozen=True)
class BenchmarkCase:
    """One float model with its calibration and evaluation samples.

    Attributes:
        name: short model name (``mnist``, ``kws``, ...).
        model: path of the float ONNX model.
        input_name: the model's single input.
        calibration: float32 [N, *model input shape without its batch axis]; ``x[i:i+1]`` is one batch-1 feed.
        evaluation: float32 samples in the same layout.
        labels: int64 [N] class labels of ``evaluation``, or None (then SQNR is the headline metric).
        data_note: where the samples come from, including whether calibration == evaluation.
        classifier: the output is class scores, so top-1 agreement means something (not for the
            AD autoencoder, whose output is a reconstruction).
    """

    name: str
    model: pathlib.Path
    input_name: str
    calibration: np.ndarray
    evaluation: np.ndarray
    labels: np.ndarray | None
    data_note: str
    classifier: bool = True


def model_input_name(model_path: pathlib.Path) -> str:
    """The name of the model's only real graph input (not an initializer).

    Raises:
        ValueError: the model has more or fewer than one input.
    """
    import onnx

    graph = onnx.load(str(model_path), load_external_data=False).graph
    initializers = {tensor.name for tensor in graph.initializer}
    names = [value.name for value in graph.input if value.name not in initializers]
    if len(names) != 1:
        raise ValueError(f"{model_path}: expected one input, found {names}")
    return names[0]


def same_samples_case(name: str, model: pathlib.Path, samples: np.ndarray, source: str, classifier: bool = True) -> BenchmarkCase:
    """A case whose (tiny, unlabelled) sample set is used for both calibration and evaluation."""
    samples = np.ascontiguousarray(samples, dtype=np.float32)
    note = f"{len(samples)} sample(s) from {source}; calibration = evaluation (same samples)"
    return BenchmarkCase(name, model, model_input_name(model), samples, samples, None, note, classifier)


def load_image(path: pathlib.Path, size: int) -> np.ndarray:
    """An image as float32 [size, size, 3] RGB in 0..255 (bilinear resize, shared/README.md)."""
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("RGB").resize((size, size), Image.BILINEAR), np.float32)


def load_person_detection_rgb(path: pathlib.Path) -> np.ndarray:
    """A TFLM person_detection int8 [96, 96] array as float32 [96, 96, 3] RGB in 0..255 (shared/README.md)."""
    gray = (np.load(path).astype(np.int16) + 128).astype(np.uint8)
    return np.repeat(gray[..., None], 3, axis=-1).astype(np.float32)


def image_paths(shared: pathlib.Path) -> list[pathlib.Path]:
    """The photos in ``data/images`` (png/jpg), sorted by name."""
    return sorted(p for p in (shared / "data" / "images").iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))


def mnist_case(shared: pathlib.Path) -> BenchmarkCase:
    """mnist-8 (NCHW, raw 0..255): calibrate on mnist_calib_1000, evaluate on the disjoint mnist_eval_2000 with labels."""
    model = MNIST_DIR / "mnist-8.onnx"
    calibration = np.load(MNIST_DIR / "mnist_calib_1000.npz")["x"].astype(np.float32)
    evaluation = np.load(MNIST_DIR / "mnist_eval_2000.npz")
    note = f"calibration mnist_calib_1000 ({len(calibration)}), evaluation mnist_eval_2000 ({len(evaluation['x'])}, labelled, disjoint)"
    return BenchmarkCase("mnist", model, model_input_name(model), calibration, evaluation["x"].astype(np.float32), evaluation["y"].astype(np.int64), note)


def kws_case(shared: pathlib.Path) -> BenchmarkCase:
    """KWS DS-CNN [N,49,10,1]: the single real MFCC sample, dequantized with the model's input parameters."""
    quantized = np.load(shared / "data" / "kws" / "mlperf_kws_input_data_int8_1x49x10x1.npy")
    samples = (quantized.astype(np.float32) - KWS_INPUT_ZERO_POINT) * KWS_INPUT_SCALE
    return same_samples_case("kws", shared / "models" / "mlperf_tiny" / "kws" / "kws_ref_model_float32.onnx", samples, "data/kws (the MLPerf reference sample)")


def vww_case(shared: pathlib.Path) -> BenchmarkCase:
    """VWW MobileNetV1 [N,96,96,3]: every photo in data/images plus the two person_detection arrays, /255."""
    person_arrays = sorted((shared / "data" / "person_detection").glob("*_int8_96x96.npy"))
    images = [load_image(p, VWW_SIZE) for p in image_paths(shared)] + [load_person_detection_rgb(p) for p in person_arrays]
    return same_samples_case("vww", shared / "models" / "mlperf_tiny" / "vww" / "vww_96_float.onnx", np.stack(images) / 255.0, "data/images + data/person_detection")


def ic_case(shared: pathlib.Path) -> BenchmarkCase:
    """ResNet-8 [N,32,32,3]: every photo in data/images at 32x32, raw 0..255."""
    images = np.stack([load_image(p, IC_SIZE) for p in image_paths(shared)])
    return same_samples_case("ic", shared / "models" / "mlperf_tiny" / "ic" / "pretrainedResnet.onnx", images, "data/images")


def ad_case(shared: pathlib.Path) -> BenchmarkCase:
    """AD autoencoder [N,640]: the 196 sliding 5-frame windows of the one ToyCar log-mel spectrogram."""
    spectrogram = np.fromfile(shared / "data" / "ad" / "normal_id_01_00000000_hist_librosa.bin", np.float32).reshape(AD_FRAMES, AD_MELS)
    windows = np.stack([spectrogram[t : t + AD_WINDOW_FRAMES].reshape(-1) for t in range(AD_FRAMES - AD_WINDOW_FRAMES + 1)])
    return same_samples_case("ad", shared / "models" / "mlperf_tiny" / "ad" / "ad01_fp32.onnx", windows, "data/ad (sliding windows of one normal clip)", classifier=False)


CASES: dict[str, Callable[[pathlib.Path], BenchmarkCase]] = {"mnist": mnist_case, "kws": kws_case, "vww": vww_case, "ic": ic_case, "ad": ad_case}


# --------------------------------------------------------------------------------------------------
# quantizing with each tool


@dataclasses.dataclass(frozen=True)
class QuantizedModel:
    """A quantized ``.onnx`` file and what it took to make it.

    Attributes:
        tool: ``edgecomp`` or ``onnxruntime``.
        path: the quantized ONNX model.
        compile_seconds: wall time to produce it (s).
        details: tool-specific facts worth reporting (JSON-serialisable).
    """

    tool: str
    path: pathlib.Path
    compile_seconds: float
    details: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def artifact_bytes(self) -> int:
        """Size of the quantized ``.onnx`` file in bytes."""
        return self.path.stat().st_size


def write_samples_npz(path: pathlib.Path, input_name: str, samples: np.ndarray) -> pathlib.Path:
    """Write ``samples`` (axis 0 = samples) as an edgecomp calibration/eval ``.npz`` keyed by the input name."""
    np.savez(path, **{input_name: samples})
    return path


def quantize_with_edgecomp(case: BenchmarkCase, settings: Settings, workdir: pathlib.Path) -> QuantizedModel:
    """Compile ``case.model`` with edgecomp naive INT8 for the host target.

    The compile also evaluates (``eval=``) so its own report figures are kept in ``details``; the
    compile time excludes that evaluation stage (seconds of every other pipeline stage, summed).

    Raises:
        EdgecompError: the pipeline failed (reported by the caller with its message).
    """
    from edgecomp.compile import CompileOptions, compile_model

    calibration = write_samples_npz(workdir / f"{case.name}_calibration.npz", case.input_name, case.calibration)
    evaluation = write_samples_npz(workdir / f"{case.name}_evaluation.npz", case.input_name, case.evaluation)
    options = CompileOptions(
        model=str(case.model), target=TARGET, quantize="naive", calibration=str(calibration),
        calibration_method=settings.method, eval=str(evaluation), output=str(workdir / f"{case.name}_edgecomp"),
    )
    report = compile_model(options).report
    onnx_artifact = next(pathlib.Path(a["path"]) for a in report["artifacts"] if a["path"].endswith(".onnx"))
    seconds = sum(value for stage, value in report["timings_s"].items() if stage != "evaluate")
    details = {"timings_s": report["timings_s"], "weight_range": report["backend_metadata"].get("weight_range"), "self_evaluation": report["evaluation"]}
    return QuantizedModel("edgecomp", onnx_artifact, seconds, details)


def squeeze_gemm_row_biases(model) -> list[str]:
    """Reshape every Gemm bias initializer of shape [1, N] to [N], in place; return their names.

    ONNX Runtime 1.32 ``quantize_static(per_channel=True)`` crashes on a [1, N] Gemm bias
    (``qdq_quantizer._adjust_weight_scale_for_int32_bias``: "The truth value of an array with more
    than one element is ambiguous"). Gemm's C is unidirectionally broadcast to [M, N], so [N] is
    the same computation (ONNX Gemm spec). Declarations of the tensor (a graph input, as IR 3
    models list initializers there, or a value_info) get the new shape too.
    """
    from onnx import helper, numpy_helper

    initializers = {tensor.name: tensor for tensor in model.graph.initializer}
    squeezed = []
    for node in model.graph.node:
        if node.op_type != "Gemm" or len(node.input) < 3 or node.input[2] not in initializers:
            continue
        tensor = initializers[node.input[2]]
        if len(tensor.dims) == 2 and tensor.dims[0] == 1:
            tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor).reshape(-1), tensor.name))
            squeezed.append(tensor.name)
    for declarations in (model.graph.input, model.graph.value_info):
        for declaration in declarations:
            if declaration.name in squeezed:
                tensor = initializers[declaration.name]
                declaration.CopyFrom(helper.make_tensor_value_info(tensor.name, tensor.data_type, list(tensor.dims)))
    return squeezed


def prepare_for_ort(model_path: pathlib.Path, workdir: pathlib.Path) -> tuple[pathlib.Path, dict[str, Any]]:
    """The model as ONNX Runtime's quantizer wants it: opset >= 13, pre-processed, [N] Gemm biases.

    Steps, each only changing what ``quantize_static`` needs (the float graph computes the same):
    1. ``onnx.version_converter.convert_version(model, 13)`` when the ai.onnx opset is below 13
       (mnist-8 is opset 8; per-channel QDQ needs 13);
    2. ``onnxruntime.quantization.shape_inference.quant_pre_process`` (ONNX Runtime's recommended
       step: symbolic shape inference and graph fusions such as MatMul+Add -> Gemm and Conv+Add ->
       Conv with bias, the counterpart of edgecomp's canonicalization), which needs sympy;
    3. :func:`squeeze_gemm_row_biases` (mnist-8's MatMul+Add bias is [1, 10]).

    Returns:
        (path of the prepared float model, {"steps": [...]}) describing what was done.
    """
    import onnx
    from onnxruntime.quantization.shape_inference import quant_pre_process

    model = onnx.load(str(model_path))
    steps = []
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    if opset < ORT_MIN_OPSET:
        model = onnx.version_converter.convert_version(model, ORT_MIN_OPSET)
        steps.append(f"opset {opset} -> {ORT_MIN_OPSET}")
    converted = workdir / f"{model_path.stem}_ort_input.onnx"
    onnx.save(model, str(converted))
    preprocessed = workdir / f"{model_path.stem}_ort_preprocessed.onnx"
    quant_pre_process(str(converted), str(preprocessed))
    steps.append("quant_pre_process")
    model = onnx.load(str(preprocessed))
    squeezed = squeeze_gemm_row_biases(model)
    if squeezed:
        steps.append(f"Gemm bias [1,N] -> [N]: {', '.join(squeezed)}")
        onnx.save(model, str(preprocessed))
    return preprocessed, {"steps": steps}


class SampleReader:
    """An ``onnxruntime.quantization.CalibrationDataReader``: one sample (batch 1) per ``get_next``."""

    def __init__(self, input_name: str, samples: np.ndarray) -> None:
        self._feeds = iter([{input_name: samples[i : i + 1]} for i in range(len(samples))])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)


def write_ort_entropy_cache(model_path: pathlib.Path, case: BenchmarkCase, bins: int, workdir: pathlib.Path) -> pathlib.Path:
    """Calibrate ``model_path`` with ONNX Runtime's Entropy calibrator using ``bins`` histogram bins; return the cache file.

    ``quantize_static`` (ONNX Runtime 1.32) has no option for the entropy histogram size: it always
    uses 128 bins with 128 quantized bins, which leaves ``HistogramCollector.get_entropy_threshold``
    a single candidate, the whole histogram, so its "Entropy" ranges equal MinMax's. This runs the
    same calibrator (``create_calibrator``, the operator types ``quantize_static`` calibrates) with
    ``bins`` bins and 128 quantized bins (TensorRT's and edgecomp's settings) and writes the ranges
    as a calibration cache that ``quantize_static(calibration_cache_path=...)`` reads instead.
    """
    from onnxruntime.quantization.calibrate import CalibrationMethod, create_calibrator, save_tensors_data
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    from edgecomp.passes.quantize.observers import DEFAULT_QUANTIZED_BINS

    calibrator = create_calibrator(
        model_path, sorted(set(QLinearOpsRegistry) | set(QDQRegistry)), augmented_model_path=str(workdir / f"{case.name}_ort_augmented.onnx"),
        calibrate_method=CalibrationMethod.Entropy, extra_options={"num_bins": bins, "num_quantized_bins": DEFAULT_QUANTIZED_BINS},
    )
    calibrator.collect_data(SampleReader(case.input_name, case.calibration))
    cache = workdir / f"{case.name}_ort_entropy_{bins}_bins.json"
    save_tensors_data(calibrator.compute_data(), cache)
    return cache


def quantize_with_ort(case: BenchmarkCase, settings: Settings, workdir: pathlib.Path) -> QuantizedModel:
    """Quantize ``case.model`` with ``onnxruntime.quantization.quantize_static`` (QDQ, per-channel, int8/int8).

    Compile time = :func:`prepare_for_ort` + ``quantize_static`` (which includes calibration).
    ONNX Runtime's defaults are kept (asymmetric activations, symmetric weights; Percentile 99.999
    over 2048 bins, as edgecomp; Entropy over 128 bins, see :func:`write_ort_entropy_cache`), except
    ``reduce_range`` (``settings.ort_reduce_range``) and, with ``settings.ort_entropy_bins``, the
    entropy histogram size.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    start = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):  # ONNX Runtime's histogram calibrators print() progress
        prepared, details = prepare_for_ort(case.model, workdir)
        output = workdir / f"{case.name}_ort_qdq.onnx"
        cache = None
        if settings.method == "entropy" and settings.ort_entropy_bins:
            cache = write_ort_entropy_cache(prepared, case, settings.ort_entropy_bins, workdir)
            details["steps"].append(f"Entropy calibrated with {settings.ort_entropy_bins} histogram bins (calibration cache)")
        quantize_static(
            str(prepared), str(output), SampleReader(case.input_name, case.calibration),
            quant_format=QuantFormat.QDQ, per_channel=True, activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
            calibrate_method=getattr(CalibrationMethod, ORT_METHOD_NAMES[settings.method]), reduce_range=settings.ort_reduce_range,
            calibration_cache_path=cache,
        )
    return QuantizedModel("onnxruntime", output, time.perf_counter() - start, {**details, "reduce_range": settings.ort_reduce_range})


# --------------------------------------------------------------------------------------------------
# measuring


def make_session(model_path: pathlib.Path, *, simulate: bool = False):
    """An ONNX Runtime CPU session: default options, or ``simulate`` = no graph optimisation.

    With default options ONNX Runtime fuses QDQ groups into integer kernels (what users run);
    without optimisation it evaluates every QuantizeLinear/DequantizeLinear in float, the exact
    semantics of the ONNX specs (separates the quantization scheme from kernel effects).
    """
    import onnxruntime

    options = onnxruntime.SessionOptions()
    if simulate:
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    return onnxruntime.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])


def run_per_sample(session, input_name: str, samples: np.ndarray) -> np.ndarray:
    """Run each sample as a batch of 1; return the (single) output stacked, float32 [N, ...]."""
    if len(session.get_outputs()) != 1:
        raise ValueError(f"the benchmark compares single-output models; this one has {len(session.get_outputs())}")
    return np.concatenate([session.run(None, {input_name: samples[i : i + 1]})[0] for i in range(len(samples))]).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class Quality:
    """A quantized model's outputs compared with FP32 on the evaluation samples.

    Attributes:
        sqnr_db: SQNR vs FP32 (dB) with default session options (fused integer kernels).
        sqnr_simulated_db: SQNR vs FP32 (dB) of the QDQ float simulation (no graph optimisation).
        top1_agreement: fraction (0..1) of samples with the FP32 argmax (None for a non-classifier).
        accuracy: fraction (0..1) of samples with the label's argmax, or None without labels.
    """

    sqnr_db: float
    sqnr_simulated_db: float
    top1_agreement: float | None
    accuracy: float | None


def measure_quality(model_path: pathlib.Path, case: BenchmarkCase, reference: np.ndarray) -> Quality:
    """:class:`Quality` of ``model_path`` against the FP32 outputs ``reference`` (edgecomp's metric definitions)."""
    from edgecomp.passes.quantize import metrics

    fused = run_per_sample(make_session(model_path), case.input_name, case.evaluation)
    simulated = run_per_sample(make_session(model_path, simulate=True), case.input_name, case.evaluation)
    agreement = metrics.top1_agreement(reference, fused) if case.classifier else None
    accuracy = None if case.labels is None else metrics.accuracy(fused, case.labels)
    return Quality(metrics.sqnr_db(reference, fused), metrics.sqnr_db(reference, simulated), agreement, accuracy)


def measure_latencies_ms(model_paths: dict[str, pathlib.Path], case: BenchmarkCase, settings: Settings) -> dict[str, float]:
    """Median wall time (ms) of one ``session.run`` on one sample, per model, default session options.

    Each session is warmed up with ``settings.warmup`` runs; then the models take turns run by run
    (so machine-load drift affects all alike), cycling through the evaluation samples,
    ``settings.runs`` timed runs each.
    """
    sessions = {key: make_session(path) for key, path in model_paths.items()}
    feeds = [{case.input_name: case.evaluation[i : i + 1]} for i in range(len(case.evaluation))]
    for session in sessions.values():
        for index in range(settings.warmup):
            session.run(None, feeds[index % len(feeds)])
    times: dict[str, list[float]] = {key: [] for key in sessions}
    for index in range(settings.runs):
        for key, session in sessions.items():
            start = time.perf_counter()
            session.run(None, feeds[index % len(feeds)])
            times[key].append(time.perf_counter() - start)
    return {key: statistics.median(values) * 1e3 for key, values in times.items()}


# --------------------------------------------------------------------------------------------------
# one model, all models


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """``numerator / denominator``, or None when either is missing, not finite, or the denominator is 0."""
    if numerator is None or denominator is None or not math.isfinite(numerator) or not math.isfinite(denominator) or denominator == 0:
        return None
    return numerator / denominator


def tool_entry(quantized: QuantizedModel, quality: Quality, latency_ms: float) -> dict[str, Any]:
    """The JSON entry of one tool's result on one model."""
    return {
        "compile_seconds": quantized.compile_seconds,
        "artifact_bytes": quantized.artifact_bytes,
        **dataclasses.asdict(quality),
        "latency_ms": latency_ms,
        "details": quantized.details,
    }


def compare_entries(edgecomp: dict[str, Any], ort: dict[str, Any]) -> dict[str, Any]:
    """edgecomp/ORT ratios of each figure, and the SQNR differences edgecomp - ORT (dB)."""
    keys = ("compile_seconds", "artifact_bytes", "sqnr_db", "top1_agreement", "accuracy", "latency_ms")
    result: dict[str, Any] = {f"{key}_ratio": ratio(edgecomp[key], ort[key]) for key in keys}
    for key in ("sqnr_db", "sqnr_simulated_db"):
        difference = edgecomp[key] - ort[key]
        result[f"{key}_difference"] = difference if math.isfinite(difference) else None
        result[f"{key}_goal_met"] = not difference < -SQNR_GOAL_DB  # inf - inf (both exact) is nan: met
    return result


def benchmark_case(case: BenchmarkCase, settings: Settings, workdir: pathlib.Path) -> dict[str, Any]:
    """Quantize ``case`` with both tools, measure both, and return the model's JSON entry.

    A tool that fails is recorded with its error text (``error``) instead of figures; the other is still measured.
    """
    reference_session = make_session(case.model)
    reference = run_per_sample(reference_session, case.input_name, case.evaluation)
    entry: dict[str, Any] = {"model": str(case.model), "data": case.data_note, "calibration_samples": len(case.calibration), "evaluation_samples": len(case.evaluation)}
    if case.labels is not None:
        from edgecomp.passes.quantize import metrics

        entry["accuracy_fp32"] = metrics.accuracy(reference, case.labels)
    quantizers = {"edgecomp": quantize_with_edgecomp}
    if settings.method in ORT_METHOD_NAMES:
        quantizers["onnxruntime"] = quantize_with_ort
    else:
        entry["onnxruntime_skipped"] = f"ONNX Runtime has no {settings.method!r} calibration method"
    quantized: dict[str, QuantizedModel] = {}
    for tool, quantize in quantizers.items():
        log.info("%s: quantizing with %s (%s)", case.name, tool, settings.method)
        try:
            quantized[tool] = quantize(case, settings, workdir)
        except Exception as error:  # report any tool failure and carry on with the other tool
            log.error("%s: %s failed: %s: %s", case.name, tool, type(error).__name__, error)
            entry[tool] = {"error": f"{type(error).__name__}: {error}"}
    log.info("%s: measuring", case.name)
    latencies = measure_latencies_ms({"fp32": case.model, **{tool: q.path for tool, q in quantized.items()}}, case, settings)
    entry["latency_fp32_ms"] = latencies["fp32"]
    for tool, model in quantized.items():
        entry[tool] = tool_entry(model, measure_quality(model.path, case, reference), latencies[tool])
    if set(quantized) == {"edgecomp", "onnxruntime"}:
        entry["edgecomp_vs_onnxruntime"] = compare_entries(entry["edgecomp"], entry["onnxruntime"])
    return entry


def warm_up_imports() -> None:
    """Import both tools' heavy modules once, so the first model's compile time does not include them."""
    import onnxruntime.quantization  # noqa: F401
    from onnxruntime.quantization.shape_inference import quant_pre_process  # noqa: F401
    import sympy  # noqa: F401  (quant_pre_process's symbolic shape inference)

    from edgecomp.compile import compile_model  # noqa: F401
    from edgecomp.passes.quantize.naive import quantize_naive  # noqa: F401
    from edgecomp.plugins import get_backend

    get_backend("onnxruntime")


def run_benchmark(names: Sequence[str], settings: Settings, shared: pathlib.Path, workdir: pathlib.Path) -> dict[str, Any]:
    """Benchmark every named model; return the whole JSON document."""
    import onnxruntime

    from edgecomp import __version__

    warm_up_imports()
    models = {}
    for name in names:
        case = CASES[name](shared)
        models[name] = benchmark_case(case, settings, workdir)
    return {
        "method": settings.method,
        "onnxruntime_method": ORT_METHOD_NAMES.get(settings.method),
        "onnxruntime_reduce_range": settings.ort_reduce_range,
        "onnxruntime_entropy_bins": settings.ort_entropy_bins if settings.method == "entropy" else None,
        "target": TARGET,
        "versions": {"edgecomp": __version__, "onnxruntime": onnxruntime.__version__, "numpy": np.__version__},
        "latency": {"runs": settings.runs, "warmup": settings.warmup, "batch": 1, "statistic": "median", "session_options": "default"},
        "goals": {"sqnr_max_db_below_onnxruntime": SQNR_GOAL_DB, "mnist_accuracy_min": MNIST_ACCURACY_GOAL},
        "models": models,
    }


# --------------------------------------------------------------------------------------------------
# output


def finite_json(value: Any) -> Any:
    """``value`` with non-finite floats as the strings ``inf``/``-inf``/``nan`` (strict JSON has none)."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {key: finite_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_json(item) for item in value]
    return value


def format_number(value: float | None, spec: str, suffix: str = "") -> str:
    """``value`` formatted with ``spec`` (``-`` when missing, ``inf`` kept)."""
    if value is None:
        return "-"
    if math.isinf(value):
        return ("inf" if value > 0 else "-inf") + suffix
    return f"{value:{spec}}{suffix}"


def headline_quality(tool_figures: dict[str, Any]) -> str:
    """Accuracy (%) for labelled data, else SQNR vs FP32 (dB)."""
    if tool_figures.get("accuracy") is not None:
        return format_number(100 * tool_figures["accuracy"], ".2f", " % acc")
    return format_number(tool_figures["sqnr_db"], ".1f", " dB")


def headline_ratio(entry: dict[str, Any]) -> str:
    """edgecomp/ORT of the headline figure; for SQNR also the difference in dB (a ratio of dB values alone misleads)."""
    ratios = entry["edgecomp_vs_onnxruntime"]
    if "accuracy_fp32" in entry:
        return format_number(ratios["accuracy_ratio"], ".3f", "x")
    return f"{format_number(ratios['sqnr_db_ratio'], '.3f', 'x')} ({format_number(ratios['sqnr_db_difference'], '+.1f', ' dB')})"


def tool_row(tool: str, entry: dict[str, Any]) -> list[str]:
    """One table row (after the model column) for ``tool``: its figures, or why there are none."""
    figures = entry.get(tool)
    if figures is None:
        return [tool, "skipped", "", "no ORT method", "", ""]
    if "error" in figures:
        return [tool, "[red]FAILED[/red]", "", figures["error"].split(":")[0] + " (see notes)", "", ""]
    return [
        tool, format_number(figures["compile_seconds"], ".2f"), format_number(figures["artifact_bytes"], ",d"),
        headline_quality(figures), format_number(figures["top1_agreement"], ".3f"), format_number(figures["latency_ms"], ".3f"),
    ]


def ratio_row(entry: dict[str, Any]) -> list[str]:
    """The edgecomp/ORT row (after the model column)."""
    ratios = entry["edgecomp_vs_onnxruntime"]
    return [
        "[dim]edgecomp/ORT[/dim]", format_number(ratios["compile_seconds_ratio"], ".2f", "x"), format_number(ratios["artifact_bytes_ratio"], ".3f", "x"),
        headline_ratio(entry), format_number(ratios["top1_agreement_ratio"], ".3f", "x"), format_number(ratios["latency_ms_ratio"], ".2f", "x"),
    ]


def comparison_table(document: dict[str, Any]):
    """The main table: per model an FP32 reference row, an edgecomp row, an ONNX Runtime row and an edgecomp/ORT row."""
    from rich.table import Table

    variants = ", ORT reduce_range=True" if document["onnxruntime_reduce_range"] else ""
    if document["onnxruntime_entropy_bins"]:
        variants += f", ORT entropy {document['onnxruntime_entropy_bins']} bins"
    table = Table(title=f"edgecomp naive INT8 vs ONNX Runtime quantize_static ({document['method']}{variants}; per-channel int8 weights, per-tensor int8 activations, QDQ)")
    for header in ("model", "tool", "compile s", "artifact B (.onnx)", "accuracy / SQNR", "top-1 agree", "latency ms"):
        table.add_column(header, justify="left" if header in ("model", "tool") else "right")
    for name, entry in document["models"].items():
        fp32_quality = format_number(100 * entry["accuracy_fp32"], ".2f", " % acc") if "accuracy_fp32" in entry else "(reference)"
        table.add_row(name, "[dim]FP32[/dim]", "", "", fp32_quality, "", format_number(entry["latency_fp32_ms"], ".3f"))
        for tool in ("edgecomp", "onnxruntime"):
            table.add_row("", *tool_row(tool, entry))
        if "edgecomp_vs_onnxruntime" in entry:
            table.add_row("", *ratio_row(entry))
        table.add_section()
    return table


def goal_status(met: bool) -> str:
    """``ok``, or a red flag when edgecomp is more than :data:`SQNR_GOAL_DB` below ORT."""
    return "[green]ok[/green]" if met else f"[bold red]FLAG (> {SQNR_GOAL_DB:g} dB below ORT)[/bold red]"


def goals_table(document: dict[str, Any]):
    """Per model: SQNR vs FP32 of both tools, fused (default session) and QDQ-simulated, and the goal status."""
    from rich.table import Table

    table = Table(title=f"Goal: edgecomp SQNR vs FP32 no more than {SQNR_GOAL_DB:g} dB below ORT's (same method, samples, granularity)")
    headers = ("model", "edgecomp dB", "ORT dB", "edgecomp - ORT", "status", "simulated: edgecomp dB", "ORT dB", "edgecomp - ORT", "status")
    for index, header in enumerate(headers):
        table.add_column(header, justify="left" if index in (0, 4, 8) else "right")
    for name, entry in document["models"].items():
        ratios = entry.get("edgecomp_vs_onnxruntime")
        if not ratios:
            table.add_row(name, *(["-"] * 3), "no comparison", *(["-"] * 3), "no comparison")
            continue
        row = [name]
        for key in ("sqnr_db", "sqnr_simulated_db"):
            row += [
                format_number(entry["edgecomp"][key], ".2f"), format_number(entry["onnxruntime"][key], ".2f"),
                format_number(ratios[f"{key}_difference"], "+.2f"), goal_status(ratios[f"{key}_goal_met"]),
            ]
        table.add_row(*row)
    return table


def mnist_goal_line(document: dict[str, Any]) -> str | None:
    """The MNIST accuracy goal (edgecomp >= 99.25 %) with FP32 and ORT for reference, or None without mnist figures."""
    entry = document["models"].get("mnist")
    if entry is None or "accuracy" not in entry.get("edgecomp", {}):
        return None
    accuracy = entry["edgecomp"]["accuracy"]
    status = "[green]ok[/green]" if accuracy >= MNIST_ACCURACY_GOAL else "[bold red]FLAG: below goal[/bold red]"
    ort = entry.get("onnxruntime", {}).get("accuracy")
    return (
        f"Goal: MNIST accuracy of edgecomp naive INT8 >= {100 * MNIST_ACCURACY_GOAL:.2f} % on mnist_eval_2000: "
        f"edgecomp {100 * accuracy:.2f} % ({status}); ORT {format_number(None if ort is None else 100 * ort, '.2f', ' %')}; "
        f"FP32 {100 * entry['accuracy_fp32']:.2f} %"
    )


def notes(document: dict[str, Any]) -> list[str]:
    """Per-model footnotes: the data used, edgecomp's weight range, ORT's preparation steps, full error texts."""
    lines = []
    for name, entry in document["models"].items():
        parts = [entry["data"]]
        for tool in ("edgecomp", "onnxruntime"):
            figures = entry.get(tool) or {}
            details = figures.get("details", {})
            if "error" in figures:
                parts.append(f"{tool} FAILED: {figures['error']}")
            if details.get("weight_range"):
                parts.append(f"edgecomp weights {details['weight_range']}")
            if details.get("steps"):
                parts.append(f"ORT preparation: {'; '.join(details['steps'])}")
        lines.append(f"{name}: " + " | ".join(parts))
    return lines


def print_tables(document: dict[str, Any]) -> None:
    """Print the comparison table, the goals and the notes to stdout with rich."""
    from rich.console import Console

    console = Console(width=None if sys.stdout.isatty() else 160)
    console.print(comparison_table(document))
    console.print(goals_table(document))
    goal = mnist_goal_line(document)
    if goal:
        console.print(goal)
    latency = document["latency"]
    console.print(
        f"Latency: median of {latency['runs']} timed session.run calls per model (batch 1, after {latency['warmup']} warm-up runs, "
        "default session options, models interleaved). Accuracy, SQNR and top-1 with default session options (fused integer kernels); "
        "'simulated' = no graph optimisation (QDQ evaluated in float). Top-1 is not reported for the AD autoencoder (a reconstruction). "
        f"Versions: {', '.join(f'{k} {v}' for k, v in document['versions'].items())}.",
        highlight=False,
    )
    for line in notes(document):
        console.print(line, highlight=False)


# --------------------------------------------------------------------------------------------------
# command line


def parse_arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command-line options (see ``--help``)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--method", choices=METHODS, default="minmax", help="calibration method (mse: edgecomp only, ONNX Runtime has none)")
    parser.add_argument("--ort-reduce-range", action="store_true", help="quantize_static(reduce_range=True): 7-bit ORT weights (its advice for x86 without VNNI)")
    parser.add_argument("--ort-entropy-bins", type=int, default=None, help="ORT Entropy histogram bins, e.g. 2048 as edgecomp (default: quantize_static's fixed 128, which equals MinMax)")
    parser.add_argument("--models", nargs="+", choices=list(CASES), default=list(CASES), help="models to benchmark")
    parser.add_argument("--shared", type=pathlib.Path, default=DEFAULT_SHARED, help="the shared models/data folder (env EDGECOMP_SHARED)")
    parser.add_argument("--runs", type=int, default=Settings.runs, help="timed session.run calls per model for the latency median")
    parser.add_argument("--warmup", type=int, default=Settings.warmup, help="untimed session.run calls per model before timing")
    parser.add_argument("--workdir", type=pathlib.Path, default=None, help="keep npz files and quantized models here (default: a temporary folder, deleted)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON instead of tables")
    parser.add_argument("-v", "--verbose", action="store_true", help="progress messages on stderr")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print it; return 0 (goal misses are reported, not errors)."""
    arguments = parse_arguments(argv)
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s", stream=sys.stderr)
    log.setLevel(logging.INFO if arguments.verbose else logging.WARNING)
    settings = Settings(arguments.method, arguments.ort_reduce_range, arguments.ort_entropy_bins, arguments.runs, arguments.warmup)
    with tempfile.TemporaryDirectory(prefix="bench_naive_vs_ort.") as temporary:
        workdir = arguments.workdir or pathlib.Path(temporary)
        workdir.mkdir(parents=True, exist_ok=True)
        document = run_benchmark(arguments.models, settings, arguments.shared, workdir)
    if arguments.json:
        print(json.dumps(finite_json(document), indent=2))
    else:
        print_tables(document)
    return 0


if __name__ == "__main__":
    sys.exit(main())
