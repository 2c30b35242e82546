"""Per-layer sensitivity analysis: how much each quantizable node costs in model-output SQNR.

For each int8 candidate node (:func:`~edgecomp.passes.quantize.naive.select_int8_nodes`):

- (a) **only this node int8**, every other node float: the SQNR this node's quantization alone allows;
- (b) **all but this node int8**: the SQNR when only this node stays float. Its gain over all-int8 is
  the node's *sensitivity*, the order in which selective keeps layers in float.

A Conv/Gemm/MatMul/Add whose Relu fuses into it in the all-int8 model (its int8 output clamps at the
zero point; :func:`~edgecomp.passes.quantize.naive.quantize_int8`) forms one *layer* with that Relu:
both go int8 or float together in (a) and (b), for either node's entry. Split apart, one of them
int8 would quantize the pre-Relu tensor with its signed range, a cost the fused all-int8 model does
not have (on mnist-8, "only Convolution110 int8" and "only ReLU114 int8" both come out below
all-int8 then), and keeping only the Relu in float would just lose the fusion.

SQNR (dB, :func:`~edgecomp.passes.quantize.metrics.sqnr_db`) compares each variant's outputs with the
FP32 outputs on the calibration data, the variant run as the exact QDQ simulation in ONNX Runtime
(``make_session(..., optimize=False)``). Every variant takes its activation parameters from ONE
calibration pass (:func:`~edgecomp.passes.quantize.selective.calibrate_selective`, per-tensor
methods) as ``fixed_params``, so no variant recalibrates; variants run on chunks of stacked batches
(:func:`_chunks`; as many samples as the largest calibration batch, or :data:`MEASURE_CHUNK` when
the batches hold one sample each) when the model's batch axis is dynamic, or can be made so (a
fixed batch of 1 whose Reshapes copy the batch dimension, checked numerically), else batch by
batch. The batches are read again from the calibration source for every variant when it is
re-iterable, so memory does not grow with the sample count (only the outputs are kept).
Sensitivity analysis of this kind (one layer at a time, measured at the output) is the usual
"layer-wise sensitivity" of mixed-precision PTQ, e.g. Nagel et al., "A White Paper on Neural Network
Quantization" (2021), section 4.6 (debugging), and NVIDIA's TensorRT/pytorch-quantization docs.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import logging
import math
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence

import numpy as np
import onnx_ir as ir

from edgecomp.errors import CalibrationDataError
from edgecomp.ir.load import to_bytes
from edgecomp.ir.run import make_session, run_batches
from edgecomp.passes.quantize import metrics
from edgecomp.passes.quantize.naive import (
    FIXED_OUTPUT_PARAMS,
    SHARES_INPUT_PARAMS,
    _fused_activations,
    quantize_int8,
    select_int8_nodes,
)
from edgecomp.passes.quantize.observers import METHODS
from edgecomp.passes.quantize.plan import QuantizationPlan
from edgecomp.passes.quantize.qdq import DEFAULT_RULES, QuantizationRules

logger = logging.getLogger(__name__)

Batch = Mapping[str, np.ndarray]

MEASURE_CHUNK = 32
"""Samples per ONNX Runtime call when a variant runs on stacked batches of one sample each (a fixed
batch-1 model made batch-dynamic); with larger calibration batches a chunk is the largest batch, so
measuring holds the activations of as many samples as calibrating does."""


@dataclasses.dataclass(frozen=True)
class LayerSensitivity:
    """The sensitivity of one quantizable node.

    Attributes:
        node: ONNX node name.
        op_type: ONNX operator type.
        only_this_int8_db: output SQNR (dB) vs FP32 with only this node int8, every other node float.
        all_but_this_db: output SQNR (dB) vs FP32 with every candidate int8 except this node (float).
        fused_layer: when this node and a Relu run as one fused int8 kernel (Conv/Gemm/MatMul/Add
            then Relu), both names, producer first: they are measured, and kept in float, together,
            and their two entries hold the same figures. Empty otherwise.
    """

    node: str
    op_type: str
    only_this_int8_db: float
    all_but_this_db: float
    fused_layer: tuple[str, ...] = ()

    @property
    def nodes(self) -> tuple[str, ...]:
        """The nodes this entry measures (and selective keeps in float) together."""
        return self.fused_layer or (self.node,)


@dataclasses.dataclass(frozen=True)
class Measurement:
    """One variant measured: output SQNR (dB, lowest over graph outputs) on the calibration data, and
    top-1 accuracy (0..1) on the evaluation data when there is any, else None."""

    sqnr_db: float
    accuracy: float | None


def _stack(batches: Sequence[Batch], chunk: int) -> list[dict[str, np.ndarray]]:
    """Concatenate batches along axis 0 and split into chunks of at most ``chunk`` samples."""
    names = list(batches[0])
    whole = {name: np.concatenate([np.asarray(b[name]) for b in batches], axis=0) for name in names}
    total = len(whole[names[0]])
    return [{name: array[start : start + chunk] for name, array in whole.items()} for start in range(0, total, chunk)]


def _chunks(batches: Iterable[Batch], chunk: int) -> Iterator[dict[str, np.ndarray]]:
    """The batches concatenated along axis 0 and cut into chunks of ``chunk`` samples (the last may
    be shorter), as :func:`_stack` does, but built one at a time: at most ``chunk`` samples plus one
    batch are held."""
    names: list[str] | None = None
    pending: list[dict[str, np.ndarray]] = []
    count = 0
    for batch in batches:
        if names is None:
            names = list(batch)
        pending.append({name: np.asarray(batch[name]) for name in names})
        count += len(pending[-1][names[0]])
        while count >= chunk:
            whole = pending[0] if len(pending) == 1 else {name: np.concatenate([p[name] for p in pending], axis=0) for name in names}
            yield {name: array[:chunk] for name, array in whole.items()}
            count -= chunk
            pending = [{name: array[chunk:] for name, array in whole.items()}] if count else []
    if count:
        yield pending[0] if len(pending) == 1 else {name: np.concatenate([p[name] for p in pending], axis=0) for name in names}


def _batch_dynamic_copy(model: ir.Model) -> ir.Model | None:
    """A copy of a fixed-batch-1 model that takes any batch size, or None when that is not a plain edit.

    Graph inputs and outputs get a symbolic batch axis, intermediate shapes are dropped (ONNX Runtime
    re-infers them), and a Reshape whose constant target shape starts with 1 copies the batch
    dimension instead (target dim 0 -> 0, ``allowzero`` 0; ONNX Reshape-14). The caller checks the copy
    numerically against the original before trusting it.
    """
    inputs = list(model.graph.inputs)
    if not inputs or any(v.shape is None or len(v.shape) == 0 or v.shape[0] != 1 for v in inputs):
        return None
    copy = model.clone()
    for value in [*copy.graph.inputs, *copy.graph.outputs]:
        if value.shape is not None and len(value.shape) > 0:
            value.shape = ir.Shape(["batch", *list(value.shape)[1:]])
    for node in copy.graph:
        if node.op_type == "Reshape" and len(node.inputs) > 1 and node.inputs[1] is not None:
            target = node.inputs[1]
            if target.const_value is None or node.attributes.get_int("allowzero", 0) != 0:
                return None
            shape = target.const_value.numpy()
            if shape.size and shape[0] == 1:
                name = f"{target.name}_{node.name}_any_batch"
                new = ir.Value(name=name, const_value=ir.tensor(np.concatenate([[0], shape[1:]]).astype(shape.dtype), name=name),
                               shape=ir.Shape(shape.shape), type=target.type)
                copy.graph.register_initializer(new)
                node.replace_input_with(1, new)
        for value in node.outputs:
            if not value.is_graph_output():
                value.shape = None
    return copy


class VariantEvaluator:
    """Builds and measures int8/float mixes of one model from one shared calibration.

    Args:
        model: the canonicalized float model (not modified; variants are built on copies).
        calibration: :class:`~edgecomp.passes.quantize.selective.SelectiveCalibration` of ``model``.
        eval_batches, eval_labels: labelled evaluation data for accuracy (optional; both or neither).
            ``eval_batches`` may be a re-iterable or a zero-argument callable returning a fresh batch
            iterator (read again for every accuracy measurement), or a one-shot iterator (kept).

    Attributes:
        candidates: (name, op_type) of every int8 candidate node, graph order.
        fused: producer name -> the Relu fused into it in the all-int8 model.
        fp32_accuracy: accuracy (0..1) of the float model on the evaluation data, or None.
        eval_samples: number of evaluation samples (0 without).
        rules: the backend's weight range and fixed-output rule every variant is built with.
        stacked: True when variants run on stacked batches (vectorized over the batch).
        chunk: samples per ONNX Runtime call when ``stacked``.
        variants_built: how many variants were built and measured so far.
    """

    def __init__(self, model: ir.Model, calibration, *, eval_batches: Iterable[Batch] | None = None, eval_labels: np.ndarray | None = None, rules: QuantizationRules = DEFAULT_RULES) -> None:
        self.calibration = calibration
        self.rules = rules
        candidates, _ = select_int8_nodes(model)
        self.candidates = tuple((node.name, node.op_type) for node in candidates)
        self._candidate_names = frozenset(name for name, _ in self.candidates)
        self.fused = {producer.name: relu.name for relu, producer in _fused_activations(candidates).items()}
        # tensor -> the candidate node producing it, when int8 fixes or shares that output's parameters
        self._rule_producer = {
            value.name: node.name
            for node in candidates
            if (rules.fixed_output_params and node.op_type in FIXED_OUTPUT_PARAMS) or node.op_type in SHARES_INPUT_PARAMS
            for value in node.outputs
        }
        from edgecomp.passes.quantize.selective import reiterable_batches

        self._batches = calibration.batches
        self._first_batch = list(itertools.islice(iter(self._batches), 1))  # what ``build`` calibrates nothing on
        self._float_model, self.stacked = self._measurable_copy(model, self._batches)
        largest = getattr(calibration, "largest_batch", 0)
        self.chunk = largest if largest > 1 else MEASURE_CHUNK
        self._eval_batches: Iterable[Batch] = ()
        self._labels = None
        self.fp32_accuracy = None
        self.eval_samples = 0
        if eval_batches is not None and eval_labels is not None:
            source = reiterable_batches(eval_batches)
            self._eval_batches = source if source is not None else [dict(b) for b in eval_batches]
            self._labels = np.asarray(eval_labels).reshape(-1)
            self.eval_samples = sum(len(next(iter(b.values()))) for b in self._eval_batches)
            if self.eval_samples != len(self._labels):
                raise CalibrationDataError(f"evaluation data has {self.eval_samples} samples but {len(self._labels)} labels")
            reference = run_batches(make_session(self._float_model, optimize=False), self._eval_inputs())
            self.fp32_accuracy = metrics.accuracy(reference[0], self._labels)
        self._cache: dict[frozenset[str], Measurement] = {}
        self.variants_built = 0

    def _inputs(self) -> Iterator[Batch]:
        """The calibration batches as the variants run on them (read again from a re-iterable source)."""
        return _chunks(self._batches, self.chunk) if self.stacked else iter(self._batches)

    def _eval_inputs(self) -> Iterator[Batch]:
        """The evaluation batches as the variants run on them."""
        return _chunks(self._eval_batches, self.chunk) if self.stacked else iter(self._eval_batches)

    @staticmethod
    def _measurable_copy(model: ir.Model, batches: Iterable[Batch]) -> tuple[ir.Model, bool]:
        """The float model to build variants from, and whether it accepts stacked batches."""
        names = [v.name for v in model.graph.inputs]
        if all(v.shape is not None and len(v.shape) > 0 and not isinstance(v.shape[0], int) for v in model.graph.inputs):
            return model.clone(), True
        probe = list(itertools.islice(iter(batches), 4))  # the first min(4, all) batches
        if len(probe) < 2:
            return model.clone(), False
        copy = _batch_dynamic_copy(model)
        if copy is None:
            return model.clone(), False
        try:
            expected = run_batches(make_session(model, optimize=False), probe)
            actual = run_batches(make_session(copy, optimize=False), _stack(probe, len(probe)))
        except Exception as error:  # noqa: BLE001 - ONNX Runtime's errors derive from Exception only; measure batch by batch
            logger.debug("batch-dynamic copy refused (%s); measuring batch by batch", error)
            return model.clone(), False
        for exp, act in zip(expected, actual):
            if exp.shape != act.shape or not np.allclose(exp, act, rtol=1e-4, atol=1e-5 * max(1.0, float(np.abs(exp).max()))):
                logger.debug("batch-dynamic copy differs from the model (inputs %s); measuring batch by batch", names)
                return model.clone(), False
        return copy, True

    def fixed_params_for(self, float_nodes: Collection[str]) -> dict[str, tuple[float, int]]:
        """The ``fixed_params`` that make :func:`quantize_int8` use the shared calibration for this mix.

        Every observed tensor, except the outputs of int8 nodes whose output parameters the int8 spec
        fixes (Softmax/Sigmoid/Tanh) or shares with their input (MaxPool, Reshape, ...): those keep
        quantize_int8's own rule (a fixed parameter would override it).
        """
        float_nodes = set(float_nodes)
        return {
            name: params
            for name, params in self.calibration.params.items()
            if self._rule_producer.get(name) is None or self._rule_producer[name] in float_nodes
        }

    def layer(self, name: str) -> tuple[str, ...]:
        """A candidate and the node it fuses with (producer first), or just the candidate."""
        if name in self.fused:
            return (name, self.fused[name])
        for producer, relu in self.fused.items():
            if relu == name:
                return (producer, relu)
        return (name,)

    def with_calibration(self, calibration) -> VariantEvaluator:
        """An evaluator of the same model and data with other activation parameters (an empty cache)."""
        other = copy.copy(self)
        other.calibration = calibration
        other._cache = {}
        return other

    def build(self, float_nodes: Collection[str]) -> tuple[ir.Model, QuantizationPlan]:
        """A QDQ copy of the model with ``float_nodes`` in fp32 and every other candidate int8.

        Raises:
            KeyError: a name in ``float_nodes`` is not a candidate node.
        """
        float_nodes = frozenset(float_nodes)
        unknown = float_nodes - self._candidate_names
        if unknown:
            raise KeyError(f"not int8 candidate nodes: {sorted(unknown)}")
        variant = self._float_model.clone()
        plan = quantize_int8(
            variant, self._first_batch, choose=lambda node: "float in this variant" if node.name in float_nodes else None,
            fixed_params=self.fixed_params_for(float_nodes), mode="selective", rules=self.rules,
        )
        recalibrated = [t.name for t in plan.tensors if t.role == "activation" and t.method in METHODS]
        if recalibrated:  # a bug here, not a user error: the shared calibration missed a tensor
            raise RuntimeError(f"variant recalibrated tensors outside the shared calibration: {recalibrated}")
        return variant, plan

    def measure(self, float_nodes: Collection[str], *, accuracy: bool = True) -> Measurement:
        """Build the mix (see :meth:`build`), run it as the QDQ simulation, and measure it.

        Args:
            float_nodes: candidate node names kept in float.
            accuracy: also measure the accuracy on the evaluation data (when there is any); the
                sensitivity analysis needs only the SQNR.

        Results are cached per set of float nodes.
        """
        key = frozenset(float_nodes)
        cached = self._cache.get(key)
        wants_accuracy = accuracy and self._labels is not None
        if cached is not None and (cached.accuracy is not None or not wants_accuracy):
            return cached
        variant, _ = self.build(key)
        session = make_session(to_bytes(variant), optimize=False)
        self.variants_built += 1
        if cached is None:
            outputs = run_batches(session, self._inputs())
            for ref, out in zip(self.calibration.reference_outputs, outputs):
                if ref.shape != out.shape:
                    raise CalibrationDataError(
                        f"calibration data changed between passes: output of shape {list(out.shape)} where the first pass "
                        f"gave {list(ref.shape)} (a re-iterable source must give the same batches every time)"
                    )
            sqnr = min(metrics.sqnr_db(ref, out) for ref, out in zip(self.calibration.reference_outputs, outputs))
        else:
            sqnr = cached.sqnr_db
        measured_accuracy = metrics.accuracy(run_batches(session, self._eval_inputs())[0], self._labels) if wants_accuracy else None
        result = Measurement(sqnr, measured_accuracy)
        self._cache[key] = result
        return result


def _sort_key(all_int8_db: float):
    def key(item):
        index, entry = item
        gain = entry.all_but_this_db - all_int8_db
        gain = -math.inf if math.isnan(gain) else gain
        return (-gain, entry.only_this_int8_db, index)

    return key


def analyze_sensitivity(evaluator: VariantEvaluator) -> list[LayerSensitivity]:
    """Measure (a) only-this-int8 and (b) all-but-this-int8 for every candidate node (with its fused Relu).

    At most ``2 * n + 1`` variants for ``n`` candidates (all-int8 is shared with the search through the
    evaluator's cache).

    Returns:
        One :class:`LayerSensitivity` per candidate, most sensitive first: by the gain of (b) over
        all-int8 (largest first), then by (a) (lowest first), then graph order.
    """
    names = [name for name, _ in evaluator.candidates]
    all_int8 = evaluator.measure((), accuracy=False).sqnr_db
    entries = []
    for name, op_type in evaluator.candidates:
        layer = evaluator.layer(name)
        only = evaluator.measure([other for other in names if other not in layer], accuracy=False).sqnr_db
        all_but = evaluator.measure(layer, accuracy=False).sqnr_db
        entries.append(LayerSensitivity(name, op_type, only, all_but, layer if len(layer) > 1 else ()))
    ordered = sorted(enumerate(entries), key=_sort_key(all_int8))
    return [entry for _, entry in ordered]


def layer_sensitivity(model: ir.Model, batches: Iterable[Batch], *, progress: Callable[[int], None] | None = None, rules: QuantizationRules = DEFAULT_RULES) -> list[LayerSensitivity]:
    """The sensitivity of every int8 candidate node of ``model`` (not modified), most sensitive first.

    One calibration pass with per-tensor methods
    (:func:`~edgecomp.passes.quantize.selective.calibrate_selective`), then
    :func:`analyze_sensitivity`.
    """
    from edgecomp.passes.quantize.selective import calibrate_selective

    start = time.perf_counter()
    calibration = calibrate_selective(model, batches, progress)
    result = analyze_sensitivity(VariantEvaluator(model, calibration, rules=rules))
    logger.info("sensitivity analysis: %d nodes in %.2f s", len(result), time.perf_counter() - start)
    return result
