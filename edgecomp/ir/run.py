"""Run an IR model (or ONNX bytes) in ONNX Runtime on the CPU: the reference executor of every stage.

ONNX Runtime is imported lazily (it is heavy); the pipeline uses it for calibration, for the FP32
reference run, and for comparing a stage with the one before it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable, Mapping, Sequence

import numpy as np
import onnx_ir as ir

from edgecomp.ir.load import to_bytes

if TYPE_CHECKING:
    import onnxruntime


def make_session(model: ir.Model | bytes, *, optimize: bool = False, extra_outputs: Sequence[str] = ()) -> "onnxruntime.InferenceSession":
    """An ONNX Runtime CPU session for ``model``.

    Args:
        model: the IR, or serialized ONNX / ORT-format bytes.
        optimize: False runs the graph exactly as written (``ORT_DISABLE_ALL``: QDQ nodes are executed
            as float simulation); True uses ONNX Runtime's defaults (``ORT_ENABLE_ALL``: QDQ groups are
            fused into integer kernels such as QLinearConv), i.e. how a user's runtime executes it.
        extra_outputs: names of intermediate float tensors to expose as additional outputs
            (calibration); only allowed when ``model`` is an IR.
    """
    import onnx
    import onnxruntime

    if extra_outputs:
        if not isinstance(model, ir.Model):
            raise TypeError("extra_outputs needs an IR model")
        from edgecomp.ir.load import to_proto

        proto = to_proto(model)
        existing = {o.name for o in proto.graph.output}
        for name in extra_outputs:
            if name not in existing:
                proto.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
        data = proto.SerializeToString()
    else:
        data = model if isinstance(model, bytes) else to_bytes(model)
    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = (
        onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize else onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
    )
    options.log_severity_level = 3
    return onnxruntime.InferenceSession(data, options, providers=["CPUExecutionProvider"])


def run_batches(session: "onnxruntime.InferenceSession", batches: Iterable[Mapping[str, np.ndarray]]) -> list[np.ndarray]:
    """Run every batch and concatenate each graph output along the batch axis.

    Returns:
        One array per session output, in output order, with all batches stacked on axis 0.
    """
    collected: list[list[np.ndarray]] = []
    for batch in batches:
        outputs = session.run(None, dict(batch))
        if not collected:
            collected = [[] for _ in outputs]
        for store, array in zip(collected, outputs):
            store.append(array)
    return [np.concatenate(parts, axis=0) for parts in collected]
