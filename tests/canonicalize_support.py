"""Shared helpers for the canonicalization pass tests: real models, real inputs, ONNX Runtime runs.

Imported by ``tests/passes/test_*.py`` (``tests`` is on pytest's ``pythonpath``). Paths come from
``realdata``; provenance of every asset is in ``tests/assets/PROVENANCE.md``.
"""

from __future__ import annotations

import collections
from typing import Iterable, Sequence

import numpy as np
import onnx
import onnx.version_converter
import onnx_ir as ir
import onnxruntime
from PIL import Image

from edgecomp.passes.canonicalize import RemoveLegacyInitializerInputsPass
from realdata import ASSETS, MLPERF, MNIST_CALIB, MNIST_EVAL, MNIST_MODEL, ROOT

KWS_QDQ = MLPERF / "kws" / "kws_ref_model_int8_qdq.onnx"
KWS_FLOAT = MLPERF / "kws" / "kws_ref_model_float32.onnx"
KWS_SAMPLE = MLPERF / "kws" / "mlperf_kws_input_data_int8_1x49x10x1.npy"
VWW_FLOAT = MLPERF / "vww" / "vww_96_float.onnx"
IC_FLOAT = MLPERF / "ic" / "pretrainedResnet.onnx"
AD_FLOAT = MLPERF / "ad" / "ad01_fp32.onnx"
#: AD data may only be used from the shared store (license unverified, see shared README).
AD_DATA = ROOT.parent / "shared" / "data" / "ad" / "normal_id_01_00000000_hist_librosa.bin"
IMAGES = sorted((ASSETS / "images").glob("skimage_*.[pj][np]g"))

#: KWS int8 input quantization (shared README): real = (q - 83) * 0.5847029089927673.
KWS_INPUT_SCALE, KWS_INPUT_ZERO_POINT = 0.5847029089927673, 83


def load_mnist(*, remove_legacy_inputs: bool = True) -> ir.Model:
    """mnist-8 (IR 3, opset 8) converted to opset 13, as the compiler's loader does.

    With ``remove_legacy_inputs`` the IR < 4 weight inputs are made plain initializers
    (RemoveLegacyInitializerInputsPass), so the passes see them as constants.
    """
    proto = onnx.version_converter.convert_version(onnx.load(MNIST_MODEL), 13)
    model = ir.serde.deserialize_model(proto)
    if remove_legacy_inputs:
        RemoveLegacyInitializerInputsPass()(model)
    return model


def mnist_images(split: str = "eval", count: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Real MNIST digits: float32 [N, 1, 28, 28] raw 0..255 and int64 labels [N]."""
    data = np.load({"eval": MNIST_EVAL, "calib": MNIST_CALIB}[split])
    x, y = data["x"].astype(np.float32), data["y"]
    return (x, y) if count is None else (x[:count], y[:count])


def mnist_feeds(x: np.ndarray) -> list[dict[str, np.ndarray]]:
    """One feed per image: mnist-8 has a fixed batch of 1."""
    return [{"Input3": x[i : i + 1]} for i in range(len(x))]


def kws_input_int8() -> np.ndarray:
    """The one real MLPerf KWS sample: int8 [1, 49, 10, 1] MFCC, quantized with the model's input scale."""
    return np.load(KWS_SAMPLE)


def kws_input_float() -> np.ndarray:
    """The KWS sample dequantized for the float models: float32 [1, 49, 10, 1]."""
    return (kws_input_int8().astype(np.float32) - KWS_INPUT_ZERO_POINT) * KWS_INPUT_SCALE


def image_batch(size: int, scale: float) -> np.ndarray:
    """The test images as float32 NHWC RGB [N, size, size, 3], resized bilinearly, times ``scale``.

    VWW takes ``image_batch(96, 1 / 255)``, ResNet-8 (IC) ``image_batch(32, 1.0)`` (shared README).
    """
    arrays = [
        np.asarray(Image.open(path).convert("RGB").resize((size, size), Image.BILINEAR), np.float32)
        for path in IMAGES
    ]
    return np.stack(arrays) * np.float32(scale)


def op_counts(model: ir.Model) -> collections.Counter:
    """Op type -> number of nodes in the main graph."""
    return collections.Counter(node.op_type for node in model.graph)


def serialized(model: ir.Model) -> bytes:
    """The model as deterministic protobuf bytes (to check that a pass left it unchanged)."""
    return ir.serde.serialize_model(model).SerializeToString(deterministic=True)


def copy_model(model: ir.Model) -> ir.Model:
    """An independent copy (through the proto, so nothing is shared)."""
    return ir.serde.deserialize_model(ir.serde.serialize_model(model))


def value_by_name(model: ir.Model, name: str) -> ir.Value:
    return ir.convenience.create_value_mapping(model.graph)[name]


def run_ort(
    model: ir.Model,
    feeds: Sequence[dict[str, np.ndarray]],
    *,
    extra_outputs: Iterable[str] = (),
    optimize: bool = True,
) -> list[np.ndarray]:
    """Runs ONNX Runtime (CPU) on each feed; returns each graph output concatenated over the feeds.

    ``extra_outputs`` names intermediate values to return after the graph outputs (the model is
    copied first). ``optimize=False`` disables ONNX Runtime's graph optimizations (no Conv/BN,
    Conv/Add, MatMul/Add or QDQ fusions of its own) and its weight prepacking (constant weights are
    otherwise repacked for other kernels, which changes float32 rounding by about 1 ulp), so a model
    and its canonicalized form run the same float arithmetic where the pass says they should.
    """
    extra_outputs = list(extra_outputs)
    if extra_outputs:
        model = copy_model(model)
        values = ir.convenience.create_value_mapping(model.graph)
        model.graph.outputs.extend(values[name] for name in extra_outputs)
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # errors only: unused-initializer warnings are expected here
    if not optimize:
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
        options.add_session_config_entry("session.disable_prepacking", "1")
    session = onnxruntime.InferenceSession(
        ir.serde.serialize_model(model).SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    runs = [session.run(None, feed) for feed in feeds]
    return [np.concatenate([run[i] for run in runs]) for i in range(len(runs[0]))]


def max_relative_difference(reference: np.ndarray, other: np.ndarray) -> float:
    """max |reference - other| divided by the reference's range (max - min), in float64."""
    reference, other = reference.astype(np.float64), other.astype(np.float64)
    return float(np.abs(reference - other).max() / (reference.max() - reference.min()))


def insert_after(
    model: ir.Model,
    value_name: str,
    op_type: str,
    extra_inputs: Sequence[ir.Value | None] = (),
    attributes: dict | None = None,
    *,
    name: str,
    num_outputs: int = 1,
) -> ir.Node:
    """Inserts ``op_type(value, *extra_inputs)`` right after ``value``; its users read the new output.

    Used to build test models from real ones (e.g. a BatchNormalization after mnist-8's Conv). When
    the value is a graph output, the new node's first output takes its place in the outputs.
    """
    graph = model.graph
    value = value_by_name(model, value_name)
    users = list(value.uses())
    node = ir.node(op_type, [value, *extra_inputs], attributes or {}, name=name, num_outputs=num_outputs)
    for index, output in enumerate(node.outputs):
        output.name = f"{name}_output_{index}"
    for user in users:
        user.node.replace_input_with(user.idx, node.outputs[0])
    for index, output in enumerate(graph.outputs):
        if output is value:
            graph.outputs[index] = node.outputs[0]
    producer = value.producer()
    if producer is None:
        graph.insert_before(next(iter(graph)), node)
    else:
        graph.insert_after(producer, node)
    return node


def add_initializer(model: ir.Model, name: str, array: np.ndarray) -> ir.Value:
    """Registers a test initializer and returns its value."""
    value = ir.Value(
        name=name, shape=ir.Shape(array.shape), type=ir.TensorType(ir.DataType.from_numpy(array.dtype)),
        const_value=ir.tensor(array, name=name),
    )
    model.graph.register_initializer(value)
    return value


def model_from_proto(graph: onnx.GraphProto, opset: int) -> ir.Model:
    """An IR model from an ``onnx.helper`` graph, checked by the ONNX checker."""
    proto = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", opset)])
    proto.ir_version = 8 if opset <= 18 else 10
    onnx.checker.check_model(proto, full_check=True)
    return ir.serde.deserialize_model(proto)
