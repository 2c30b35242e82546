"""Run a lowered ``.tflite`` in LiteRT (``ai_edge_litert``) on the host, and compare it with reference outputs.

LiteRT is imported lazily (DESIGN: heavy imports inside the backend that needs them). The runner
takes feeds in ONNX layout, keyed by ONNX input name, and returns outputs in ONNX graph output
order and layout, whatever ``io_layout`` the file was written with, so ``--eval`` and verification
compare like with like.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

import numpy as np

from edgecomp_tflite.layout import load, store
from edgecomp_tflite.lower import LoweredModel

#: Largest allowed max |LiteRT - reference| / (reference max - reference min) for float32 outputs.
FLOAT32_TOLERANCE = 1e-4


class LiteRTRunner:
    """``runner(feeds) -> list[np.ndarray]`` over one LiteRT interpreter (1 thread, default delegates).

    Inputs whose batch size differs from the current one are resized (the file marks a dynamic
    batch with -1 in ``shape_signature``) and the tensors re-allocated.

    Args:
        lowered: the lowered model (bytes, I/O names and layouts).
        num_threads: interpreter threads (1: reproducible timing and results).
    """

    def __init__(self, lowered: LoweredModel, num_threads: int = 1) -> None:
        self.lowered = lowered
        self.num_threads = num_threads
        self._interpreter = None
        self._shapes: list[tuple[int, ...]] = []

    def _open(self):
        from ai_edge_litert.interpreter import Interpreter

        interpreter = Interpreter(model_content=self.lowered.data, num_threads=self.num_threads)
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


@dataclasses.dataclass(frozen=True)
class Verification:
    """LiteRT against the reference outputs on the verification samples.

    Attributes:
        max_relative_difference: worst output's max |LiteRT - reference| / (reference max - min).
        per_output: that figure for each output name.
        samples: number of samples (batch rows) compared.
        tolerance: the allowed maximum.
    """

    max_relative_difference: float
    per_output: dict[str, float]
    samples: int
    tolerance: float

    @property
    def passed(self) -> bool:
        return self.max_relative_difference <= self.tolerance


def verify(runner: LiteRTRunner, inputs: Sequence[Mapping[str, np.ndarray]], reference_outputs: Sequence[Sequence[np.ndarray]], tolerance: float = FLOAT32_TOLERANCE) -> Verification:
    """Run every verification batch and compare each output with the reference, relative to its range.

    The range is the reference output's max - min over all samples (a constant output uses its
    largest magnitude, or 1), so the figure is unit-free: 1e-4 means one ten-thousandth of what the
    output spans on this data.
    """
    names = runner.lowered.output_names
    actual: list[list[np.ndarray]] = [[] for _ in names]
    expected: list[list[np.ndarray]] = [[] for _ in names]
    samples = 0
    for feeds, reference in zip(inputs, reference_outputs):
        samples += len(next(iter(feeds.values())))
        for index, array in enumerate(runner(feeds)):
            actual[index].append(np.asarray(array, np.float64))
            expected[index].append(np.asarray(reference[index], np.float64))
    per_output = {}
    for name, got, want in zip(names, actual, expected):
        got_all, want_all = np.concatenate([a.reshape(-1) for a in got]), np.concatenate([w.reshape(-1) for w in want])
        span = float(want_all.max() - want_all.min()) if want_all.size else 1.0
        if span == 0.0:
            span = float(np.abs(want_all).max()) or 1.0
        per_output[name] = float(np.abs(got_all - want_all).max(initial=0.0)) / span
    worst = max(per_output.values(), default=0.0)
    return Verification(worst, per_output, samples, tolerance)
