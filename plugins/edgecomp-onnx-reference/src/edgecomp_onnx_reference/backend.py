"""The ``onnx-reference`` backend: the model as ``.onnx``, run on host by the ONNX reference implementation.

The artifact is the IR edgecomp hands over (float, or QDQ after quantization) serialised as one
ONNX file. When the reference implementation lacks an operator at the model's opset but has it
at :data:`UPGRADE_OPSET` (it has DequantizeLinear only from opset 19, so this holds for every QDQ
model below opset 19), the default-domain opset is first upgraded with ``onnx.version_converter``.

The host runner is :class:`onnx.reference.ReferenceEvaluator`, the ONNX project's NumPy executor
written to follow the operator specifications literally: slow, but independent of ONNX Runtime,
so ``--eval`` with this backend cross-checks what other runtimes compute (QuantizeLinear and
DequantizeLinear as in the ONNX operator specs, no fused integer kernels).

Uses only edgecomp's public plugin API: :mod:`edgecomp.backend`, :mod:`edgecomp.errors` and
:func:`edgecomp.ir.load.to_bytes`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import onnx
import onnx.version_converter
import onnx_ir as ir
from onnx.reference import ReferenceEvaluator
from onnx.reference.op_run import RuntimeContextError
from onnx.reference.ops import load_op as load_default_op
from onnx.reference.ops.aionnx_preview import load_op as load_preview_op
from onnx.reference.ops.aionnx_preview_training import load_op as load_training_op
from onnx.reference.ops.aionnxml import load_op as load_ml_op
from onnx.reference.ops.experimental import load_op as load_experimental_op

from edgecomp.backend import Artifact, LowerOptions, SupportReport, Unsupported
from edgecomp.errors import UnsupportedError, VerificationError
from edgecomp.ir.load import to_bytes

# The operator registries of onnx.reference, one per domain it implements, as ReferenceEvaluator
# picks them (onnx/reference/reference_evaluator.py, ``_load_impl``). Each ``load_op(domain,
# op_type, version)`` returns the implementing class, or raises when there is none.
DOMAIN_REGISTRIES: dict[str, Callable[..., Any]] = {
    "ai.onnx.ml": load_ml_op,
    "ai.onnx.preview": load_preview_op,
    "ai.onnx.preview.training": load_training_op,
    "experimental": load_experimental_op,
}

# onnx.reference implements DequantizeLinear only from opset 19; opset 21 is also the first whose
# QuantizeLinear/DequantizeLinear take 16-bit integers (a precision edgecomp's plan can choose).
UPGRADE_OPSET = 21

# With quantize=none the reference evaluator runs the same float model ONNX Runtime ran for the
# FP32 reference; they must agree to this fraction of each output's range (float32 summation
# order differs between the two, nothing else may).
FLOAT_TOLERANCE = 1e-4


def _op_label(node: ir.Node) -> str:
    return f"{node.domain}::{node.op_type}" if node.domain else node.op_type


def _all_nodes(model: ir.Model):
    """Every node, including those in If/Loop/Scan bodies (the evaluator runs those too)."""
    return ir.traversal.RecursiveGraphIterator(model.graph)


def why_unsupported(node: ir.Node, opsets: Mapping[str, int], functions: set[tuple[str, str]]) -> str | None:
    """Why ``onnx.reference`` cannot run ``node``, or None when it can. Runs nothing.

    Asks the evaluator's operator registry for ``(domain, op_type, opset version)`` the way
    :class:`~onnx.reference.ReferenceEvaluator` does when it builds its node list: a registered
    implementation, an operator the ONNX schema defines as a function of other operators, or a
    model-local function all run; anything else does not.

    Args:
        node: an IR node.
        opsets: the model's opset imports (domain -> version).
        functions: ``(domain, name)`` of the model's local functions.

    Returns:
        One line naming what is missing, or None.
    """
    domain = "" if node.domain in ("", "ai.onnx") else node.domain
    if (domain, node.op_type) in functions:
        return None
    if domain not in opsets:
        return f"domain {domain!r} is not in the model's opset imports"
    version = node.version or opsets[domain]
    if domain == "":
        problem = _default_domain_problem(node, version)
        if problem and version < UPGRADE_OPSET and not _default_domain_problem(node, UPGRADE_OPSET):
            return None  # lower() upgrades the model to UPGRADE_OPSET
        return problem
    registry = DOMAIN_REGISTRIES.get(domain)
    if registry is None:
        return (
            f"onnx.reference runs the ai.onnx, {', '.join(DOMAIN_REGISTRIES)} domains and model-local "
            f"functions, not {domain!r}"
        )
    try:
        registry(domain, node.op_type, version)
    except (NotImplementedError, RuntimeError, ValueError):
        return f"onnx.reference (onnx {onnx.__version__}) has no implementation of {domain}::{node.op_type} for opset {version}"
    return None


def _default_domain_problem(node: ir.Node, version: int) -> str | None:
    """Why the default-domain registry has no implementation of ``node`` at ``version``, or None."""
    try:
        load_default_op("", node.op_type, version, evaluator_cls=ReferenceEvaluator)
    except RuntimeContextError:
        # A function whose body depends on input types (e.g. Gelu, GroupNormalization): the
        # evaluator expands it when the graph declares those types.
        if all(value is not None and value.type is not None for value in node.inputs):
            return None
        return f"{node.op_type} (opset {version}) runs as a type-dependent function and an input type is unknown"
    except (NotImplementedError, RuntimeError, ValueError):  # onnx's own, with long messages
        return f"onnx.reference (onnx {onnx.__version__}) has no implementation of {node.op_type} for opset {version}"
    return None


def needs_upgrade(model: ir.Model) -> bool:
    """True when some default-domain node has no reference implementation at the model's opset."""
    version = model.opset_imports.get("", 0)
    return version < UPGRADE_OPSET and any(
        node.domain in ("", "ai.onnx") and _default_domain_problem(node, node.version or version) for node in _all_nodes(model)
    )


def upgrade_opset(model: ir.Model) -> ir.Model:
    """``model`` converted to default-domain opset :data:`UPGRADE_OPSET` (a new IR; ``model`` is unchanged).

    Raises:
        UnsupportedError: ``onnx.version_converter`` cannot convert some node (its first line).
    """
    proto = onnx.load_from_string(to_bytes(model))
    try:
        converted = onnx.version_converter.convert_version(proto, UPGRADE_OPSET)
    except Exception as exc:  # noqa: BLE001 - the converter raises RuntimeError, ValidationError, ...
        raise UnsupportedError(
            f"the ONNX reference evaluator needs opset {UPGRADE_OPSET} for this model and onnx.version_converter cannot convert it: {str(exc).strip().splitlines()[0]}"
        ) from None
    return ir.serde.deserialize_model(converted)


def _range_fraction(expected: np.ndarray, actual: np.ndarray) -> float:
    """max |actual - expected| as a fraction of expected's range (dimensionless)."""
    expected = np.asarray(expected, np.float64)
    scale = max(float(np.ptp(expected)), 1e-12)
    return float(np.max(np.abs(np.asarray(actual, np.float64) - expected), initial=0.0)) / scale


def _sqnr_db(expected: np.ndarray, actual: np.ndarray) -> float:
    """Signal-to-quantization-noise ratio 10*log10(sum(expected^2) / sum((expected-actual)^2)), dB."""
    expected, actual = np.asarray(expected, np.float64), np.asarray(actual, np.float64)
    noise = float(np.sum((expected - actual) ** 2))
    return float("inf") if noise == 0.0 else 10.0 * float(np.log10(float(np.sum(expected**2)) / noise))


class OnnxReferenceBackend:
    """The model as ``<name>.onnx``, executed on host by ``onnx.reference.ReferenceEvaluator``."""

    name = "onnx-reference"
    description = ".onnx run by the ONNX reference evaluator (onnx.reference, NumPy): slow, spec-faithful cross-check"

    def support(self, model: ir.Model, target) -> SupportReport:
        """Every node whose operator ``onnx.reference`` has no implementation for (see :func:`why_unsupported`).

        The evaluator is NumPy and runs on any host, so ``target`` does not restrict it. Operators
        that are registered but refuse some attribute values at run time are not detected here.
        """
        opsets = dict(model.opset_imports)
        functions = {(domain, name) for domain, name, *_ in model.functions}
        unsupported = []
        for node in _all_nodes(model):
            reason = why_unsupported(node, opsets, functions)
            if reason:
                unsupported.append(Unsupported(node.name or "*", _op_label(node), reason))
        return SupportReport(self.name, tuple(unsupported))

    def legalize(self, target) -> list:
        """No legalisation: the evaluator runs the QDQ IR as it is."""
        return []

    def lower(self, model: ir.Model, target, options: LowerOptions) -> Artifact:
        """Serialise ``model`` to ``<model_name>.onnx`` and run it in the reference evaluator.

        The model is first upgraded to opset :data:`UPGRADE_OPSET` when the reference
        implementation lacks one of its operators at its own opset (any QDQ model below opset 19).

        With verification inputs, every output is compared with the FP32 reference outputs the
        pipeline computed with ONNX Runtime: for a float model they must agree within
        :data:`FLOAT_TOLERANCE` of the output range; for a quantized model the SQNR (dB) against
        FP32 is reported.

        Raises:
            UnsupportedError: an input/output layout change was asked for (``--io-layout``), the
                opset upgrade failed, or the evaluator cannot load the model.
            VerificationError: the float model's outputs differ from ONNX Runtime's.
        """
        if options.io_layout:
            raise UnsupportedError(f"backend {self.name!r} keeps the ONNX model's input/output layout; --io-layout {options.io_layout} is not supported")
        original_opset = model.opset_imports.get("", 0)
        upgraded = upgrade_opset(model) if needs_upgrade(model) else None
        if upgraded is not None:
            model = upgraded
        onnx_bytes = to_bytes(model)
        try:
            evaluator = ReferenceEvaluator(onnx.load_from_string(onnx_bytes))
        except Exception as exc:  # noqa: BLE001 - support() missed it; onnx raises many types
            raise UnsupportedError(f"the ONNX reference evaluator cannot load the model: {type(exc).__name__}: {str(exc).strip().splitlines()[0]}") from None

        def runner(feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
            return [np.asarray(output) for output in evaluator.run(None, dict(feeds))]

        metadata: dict[str, Any] = {"runner": f"onnx.reference.ReferenceEvaluator (onnx {onnx.__version__})"}
        if upgraded is not None:
            metadata["opset"] = f"upgraded from {original_opset} to {UPGRADE_OPSET} (onnx.reference has no implementation of some op at {original_opset})"
        if options.verification_inputs and options.reference_outputs:
            metadata.update(self._verify(runner, options.verification_inputs, options.reference_outputs, options.quantize))
        return Artifact(
            backend=self.name,
            files={f"{options.model_name}.onnx": onnx_bytes},
            flash_bytes=len(onnx_bytes),
            metadata=metadata,
            runner=runner,
            model=upgraded,  # the IR the artifact holds, when it is not the one edgecomp gave
        )

    @staticmethod
    def _verify(runner, inputs: Sequence[Mapping[str, np.ndarray]], reference: Sequence[Sequence[np.ndarray]], quantize: str) -> dict[str, Any]:
        worst_fraction, worst_sqnr = 0.0, float("inf")
        for feeds, expected_outputs in zip(inputs, reference):
            for expected, actual in zip(expected_outputs, runner(feeds)):
                worst_fraction = max(worst_fraction, _range_fraction(expected, actual))
                worst_sqnr = min(worst_sqnr, _sqnr_db(expected, actual))
        if quantize == "none" and worst_fraction > FLOAT_TOLERANCE:
            raise VerificationError(
                f"the reference evaluator and ONNX Runtime disagree on the float model by {worst_fraction:.3g} of the output range (tolerance {FLOAT_TOLERANCE})"
            )
        return {
            "samples_checked": int(sum(len(next(iter(feeds.values()))) for feeds in inputs)),
            "max_error_vs_fp32_of_range": worst_fraction,
            "sqnr_vs_fp32_db": worst_sqnr if np.isfinite(worst_sqnr) else "identical outputs",
        }
