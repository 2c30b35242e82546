"""TFLite backend, op by op: small graphs made of mnist-8's real weights, run on real digits.

The real models (test_tflite.py) cover Conv, depthwise Conv, pools, Gemm, Add, Relu, Reshape,
Transpose and Softmax. The ops below appear in none of them, so each case builds a graph with
``onnx.helper`` around mnist-8's trained first convolution (``Parameter5``/``Parameter6``, 8 channels
of real feature maps) and other real mnist-8 weights, feeds 8 real digits (dynamic batch), and checks
that LiteRT reproduces ONNX Runtime within 1e-4 of the output range and that the intended TFLite
operator was used (and no TRANSPOSE where none is needed).
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx.helper as oh
import onnx.numpy_helper
import onnxruntime
import pytest
from edgecomp_tflite.backend import TFLiteBackend
from edgecomp_tflite.context import GraphInfo
from edgecomp_tflite.ops.resize import choose_flags
from realdata import MNIST_EVAL, MNIST_MODEL

from edgecomp.backend import LowerOptions
from edgecomp.errors import UnsupportedError
from edgecomp.ir.load import load_model
from edgecomp.passes.base import PassManager
from edgecomp.passes.canonicalize import canonicalization_passes
from edgecomp.targets import get_target

TOLERANCE = 1e-4
BATCH = 8


def mnist_weights() -> dict[str, np.ndarray]:
    """mnist-8's trained parameters (float32): conv1 [8,1,5,5], bias1 [8], conv2 [16,8,5,5], bias2 [16], dense [256,10]."""
    tensors = {t.name: onnx.numpy_helper.to_array(t) for t in onnx.load(MNIST_MODEL).graph.initializer}
    return {
        "conv1": tensors["Parameter5"],
        "bias1": tensors["Parameter6"].reshape(8),
        "conv2": tensors["Parameter87"],
        "bias2": tensors["Parameter88"].reshape(16),
        "dense": tensors["Parameter193"].reshape(256, 10),
        "dense_bias": tensors["Parameter194"].reshape(10),
    }


WEIGHTS = mnist_weights()


def digits(count: int = BATCH) -> np.ndarray:
    """Real MNIST digits, float32 [count, 1, 28, 28], 0..1 (a smaller range keeps sigmoid/tanh cases informative)."""
    return np.load(MNIST_EVAL)["x"][:count].astype(np.float32) / 255.0


def build(nodes: list, output: str, initializers: dict[str, np.ndarray], tmp_path, opset: int = 17):
    """A model: x [N,1,28,28] -> Conv(conv1, pads 2) + Relu -> ``features`` [N,8,28,28] -> ``nodes`` -> ``output``."""
    stem = [
        oh.make_node("Conv", ["x", "conv1", "bias1"], ["stem"], name="stem_conv", pads=[2, 2, 2, 2]),
        oh.make_node("Relu", ["stem"], ["features"], name="stem_relu"),
    ]
    arrays = {"conv1": WEIGHTS["conv1"], "bias1": WEIGHTS["bias1"], **initializers}
    graph = oh.make_graph(
        stem + nodes,
        "ops",
        [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 1, 28, 28])],
        [oh.make_tensor_value_info(output, onnx.TensorProto.FLOAT, None)],
        [onnx.numpy_helper.from_array(np.asarray(a), name) for name, a in arrays.items()],
    )
    proto = oh.make_model(graph, opset_imports=[oh.make_opsetid("", opset)])
    proto.ir_version = 8
    # the output's shape, as ONNX Runtime computes it, with the batch axis symbolic
    result = onnxruntime.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": digits()})[0]
    proto.graph.output[0].CopyFrom(oh.make_tensor_value_info(output, onnx.TensorProto.FLOAT, ["N", *result.shape[1:]]))
    path = tmp_path / "model.onnx"
    onnx.save(proto, path)
    return path


def lower_and_compare(path, backend: TFLiteBackend | None = None):
    """Lower the model at ``path`` (canonicalized as the pipeline does) with verification against ORT."""
    x = digits()
    reference = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    model = PassManager(canonicalization_passes(fold_weight_dequantize=True))(load_model(path)).model
    backend = backend or TFLiteBackend()
    report = backend.support(model, get_target("host-x86_64"))
    assert report.ok, report.unsupported
    artifact = backend.lower(model, get_target("host-x86_64"), LowerOptions(model_name="ops", verification_inputs=({"x": x},), reference_outputs=(tuple(reference),)))
    assert artifact.metadata["verification"]["max_abs_difference_relative_to_range"] <= TOLERANCE
    got = artifact.runner({"x": x})[0]
    assert got.shape == reference[0].shape
    return artifact


def f32(*values) -> np.ndarray:
    return np.asarray(values, dtype=np.float32)


def i64(*values) -> np.ndarray:
    return np.asarray(values, dtype=np.int64)


# Each case: (nodes, output, initializers, TFLite ops that must appear, expected TRANSPOSE count).
# A 4-D NCHW output with several channels costs exactly one TRANSPOSE at the graph boundary in the
# default io_layout="onnx" (test_nhwc_io_layout_removes_boundary_transposes); nothing else may add one.
CASES = {
    "conv_transpose_valid": (
        [oh.make_node("Conv", ["features", "conv2"], ["down"], strides=[2, 2]), oh.make_node("ConvTranspose", ["down", "conv2", "bias1"], ["y"], strides=[2, 2])],
        "y", {"conv2": WEIGHTS["conv2"]}, {"TRANSPOSE_CONV"}, 1,
    ),
    "conv_transpose_same_upper": (
        [oh.make_node("Conv", ["features", "conv2"], ["down"], strides=[2, 2], pads=[2, 2, 2, 2]), oh.make_node("ConvTranspose", ["down", "conv2"], ["y"], strides=[2, 2], auto_pad="SAME_UPPER")],
        "y", {"conv2": WEIGHTS["conv2"]}, {"TRANSPOSE_CONV"}, 1,
    ),
    "conv_transpose_pads_output_padding": (
        [oh.make_node("Conv", ["features", "conv2"], ["down"], strides=[2, 2], pads=[2, 2, 2, 2]), oh.make_node("ConvTranspose", ["down", "conv2", "bias1"], ["y"], strides=[2, 2], pads=[2, 1, 2, 3], output_padding=[1, 1])],
        "y", {"conv2": WEIGHTS["conv2"]}, {"TRANSPOSE_CONV", "STRIDED_SLICE"}, 1,
    ),
    "grouped_conv": (
        [oh.make_node("Conv", ["features", "grouped", "bias2"], ["y"], group=2, pads=[2, 2, 1, 2], strides=[2, 1])],
        "y", {"grouped": WEIGHTS["conv2"][:, :4], "bias2": WEIGHTS["bias2"]}, {"CONV_2D", "PAD"}, 1,
    ),
    "depthwise_multiplier_2_dilated": (
        [oh.make_node("Conv", ["features", "depthwise", "bias2"], ["y"], group=8, dilations=[2, 2], pads=[4, 4, 4, 4])],
        "y", {"depthwise": WEIGHTS["conv2"][:, :1], "bias2": WEIGHTS["bias2"]}, {"DEPTHWISE_CONV_2D"}, 1,
    ),
    "conv_same_lower_relu6": (
        [oh.make_node("Conv", ["features", "conv2"], ["c"], auto_pad="SAME_LOWER", kernel_shape=[5, 5], strides=[2, 2]), oh.make_node("Clip", ["c", "zero", "six"], ["y"])],
        "y", {"conv2": WEIGHTS["conv2"], "zero": f32(0.0), "six": f32(6.0)}, {"CONV_2D", "PAD"}, 1,
    ),
    "average_pool_count_include_pad": (
        [oh.make_node("AveragePool", ["features"], ["y"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], count_include_pad=1)],
        "y", {}, {"AVERAGE_POOL_2D", "PAD"}, 1,
    ),
    "average_pool_same_exclude_pad": (
        [oh.make_node("AveragePool", ["features"], ["y"], kernel_shape=[3, 3], strides=[2, 2], auto_pad="SAME_UPPER")],
        "y", {}, {"AVERAGE_POOL_2D"}, 1,
    ),
    "max_pool_asymmetric_pads_ceil": (
        [oh.make_node("MaxPool", ["features"], ["y"], kernel_shape=[3, 3], strides=[2, 2], pads=[0, 1, 1, 0], ceil_mode=1)],
        "y", {}, {"MAX_POOL_2D", "PADV2"}, 1,
    ),
    "global_pools_concat": (
        [oh.make_node("GlobalAveragePool", ["features"], ["avg"]), oh.make_node("GlobalMaxPool", ["features"], ["max"]), oh.make_node("Concat", ["avg", "max"], ["y"], axis=1)],
        "y", {}, {"MEAN", "REDUCE_MAX", "CONCATENATION"}, 0,
    ),
    "resize_nearest_asymmetric_floor": (
        [oh.make_node("Resize", ["features", "", "scales"], ["y"], mode="nearest", coordinate_transformation_mode="asymmetric", nearest_mode="floor")],
        "y", {"scales": f32(1, 1, 2, 2)}, {"RESIZE_NEAREST_NEIGHBOR"}, 1,
    ),
    "resize_nearest_half_pixel_downscale": (
        [oh.make_node("Resize", ["features", "", "", "sizes"], ["y"], mode="nearest")],
        "y", {"sizes": i64(BATCH, 8, 20, 12)}, {"RESIZE_NEAREST_NEIGHBOR"}, 1,
    ),
    "resize_linear_half_pixel": (
        [oh.make_node("Resize", ["features", "", "scales"], ["y"], mode="linear")],
        "y", {"scales": f32(1, 1, 2, 2)}, {"RESIZE_BILINEAR"}, 1,
    ),
    "resize_linear_align_corners": (
        [oh.make_node("Resize", ["features", "", "", "sizes"], ["y"], mode="linear", coordinate_transformation_mode="align_corners")],
        "y", {"sizes": i64(BATCH, 8, 45, 17)}, {"RESIZE_BILINEAR"}, 1,
    ),
    "resize_linear_asymmetric": (
        [oh.make_node("Resize", ["features", "", "scales"], ["y"], mode="linear", coordinate_transformation_mode="asymmetric")],
        "y", {"scales": f32(1, 1, 0.5, 0.5)}, {"RESIZE_BILINEAR"}, 1,
    ),
    "activations": (
        [
            oh.make_node("LeakyRelu", ["stem"], ["a"], alpha=0.2),
            oh.make_node("PRelu", ["stem", "slope"], ["b"]),
            oh.make_node("Sigmoid", ["a"], ["c"]),
            oh.make_node("Tanh", ["b"], ["d"]),
            oh.make_node("HardSwish", ["stem"], ["e"]),
            oh.make_node("Clip", ["stem", "low", "high"], ["f"]),
            oh.make_node("Clip", ["stem", "zero"], ["g"]),
            oh.make_node("Add", ["c", "d"], ["cd"]),
            oh.make_node("Add", ["e", "f"], ["ef"]),
            oh.make_node("Add", ["cd", "ef"], ["cdef"]),
            oh.make_node("Add", ["cdef", "g"], ["h"]),
            oh.make_node("MaxPool", ["h"], ["y"], kernel_shape=[2, 2], strides=[2, 2]),
        ],
        "y",
        {"slope": np.linspace(-0.5, 0.5, 8, dtype=np.float32).reshape(8, 1, 1), "low": f32(-0.5), "high": f32(2.0), "zero": f32(0.0)},
        {"LEAKY_RELU", "PRELU", "LOGISTIC", "TANH", "HARD_SWISH", "MAXIMUM", "MINIMUM", "RELU", "ADD"}, 1,
    ),
    "arithmetic_with_constants": (
        [
            oh.make_node("Mul", ["features", "channel_scale"], ["a"]),
            oh.make_node("Sub", ["one", "a"], ["b"]),
            oh.make_node("Div", ["b", "two"], ["c"]),
            oh.make_node("Add", ["c", "row"], ["y"]),
        ],
        "y", {"channel_scale": np.linspace(0.5, 1.5, 8, dtype=np.float32).reshape(8, 1, 1), "one": f32(1.0), "two": f32(2.0), "row": np.linspace(-1, 1, 28, dtype=np.float32)},
        {"MUL", "SUB", "DIV", "ADD"}, 1,
    ),
    "slice_pad_concat": (
        [
            oh.make_node("Slice", ["features", "starts", "ends", "axes", "steps"], ["s"]),
            oh.make_node("Pad", ["s", "pads", "fill"], ["p"]),
            oh.make_node("Pad", ["s", "pads"], ["r"], mode="reflect"),
            oh.make_node("Concat", ["p", "r"], ["y"], axis=1),
        ],
        "y",
        {"starts": i64(1, 26, 2), "ends": i64(27, -100, 7), "axes": i64(2, 3, 1), "steps": i64(2, -3, 1), "pads": i64(0, 0, 1, 2, 0, 0, 2, 1), "fill": f32(0.25)},
        {"STRIDED_SLICE", "PADV2", "MIRROR_PAD", "CONCATENATION"}, 1,
    ),
    "channel_softmax_and_reduce": (
        [
            oh.make_node("Softmax", ["features"], ["s"], axis=1),
            oh.make_node("ReduceMean", ["s"], ["y"], axes=[2], keepdims=0),
        ],
        "y", {}, {"SOFTMAX", "MEAN"}, 1,
    ),
    "transpose_flatten_matmul": (
        [
            oh.make_node("MaxPool", ["features"], ["m"], kernel_shape=[7, 7], strides=[7, 7]),
            oh.make_node("Transpose", ["m"], ["t"], perm=[0, 2, 3, 1]),
            oh.make_node("Flatten", ["t"], ["f"], axis=1),
            oh.make_node("Gemm", ["f", "dense", "dense_bias"], ["g"], transB=1, alpha=0.5, beta=2.0),
            oh.make_node("Unsqueeze", ["g", "axis1"], ["u"]),
            oh.make_node("MatMul", ["u", "square"], ["mm"]),
            oh.make_node("Squeeze", ["mm", "axis1"], ["y"]),
        ],
        "y",
        {"dense": WEIGHTS["conv2"].reshape(16, 200)[:10, :128], "dense_bias": WEIGHTS["dense_bias"], "axis1": i64(1), "square": WEIGHTS["dense"][:10, :10].copy()},
        {"FULLY_CONNECTED", "RESHAPE"}, 0,
    ),
    "gemm_full_c_and_batch_matmul": (
        [
            oh.make_node("GlobalAveragePool", ["features"], ["gap"]),
            oh.make_node("Flatten", ["gap"], ["f"]),
            oh.make_node("Gemm", ["f", "weights", "c"], ["g"]),
            oh.make_node("Unsqueeze", ["g", "axis2"], ["col"]),
            oh.make_node("Unsqueeze", ["g", "axis1"], ["row"]),
            oh.make_node("MatMul", ["col", "row"], ["y"]),
        ],
        "y",
        {"weights": WEIGHTS["dense"][:8].copy(), "c": np.linspace(-1, 1, BATCH * 10, dtype=np.float32).reshape(BATCH, 10), "axis1": i64(1), "axis2": i64(2)},
        {"FULLY_CONNECTED", "BATCH_MATMUL", "ADD"}, 0,
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_op_lowering_matches_onnxruntime(case, tmp_path):
    nodes, output, initializers, expected_ops, expected_transposes = CASES[case]
    for index, node in enumerate(nodes):
        node.name = node.name or f"{case}_{index}"
    artifact = lower_and_compare(build(nodes, output, initializers, tmp_path))
    ops = set(artifact.metadata["op_histogram"])
    assert expected_ops <= ops, f"missing {expected_ops - ops} in {artifact.metadata['op_histogram']}"
    assert artifact.metadata["transposes_added"] == expected_transposes
    assert artifact.metadata["op_histogram"].get("TRANSPOSE", 0) == expected_transposes


def test_grouped_conv_split_strategy_matches(tmp_path):
    nodes, output, initializers, _, _ = CASES["grouped_conv"]
    for index, node in enumerate(nodes):
        node.name = node.name or f"grouped_{index}"
    artifact = lower_and_compare(build(nodes, output, initializers, tmp_path), TFLiteBackend(grouped_convolution="split"))
    histogram = artifact.metadata["op_histogram"]
    assert histogram["SPLIT"] == 1 and histogram["CONV_2D"] == 3 and histogram["CONCATENATION"] == 1  # stem + 2 groups


def test_native_grouped_conv_needs_version_6(tmp_path):
    nodes, output, initializers, _, _ = CASES["grouped_conv"]
    for index, node in enumerate(nodes):
        node.name = node.name or f"grouped_{index}"
    artifact = lower_and_compare(build(nodes, output, initializers, tmp_path))
    assert artifact.metadata["operator_versions"]["CONV_2D"] == 6


def test_fixed_batch_conv_transpose_uses_constant_output_shape(tmp_path):
    """A dynamic batch computes TRANSPOSE_CONV's output_shape with SHAPE; mnist-8's fixed batch does not."""
    nodes, output, initializers, _, _ = CASES["conv_transpose_valid"]
    for index, node in enumerate(nodes):
        node.name = node.name or f"ct_{index}"
    artifact = lower_and_compare(build(nodes, output, initializers, tmp_path))
    assert artifact.metadata["op_histogram"]["SHAPE"] == 1


@pytest.mark.parametrize(
    "attributes, reason",
    [
        ({"mode": "cubic"}, "cubic"),
        ({"mode": "nearest", "coordinate_transformation_mode": "tf_crop_and_resize"}, "matches no TFLite"),
    ],
)
def test_resize_without_tflite_equivalent_is_reported(attributes, reason, tmp_path):
    node = oh.make_node("Resize", ["features", "roi", "scales"], ["y"], name="resize", **attributes)
    path = build([node], "y", {"roi": f32(0, 0, 0, 0, 1, 1, 1, 1), "scales": f32(1, 1, 2, 2)}, tmp_path)
    model = load_model(path)
    report = TFLiteBackend().support(model, get_target("host-x86_64"))
    assert [(u.node, u.op_type) for u in report.unsupported] == [("resize", "Resize")]
    assert reason in report.unsupported[0].reason


def test_resize_flags_follow_the_sizes(tmp_path):
    """ONNX half_pixel + round_prefer_floor, 28 -> 20: only TFLite half_pixel_centers gives the same rows."""
    node = oh.make_node("Resize", ["features", "", "", "sizes"], ["y"], name="resize", mode="nearest")
    model = load_model(build([node], "y", {"sizes": i64(BATCH, 8, 20, 20)}, tmp_path))
    resize = next(n for n in model.graph if n.op_type == "Resize")
    _, align_corners, half_pixel = choose_flags(GraphInfo(model), resize)
    assert (align_corners, half_pixel) == (False, True)


def test_unsupported_attribute_values_are_all_listed(tmp_path):
    nodes = [
        oh.make_node("AveragePool", ["features"], ["a"], name="avg_odd_pads", kernel_shape=[3, 3], pads=[0, 0, 2, 2]),
        oh.make_node("Pad", ["a", "pads"], ["b"], name="edge_pad", mode="edge"),
        oh.make_node("Conv", ["b", "conv2"], ["y"], name="conv_group_dilated_t", group=1),
    ]
    model = load_model(build(nodes, "y", {"pads": i64(0, 0, 1, 1, 0, 0, 1, 1), "conv2": WEIGHTS["conv2"]}, tmp_path))
    report = TFLiteBackend().support(model, get_target("host-x86_64"))
    assert [u.node for u in report.unsupported] == ["avg_odd_pads", "edge_pad"]
    assert "count_include_pad=0" in report.unsupported[0].reason
    assert "edge" in report.unsupported[1].reason
    with pytest.raises(UnsupportedError, match="avg_odd_pads.*and 1 more"):
        TFLiteBackend().lower(model, get_target("host-x86_64"), LowerOptions(model_name="m"))

