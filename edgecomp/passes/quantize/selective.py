"""Selective INT8 quantization: a calibration method per tensor, and the most sensitive layers kept in float.

Selective (the DESIGN's term) mixes approaches in one model. This module does three things:

1. **Per-tensor calibration method** (:func:`calibrate_selective`, :func:`choose_tensor_methods`):
   ONE streaming pass over the calibration batches fills one histogram
   (:class:`~edgecomp.passes.quantize.observers.HistogramObserver`) per activation tensor that any
   int8/float mix of the model may quantize. Each method's clipping range (``minmax``,
   ``percentile``, ``entropy``, ``mse``) is derived from that same histogram with the observers' own
   range logic, and each tensor takes the method whose range gives the lowest expected squared
   quantize-dequantize error over the histogram
   (:func:`~edgecomp.passes.quantize.observers.quantization_error`: clipping error of the values
   beyond the range plus the ``scale**2 / 12`` rounding noise inside it, the decomposition of
   Banner et al., "Post training 4-bit quantization of convolutional networks for
   rapid-deployment", NeurIPS 2019). The same pass records the FP32 outputs, the reference of every
   SQNR measured later.

   Memory: given a re-iterable source of batches (a zero-argument callable returning a fresh batch
   iterator, e.g. ``lambda: dataset.batches(32)``, or an object whose ``__iter__`` starts over, such
   as a list or a :class:`~edgecomp.passes.quantize.calibration_data.CalibrationDataset`), the
   batches are read again from it whenever a variant is measured, so only one batch (or one
   measuring chunk) is in memory at a time, whatever the sample count; only the FP32 *outputs* are
   kept. A one-shot iterator (a generator) is consumed once, so its batches are kept in memory.
2. **Sensitivity analysis** (:mod:`edgecomp.passes.quantize.sensitivity`) from that one calibration.
3. **Search** (:func:`quantize_selective`): all-int8 with the per-tensor methods; if a goal is given
   and not met, keep the most sensitive layers in float (fp32), one more at a time along the
   sensitivity order, measuring each step, until the output SQNR (``min_sqnr_db``) and/or the
   accuracy drop (``max_accuracy_drop``, percentage points, labelled evaluation data) is met. The
   first step that meets the goal is the fewest float layers along that order.

The per-tensor error is a local criterion: it weighs every value by how often it occurs, so it may
clip rare large activations that matter downstream. Measured at the model output it can lose to one
method everywhere: mnist-8 (1000 digits) 39.30 dB against minmax's 39.49 dB; MLPerf ResNet-8 18.2 dB
against percentile's 22.7 dB. ``compare_uniform_methods`` guards against that by also measuring
all-int8 with each single method everywhere (same histograms, no recalibration) and starting from
the best.

Weights are always symmetric per-channel int8 and activations asymmetric per-tensor int8 (TFLite int8
quantization specification); residual Adds run in int8 like every quantizable operator unless the
search keeps them in float. Float layers stay fp32 (fp16 islands are future work).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import NamedTuple

import numpy as np
import onnx_ir as ir

from edgecomp.errors import CalibrationDataError
from edgecomp.ir.run import make_session
from edgecomp.passes.base import InPlacePass, PassResult
from edgecomp.passes.quantize.naive import (
    _data_inputs,
    _is_constant,
    _is_float,
    quantize_int8,
    select_int8_nodes,
)
from edgecomp.passes.quantize.observers import (
    DEFAULT_BINS,
    METHODS,
    HistogramObserver,
    Observer,
    make_observer,
    quantization_error,
    quantization_params,
)
from edgecomp.passes.quantize.plan import QuantizationPlan
from edgecomp.passes.quantize.qdq import DEFAULT_RULES, QuantizationRules

logger = logging.getLogger(__name__)

Batch = Mapping[str, np.ndarray]

SELECTIVE_METHOD = "per-tensor: lowest expected quantization error of minmax/percentile/entropy/mse"
"""The plan's ``calibration_method`` in selective mode (each activation entry names its own method)."""


class TensorMethodChoice(NamedTuple):
    """The calibration method chosen for one activation tensor.

    Attributes:
        method: the chosen method (one of :data:`~edgecomp.passes.quantize.observers.METHODS`).
        errors: method -> expected squared quantize-dequantize error over the tensor's histogram,
            in squared real units of the tensor (lower is better).
        ranges: method -> the clipping range ``(min, max)`` that method gives, real units, min <= 0 <= max.
    """

    method: str
    errors: Mapping[str, float]
    ranges: Mapping[str, tuple[float, float]]

    @property
    def range(self) -> tuple[float, float]:
        """The chosen method's clipping range."""
        return self.ranges[self.method]


@dataclasses.dataclass(frozen=True)
class SelectiveCalibration:
    """The one calibration pass every selective variant shares.

    Attributes:
        choices: activation tensor name -> :class:`TensorMethodChoice`, for every float activation
            tensor that is an input or output of an int8 candidate node (any mix may quantize it).
        params: tensor name -> (scale, zero point) of the chosen range
            (:func:`~edgecomp.passes.quantize.observers.quantization_params`; a Relu output's range
            starts at 0, as in :func:`~edgecomp.passes.quantize.naive.quantize_int8`).
        batches: the calibration batches to measure variants on: a tuple holding them when they
            were given as a one-shot iterator, else a :class:`ReiterableBatches` that reads them
            again from the source on every pass (one batch in memory at a time).
        reference_outputs: FP32 model outputs on ``batches``, one array per graph output (graph
            output order), batches stacked on axis 0.
        output_names: the graph output names.
        samples: number of calibration samples.
        seconds: wall-clock time of the pass.
        largest_batch: samples in the largest calibration batch (0: unknown).
    """

    choices: Mapping[str, TensorMethodChoice]
    params: Mapping[str, tuple[float, int]]
    batches: Iterable[Batch]
    reference_outputs: tuple[np.ndarray, ...]
    output_names: tuple[str, ...]
    samples: int
    seconds: float
    largest_batch: int = 0

    def tensor_methods(self) -> dict[str, str]:
        """tensor name -> chosen method, as ``quantize_int8(..., tensor_methods=...)`` takes it."""
        return {name: choice.method for name, choice in self.choices.items()}

    def with_methods(self, methods: Mapping[str, str]) -> SelectiveCalibration:
        """The same calibration with other methods for some tensors (their ranges come from the same
        histograms, so nothing is recalibrated); ``methods``: tensor name -> method."""
        choices = dict(self.choices)
        params = dict(self.params)
        for name, method in methods.items():
            choices[name] = choices[name]._replace(method=method)
            params[name] = quantization_params(*choices[name].range)
        return dataclasses.replace(self, choices=choices, params=params)


def observed_tensors(model: ir.Model) -> list[str]:
    """Names of the activation tensors a selective mix of ``model`` may quantize, in graph order.

    Every float32, non-constant input and output of a node :func:`select_int8_nodes` makes an int8
    candidate: whichever neighbours end up in float, quantizing a candidate needs parameters for
    these tensors only.
    """
    names: list[str] = []
    seen: set[str] = set()
    candidates, _ = select_int8_nodes(model)
    for node in candidates:
        for value in [*_data_inputs(node), *node.outputs]:
            if _is_float(value) and not _is_constant(value) and value.name not in seen:
                seen.add(value.name)
                names.append(value.name)
    return names


def _observer_with_state(method: str, source: HistogramObserver) -> Observer:
    """A ``method`` observer holding a copy of ``source``'s state, so its range comes from the same histogram.

    Stopgap until observers.py offers this itself (``HistogramObserver.as_method``, see the issue note):
    copies the attributes every observer's ``range()`` reads.
    """
    options = {} if method == "minmax" else {"bins": source.bins}
    observer = make_observer(method, name=source.name, **options)
    for key, value in vars(source).items():
        if key in ("bins", "name"):
            continue
        setattr(observer, key, value.copy() if isinstance(value, np.ndarray) else value)
    return observer


def choose_method(observer: HistogramObserver, *, from_zero: bool = False, exact_zeros: int = 0) -> TensorMethodChoice:
    """The calibration method with the lowest expected quantize-dequantize error on one tensor's histogram.

    Each method of :data:`METHODS` gives its clipping range from the same histogram (the observers'
    own range logic; minmax: the observed extremes); the error of each range is
    :func:`quantization_error` over the histogram's bin centers weighted by their counts (the
    clipping + rounding decomposition of Banner et al. 2019). Values that are exactly 0 (ReLU outputs
    are often half zeros) are taken out of their bin and cost nothing: every range contains 0 and the
    zero point is an integer, so real 0 quantizes exactly (TFLite int8 spec); the uniform rounding
    noise ``scale**2 / 12`` charged to them would favour ranges that clip too much. Ties go to the
    earlier method in :data:`METHODS`.

    Args:
        observer: a histogram observer that has seen every calibration batch of the tensor.
        from_zero: the tensor is a Relu output: every range starts at 0 (as quantize_int8 does).
        exact_zeros: how many of the observed values were exactly 0.

    Returns:
        :class:`TensorMethodChoice`. A tensor that was always 0 gets ``minmax`` with every error 0.

    Raises:
        CalibrationDataError: the observer saw no finite value.
    """
    ranges: dict[str, tuple[float, float]] = {}
    for method in METHODS:
        low, high = _observer_with_state(method, observer).range()
        ranges[method] = (0.0 if from_zero else low, high)
    counts, edges = observer.histogram()
    counts = counts.astype(np.float64)
    total = counts.sum()
    if exact_zeros and edges[-1] > edges[0]:
        zero_bin = int(np.searchsorted(edges, 0.0, side="right")) - 1  # the bin [0, W): zero is an edge
        counts[zero_bin] -= min(float(exact_zeros), counts[zero_bin])
    used = counts > 0
    centers = ((edges[:-1] + edges[1:]) / 2)[used]
    weights = counts[used]
    errors: dict[str, float] = {}
    for method, (low, high) in ranges.items():
        if weights.sum() == 0:  # only zeros: every range is exact
            errors[method] = 0.0
        elif high - low <= np.finfo(np.float32).tiny:  # everything quantizes to 0
            errors[method] = float(np.dot(weights, centers * centers) / total)
        else:
            error = quantization_error(centers, weights, np.array([low]), np.array([high]))[0]
            errors[method] = float(error * weights.sum() / total)
    best = min(METHODS, key=lambda m: (errors[m], METHODS.index(m)))
    return TensorMethodChoice(best, errors, ranges)


def _count(batch: Batch) -> int:
    return len(next(iter(batch.values())))


BatchSource = Iterable[Batch] | Callable[[], Iterable[Batch]]
"""Calibration batches: a zero-argument callable returning a fresh batch iterator, a re-iterable
(``__iter__`` starts over: a list, a dataset), or a one-shot iterator (a generator)."""


class ReiterableBatches:
    """Batches read again from their source on every iteration, one batch in memory at a time.

    Args:
        factory: zero-argument callable returning a fresh iterable of batches (the same batches in
            the same order on every call).

    Each batch comes as ``dict[input name -> np.ndarray]`` (values through ``np.asarray``).
    """

    def __init__(self, factory: Callable[[], Iterable[Batch]]) -> None:
        self._factory = factory

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        for batch in self._factory():
            yield {key: np.asarray(value) for key, value in batch.items()}

    def __repr__(self) -> str:
        return f"ReiterableBatches({self._factory!r})"


def reiterable_batches(batches: BatchSource) -> ReiterableBatches | None:
    """``batches`` as a :class:`ReiterableBatches`, or None when it is a one-shot iterator.

    A zero-argument callable (not itself iterable) is a factory; an iterable whose ``iter()`` is not
    itself (a list, a tuple, a dataset whose ``__iter__`` starts over) is read again through
    ``iter()``; an iterator (``iter(x) is x``, e.g. a generator) can be read only once: None.
    """
    if isinstance(batches, ReiterableBatches):
        return batches
    if callable(batches) and not hasattr(batches, "__iter__"):
        return ReiterableBatches(batches)
    if iter(batches) is batches:
        return None
    return ReiterableBatches(lambda: batches)


def calibrate_selective(
    model: ir.Model,
    batches: BatchSource,
    progress: Callable[[int], None] | None = None,
    *,
    bins: int = DEFAULT_BINS,
) -> SelectiveCalibration:
    """One calibration pass for selective quantization: histograms, per-tensor methods, FP32 outputs.

    One ONNX Runtime inference per batch computes every tensor of :func:`observed_tensors` and the
    graph outputs; each tensor folds the batch into one fixed-size histogram. The variants are
    measured on the same batches later: a re-iterable source (see :func:`reiterable_batches`) is read
    again then, so memory stays flat in the sample count as in plain calibration (only the FP32
    outputs are kept); the batches of a one-shot iterator are kept in memory instead.

    Args:
        model: canonicalized float IR model (not modified).
        batches: calibration batches (input name -> array, batch axis first): a zero-argument
            callable returning a fresh batch iterator, a re-iterable, or a one-shot iterator.
        progress: called with the sample count of each batch.
        bins: histogram bins per tensor.

    Returns:
        :class:`SelectiveCalibration`.

    Raises:
        CalibrationDataError: no batch, or a tensor never had a finite value.
    """
    start = time.perf_counter()
    names = observed_tensors(model)
    graph_inputs = {value.name for value in model.graph.inputs}
    fed = [name for name in names if name in graph_inputs]
    computed = [name for name in names if name not in graph_inputs]
    output_names = tuple(value.name for value in model.graph.outputs)
    fetched = computed + [name for name in output_names if name not in computed]
    session = make_session(model, optimize=True, extra_outputs=computed)
    histograms = {name: HistogramObserver(bins=bins, name=name) for name in names}
    zeros = dict.fromkeys(names, 0)
    source = reiterable_batches(batches)
    kept: list[Batch] | None = [] if source is None else None
    outputs: list[list[np.ndarray]] = [[] for _ in output_names]
    samples = 0
    largest = 0
    for batch in batches if source is None else source:
        batch = {key: np.asarray(value) for key, value in batch.items()}
        if kept is not None:
            kept.append(batch)
        values = dict(zip(fetched, session.run(fetched, batch)))
        values.update((name, batch[name]) for name in fed)
        for name in names:
            histograms[name].update(values[name])
            zeros[name] += int(np.count_nonzero(values[name] == 0))
        for store, name in zip(outputs, output_names):
            store.append(values[name])
        count = _count(batch)
        samples += count
        largest = max(largest, count)
        if progress is not None:
            progress(count)
    if samples == 0:
        raise CalibrationDataError("calibration set is empty: no sample reached the model")
    relu_outputs = {value.name for node in model.graph if node.op_type == "Relu" for value in node.outputs}
    choices, params = {}, {}
    for name in names:
        choice = choose_method(histograms[name], from_zero=name in relu_outputs, exact_zeros=zeros[name])
        choices[name] = choice
        params[name] = quantization_params(*choice.range)
    reference = tuple(np.concatenate(parts, axis=0) for parts in outputs)
    stored = tuple(kept) if kept is not None else source
    return SelectiveCalibration(choices, params, stored, reference, output_names, samples, time.perf_counter() - start, largest)


def choose_tensor_methods(
    model: ir.Model, batches: BatchSource, progress: Callable[[int], None] | None = None
) -> dict[str, TensorMethodChoice]:
    """Per activation tensor, the calibration method with the lowest expected quantization error.

    One calibration pass (:func:`calibrate_selective`). ``{n: c.method for n, c in result.items()}``
    is what ``quantize_int8(..., tensor_methods=...)`` takes.

    Returns:
        tensor name -> :class:`TensorMethodChoice` ``(method, errors per method, ranges per method)``.
    """
    return dict(calibrate_selective(model, batches, progress).choices)


# --------------------------------------------------------------------------------------------------
# the search


@dataclasses.dataclass(frozen=True)
class SearchStep:
    """One measured configuration of the search.

    Attributes:
        float_layers: the layers kept in float (fp32), by the name of their sensitivity entry, in
            the order they were added (the first ``k`` of the sensitivity order).
        float_nodes: every node kept in float: those layers' nodes (with their fused Relus).
        sqnr_db: output SQNR vs FP32 on the calibration data (dB; the lowest over graph outputs).
        accuracy: top-1 accuracy (0..1) on the evaluation data, or None without labelled eval data.
        meets_goal: whether this step meets every goal given.
    """

    float_layers: tuple[str, ...]
    float_nodes: tuple[str, ...]
    sqnr_db: float
    accuracy: float | None
    meets_goal: bool


@dataclasses.dataclass(frozen=True)
class SelectiveResult:
    """Everything :func:`run_selective` decided and measured (the report's table, chart and search).

    Attributes:
        plan: the quantization plan of the final model (mode ``selective``).
        calibration: the shared calibration (per-tensor method choices, ranges).
        sensitivities: one :class:`~edgecomp.passes.quantize.sensitivity.LayerSensitivity` per
            candidate node, most sensitive first (empty when not analysed).
        all_int8_sqnr_db: output SQNR of all candidates int8 with the per-tensor methods.
        steps: the search, in order; step 0 is all-int8.
        float_layers: the layers the final model keeps in float (sensitivity entry names).
        float_nodes: the nodes the final model keeps in float (those layers with their fused Relus).
        fp32_accuracy: FP32 accuracy on the evaluation data (0..1), or None.
        goal: the goal in words ("none" without one).
        sensitivity_seconds, search_seconds: wall-clock times of the analysis and of the search.
    """

    plan: QuantizationPlan
    calibration: SelectiveCalibration
    sensitivities: tuple
    all_int8_sqnr_db: float
    steps: tuple[SearchStep, ...]
    float_layers: tuple[str, ...]
    float_nodes: tuple[str, ...]
    fp32_accuracy: float | None
    goal: str
    sensitivity_seconds: float
    search_seconds: float

    def report(self) -> dict:
        """JSON-serialisable summary for the compile report (non-finite dB values become None).

        Keys: ``goal``, ``all_int8_sqnr_db``, ``fp32_accuracy``, ``float_layers``, ``float_nodes``,
        ``sensitivity`` (one row per candidate, most sensitive first: ``node``, ``op_type``,
        ``only_this_int8_db``, ``all_but_this_db``, ``gain_db``, ``fused_layer``), ``search`` (one
        row per step: ``float_layers``, ``float_nodes``, ``sqnr_db``, ``accuracy``, ``meets_goal``),
        ``tensor_methods`` (tensor -> ``method`` and ``errors`` per method), ``calibration_seconds``,
        ``sensitivity_seconds``, ``search_seconds``.
        """

        def number(value):
            return float(value) if value is not None and math.isfinite(value) else None

        return {
            "goal": self.goal,
            "all_int8_sqnr_db": number(self.all_int8_sqnr_db),
            "fp32_accuracy": self.fp32_accuracy,
            "float_layers": list(self.float_layers),
            "float_nodes": list(self.float_nodes),
            "sensitivity": [
                {
                    "node": entry.node, "op_type": entry.op_type,
                    "only_this_int8_db": number(entry.only_this_int8_db), "all_but_this_db": number(entry.all_but_this_db),
                    "gain_db": number(entry.all_but_this_db - self.all_int8_sqnr_db), "fused_layer": list(entry.fused_layer),
                }
                for entry in self.sensitivities
            ],
            "search": [
                {"float_layers": list(step.float_layers), "float_nodes": list(step.float_nodes), "sqnr_db": number(step.sqnr_db),
                 "accuracy": step.accuracy, "meets_goal": step.meets_goal}
                for step in self.steps
            ],
            "tensor_methods": {
                name: {"method": choice.method, "errors": {m: number(e) for m, e in choice.errors.items()}}
                for name, choice in sorted(self.calibration.choices.items())
            },
            "calibration_seconds": self.calibration.seconds,
            "sensitivity_seconds": self.sensitivity_seconds,
            "search_seconds": self.search_seconds,
        }


_ACCURACY_TOLERANCE = 1e-9  # points: 0.993 - 0.992 is 0.1000000000000009 points in float64


def _goal_text(min_sqnr_db: float | None, max_accuracy_drop: float | None) -> str:
    parts = []
    if min_sqnr_db is not None:
        parts.append(f"output SQNR >= {min_sqnr_db:g} dB on the calibration data")
    if max_accuracy_drop is not None:
        parts.append(f"accuracy drop <= {max_accuracy_drop:g} points on the evaluation data")
    return " and ".join(parts) if parts else "none"


def _check_goal(min_sqnr_db, max_accuracy_drop, eval_batches, eval_labels) -> None:
    if min_sqnr_db is not None and not (isinstance(min_sqnr_db, (int, float)) and math.isfinite(min_sqnr_db)):
        raise ValueError(f"min_sqnr_db must be a finite number of dB, got {min_sqnr_db!r}")
    if max_accuracy_drop is not None:
        if not (isinstance(max_accuracy_drop, (int, float)) and math.isfinite(max_accuracy_drop) and max_accuracy_drop >= 0):
            raise ValueError(f"max_accuracy_drop must be a finite number of points >= 0, got {max_accuracy_drop!r}")
        if eval_batches is None or eval_labels is None:
            raise CalibrationDataError("--max-accuracy-drop needs labelled evaluation data (--eval with labels 'y')")


def run_selective(
    model: ir.Model,
    batches: BatchSource,
    *,
    min_sqnr_db: float | None = None,
    max_accuracy_drop: float | None = None,
    eval_batches: Iterable[Batch] | None = None,
    eval_labels: np.ndarray | None = None,
    analyze: bool = True,
    compare_uniform_methods: bool = False,
    progress: Callable[[int], None] | None = None,
    rules: QuantizationRules = DEFAULT_RULES,
) -> SelectiveResult:
    """Selective INT8: per-tensor methods, sensitivity analysis, and the fewest float layers meeting a goal.

    Steps: one calibration pass (:func:`calibrate_selective`); measure all-int8 with the chosen
    per-tensor methods; the sensitivity analysis
    (:func:`~edgecomp.passes.quantize.sensitivity.analyze_sensitivity`, when ``analyze`` or when
    the all-int8 model misses the goal); then, while the goal is not met, keep one more layer in
    float along the sensitivity order (most sensitive first by "all but this" SQNR) and measure the
    model again. The first step meeting the goal is the fewest float layers along that order; every
    step is recorded. No variant recalibrates: each is built with ``fixed_params`` from the one pass.
    Finally ``model`` is rewritten in place into the chosen QDQ form.

    Args:
        model: canonicalized, topologically sorted float IR model; modified in place.
        batches: calibration batches (input name -> array, batch axis first); SQNR is measured on them.
            A zero-argument callable returning a fresh batch iterator (``lambda: data.batches(32)``)
            or a re-iterable is read again for every measurement (memory flat in the sample count);
            a one-shot iterator's batches are kept in memory.
        min_sqnr_db: goal: output SQNR vs FP32 on the calibration data, dB (lowest over outputs).
        max_accuracy_drop: goal: FP32 top-1 accuracy minus compiled accuracy on the evaluation data,
            in percentage points (accuracy from the first graph output's argmax); needs
            ``eval_batches`` and ``eval_labels``.
        eval_batches: evaluation batches (the same kinds as ``batches``); eval_labels: int labels
            [samples], in batch order.
        analyze: run the sensitivity analysis even when no goal needs it (for the report).
        compare_uniform_methods: also measure all-int8 with one method for every tensor (each of
            :data:`METHODS`, ranges from the same histograms: no recalibration, 4 more variants)
            and start from whichever of these and the per-tensor choice has the highest output
            SQNR (ties: the per-tensor choice). The per-tensor error is a local criterion and can
            lose to a uniform method at the output (see the module notes); this guarantees the
            start is at least as good as naive with any single method on the calibration data.
        progress: called with the sample count of each calibration batch.
        rules: the backend's weight range and fixed-output rule (every variant, the search and the
            final model are quantized with them).

    Returns:
        :class:`SelectiveResult`; its ``plan`` describes ``model`` as rewritten.

    Raises:
        ValueError: a goal that is not a finite number (or a negative drop).
        CalibrationDataError: empty calibration data; an accuracy goal without labelled eval data.
    """
    from edgecomp.passes.quantize.sensitivity import (
        VariantEvaluator,
        analyze_sensitivity,
    )

    _check_goal(min_sqnr_db, max_accuracy_drop, eval_batches, eval_labels)
    calibration = calibrate_selective(model, batches, progress)
    evaluator = VariantEvaluator(model, calibration, eval_batches=eval_batches, eval_labels=eval_labels, rules=rules)

    def meets(measure) -> bool:
        ok = True
        if min_sqnr_db is not None:
            ok = ok and measure.sqnr_db >= min_sqnr_db
        if max_accuracy_drop is not None:
            ok = ok and (evaluator.fp32_accuracy - measure.accuracy) * 100.0 <= max_accuracy_drop + _ACCURACY_TOLERANCE
        return ok

    goal = _goal_text(min_sqnr_db, max_accuracy_drop)
    has_goal = min_sqnr_db is not None or max_accuracy_drop is not None
    search_start = time.perf_counter()
    first = evaluator.measure(())
    start_notes: list[str] = []
    start_from = "per-tensor"
    if compare_uniform_methods:
        start_notes.append(f"all-int8 start candidates: per-tensor methods {_format_db(first.sqnr_db)}")
        best = ("per-tensor", first, calibration, evaluator)
        for method in METHODS:
            uniform = calibration.with_methods({name: method for name in calibration.choices})
            uniform_evaluator = evaluator.with_calibration(uniform)
            measure = uniform_evaluator.measure((), accuracy=False)
            start_notes.append(f"uniform {method} {_format_db(measure.sqnr_db)}")
            if measure.sqnr_db > best[1].sqnr_db:
                best = (method, measure, uniform, uniform_evaluator)
        start_notes = ["; ".join(start_notes) + f": started from {best[0]}"]
        start_from, _, calibration, evaluator = best
        first = evaluator.measure(())  # with the accuracy, when there is evaluation data
    steps = [SearchStep((), (), first.sqnr_db, first.accuracy, meets(first) if has_goal else True)]
    search_seconds = time.perf_counter() - search_start
    sensitivities: Sequence = ()
    sensitivity_seconds = 0.0
    if analyze or not steps[0].meets_goal:
        start = time.perf_counter()
        sensitivities = analyze_sensitivity(evaluator)
        sensitivity_seconds = time.perf_counter() - start
    if not steps[0].meets_goal:
        start = time.perf_counter()
        layers: list[str] = []
        nodes: list[str] = []
        for entry in sensitivities:
            new = [name for name in entry.nodes if name not in nodes]
            if not new:  # a Relu already kept float with its producer: nothing changes
                continue
            layers.append(entry.node)
            nodes += new
            measure = evaluator.measure(nodes)
            steps.append(SearchStep(tuple(layers), tuple(nodes), measure.sqnr_db, measure.accuracy, meets(measure)))
            logger.info("selective search: %d layer(s) in float: SQNR %.2f dB, accuracy %s", len(layers), measure.sqnr_db, measure.accuracy)
            if steps[-1].meets_goal:
                break
        search_seconds += time.perf_counter() - start
    final = steps[-1]
    if has_goal and not final.meets_goal:
        logger.warning("selective: goal (%s) not met even with every candidate layer in float", goal)
        start_notes.append("goal not met even with every candidate layer in float")
    plan = _quantize_final(model, evaluator, calibration, final, sensitivities, first.sqnr_db, steps, goal, start_from, start_notes)
    return SelectiveResult(
        plan, calibration, tuple(sensitivities), first.sqnr_db, tuple(steps), final.float_layers, final.float_nodes,
        evaluator.fp32_accuracy, goal, sensitivity_seconds, search_seconds,
    )


def quantize_selective(
    model: ir.Model,
    batches: BatchSource,
    *,
    min_sqnr_db: float | None = None,
    max_accuracy_drop: float | None = None,
    eval_batches: Iterable[Batch] | None = None,
    eval_labels: np.ndarray | None = None,
    compare_uniform_methods: bool = False,
    progress: Callable[[int], None] | None = None,
    rules: QuantizationRules = DEFAULT_RULES,
) -> QuantizationPlan:
    """Quantize ``model`` in place to selective INT8 QDQ form and return the plan (mode ``selective``).

    :func:`run_selective` without the report data; see it for the arguments, the search and the errors.
    Without a goal this is all-int8 with a calibration method chosen per tensor.
    """
    return run_selective(
        model, batches, min_sqnr_db=min_sqnr_db, max_accuracy_drop=max_accuracy_drop,
        eval_batches=eval_batches, eval_labels=eval_labels, analyze=False,
        compare_uniform_methods=compare_uniform_methods, progress=progress, rules=rules,
    ).plan


class SelectiveQuantizationPass(InPlacePass):
    """:func:`run_selective` as a pass, so the pass manager's instruments (timing, ``--dump-ir``) see it.

    Args:
        batches: calibration batches (a one-shot iterator, a re-iterable, or a zero-argument
            callable returning a fresh batch iterator: see :func:`run_selective`); options: keyword
            arguments of :func:`run_selective`.

    Attributes:
        result: the :class:`SelectiveResult` after the pass ran, else None.
        plan: its plan, else None.
    """

    def __init__(self, batches: BatchSource, **options) -> None:
        super().__init__()
        self.batches, self.options = batches, options
        self.result: SelectiveResult | None = None

    @property
    def plan(self) -> QuantizationPlan | None:
        return None if self.result is None else self.result.plan

    def call(self, model: ir.Model) -> PassResult:
        self.result = run_selective(model, self.batches, **self.options)
        return PassResult(model, modified=True)


def _format_db(value: float) -> str:
    return f"{value:.2f} dB" if math.isfinite(value) else f"{value} dB"


def _quantize_final(model, evaluator, calibration, final: SearchStep, sensitivities, all_int8_db, steps, goal, start_from, start_notes) -> QuantizationPlan:
    """Rewrite ``model`` with the final step's float nodes and fixed parameters; annotate the plan."""
    by_node = {entry.node: entry for entry in sensitivities}
    float_nodes = set(final.float_nodes)
    kept_with = {
        other: entry.node for entry in sensitivities if entry.node in final.float_layers for other in entry.nodes if other != entry.node
    }

    def sensitivity_text(name: str) -> str:
        entry = by_node.get(name)
        if entry is None:
            return "not analysed"
        return (
            f"sensitivity {entry.all_but_this_db - all_int8_db:+.2f} dB "
            f"(output SQNR {_format_db(entry.all_but_this_db)} with only it in float vs {_format_db(all_int8_db)} all-int8; "
            f"{_format_db(entry.only_this_int8_db)} with only it in int8)"
        )

    def choose(node: ir.Node) -> str | None:
        if node.name in kept_with and node.name not in final.float_layers:
            return f"kept in float (fp32) by selective with {kept_with[node.name]}: they run as one fused int8 layer; fp16 islands are future work"
        if node.name in float_nodes:
            return f"kept in float (fp32) by selective: {sensitivity_text(node.name)}; fp16 islands are future work"
        return None

    fixed = evaluator.fixed_params_for(float_nodes)
    plan = quantize_int8(model, calibration.batches, choose=choose, fixed_params=fixed, mode="selective", rules=evaluator.rules)
    tensors = []
    for entry in plan.tensors:
        if entry.role == "activation" and entry.name in fixed:
            choice = calibration.choices[entry.name]
            entry = dataclasses.replace(entry, method=choice.method, range=tuple(float(v) for v in choice.range))
        tensors.append(entry)
    nodes = []
    for entry in plan.nodes:
        if entry.precision == "int8" and entry.reason.startswith("selective:"):
            entry = dataclasses.replace(entry, reason=f"selective: runs in int8; {sensitivity_text(entry.name)}")
        nodes.append(entry)
    method_counts = {}
    for name in fixed:
        method_counts[calibration.choices[name].method] = method_counts.get(calibration.choices[name].method, 0) + 1
    counts = ", ".join(f"{m} {method_counts[m]}" for m in METHODS if m in method_counts)
    if start_from == "per-tensor":
        methods_note = (
            "activation calibration method chosen per tensor by the lowest expected quantize-dequantize error on its "
            f"histogram (clipping + rounding, Banner et al. 2019): {counts}"
        )
    else:
        methods_note = f"activation calibration method {start_from} for every tensor: its all-int8 output SQNR beat the per-tensor choice ({counts})"
    notes = [
        "weights: symmetric per-channel int8 always (TFLite int8 quantization specification); activations: asymmetric per-tensor int8",
        methods_note,
        "residual Adds run in int8 unless kept in float below; float layers stay fp32 (fp16 islands are future work)",
        f"goal: {goal}; SQNR measured vs FP32 on {calibration.samples} calibration samples"
        + (f", FP32 accuracy {evaluator.fp32_accuracy * 100:.2f}% on {evaluator.eval_samples} evaluation samples" if evaluator.fp32_accuracy is not None else ""),
    ]
    notes += list(plan.notes)  # the backend's rules (weight range, calibrated fixed outputs)
    notes += list(start_notes)
    for index, step in enumerate(steps):
        accuracy = "" if step.accuracy is None else f", accuracy {step.accuracy * 100:.2f}%"
        kept = ", ".join(step.float_nodes) if step.float_nodes else "none"
        notes.append(
            f"search step {index}: {len(step.float_layers)} layer(s) in float (nodes: {kept}): SQNR {_format_db(step.sqnr_db)}{accuracy}"
            f" -> {'goal met' if step.meets_goal else 'goal not met'}"
        )
    return dataclasses.replace(plan, calibration_method=SELECTIVE_METHOD, calibration_samples=calibration.samples,
                               nodes=tuple(nodes), tensors=tuple(tensors), notes=tuple(notes))
