"""The compile pipeline: load -> canonicalize -> support check -> quantize -> legalize -> lower ->
budget check -> evaluate -> write atomically. One direction, no back and forth.

The core names no backend: it asks the plugin manager for the target's (or the user's) backend.
Only :mod:`edgecomp.cli` prints; this module returns a :class:`CompileResult`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import logging
import os
import pathlib
import re
import shutil
import tempfile
import time
from typing import Any, Callable

import numpy as np
import onnx_ir as ir

from edgecomp import __version__
from edgecomp.backend import LowerOptions
from edgecomp.errors import BudgetError, CalibrationDataError, OutputError, PlanError, PluginError, TargetError, UnsupportedError, UsageError
from edgecomp.ir.load import load_model, to_bytes, to_proto
from edgecomp.ir.run import make_session
from edgecomp.passes.base import IRDump, PassManager, PassTiming
from edgecomp.passes.canonicalize import canonicalization_passes
from edgecomp.passes.quantize import metrics
from edgecomp.passes.quantize.friendliness import check_model
from edgecomp.passes.quantize.calibration_data import ImagePreprocessing, input_specs, open_dataset
from edgecomp.passes.quantize.observers import METHODS
from edgecomp.passes.quantize.plan import QuantizationPlan
from edgecomp.passes.quantize.plan_file import read_plan
from edgecomp.passes.quantize.qat import complete_qat, has_qdq, plan_from_qdq
from edgecomp.passes.quantize.qdq import largest_weight
from edgecomp.passes.quantize.selective import ReiterableBatches
from edgecomp.plugins import get_backend
from edgecomp.targets import get_target

logger = logging.getLogger(__name__)

QUANTIZE_MODES = ("auto", "none", "naive", "hybrid", "selective", "dynamic", "qat")
CALIBRATED_MODES = ("naive", "hybrid", "selective")
SENSITIVITY_CHART = "sensitivity.png"
PLAN_FILE = "quantization_plan.json"
VERIFICATION_SAMPLES = 32


@dataclasses.dataclass(frozen=True)
class CompileOptions:
    """What to compile and how.

    Attributes:
        model: path of the ONNX model (never modified).
        target: target name or path of a target ``.toml``.
        backend: backend name; None takes the target's ``default_backend``.
        quantize: ``none`` (float), ``naive`` (every quantizable operator INT8, calibrated),
            ``hybrid`` (INT8 for :attr:`int8_ops`, the rest float32, calibrated), ``dynamic``
            (int8 weights, float activations), ``qat`` (keep the QuantizeLinear/DequantizeLinear and
            scales the model carries), or ``auto`` (``qat`` when the model carries QDQ nodes, else
            ``naive``).
        int8_ops: operator types run in INT8 by ``hybrid``; None: ``naive.HYBRID_DEFAULT_OPS``
            (Conv, Gemm, MatMul). Only with ``hybrid``; each must be an operator with an int8 kernel.
        min_sqnr_db: ``selective``: keep the most sensitive layers in float until the output SQNR
            vs FP32 on the calibration data reaches this many dB.
        max_accuracy_drop: ``selective``: ... until FP32 accuracy minus compiled accuracy on the
            labelled ``eval`` data is at most this many percentage points.
        equalize: cross-layer equalization before quantizing (Nagel et al. 2019, section 4.1).
        bias_correction: empirical bias correction after quantizing (Nagel et al. 2019, section 4.2).
        plan: a user-edited quantization plan JSON (node precisions, per-tensor methods or fixed
            parameters; see :mod:`edgecomp.passes.quantize.plan_file`) applied by naive/hybrid.
        calibration: calibration data (``.npz``, ``.npy`` folder, image folder, ``test_data_set_*``).
        calibration_method: ``minmax``, ``percentile``, ``entropy`` or ``mse``.
        calibration_limit: use at most this many calibration samples (None: all).
        preprocessing: image preprocessing TOML for image-folder data (None: ``preprocessing.toml``
            inside the folder).
        eval: evaluation data (npz with ``x`` and optional labels ``y``, or any calibration format).
        output: output folder; None means ``<model stem>-<target>`` in the working directory.
        batch_size: calibration/eval batch size for models with a dynamic batch dimension.
        dump_ir: folder to write the model after every pass (debugging), or None.
        backend_options: ``(key, value)`` pairs for the backend (``--backend-option``), checked
            against the backend's ``option_choices`` before any work.
        io_layout: ``"nchw"``/``"nhwc"`` for 4-D inputs/outputs of the artifact, None keeps the
            ONNX layout (see :class:`edgecomp.backend.LowerOptions`).
    """

    model: str
    target: str
    backend: str | None = None
    quantize: str = "auto"
    calibration: str | None = None
    calibration_method: str = "minmax"
    calibration_limit: int | None = None
    preprocessing: str | None = None
    eval: str | None = None
    output: str | None = None
    batch_size: int = 32
    dump_ir: str | None = None
    io_layout: str | None = None
    backend_options: tuple[tuple[str, str], ...] = ()
    int8_ops: tuple[str, ...] | None = None
    plan: str | None = None
    min_sqnr_db: float | None = None
    max_accuracy_drop: float | None = None
    equalize: bool = False
    bias_correction: bool = False


@dataclasses.dataclass
class CompileResult:
    """The outcome of a compile: the report (JSON-serialisable) and where the files went."""

    report: dict[str, Any]
    output_dir: pathlib.Path
    plan: QuantizationPlan | None


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


OUTPUT_MARKER = ".edgecomp-output"
OUTPUT_MARKER_TEXT = b"This folder was written by edgecomp and is replaced as a whole by the next compile into it.\n"
_MANIFEST_HEADER = b"Files it wrote (sha256, name); a folder holding anything else is not replaced:\n"


def output_marker(files: dict[str, bytes]) -> bytes:
    """The marker's content: :data:`OUTPUT_MARKER_TEXT` then one ``<sha256>  <name>`` line per file
    written (sorted by name), so the next compile can tell edgecomp's files from a user's."""
    lines = [f"{_sha256(data)}  {name}\n".encode() for name, data in sorted(files.items())]
    return OUTPUT_MARKER_TEXT + _MANIFEST_HEADER + b"".join(lines)


def _foreign_entry(folder: pathlib.Path) -> str | None:
    """The first entry of an edgecomp output folder that the marker does not list with its
    content (a file the user added or edited, a subfolder), or None. A marker without a file
    list (written before edgecomp listed its files) vouches for the whole folder."""
    text = (folder / OUTPUT_MARKER).read_bytes()
    if _MANIFEST_HEADER not in text:
        return None
    listed = {}
    for line in text.split(_MANIFEST_HEADER, 1)[1].decode(errors="replace").splitlines():
        digest, _, name = line.partition("  ")
        listed[name] = digest
    for entry in sorted(folder.iterdir()):
        if entry.name == OUTPUT_MARKER:
            continue
        if not entry.is_file() or entry.is_symlink() or listed.get(entry.name) != _sha256(entry.read_bytes()):
            return entry.name
    return None


def _check_output(path: pathlib.Path, inputs: list[str]) -> None:
    """Refuse an output location that would lose data.

    An existing folder is only replaced when edgecomp wrote it (it holds :data:`OUTPUT_MARKER`)
    and it holds nothing else than the files the marker lists, unchanged; never when it contains
    one of the compile's inputs (model, data, target file).

    Raises:
        OutputError: the path is a file, a foreign non-empty folder, an edgecomp folder with a file
            added or edited since, holds an input, or its parent is missing or not writable.
    """
    if path.exists() and not path.is_dir():
        raise OutputError(f"{path}: output path is an existing file, not a folder")
    resolved = path.resolve()
    for item in inputs:
        if resolved == pathlib.Path(item).resolve() or resolved in pathlib.Path(item).resolve().parents:
            raise OutputError(f"{path}: output folder contains the input {item}; choose another output folder")
    if path.is_dir() and any(path.iterdir()) and not (path / OUTPUT_MARKER).is_file():
        raise OutputError(f"{path}: folder exists and was not written by edgecomp (no {OUTPUT_MARKER}); choose a new or empty folder")
    if path.is_dir() and (path / OUTPUT_MARKER).is_file() and (foreign := _foreign_entry(path)) is not None:
        raise OutputError(f"{path}: {foreign} was added or changed after edgecomp wrote this folder; move it or choose another output folder")
    parent = resolved.parent
    if not parent.is_dir():
        raise OutputError(f"{path}: parent folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise OutputError(f"{path}: parent folder {parent} is not writable")


_DUMP_NAME = re.compile(r"\d\d-\w+\.onnx")


def _check_dump_dir(path: pathlib.Path) -> None:
    """``--dump-ir`` writes ``NN-PassName.onnx`` files (:class:`edgecomp.passes.base.IRDump`) into a
    new or empty folder, or over an earlier dump; anything else there could be overwritten.

    Raises:
        OutputError: the path is a file, or the folder holds a file that is not such a dump.
    """
    if path.exists() and not path.is_dir():
        raise OutputError(f"--dump-ir {path}: an existing file, not a folder")
    if path.is_dir():
        for entry in sorted(path.iterdir()):
            if not (entry.is_file() and _DUMP_NAME.fullmatch(entry.name)):
                raise OutputError(f"--dump-ir {path}: holds {entry.name}, which is not an IR dump; choose a new or empty folder")


def write_atomically(folder: pathlib.Path, files: dict[str, bytes]) -> None:
    """Write ``files`` (name -> bytes) as the whole content of ``folder``, atomically.

    The files go to a temporary sibling folder that is renamed into place; an existing folder is
    replaced only once the new one is complete, so an interrupted compile leaves either the old
    folder or the new one, never a half-written one.

    Raises:
        OutputError: the folder cannot be written.
    """
    folder = folder.resolve()
    try:
        staging = pathlib.Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
        umask = os.umask(0)
        os.umask(umask)
        staging.chmod(0o777 & ~umask)  # mkdtemp makes it private; the result is an ordinary folder
        try:
            for name, data in sorted(files.items()):
                (staging / name).write_bytes(data)
            if folder.exists():
                retired = pathlib.Path(tempfile.mkdtemp(prefix=f".{folder.name}.old.", dir=folder.parent))
                os.replace(folder, retired / folder.name)
                os.replace(staging, folder)
                shutil.rmtree(retired)
            else:
                os.replace(staging, folder)
        finally:
            if staging.exists():
                shutil.rmtree(staging)
    except OSError as exc:
        raise OutputError(f"{folder}: cannot write output: {exc.strerror or exc}") from None


def _refresh_plan(plan: QuantizationPlan, model, backend_name: str) -> QuantizationPlan:
    """Re-read weight and bias scales from the model a backend shipped; it may have requantized them
    (the onnxruntime backend narrows weights for saturating kernels). Changed entries and the plan's
    notes say so, so the plan always describes the shipped artifact."""
    stored = {}
    for node in model.graph:
        if node.op_type == "DequantizeLinear" and node.inputs[0].const_value is not None and node.inputs[0].name.endswith("_quantized"):
            name = node.inputs[0].name[: -len("_quantized")]
            stored[name] = tuple(float(s) for s in np.atleast_1d(node.inputs[1].const_value.numpy()))
    tensors, changed = [], 0
    for entry in plan.tensors:
        if entry.role in ("weight", "bias") and stored.get(entry.name, entry.scale) != entry.scale:
            entry = dataclasses.replace(entry, scale=stored[entry.name], method=f"{entry.method}, requantized by backend {backend_name}")
            changed += 1
        tensors.append(entry)
    if not changed:
        return plan
    note = f"backend {backend_name} requantized {changed} weight/bias tensors (see its weight_range in the compile report)"
    return dataclasses.replace(plan, tensors=tuple(tensors), notes=(*plan.notes, note))


def _has_float_parts(model) -> bool:
    """True when a Conv/Gemm/MatMul of a QDQ model runs in float (a mixed QAT model)."""
    return any(entry.precision == "fp32" and entry.op_type in ("Conv", "ConvTranspose", "Gemm", "MatMul") for entry in plan_from_qdq(model).nodes)


def _calibration_sqnr(models, reference_bytes: bytes, calibration, batch_size: int) -> list[float]:
    """Per model, the lowest output SQNR (dB) of its QDQ simulation against the float model on the
    calibration data; the float model runs once (outputs only are kept, not the samples)."""
    from edgecomp.ir.run import run_batches

    reference = run_batches(make_session(reference_bytes, optimize=False), calibration.batches(batch_size))
    figures = []
    for model in models:
        quantized = run_batches(make_session(to_bytes(model), optimize=False), calibration.batches(batch_size))
        figures.append(min(metrics.sqnr_db(ref, out) for ref, out in zip(reference, quantized)))
    return figures


def _quantization_rules(backend, target):
    """The backend's :class:`~edgecomp.passes.quantize.qdq.QuantizationRules` for ``target``
    (its optional ``quantization_rules(target)``), else the TFLite int8 defaults."""
    from edgecomp.passes.quantize.qdq import DEFAULT_RULES

    method = getattr(backend, "quantization_rules", None)
    return method(target) if callable(method) else DEFAULT_RULES


def _check_backend_options(backend, pairs: tuple[tuple[str, str], ...], mode: str) -> None:
    """Every ``--backend-option`` key must be one of the backend's ``option_choices`` and its value
    one of the allowed values (UnsupportedError naming the key, before any work); a backend's
    optional ``option_problem(key, value, quantize)`` refuses a setting the mode cannot use
    (UsageError)."""
    choices = getattr(backend, "option_choices", {}) or {}
    check = getattr(backend, "option_problem", None)
    for key, value in pairs:
        if key not in choices:
            known = ", ".join(sorted(choices)) or "none"
            raise UnsupportedError(f"backend {backend.name!r} has no option {key!r} (its options: {known})")
        if value not in choices[key]:
            raise UnsupportedError(f"backend {backend.name!r}: option {key}={value!r} is not one of {', '.join(choices[key])}")
        problem = check(key, value, mode) if check is not None else None
        if problem:
            raise UsageError(f"backend {backend.name!r}: option {key}={value}: {problem}")


def _check_mode_options(options: CompileOptions, mode: str) -> None:
    """Refuse options that do not apply to the quantization mode, before any work.

    Raises:
        UsageError: a selective goal, equalization, bias correction or ``int8_ops`` with a mode
            they do not apply to, or an ``int8_ops`` entry without an int8 kernel.
        PlanError: a plan file with a mode other than naive/hybrid.
    """
    from edgecomp.passes.quantize.naive import INT8_OPS

    if (options.min_sqnr_db is not None or options.max_accuracy_drop is not None) and mode != "selective":
        raise UsageError(f"--min-sqnr and --max-accuracy-drop are goals of --quantize selective, not {mode}")
    if (options.equalize or options.bias_correction) and mode not in ("naive", "hybrid", "selective", "dynamic"):
        raise UsageError(f"--equalize and --bias-correction apply to naive, hybrid, selective (and dynamic for --equalize), not {mode}")
    if options.bias_correction and mode == "dynamic":
        raise UsageError("--bias-correction needs quantized activations; -q dynamic quantizes weights only")
    if options.int8_ops is not None:
        if mode != "hybrid":
            raise UsageError(f"--int8-ops chooses the INT8 operators of --quantize hybrid, not {mode}")
        for op_type in options.int8_ops:
            if op_type not in INT8_OPS:
                raise UsageError(f"--int8-ops {op_type}: not an operator type with an int8 kernel (one of {', '.join(sorted(INT8_OPS))})")
    if options.plan and mode not in ("naive", "hybrid"):
        raise PlanError(f"{options.plan}: a plan file applies to --quantize naive or hybrid, not {mode}")


def _plan_memory(model, int8: bool, target) -> dict[str, Any]:
    """Plan the activation arena of ``model`` (int8 view when quantized) and check the RAM budget.

    Returns:
        ``lower_bound_bytes``, ``tflm_greedy_bytes`` (TensorFlow Lite Micro's planner on the same
        buffers), ``arena_bytes`` (edgecomp's plan), ``gap_bytes`` and ``ram_budget_bytes``.

    Raises:
        BudgetError: the planned arena exceeds the target's RAM budget; the message names both
            sizes and the tensors alive at the peak step, largest first.
    """
    from edgecomp.memory import arena_buffers, best_plan, greedy_by_size, live_bytes

    buffers = arena_buffers(model, int8=int8)
    if not buffers:
        return {}
    plan, greedy = best_plan(buffers), greedy_by_size(buffers)
    if target.ram_bytes is not None and plan.arena_size > target.ram_bytes:
        live = live_bytes(buffers)
        peak = live.index(max(live))
        at_peak = sorted((b for b in buffers if b.first_step <= peak <= b.last_step), key=lambda b: -b.size)[:3]
        largest = ", ".join(f"{b.name} ({b.size} B)" for b in at_peak)
        raise BudgetError(
            f"activations need a {plan.arena_size}-byte tensor arena; target {target.name!r} has {target.ram_bytes} bytes of RAM "
            f"(largest tensors alive together: {largest})"
        )
    return {
        "lower_bound_bytes": plan.lower_bound, "tflm_greedy_bytes": greedy.arena_size, "arena_bytes": plan.arena_size,
        "gap_bytes": plan.arena_size - plan.lower_bound, "ram_budget_bytes": target.ram_bytes, "int8": int8,
    }


def _support(backend, model, target, mode: str):
    """``backend.support``, telling it the quantization mode when its ``support`` takes a ``quantize``
    keyword (an optional extension of the contract, so older backends keep working)."""
    if "quantize" in inspect.signature(backend.support).parameters:
        return backend.support(model, target, quantize=mode)
    return backend.support(model, target)


def _open_data(option: str, path: str, specs, preprocessing, limit: int | None = None):
    """open_dataset, with the command-line option the data came from in any error message."""
    try:
        return open_dataset(path, specs, preprocessing=preprocessing, limit=limit)
    except CalibrationDataError as exc:
        raise CalibrationDataError(f"{option} {exc}") from None


def _check_labels(path: str, dataset, model) -> None:
    """Eval labels ``y`` must be class indices of an output: 0 <= y < elements per sample.

    Raises:
        CalibrationDataError: a label no output has a class for (names the file and the label).
    """
    if dataset.labels is None:
        return
    sizes = []
    for value in model.graph.outputs:
        dims = list(value.shape or [])[1:]
        if dims and all(isinstance(d, int) for d in dims):
            sizes.append((int(np.prod(dims)), value.name))
    if not sizes:
        return
    classes, name = max(sizes)
    labels = np.asarray(dataset.labels).reshape(-1)
    if labels.size and (labels.min() < 0 or labels.max() >= classes):
        bad = int(labels.min() if labels.min() < 0 else labels.max())
        raise CalibrationDataError(f"--eval {path}: label {bad} is not a class index of output '{name}' (0..{classes - 1})")


def _evaluate(reference, runner, dataset, batch_size: int) -> dict[str, Any]:
    """FP32 reference session vs compiled artifact runner on the evaluation data, per output."""
    names = [o.name for o in reference.get_outputs()]
    expected: list[list[np.ndarray]] = [[] for _ in names]
    actual: list[list[np.ndarray]] = [[] for _ in names]
    for batch in dataset.batches(batch_size):
        for store, array in zip(expected, reference.run(None, dict(batch))):
            store.append(array)
        for store, array in zip(actual, runner(batch)):
            store.append(np.asarray(array, dtype=np.float32))
    result: dict[str, Any] = {"samples": dataset.num_samples, "outputs": {}}
    for name, exp_parts, act_parts in zip(names, expected, actual):
        exp, act = np.concatenate(exp_parts), np.concatenate(act_parts)
        entry = {
            "sqnr_db": metrics.sqnr_db(exp, act),
            "max_abs_error": metrics.max_abs_error(exp, act),
            "top1_agreement": metrics.top1_agreement(exp, act),
        }
        if dataset.labels is not None:
            entry["accuracy_fp32"] = metrics.accuracy(exp, dataset.labels)
            entry["accuracy_compiled"] = metrics.accuracy(act, dataset.labels)
        result["outputs"][name] = entry
    return result


def compile_model(options: CompileOptions, progress: Callable[[str, int, int], None] | None = None) -> CompileResult:
    """Compile ``options.model`` for ``options.target`` and write the artifacts.

    Args:
        options: see :class:`CompileOptions`.
        progress: ``progress(stage, done, total)`` called during long stages (calibration).

    Returns:
        :class:`CompileResult` with the report: artifacts (path, bytes, sha256), sizes, per-stage
        timings in seconds, the backend's verification figures and, with ``options.eval``, the
        FP32-vs-compiled comparison (SQNR dB, max abs error, top-1 agreement, accuracy).

    Raises:
        EdgecompError: a subclass naming the file, node or key at fault; nothing is written then.
    """
    timings: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(stage: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[stage] = round(timings.get(stage, 0.0) + now - clock, 4)  # a stage run twice (re-quantizing) adds up
        clock = now

    if options.quantize not in QUANTIZE_MODES:
        raise UnsupportedError(f"unknown quantization mode {options.quantize!r}; choose one of {', '.join(QUANTIZE_MODES)}")
    if options.calibration_method not in METHODS:
        raise CalibrationDataError(f"unknown calibration method {options.calibration_method!r}; choose one of {', '.join(METHODS)}")
    model_path = pathlib.Path(options.model)
    target = get_target(options.target)
    try:
        backend = get_backend(options.backend or target.default_backend)
    except PluginError as error:
        if options.backend:
            raise
        raise TargetError(f"{target.path or target.name}: key 'default_backend': {error}") from None
    output_dir = pathlib.Path(options.output) if options.output else pathlib.Path(f"{model_path.stem}-{target.name}")
    _check_output(output_dir, [p for p in (options.model, options.calibration, options.eval, options.preprocessing, options.target, options.plan) if p and os.path.exists(p)])
    if options.dump_ir:
        _check_dump_dir(pathlib.Path(options.dump_ir))
    model = load_model(model_path)
    input_bytes = model_path.stat().st_size
    mode = options.quantize
    if mode == "auto":
        mode = "qat" if has_qdq(model) else "naive"
    _check_mode_options(options, mode)
    _check_backend_options(backend, options.backend_options, mode)
    if (options.min_sqnr_db is not None or options.max_accuracy_drop is not None) and getattr(backend, "float_kernels", True) is False:
        raise UsageError(f"backend {backend.name!r} has int8 kernels only: a selective goal keeps layers in float; drop the goal or use a backend with float kernels")
    if mode in CALIBRATED_MODES and not options.calibration:
        raise CalibrationDataError(f"--quantize {mode} needs calibration data (--calibration PATH)")
    if mode == "qat" and not has_qdq(model):
        raise UnsupportedError(f"{model_path}: --quantize qat needs a model with QuantizeLinear/DequantizeLinear nodes; this one has none")
    lap("load")

    instruments: list = [PassTiming()]
    if options.dump_ir:
        instruments.append(IRDump(pathlib.Path(options.dump_ir)))
    canonical = PassManager(canonicalization_passes(fold_weight_dequantize=mode == "none"), instruments)(model)
    model = canonical.model
    reference_bytes = to_bytes(model)
    extra_files: dict[str, bytes] = {}
    extra_report: dict[str, Any] = {}
    if options.equalize:
        from edgecomp.passes.quantize.equalization import CrossLayerEqualizationPass

        equalizer = CrossLayerEqualizationPass()
        model = PassManager([equalizer], instruments)(model).model
        extra_report["equalization"] = equalizer.report.to_dict()
    float_model = ir.serde.deserialize_model(to_proto(model))  # bias correction and friendliness checks
    lap("canonicalize")

    support = _support(backend, model, target, mode)
    if not support.ok:
        first = support.unsupported[0]
        if first.node == "*":  # the whole mode is refused (Unsupported("*", "--quantize X", reason))
            raise UnsupportedError(f"backend {backend.name!r} does not take {first.op_type} for target {target.name!r}: {first.reason}")
        more = f" (and {len(support.unsupported) - 1} more)" if len(support.unsupported) > 1 else ""
        raise UnsupportedError(f"backend {backend.name!r} cannot lower node {first.node!r} ({first.op_type}) for target {target.name!r}: {first.reason}{more}")
    lap("support")

    plan_request = None
    if options.plan:
        plan_request = read_plan(options.plan, model)  # before any calibration work
    specs = input_specs(model)
    preprocessing = ImagePreprocessing.from_file(options.preprocessing) if options.preprocessing else None
    eval_data = _open_data("--eval", options.eval, specs, preprocessing) if options.eval else None  # fail fast
    if eval_data is not None:
        _check_labels(options.eval, eval_data, model)
    plan = None
    verification_inputs: list = []
    calibration = None
    if options.calibration:
        calibration = _open_data("--calibration", options.calibration, specs, preprocessing, options.calibration_limit)
    verification_source = calibration if calibration is not None else eval_data  # else --eval data verifies
    if verification_source is not None:
        taken = 0
        for batch in verification_source.batches(options.batch_size):
            verification_inputs.append(batch)
            taken += len(next(iter(batch.values())))
            if taken >= VERIFICATION_SAMPLES:
                break

    def quantize(model, rules):
        """The quantization stage with the backend's rules: (model, plan); extra_files and
        extra_report get the selective chart/report and the bias corrections."""
        plan = None
        if mode == "qat" and calibration is not None and _has_float_parts(model):
            plan = complete_qat(model, calibration.batches(options.batch_size), options.calibration_method, rules=rules)
        elif mode == "qat":
            plan = plan_from_qdq(model)
        elif mode == "dynamic":
            from edgecomp.passes.quantize.naive import quantize_weights_only

            plan = quantize_weights_only(model, rules)
        elif mode in CALIBRATED_MODES:
            from edgecomp.passes.quantize.naive import Int8QuantizationPass, hybrid_chooser

            total = calibration.num_samples
            done = 0

            def tick(count: int) -> None:
                nonlocal done
                done += count
                if progress is not None:
                    progress("calibrate", done, total)

            if mode == "selective":
                from edgecomp.passes.quantize.selective import SelectiveQuantizationPass
                from edgecomp.report_plots import sensitivity_bar_chart

                labelled = eval_data is not None and eval_data.labels is not None
                quantizer = SelectiveQuantizationPass(
                    lambda: calibration.batches(options.batch_size), min_sqnr_db=options.min_sqnr_db, max_accuracy_drop=options.max_accuracy_drop,
                    eval_batches=(lambda: eval_data.batches(options.batch_size)) if labelled else None,
                    eval_labels=eval_data.labels if labelled else None, compare_uniform_methods=True, progress=tick, rules=rules,
                )
                model = PassManager([quantizer], instruments)(model).model
                plan, selective = quantizer.plan, quantizer.result
                extra_files[SENSITIVITY_CHART] = sensitivity_bar_chart(selective.sensitivities, None, all_int8_db=selective.all_int8_sqnr_db)
                extra_report["selective"] = selective.report()
        if mode in ("naive", "hybrid"):
            choose = None
            if mode == "hybrid":
                choose = hybrid_chooser() if options.int8_ops is None else hybrid_chooser(options.int8_ops)
            tensor_methods, fixed_params = {}, {}
            if plan_request is not None:
                choose, tensor_methods, fixed_params = plan_request.choose, plan_request.tensor_methods, plan_request.fixed_params
            quantizer = Int8QuantizationPass(
                calibration.batches(options.batch_size), method=options.calibration_method, choose=choose,
                tensor_methods=tensor_methods, fixed_params=fixed_params, mode=mode, progress=tick, rules=rules,
            )
            model = PassManager([quantizer], instruments)(model).model
            plan = quantizer.plan
        # selective without --bias-correction/--equalize tries bias correction and keeps it when it
        # raises the output SQNR on the calibration data (issue: recovery "used by selective when
        # they help"); --bias-correction forces it
        auto_correction = mode == "selective" and not (options.bias_correction or options.equalize)
        extra_report.pop("bias_correction", None)  # from an earlier pass when quantizing again
        if (options.bias_correction or auto_correction) and plan is not None:
            from edgecomp.passes.quantize.bias_correction import BiasCorrectionPass

            uncorrected = model.clone() if auto_correction else None
            corrector = BiasCorrectionPass(float_model, ReiterableBatches(lambda: calibration.batches(options.batch_size)))  # read again per level, not kept
            model = PassManager([corrector], instruments)(model).model
            note = f"bias correction (Nagel et al. 2019, section 4.2, output error): {len(corrector.corrections)} int32 biases corrected"
            if auto_correction:
                without, with_correction = _calibration_sqnr((uncorrected, model), reference_bytes, calibration, options.batch_size)
                kept = with_correction > without
                extra_report.setdefault("selective", {})["bias_correction"] = {
                    "sqnr_db_without": round(without, 3), "sqnr_db_with": round(with_correction, 3), "kept": kept,
                }
                note = f"selective tried {note[0].lower()}{note[1:]}: output SQNR {with_correction:.2f} dB with, {without:.2f} dB without on the calibration data: {'kept' if kept else 'not kept'}"
                if not kept:
                    model = uncorrected
            if not auto_correction or kept:
                extra_report["bias_correction"] = {name: c.to_dict() for name, c in corrector.corrections.items()}
            plan = dataclasses.replace(plan, notes=(*plan.notes, note))
        if options.equalize and plan is not None:
            pairs = len(extra_report["equalization"].get("pairs", []))
            plan = dataclasses.replace(plan, notes=(*plan.notes, f"cross-layer equalization (Nagel et al. 2019, section 4.1) on {pairs} layer pairs before quantizing"))
        return model, plan

    rules = _quantization_rules(backend, target)
    unquantized = model.clone() if mode in ("selective",) or options.bias_correction else None
    model, plan = quantize(model, rules)
    ranges = {t.name: t.range for t in plan.tensors if t.range} if plan is not None else None
    warnings = [dataclasses.asdict(w) for w in check_model(float_model, ranges or None)]
    lap("quantize")

    # The reference is the float model; a QAT model has none, so its own QDQ simulation serves.
    reference = make_session(reference_bytes, optimize=mode != "qat")
    reference_outputs = tuple(tuple(reference.run(None, dict(batch))) for batch in verification_inputs)

    def lower(model, plan):
        """Legalize and lower: (model as legalized, artifact)."""
        legalize = backend.legalize(target)
        if legalize:
            model = PassManager(legalize, instruments)(model).model
        lap("legalize")
        artifact = backend.lower(
            model,
            target,
            LowerOptions(
                quantize=mode,
                verification_inputs=tuple(verification_inputs),
                reference_outputs=reference_outputs,
                model_name=model_path.stem,
                get_backend=get_backend,
                io_layout=options.io_layout,
                backend_options=dict(options.backend_options),
                quantization_plan=plan.to_json() if plan is not None else None,
            ),
        )
        lap("lower")
        return model, artifact

    model, artifact = lower(model, plan)
    narrowed = largest_weight(artifact.model) if unquantized is not None and artifact.model is not None else 0
    if 0 < narrowed < rules.weight_qmax:
        # The backend narrowed the weights after quantizing (its kernels needed it): the selective
        # search and bias correction were made for other weights, so quantize again with the range
        # the artifact has, and lower that.
        rules = dataclasses.replace(rules, weight_qmax=narrowed, weight_reason=f"the {backend.name} backend narrowed the weights while lowering ({artifact.metadata.get('weight_range', 'its kernels need it')}); quantized again with that range")
        model, plan = quantize(unquantized, rules)
        lap("quantize")
        model, artifact = lower(model, plan)
    if plan is not None and artifact.model is not None:
        plan = _refresh_plan(plan, artifact.model, backend.name)
    if not verification_inputs:
        warnings.append({"node": model_path.name, "kind": "not-verified",
                         "message": "no --calibration or --eval data, so the artifact was not run against the reference; give data to verify it"})
    # a backend that plans its own arena (the c backend) reports it and checks the RAM budget itself
    backend_memory = artifact.metadata.get("memory")
    memory = backend_memory if isinstance(backend_memory, dict) else _plan_memory(artifact.model or model, mode != "none", target)
    if target.flash_bytes is not None and artifact.flash_bytes > target.flash_bytes:
        raise BudgetError(
            f"artifact of backend {backend.name!r} needs {artifact.flash_bytes} bytes of flash; target {target.name!r} has {target.flash_bytes}"
        )

    evaluation = None
    if eval_data is not None:
        if artifact.runner is None:
            raise UnsupportedError(f"backend {backend.name!r} cannot run its artifact on this host, so --eval is not available")
        evaluation = _evaluate(reference, artifact.runner, eval_data, options.batch_size)
    lap("evaluate")

    files = dict(artifact.files)
    files.update(extra_files)
    if plan is not None:
        files[PLAN_FILE] = plan.to_json().encode()
    files[OUTPUT_MARKER] = output_marker(files)
    write_atomically(output_dir, files)
    lap("write")

    report = {
        "edgecomp_version": __version__,
        "model": {"path": str(model_path), "bytes": input_bytes, "sha256": _sha256(model_path.read_bytes())},
        "target": target.name,
        "backend": backend.name,
        "quantize": mode,
        "calibration": None if calibration is None else {"path": options.calibration, "method": options.calibration_method, "samples": plan.calibration_samples if plan else calibration.num_samples},
        "output_dir": str(output_dir),
        "artifacts": [{"path": str(output_dir / name), "bytes": len(data), "sha256": _sha256(data)} for name, data in sorted(files.items()) if name != OUTPUT_MARKER],
        "sizes": {"input_model_bytes": input_bytes, "float_model_bytes": len(reference_bytes), "flash_bytes": artifact.flash_bytes, "flash_budget_bytes": target.flash_bytes},
        "timings_s": timings,
        "passes": [{"pass": name, "seconds": round(seconds, 4), "modified": modified} for name, seconds, modified in instruments[0].records],
        "backend_metadata": artifact.metadata,
        "evaluation": evaluation,
        "warnings": warnings,
        "memory": memory,
        **extra_report,
    }
    return CompileResult(report, output_dir, plan)
