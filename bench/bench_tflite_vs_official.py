"""Benchmark: edgecomp's INT8 ``.tflite`` files against the official MLPerf Tiny INT8 ``.tflite`` files.

For each of KWS, VWW, IC and AD, in one run:

- **edgecomp qat**: the official file's QDQ twin (``*_qdq.onnx``, tf2onnx conversion of the official
  int8 file, same scales) compiled with ``compile_model(quantize="qat", backend="tflite")``;
- **edgecomp naive**: the float ONNX model compiled with ``quantize="naive"`` (edgecomp's own
  MinMax calibration on the real data below), with float input and output;
- **official**: the MLPerf Tiny int8 ``.tflite``.

Measured in the same process: LiteRT latency (``ai_edge_litert`` Interpreter, ``num_threads=1``,
default XNNPACK delegate; after warm-up, the three interpreters invoked in turn, one invoke each
per round, many rounds; median per file), file size, and constant-data size (bytes of the buffers
tensors point to). Ratios are edgecomp / official; the goal is at most 1.05x the official latency
and no larger file. The qat file's outputs are also compared with the official file's on the
sample (max difference in LSB).

Data (``../shared``, see its README; the AD data is only read here, never copied): KWS the one real
MFCC sample; VWW and IC the photos of ``data/images`` (96x96 /255 and 32x32 raw); AD the 196
sliding 5-frame windows of the log-mel clip. The naive compile calibrates on them; the timed input
is the first sample.

This is a benchmark, not a test. ``python bench/bench_tflite_vs_official.py --help``.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import sys
import tempfile
import time
from typing import Any

import numpy as np

REPO = pathlib.Path(__file__).resolve().parent.parent
DEFAULT_SHARED = pathlib.Path(os.environ.get("EDGECOMP_SHARED", REPO.parent / "shared"))
TARGET = "host-x86_64"
MODELS = ("kws", "vww", "ic", "ad")
LATENCY_GOAL = 1.05
"""Goal: edgecomp's latency at most this multiple of the official file's."""

#: name -> (float ONNX, QDQ twin, official int8 .tflite), relative to shared/models/mlperf_tiny
FILES = {
    "kws": ("kws/kws_ref_model_float32.onnx", "kws/kws_ref_model_int8_qdq.onnx", "kws/kws_ref_model.tflite"),
    "vww": ("vww/vww_96_float.onnx", "vww/vww_96_int8_qdq.onnx", "vww/vww_96_int8.tflite"),
    "ic": ("ic/pretrainedResnet.onnx", "ic/pretrainedResnet_quant_qdq.onnx", "ic/pretrainedResnet_quant.tflite"),
    "ad": ("ad/ad01_fp32.onnx", "ad/ad01_int8_qdq.onnx", "ad/ad01_int8.tflite"),
}
#: int8 input quantization of the official files (shared README): (scale, zero point)
INPUT_PARAMS = {"kws": (0.5847029089927673, 83), "vww": (1 / 255, -128), "ic": (1.0, -128), "ad": (0.3910152316093445, 89)}


def float_data(name: str, shared: pathlib.Path) -> np.ndarray:
    """The real float inputs of ``name`` (batch axis first), preprocessed as the shared README says."""
    if name == "kws":
        q = np.load(shared / "data" / "kws" / "mlperf_kws_input_data_int8_1x49x10x1.npy")
        return (q.astype(np.float32) - 83) * np.float32(0.5847029089927673)
    if name in ("vww", "ic"):
        from PIL import Image

        size, scale = (96, 1 / 255) if name == "vww" else (32, 1.0)
        paths = sorted(p for p in (shared / "data" / "images").iterdir() if p.suffix in (".png", ".jpg"))
        images = [np.asarray(Image.open(p).convert("RGB").resize((size, size), Image.BILINEAR), np.float32) for p in paths]
        return np.stack(images) * np.float32(scale)
    if name == "ad":
        spectrogram = np.fromfile(shared / "data" / "ad" / "normal_id_01_00000000_hist_librosa.bin", np.float32).reshape(200, 128)
        return np.stack([spectrogram[t : t + 5].reshape(640) for t in range(196)])
    raise KeyError(name)


def quantized(name: str, x: np.ndarray) -> np.ndarray:
    scale, zero_point = INPUT_PARAMS[name]
    return np.clip(np.round(x / np.float32(scale)) + zero_point, -128, 127).astype(np.int8)


def compile_tflite(model: pathlib.Path, quantize: str, data: np.ndarray, workdir: pathlib.Path, label: str) -> tuple[bytes, dict[str, Any]]:
    """``compile_model`` with the tflite backend; returns (the .tflite bytes, the report)."""
    from edgecomp.compile import CompileOptions, compile_model

    samples = workdir / f"{label}.npz"
    np.savez(samples, x=data)
    output = workdir / label
    calibration = str(samples) if quantize == "naive" else None
    result = compile_model(CompileOptions(model=str(model), target=TARGET, backend="tflite", quantize=quantize, calibration=calibration, eval=str(samples), output=str(output)))
    tflite = next(output.glob("*.tflite"))
    return tflite.read_bytes(), result.report


def constant_bytes(data: bytes) -> int:
    from edgecomp_tflite.writer import constant_data_bytes

    return constant_data_bytes(data)


def latencies_us(files: dict[str, tuple[bytes, np.ndarray]], rounds: int, warmup: int) -> dict[str, float]:
    """Median invoke time (us) per file: LiteRT, 1 thread, default delegates; invoked in turn."""
    from ai_edge_litert.interpreter import Interpreter

    interpreters = {}
    for key, (data, x) in files.items():
        interpreter = Interpreter(model_content=data, num_threads=1)
        interpreter.allocate_tensors()
        detail = interpreter.get_input_details()[0]
        interpreter.set_tensor(detail["index"], np.ascontiguousarray(x[:1].astype(detail["dtype"])))
        for _ in range(warmup):
            interpreter.invoke()
        interpreters[key] = interpreter
    times: dict[str, list[float]] = {key: [] for key in files}
    for _ in range(rounds):
        for key, interpreter in interpreters.items():
            start = time.perf_counter()
            interpreter.invoke()
            times[key].append(time.perf_counter() - start)
    return {key: statistics.median(values) * 1e6 for key, values in times.items()}


def first_output(data: bytes, x: np.ndarray) -> np.ndarray:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=data, num_threads=1)
    interpreter.allocate_tensors()
    detail = interpreter.get_input_details()[0]
    outputs = []
    for row in x:
        interpreter.set_tensor(detail["index"], np.ascontiguousarray(row[None]))
        interpreter.invoke()
        outputs.append(interpreter.get_tensor(interpreter.get_output_details()[0]["index"]).copy())
    return np.concatenate(outputs)


def measure(name: str, shared: pathlib.Path, workdir: pathlib.Path, rounds: int, warmup: int) -> dict[str, Any]:
    base = shared / "models" / "mlperf_tiny"
    float_model, qdq_model, official_path = (base / part for part in FILES[name])
    x = float_data(name, shared)
    xq = quantized(name, x)
    official = official_path.read_bytes()
    qat, qat_report = compile_tflite(qdq_model, "qat", xq, workdir, f"{name}_qat")
    naive, naive_report = compile_tflite(float_model, "naive", x, workdir, f"{name}_naive")
    latency = latencies_us({"official": (official, xq), "qat": (qat, xq), "naive": (naive, x)}, rounds, warmup)
    difference = np.abs(first_output(qat, xq).astype(np.int32) - first_output(official, xq).astype(np.int32))
    row: dict[str, Any] = {"model": name, "samples": len(x)}
    for key, data, report in (("official", official, None), ("qat", qat, qat_report), ("naive", naive, naive_report)):
        row[key] = {"latency_us": round(latency[key], 2), "file_bytes": len(data), "constant_bytes": constant_bytes(data)}
        if report is not None:
            row[key]["op_histogram"] = report["backend_metadata"]["op_histogram"]
    for key in ("qat", "naive"):
        row[f"{key}_latency_ratio"] = round(latency[key] / latency["official"], 3)
        row[f"{key}_size_ratio"] = round(row[key]["file_bytes"] / len(official), 3)
    row["official_file_over_constants"] = round(len(official) / row["official"]["constant_bytes"], 3)
    row["qat_vs_official_max_lsb"] = int(difference.max())
    row["qat_vs_official_identical_fraction"] = float(np.mean(difference == 0))
    return row


def print_table(rows: list[dict[str, Any]], rounds: int) -> None:
    print(f"LiteRT, 1 thread, default XNNPACK delegate; median of {rounds} interleaved invokes after warm-up; ratios = edgecomp / official")
    header = f"{'model':6} {'file':9} {'latency us':>11} {'x official':>10} {'file bytes':>11} {'x official':>10} {'const bytes':>12} {'file/const':>10}"
    print(header)
    print("-" * len(header))
    for row in rows:
        for key in ("official", "qat", "naive"):
            entry = row[key]
            latency_ratio = "" if key == "official" else f"{row[f'{key}_latency_ratio']:.3f}"
            size_ratio = "" if key == "official" else f"{row[f'{key}_size_ratio']:.3f}"
            print(
                f"{row['model']:6} {key:9} {entry['latency_us']:11.1f} {latency_ratio:>10} {entry['file_bytes']:11d} {size_ratio:>10} "
                f"{entry['constant_bytes']:12d} {entry['file_bytes'] / entry['constant_bytes']:10.3f}"
            )
        print(f"{'':6} qat outputs vs official on {row['samples']} samples: max {row['qat_vs_official_max_lsb']} LSB, {row['qat_vs_official_identical_fraction']:.1%} identical")
    print()
    for key in ("qat", "naive"):
        latency_ok = all(row[f"{key}_latency_ratio"] <= LATENCY_GOAL for row in rows)
        size_ok = all(row[f"{key}_size_ratio"] <= 1.0 for row in rows)
        print(f"goal ({key}): latency <= {LATENCY_GOAL}x official: {'met' if latency_ok else 'NOT met'}; file no larger: {'met' if size_ok else 'NOT met'}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=pathlib.Path, default=DEFAULT_SHARED, help="the shared models/data folder (default ../shared or $EDGECOMP_SHARED)")
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--rounds", type=int, default=2000, help="timed invokes per file (interleaved)")
    parser.add_argument("--warmup", type=int, default=100, help="untimed invokes per file first")
    parser.add_argument("--workdir", type=pathlib.Path, help="keep the compiled files here (default: a deleted temporary folder)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    if not (args.shared / "models" / "mlperf_tiny").is_dir():
        print(f"error: {args.shared}/models/mlperf_tiny not found (set --shared or EDGECOMP_SHARED)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="bench_tflite_") as scratch:
        workdir = args.workdir or pathlib.Path(scratch)
        workdir.mkdir(parents=True, exist_ok=True)
        rows = [measure(name, args.shared, workdir, args.rounds, args.warmup) for name in args.models]
    if args.json:
        print(json.dumps({"rounds": args.rounds, "threads": 1, "delegate": "default (XNNPACK)", "models": rows}, indent=2))
    else:
        print_table(rows, args.rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
