"""The ``c`` backend: standalone C99, INT8 kernels, one statically planned tensor arena, no heap.

``lower`` runs the tflite backend's full-integer lowering (NHWC layout, fused activations, the TFLite
int8 quantization specification, QAT scales kept), reads the ``.tflite`` back
(:mod:`edgecomp_c.lowering`) and writes (:mod:`edgecomp_c.emit`):

- ``<name>.h`` / ``<name>.c``: the API (``<name>_invoke`` on int8 tensors, ``<name>_invoke_float``
  with TFLite's QUANTIZE/DEQUANTIZE at the boundary), weights as aligned ``const`` arrays in the
  target's ``c_array.section`` when it names one, one ``static`` arena of exactly the planned size;
- ``ec_*.h`` / ``ec_*.c``: the kernel runtime (bit-exact with the TFLite reference int8 kernels).

Report (``metadata``): the arena plan against the lower bound and TFLite Micro's greedy plan, per
layer flash (constant bytes) and RAM (bytes alive in the arena while it runs), and when the
target's compiler is installed, ``arm-none-eabi-size`` (or the target's ``cc``) figures of the
compiled sources.

Budgets: an arena larger than the target's RAM, or a program larger than its flash (code and
constants as the target's compiler and ``size`` measure them; weights and parameters alone when
that compiler is not installed), raise :class:`~edgecomp.errors.BudgetError` naming the budget,
the need and the tensors or layers contributing most.

Verification (with ``verification_inputs``, when host ``gcc`` is installed): the sources are built
with ``gcc -std=c99 -Wall -Wextra -Werror`` and run on the samples through ``<name>_invoke_float``;
every output must be **bit-identical** to LiteRT running the same ``.tflite`` with its reference
kernels (``OpResolverType.BUILTIN_REF``), else :class:`~edgecomp.errors.VerificationError`. The
runner (``--eval``) runs that host build; without ``gcc``, LiteRT's reference kernels on the
``.tflite`` (the same numbers).

Quantization modes: ``naive`` and ``qat`` (full-integer int8). Float, hybrid and dynamic-range
models need float kernels this backend does not have; ``support`` refuses them up front.
"""

from __future__ import annotations

import dataclasses
import logging
import pathlib
import shutil
import tempfile
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

from edgecomp import __version__
from edgecomp.backend import Artifact, LowerOptions, SupportReport, Unsupported
from edgecomp.errors import BudgetError, UnsupportedError, VerificationError
from edgecomp.memory import live_bytes

if TYPE_CHECKING:
    import onnx_ir as ir

    from edgecomp.targets import Target

logger = logging.getLogger(__name__)

QUANTIZE_MODES = ("naive", "selective", "qat")
"""Full-integer modes; ``selective`` without a goal keeps every layer int8."""

#: ONNX ops (default domain) whose int8 TFLite lowering has a C kernel here. The authoritative check
#: is in ``lower`` (every TFLite operator through its builder); this list lets ``support`` refuse a
#: model before calibration.
ONNX_OPS = frozenset(
    {
        "Conv", "Gemm", "MatMul", "Add", "Sub", "Mul", "Relu", "Clip", "MaxPool", "AveragePool",
        "GlobalAveragePool", "ReduceMean", "Softmax", "Reshape", "Flatten", "Squeeze", "Unsqueeze",
        "Concat", "Pad", "QuantizeLinear", "DequantizeLinear", "Identity", "Dropout", "Constant",
        "BatchNormalization", "Transpose",
    }
)
"""ONNX operators the c backend accepts before any work. ``Transpose`` is among them because the
tflite lowering folds layout transposes (the NHWC -> NCHW Transpose tf2onnx puts after the input
of every MLPerf Tiny model) into its channels-last layout; a TRANSPOSE operator that stays in the
``.tflite`` is refused by :func:`edgecomp_c.lowering.lower_program` (no C kernel), exit 7."""


class CRunner:
    """``runner(feeds) -> outputs``: the generated C built for the host, run through
    ``<name>_invoke_float`` one sample at a time (``<name>_invoke`` when the model's own inputs and
    outputs are int8); ONNX layouts at the boundary, as LiteRT's runner.

    Args:
        executable: the host build (:func:`edgecomp_c.harness.build_host` with ``float_io=True``).
        sources: its :class:`~edgecomp_c.harness.Sources`.
        lowered: the tflite lowering (I/O names, layouts and shapes).
        keep: a temporary directory to keep alive as long as the runner.
    """

    def __init__(self, executable: pathlib.Path, sources, lowered, output_shapes: list[tuple[int, ...]], keep: Any = None) -> None:
        self.executable = executable
        self.sources = sources
        self.lowered = lowered
        self.output_shapes = output_shapes
        self._keep = keep
        self._process = None  # started on the first call (edgecomp_c.harness.HostProcess)

    def __call__(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        from edgecomp_c.harness import HostProcess
        from edgecomp_tflite.layout import load, store

        if self._process is None:
            self._process = HostProcess(self.executable, self.sources, float_io=self.sources.float_api)
        dtype = np.float32 if self.sources.float_api else np.int8
        arrays = [np.ascontiguousarray(store(np.asarray(feeds[name]), layout), dtype=dtype) for name, layout in zip(self.lowered.input_names, self.lowered.input_layouts)]
        outputs = self._process.run(arrays)
        # one invoke per batch of the program's (fixed) batch size: samples = invokes x batch
        return [load(array.reshape(-1, *shape[1:]), layout) for array, shape, layout in zip(outputs, self.output_shapes, self.lowered.output_layouts)]


class CBackend:
    """Standalone C99 with INT8 kernels and a statically planned tensor arena (module docstring).

    Args:
        arena_alignment: bytes; arena offsets and buffer sizes are multiples of it (16, as TFLite Micro).
        verify: build and run the C on the verification samples when ``gcc`` is installed.
    """

    name = "c"
    #: Only int8 kernels: a selective goal, which keeps layers in float, cannot be met here.
    float_kernels = False
    description = "standalone C99: INT8 kernels bit-exact with TFLite's reference kernels, one static tensor arena at the planned size, no heap, no interpreter"

    def __init__(self, arena_alignment: int = 16, *, verify: bool = True) -> None:
        self.arena_alignment = arena_alignment
        self.verify = verify

    @staticmethod
    def _tflite():
        from edgecomp_tflite.backend import TFLiteBackend

        return TFLiteBackend()

    def support(self, model: ir.Model, target: Target, *, quantize: str = "naive") -> SupportReport:
        """Refuse float/hybrid/dynamic modes, nodes the tflite lowering refuses, and ONNX ops whose
        int8 lowering has no C kernel here (:data:`ONNX_OPS`). Does no work."""
        if quantize not in QUANTIZE_MODES:
            reason = f"the c backend runs full-integer int8 models (--quantize {' or '.join(QUANTIZE_MODES)}); --quantize {quantize} needs float kernels it does not have"
            return SupportReport(self.name, (Unsupported("*", f"--quantize {quantize}", reason),))
        entries = list(self._tflite().support(model, target, quantize=quantize).unsupported)
        flagged = {entry.node for entry in entries}
        for node in model.graph:
            if node.domain in ("", "ai.onnx") and node.op_type not in ONNX_OPS and node.name not in flagged:
                entries.append(Unsupported(node.name or node.op_type, node.op_type, "no int8 C kernel for this operator"))
        return SupportReport(self.name, tuple(entries))

    def legalize(self, target: Target) -> list[Any]:
        """No passes: the tflite lowering handles layout and fusion."""
        return []

    # ------------------------------------------------------------------------------------ lower

    def lower(self, model: ir.Model, target: Target, options: LowerOptions) -> Artifact:
        """Write ``<name>.h``, ``<name>.c`` and the runtime; verify bit-exactness when given data.

        Raises:
            UnsupportedError: a refused mode, or every operator without a C kernel (one line, "; " between them).
            BudgetError: the arena exceeds the target's RAM or the constants its flash.
            VerificationError: the C outputs differ from LiteRT's reference kernels in any bit.
        """
        from edgecomp_c.emit import c_identifier, emit_header, emit_source
        from edgecomp_c.harness import runtime_sources
        from edgecomp_c.lowering import lower_program
        from edgecomp_tflite.runner import LiteRTRunner
        from edgecomp_tflite.writer import read_model

        if options.quantize not in QUANTIZE_MODES:
            raise UnsupportedError(f"c: --quantize {options.quantize} is not lowered (the c backend runs full-integer int8: {', '.join(QUANTIZE_MODES)})")
        tflite_options = dataclasses.replace(options, verification_inputs=(), reference_outputs=())
        tflite_artifact = self._tflite().lower(model, target, tflite_options)
        stem = options.model_name
        tflite_bytes = tflite_artifact.files[f"{stem}.tflite"]
        lowered = tflite_artifact.runner.lowered
        program = lower_program(read_model(tflite_bytes), alignment=self.arena_alignment)
        ident = c_identifier(stem)
        producer = f"edgecomp {__version__}"
        files = {
            f"{ident}.h": emit_header(program, stem, producer=producer, layouts=_layout_names(lowered)).encode(),
            f"{ident}.c": emit_source(program, stem, producer=producer, weights_section=target.c_array.section, weights_alignment=target.c_array.alignment).encode(),
        }
        files.update(runtime_sources())
        constant_bytes = sum(t.nbytes for t in program.constants()) + sum(np.asarray(v).nbytes for call in program.calls for _, v in call.arrays.values())
        layers = _layers(program)
        memory = {
            "arena_bytes": program.plan.arena_size,
            "lower_bound_bytes": program.plan.lower_bound,
            "tflm_greedy_bytes": program.greedy.arena_size,
            "gap_bytes": program.plan.gap_bytes,
            "gap_percent": round(program.plan.gap_percent, 3),
            "strategy": program.plan.strategy,
            "ram_budget_bytes": target.ram_bytes,
            "int8": True,
        }
        metadata: dict[str, Any] = {
            "api": f"{ident}_invoke / {ident}_invoke_float ({ident}.h)",
            "kernel_calls": len(program.calls),
            "op_histogram": _histogram(program),
            "constant_bytes": constant_bytes,
            "memory": memory,
            "arena_plan": program.plan.to_dict(),
            "layers": layers,
        }
        size = _target_size(files, ident, target)
        if size is not None:
            metadata["compiled_size"] = size
            flash, flash_source = size["flash"], f"code and constants: {size['compiler']} {' '.join(size['cflags'])} -c, then size; every kernel file counted"
        else:
            flash, flash_source = constant_bytes, "weights and parameters; the target's compiler is not installed to measure code"
        metadata["flash_bytes"] = {"bytes": flash, "measured": flash_source}
        _check_budgets(program, layers, flash, flash_source, target)
        executable = sources = None
        keep = None
        if shutil.which("gcc") is not None:
            from edgecomp_c.harness import build_host, read_sources

            keep = tempfile.TemporaryDirectory(prefix="edgecomp-c-")
            directory = pathlib.Path(keep.name)
            for name, data in files.items():
                (directory / name).write_bytes(data)
            sources = read_sources(directory, ident)
            executable = build_host(sources, directory / "build", float_io=sources.float_api)
        output_shapes = [tuple(b.float_tensor.shape) for b in program.outputs]
        runner = CRunner(executable, sources, lowered, output_shapes, keep) if executable is not None else LiteRTRunner(lowered, reference_kernels=True)
        if options.verification_inputs and self.verify and executable is not None:
            metadata["verification"] = _verify(runner, tflite_bytes, lowered, options.verification_inputs)
        elif options.verification_inputs:
            metadata["verification"] = "not run: host gcc not installed" if executable is None else "not run: disabled"
        else:
            metadata["verification"] = "not run: no verification data"
        return Artifact(backend=self.name, files=files, flash_bytes=flash, metadata=metadata, runner=runner)


def _layout_names(lowered) -> tuple[str, ...]:
    """Per graph input then output: the element order the C API uses, in words."""
    names = []
    for layout in (*lowered.input_layouts, *lowered.output_layouts):
        if layout.is_identity:
            names.append("the ONNX model's layout")
        else:
            names.append(f"axes {list(layout.perm)} of the ONNX model's tensor (channels last)")
    return tuple(names)


def _histogram(program) -> dict[str, int]:
    counts: dict[str, int] = {}
    for op in program.ops:
        counts[op.builtin] = counts.get(op.builtin, 0) + 1
    return dict(sorted(counts.items()))


def _layers(program) -> list[dict[str, Any]]:
    """Per kernel call: builtin, output tensor, constant bytes it reads (flash) and arena bytes alive."""
    live = live_bytes(program.plan.buffers)
    seen: set[int] = set()
    rows = []
    for step, (op, call) in enumerate(zip(program.ops, program.calls)):
        flash = sum(np.asarray(v).nbytes for _, v in call.arrays.values())
        for index in call.tensors:
            tensor = program.tensors[index]
            if tensor.is_constant and index not in seen:
                seen.add(index)
                flash += tensor.nbytes
        rows.append({"step": step, "op": op.builtin, "output": op.outputs[0].name if op.outputs else "", "flash_bytes": int(flash), "arena_live_bytes": int(live[step]) if step < len(live) else 0})
    return rows


def _check_budgets(program, layers: list[dict[str, Any]], flash: int, flash_source: str, target) -> None:
    """Raise :class:`BudgetError` when the arena exceeds ``ram_bytes`` (naming the operator at the
    peak and the tensors alive there, largest first) or ``flash`` exceeds ``flash_bytes`` (naming
    the layers with the most constant bytes)."""
    if target.ram_bytes is not None and program.plan.arena_size > target.ram_bytes:
        live = live_bytes(program.plan.buffers)
        peak = live.index(max(live))
        alive = sorted((b for b in program.plan.buffers if b.first_step <= peak <= b.last_step), key=lambda b: (-b.size, b.name))[:3]
        raise BudgetError(
            f"c: the tensor arena needs {program.plan.arena_size} bytes of RAM; target {target.name!r} has {target.ram_bytes} (ram_bytes); "
            f"at the peak (op {peak} {program.ops[peak].builtin}) these tensors are alive: " + ", ".join(f"{b.name} ({b.size} B)" for b in alive)
        )
    if target.flash_bytes is not None and flash > target.flash_bytes:
        top = sorted(layers, key=lambda row: (-row["flash_bytes"], row["step"]))[:3]
        raise BudgetError(
            f"c: the program needs {flash} bytes of flash ({flash_source}); target {target.name!r} has {target.flash_bytes} (flash_bytes); "
            "layers with the most constant bytes: " + ", ".join(f"op {row['step']} {row['op']} -> {row['output']!r} ({row['flash_bytes']} B)" for row in top)
        )


def _target_size(files: dict[str, bytes], ident: str, target) -> dict[str, Any] | None:
    """``<cc>-size`` of the sources compiled with the target's compiler and flags, when installed."""
    from edgecomp_c.harness import HarnessError, arm_size, read_sources

    cc = target.toolchain.cc
    if not cc.endswith("gcc") or shutil.which(cc) is None or shutil.which(cc[: -len("gcc")] + "size") is None:
        return None
    with tempfile.TemporaryDirectory(prefix="edgecomp-c-size-") as name:
        directory = pathlib.Path(name)
        for file_name, data in files.items():
            (directory / file_name).write_bytes(data)
        flags = (*target.toolchain.cflags, "-std=c99", "-O2")
        try:
            figures = arm_size(read_sources(directory, ident), directory / "obj", cflags=flags, cc=cc)
        except HarnessError as error:
            logger.warning("c: could not measure the compiled size with %s: %s", cc, error)
            return None
    return {"compiler": cc, "cflags": list(flags), **figures}


def _verify(runner: CRunner, tflite_bytes: bytes, lowered, inputs) -> dict[str, Any]:
    """The C outputs against LiteRT's reference kernels on the same ``.tflite``: every bit equal."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType
    from edgecomp_tflite.layout import load, store

    interpreter = Interpreter(model_content=tflite_bytes, num_threads=1, experimental_op_resolver_type=OpResolverType.BUILTIN_REF)
    interpreter.allocate_tensors()
    samples = 0
    mismatches = []
    for feeds in inputs:
        c_outputs = runner(feeds)
        arrays = [np.ascontiguousarray(store(np.asarray(feeds[name]), layout), dtype=detail["dtype"]) for name, layout, detail in zip(lowered.input_names, lowered.input_layouts, interpreter.get_input_details())]
        count = arrays[0].shape[0]
        batch = max(int(interpreter.get_input_details()[0]["shape"][0]), 1)  # the program's fixed batch
        for row in range(0, count, batch):
            for detail, array in zip(interpreter.get_input_details(), arrays):
                interpreter.set_tensor(detail["index"], array[row : row + batch])
            interpreter.invoke()
            for k, (detail, layout) in enumerate(zip(interpreter.get_output_details(), lowered.output_layouts)):
                expected = load(interpreter.get_tensor(detail["index"]), layout)
                actual = c_outputs[k][row : row + batch]
                if expected.tobytes() != np.ascontiguousarray(actual, dtype=expected.dtype).tobytes():
                    differing = int(np.count_nonzero(expected.reshape(-1) != actual.reshape(-1)))
                    mismatches.append(f"sample {samples + row} output {lowered.output_names[k]!r}: {differing} of {expected.size} elements differ")
        samples += count
    if mismatches:
        raise VerificationError("c: generated C differs from LiteRT's reference kernels: " + "; ".join(mismatches[:5]))
    return {"reference": "LiteRT reference kernels (OpResolverType.BUILTIN_REF) on the same .tflite", "samples": samples, "bit_exact": True, "build": "gcc -std=c99 -Wall -Wextra -Werror -O2"}
