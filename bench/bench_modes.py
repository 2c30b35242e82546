"""Benchmark: edgecomp's quantization modes against ONNX Runtime ``quantize_static`` (best of its methods), and calibration memory.

Part 1, **modes table** (issue 4, "Done when"): per real model (mnist-8 and the MLPerf Tiny KWS,
VWW, IC and AD float models, with the data of ``bench_naive_vs_ort.py``), these ``.onnx`` QDQ
artifacts, each measured by the same code (``bench_naive_vs_ort.measure_quality``):

- edgecomp ``naive`` (minmax), ``hybrid`` (Conv/Gemm/MatMul int8), ``selective`` (no goal: a
  calibration method per tensor, with its guard that also tries each uniform method and starts
  from the best), and ``selective`` with ``equalize`` and ``bias_correction``; and ``/fr`` twins
  of naive and the selective rows compiled for ``rpi4-aarch64`` (full-range int8 weights: on an x86
  CPU without VNNI the host-x86_64 backend narrows weights to 7 bits, see :data:`EDGECOMP_VARIANTS`);
- ONNX Runtime ``quantize_static`` (QDQ, per-channel, QInt8/QInt8) with each of MinMax, Percentile
  and Entropy, full-range and with ``reduce_range=True`` (7-bit weights); the table shows the best
  method per column (fused run / QDQ simulation) for each of the two.

Each row gives accuracy (MNIST, labelled) or SQNR vs FP32 (the others) from an ONNX Runtime session
with default options (fused integer kernels) and from the QDQ simulation (no graph optimisation),
artifact bytes, bytes relative to naive, and compile seconds. The checks below the table say whether
each selective variant is at least as accurate as naive and as the best ORT method (fused and
simulated), at no more than 1.5x naive's bytes.

Part 2, **calibration memory**: fresh subprocesses compile mnist (100 vs 1000 calibration samples)
and vww (its 12 samples vs the same 12 tiled to 100) with naive and with selective, and report the
peak RSS of each (``/proc/self/status``), its growth during the compile and the Python/NumPy heap
peak (:mod:`tracemalloc`, separate run); see :data:`MEMORY_CASES` and :func:`memory_child`.

Everything about models, data, ORT preparation and measuring is imported from
``bench_naive_vs_ort.py``. Run ``python bench/bench_modes.py --help``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import pathlib
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import bench_naive_vs_ort as base  # the shared models, data, ORT side and measuring

log = logging.getLogger("bench_modes")

FULL_RANGE_TARGET = "rpi4-aarch64"
EDGECOMP_VARIANTS: dict[str, dict[str, Any]] = {
    "naive": {"quantize": "naive", "calibration_method": "minmax"},
    "hybrid": {"quantize": "hybrid", "calibration_method": "minmax"},
    "selective": {"quantize": "selective"},
    "selective+eq+bc": {"quantize": "selective", "equalize": True, "bias_correction": True},
    "naive/fr": {"quantize": "naive", "calibration_method": "minmax", "target": FULL_RANGE_TARGET},
    "selective/fr": {"quantize": "selective", "target": FULL_RANGE_TARGET},
    "selective+eq+bc/fr": {"quantize": "selective", "equalize": True, "bias_correction": True, "target": FULL_RANGE_TARGET},
}
"""Row name -> ``CompileOptions`` keywords (onnxruntime backend; target host-x86_64 unless ``target`` is given).

On an x86 CPU without VNNI the host-x86_64 artifact may carry 7-bit weights (the backend narrows them
when its fused run saturates). The ``/fr`` rows compile the same for ``rpi4-aarch64`` (also the
onnxruntime backend, full-range int8 weights, never narrowed): their simulated column is the
like-for-like counterpart of ORT's full-range simulation (their fused run saturates here, as ORT's).
"""
SELECTIVE_CHECKS: dict[str, tuple[str, tuple[str, ...], tuple[str, ...]]] = {
    "selective": ("naive", ("fused", "simulated"), ("ORT best", "ORT best rr")),
    "selective+eq+bc": ("naive", ("fused", "simulated"), ("ORT best", "ORT best rr")),
    "selective/fr": ("naive/fr", ("simulated",), ("ORT best",)),
    "selective+eq+bc/fr": ("naive/fr", ("simulated",), ("ORT best",)),
}
"""Checked row -> (its naive row, the columns checked, the best-ORT rows it is checked against).

The ``/fr`` rows are checked on the simulation against full-range ORT only: their fused run
saturates on a CPU without VNNI, like full-range ORT's, so fused figures say nothing about the scheme.
"""
ORT_METHODS = ("minmax", "percentile", "entropy")
CHECK_COLUMNS = ("fused", "simulated")
ORT_ROWS = {"ORT best": False, "ORT best rr": True}
"""Table row -> ``reduce_range`` of the ``quantize_static`` runs it picks the best from."""
BYTES_LIMIT = 1.5
"""Goal: a selective artifact is at most this many times naive's bytes."""
MEMORY_CASES = (
    # (model, quantize, small sample count, large sample count, calibration batch size)
    ("mnist", "naive", 100, 1000, 32),
    ("mnist", "selective", 100, 1000, 32),
    ("vww", "naive", 12, 100, 12),
    ("vww", "selective", 12, 100, 12),
    ("vww", "naive", 12, 100, 32),
)
"""Calibration-memory measurements. The batch size is the same for both counts and at most the small
count (both runs fill their batches), so only the sample count differs; the last row keeps the default
batch size 32, where 12 samples make one batch of 12 and 100 make batches of 32: it shows the batch
size's effect (activations of a whole batch are computed at once), not the sample count's."""
TINY_DATA_NOTE = (
    "kws, vww, ic and ad have tiny real data sets (1, 12, 10 and 196 samples from one clip): calibration = evaluation there, "
    "so their SQNR figures compare quantization schemes with each other and are not estimates of quality on unseen data; "
    "with 1 (kws) or 10-12 samples the differences between rows are partly fitting to those samples. "
    "mnist calibrates on mnist_calib_1000 and evaluates on the disjoint, labelled mnist_eval_2000."
)


# --------------------------------------------------------------------------------------------------
# quantizing


def compile_variant(case: base.BenchmarkCase, variant: str, workdir: pathlib.Path) -> base.QuantizedModel:
    """Compile ``case.model`` with edgecomp as the row ``variant`` of :data:`EDGECOMP_VARIANTS` (host-x86_64 unless it names a target).

    No ``eval`` data is passed, so the compile time is the compile alone (selective would otherwise
    also measure its start on the labelled data); the quality is measured afterwards, like ORT's.
    Compile seconds = every pipeline stage summed (as ``bench_naive_vs_ort.quantize_with_edgecomp``).

    Raises:
        EdgecompError: the pipeline failed (recorded by the caller).
    """
    from edgecomp.compile import CompileOptions, compile_model

    calibration = workdir / f"{case.name}_calibration.npz"
    if not calibration.exists():
        base.write_samples_npz(calibration, case.input_name, case.calibration)
    keywords = {"target": base.TARGET, **EDGECOMP_VARIANTS[variant]}
    options = CompileOptions(model=str(case.model), calibration=str(calibration), output=str(workdir / f"{case.name}_{variant.replace('/', '_')}"), **keywords)
    result = compile_model(options)
    report = result.report
    artifact = next(pathlib.Path(a["path"]) for a in report["artifacts"] if a["path"].endswith(".onnx"))
    seconds = sum(value for stage, value in report["timings_s"].items() if stage != "evaluate")
    return base.QuantizedModel("edgecomp", artifact, seconds, variant_details(report, result.plan))


def variant_details(report: dict[str, Any], plan) -> dict[str, Any]:
    """What is worth keeping from an edgecomp compile: timings, weight range, float nodes, selective's start."""
    details: dict[str, Any] = {"timings_s": report["timings_s"], "weight_range": report["backend_metadata"].get("weight_range")}
    if plan is not None:
        details["float_nodes"] = [node.name for node in plan.nodes if node.precision != "int8"]
        details["int8_nodes"] = sum(1 for node in plan.nodes if node.precision == "int8")
        started = [m.group(0) for note in plan.notes for m in [re.search(r"all-int8 start candidates: .*", note)] if m]
        if started:
            details["selective_start"] = started[0]
    if "selective" in report:
        details["selective_float_layers"] = report["selective"]["float_layers"]
    if "bias_correction" in report:
        details["bias_corrections"] = len(report["bias_correction"])
    if "equalization" in report:
        details["equalized_pairs"] = len(report["equalization"].get("pairs", []))
    return details


def quantize_ort_variant(case: base.BenchmarkCase, method: str, reduce_range: bool, workdir: pathlib.Path) -> base.QuantizedModel:
    """ONNX Runtime ``quantize_static`` with ``method`` and ``reduce_range``, via ``bench_naive_vs_ort.quantize_with_ort``.

    Each run gets its own folder (that function writes fixed file names).
    """
    folder = workdir / f"{case.name}_ort_{method}{'_rr' if reduce_range else ''}"
    folder.mkdir(parents=True, exist_ok=True)
    return base.quantize_with_ort(case, base.Settings(method=method, ort_reduce_range=reduce_range), folder)


# --------------------------------------------------------------------------------------------------
# measuring


def simulated_accuracy(model_path: pathlib.Path, case: base.BenchmarkCase) -> float | None:
    """Accuracy (0..1) of the QDQ simulation (no graph optimisation) on the labelled evaluation data, or None without labels."""
    if case.labels is None:
        return None
    from edgecomp.passes.quantize import metrics

    outputs = base.run_per_sample(base.make_session(model_path, simulate=True), case.input_name, case.evaluation)
    return metrics.accuracy(outputs, case.labels)


def measure_entry(quantized: base.QuantizedModel, case: base.BenchmarkCase, reference: np.ndarray) -> dict[str, Any]:
    """One row's JSON entry: ``bench_naive_vs_ort.measure_quality`` figures plus the simulated accuracy, bytes, seconds."""
    quality = base.measure_quality(quantized.path, case, reference)
    return {
        "compile_seconds": quantized.compile_seconds,
        "artifact_bytes": quantized.artifact_bytes,
        "sqnr_db": quality.sqnr_db,
        "sqnr_simulated_db": quality.sqnr_simulated_db,
        "accuracy": quality.accuracy,
        "accuracy_simulated": simulated_accuracy(quantized.path, case),
        "top1_agreement": quality.top1_agreement,
        "details": quantized.details,
    }


def run_and_measure(label: str, quantize, case: base.BenchmarkCase, reference: np.ndarray) -> dict[str, Any]:
    """``quantize()`` then :func:`measure_entry`; a failure becomes ``{"error": ...}`` (logged) so the other rows still run."""
    log.info("%s: %s", case.name, label)
    try:
        quantized = quantize()
    except Exception as error:  # noqa: BLE001  (report any failure and carry on with the other rows)
        log.error("%s: %s failed: %s: %s", case.name, label, type(error).__name__, error)
        return {"error": f"{type(error).__name__}: {error}"}
    return measure_entry(quantized, case, reference)


def quality_keys(labelled: bool) -> dict[str, str]:
    """The headline figure per column: ``fused``/``simulated`` -> entry key (accuracy when labelled, else SQNR)."""
    if labelled:
        return {"fused": "accuracy", "simulated": "accuracy_simulated"}
    return {"fused": "sqnr_db", "simulated": "sqnr_simulated_db"}


def pick_best(entries: dict[str, dict[str, Any]], labelled: bool) -> dict[str, Any]:
    """The best ORT method per column (fused, simulated) by the headline figure, among the runs that did not fail.

    Returns:
        ``{"fused": method, "simulated": method}`` (None when every run failed); ties go to the
        earlier method of :data:`ORT_METHODS`.
    """
    ok = {method: entry for method, entry in entries.items() if "error" not in entry}
    best: dict[str, Any] = {}
    for column, key in quality_keys(labelled).items():
        best[column] = max(ok, key=lambda m: (ok[m][key], -ORT_METHODS.index(m)), default=None)
    return best


# --------------------------------------------------------------------------------------------------
# one model


def benchmark_model(case: base.BenchmarkCase, workdir: pathlib.Path) -> dict[str, Any]:
    """Every edgecomp row and every ORT run on ``case``, measured; the model's JSON entry (with its checks)."""
    reference = base.run_per_sample(base.make_session(case.model), case.input_name, case.evaluation)
    labelled = case.labels is not None
    entry: dict[str, Any] = {
        "model": str(case.model), "data": case.data_note, "calibration_samples": len(case.calibration),
        "evaluation_samples": len(case.evaluation), "labelled": labelled,
    }
    if labelled:
        from edgecomp.passes.quantize import metrics

        entry["accuracy_fp32"] = metrics.accuracy(reference, case.labels)
    entry["edgecomp"] = {
        variant: run_and_measure(f"edgecomp {variant}", lambda v=variant: compile_variant(case, v, workdir), case, reference)
        for variant in EDGECOMP_VARIANTS
    }
    entry["onnxruntime"] = {}
    for row, reduce_range in ORT_ROWS.items():
        runs = {
            method: run_and_measure(
                f"ORT {method} reduce_range={reduce_range}", lambda m=method, r=reduce_range: quantize_ort_variant(case, m, r, workdir), case, reference
            )
            for method in ORT_METHODS
        }
        entry["onnxruntime"][row] = {"reduce_range": reduce_range, "runs": runs, "best": pick_best(runs, labelled)}
    entry["checks"] = selective_checks(entry)
    return entry


def ort_best_figure(entry: dict[str, Any], row: str, column: str) -> tuple[float | None, str | None]:
    """(headline figure, method) of the best ORT method of ``row`` in ``column`` (``fused``/``simulated``)."""
    ort = entry["onnxruntime"][row]
    method = ort["best"][column]
    if method is None:
        return None, None
    return ort["runs"][method][quality_keys(entry["labelled"])[column]], method


def compare(value: float | None, reference: float | None) -> dict[str, Any]:
    """``value >= reference`` with the difference (no tolerance); ``ok`` is None when either is missing."""
    if value is None or reference is None:
        return {"ok": None, "difference": None}
    difference = value - reference
    return {"ok": bool(value >= reference), "difference": difference if math.isfinite(difference) else None}


def selective_checks(entry: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per row of :data:`SELECTIVE_CHECKS`: at least as accurate as its naive row and as the best-ORT rows, bytes <= 1.5x naive.

    The figure compared is the headline one (accuracy on labelled data, else SQNR vs FP32), compared
    exactly (a selective SQNR 0.001 dB below is a violation). A check whose figures are missing (a
    failed row) is ``ok: None``; a column not checked for that row has no key.
    """
    keys = quality_keys(entry["labelled"])
    checks = {}
    for variant, (naive_row, columns, ort_rows) in SELECTIVE_CHECKS.items():
        figures = entry["edgecomp"][variant]
        naive = entry["edgecomp"][naive_row]
        if "error" in figures:
            checks[variant] = {"error": figures["error"]}
            continue
        result: dict[str, Any] = {}
        for column in columns:
            key = keys[column]
            result[f"naive_{column}"] = {**compare(figures[key], naive.get(key)), "naive_row": naive_row}
            for row in ort_rows:
                best, method = ort_best_figure(entry, row, column)
                result[f"{row}_{column}"] = {**compare(figures[key], best), "ort_method": method}
        bytes_ratio = base.ratio(figures["artifact_bytes"], naive.get("artifact_bytes"))
        result["bytes"] = {"ok": None if bytes_ratio is None else bytes_ratio <= BYTES_LIMIT, "ratio": bytes_ratio}
        checks[variant] = result
    return checks


# --------------------------------------------------------------------------------------------------
# calibration memory (fresh subprocesses)


def proc_status_kib(field: str) -> int:
    """A ``/proc/self/status`` figure in KiB (``VmRSS``, ``VmHWM``)."""
    for line in pathlib.Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def memory_child(spec: dict[str, Any]) -> dict[str, Any]:
    """Run in a fresh process: import edgecomp, then compile ``spec`` and return its memory figures (KiB).

    All from ``/proc/self/status``: ``import_peak_kib`` is ``VmHWM`` after the imports (edgecomp,
    ONNX Runtime, the backend plugin); ``rss_before_kib`` the resident set then; the peak is reset
    (``/proc/self/clear_refs`` 5) so ``peak_compile_kib`` (``VmHWM`` afterwards) is the peak during
    the compile alone; ``growth_kib`` = that peak - the RSS before; ``process_peak_kib`` the larger
    of the two peaks. (``getrusage``'s ``ru_maxrss`` is not used: on Linux it carries the parent's
    RSS over fork + exec, so a child of a large parent reports the parent's size.)

    With ``spec["tracemalloc"]`` the compile runs under :mod:`tracemalloc` instead and only
    ``heap_peak_kib`` is returned: the peak of Python and NumPy allocations during the compile
    (ONNX Runtime's native allocations and memory-mapped file pages are not in it). A separate run,
    because tracing costs memory of its own and would distort the RSS figures.
    """
    from edgecomp.compile import CompileOptions, compile_model
    from edgecomp.plugins import get_backend

    get_backend("onnxruntime")
    options = CompileOptions(model=spec["model"], target=base.TARGET, quantize=spec["quantize"], calibration=spec["calibration"], output=spec["output"], batch_size=spec["batch_size"])
    if spec.get("tracemalloc"):
        import tracemalloc

        tracemalloc.start()
        compile_model(options)
        return {"heap_peak_kib": tracemalloc.get_traced_memory()[1] // 1024}
    import_peak, before = proc_status_kib("VmHWM"), proc_status_kib("VmRSS")
    try:
        pathlib.Path("/proc/self/clear_refs").write_text("5")
        reset = True
    except OSError:
        reset = False
    start = time.perf_counter()
    report = compile_model(options).report
    seconds = time.perf_counter() - start
    peak = proc_status_kib("VmHWM")
    return {
        "import_peak_kib": import_peak, "rss_before_kib": before, "peak_compile_kib": peak if reset else None,
        "growth_kib": peak - before if reset else None, "process_peak_kib": max(import_peak, peak),
        "peak_reset": reset, "seconds": seconds, "calibration_samples": report["calibration"]["samples"],
    }


def run_memory_child(spec: dict[str, Any]) -> dict[str, Any]:
    """Run :func:`memory_child` in a fresh Python process (``python bench_modes.py --memory-child SPEC``).

    Returns its figures, or ``{"error": ..., "command": ...}`` with the last stderr line when it failed.
    """
    command = [sys.executable, __file__, "--memory-child", json.dumps(spec)]
    process = subprocess.run(command, capture_output=True, text=True, check=False)
    if process.returncode != 0:
        lines = process.stderr.strip().splitlines() or ["(no stderr)"]
        return {"error": f"exit {process.returncode}: {lines[-1]}", "command": " ".join(command)}
    return json.loads(process.stdout.strip().splitlines()[-1])


def memory_samples(case: base.BenchmarkCase, count: int) -> tuple[np.ndarray, str]:
    """``count`` calibration samples of ``case``: the first ``count``, or the set tiled up to ``count`` (with how)."""
    if count <= len(case.calibration):
        return case.calibration[:count], f"first {count} of {len(case.calibration)}"
    tiled = np.resize(case.calibration, (count, *case.calibration.shape[1:]))
    return tiled, f"the {len(case.calibration)} samples repeated to {count}"


def memory_benchmark(names: Sequence[str], shared: pathlib.Path, workdir: pathlib.Path) -> list[dict[str, Any]]:
    """Per :data:`MEMORY_CASES` entry whose model is in ``names``: both sample counts in fresh processes, and the ratios."""
    cases = {}
    results = []
    for name, quantize, small, large, batch_size in MEMORY_CASES:
        if name not in names:
            continue
        case = cases.setdefault(name, base.CASES[name](shared))
        row: dict[str, Any] = {"model": name, "quantize": quantize, "batch_size": batch_size, "runs": {}}
        for count in (small, large):
            samples, how = memory_samples(case, count)
            calibration = workdir / f"memory_{name}_{count}.npz"
            if not calibration.exists():
                base.write_samples_npz(calibration, case.input_name, samples)
            output = workdir / f"memory_{name}_{quantize}_{count}_batch{batch_size}"
            spec = {"model": str(case.model), "quantize": quantize, "calibration": str(calibration), "output": str(output), "batch_size": batch_size}
            log.info("memory: %s %s %d samples, batch %d", name, quantize, count, batch_size)
            row["runs"][str(count)] = {"samples": count, "how": how, "npz_bytes": calibration.stat().st_size, **run_memory_child(spec)}
            heap = run_memory_child({**spec, "tracemalloc": True})
            row["runs"][str(count)]["heap_peak_kib"] = heap.get("heap_peak_kib")
        runs = [row["runs"][str(small)], row["runs"][str(large)]]
        if not any("error" in run for run in runs):
            row["peak_ratio"] = runs[1]["process_peak_kib"] / runs[0]["process_peak_kib"]
            if runs[0]["growth_kib"] is not None:
                row["growth_difference_kib"] = runs[1]["growth_kib"] - runs[0]["growth_kib"]
                row["growth_ratio"] = base.ratio(runs[1]["growth_kib"], runs[0]["growth_kib"])
            row["heap_peak_ratio"] = base.ratio(runs[1]["heap_peak_kib"], runs[0]["heap_peak_kib"])
        results.append(row)
    return results


# --------------------------------------------------------------------------------------------------
# all of it


def run_benchmark(names: Sequence[str], parts: Sequence[str], shared: pathlib.Path, workdir: pathlib.Path) -> dict[str, Any]:
    """The modes table and/or the memory measurements for ``names``; the whole JSON document."""
    import onnxruntime

    from edgecomp import __version__

    base.warm_up_imports()
    document: dict[str, Any] = {
        "target": base.TARGET,
        "versions": {"edgecomp": __version__, "onnxruntime": onnxruntime.__version__, "numpy": np.__version__},
        "cpu_vnni": cpu_has_vnni(),
        "goals": {"selective_at_least_naive_and_best_ort": True, "selective_bytes_max_x_naive": BYTES_LIMIT},
        "notes": [TINY_DATA_NOTE],
        "models": {},
        "memory": None,
    }
    if "table" in parts:
        for name in names:
            document["models"][name] = benchmark_model(base.CASES[name](shared), workdir)
    if "memory" in parts:
        document["memory"] = memory_benchmark(names, shared, workdir)
    return document


def cpu_has_vnni() -> bool | None:
    """Whether this CPU lists AVX-VNNI or AVX512-VNNI (/proc/cpuinfo), None when unknown."""
    try:
        flags = pathlib.Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    return "avx512_vnni" in flags or "avx_vnni" in flags


# --------------------------------------------------------------------------------------------------
# output


def percent(value: float | None) -> str:
    """A 0..1 fraction as a percentage with 2 decimals (``-`` when missing)."""
    return base.format_number(None if value is None else 100 * value, ".2f")


def row_cells(figures: dict[str, Any], naive_bytes: int | None) -> list[str]:
    """The figure cells of one table row: acc fused, acc sim, SQNR fused, SQNR sim, top-1, bytes, x naive, compile s."""
    return [
        percent(figures.get("accuracy")), percent(figures.get("accuracy_simulated")),
        base.format_number(figures["sqnr_db"], ".2f"), base.format_number(figures["sqnr_simulated_db"], ".2f"),
        base.format_number(figures["top1_agreement"], ".3f"), base.format_number(figures["artifact_bytes"], ",d"),
        base.format_number(base.ratio(figures["artifact_bytes"], naive_bytes), ".3f", "x"), base.format_number(figures["compile_seconds"], ".2f"),
    ]


def edgecomp_note(variant: str, figures: dict[str, Any]) -> str:
    """Short per-row note: float nodes, selective's start, weight range."""
    details = figures.get("details", {})
    parts = []
    if not variant.startswith("naive") and details.get("float_nodes") is not None:
        parts.append(f"{len(details['float_nodes'])} float / {details['int8_nodes']} int8 nodes")
    start = details.get("selective_start")
    if start:
        parts.append("start: " + start.rsplit("started from ", 1)[-1])
    if details.get("weight_range"):
        parts.append(f"weights {details['weight_range']}")
    return "; ".join(parts)


def ort_best_cells(entry: dict[str, Any], row: str, naive_bytes: int | None) -> tuple[list[str], str]:
    """Cells of a best-ORT row: the fused columns from the best-fused method's model, the simulated ones from the best-simulated one."""
    ort = entry["onnxruntime"][row]
    fused, simulated = ort["best"]["fused"], ort["best"]["simulated"]
    if fused is None:
        errors = {m: r["error"].split(":")[0] for m, r in ort["runs"].items()}
        return ["FAILED"] + [""] * 7, f"every method failed: {errors}"
    cells = row_cells(ort["runs"][fused], naive_bytes)
    sim = ort["runs"][simulated]
    cells[1] = percent(sim.get("accuracy_simulated"))
    cells[3] = base.format_number(sim["sqnr_simulated_db"], ".2f")
    total = sum(r["compile_seconds"] for r in ort["runs"].values() if "error" not in r)
    failed = [m for m, r in ort["runs"].items() if "error" in r]
    note = f"fused: {fused}, sim: {simulated}; all 3 methods {total:.2f} s" + (f"; FAILED: {', '.join(failed)}" if failed else "")
    return cells, note


def modes_table(document: dict[str, Any]):
    """The main table: per model FP32, the four edgecomp rows and the two best-ORT rows."""
    from rich.table import Table

    table = Table(title="edgecomp quantization modes vs ONNX Runtime quantize_static (best of MinMax/Percentile/Entropy), host-x86_64, .onnx QDQ artifacts")
    headers = ("model", "row", "acc % fused", "acc % sim", "SQNR dB fused", "SQNR dB sim", "top-1 agree", "bytes (.onnx)", "x naive", "compile s", "note")
    for header in headers:
        table.add_column(header, justify="left" if header in ("model", "row", "note") else "right")
    for name, entry in document["models"].items():
        table.add_row(name, "[dim]FP32[/dim]", percent(entry.get("accuracy_fp32")), "", "", "", "", "", "", "", f"{entry['calibration_samples']} calib / {entry['evaluation_samples']} eval")
        naive_bytes = entry["edgecomp"]["naive"].get("artifact_bytes")
        for variant, figures in entry["edgecomp"].items():
            if "error" in figures:
                table.add_row("", variant, "[red]FAILED[/red]", *[""] * 7, figures["error"].split(":")[0] + " (see notes)")
            else:
                own_naive = entry["edgecomp"]["naive/fr" if variant.endswith("/fr") else "naive"].get("artifact_bytes")
                table.add_row("", variant, *row_cells(figures, own_naive), edgecomp_note(variant, figures))
        for row, ort in entry["onnxruntime"].items():
            cells, note = ort_best_cells(entry, row, naive_bytes)
            label = f"{row} ({'reduce_range=True, 7-bit weights' if ort['reduce_range'] else 'full range'})"
            table.add_row("", label, *cells, note)
        table.add_section()
    return table


def ort_methods_table(document: dict[str, Any]):
    """Every ORT run (method x reduce_range) per model, the figures the best-ORT rows were picked from."""
    from rich.table import Table

    table = Table(title="ONNX Runtime quantize_static, every method (QDQ, per-channel, QInt8/QInt8)")
    for header in ("model", "reduce_range", "method", "acc % fused", "acc % sim", "SQNR dB fused", "SQNR dB sim", "bytes", "compile s"):
        table.add_column(header, justify="left" if header in ("model", "reduce_range", "method") else "right")
    for name, entry in document["models"].items():
        for ort in entry["onnxruntime"].values():
            for method, figures in ort["runs"].items():
                if "error" in figures:
                    table.add_row(name, str(ort["reduce_range"]), method, "[red]FAILED[/red]", "", "", "", "", "")
                    continue
                cells = row_cells(figures, None)
                table.add_row(name, str(ort["reduce_range"]), method, cells[0], cells[1], cells[2], cells[3], cells[5], cells[7])
        table.add_section()
    return table


def check_cell(check: dict[str, Any], unit: str) -> str:
    """``ok``/``FLAG`` with the difference (selective - other), or ``-`` when a figure is missing."""
    if check["ok"] is None:
        return "-"
    scale = 100 if unit == "pt" else 1
    difference = base.format_number(None if check["difference"] is None else scale * check["difference"], "+.2f", f" {unit}")
    method = f" [{check['ort_method']}]" if check.get("ort_method") else ""
    return f"[green]ok[/green] {difference}{method}" if check["ok"] else f"[bold red]FLAG[/bold red] {difference}{method}"


def checks_table(document: dict[str, Any]):
    """Per model and selective variant: vs naive, vs best ORT full range, vs best ORT reduce_range (fused, simulated), bytes."""
    from rich.table import Table

    table = Table(title=f"Goal: selective >= naive and >= best ORT method (accuracy on MNIST, else SQNR vs FP32; fused and simulated), bytes <= {BYTES_LIMIT:g}x naive")
    columns = [("naive", "fused"), ("naive", "simulated"), *[(row, column) for row in ORT_ROWS for column in CHECK_COLUMNS]]
    table.add_column("model")
    table.add_column("variant")
    for row, column in columns:
        table.add_column(f"vs {row} {column}", justify="right")
    table.add_column("bytes x naive", justify="right")
    for name, entry in document["models"].items():
        unit = "pt" if entry["labelled"] else "dB"
        for variant, check in entry["checks"].items():
            if "error" in check:
                table.add_row(name, variant, "[red]FAILED[/red]", *[""] * (len(columns)))
                continue
            cells = [check_cell(check[f"{row}_{column}"], unit) if f"{row}_{column}" in check else "[dim]n/a[/dim]" for row, column in columns]
            size = check["bytes"]
            size_cell = "-" if size["ok"] is None else ("[green]ok[/green] " if size["ok"] else "[bold red]FLAG[/bold red] ") + f"{size['ratio']:.3f}x"
            table.add_row(name, variant, *cells, size_cell)
    return table


def violations(document: dict[str, Any]) -> list[str]:
    """Every failed check and every failed row, one line each."""
    lines = []
    for name, entry in document["models"].items():
        for variant, figures in entry["edgecomp"].items():
            if "error" in figures:
                lines.append(f"{name}: edgecomp {variant} FAILED: {figures['error']}")
        for ort in entry["onnxruntime"].values():
            for method, figures in ort["runs"].items():
                if "error" in figures:
                    lines.append(f"{name}: ORT {method} reduce_range={ort['reduce_range']} FAILED: {figures['error']}")
        for variant, check in entry["checks"].items():
            for key, result in check.items():
                if isinstance(result, dict) and result.get("ok") is False:
                    detail = f"ratio {result['ratio']:.3f}x" if key == "bytes" else f"difference {result['difference']}"
                    lines.append(f"{name}: {variant} fails '{key}' ({detail})")
    return lines


def memory_table(document: dict[str, Any]):
    """Peak RSS per memory case, both sample counts, and the ratios."""
    from rich.table import Table

    table = Table(title="Calibration memory: compile in a fresh process (host-x86_64, onnxruntime backend, calibration .npz)")
    for header in ("model", "quantize", "batch", "samples", "how", "npz bytes", "RSS before MiB", "peak in compile MiB", "growth MiB", "process peak MiB", "peak ratio", "growth diff MiB", "heap peak MiB", "heap ratio"):
        table.add_column(header, justify="left" if header in ("model", "quantize", "how") else "right")

    def mib(kib: int | None) -> str:
        return base.format_number(None if kib is None else kib / 1024, ".1f")

    for row in document["memory"]:
        for index, run in enumerate(row["runs"].values()):
            first = index == 0
            if "error" in run:
                table.add_row(row["model"] if first else "", row["quantize"] if first else "", str(row["batch_size"]), str(run["samples"]), run["how"], "", "[red]FAILED[/red]", run["error"], "", "", "", "", "", "")
                continue
            ratio_cells = ["", ""] if first else [base.format_number(row.get("peak_ratio"), ".3f", "x"), mib(row.get("growth_difference_kib"))]
            heap_cells = [mib(run.get("heap_peak_kib")), "" if first else base.format_number(row.get("heap_peak_ratio"), ".3f", "x")]
            table.add_row(
                row["model"] if first else "", row["quantize"] if first else "", str(row["batch_size"]), str(run["samples"]), run["how"], f"{run['npz_bytes']:,d}",
                mib(run["rss_before_kib"]), mib(run["peak_compile_kib"]), mib(run["growth_kib"]), mib(run["process_peak_kib"]), *ratio_cells, *heap_cells,
            )
        table.add_section()
    return table


def print_tables(document: dict[str, Any]) -> None:
    """Print every table, the violations and the notes with rich."""
    from rich.console import Console

    console = Console(width=None if sys.stdout.isatty() else 230)
    if document["models"]:
        console.print(modes_table(document))
        console.print(checks_table(document))
        console.print(ort_methods_table(document))
        problems = violations(document)
        console.print("[bold red]Violations / failures:[/bold red]" if problems else "[green]No violations, no failures.[/green]")
        for line in problems:
            console.print("  " + line, highlight=False)
        vnni = document["cpu_vnni"]
        console.print(
            "Rows: 'fused' = ONNX Runtime session with default options (QDQ fused into integer kernels), 'sim' = no graph optimisation "
            "(QDQ evaluated in float). 'ORT best' = quantize_static full-range int8 weights; 'ORT best rr' = reduce_range=True (7-bit weights). "
            f"edgecomp rows compile for host-x86_64; '/fr' rows compile the same for {FULL_RANGE_TARGET} (onnxruntime backend, full-range int8 weights, "
            "never narrowed), measured on this machine: their simulated column is the like-for-like counterpart of 'ORT best' simulated, their fused "
            "column saturates like ORT's full range; their 'x naive' is relative to naive/fr. "
            f"This CPU {'has' if vnni else 'has no' if vnni is False else 'may have'} VNNI"
            + (": ORT's full-range models saturate in the fused run (int16 pair sums), edgecomp's onnxruntime backend narrows its own weights "
               "when verification sees that (see 'weights' in the notes)." if vnni is False else ".")
            + " Best ORT method chosen per column by the same figure (accuracy on MNIST, else SQNR); compile s of that row = the best-fused method's run. "
            "Checks compare exactly (no tolerance). edgecomp compile s = all pipeline stages (no --eval), including .ort conversion and kernel verification.",
            highlight=False,
        )
    if document["memory"]:
        console.print(memory_table(document))
        console.print(
            "RSS before = after importing edgecomp/ONNX Runtime/the backend, before compile_model; peak in compile = VmHWM after resetting it "
            "(/proc/self/clear_refs 5) just before compile_model; growth = peak - before; process peak = the larger of the import peak and the compile peak "
            "(VmHWM; ru_maxrss is not used: on Linux it carries the parent's RSS over fork+exec). Growth diff = growth at the large count - at the small count. "
            "Heap peak = peak of Python/NumPy allocations during the compile (tracemalloc, a separate run; not ONNX Runtime's native memory, not "
            "memory-mapped file pages). Batch = calibration batch size (the same for both counts; at most the small count so both fill their batches; the last vww row keeps the "
            "default 32 and so shows the batch size's effect, not the sample count's). "
            "Peak ratio = process peak at the large count / at the small count. vww's 100 samples are its 12 real samples repeated: that adds no "
            "information for calibration but measures how memory scales with the sample count on a model with larger inputs and activations "
            "(96x96x3 floats = 110 KiB per sample vs 3 KiB for mnist). edgecomp memory-maps an uncompressed .npz member (streams a compressed "
            "one), so its pages count in RSS as they are read.",
            highlight=False,
        )
    console.print(f"Versions: {', '.join(f'{k} {v}' for k, v in document['versions'].items())}.", highlight=False)
    for line in document["notes"]:
        console.print("Note: " + line, highlight=False)
    for name, entry in document["models"].items():
        console.print(f"{name}: {entry['data']}", highlight=False)


# --------------------------------------------------------------------------------------------------
# command line


def parse_arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command-line options (see ``--help``)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--models", nargs="+", choices=list(base.CASES), default=list(base.CASES), help="models to benchmark (memory: mnist and vww when listed)")
    parser.add_argument("--parts", nargs="+", choices=("table", "memory"), default=["table", "memory"], help="the modes table, the calibration-memory measurements, or both")
    parser.add_argument("--shared", type=pathlib.Path, default=base.DEFAULT_SHARED, help="the shared models/data folder (env EDGECOMP_SHARED)")
    parser.add_argument("--workdir", type=pathlib.Path, default=None, help="keep npz files and quantized models here (default: a temporary folder, deleted)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON instead of tables")
    parser.add_argument("--save-json", type=pathlib.Path, default=None, help="also write the JSON document to this file (with the tables on stdout)")
    parser.add_argument("-v", "--verbose", action="store_true", help="progress messages on stderr")
    parser.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)  # internal: one memory measurement (JSON spec)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print it; return 0 (goal misses are reported, not errors)."""
    arguments = parse_arguments(argv)
    if arguments.memory_child is not None:
        print(json.dumps(memory_child(json.loads(arguments.memory_child))))
        return 0
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s", stream=sys.stderr)
    log.setLevel(logging.INFO if arguments.verbose else logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="bench_modes.") as temporary:
        workdir = arguments.workdir or pathlib.Path(temporary)
        workdir.mkdir(parents=True, exist_ok=True)
        document = run_benchmark(arguments.models, arguments.parts, arguments.shared, workdir)
    text = json.dumps(base.finite_json(document), indent=2)
    if arguments.save_json:
        arguments.save_json.write_text(text + "\n")
    if arguments.json:
        print(text)
    else:
        print_tables(document)
    return 0


if __name__ == "__main__":
    sys.exit(main())
