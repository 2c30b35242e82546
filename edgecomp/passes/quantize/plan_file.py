"""Apply a user-edited quantization plan (``edgecomp compile --plan FILE``).

The file has the shape edgecomp writes (``quantization_plan.json``, :class:`QuantizationPlan`).
What a user can change, and what is read back:

- ``nodes[i].precision``: ``int8`` or ``fp32`` per node (``fp16``/``int16`` are rejected: not yet
  supported by any backend here);
- ``tensors[j].method`` of an activation: a calibration method (``minmax``, ``percentile``,
  ``entropy``, ``mse``) for that tensor, or ``fixed`` to use the entry's ``scale`` and
  ``zero_point`` as they are (one each, per tensor);
- everything else (reasons, ranges, weight and bias entries) is informational and recomputed.

Every error is a :class:`~edgecomp.errors.PlanError` naming the file, the JSON key path and the node
or tensor at fault.
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
from typing import Any

import onnx_ir as ir

from edgecomp.errors import PlanError
from edgecomp.passes.quantize.observers import METHODS
from edgecomp.passes.quantize.plan import PLAN_FORMAT_VERSION

PRECISIONS = ("int8", "fp32")
FIXED = "fixed"


@dataclasses.dataclass(frozen=True)
class PlanRequest:
    """What a plan file asks for.

    Attributes:
        float_nodes: node name -> reason, for nodes the plan keeps in fp32.
        tensor_methods: activation tensor -> calibration method.
        fixed_params: activation tensor -> (scale, zero point) to use as given.
    """

    float_nodes: dict[str, str]
    tensor_methods: dict[str, str]
    fixed_params: dict[str, tuple[float, int]]

    def choose(self, node: ir.Node) -> str | None:
        """The node chooser for :func:`edgecomp.passes.quantize.naive.quantize_int8`."""
        return self.float_nodes.get(node.name)


def _entries(data: dict[str, Any], key: str, where: str) -> list[dict[str, Any]]:
    entries = data.get(key, [])
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise PlanError(f"{where}: key '{key}' must be a list of objects")
    return entries


def read_plan(path: str | pathlib.Path, model: ir.Model) -> PlanRequest:
    """Read and validate a plan file against ``model`` (the canonicalized float IR).

    Raises:
        PlanError: missing or invalid JSON, wrong format version, an unknown node or tensor name,
            a precision other than int8/fp32, int8 asked for a node with no int8 kernel, an unknown
            method, or a ``fixed`` entry whose scale is not a positive finite number or whose zero
            point is not an integer in [-128, 127].
    """
    from edgecomp.passes.quantize.naive import INT8_OPS

    where = str(path)
    try:
        data = json.loads(pathlib.Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PlanError(f"{where}: plan file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PlanError(f"{where}: not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise PlanError(f"{where}: the plan must be a JSON object")
    if data.get("format_version") != PLAN_FORMAT_VERSION:
        raise PlanError(f"{where}: key 'format_version' must be {PLAN_FORMAT_VERSION}, got {data.get('format_version')!r}")
    nodes = {node.name: node for node in model.graph}
    float_nodes: dict[str, str] = {}
    for index, entry in enumerate(_entries(data, "nodes", where)):
        key = f"nodes[{index}]"
        name, precision = entry.get("name"), entry.get("precision")
        if name not in nodes:
            raise PlanError(f"{where}: {key}.name: unknown node {name!r}")
        if precision not in PRECISIONS:
            raise PlanError(f"{where}: {key}.precision of node {name!r}: {precision!r} is not supported (use {' or '.join(PRECISIONS)})")
        if precision == "int8" and nodes[name].op_type not in INT8_OPS:
            raise PlanError(f"{where}: {key}.precision of node {name!r}: {nodes[name].op_type} has no int8 kernel")
        if precision == "fp32":
            float_nodes[name] = "the plan file keeps it in fp32"
    values = {v.name for node in model.graph for v in (*node.inputs, *node.outputs) if v is not None}
    tensor_methods: dict[str, str] = {}
    fixed_params: dict[str, tuple[float, int]] = {}
    for index, entry in enumerate(_entries(data, "tensors", where)):
        key = f"tensors[{index}]"
        name, method = entry.get("name"), entry.get("method")
        if name not in values:
            raise PlanError(f"{where}: {key}.name: unknown tensor {name!r}")
        if entry.get("role", "activation") != "activation":
            continue  # weights, biases: recomputed from the float weights
        if method in METHODS:
            tensor_methods[name] = method
        elif method == FIXED:
            fixed_params[name] = _fixed(entry, f"{where}: {key} (tensor {name!r})")
        elif not (isinstance(method, str) and method.startswith("shared:")):
            raise PlanError(f"{where}: {key}.method of tensor {name!r}: {method!r} is not one of {', '.join((*METHODS, FIXED))}")
    return PlanRequest(float_nodes, tensor_methods, fixed_params)


def _fixed(entry: dict[str, Any], where: str) -> tuple[float, int]:
    scale, zero_point = entry.get("scale"), entry.get("zero_point")
    if not (isinstance(scale, list) and len(scale) == 1 and isinstance(zero_point, list) and len(zero_point) == 1):
        raise PlanError(f"{where}: a fixed activation needs one 'scale' and one 'zero_point' (per tensor)")
    (scale,), (zero_point,) = scale, zero_point
    if not isinstance(scale, (int, float)) or isinstance(scale, bool) or not math.isfinite(scale) or scale <= 0:
        raise PlanError(f"{where}: 'scale' must be a positive finite number, got {scale!r}")
    if not isinstance(zero_point, int) or isinstance(zero_point, bool) or not -128 <= zero_point <= 127:
        raise PlanError(f"{where}: 'zero_point' must be an integer in [-128, 127], got {zero_point!r}")
    return float(scale), int(zero_point)
