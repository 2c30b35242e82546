"""Cross-layer equalization (CLE) of the float model's weights, before quantization.

Nagel, van Baalen, Blankevoort, Welling, "Data-Free Quantization Through Weight Equalization and
Bias Correction", ICCV 2019, section 4.1. For two layers ``y = f(W1 x + b1)`` and ``z = W2 y + b2``
where ``f`` is positive homogeneous per channel (``f(x / s) = f(x) / s`` for ``s > 0``: ReLU,
LeakyReLU, max and average pooling), dividing output channel ``i`` of layer 1 (its weights and
bias) by ``s_i`` and multiplying the matching input channel of layer 2 by ``s_i`` leaves the float
function unchanged. The scale that makes both channels' weight ranges equal is (equation 11)

    s_i = sqrt(r1_i * r2_i) / r2_i = sqrt(r1_i / r2_i)

with ``r1_i`` the range of output channel ``i`` of ``W1`` and ``r2_i`` the range of input channel
``i`` of ``W2``; afterwards both ranges are ``sqrt(r1_i * r2_i)``. Ranges here are ``max |w|``,
the range the symmetric int8 weight quantizer uses (TFLite int8 spec; :func:`quantize_weight`).
A layer inside a chain (``L1 -> L2 -> L3``) belongs to two pairs, so the pairs are swept in graph
order until the scales stop changing (the paper's "until convergence").

What it helps: per-TENSOR weight quantization, where one scale serves every channel and small
channels lose their resolution. Per-channel weights (edgecomp's default) already give every
output channel its own scale, so CLE changes them little; it also moves the activation ranges
between the two layers (channel ``i`` of the intermediate tensor is divided by ``s_i``), which the
per-tensor activation quantization sees.

Pairs found: ``Conv | Gemm`` -> (Relu | LeakyRelu | MaxPool | AveragePool | GlobalAveragePool |
GlobalMaxPool)* -> [Flatten | Reshape to [N, C*k]] -> ``Conv | Gemm``, every intermediate tensor
used once and not a graph output. Grouped and depthwise convolutions work on either side (the
second layer's input channel ``c`` is column ``c mod C/G`` of group ``c div (C/G)``). A flatten in
front of a Gemm maps channel ``c`` to features ``c*k .. c*k+k-1`` (NCHW, channel-major). Clip
(ReLU6) is refused: it is not positive homogeneous (the paper replaces it by ReLU first; edgecomp
does not change the model's function).

Dead channels (BatchNormalization folded with gamma ~ 0, common in MobileNets such as MLPerf's
VWW) follow the rule in :func:`pair_scales`. Chains of them converge slowly (VWW still moves
scales by about 1 % after 100 sweeps; the report says ``converged=False`` then), which costs
nothing but time. The paper's high-bias absorption (section 4.1.2) is not implemented.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import onnx_ir as ir

from edgecomp.ir.values import constant_array
from edgecomp.passes.base import InPlacePass, PassResult
from edgecomp.passes.quantize.metrics import sqnr_db
from edgecomp.passes.quantize.naive import weight_axis
from edgecomp.passes.quantize.observers import symmetric_scale
from edgecomp.passes.quantize.qdq import WEIGHT_MAX

EQUALIZED_OPS = ("Conv", "Gemm")
"""Layers whose weights are equalized (canonicalization turns MatMul + Add into Gemm)."""

POSITIVE_HOMOGENEOUS_OPS = frozenset({"Relu", "LeakyRelu", "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool"})
"""Channel-wise operators with ``f(x / s) = f(x) / s`` for ``s > 0``: a per-channel scale passes through them."""

FLATTEN_OPS = frozenset({"Flatten", "Reshape"})

DEAD_CHANNEL_RATIO = 1e-6
"""A first-layer channel whose weight range is at most this fraction of the layer's largest is left unscaled."""

DEFAULT_ITERATIONS = 100
DEFAULT_TOLERANCE = 1e-4
"""Stop when no channel scale of a sweep differs from 1 by more than this (relative)."""


@dataclasses.dataclass(frozen=True)
class EqualizationPair:
    """Two layers whose shared channels are equalized.

    Attributes:
        first: the Conv/Gemm whose output channels are divided by ``s``.
        second: the Conv/Gemm whose matching input channels are multiplied by ``s``.
        between: the positive homogeneous (and flatten) nodes on the path from ``first`` to ``second``.
        features_per_channel: ``k`` when a flatten turns ``C`` channels into ``C*k`` Gemm features, else 1.
    """

    first: ir.Node
    second: ir.Node
    between: tuple[ir.Node, ...]
    features_per_channel: int = 1


@dataclasses.dataclass(frozen=True)
class PairEqualization:
    """What equalization did to one pair.

    Attributes:
        first, second: node names.
        scales: float64 [C], the product of every sweep's ``s`` per channel (first layer divided, second multiplied).
        imbalance_before, imbalance_after: :func:`range_imbalance` of the first layer's output
            channels (1 = balanced).
    """

    first: str
    second: str
    scales: np.ndarray
    imbalance_before: float
    imbalance_after: float


@dataclasses.dataclass(frozen=True)
class EqualizationReport:
    """The result of :func:`equalize`.

    Attributes:
        pairs: one entry per equalized pair, in graph order.
        sweeps: number of sweeps over all pairs that were run.
        converged: the last sweep changed no scale by more than the tolerance.
        refusals: node name -> why that Conv/Gemm was not equalized with its consumer.
    """

    pairs: tuple[PairEqualization, ...]
    sweeps: int
    converged: bool
    refusals: dict[str, str]

    def to_dict(self) -> dict:
        """JSON-ready summary for the compile report (no per-channel arrays)."""
        return {
            "pairs": [
                {"first": p.first, "second": p.second, "channels": int(p.scales.size),
                 "scale_min": float(p.scales.min()), "scale_max": float(p.scales.max()),
                 "imbalance_before": p.imbalance_before, "imbalance_after": p.imbalance_after}
                for p in self.pairs
            ],
            "sweeps": self.sweeps,
            "converged": self.converged,
            "refusals": dict(sorted(self.refusals.items())),
        }


def channel_ranges(weights: np.ndarray, axis: int) -> np.ndarray:
    """``max |w|`` over every axis but ``axis``: float64 [weights.shape[axis]]."""
    axis = axis % weights.ndim
    return np.max(np.abs(weights.astype(np.float64)), axis=tuple(i for i in range(weights.ndim) if i != axis))


def range_imbalance(weights: np.ndarray, axis: int) -> float:
    """``max_c r_c / median_c r_c`` over the live channels along ``axis``, ``r_c = max |w[c]|``.

    1.0 means at least half the channels span the largest range, so per-tensor quantization gives
    them the full int8 grid; 10 means the median channel uses a tenth of it. Dead channels
    (``r_c <= DEAD_CHANNEL_RATIO * max_c r_c``) are left out, as :func:`pair_scales` leaves them.
    Returns 1.0 for an all-zero tensor.
    """
    ranges = channel_ranges(weights, axis)
    alive = ranges[ranges > DEAD_CHANNEL_RATIO * ranges.max()]
    return float(ranges.max() / np.median(alive)) if alive.size else 1.0


def per_tensor_weight_sqnr(weights: np.ndarray) -> float:
    """SQNR (dB, :func:`sqnr_db`) of ``weights`` against their symmetric per-tensor int8 version.

    One scale ``max |w| / 127`` for the whole tensor, ``q = clip(round(w / scale), -127, 127)``
    (the TFLite int8 weight quantizer with a single channel). Shape and dtype: any float array.
    """
    scale = float(symmetric_scale(np.array([np.max(np.abs(weights))]), qmax=WEIGHT_MAX)[0])
    return sqnr_db(weights, np.clip(np.round(weights / scale), -WEIGHT_MAX, WEIGHT_MAX) * scale)


def _writable_constant(value: ir.Value | None, what: str) -> str | None:
    """Why ``value`` cannot be rescaled in place, or None when it can."""
    if value is None:
        return None
    if constant_array(value) is None or not value.is_initializer():
        return f"its {what} is not a float initializer"
    if value.dtype != ir.DataType.FLOAT:
        return f"its {what} is {value.dtype}, not float32"
    if len(value.uses()) != 1:
        return f"its {what} {value.name!r} is shared with another node"
    return None


def _layer_refusal(node: ir.Node) -> str | None:
    """Why ``node`` cannot take part in a pair (as first or second), or None."""
    if node.op_type not in EQUALIZED_OPS or node.domain not in ("", "ai.onnx"):
        return f"{node.op_type} is not Conv/Gemm"
    if len(node.inputs) < 2:
        return "it has no weight input"
    if node.op_type == "Gemm" and node.attributes.get_int("transA", 0):
        return "Gemm with transA=1 (its features are not on the last axis)"
    for index, what in ((1, "weight"), (2, "bias")):
        if len(node.inputs) > index and (reason := _writable_constant(node.inputs[index], what)):
            return reason
    if node.op_type == "Gemm" and len(node.inputs) > 2 and node.inputs[2] is not None:
        bias = constant_array(node.inputs[2])
        if bias.size not in (1, constant_array(node.inputs[1]).shape[weight_axis(node)]):
            return f"its bias has shape {list(bias.shape)}, not one value per output feature"
    return None


def _flatten_factor(node: ir.Node, value: ir.Value) -> int | str:
    """``k`` when ``node`` flattens [N, C, *spatial] to [N, C*k] channel-major, else why not."""
    shape_in, shape_out = value.shape, node.outputs[0].shape
    if shape_in is None or shape_out is None or len(shape_out) != 2 or len(shape_in) < 2:
        return f"{node.op_type} {node.name!r}: shapes unknown or not a flatten to 2-D"
    dims = [d for d in shape_in[1:]]
    if not all(isinstance(d, int) for d in dims) or not isinstance(shape_out[1], int):
        return f"{node.op_type} {node.name!r}: channel or spatial dimensions are not static"
    if node.op_type == "Flatten" and node.attributes.get_int("axis", 1) != 1:
        return f"Flatten {node.name!r} does not flatten from axis 1"
    if shape_out[1] != math.prod(dims):
        return f"{node.op_type} {node.name!r} does not keep the batch axis apart"
    return math.prod(dims[1:])


def match_pair(first: ir.Node) -> EqualizationPair | str | None:
    """The pair ``first`` starts, a one-line reason why it starts none, or None (not a candidate).

    Follows ``first``'s output through positive homogeneous nodes (and one flatten before a Gemm)
    to the next Conv/Gemm; every tensor on the way must have a single consumer and not be a graph
    output, because equalization changes its values.
    """
    if first.op_type not in EQUALIZED_OPS or first.domain not in ("", "ai.onnx"):
        return None
    if reason := _layer_refusal(first):
        return reason
    value, between, factor = first.outputs[0], [], 1
    while True:
        if value.is_graph_output():
            return f"tensor {value.name!r} is a graph output"
        uses = list(value.uses())
        if len(uses) != 1:
            return f"tensor {value.name!r} has {len(uses)} consumers"
        node, index = uses[0].node, uses[0].idx
        if index != 0:
            return f"tensor {value.name!r} is input {index} of {node.op_type} {node.name!r}"
        if node.op_type in EQUALIZED_OPS:
            if reason := _layer_refusal(node):
                return f"next layer {node.name!r}: {reason}"
            if factor != 1 and node.op_type != "Gemm":
                return f"a flatten leads to {node.op_type} {node.name!r}, not a Gemm"
            return EqualizationPair(first, node, tuple(between), factor)
        if factor != 1 or node.domain not in ("", "ai.onnx") or node.op_type not in POSITIVE_HOMOGENEOUS_OPS | FLATTEN_OPS:
            return f"{node.op_type} {node.name!r} between the layers is not positive homogeneous per channel"
        if node.op_type in FLATTEN_OPS:
            factor = _flatten_factor(node, value)
            if isinstance(factor, str):
                return factor
        between.append(node)
        value = node.outputs[0]


def _second_input_view(pair: EqualizationPair, weights: np.ndarray, channels: int) -> tuple[np.ndarray, tuple[int, ...]]:
    """``weights`` of the second layer viewed so that axis ``channel_axis`` indexes the shared channels.

    Returns (view, shape of ``s`` broadcast over the view). Conv [Cout, C/G, ...] with G groups
    becomes [G, Cout/G, C/G, rest] and channel ``g*(C/G) + j`` is [g, :, j]; Gemm B [C*k, N]
    (transB=0) becomes [C, k*N], [N, C*k] (transB=1) becomes [N, C, k].
    """
    second = pair.second
    if second.op_type == "Conv":
        groups = second.attributes.get_int("group", 1)
        out_channels, per_group = weights.shape[0], weights.shape[1]
        view = weights.reshape(groups, out_channels // groups, per_group, -1)
        return view, (groups, 1, per_group, 1)
    if second.attributes.get_int("transB", 0):
        return weights.reshape(weights.shape[0], channels, -1), (1, channels, 1)
    return weights.reshape(channels, -1), (channels, 1)


def _first_ranges(pair: EqualizationPair) -> np.ndarray:
    return channel_ranges(constant_array(pair.first.inputs[1]), weight_axis(pair.first))


def _second_ranges(pair: EqualizationPair, channels: int) -> np.ndarray:
    view, broadcast = _second_input_view(pair, constant_array(pair.second.inputs[1]), channels)
    axes = tuple(i for i, size in enumerate(broadcast) if size == 1)
    return np.max(np.abs(view.astype(np.float64)), axis=axes).reshape(channels)


def _store(value: ir.Value, array: np.ndarray) -> None:
    value.const_value = ir.tensor(np.ascontiguousarray(array, dtype=np.float32), name=value.name)


def _rescale(pair: EqualizationPair, scales: np.ndarray) -> None:
    """Divide output channel ``i`` of the first layer (weights, bias) by ``scales[i]``, multiply the
    second layer's input channel ``i`` by it."""
    first, second = pair.first, pair.second
    channels = scales.size
    w1 = constant_array(first.inputs[1]).astype(np.float64)
    shape = [1] * w1.ndim
    shape[weight_axis(first) % w1.ndim] = channels
    _store(first.inputs[1], w1 / scales.reshape(shape))
    if len(first.inputs) > 2 and first.inputs[2] is not None:
        bias = constant_array(first.inputs[2]).astype(np.float64)
        # a Gemm bias of one value broadcast to every feature becomes one value per feature
        shape = bias.shape if bias.size == channels else (channels,)
        _store(first.inputs[2], (bias.reshape(-1) / scales).reshape(shape))
    w2 = constant_array(second.inputs[1]).astype(np.float64)
    view, broadcast = _second_input_view(pair, w2, channels)
    _store(second.inputs[1], (view * scales.reshape(broadcast)).reshape(w2.shape))


def pair_scales(pair: EqualizationPair) -> np.ndarray:
    """``s_i = sqrt(r1_i * r2_i) / r2_i`` (Nagel et al. 2019, eq. 11), float64 [C].

    A channel the first layer barely drives (``r1_i <= DEAD_CHANNEL_RATIO * max r1``, e.g. a
    folded BatchNormalization with gamma ~ 0) keeps ``s_i = 1``: its output is the constant
    ``f(b1_i)``, and ``s_i << 1`` would only blow its bias up (and with it the activation range the
    next quantizer sees). A channel the second layer ignores (``r2_i`` tiny, ``r1_i`` not) is
    equalized as usual: ``s_i >> 1`` shrinks the first layer's weights and bias, which is harmless
    and frees the first layer's per-tensor range. ``r2_i = 0`` keeps ``s_i = 1``.
    """
    r1 = _first_ranges(pair)
    r2 = _second_ranges(pair, r1.size)
    scales = np.ones_like(r1)
    alive = (r1 > DEAD_CHANNEL_RATIO * r1.max()) & (r2 > 0)
    scales[alive] = np.sqrt(r1[alive] * r2[alive]) / r2[alive]
    return scales


def find_pairs(model: ir.Model) -> tuple[list[EqualizationPair], dict[str, str]]:
    """Every equalization pair of the main graph in graph order, and why the other Conv/Gemm start none."""
    pairs, refusals = [], {}
    for node in model.graph:
        match = match_pair(node)
        if isinstance(match, EqualizationPair):
            pairs.append(match)
        elif isinstance(match, str):
            refusals[node.name] = match
    return pairs, refusals


def equalize(model: ir.Model, *, iterations: int = DEFAULT_ITERATIONS, tolerance: float = DEFAULT_TOLERANCE) -> EqualizationReport:
    """Cross-layer equalization of ``model`` in place (float32 weights and biases are rewritten).

    Sweeps over every pair of :func:`find_pairs` in graph order, rescaling each with
    :func:`pair_scales`, until no scale of a sweep is further than ``tolerance`` from 1 or after
    ``iterations`` sweeps. The model computes the same function up to float32 rounding of the
    rescaled weights (the tests measure max |difference| / output range below 1e-5).

    Args:
        model: a float model, canonicalized (BatchNormalization folded, constants as initializers).
        iterations: the most sweeps to run (>= 1).
        tolerance: convergence threshold on ``max_i |s_i - 1|`` of a sweep.

    Returns:
        :class:`EqualizationReport` with the total scale per channel of every pair.

    Raises:
        ValueError: ``iterations`` < 1.
    """
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")
    pairs, refusals = find_pairs(model)
    imbalance_before = [range_imbalance(constant_array(p.first.inputs[1]), weight_axis(p.first)) for p in pairs]
    totals = [np.ones(_first_ranges(p).size) for p in pairs]
    sweeps, converged = 0, not pairs
    while pairs and sweeps < iterations and not converged:
        largest_change = 0.0
        for pair, total in zip(pairs, totals):
            scales = pair_scales(pair)
            _rescale(pair, scales)
            total *= scales
            largest_change = max(largest_change, float(np.max(np.abs(scales - 1.0))))
        sweeps += 1
        converged = largest_change <= tolerance
    results = tuple(
        PairEqualization(p.first.name, p.second.name, total, before, range_imbalance(constant_array(p.first.inputs[1]), weight_axis(p.first)))
        for p, total, before in zip(pairs, totals, imbalance_before)
    )
    return EqualizationReport(results, sweeps, converged, refusals)


class CrossLayerEqualizationPass(InPlacePass):
    """:func:`equalize` as a pass (run after canonicalization, before quantization).

    Args:
        iterations, tolerance: see :func:`equalize`.

    Attributes:
        report: the :class:`EqualizationReport` after the pass ran, else None.
    """

    def __init__(self, *, iterations: int = DEFAULT_ITERATIONS, tolerance: float = DEFAULT_TOLERANCE) -> None:
        super().__init__()
        self.iterations, self.tolerance = iterations, tolerance
        self.report: EqualizationReport | None = None

    def call(self, model: ir.Model) -> PassResult:
        self.report = equalize(model, iterations=self.iterations, tolerance=self.tolerance)
        return PassResult(model, modified=bool(self.report.pairs))
