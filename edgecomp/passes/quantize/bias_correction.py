"""Empirical bias correction of a QDQ model's int8 Conv/ConvTranspose/Gemm layers, after quantization.

Nagel, van Baalen, Blankevoort, Welling, "Data-Free Quantization Through Weight Equalization and
Bias Correction", ICCV 2019, section 4.2. Quantizing weights ``W`` to ``W_q = W + dW`` shifts a
layer's output by ``E[W_q x - W x] = dW E[x]``, which is not zero on average (one output channel's
rounding errors need not cancel against the mean input): the error is biased. Subtracting it from
the layer's bias removes that mean shift. The paper derives ``E[x]`` from BatchNormalization
statistics when there is no data, and notes that with data the shift can be measured by comparing
the activations of the quantized and the float model; this module measures it on calibration data.

The expectation is taken in the QDQ simulation (ONNX Runtime executing the QuantizeLinear /
DequantizeLinear graph as written), over the calibration batches, level by level: a layer's error
is measured only after every int8 layer upstream of it has been corrected. :func:`correct_biases`
subtracts either the layer's whole mean output error against the float model (``error="output"``,
the default: it measured better on MNIST and VWW) or its weight rounding part alone
(``error="weights"``, ``E[(W_q - W) x]``).

The corrected bias ``b' = b - E[error]`` is requantized with the bias's own scale (``s_in * s_w``,
TFLite int8 spec): ``q' = clip(round_half_to_even(b' / scale), INT32_MIN, INT32_MAX)``; a layer
without a bias gets one (:func:`quantize_bias`). The float bias kept in the DequantizeLinear's
``meta[FLOAT_VALUE_KEY]`` becomes ``b'`` too, so a later requantization (:func:`narrow_weight_range`)
starts from the corrected value. The correction is computed for the weights as they are: a
backend that requantizes them afterwards (7-bit weights for ONNX Runtime on x86 without VNNI)
leaves it slightly stale."""

from __future__ import annotations

import dataclasses
import logging
from typing import Iterable, Iterator, Mapping

import numpy as np
import onnx_ir as ir

from edgecomp.errors import CalibrationDataError
from edgecomp.ir.run import make_session
from edgecomp.ir.values import constant_array
from edgecomp.passes.base import InPlacePass, PassResult
from edgecomp.passes.canonicalize.constant_folding import _evaluate as evaluate_node
from edgecomp.passes.quantize.naive import BIAS_INPUT
from edgecomp.passes.quantize.qdq import (
    FLOAT_VALUE_KEY,
    INT32_MAX,
    INT32_MIN,
    _constant_dequantize,
    _replace_constant,
    quantize_bias,
)

logger = logging.getLogger(__name__)

CORRECTED_OPS = frozenset(BIAS_INPUT)
"""Layers whose bias is corrected: Conv, ConvTranspose, Gemm (the int8 layers that have a bias input)."""

ERRORS = ("output", "weights")
"""What :func:`correct_biases` subtracts: the layer's whole mean output error, or its weight rounding part."""


@dataclasses.dataclass(frozen=True)
class BiasCorrection:
    """The correction applied to one layer's bias.

    Attributes:
        node: the Conv/ConvTranspose/Gemm node name.
        correction: float32 [C_out], the mean error per output channel in the layer's output
            units (``E[y_q - y]`` or ``E[W_q x - W x]``, see :func:`correct_biases`); it was
            subtracted from the bias.
        scale: float32 [C_out], the int32 bias's scale ``s_in * s_w``.
        quantized_before: int32 [C_out], the bias before (zeros when the layer had none).
        quantized_after: int32 [C_out], the bias after.
        samples: calibration samples the mean was measured on.
    """

    node: str
    correction: np.ndarray
    scale: np.ndarray
    quantized_before: np.ndarray
    quantized_after: np.ndarray
    samples: int

    @property
    def correction_lsb(self) -> np.ndarray:
        """float64 [C_out]: the correction in units of the bias's quantization step."""
        return self.correction.astype(np.float64) / self.scale.astype(np.float64)

    def to_dict(self) -> dict:
        """JSON-ready summary for the compile report."""
        lsb = np.abs(self.correction_lsb)
        return {
            "channels": int(self.correction.size),
            "max_abs_correction": float(np.max(np.abs(self.correction))),
            "max_abs_correction_lsb": float(lsb.max()),
            "mean_abs_correction_lsb": float(lsb.mean()),
            "samples": self.samples,
        }


@dataclasses.dataclass(frozen=True)
class _Layer:
    """An int8 layer of the QDQ model: its node, and the number of int8 layers on the longest
    path from a graph input up to and including it (its level)."""

    node: ir.Node
    level: int


def _is_int8_layer(node: ir.Node) -> str | None:
    """Why ``node`` is not a correctable int8 layer, or None when it is."""
    if node.op_type == "Gemm" and node.attributes.get_int("transA", 0):
        return "Gemm with transA=1"
    dequantize = _constant_dequantize(node.inputs[1])
    if dequantize is None or dequantize.inputs[0].dtype != ir.DataType.INT8:
        return "its weight is not int8 with a DequantizeLinear"
    source = node.inputs[0].producer()
    if source is None or source.op_type != "DequantizeLinear" or source.inputs[0].const_value is not None:
        return "its input is not a quantized activation"
    return None


def _layers(model: ir.Model) -> list[_Layer]:
    """The correctable int8 layers in graph order, with their levels."""
    level_after: dict[ir.Node, int] = {}
    layers = []
    for node in model.graph:  # topologically sorted (quantize_int8 sorts the graph)
        upstream = max((level_after.get(v.producer(), 0) for v in node.inputs if v is not None and v.producer() is not None), default=0)
        level_after[node] = upstream
        if node.op_type not in CORRECTED_OPS or node.domain not in ("", "ai.onnx"):
            continue
        if reason := _is_int8_layer(node):
            logger.debug("bias correction skips %s: %s", node.name, reason)
            continue
        level_after[node] = upstream + 1
        layers.append(_Layer(node, upstream + 1))
    return layers


def _batch_means(model: ir.Model, names: list[str], batches: Iterable[Mapping[str, np.ndarray]]) -> tuple[dict[str, np.ndarray], int]:
    """Mean over the calibration samples of each named tensor, float64 [1, ...]; and the sample count.

    ``model`` runs in ONNX Runtime without graph optimizations: a QDQ model as its exact float
    simulation (:func:`make_session`).
    """
    session = make_session(model, optimize=False, extra_outputs=names)
    sums: dict[str, np.ndarray] = {}
    samples = 0
    for batch in batches:
        for name, array in zip(names, session.run(names, dict(batch))):
            total = np.sum(array, axis=0, keepdims=True, dtype=np.float64)
            sums[name] = sums[name] + total if name in sums else total
        samples += len(next(iter(batch.values())))
    if samples == 0:
        raise CalibrationDataError("bias correction: the calibration set is empty: no sample reached the model")
    return {name: total / samples for name, total in sums.items()}, samples


def _channel_mean(mean: np.ndarray) -> np.ndarray:
    """Per output channel (axis 1) mean of a [1, C, ...] batch mean: float64 [C]."""
    return mean.mean(axis=tuple(i for i in range(mean.ndim) if i != 1))


def _weight_error(node: ir.Node, float_node: ir.Node | None) -> np.ndarray | str:
    """``W_q - W`` of an int8 layer (float64, the weight's shape), or why it is unknown."""
    dequantize = _constant_dequantize(node.inputs[1])
    quantized = dequantize.inputs[0].const_value.numpy().astype(np.float64)
    scale = dequantize.inputs[1].const_value.numpy().astype(np.float64)
    if scale.size > 1:
        shape = [1] * quantized.ndim
        shape[dequantize.attributes.get_int("axis", 1) % quantized.ndim] = -1
        scale = scale.reshape(shape)
    weights = dequantize.meta.get(FLOAT_VALUE_KEY)
    if weights is None and float_node is not None:
        weights = constant_array(float_node.inputs[1])
    if weights is None:
        return "its float weights are unknown (no FLOAT_VALUE_KEY meta, no float node of that name)"
    return quantized * scale - np.asarray(weights, dtype=np.float64).reshape(quantized.shape)


def _weight_rounding_error(model: ir.Model, node: ir.Node, weight_error: np.ndarray, mean_input: np.ndarray) -> np.ndarray:
    """``E[(W_q - W) x]`` per output channel: the layer with weights ``dW`` and no bias on ``E[x]``."""
    unbiased = ir.Node(
        node.domain, node.op_type, [ir.Value(name="mean_input"), ir.Value(name="weight_error")],
        list(node.attributes.values()), outputs=[ir.Value(name="mean_error")], name=node.name,
    )
    inputs = {"mean_input": mean_input.astype(np.float32), "weight_error": weight_error.astype(np.float32)}
    outputs = evaluate_node(unbiased, inputs, model.opset_imports)
    if isinstance(outputs, str):
        raise RuntimeError(f"bias correction: cannot evaluate {node.op_type} {node.name!r}: {outputs}")
    return _channel_mean(outputs[0].astype(np.float64))


def _add_zero_bias(model: ir.Model, node: ir.Node, channels: int) -> ir.Node:
    """Give a layer without a bias an int32 zero bias, quantized as :func:`quantize_int8` would
    (scale ``s_in * s_w``); returns its DequantizeLinear."""
    bias_index = BIAS_INPUT[node.op_type]
    name = f"{node.name}_bias"
    zeros = np.zeros(channels, dtype=np.float32)
    value = ir.Value(name=name, const_value=ir.tensor(zeros, name=name), shape=ir.Shape(zeros.shape), type=ir.TensorType(ir.DataType.FLOAT))
    model.graph.register_initializer(value)
    if len(node.inputs) <= bias_index:
        node.resize_inputs(bias_index + 1)
    node.replace_input_with(bias_index, value)
    input_scale = float(node.inputs[0].producer().inputs[1].const_value.numpy().reshape(-1)[0])
    weight_scale = _constant_dequantize(node.inputs[1]).inputs[1].const_value.numpy()
    quantize_bias(model.graph, node, bias_index, input_scale, weight_scale)
    return _constant_dequantize(node.inputs[bias_index])


def _apply(model: ir.Model, node: ir.Node, correction: np.ndarray, samples: int, *, from_stored: bool) -> BiasCorrection:
    """Subtract ``correction`` (float64 [C_out]) from the node's bias and requantize it with its scale.

    ``from_stored``: the correction was measured with the stored int32 bias in place, so it already
    holds that bias's own rounding error and is subtracted from the dequantized bias ``q * scale``;
    else it is subtracted from the float bias (``meta[FLOAT_VALUE_KEY]``, or ``q * scale`` when lost).
    """
    bias_index = BIAS_INPUT[node.op_type]
    dequantize = _constant_dequantize(node.inputs[bias_index]) if len(node.inputs) > bias_index else None
    if dequantize is None:
        dequantize = _add_zero_bias(model, node, correction.size)
    before = dequantize.inputs[0].const_value.numpy()
    scale = dequantize.inputs[1].const_value.numpy().astype(np.float32)
    stored = before.astype(np.float64) * scale.astype(np.float64)
    bias = dequantize.meta.get(FLOAT_VALUE_KEY)
    if bias is None or from_stored:
        bias = stored
    corrected = np.asarray(bias, dtype=np.float64).reshape(-1) - correction
    after = np.clip(np.round(corrected / scale.astype(np.float64).reshape(-1)), INT32_MIN, INT32_MAX).astype(np.int32)
    _replace_constant(dequantize.inputs[0], after.reshape(before.shape))
    dequantize.meta[FLOAT_VALUE_KEY] = corrected.astype(np.float32).reshape(np.shape(bias))
    return BiasCorrection(node.name, correction.astype(np.float32), scale.reshape(-1), before.reshape(-1), after, samples)


def correct_biases(
    quantized_model: ir.Model,
    float_model: ir.Model,
    batches: Iterable[Mapping[str, np.ndarray]],
    *,
    error: str = "output",
) -> dict[str, BiasCorrection]:
    """Empirical bias correction (Nagel et al. 2019, section 4.2) of every int8 Conv/ConvTranspose/Gemm, in place.

    Layers are corrected level by level (a level: the int8 layers with as many int8 layers on
    their longest path from the inputs), each level measured on the model with every level
    before it already corrected. The mean error of output channel ``o`` subtracted from its bias:

    - ``error="output"`` (default): ``E[y_q] - E[y]``, the layer's output (before its activation)
      in the QDQ simulation minus the float model's output of the node with the same name. It is
      the weight rounding bias ``E[(W_q - W) x_q]`` plus ``W E[x_q - x]``, the mean shift that
      quantizing the activations upstream left in the input, plus the int32 bias's own rounding
      error: the paper's empirical variant ("comparing the activations of the quantized and full
      precision model"). It is subtracted from the stored bias ``q * scale``, so afterwards each
      layer's mean error on the calibration data is at most half a bias step.
    - ``error="weights"``: ``E[W_q x - W x]`` with ``x`` the layer's input in the QDQ simulation:
      the weight rounding bias alone, computed as the layer with weights ``W_q - W`` and no bias
      applied to ``E[x]`` (exact: the layer is linear).

    Args:
        quantized_model: a QDQ model from :func:`quantize_int8` (int8 weights and int32 biases
            behind DequantizeLinear nodes); its int32 biases (and the float biases kept in
            ``meta[FLOAT_VALUE_KEY]``) are rewritten, and layers without a bias get one.
        float_model: the float model it was quantized from, nodes named as in the QDQ model
            (not modified). ``error="output"`` runs it once; ``error="weights"`` takes its weights
            when a DequantizeLinear no longer carries its float value (a QDQ model read from a file).
        batches: calibration batches (input name -> array, batch axis first), iterated once per
            level (plus once for the float model), so it must be re-iterable: a list, or a
            :class:`CalibrationDataset`.
        error: ``output`` or ``weights`` (above).

    Returns:
        Node name -> :class:`BiasCorrection` (per output channel: correction in output units,
        int32 bias before and after), in graph order. Layers whose weight is not int8 behind a
        DequantizeLinear, whose input is not a quantized activation, or which the float model
        lacks are skipped (logged at debug level).

    Raises:
        TypeError: ``batches`` is a one-shot iterator.
        ValueError: unknown ``error``.
        CalibrationDataError: the calibration set is empty.
    """
    if error not in ERRORS:
        raise ValueError(f"unknown bias correction error {error!r}; choose one of {', '.join(ERRORS)}")
    if isinstance(batches, Iterator):
        raise TypeError("correct_biases iterates the batches once per level: pass a list or a CalibrationDataset, not an iterator")
    float_nodes = {node.name: node for node in float_model.graph}
    layers, weight_errors = [], {}
    for layer in _layers(quantized_model):
        float_node = float_nodes.get(layer.node.name)
        reason = None
        if error == "output" and float_node is None:
            reason = "the float model has no node of that name"
        elif error == "weights":
            weight_errors[layer.node] = _weight_error(layer.node, float_node)
            reason = weight_errors[layer.node] if isinstance(weight_errors[layer.node], str) else None
        if reason:
            logger.debug("bias correction skips %s: %s", layer.node.name, reason)
        else:
            layers.append(layer)
    float_means = {}
    if error == "output" and layers:
        float_means, _ = _batch_means(float_model, sorted({float_nodes[layer.node.name].outputs[0].name for layer in layers}), batches)
    corrections: dict[str, BiasCorrection] = {}
    for level in sorted({layer.level for layer in layers}):
        nodes = [layer.node for layer in layers if layer.level == level]
        if error == "output":
            means, samples = _batch_means(quantized_model, sorted({node.outputs[0].name for node in nodes}), batches)
            for node in nodes:
                shift = _channel_mean(means[node.outputs[0].name]) - _channel_mean(float_means[float_nodes[node.name].outputs[0].name])
                corrections[node.name] = _apply(quantized_model, node, shift, samples, from_stored=True)
        else:
            means, samples = _batch_means(quantized_model, sorted({node.inputs[0].name for node in nodes}), batches)
            for node in nodes:
                shift = _weight_rounding_error(quantized_model, node, weight_errors[node], means[node.inputs[0].name])
                corrections[node.name] = _apply(quantized_model, node, shift, samples, from_stored=False)
    quantized_model.graph.sort()
    return {layer.node.name: corrections[layer.node.name] for layer in layers}


class BiasCorrectionPass(InPlacePass):
    """:func:`correct_biases` as a pass (run right after the int8 quantization pass), so the pass
    manager's instruments (timing, ``--dump-ir``) see it like every other stage.

    Args:
        float_model, batches, error: see :func:`correct_biases`.

    Attributes:
        corrections: node name -> :class:`BiasCorrection` after the pass ran, else None.
    """

    def __init__(self, float_model: ir.Model, batches: Iterable[Mapping[str, np.ndarray]], *, error: str = "output") -> None:
        super().__init__()
        self.float_model, self.batches, self.error = float_model, batches, error
        self.corrections: dict[str, BiasCorrection] | None = None

    def call(self, model: ir.Model) -> PassResult:
        self.corrections = correct_biases(model, self.float_model, self.batches, error=self.error)
        return PassResult(model, modified=bool(self.corrections))
