"""The ``onnxruntime`` backend: the QDQ ``.onnx`` and the ``.ort`` file for ONNX Runtime Mobile/minimal builds.

Lowering is serialisation plus verification, because the IR already is an ONNX model ONNX Runtime
executes. Verification runs the artifact the way a user's runtime executes it (default graph
optimisations: QDQ groups fused into integer kernels such as QLinearConv) and compares it with the
QDQ simulation (no optimisation: every QuantizeLinear/DequantizeLinear evaluated in float, the
exact semantics of the ONNX specs), both measured as SQNR against the FP32 model. On x86 CPUs
without AVX-VNNI, ONNX Runtime's u8s8 kernels add pairs of products in saturating int16 and
silently change results for full-range int8 weights; when the fused run loses more than
:data:`MAX_FUSED_SQNR_LOSS_DB` against the simulation, the backend narrows the weights to 7 bits
(:func:`edgecomp.passes.quantize.qdq.narrow_weight_range`) and checks again, and fails the compile
with :class:`VerificationError` if the loss remains. The check runs only when the target's CPU
architecture is this machine's (``host-x86_64`` compiled on x86-64): other targets' kernels cannot
be measured here, and their weights stay full-range. The decision thus depends on the compiling
CPU (with or without AVX-VNNI), and the report says which was taken.

When the weights were narrowed, the pipeline quantizes again with [-64, 64] weights for modes
whose choices depend on the weights (selective's search, bias correction), so the artifact's
weights are the ones those choices were made for. Softmax/Sigmoid/Tanh outputs are calibrated
rather than fixed at TFLite's 1/256 (:meth:`OnnxRuntimeBackend.quantization_rules`: ONNX Runtime's
QLinearSoftmax/QLinearSigmoid take any output scale).
"""

from __future__ import annotations

import dataclasses
import math
import platform
import shutil
import subprocess
import sys
from typing import Mapping, Sequence

import numpy as np
import onnx_ir as ir

from edgecomp.backend import Artifact, LowerOptions, SupportReport, Unsupported
from edgecomp.errors import UnsupportedError, VerificationError
from edgecomp.ir.load import to_bytes
from edgecomp.ir.run import make_session
from edgecomp.passes.quantize.metrics import sqnr_db
from edgecomp.passes.quantize.qdq import QuantizationRules, largest_weight, narrow_weight_range

# The fused integer kernels may lose at most this much SQNR (dB, against the FP32 model) compared
# with the QDQ simulation. Legitimate differences (requantization rounding ties, at most one step
# per layer) cost a fraction of a dB; saturating kernels cost tens of dB.
MAX_FUSED_SQNR_LOSS_DB = 1.0
# A QAT model has no float reference: its own QDQ simulation is the reference, and the fused run
# must match it to this SQNR (dB): 40 dB is an rms difference of 1 % of the output signal.
MIN_FUSED_VS_SIMULATION_DB = 40.0
NARROW_WEIGHT_QMAX = 64

_ORT_CONVERT_SCRIPT = r"""
import os, sys, tempfile
import onnxruntime
data = sys.stdin.buffer.read()
with tempfile.TemporaryDirectory() as folder:
    path = os.path.join(folder, "model.ort")
    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = path
    options.add_session_config_entry("session.save_model_format", "ORT")
    onnxruntime.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    with open(path, "rb") as handle:
        sys.stdout.buffer.write(handle.read())
"""


def convert_to_ort_format(onnx_bytes: bytes) -> tuple[bytes, bool]:
    """Convert ONNX bytes to the ORT flatbuffer format (ONNX Runtime Mobile / minimal builds).

    ONNX Runtime writes the same model with a different byte layout from run to run (its writer
    iterates containers whose order depends on memory addresses). The conversion therefore runs in
    a fresh interpreter with a fixed, empty environment, fixed working directory and address-space
    randomisation disabled (``setarch -R``), which makes it byte-reproducible.

    Returns:
        (ort_bytes, reproducible): ``reproducible`` is False when ``setarch`` is unavailable and
        the conversion ran without disabling address randomisation.

    Raises:
        VerificationError: ONNX Runtime failed to convert the model (its first error line).
    """
    plain = [sys.executable, "-c", _ORT_CONVERT_SCRIPT]
    setarch = shutil.which("setarch")
    attempts = ([[setarch, platform.machine(), "-R", *plain]] if setarch else []) + [plain]
    for pinned, command in zip((True, False) if setarch else (False,), attempts):
        # without setarch, or when it is refused (e.g. a seccomp sandbox), run without -R
        result = subprocess.run(command, input=onnx_bytes, capture_output=True, env={}, cwd="/")
        if result.returncode == 0:
            return result.stdout, pinned
    message = result.stderr.decode(errors="replace").strip().splitlines()
    raise VerificationError(f"ONNX Runtime could not write the .ort file: {message[-1] if message else 'unknown error'}")


def output_quantization_steps(model: ir.Model) -> list[float | None]:
    """Per graph output, the scale (one LSB, real units) of the DequantizeLinear producing it, else None."""
    steps: list[float | None] = []
    for output in model.graph.outputs:
        producer = output.producer()
        if producer is not None and producer.op_type == "DequantizeLinear" and producer.inputs[1].const_value is not None:
            steps.append(float(np.max(producer.inputs[1].const_value.numpy())))
        else:
            steps.append(None)
    return steps


@dataclasses.dataclass(frozen=True)
class KernelCheck:
    """Fused-kernel run vs QDQ simulation, both measured against the FP32 outputs.

    Attributes:
        sqnr_simulated_db: SQNR (dB) of the QDQ simulation against FP32, worst output.
        sqnr_fused_db: SQNR (dB) of the optimised run (fused integer kernels) against FP32, on the
            output where it loses most against the simulation.
        max_lsb: largest fused-vs-simulated difference in output quantization steps (or, for
            float outputs, in units of 1e-4 of the output range).
        fraction_over_1_lsb: fraction (0..1) of output elements differing by more than 1 LSB.
        samples: number of samples compared.
    """

    sqnr_simulated_db: float
    sqnr_fused_db: float
    max_lsb: float
    fraction_over_1_lsb: float
    samples: int

    @property
    def sqnr_loss_db(self) -> float:
        """SQNR the fused kernels lose against the simulation (dB, >= 0 when they are worse)."""
        if self.sqnr_simulated_db == self.sqnr_fused_db:
            return 0.0
        return self.sqnr_simulated_db - self.sqnr_fused_db

    @property
    def agrees(self) -> bool:
        if math.isinf(self.sqnr_simulated_db):  # the reference is the simulation itself (QAT model)
            return self.sqnr_fused_db >= MIN_FUSED_VS_SIMULATION_DB
        return self.sqnr_loss_db <= MAX_FUSED_SQNR_LOSS_DB


def check_fused_kernels(
    model: ir.Model,
    onnx_bytes: bytes,
    inputs: Sequence[Mapping[str, np.ndarray]],
    reference_outputs: Sequence[Sequence[np.ndarray]],
) -> KernelCheck:
    """Run ONNX Runtime optimised (fused integer kernels) and unoptimised (QDQ simulation) on
    ``inputs`` and measure both against the FP32 ``reference_outputs`` (SQNR, see
    :func:`edgecomp.passes.quantize.metrics.sqnr_db`) and against each other (LSB statistics)."""
    simulated_session = make_session(onnx_bytes, optimize=False)
    fused_session = make_session(onnx_bytes, optimize=True)
    steps = output_quantization_steps(model)
    outputs = len(steps)
    reference: list[list[np.ndarray]] = [[] for _ in range(outputs)]
    simulated: list[list[np.ndarray]] = [[] for _ in range(outputs)]
    fused: list[list[np.ndarray]] = [[] for _ in range(outputs)]
    samples = 0
    for feeds, expected in zip(inputs, reference_outputs):
        samples += len(next(iter(feeds.values())))
        for store, arrays in ((reference, expected), (simulated, simulated_session.run(None, dict(feeds))), (fused, fused_session.run(None, dict(feeds)))):
            for index in range(outputs):
                store[index].append(np.asarray(arrays[index], dtype=np.float64))
    worst_loss, sqnr_simulated, sqnr_fused = -np.inf, np.inf, np.inf
    worst_lsb, over, total = 0.0, 0, 0
    for index, step in enumerate(steps):
        ref, sim, fus = (np.concatenate(parts) for parts in (reference[index], simulated[index], fused[index]))
        simulated_db, fused_db = sqnr_db(ref, sim), sqnr_db(ref, fus)
        loss = 0.0 if simulated_db == fused_db else simulated_db - fused_db
        if loss > worst_loss:
            worst_loss, sqnr_simulated, sqnr_fused = loss, simulated_db, fused_db
        unit = step if step else max(float(np.ptp(sim)), 1e-12) * 1e-4
        lsb = np.abs(sim - fus) / unit
        worst_lsb = max(worst_lsb, float(lsb.max(initial=0.0)))
        over += int(np.count_nonzero(lsb > 1.0 + 1e-3))
        total += lsb.size
    return KernelCheck(sqnr_simulated, sqnr_fused, worst_lsb, over / total if total else 0.0, samples)


class OnnxRuntimeBackend:
    """ONNX Runtime: QDQ ONNX model plus its ORT-format twin."""

    name = "onnxruntime"
    description = "QDQ .onnx + .ort (ONNX Runtime / ONNX Runtime Mobile), verified by running it"

    def quantization_rules(self, target) -> QuantizationRules:
        """Calibrated Softmax/Sigmoid/Tanh outputs (ONNX Runtime's int8 kernels take any output
        scale); full-range weights: whether this CPU's fused kernels need 7-bit ones is measured
        while lowering (module docstring), and the pipeline quantizes again when they do."""
        return QuantizationRules(fixed_output_params=False, output_reason="ONNX Runtime's QLinearSoftmax/QLinearSigmoid take any output scale")

    def support(self, model: ir.Model, target) -> SupportReport:
        """Nodes ONNX Runtime's CPU execution provider has no kernel for, or a target it cannot run on.

        ONNX Runtime needs an operating system: on a bare-metal ``mcu`` target every node is
        reported. Otherwise a session is created (no optimisation) and ONNX Runtime's
        missing-kernel error is mapped back to the node it names.
        """
        if target.kind == "mcu":
            return SupportReport(self.name, (Unsupported("*", "*", f"target {target.name!r} is a bare-metal microcontroller; ONNX Runtime needs an OS (use the c-array backend)"),))
        try:
            make_session(model, optimize=False)
        except Exception as exc:  # onnxruntime raises its own exception types
            text = str(exc)
            node = next((n for n in model.graph if f"'{n.name}'" in text or f"name '{n.name}'" in text), None)
            reason = text.strip().splitlines()[0][:300]
            return SupportReport(self.name, (Unsupported(node.name if node else "*", node.op_type if node else "*", reason),))
        return SupportReport(self.name)

    def legalize(self, target) -> list:
        """No legalisation: ONNX Runtime executes the QDQ IR as it is."""
        return []

    def lower(self, model: ir.Model, target, options: LowerOptions) -> Artifact:
        """Serialise ``model`` to ``<name>.onnx`` and ``<name>.ort`` and verify them in ONNX Runtime.

        Raises:
            VerificationError: the fused integer kernels disagree with the QDQ simulation even
                with 7-bit weights, or the .ort file does not reproduce the .onnx outputs.
        """
        if options.io_layout:
            raise UnsupportedError(
                f"backend {self.name!r} keeps the ONNX model's input/output layout; --io-layout {options.io_layout} needs a backend with a native layout (tflite)"
            )
        metadata: dict = {}
        onnx_bytes = to_bytes(model)
        skip = None
        if options.quantize == "none":
            skip = "float model"
        elif target.arch != platform.machine():
            skip = f"the target CPU ({target.arch}) is not this machine's ({platform.machine()}), whose kernels would be measured"
        elif not options.reference_outputs:
            skip = "no verification data"
        if options.quantize != "none":
            qmax = largest_weight(model)
            metadata["weight_range"] = f"int8 [-{qmax}, {qmax}]"
        if skip:
            metadata["fused_kernel_check"] = f"not run: {skip}"
        else:
            inputs, reference = options.verification_inputs, options.reference_outputs
            check = check_fused_kernels(model, onnx_bytes, inputs, reference)
            metadata["fused_kernel_check"] = dataclasses.asdict(check)
            if not check.agrees and options.quantize == "qat":
                raise VerificationError(
                    f"ONNX Runtime's fused int8 kernels on this CPU give {check.sqnr_fused_db:.1f} dB SQNR against the model's "
                    f"own QDQ semantics (need {MIN_FUSED_VS_SIMULATION_DB:.0f}); fixing that would change the weights' learned "
                    "scales, which --quantize qat keeps: compile on a CPU with AVX-VNNI, or with another backend"
                )
            if not check.agrees:
                narrowed = narrow_weight_range(model, NARROW_WEIGHT_QMAX)
                onnx_bytes = to_bytes(model)
                retry = check_fused_kernels(model, onnx_bytes, inputs, reference)
                metadata["weight_range"] = f"7-bit [-{NARROW_WEIGHT_QMAX}, {NARROW_WEIGHT_QMAX}] on {narrowed} weight tensors"
                metadata["fused_kernel_check_full_range"] = metadata.pop("fused_kernel_check")
                metadata["fused_kernel_check"] = dataclasses.asdict(retry)
                if not retry.agrees:
                    raise VerificationError(
                        f"ONNX Runtime's fused int8 kernels lose {retry.sqnr_loss_db:.1f} dB SQNR against the QDQ simulation "
                        f"({retry.sqnr_fused_db:.1f} vs {retry.sqnr_simulated_db:.1f} dB vs FP32) even with 7-bit weights; "
                        "refusing to ship a wrong model"
                    )
        ort_bytes, reproducible = convert_to_ort_format(onnx_bytes)
        metadata["ort_format_reproducible"] = reproducible
        if options.verification_inputs:
            metadata["ort_vs_onnx_max_difference"] = self._check_ort_file(model, onnx_bytes, ort_bytes, options.verification_inputs)
        # --eval runs the artifact as the target would: with this machine's fused kernels when the
        # target is this machine's CPU, else as the exact QDQ simulation (the ONNX semantics the
        # target's int8 kernels implement), not with host kernels the target never runs.
        native = target.arch == platform.machine()
        session = make_session(onnx_bytes, optimize=native)
        metadata["evaluation_runs"] = "fused kernels of this machine" if native else "QDQ simulation (no graph optimisation)"

        def runner(feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
            return session.run(None, dict(feeds))

        stem = options.model_name
        return Artifact(
            backend=self.name,
            files={f"{stem}.onnx": onnx_bytes, f"{stem}.ort": ort_bytes},
            flash_bytes=max(len(onnx_bytes), len(ort_bytes)),  # the device stores one of the two
            metadata=metadata,
            runner=runner,
            model=model,
        )

    @staticmethod
    def _check_ort_file(model: ir.Model, onnx_bytes: bytes, ort_bytes: bytes, inputs: Sequence[Mapping[str, np.ndarray]]) -> float:
        """Largest difference between the .ort and the .onnx run, in output LSB (quantized outputs)
        or in units of 1e-4 of the output range (float outputs; the two files are optimised
        differently, so float rounding may differ).

        Raises:
            VerificationError: naming the output, when the difference exceeds one unit.
        """
        reference = make_session(onnx_bytes, optimize=True)
        converted = make_session(ort_bytes, optimize=True)
        names = [output.name for output in reference.get_outputs()]
        worst = 0.0
        for feeds in inputs:
            for name, step, expected, actual in zip(names, output_quantization_steps(model), reference.run(None, dict(feeds)), converted.run(None, dict(feeds))):
                unit = step if step else max(float(np.ptp(expected)), 1e-12) * 1e-4
                difference = float(np.max(np.abs(expected.astype(np.float64) - actual.astype(np.float64)), initial=0.0)) / unit
                worst = max(worst, difference)
                if difference > 1.0 + 1e-6:
                    raise VerificationError(
                        f"the .ort file's output {name!r} differs from the .onnx model's by {difference:.1f} "
                        f"{'LSB' if step else 'x 1e-4 of the output range'} in ONNX Runtime"
                    )
        return worst
