"""The ``tflite`` backend: a ``.tflite`` flatbuffer written directly from the IR (no TensorFlow).

- ``support``: every node the lowering cannot handle, with the reason (:func:`edgecomp_tflite.lower.find_unsupported`).
- ``legalize``: no passes; NCHW -> NHWC layout is tracked during lowering
  (:mod:`edgecomp_tflite.lower` says why it is not an IR pass).
- ``lower``: ``<model_name>.tflite``, with ``serving_default`` signature keyed by the ONNX I/O
  names, producer metadata, and the runner (LiteRT, 1 thread). With verification data, LiteRT's
  outputs are compared with the FP32 reference outputs (:func:`edgecomp_tflite.runner.verify`);
  more than 1e-4 of an output's range is a :class:`~edgecomp.errors.VerificationError`.

Only float32 is lowered so far; INT8 (QDQ models) plugs in through
:mod:`edgecomp_tflite.tensor_types` and :mod:`edgecomp_tflite.ops.qdq`.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from edgecomp.backend import Artifact, LowerOptions, SupportReport
from edgecomp.errors import UnsupportedError, VerificationError
from edgecomp_tflite.context import LoweringSettings
from edgecomp_tflite.lower import find_unsupported, lower_model
from edgecomp_tflite.runner import FLOAT32_TOLERANCE, LiteRTRunner, verify
from edgecomp_tflite.tensor_types import FloatTensorTypes
from edgecomp_tflite.writer import BUFFER_ALIGNMENT

if TYPE_CHECKING:
    import onnx_ir as ir

    from edgecomp.targets import Target

logger = logging.getLogger(__name__)


class TFLiteBackend:
    """TFLite flatbuffer for LiteRT and TensorFlow Lite Micro.

    Args:
        io_layout: ``"onnx"`` (default) keeps graph inputs/outputs in their ONNX layout; ``"nhwc"``
            presents 4-D inputs/outputs channels-last. ``LowerOptions.io_layout``, once the core
            has it, overrides this per compile.
        grouped_convolution: ``"native"`` (grouped CONV_2D) or ``"split"`` (SPLIT/CONV_2D/CONCATENATION).
    """

    name = "tflite"
    description = ".tflite flatbuffer (LiteRT, TFLite Micro) written directly, channels-last, verified in LiteRT"

    def __init__(self, io_layout: str = "onnx", grouped_convolution: str = "native") -> None:
        self.settings = LoweringSettings(io_layout=io_layout, grouped_convolution=grouped_convolution)

    def support(self, model: "ir.Model", target: "Target") -> SupportReport:
        """Every node (and graph input) the float32 lowering cannot handle, with its reason. Does no work."""
        return SupportReport(self.name, tuple(find_unsupported(model, FloatTensorTypes())))

    def legalize(self, target: "Target") -> list[Any]:
        """No passes: layouts are tracked while lowering."""
        return []

    def lower(self, model: "ir.Model", target: "Target", options: LowerOptions) -> Artifact:
        """Lower ``model`` to ``<model_name>.tflite`` and verify it in LiteRT when given data.

        Raises:
            UnsupportedError: a node cannot be lowered, or the model is quantized (INT8 lowering
                is not implemented yet).
            VerificationError: LiteRT's outputs differ from the reference outputs by more than
                1e-4 of an output's range.
        """
        if options.quantize != "none":
            raise UnsupportedError(f"the tflite backend lowers float32 models only so far (--quantize none); INT8 ({options.quantize}) lowering is not implemented yet")
        settings = self.settings
        # --io-layout nchw asks for the ONNX model's channels-first boundary, which is "onnx" here
        io_layout = {"nchw": "onnx"}.get(options.io_layout, options.io_layout)
        if io_layout:
            settings = LoweringSettings(io_layout=io_layout, grouped_convolution=settings.grouped_convolution)
        plan = options.quantization_plan
        lowered = lower_model(model, FloatTensorTypes(), settings, quantization_plan=plan.encode() if isinstance(plan, str) else plan)
        runner = LiteRTRunner(lowered)
        metadata: dict[str, Any] = {
            "io_layout": settings.io_layout,
            "transposes_added": lowered.transposes_added,
            "fused_activations": lowered.fused_activations,
            "operators": sum(lowered.op_histogram.values()),
            "op_histogram": lowered.op_histogram,
            "operator_versions": lowered.operator_versions,
            "buffer_alignment_bytes": BUFFER_ALIGNMENT,
        }
        if options.verification_inputs and options.reference_outputs:
            result = verify(runner, options.verification_inputs, options.reference_outputs, FLOAT32_TOLERANCE)
            metadata["verification"] = {
                "max_abs_difference_relative_to_range": result.max_relative_difference,
                "per_output": result.per_output,
                "samples": result.samples,
                "tolerance": result.tolerance,
                "runtime": "LiteRT (ai_edge_litert), 1 thread",
            }
            if not result.passed:
                worst = max(result.per_output, key=result.per_output.get)
                raise VerificationError(
                    f"LiteRT output {worst!r} differs from the FP32 reference by {result.max_relative_difference:.2e} of its range "
                    f"(tolerance {result.tolerance:.0e}) on {result.samples} samples"
                )
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
