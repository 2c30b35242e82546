"""The backend contract: what a backend plugin implements and what it returns.

A backend lowers the quantized IR (an ``onnx_ir.Model`` in QDQ form) to what a device runs. It never
writes files: :meth:`Backend.lower` returns an :class:`Artifact` (file name -> bytes) and the core
writes it atomically. Backends register through :func:`edgecomp.hookspecs.edgecomp_register_backends`.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Callable, Mapping, Protocol, Sequence, runtime_checkable

import numpy as np

if TYPE_CHECKING:
    import onnx_ir as ir

    from edgecomp.targets import Target


@dataclasses.dataclass(frozen=True)
class Unsupported:
    """One node a backend cannot lower.

    Attributes:
        node: the ONNX node name (or the tensor name when the problem is a graph input/output).
        op_type: the ONNX operator type, with its domain when not the default one (``com.x::Op``).
        reason: one line saying why (missing kernel, dtype, quantization layout, attribute value).
    """

    node: str
    op_type: str
    reason: str


@dataclasses.dataclass(frozen=True)
class SupportReport:
    """The result of :meth:`Backend.support`: every node the backend cannot lower, before any work."""

    backend: str
    unsupported: tuple[Unsupported, ...] = ()

    @property
    def ok(self) -> bool:
        """True when the backend can lower every node."""
        return not self.unsupported


@dataclasses.dataclass(frozen=True)
class LowerOptions:
    """What the pipeline tells a backend when lowering.

    Attributes:
        quantize: the quantization mode the pipeline applied: ``none``, ``naive``, ``hybrid``,
            ``selective``, ``dynamic`` or ``qat``.
        verification_inputs: a few real input samples (input name -> array with batch axis) that
            the backend may run to check its artifact against the IR it was given.
        reference_outputs: the FP32 model's outputs for each of ``verification_inputs`` (one list
            of arrays per input, in graph output order), so a backend can measure what its
            artifact loses against float; empty when not computed.
        model_name: stem used for artifact file names (``mnist-8`` -> ``mnist-8.onnx``).
        io_layout: layout of 4-D graph inputs/outputs in the artifact: None keeps the ONNX model's
            layout, ``"nchw"`` or ``"nhwc"`` asks for that layout (backends whose runtime has a
            native layout, e.g. TFLite's NHWC, honour it; others report it unsupported).
        quantization_plan: the plan JSON text, for backends that embed it as metadata; None when
            the compile does not quantize.
        get_backend: looks up another registered backend by name (the ``c-array`` backend embeds
            another backend's artifact).
        backend_options: backend-specific settings (``--backend-option KEY=VALUE``), already
            checked by the pipeline against the backend's ``option_choices`` (an optional
            attribute: key -> tuple of allowed values); empty when none were given.
    """

    quantize: str = "none"
    verification_inputs: Sequence[Mapping[str, np.ndarray]] = ()
    reference_outputs: Sequence[Sequence[np.ndarray]] = ()
    model_name: str = "model"
    io_layout: str | None = None
    quantization_plan: str | None = None
    get_backend: Callable[[str], "Backend"] | None = None
    backend_options: Mapping[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Artifact:
    """What a backend produced, in memory.

    Attributes:
        backend: name of the backend that produced it.
        files: file name (relative, no directories) -> exact bytes to write.
        flash_bytes: bytes this artifact occupies in the device's read-only memory (for the
            target's flash budget check).
        metadata: JSON-serialisable facts for the compile report (verification figures, settings).
        runner: optional callable running the artifact on host: ``runner(feeds) -> list[np.ndarray]``
            with ``feeds`` input name -> array, outputs in graph output order. Used for ``--eval``.
        model: the IR the artifact holds, when the backend changed it while lowering (e.g. weights
            narrowed for a runtime's kernels); the pipeline refreshes the quantization plan from it.
    """

    backend: str
    files: dict[str, bytes]
    flash_bytes: int
    metadata: dict[str, Any] = dataclasses.field(default_factory=dict)
    runner: Callable[[Mapping[str, np.ndarray]], list[np.ndarray]] | None = None
    model: "ir.Model | None" = None


@runtime_checkable
class Backend(Protocol):
    """A backend plugin object.

    Attributes:
        name: the name users pass to ``--backend`` (lowercase, dashes).
        description: one line shown by ``edgecomp plugins``.
    """

    name: str
    description: str

    def support(self, model: "ir.Model", target: "Target") -> SupportReport:
        """List every node of ``model`` this backend cannot lower for ``target``. Does no work.

        A backend may also accept a keyword ``quantize`` (the quantization mode about to be applied:
        ``none``, ``naive``, ``hybrid``, ``dynamic``, ``qat``) to refuse a mode before calibration;
        the pipeline passes it only to ``support`` methods that declare it.
        """

    def legalize(self, target: "Target") -> list[Any]:
        """Passes (``onnx_ir.passes.PassBase``) to run on the quantized IR before :meth:`lower`."""

    def lower(self, model: "ir.Model", target: "Target", options: LowerOptions) -> Artifact:
        """Lower ``model`` to an :class:`Artifact`.

        Raises:
            UnsupportedError: a node cannot be lowered after all.
            VerificationError: the backend's own check of its artifact failed.
        """
