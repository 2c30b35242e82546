"""Quantization-friendliness checks: graph patterns that INT8 quantization handles badly, as warnings.

Run on the float model before calibration (structure only), or again with the calibrated ranges
to say how bad it is. Each warning names the node at fault. The checks and why they matter for
asymmetric per-tensor int8 activations (TFLite int8 quantization specification):

- ``silu``: SiLU/Swish ``x * Sigmoid(x)`` (and ``x * HardSigmoid(x)``, ``HardSwish``). Its output
  dips to -0.278 (SiLU, at x = -1.278) or -0.375 (HardSwish, at x = -1.5) and rises to about its
  input's maximum; one int8 grid over ``[dip, max]`` leaves the negative part a handful of levels
  when the range is wide, where the function carries its information.
- ``pad-before-pool``: a constant Pad with ``-inf`` or a value far outside its input's range feeding
  MaxPool/AveragePool (the TensorFlow way of spelling "SAME" max pooling). The fill value becomes
  part of the tensor's range, so its int8 scale is infinite or coarse.
- ``concat-ranges``: Concat inputs whose calibrated ranges differ by more than :data:`CONCAT_RANGE_RATIO`.
  A Concat's inputs and output share one scale and zero point (TFLite int8 spec), so the narrow
  input gets a fraction of the 256 levels.
- ``decomposed-layernorm``: ``ReduceMean -> Sub -> Pow|Mul -> ReduceMean -> Add -> Sqrt -> Div``.
  Each intermediate gets its own int8 grid: the variance spans the square of the input range and
  the epsilon vanishes under its step; keep the chain in float or use LayerNormalization (opset 17).
- ``softmax-saturation``: Softmax outputs near 1.0: the top probability above 255/256 saturates
  the fixed output grid (scale 1/256, zero point -128: q = 127 is 0.996); a kernel using another
  zero point wraps to -128. Decided by the observed output maximum when ``ranges`` has it; else
  from the input's range: ``p_max = 1 / (1 + (n - 1) e^-g)`` for a gap ``g`` between the top
  logit and the other ``n - 1``, so ``p_max > 255/256`` needs ``g > ln(255 (n - 1))``, and the
  range width ``max - min`` bounds ``g`` (``n`` from the shape, 2 when unknown).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Mapping

import numpy as np
import onnx_ir as ir

from edgecomp.ir.values import constant_array

CONCAT_RANGE_RATIO = 10.0
"""Concat inputs whose range widths differ by more than this factor are reported."""

SILU_MIN_NEGATIVE_LEVELS = 16
"""A SiLU/HardSwish whose negative dip gets fewer int8 levels than this (4 bits) has a wide range."""

PAD_RANGE_STRETCH = 2.0
"""A Pad fill value that widens its input's range by more than this factor (1 bit) is reported."""

LARGE_PAD_VALUE = 1e4
"""Without ranges, a Pad fill value at least this large in magnitude is reported."""

SOFTMAX_SATURATION = 255.0 / 256.0
"""Probability at which the int8 Softmax output (scale 1/256, zero point -128) reaches q = 127."""

SILU_DIP = (-1.2784645, -0.2784645)
"""(x, SiLU(x)) at SiLU's minimum: x * sigmoid(x) has its least value -0.278 at x = -1.278."""

HARDSWISH_DIP = (-1.5, -0.375)
"""(x, HardSwish(x)) at HardSwish's minimum: x * clip(x/6 + 1/2, 0, 1) is -0.375 at x = -1.5."""

Range = tuple[float, float]


@dataclasses.dataclass(frozen=True)
class FriendlinessWarning:
    """One quantization-friendliness problem.

    Attributes:
        node: the name of the node at fault.
        kind: ``silu``, ``pad-before-pool``, ``concat-ranges``, ``decomposed-layernorm`` or ``softmax-saturation``.
        message: one line saying what and, when ranges were given, how much.
    """

    node: str
    kind: str
    message: str


def _producer(value: ir.Value | None, *op_types: str) -> ir.Node | None:
    """The node producing ``value`` when its operator is one of ``op_types`` (default domain), else None."""
    node = value.producer() if value is not None else None
    if node is None or node.op_type not in op_types or node.domain not in ("", "ai.onnx"):
        return None
    return node


def _value_range(value: ir.Value | None, ranges: Mapping[str, Range] | None) -> Range | None:
    """The (min, max) of ``value``: its calibrated range, or the data of a constant."""
    if value is None:
        return None
    array = constant_array(value)
    if array is not None and array.size and np.issubdtype(array.dtype, np.floating):
        finite = array[np.isfinite(array)]
        return (float(finite.min()), float(finite.max())) if finite.size else None
    if ranges is not None and value.name in ranges:
        low, high = ranges[value.name]
        return float(low), float(high)
    return None


def _scalar(value: ir.Value | None) -> float | None:
    array = constant_array(value)
    return float(array.reshape(-1)[0]) if array is not None and array.size == 1 else None


def _silu(x: np.ndarray) -> np.ndarray:
    return x / (1.0 + np.exp(-x))


def _hardswish(x: np.ndarray) -> np.ndarray:
    return x * np.clip(x / 6.0 + 0.5, 0.0, 1.0)


def _silu_like(node: ir.Node) -> tuple[str, ir.Value, Callable[[np.ndarray], np.ndarray], tuple[float, float]] | None:
    """(name of the function, its input, the function, its dip) when ``node`` computes SiLU or HardSwish."""
    if node.domain not in ("", "ai.onnx"):
        return None
    if node.op_type == "HardSwish":
        return "HardSwish", node.inputs[0], _hardswish, HARDSWISH_DIP
    if node.op_type != "Mul" or len(node.inputs) != 2:
        return None
    for x, gate in (node.inputs, node.inputs[::-1]):
        sigmoid = _producer(gate, "Sigmoid", "HardSigmoid")
        if sigmoid is None or sigmoid.inputs[0] is not x:
            continue
        if sigmoid.op_type == "Sigmoid":
            return "SiLU (x * Sigmoid(x))", x, _silu, SILU_DIP
        alpha, beta = sigmoid.attributes.get_float("alpha", 0.2), sigmoid.attributes.get_float("beta", 0.5)
        if math.isclose(alpha, 1 / 6, rel_tol=1e-3) and math.isclose(beta, 0.5, rel_tol=1e-3):
            return "HardSwish (x * HardSigmoid(x))", x, _hardswish, HARDSWISH_DIP
    return None


def _check_silu(node: ir.Node, ranges: Mapping[str, Range] | None) -> FriendlinessWarning | None:
    match = _silu_like(node)
    if match is None:
        return None
    what, x, function, (dip_x, dip_y) = match
    if ranges is None:
        return FriendlinessWarning(node.name, "silu", f"{what}: its negative part (min {dip_y:.3f}) gets few int8 levels when its range is wide; calibrate to measure")
    output = _value_range(node.outputs[0], ranges)
    if output is None:
        given = _value_range(x, ranges)
        if given is None:
            return None
        points = np.array([given[0], given[1]] + ([dip_x] if given[0] < dip_x < given[1] else []))
        values = function(points)
        output = (float(values.min()), float(values.max()))
    low, high = min(output[0], 0.0), max(output[1], 0.0)
    if low >= 0.0:
        return None  # never negative on the calibration data: the dip is not used
    step = (high - low) / 255.0
    levels = -low / step
    if levels >= SILU_MIN_NEGATIVE_LEVELS:
        return None
    return FriendlinessWarning(
        node.name, "silu",
        f"{what} output range [{low:.4g}, {high:.4g}]: int8 step {step:.4g}, so its negative part (min {dip_y:.3f}) "
        f"gets {levels:.1f} of 256 levels (< {SILU_MIN_NEGATIVE_LEVELS})",
    )


def _pad_value(node: ir.Node) -> float | None:
    """The constant fill value of a Pad (input 2 from opset 11, attribute ``value`` before), or None when not constant mode."""
    if node.attributes.get_string("mode", "constant") != "constant":
        return None
    if len(node.inputs) > 2 and node.inputs[2] is not None:
        return _scalar(node.inputs[2])
    return node.attributes.get_float("value", 0.0)


def _check_pad(node: ir.Node, ranges: Mapping[str, Range] | None) -> FriendlinessWarning | None:
    if node.op_type != "Pad" or node.domain not in ("", "ai.onnx"):
        return None
    pools = [use.node for use in node.outputs[0].uses() if use.node.op_type in ("MaxPool", "AveragePool")]
    value = _pad_value(node)
    if not pools or value is None:
        return None
    pool = pools[0]
    if not math.isfinite(value):
        return FriendlinessWarning(node.name, "pad-before-pool", f"Pad fills with {value} before {pool.op_type} {pool.name!r}: an int8 range cannot hold it; fold the padding into the pool")
    given = _value_range(node.inputs[0], ranges)
    if given is not None:
        low, high = min(given[0], 0.0), max(given[1], 0.0)
        stretched = (min(low, value), max(high, value))
        stretch = (stretched[1] - stretched[0]) / (high - low) if high > low else math.inf
        if stretch > PAD_RANGE_STRETCH:
            return FriendlinessWarning(
                node.name, "pad-before-pool",
                f"Pad fills with {value:.4g} before {pool.op_type} {pool.name!r}: it widens the input range [{low:.4g}, {high:.4g}] "
                f"{stretch:.3g}x, so the int8 step grows as much; fold the padding into the pool",
            )
        return None
    if abs(value) >= LARGE_PAD_VALUE:
        return FriendlinessWarning(
            node.name, "pad-before-pool",
            f"Pad fills with {value:.4g} before {pool.op_type} {pool.name!r}: the fill value becomes part of the int8 range; fold the padding into the pool",
        )
    return None


def _check_concat(node: ir.Node, ranges: Mapping[str, Range] | None) -> FriendlinessWarning | None:
    if node.op_type != "Concat" or node.domain not in ("", "ai.onnx") or len(node.inputs) < 2:
        return None
    widths = {}
    for value in node.inputs:
        given = _value_range(value, ranges)
        if given is not None:
            widths[value.name] = max(given[1], 0.0) - min(given[0], 0.0)
    if len(widths) < 2:
        return None
    widest, narrowest = max(widths, key=widths.get), min(widths, key=widths.get)
    if widths[narrowest] > 0 and widths[widest] / widths[narrowest] <= CONCAT_RANGE_RATIO:
        return None
    ratio = widths[widest] / widths[narrowest] if widths[narrowest] > 0 else math.inf
    return FriendlinessWarning(
        node.name, "concat-ranges",
        f"Concat inputs {widest!r} (range width {widths[widest]:.4g}) and {narrowest!r} ({widths[narrowest]:.4g}) differ {ratio:.3g}x "
        f"(> {CONCAT_RANGE_RATIO:g}x); they share one int8 scale, leaving {narrowest!r} about {256 / ratio:.3g} levels",
    )


def _check_layernorm(node: ir.Node, ranges: Mapping[str, Range] | None) -> FriendlinessWarning | None:
    """Div(d, Sqrt(Add(ReduceMean(Pow(d, 2) | Mul(d, d)), eps))) with d = Sub(x, ReduceMean(x))."""
    if node.op_type != "Div" or node.domain not in ("", "ai.onnx") or len(node.inputs) != 2:
        return None
    centred, denominator = node.inputs
    sub = _producer(centred, "Sub")
    mean = _producer(sub.inputs[1], "ReduceMean") if sub is not None else None
    sqrt = _producer(denominator, "Sqrt")
    add = _producer(sqrt.inputs[0], "Add") if sqrt is not None else None
    if mean is None or add is None or mean.inputs[0] is not sub.inputs[0]:
        return None
    for variance, epsilon in (add.inputs, add.inputs[::-1]):
        mean_of_squares = _producer(variance, "ReduceMean")
        square = _producer(mean_of_squares.inputs[0], "Pow", "Mul") if mean_of_squares is not None else None
        if square is None or constant_array(epsilon) is None:
            continue
        squares_centred = (square.op_type == "Mul" and square.inputs[0] is centred and square.inputs[1] is centred) or (
            square.op_type == "Pow" and square.inputs[0] is centred and _scalar(square.inputs[1]) == 2.0
        )
        if squares_centred:
            chain = " -> ".join(f"{n.op_type} {n.name!r}" for n in (mean, sub, square, mean_of_squares, add, sqrt, node))
            return FriendlinessWarning(
                node.name, "decomposed-layernorm",
                f"LayerNormalization decomposed into {chain}: in int8 the variance spans the square of the input range "
                f"and the epsilon is lost under its step; keep it in float or use LayerNormalization",
            )
    return None


def _softmax_classes(node: ir.Node) -> int | None:
    shape = node.inputs[0].shape
    if shape is None:
        return None
    dim = shape[node.attributes.get_int("axis", -1)]
    return dim if isinstance(dim, int) else None


def _check_softmax(node: ir.Node, ranges: Mapping[str, Range] | None) -> FriendlinessWarning | None:
    if node.op_type != "Softmax" or node.domain not in ("", "ai.onnx") or ranges is None:
        return None
    observed = ranges.get(node.outputs[0].name)
    if observed is not None:  # what the data did decides; the logit bound below is only an upper bound
        if observed[1] <= SOFTMAX_SATURATION:
            return None
        return FriendlinessWarning(
            node.name, "softmax-saturation",
            f"Softmax output reaches {observed[1]:.6g} > 255/256: it saturates the int8 output grid (scale 1/256, zero point -128) at q = 127",
        )
    logits = _value_range(node.inputs[0], ranges)
    if logits is None:
        return None
    classes = _softmax_classes(node) or 2
    gap, needed = logits[1] - logits[0], math.log(255.0 * max(classes - 1, 1))
    if gap <= needed:
        return None
    return FriendlinessWarning(
        node.name, "softmax-saturation",
        f"Softmax input range [{logits[0]:.4g}, {logits[1]:.4g}] allows a logit gap of {gap:.4g} > ln(255*({classes}-1)) = {needed:.3g}: "
        f"the top probability can exceed 255/256 and saturate the int8 output grid (scale 1/256, zero point -128) at q = 127",
    )


CHECKS = (_check_silu, _check_pad, _check_concat, _check_layernorm, _check_softmax)


def check_model(model: ir.Model, ranges: Mapping[str, Range] | None = None) -> list[FriendlinessWarning]:
    """Quantization-friendliness warnings for the float ``model``, in graph order.

    Args:
        model: a float IR model (canonicalized or not); not modified.
        ranges: tensor name -> (min, max) in real units from calibration (for example
            :func:`collect_ranges`, or the ``range`` of the plan's activation entries). Without it
            only the structural checks run (SiLU, Pad with -inf or a fill value >= 1e4,
            decomposed LayerNorm, and Concat of constants); with it the SiLU, Pad, Concat and
            Softmax checks say how wide the ranges are and stay silent when they are harmless.

    Returns:
        One :class:`FriendlinessWarning` per problem found (at most one per node).
    """
    warnings = []
    for node in model.graph:
        for check in CHECKS:
            warning = check(node, ranges)
            if warning is not None:
                warnings.append(warning)
                break
    return warnings
