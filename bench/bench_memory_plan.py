"""Benchmark: edgecomp's tensor-arena plans against the lower bound and against TensorFlow Lite Micro.

Part 1, edgecomp's own int8 graphs. For mnist-8 and the MLPerf Tiny KWS, VWW, IC and AD float
models: canonicalize, quantize with naive INT8 on real calibration data (shared/README.md
preprocessing), build the int8 arena buffers (:func:`edgecomp.memory.arena_buffers`: Q/DQ pairs
collapsed into int8 tensors, 16-byte aligned sizes) and print the lower bound, TFLite Micro's
greedy-by-size plan of the same buffers (:func:`edgecomp.memory.greedy_by_size`), edgecomp's
:func:`edgecomp.memory.best_plan`, the gap to the bound, and best_plan with in-place reuse.

Part 2, the official INT8 ``.tflite`` files of KWS, VWW, IC and AD, as TFLite Micro runs them:

- the arena TFLite Micro allocates, from the ``tflite-micro`` PyPI runtime
  (``runtime.Interpreter.from_file(p).print_allocations()``, captured from a subprocess): total,
  head (the non-persistent section its GreedyMemoryPlanner plans: activations and scratch) and
  tail (persistent: tensor structs, quantization data, kernel buffers);
- the same file's buffers (tensors TFLite Micro plans, in tensor-index order, sizes rounded to 16,
  lifetimes from the operators; read with LiteRT's reference op resolver), planned by our
  reimplementation of TFLite Micro's greedy planner (it should equal the head) and by best_plan.

Our int8 graph of the float ONNX is not the official ``.tflite``: tf2onnx put an NHWC -> NCHW
Transpose/Reshape after the input of KWS, VWW and IC (an extra copy of the input, one more buffer),
and the official files were made by the TFLite converter from the Keras model (its own fusions
and scales). The sizes of most activations agree; the tables say where they differ.

This is a benchmark, not a test: it reads ``../shared`` at run time and prints tables (``--json``
for tools). Run ``python bench/bench_memory_plan.py --help``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import pathlib
import re
import subprocess
import sys
import time
from typing import Any, Callable, Sequence

import numpy as np

log = logging.getLogger("bench_memory_plan")

REPO = pathlib.Path(__file__).resolve().parent.parent
DEFAULT_SHARED = pathlib.Path(os.environ.get("EDGECOMP_SHARED", REPO.parent / "shared"))
MNIST_DIR = REPO / "examples" / "mnist"
ALIGNMENT = 16  # TFLite Micro's MicroArenaBufferAlignment()

KWS_INPUT_SCALE, KWS_INPUT_ZERO_POINT = 0.5847029089927673, 83
OFFICIAL = {
    "kws": "models/mlperf_tiny/kws/kws_ref_model.tflite",
    "vww": "models/mlperf_tiny/vww/vww_96_int8.tflite",
    "ic": "models/mlperf_tiny/ic/pretrainedResnet_quant.tflite",
    "ad": "models/mlperf_tiny/ad/ad01_int8.tflite",
}
ISSUE_TFLM_TOTAL = {"kws": 24272, "vww": 103680, "ic": 55984, "ad": 3984}
"""Total TFLite Micro arenas quoted in issue 5 (bytes), printed beside the measured ones."""


# --------------------------------------------------------------------------------------------------
# models and real calibration data (shared/README.md)


def _images(shared: pathlib.Path, size: int) -> np.ndarray:
    from PIL import Image

    paths = sorted(p for p in (shared / "data" / "images").iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    arrays = []
    for path in paths:
        with Image.open(path) as image:
            arrays.append(np.asarray(image.convert("RGB").resize((size, size), Image.BILINEAR), np.float32))
    return np.stack(arrays)


def mnist_case(shared: pathlib.Path) -> tuple[pathlib.Path, str, np.ndarray]:
    """mnist-8, NCHW raw 0..255: the first 200 digits of mnist_calib_1000."""
    return MNIST_DIR / "mnist-8.onnx", "Input3", np.load(MNIST_DIR / "mnist_calib_1000.npz")["x"][:200].astype(np.float32)


def kws_case(shared: pathlib.Path) -> tuple[pathlib.Path, str, np.ndarray]:
    """KWS: the one real MFCC sample, dequantized with the model's input parameters."""
    quantized = np.load(shared / "data" / "kws" / "mlperf_kws_input_data_int8_1x49x10x1.npy")
    samples = (quantized.astype(np.float32) - KWS_INPUT_ZERO_POINT) * np.float32(KWS_INPUT_SCALE)
    return shared / "models/mlperf_tiny/kws/kws_ref_model_float32.onnx", "input_1", samples


def vww_case(shared: pathlib.Path) -> tuple[pathlib.Path, str, np.ndarray]:
    """VWW: every photo in data/images at 96x96 RGB, /255."""
    return shared / "models/mlperf_tiny/vww/vww_96_float.onnx", "input_1", _images(shared, 96) / np.float32(255)


def ic_case(shared: pathlib.Path) -> tuple[pathlib.Path, str, np.ndarray]:
    """IC (ResNet-8): every photo in data/images at 32x32 RGB, raw 0..255."""
    return shared / "models/mlperf_tiny/ic/pretrainedResnet.onnx", "input_1", _images(shared, 32)


def ad_case(shared: pathlib.Path) -> tuple[pathlib.Path, str, np.ndarray]:
    """AD: the 40 non-overlapping 5-frame windows of the one ToyCar log-mel clip (read from shared only)."""
    raw = np.fromfile(shared / "data" / "ad" / "normal_id_01_00000000_hist_librosa.bin", np.float32)
    return shared / "models/mlperf_tiny/ad/ad01_fp32.onnx", "input_1", raw.reshape(40, 640)


CASES: dict[str, Callable[[pathlib.Path], tuple[pathlib.Path, str, np.ndarray]]] = {
    "mnist": mnist_case, "kws": kws_case, "vww": vww_case, "ic": ic_case, "ad": ad_case,
}


# --------------------------------------------------------------------------------------------------
# part 1: edgecomp's int8 graphs


def plan_figures(buffers, search_budget: int) -> dict[str, Any]:
    from edgecomp.memory import best_plan, greedy_by_size, lower_bound

    started = time.perf_counter()
    best = best_plan(buffers, alignment=ALIGNMENT, search_budget=search_budget)
    seconds = time.perf_counter() - started
    greedy = greedy_by_size(buffers, alignment=ALIGNMENT)
    best.verify()
    greedy.verify()
    bound = lower_bound(buffers)
    return {
        "buffers": len(buffers),
        "lower_bound": bound,
        "tflm_greedy": greedy.arena_size,
        "best": best.arena_size,
        "gap_bytes": best.gap_bytes,
        "gap_percent": best.gap_percent,
        "greedy_gap_bytes": greedy.gap_bytes,
        "greedy_gap_percent": greedy.gap_percent,
        "strategy": best.strategy,
        "plan_ms": seconds * 1000,
    }


def edgecomp_row(name: str, shared: pathlib.Path, search_budget: int) -> dict[str, Any]:
    from edgecomp.ir.load import load_model
    from edgecomp.memory import arena_buffers, arena_steps
    from edgecomp.passes.base import PassManager
    from edgecomp.passes.canonicalize import canonicalization_passes
    from edgecomp.passes.quantize.naive import quantize_naive

    path, input_name, samples = CASES[name](shared)
    log.info("%s: quantizing %s on %d real samples", name, path.name, len(samples))
    model = PassManager(canonicalization_passes(fold_weight_dequantize=False))(load_model(path)).model
    quantize_naive(model, ({input_name: samples[i : i + 1]} for i in range(len(samples))))
    buffers = arena_buffers(model, alignment=ALIGNMENT)
    row = {"model": name, "file": path.name, "samples": len(samples), "steps": len(arena_steps(model))}
    row.update(plan_figures(buffers, search_budget))
    in_place = plan_figures(arena_buffers(model, alignment=ALIGNMENT, in_place=True), search_budget)
    row["in_place_best"] = in_place["best"]
    row["in_place_lower_bound"] = in_place["lower_bound"]
    row["input_buffer"] = buffers[0].size
    return row


# --------------------------------------------------------------------------------------------------
# part 2: the official .tflite files under TFLite Micro


_ALLOCATION = re.compile(r"Arena allocation (total|head|tail) (\d+) bytes")


def tflm_arena(path: pathlib.Path) -> dict[str, int]:
    """The arena TFLite Micro allocates for ``path``: {"total", "head", "tail"} in bytes.

    ``print_allocations()`` writes from C++ to the process's stdout, so it runs in a subprocess whose
    output is captured and parsed (lines ``[RecordingMicroAllocator] Arena allocation head N bytes``).
    """
    code = (
        "from tflite_micro.python.tflite_micro import runtime\n"
        f"runtime.Interpreter.from_file({str(path)!r}).print_allocations()\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300)
    figures = {key: int(value) for key, value in _ALLOCATION.findall(result.stdout + result.stderr)}
    if set(figures) != {"total", "head", "tail"}:
        raise RuntimeError(f"{path.name}: no arena figures in tflite-micro's output:\n{result.stdout}{result.stderr}")
    return figures


def tflite_buffers(path: pathlib.Path) -> list:
    """The buffers TFLite Micro plans for ``path``, in its order (tensor index).

    As ``micro_allocation_info.cc``: every tensor that is a subgraph input or an operator output
    (constants have data, so they are not planned), ``numel * itemsize`` rounded up to 16 bytes;
    alive from its writer (0 for an input) to its last reader, outputs to the last operator.
    Read with LiteRT's reference op resolver, which keeps the file's operators (no delegate).
    """
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    from edgecomp.memory import Buffer

    interpreter = Interpreter(model_path=str(path), experimental_op_resolver_type=OpResolverType.BUILTIN_REF)
    interpreter.allocate_tensors()
    details = {int(t["index"]): t for t in interpreter.get_tensor_details()}
    operators = interpreter._get_ops_details()  # LiteRT's only per-operator view
    first: dict[int, int] = {}
    last: dict[int, int] = {}
    for detail in interpreter.get_input_details():
        first[int(detail["index"])] = last[int(detail["index"])] = 0
    for step, operator in enumerate(operators):
        for tensor in map(int, operator["inputs"]):
            if tensor in first:
                last[tensor] = step
        for tensor in map(int, operator["outputs"]):
            first[tensor] = last[tensor] = step
    for detail in interpreter.get_output_details():
        last[int(detail["index"])] = len(operators) - 1
    buffers = []
    for tensor in sorted(first):
        detail = details[tensor]
        size = int(np.prod(detail["shape"])) * np.dtype(detail["dtype"]).itemsize
        buffers.append(Buffer(detail["name"], -(-size // ALIGNMENT) * ALIGNMENT, first[tensor], last[tensor]))
    return buffers


def tflm_row(name: str, shared: pathlib.Path, search_budget: int) -> dict[str, Any]:
    path = shared / OFFICIAL[name]
    log.info("%s: TFLite Micro on %s", name, path.name)
    row: dict[str, Any] = {"model": name, "file": path.name, "issue_total": ISSUE_TFLM_TOTAL[name]}
    arena = tflm_arena(path)
    row.update({f"tflm_{key}": value for key, value in arena.items()})
    figures = plan_figures(tflite_buffers(path), search_budget)
    row.update({f"official_{key}": value for key, value in figures.items()})
    row["greedy_reproduces_tflm_head"] = figures["tflm_greedy"] == arena["head"]
    return row


# --------------------------------------------------------------------------------------------------
# output


def _b(value: int) -> str:
    return f"{value:,}"


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.3f}" if b else "-"


def print_tables(document: dict[str, Any]) -> None:
    rows = document["edgecomp"]
    if rows:
        print("edgecomp int8 graphs (naive INT8 of the float ONNX, real calibration data; bytes, 16-byte aligned)")
        header = ("model", "steps", "buffers", "lower bound", "TFLM greedy", "greedy gap", "best", "gap", "best/greedy", "in-place best", "strategy", "plan ms")
        lines = [header]
        for r in rows:
            lines.append((
                r["model"], str(r["steps"]), str(r["buffers"]), _b(r["lower_bound"]), _b(r["tflm_greedy"]),
                f"{_b(r['greedy_gap_bytes'])} ({r['greedy_gap_percent']:.1f}%)", _b(r["best"]),
                f"{_b(r['gap_bytes'])} ({r['gap_percent']:.1f}%)", _ratio(r["best"], r["tflm_greedy"]),
                _b(r["in_place_best"]), r["strategy"], f"{r['plan_ms']:.1f}",
            ))
        _print_lines(lines)
    rows = document["tflm"]
    if rows:
        print()
        print("official INT8 .tflite under TFLite Micro (tflite-micro PyPI runtime) vs edgecomp's plan of the same buffers")
        header = ("model", "TFLM total", "(issue)", "TFLM head", "TFLM tail", "our TFLM greedy", "= head", "lower bound",
                  "edgecomp best", "best/head", "best+tail", "(best+tail)/total")
        lines = [header]
        for r in rows:
            lines.append((
                r["model"], _b(r["tflm_total"]), _b(r["issue_total"]), _b(r["tflm_head"]), _b(r["tflm_tail"]),
                _b(r["official_tflm_greedy"]), "yes" if r["greedy_reproduces_tflm_head"] else "NO",
                _b(r["official_lower_bound"]), _b(r["official_best"]), _ratio(r["official_best"], r["tflm_head"]),
                _b(r["official_best"] + r["tflm_tail"]), _ratio(r["official_best"] + r["tflm_tail"], r["tflm_total"]),
            ))
        _print_lines(lines)
    both = {r["model"]: r for r in document["edgecomp"]}
    side = [(both[r["model"]], r) for r in rows if r["model"] in both]
    if side:
        print()
        print("our int8 graph vs the official file (activations only)")
        lines = [("model", "our lower bound", "official lower bound", "our best", "TFLM head", "our best/TFLM head", "note")]
        for ours, official in side:
            note = "same" if ours["lower_bound"] == official["official_lower_bound"] else "graphs differ (see notes)"
            lines.append((
                ours["model"], _b(ours["lower_bound"]), _b(official["official_lower_bound"]), _b(ours["best"]),
                _b(official["tflm_head"]), _ratio(ours["best"], official["tflm_head"]), note,
            ))
        _print_lines(lines)
    print()
    for note in document["notes"]:
        print(f"note: {note}")


def _print_lines(lines: list[tuple[str, ...]]) -> None:
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    for index, line in enumerate(lines):
        print("  ".join(cell.rjust(width) if index and cell[:1].isdigit() else cell.ljust(width) for cell, width in zip(line, widths)).rstrip())
        if index == 0:
            print("  ".join("-" * width for width in widths))


NOTES = [
    "lower bound = the largest total size of buffers alive at one step; no plan of these buffers is smaller",
    "TFLM greedy = TFLite Micro's GreedyMemoryPlanner reimplemented (largest first, ties later-added first, first fit)",
    "TFLM head = the non-persistent arena section TFLite Micro plans (activations and scratch); tail = its persistent data",
    (
        "our ONNX-derived int8 graphs of kws/vww/ic copy the input once more (tf2onnx's NHWC->NCHW Transpose/Reshape "
        "after the input); the official files feed the input straight into the first convolution"
    ),
    "in-place best: element-wise/reshape outputs reuse a dying input's buffer (option, off by default; TFLM does not)",
]


# --------------------------------------------------------------------------------------------------
# command line


def run_benchmark(models: Sequence[str], shared: pathlib.Path, search_budget: int) -> dict[str, Any]:
    return {
        "alignment": ALIGNMENT,
        "search_budget": search_budget,
        "edgecomp": [edgecomp_row(name, shared, search_budget) for name in models],
        "tflm": [tflm_row(name, shared, search_budget) for name in models if name in OFFICIAL],
        "notes": NOTES,
    }


def parse_arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    from edgecomp.memory import DEFAULT_SEARCH_BUDGET

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--models", nargs="+", choices=list(CASES), default=list(CASES), help="models to benchmark")
    parser.add_argument("--shared", type=pathlib.Path, default=DEFAULT_SHARED, help="the shared models/data folder (env EDGECOMP_SHARED)")
    parser.add_argument("--search-budget", type=int, default=DEFAULT_SEARCH_BUDGET, help="best_plan's search nodes")
    parser.add_argument("--json", action="store_true", help="print the results as JSON instead of tables")
    parser.add_argument("-v", "--verbose", action="store_true", help="progress messages on stderr")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print it; return 0."""
    arguments = parse_arguments(argv)
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s", stream=sys.stderr)
    log.setLevel(logging.INFO if arguments.verbose else logging.WARNING)
    document = run_benchmark(arguments.models, arguments.shared, arguments.search_budget)
    if arguments.json:
        print(json.dumps(document, indent=2))
    else:
        print_tables(document)
    return 0


if __name__ == "__main__":
    sys.exit(main())
