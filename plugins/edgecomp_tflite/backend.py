"""The ``tflite`` backend: a ``.tflite`` flatbuffer written directly from the IR (no TensorFlow).

- ``support``: every node the lowering cannot handle, with the reason
  (:func:`edgecomp_tflite.lower.find_unsupported`), and the quantization modes it refuses.
- ``legalize``: no passes; NCHW -> NHWC layout is tracked during lowering
  (:mod:`edgecomp_tflite.lower` says why it is not an IR pass).
- ``lower``: ``<model_name>.tflite``, with ``serving_default`` signature keyed by the ONNX I/O
  names, producer metadata, and the runner (LiteRT, 1 thread). With verification data, LiteRT's
  outputs are compared with ONNX Runtime running the IR the backend was given
  (:func:`edgecomp_tflite.runner.verify`): float outputs within 1e-4 of their range, quantized
  outputs within 1 LSB on at least 99% of their elements, else a
  :class:`~edgecomp.errors.VerificationError`.

Quantization modes (``--quantize``), all read off the IR the pipeline hands over:

- ``none``: float32 (:class:`~edgecomp_tflite.tensor_types.FloatTensorTypes`), or with
  ``weights="float16"`` float16 weights behind DEQUANTIZE
  (:class:`~edgecomp_tflite.tensor_types.Float16TensorTypes`). The element types follow the IR:
  a model that still carries activation QuantizeLinear/DequantizeLinear is lowered as int8 (so
  ``edgecomp inspect``, which checks without a mode, judges a QAT model as ``qat`` would).
- ``naive``, ``qat``: full-integer int8 following the TFLite int8 quantization specification
  (:class:`~edgecomp_tflite.qdq_types.QdqTensorTypes`); ``qat`` keeps every scale, zero point,
  int8 weight and int32 bias the model carries.
- ``hybrid``: int8 groups with float islands; QUANTIZE/DEQUANTIZE at their boundaries.
- ``dynamic``: int8 weights with float activations (TFLite dynamic range): hybrid kernels where
  LiteRT has them, DEQUANTIZE of the int8 constants elsewhere (``dynamic_kernels``).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING, Any

from edgecomp.backend import Artifact, LowerOptions, SupportReport, Unsupported
from edgecomp.errors import UnsupportedError, VerificationError
from edgecomp_tflite.context import LoweringSettings
from edgecomp_tflite.lower import find_unsupported, lower_model
from edgecomp_tflite.qdq_types import DYNAMIC_KERNELS, QdqTensorTypes
from edgecomp_tflite.runner import (
    FLOAT32_TOLERANCE,
    LSB_TOLERANCE,
    WITHIN_ONE_LSB_FRACTION,
    LiteRTRunner,
    operator_figures,
    verify,
)
from edgecomp_tflite.tensor_types import (
    Float16TensorTypes,
    FloatTensorTypes,
    TensorTypes,
)
from edgecomp_tflite.writer import BUFFER_ALIGNMENT

if TYPE_CHECKING:
    import onnx_ir as ir

    from edgecomp.targets import Target

logger = logging.getLogger(__name__)

#: ``--quantize`` modes this backend lowers.
QUANTIZE_MODES = ("none", "naive", "hybrid", "selective", "dynamic", "qat")
WEIGHT_TYPES = ("float32", "float16")

#: Float outputs of TFLite hybrid (dynamic-range) kernels: they quantize their float input to int8
#: on every invoke (per batch row), so they differ from the float-activation QDQ simulation by int8
#: activation noise through every hybrid layer (measured: MLPerf Tiny AD, 10 hybrid FULLY_CONNECTED,
#: about 50 dB; KWS and VWW with hybrid convolutions too, 28 dB and up). Minimum SQNR (dB) of
#: LiteRT's outputs against the simulation; a wrong weight layout or scale gives well under 10 dB.
HYBRID_KERNEL_MIN_SQNR_DB = 20.0


def _has_qdq(model: ir.Model) -> bool:
    from edgecomp.passes.quantize.qat import has_qdq

    return has_qdq(model)


class TFLiteBackend:
    """TFLite flatbuffer for LiteRT and TensorFlow Lite Micro.

    Args:
        io_layout: ``"onnx"`` (default) keeps graph inputs/outputs in their ONNX layout; ``"nhwc"``
            presents 4-D inputs/outputs channels-last. ``LowerOptions.io_layout`` overrides this
            per compile.
        grouped_convolution: ``"native"`` (grouped CONV_2D) or ``"split"`` (SPLIT/CONV_2D/CONCATENATION).
        weights: ``"float32"`` or ``"float16"`` (``--quantize none`` only: weights stored float16
            and dequantized by DEQUANTIZE operators, half the weight bytes).
        dynamic_kernels: ``--quantize dynamic``: ``"auto"`` (default: hybrid FULLY_CONNECTED, the
            fast one in LiteRT's XNNPACK delegate; convolutions read DEQUANTIZE'd int8 weights),
            ``"hybrid"`` (hybrid CONV_2D and DEPTHWISE_CONV_2D too) or ``"dequantize"`` (every int8
            weight through a DEQUANTIZE; exact float arithmetic; what TFLite Micro runs).
            :mod:`edgecomp_tflite.qdq_types` has the measurements.
        embed_plan: store the quantization plan JSON in the file's metadata
            (``edgecomp.quantization_plan``). Off by default: the plan is written beside the
            artifact as ``quantization_plan.json`` and can be large (every per-channel scale as
            text: 278 KB for VWW, about the size of the model), so the file names it by its sha256
            (``edgecomp.quantization_plan.sha256``) instead; the producer is always named.
    """

    name = "tflite"
    #: ``--backend-option`` keys and values (the constructor arguments of the same names).
    option_choices = {"weights": WEIGHT_TYPES, "dynamic_kernels": DYNAMIC_KERNELS, "grouped_convolution": ("native", "split")}
    description = ".tflite flatbuffer (LiteRT, TFLite Micro) written directly: float32, full-integer int8 (naive, QAT scales kept), hybrid, dynamic range; channels-last; verified in LiteRT"

    def __init__(
        self,
        io_layout: str = "onnx",
        grouped_convolution: str = "native",
        *,
        weights: str = "float32",
        dynamic_kernels: str = "auto",
        embed_plan: bool = False,
    ) -> None:
        if weights not in WEIGHT_TYPES:
            raise ValueError(f"weights must be one of {', '.join(WEIGHT_TYPES)}, not {weights!r}")
        if dynamic_kernels not in DYNAMIC_KERNELS:
            raise ValueError(f"dynamic_kernels must be one of {', '.join(DYNAMIC_KERNELS)}, not {dynamic_kernels!r}")
        self.settings = LoweringSettings(io_layout=io_layout, grouped_convolution=grouped_convolution)
        self.weights = weights
        self.dynamic_kernels = dynamic_kernels
        self.embed_plan = embed_plan

    # ---------------------------------------------------------------------------- support

    @staticmethod
    def option_problem(key: str, value: str, quantize: str) -> str | None:
        """Why a ``--backend-option`` setting does not apply to ``--quantize quantize``, or None:
        float16 weights are for float models, ``dynamic_kernels`` for dynamic-range ones."""
        if key == "weights" and value == "float16" and quantize != "none":
            return f"float16 weights apply to float models (--quantize none), not --quantize {quantize}"
        if key == "dynamic_kernels" and value != "auto" and quantize != "dynamic":
            return f"it chooses the kernels of --quantize dynamic, not --quantize {quantize}"
        return None

    def _mode_problem(self, model: ir.Model, quantize: str) -> str | None:
        if quantize not in QUANTIZE_MODES:
            return f"--quantize {quantize} is not lowered by the tflite backend (it lowers {', '.join(QUANTIZE_MODES)})"
        return self.option_problem("weights", self.weights, quantize)

    def _tensor_types(self, model: ir.Model, quantize: str) -> TensorTypes:
        """The element types of this lowering (module docstring: quantization modes)."""
        if _has_qdq(model):
            return QdqTensorTypes(model, dynamic_kernels=self.dynamic_kernels)
        if self.weights == "float16":
            return Float16TensorTypes(model)
        return FloatTensorTypes()

    def support(self, model: ir.Model, target: Target, *, quantize: str = "none") -> SupportReport:
        """Every node (and graph input) the lowering cannot handle, with its reason. Does no work.

        Called by the pipeline before quantization: for ``naive``/``hybrid``/``dynamic`` the model is
        still float and is checked as such (those modes add Q/DQ groups of ops the int8 lowering
        covers; problems only the quantized IR shows are raised by :meth:`lower`); ``qat`` models
        are checked with their Q/DQ. A refused mode is one entry on node ``"*"``.

        Args:
            model: the canonicalized IR.
            target: the target (unused: every TFLite target runs the same flatbuffer).
            quantize: the quantization mode about to be applied.
        """
        problem = self._mode_problem(model, quantize)
        if problem is not None:
            return SupportReport(self.name, (Unsupported("*", f"--quantize {quantize}", problem),))
        return SupportReport(self.name, tuple(find_unsupported(model, self._tensor_types(model, quantize))))

    def legalize(self, target: Target) -> list[Any]:
        """No passes: layouts and element types are tracked while lowering."""
        return []

    # ---------------------------------------------------------------------------- lower

    def lower(self, model: ir.Model, target: Target, options: LowerOptions) -> Artifact:
        """Lower ``model`` to ``<model_name>.tflite`` and verify it in LiteRT when given data.

        ``options.backend_options`` (``--backend-option``) override the constructor's ``weights``,
        ``dynamic_kernels`` and ``grouped_convolution`` for this call.

        Raises:
            UnsupportedError: the mode is refused (see :meth:`support`), or a node cannot be lowered
                (including element types only the quantized IR shows, e.g. a Softmax whose output
                is not quantized with scale 1/256 and zero point -128).
            VerificationError: LiteRT's outputs differ from ONNX Runtime running ``model`` (the QDQ
                simulation when quantized): a float output by more than 1e-4 of its range, a
                quantized one by more than 1 LSB on more than 1% of its elements.
        """
        if options.backend_options:
            configured = TFLiteBackend(
                self.settings.io_layout,
                options.backend_options.get("grouped_convolution", self.settings.grouped_convolution),
                weights=options.backend_options.get("weights", self.weights),
                dynamic_kernels=options.backend_options.get("dynamic_kernels", self.dynamic_kernels),
                embed_plan=self.embed_plan,
            )
            return configured.lower(model, target, dataclasses.replace(options, backend_options={}))
        mode = options.quantize
        problem = self._mode_problem(model, mode)
        if problem is not None:
            raise UnsupportedError(f"tflite: {problem}")
        settings = self.settings
        # --io-layout nchw asks for the ONNX model's channels-first boundary, which is "onnx" here
        io_layout = {"nchw": "onnx"}.get(options.io_layout, options.io_layout)
        if io_layout:
            settings = LoweringSettings(io_layout=io_layout, grouped_convolution=settings.grouped_convolution)
        types = self._tensor_types(model, mode)
        plan = options.quantization_plan
        plan_bytes = plan.encode() if isinstance(plan, str) else plan
        lowered = lower_model(model, types, settings, quantization_plan=plan_bytes, plan_digest_only=not self.embed_plan)
        runner = LiteRTRunner(lowered)
        metadata: dict[str, Any] = {
            "precision": types.name,
            "io_layout": settings.io_layout,
            "transposes_added": lowered.transposes_added,
            "fused_activations": lowered.fused_activations,
            "operators": sum(lowered.op_histogram.values()),
            "op_histogram": lowered.op_histogram,
            "operator_versions": lowered.operator_versions,
            "buffer_alignment_bytes": BUFFER_ALIGNMENT,
            "constant_bytes": lowered.constant_bytes,
        }
        if isinstance(types, QdqTensorTypes):
            metadata["requantizations_added"] = lowered.requantizations
            metadata["dequantize_added"] = lowered.dequantize_views
            metadata["rescaled_biases"] = list(types.rescaled_biases)
            if mode == "dynamic":
                metadata["dynamic_kernels"] = self.dynamic_kernels
        if options.verification_inputs:
            metadata["verification"] = self._verify(model, types, mode, lowered, runner, options)
        else:
            metadata["verification"] = "not run: no verification data"
        stem = options.model_name
        return Artifact(
            backend=self.name,
            files={f"{stem}.tflite": lowered.data},
            flash_bytes=len(lowered.data),
            metadata=metadata,
            runner=runner,
        )

    def _verify(self, model: ir.Model, types: TensorTypes, mode: str, lowered, runner: LiteRTRunner, options: LowerOptions) -> dict[str, Any]:
        """LiteRT against ONNX Runtime running the IR given (raises VerificationError; returns the figures)."""
        inputs = list(options.verification_inputs)
        if isinstance(types, FloatTensorTypes) and not isinstance(types, Float16TensorTypes) and options.reference_outputs:
            reference, source = list(options.reference_outputs), "the FP32 reference outputs (ONNX Runtime)"
        else:
            reference, source = self._simulation(model, types, inputs)
        hybrid = mode == "dynamic" and lowered.hybrid_operators > 0
        result = verify(runner, inputs, reference, FLOAT32_TOLERANCE, lowered.output_quantization, min_sqnr_db=HYBRID_KERNEL_MIN_SQNR_DB if hybrid else None)
        if not result.passed and isinstance(types, QdqTensorTypes) and lowered.int8_values:
            result = dataclasses.replace(result, operators=operator_figures(lowered, model, inputs))
        figures: dict[str, Any] = {
            "reference": source,
            "max_abs_difference_relative_to_range": result.max_relative_difference,
            "per_output": result.per_output,
            "samples": result.samples,
            "tolerance": result.tolerance,
            "runtime": "LiteRT (ai_edge_litert), 1 thread",
        }
        if result.sqnr_db:
            figures["sqnr_db"] = result.sqnr_db
            figures["sqnr_rule"] = f"{lowered.hybrid_operators} hybrid (dynamic-range) operators quantize activations per invoke: SQNR against the simulation at least {HYBRID_KERNEL_MIN_SQNR_DB:g} dB"

        if result.lsb:
            figures["lsb"] = result.lsb
            figures["lsb_rule"] = f"at least {WITHIN_ONE_LSB_FRACTION:.0%} of elements within {LSB_TOLERANCE:g} LSB"
        if result.operators:
            quantized = {name: entry for name, entry in result.operators.items() if "within_1_lsb" in entry}
            floating = {name: entry for name, entry in result.operators.items() if "within_1_lsb" not in entry}
            figures["operators"] = {
                "checked": len(result.operators),
                "rule": "each operator group run alone in ONNX Runtime on LiteRT's own int8 inputs (int8 results: LSB rule; "
                "float outputs: tolerance); an output missing its rule passes when every group meets it "
                "(upstream 1-LSB rounding differences amplified downstream)",
            }
            if quantized:
                worst = min(quantized, key=lambda name: (quantized[name]["within_1_lsb"], -quantized[name]["max_lsb"]))
                figures["operators"]["worst_int8"] = {"output": worst, **quantized[worst]}
            if floating:
                worst = max(floating, key=lambda name: floating[name]["max_relative_difference"])
                figures["operators"]["worst_float"] = {"output": worst, **floating[worst]}
        if not result.passed:
            raise VerificationError(f"LiteRT vs {source} on {result.samples} samples: " + "; ".join(result.failures))
        return figures

    @staticmethod
    def _simulation(model: ir.Model, types: TensorTypes, inputs: list) -> tuple[list, str]:
        """ONNX Runtime's outputs for ``model`` as written (QDQ nodes simulated, no fusion); for
        float16 weights the model with its weights rounded to float16."""
        from edgecomp.ir.load import to_bytes, to_proto
        from edgecomp.ir.run import make_session

        if isinstance(types, Float16TensorTypes):
            proto = to_proto(model)
            types.simulation(proto)
            data, source = proto.SerializeToString(), "ONNX Runtime on the model with float16-rounded weights"
        else:
            data = to_bytes(model)
            source = "ONNX Runtime running the IR given (QDQ simulation)" if isinstance(types, QdqTensorTypes) else "ONNX Runtime running the IR given"
        session = make_session(data, optimize=False)
        return [session.run(None, dict(batch)) for batch in inputs], source
