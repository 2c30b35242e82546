"""Calibration: stream a representative dataset through the float model and observe activation ranges.

One ONNX Runtime inference per calibration batch computes every tensor to be observed at once (they
are exposed as extra session outputs); each observer folds the batch into a fixed-size state
(min/max or a histogram), so memory does not grow with the number of samples.
"""

from __future__ import annotations

from typing import Callable, Iterable, Mapping

import numpy as np
import onnx_ir as ir

from edgecomp.errors import CalibrationDataError
from edgecomp.ir.run import make_session
from edgecomp.passes.quantize.observers import make_observer


def collect_ranges(
    model: ir.Model,
    methods: Mapping[str, str],
    batches: Iterable[Mapping[str, np.ndarray]],
    progress: Callable[[int], None] | None = None,
) -> tuple[dict[str, tuple[float, float]], int]:
    """Observe the real-valued range of each named float tensor over the calibration batches.

    Args:
        model: the float IR model (not modified).
        methods: tensor name (graph input or intermediate float tensor) -> observer name
            (``minmax``, ``percentile``, ``entropy``, ``mse``; see
            :mod:`edgecomp.passes.quantize.observers`); tensors may use different methods, all
            observed in the same single inference pass per batch.
        progress: called with the number of samples of each batch after it is processed.

    Returns:
        (ranges, samples): tensor name -> (min, max) clipping range in real units, with min <= 0
        <= max; and the number of samples seen.

    Raises:
        CalibrationDataError: no batch was given.
    """
    tensor_names = sorted(methods)
    observers = {name: make_observer(methods[name]) for name in tensor_names}
    graph_inputs = {value.name for value in model.graph.inputs}
    fed = [name for name in tensor_names if name in graph_inputs]
    computed = [name for name in tensor_names if name not in graph_inputs]
    session = make_session(model, optimize=True, extra_outputs=computed) if computed else None
    samples = 0
    for batch in batches:
        count = len(next(iter(batch.values())))
        for name in fed:
            observers[name].update(batch[name])
        if session is not None:
            for name, array in zip(computed, session.run(computed, dict(batch))):
                observers[name].update(array)
        samples += count
        if progress is not None:
            progress(count)
    if samples == 0:
        raise CalibrationDataError("calibration set is empty: no sample reached the model")
    return {name: observers[name].range() for name in tensor_names}, samples
