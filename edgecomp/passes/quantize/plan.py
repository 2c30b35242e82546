"""The quantization plan: every quantization decision, kept as data and written beside the artifacts as JSON.

Per node: the precision it runs in and why. Per tensor: dtype, granularity, axis, scale, zero point
and how the parameters were obtained (calibration method, weight abs-max, ``s_in * s_w`` for biases,
shared with another tensor, or fixed by the int8 specification). Scales are float32 values written
as JSON numbers with enough digits to round-trip exactly.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

PLAN_FORMAT_VERSION = 1


@dataclasses.dataclass(frozen=True)
class NodePlan:
    """The precision of one node.

    Attributes:
        name: ONNX node name.
        op_type: ONNX operator type.
        precision: ``int8`` (runs on quantized inputs/outputs) or ``fp32``.
        reason: why this precision was chosen, one line.
    """

    name: str
    op_type: str
    precision: str
    reason: str


@dataclasses.dataclass(frozen=True)
class TensorPlan:
    """The quantization parameters of one tensor: ``real = (q - zero_point) * scale``.

    Attributes:
        name: ONNX tensor name (as in the input model).
        role: ``activation``, ``weight``, ``bias`` or ``constant``.
        dtype: quantized storage type, ``int8`` or ``int32``.
        granularity: ``per-tensor`` or ``per-channel``.
        axis: the channel axis for per-channel parameters, else None.
        scale: one float32 scale per channel (one element when per-tensor).
        zero_point: one zero point per channel, same length as ``scale``.
        method: how the parameters were obtained (``minmax``/``percentile``/``entropy``/``mse``
            calibration, ``absmax`` for weights, ``s_in*s_w`` for biases, ``shared:<tensor>``, ``fixed``).
        range: the real-valued clipping range (min, max) chosen for activations, else None.
    """

    name: str
    role: str
    dtype: str
    granularity: str
    axis: int | None
    scale: tuple[float, ...]
    zero_point: tuple[int, ...]
    method: str
    range: tuple[float, float] | None = None


@dataclasses.dataclass(frozen=True)
class QuantizationPlan:
    """All quantization decisions for one compile.

    Attributes:
        mode: ``naive`` (every quantizable node int8, one calibration method).
        calibration_method: the observer used for activations.
        calibration_samples: number of calibration samples seen.
        nodes: one :class:`NodePlan` per node of the input graph, in topological order.
        tensors: one :class:`TensorPlan` per quantized tensor, sorted by name.
        notes: free-form remarks (e.g. a weight range narrowed for a runtime's kernels).
    """

    mode: str
    calibration_method: str
    calibration_samples: int
    nodes: tuple[NodePlan, ...]
    tensors: tuple[TensorPlan, ...]
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """The plan as plain JSON-serialisable data, with a format version."""
        data = dataclasses.asdict(self)
        data = {"format_version": PLAN_FORMAT_VERSION, **data}
        return data

    def to_json(self) -> str:
        """Deterministic JSON text (sorted keys, two-space indent, trailing newline)."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def tensor(self, name: str) -> TensorPlan:
        """The plan entry of tensor ``name``; KeyError when it is not quantized."""
        for entry in self.tensors:
            if entry.name == name:
                return entry
        raise KeyError(name)
