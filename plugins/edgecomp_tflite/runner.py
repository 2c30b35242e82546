"""Run a lowered ``.tflite`` in LiteRT (``ai_edge_litert``) on the host, and compare it with reference outputs.

LiteRT is imported lazily (DESIGN: heavy imports inside the backend that needs them). The runner
takes feeds in ONNX layout, keyed by ONNX input name, and returns outputs in ONNX graph output
order and layout, whatever ``io_layout`` the file was written with, so ``--eval`` and verification
compare like with like.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from edgecomp_tflite.layout import Layout, load, store
from edgecomp_tflite.lower import LoweredModel
from edgecomp_tflite.writer import Quantization

if TYPE_CHECKING:
    import onnx_ir as ir

#: Largest allowed max |LiteRT - reference| / (reference max - reference min) for float32 outputs.
FLOAT32_TOLERANCE = 1e-4


class LiteRTRunner:
    """``runner(feeds) -> list[np.ndarray]`` over one LiteRT interpreter (1 thread, default delegates).

    Inputs whose batch size differs from the current one are resized (the file marks a dynamic
    batch with -1 in ``shape_signature``) and the tensors re-allocated.

    Args:
        lowered: the lowered model (bytes, I/O names and layouts).
        num_threads: interpreter threads (1: reproducible timing and results).
        reference_kernels: run LiteRT's reference kernels (``OpResolverType.BUILTIN_REF``, the
            bit-exact int8 reference) instead of the default optimized kernels and delegates.
    """

    def __init__(self, lowered: LoweredModel, num_threads: int = 1, *, reference_kernels: bool = False) -> None:
        self.lowered = lowered
        self.num_threads = num_threads
        self.reference_kernels = reference_kernels
        self._interpreter = None
        self._shapes: list[tuple[int, ...]] = []

    def _open(self):
        from ai_edge_litert.interpreter import Interpreter, OpResolverType

        resolver = OpResolverType.BUILTIN_REF if self.reference_kernels else OpResolverType.AUTO
        interpreter = Interpreter(model_content=self.lowered.data, num_threads=self.num_threads, experimental_op_resolver_type=resolver)
        interpreter.allocate_tensors()
        self._shapes = [tuple(detail["shape"]) for detail in interpreter.get_input_details()]
        return interpreter

    def __call__(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """Run once. ``feeds``: ONNX input name -> array in ONNX layout (batch axis first).

        Raises:
            KeyError: an input name is missing from ``feeds``.
        """
        if self._interpreter is None:
            self._interpreter = self._open()
        interpreter = self._interpreter
        details = interpreter.get_input_details()
        arrays = []
        for name, layout, detail in zip(self.lowered.input_names, self.lowered.input_layouts, details):
            arrays.append(np.ascontiguousarray(store(np.asarray(feeds[name]), layout), dtype=detail["dtype"]))
        shapes = [array.shape for array in arrays]
        if shapes != self._shapes:
            for detail, shape in zip(details, shapes):
                interpreter.resize_tensor_input(detail["index"], list(shape), strict=False)
            interpreter.allocate_tensors()
            self._shapes = shapes
        for detail, array in zip(interpreter.get_input_details(), arrays):
            interpreter.set_tensor(detail["index"], array)
        interpreter.invoke()
        return [load(interpreter.get_tensor(detail["index"]), layout) for detail, layout in zip(interpreter.get_output_details(), self.lowered.output_layouts)]


#: Quantized outputs: at least this fraction of elements within :data:`LSB_TOLERANCE` of the reference.
WITHIN_ONE_LSB_FRACTION = 0.99
#: Difference (in output LSBs) counted as agreement: one quantization step.
LSB_TOLERANCE = 1.0
#: Slack for float rounding when a dequantized difference is divided by its scale.
_LSB_SLACK = 1e-3


@dataclasses.dataclass(frozen=True)
class Verification:
    """LiteRT against the reference outputs on the verification samples.

    Float outputs pass when ``max |LiteRT - reference| / (reference max - min)`` is at most
    :attr:`tolerance`; quantized outputs (int8, or float dequantized from an int8 tensor) when at
    least :data:`WITHIN_ONE_LSB_FRACTION` of their elements differ by at most one LSB (one step of
    the output tensor's scale).

    Attributes:
        max_relative_difference: worst output's max |LiteRT - reference| / (reference max - min).
        per_output: that figure for each output name.
        samples: number of samples (batch rows) compared.
        tolerance: the allowed maximum for float outputs.
        lsb: for each quantized output, ``{"max_lsb": ..., "within_1_lsb": fraction, "elements": n}``.
        operators: the same figures per int8 operator group, each run on LiteRT's own inputs
            (:func:`operator_figures`); filled when an output misses the LSB rule. The simulation
            rounds in float (ties to even) where TFLite's kernels round in fixed point (average
            pooling and ADD round ties away from zero, SOFTMAX uses lookup tables), so rare 1-LSB
            differences arise and later layers amplify them (a fully connected layer by up to
            ``s_in * max|w| / s_out`` LSBs per input LSB, a softmax by tens of LSBs). An output
            missing the rule still passes when every operator meets it.
    """

    max_relative_difference: float
    per_output: dict[str, float]
    samples: int
    tolerance: float
    lsb: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)
    operators: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)
    sqnr_db: dict[str, float] = dataclasses.field(default_factory=dict)
    min_sqnr_db: float | None = None

    @property
    def failures(self) -> list[str]:
        """One line per output that fails its rule."""
        lines = []
        for name, figure in self.per_output.items():
            if name in self.lsb:
                entry = self.lsb[name]
                if entry["within_1_lsb"] < WITHIN_ONE_LSB_FRACTION and self.operators_pass:
                    continue
                if entry["within_1_lsb"] < WITHIN_ONE_LSB_FRACTION:
                    lines.append(
                        f"output {name!r}: {entry['within_1_lsb']:.2%} of {entry['elements']} elements within 1 LSB of the reference "
                        f"(at least {WITHIN_ONE_LSB_FRACTION:.0%} required), max {entry['max_lsb']:g} LSB"
                    )
            elif self.min_sqnr_db is not None:
                if self.sqnr_db[name] < self.min_sqnr_db:
                    lines.append(f"output {name!r}: SQNR {self.sqnr_db[name]:.1f} dB against the reference (at least {self.min_sqnr_db:g} dB required for hybrid kernels)")
            elif figure > self.tolerance and not self.operators_pass:
                lines.append(f"output {name!r} differs from the reference by {figure:.2e} of its range (tolerance {self.tolerance:.0e})")
        return lines

    @property
    def operators_pass(self) -> bool:
        """True when operator figures were measured and every group meets its rule (LSB rule for
        int8 results, :attr:`tolerance` for float outputs)."""
        return bool(self.operators) and all(
            entry["within_1_lsb"] >= WITHIN_ONE_LSB_FRACTION if "within_1_lsb" in entry else entry["max_relative_difference"] <= self.tolerance
            for entry in self.operators.values()
        )

    @property
    def passed(self) -> bool:
        return not self.failures


def verify(
    runner: LiteRTRunner,
    inputs: Sequence[Mapping[str, np.ndarray]],
    reference_outputs: Sequence[Sequence[np.ndarray]],
    tolerance: float = FLOAT32_TOLERANCE,
    quantization: Sequence[Quantization | None] | None = None,
    *,
    min_sqnr_db: float | None = None,
) -> Verification:
    """Run every verification batch and compare each output with the reference.

    Every output gets its difference relative to its range: the range is the reference output's
    max - min over all samples (a constant output uses its largest magnitude, or 1), so the figure
    is unit-free: 1e-4 means one ten-thousandth of what the output spans on this data. Outputs
    with a per-tensor ``quantization`` (the int8 tensor they are, or are dequantized from) are also
    measured in LSBs: ``|LiteRT - reference|`` for int8 values, divided by the scale for float ones.

    Args:
        runner: the artifact's runner.
        inputs, reference_outputs: batches and the reference outputs for each (graph output order).
        tolerance: float outputs' allowed difference relative to the range.
        quantization: per output, its quantization or None (default: all None).
        min_sqnr_db: judge float outputs by their SQNR against the reference instead (dB; hybrid
            dynamic-range kernels, whose int8 activation noise the range rule cannot allow).
    """
    names = runner.lowered.output_names
    quantization = list(quantization) if quantization is not None else [None] * len(names)
    actual: list[list[np.ndarray]] = [[] for _ in names]
    expected: list[list[np.ndarray]] = [[] for _ in names]
    samples = 0
    for feeds, reference in zip(inputs, reference_outputs):
        samples += len(next(iter(feeds.values())))
        for index, array in enumerate(runner(feeds)):
            actual[index].append(np.asarray(array))
            expected[index].append(np.asarray(reference[index]))
    per_output, lsb, sqnr = {}, {}, {}
    for name, got, want, params in zip(names, actual, expected, quantization):
        got_all = np.concatenate([a.reshape(-1) for a in got]) if got else np.zeros(0)
        want_all = np.concatenate([w.reshape(-1) for w in want]) if want else np.zeros(0)
        difference = np.abs(got_all.astype(np.float64) - want_all.astype(np.float64))
        want64 = want_all.astype(np.float64)
        span = float(want64.max() - want64.min()) if want64.size else 1.0
        if span == 0.0:
            span = float(np.abs(want64).max(initial=0.0)) or 1.0
        per_output[name] = float(difference.max(initial=0.0)) / span
        if min_sqnr_db is not None and params is None:
            noise = float(np.sum(difference**2))
            sqnr[name] = float("inf") if noise == 0.0 else float(10.0 * np.log10(max(float(np.sum(want64**2)), 1e-30) / noise))
        if params is not None and not params.per_channel:
            steps = difference if got_all.dtype.kind in "iu" else difference / params.scale[0]
            lsb[name] = lsb_figures(steps)
    worst = max(per_output.values(), default=0.0)
    return Verification(worst, per_output, samples, tolerance, lsb, sqnr_db=sqnr, min_sqnr_db=min_sqnr_db)


def lsb_figures(steps: np.ndarray) -> dict[str, float]:
    """``{"max_lsb", "within_1_lsb", "elements"}`` of absolute differences measured in LSBs."""
    return {
        "max_lsb": float(np.round(steps.max(initial=0.0), 3)),
        "within_1_lsb": float(np.mean(steps <= LSB_TOLERANCE + _LSB_SLACK)) if steps.size else 1.0,
        "elements": int(steps.size),
    }


def with_extra_outputs(data: bytes, tensors: Sequence[int]) -> bytes:
    """A copy of the ``.tflite`` bytes whose subgraph also outputs ``tensors`` (after the graph
    outputs), so LiteRT computes them with the same kernels and delegates as the artifact.
    For inspection only: buffers lose their 16-byte alignment and the signature is dropped."""
    import flatbuffers

    from edgecomp_tflite.writer import FILE_IDENTIFIER, read_model

    model = read_model(data)
    subgraph = model.subgraphs[0]
    subgraph.outputs = [*subgraph.outputs, *tensors]
    model.signatureDefs = None
    builder = flatbuffers.Builder(len(data) + 1024)
    builder.Finish(model.Pack(builder), file_identifier=FILE_IDENTIFIER)
    return bytes(builder.Output())


@dataclasses.dataclass(frozen=True)
class OperatorGroup:
    """A part of a QDQ model checked alone (:func:`operator_figures`).

    Attributes:
        output: ONNX name of its result: an int8 value (a QuantizeLinear output) or a float graph output.
        inputs: ONNX names of the int8 values (or graph inputs) it reads.
        quantized: True for an int8 result (compared in LSBs), False for a float graph output
            (compared relative to its range).
    """

    output: str
    inputs: tuple[str, ...]
    quantized: bool


def operator_groups(model: ir.Model, int8_names: Iterable[str]) -> list[OperatorGroup]:
    """The operator groups of a QDQ model: every QuantizeLinear output and every float graph output,
    with the int8 values its computation starts from (walking back through float nodes to the
    DequantizeLinear nodes of non-constant int8 values, or to graph inputs), e.g.
    ``DQ -> Conv -> Relu -> Q`` or a float island ``DQ -> Softmax -> output``."""
    available = set(int8_names)
    graph_inputs = {v.name for v in model.graph.inputs}
    ends = [(node.outputs[0], node.inputs[0], True) for node in model.graph if node.op_type == "QuantizeLinear" and node.outputs[0].name in available]
    ends += [(value, value, False) for value in model.graph.outputs if value.dtype is not None and value.dtype.name == "FLOAT"]
    groups = []
    for output, start, quantized in ends:
        inputs: list[str] = []
        stack, seen, closed = [start], set(), True
        while stack and closed:
            value = stack.pop()
            if id(value) in seen or value.const_value is not None:
                continue
            seen.add(id(value))
            producer = value.producer()
            if producer is None:
                closed = value.name in graph_inputs
                inputs.append(value.name)
            elif producer.op_type == "DequantizeLinear":
                source = producer.inputs[0]
                if source.const_value is None:
                    closed = source.name in available
                    if source.name not in inputs:
                        inputs.append(source.name)
            elif producer.op_type == "QuantizeLinear":
                closed = False
            else:
                stack.extend(v for v in producer.inputs if v is not None)
        if closed and inputs and any(name not in graph_inputs for name in inputs):
            groups.append(OperatorGroup(output.name, tuple(inputs), quantized))
    return groups


def operator_figures(
    lowered: LoweredModel, model: ir.Model, inputs: Sequence[Mapping[str, np.ndarray]], *, reference_kernels: bool = False
) -> dict[str, dict[str, float]]:
    """Per operator group (:func:`operator_groups`): LiteRT's result against ONNX Runtime running
    that group alone (QDQ simulation) on LiteRT's own int8 inputs.

    This checks every lowered operator without the amplification of upstream rounding differences
    (a fully connected layer can turn a 1-LSB difference of its input into several LSBs of its
    output), which end-to-end comparison cannot tell from a lowering error. LiteRT computes the
    intermediate tensors with the artifact's own kernels (:func:`with_extra_outputs`), the default
    ones or, with ``reference_kernels``, its reference kernels (:class:`LiteRTRunner`).

    Returns:
        group output name -> ``{"max_lsb", "within_1_lsb", "elements"}`` for int8 results, or
        ``{"max_relative_difference"}`` (to the range of the group's result) for float outputs.
    """
    import onnx.utils

    from edgecomp.ir.load import to_proto
    from edgecomp.ir.run import make_session
    from edgecomp_tflite.writer import read_model

    groups = operator_groups(model, lowered.int8_values)
    if not groups:
        return {}
    graph_names = set(lowered.input_names) | set(lowered.output_names)
    names = sorted({name for group in groups for name in (group.output, *group.inputs) if name not in graph_names})
    tensors = [lowered.int8_values[name][0] for name in names]
    file_tensors = read_model(lowered.data).subgraphs[0].tensors
    raw = [Layout.onnx(len(file_tensors[tensor].shape)) for tensor in tensors]  # stored arrays as they are
    probe = dataclasses.replace(
        lowered,
        data=with_extra_outputs(lowered.data, tensors),
        output_names=(*lowered.output_names, *names),
        output_layouts=(*lowered.output_layouts, *raw),
    )
    runner = LiteRTRunner(probe, reference_kernels=reference_kernels)
    count = len(lowered.output_names)
    values = []
    for feeds in inputs:
        results = runner(feeds)
        batch = {name: np.asarray(feeds[name]) for name in lowered.input_names}
        batch.update(zip(lowered.output_names, results[:count]))
        for name, array in zip(names, results[count:]):
            _, layout, shape = lowered.int8_values[name]
            batch[name] = load(array.reshape(shape), layout)
        values.append(batch)
    extractor = onnx.utils.Extractor(to_proto(model))
    figures = {}
    for group in groups:
        session = make_session(extractor.extract_model(list(group.inputs), [group.output]).SerializeToString(), optimize=False)
        got, want = [], []
        for batch in values:
            want.append(np.asarray(session.run(None, {name: batch[name] for name in group.inputs})[0], np.float64).reshape(-1))
            got.append(np.asarray(batch[group.output], np.float64).reshape(-1))
        got_all, want_all = np.concatenate(got), np.concatenate(want)
        difference = np.abs(got_all - want_all)
        if group.quantized:
            figures[group.output] = lsb_figures(difference)
        else:
            span = float(want_all.max() - want_all.min()) if want_all.size else 1.0
            figures[group.output] = {"max_relative_difference": float(difference.max(initial=0.0)) / (span or 1.0)}
    return figures


def read_quantization(data: bytes, tensor: int) -> Quantization:
    """The per-tensor quantization of tensor ``tensor`` in ``.tflite`` bytes."""
    from edgecomp_tflite.writer import read_model

    params = read_model(data).subgraphs[0].tensors[tensor].quantization
    return Quantization(tuple(float(s) for s in params.scale), tuple(int(z) for z in params.zeroPoint), int(params.quantizedDimension))
