"""Quantization-friendliness checks, each on a small model with mnist-8's real weights and real
digits (ranges observed by the calibration code on 100 real calibration digits), each with a
harmless twin that must stay silent, and mnist-8 itself giving no warning."""

from __future__ import annotations

import math

import numpy as np
import onnx
import onnx.helper as oh
import onnx.numpy_helper as nh
import onnx_ir as ir
import pytest
from onnx_ir.passes.common import ShapeInferencePass

from canonicalize_support import model_from_proto
from realdata import MNIST_CALIB, MNIST_MODEL

from edgecomp.ir.load import load_model
from edgecomp.passes.base import PassManager
from edgecomp.passes.canonicalize import canonicalization_passes
from edgecomp.passes.quantize.calibrate import collect_ranges
from edgecomp.passes.quantize.friendliness import FriendlinessWarning, check_model

WEIGHTS = {t.name: nh.to_array(t).astype(np.float32) for t in onnx.load(MNIST_MODEL).graph.initializer}
CONV = {"w": WEIGHTS["Parameter5"], "b": WEIGHTS["Parameter6"].reshape(8)}  # [8,1,5,5], [8]
DENSE = WEIGHTS["Parameter193"].reshape(256, 10)  # mnist-8's classifier, on 16x16 crops of the digits
DIGITS = np.load(MNIST_CALIB)["x"][:100].astype(np.float32)


def inferred(model: ir.Model) -> ir.Model:
    """Types and shapes on every value, as the loader gives them (ONNX shape inference)."""
    return ShapeInferencePass()(model).model


def image_model(nodes, initializers, output_shape, output="y") -> ir.Model:
    """Input3 [1,1,28,28] (raw 0..255 digits) -> nodes -> ``output``; opset 17."""
    graph = oh.make_graph(
        nodes, "case", [oh.make_tensor_value_info("Input3", onnx.TensorProto.FLOAT, [1, 1, 28, 28])],
        [oh.make_tensor_value_info(output, onnx.TensorProto.FLOAT, output_shape)],
        [nh.from_array(np.asarray(array, np.float32), name) for name, array in initializers.items()],
    )
    return inferred(model_from_proto(graph, 17))


def dense_model(nodes, initializers, output_shape, output="y") -> ir.Model:
    """x [1,256] (a 16x16 crop of the digits / 255) -> Gemm(mnist-8's classifier) -> logits -> nodes."""
    graph = oh.make_graph(
        [oh.make_node("Gemm", ["x", "dense"], ["logits"], name="dense"), *nodes], "case",
        [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 256])],
        [oh.make_tensor_value_info(output, onnx.TensorProto.FLOAT, output_shape)],
        [nh.from_array(np.asarray(array, np.float32), name) for name, array in {"dense": DENSE, **initializers}.items()],
    )
    return inferred(model_from_proto(graph, 17))


def observed_ranges(model: ir.Model) -> dict[str, tuple[float, float]]:
    """Min-max range of every float tensor over 100 real digits (the calibration code's observers)."""
    names = {v.name for node in model.graph for v in node.outputs if v.dtype == ir.DataType.FLOAT}
    input_name = model.graph.inputs[0].name
    if input_name == "x":
        feeds = ({"x": (DIGITS[i : i + 1, 0, 6:22, 6:22].reshape(1, 256) / 255.0).astype(np.float32)} for i in range(len(DIGITS)))
    else:
        feeds = ({input_name: DIGITS[i : i + 1]} for i in range(len(DIGITS)))
    ranges, _ = collect_ranges(model, {name: "minmax" for name in names}, feeds)
    return ranges


def conv(output="c", source="Input3"):
    return oh.make_node("Conv", [source, "w", "b"], [output], name="conv", pads=[2, 2, 2, 2])


def kinds(warnings: list[FriendlinessWarning]) -> list[tuple[str, str]]:
    return [(w.node, w.kind) for w in warnings]


# --- SiLU / Swish ------------------------------------------------------------------------------------


def silu_model(scale: float) -> ir.Model:
    """SiLU = c * Sigmoid(c) on mnist-8's first convolution of the digits times ``scale``."""
    return image_model(
        [oh.make_node("Mul", ["Input3", "scale"], ["scaled"], name="scale"), conv(source="scaled"),
         oh.make_node("Sigmoid", ["c"], ["gate"], name="gate"), oh.make_node("Mul", ["c", "gate"], ["y"], name="silu")],
        {**CONV, "scale": np.array(scale)}, [1, 8, 28, 28],
    )


def test_silu_on_raw_pixels_is_wide_and_says_how_wide():
    model = silu_model(1.0)
    ranges = observed_ranges(model)
    (warning,) = check_model(model, ranges)
    assert (warning.node, warning.kind) == ("silu", "silu")
    low, high = ranges["y"]
    assert high > 100  # raw 0..255 pixels through real 5x5 kernels
    levels = -low * 255 / (high - low)
    assert f"[{low:.4g}, {high:.4g}]" in warning.message and f"gets {levels:.1f} of 256 levels" in warning.message
    assert levels < 1


def test_silu_on_a_narrow_range_is_silent_and_unknown_range_is_a_hint():
    model = silu_model(1 / 2550)  # pixels in 0..0.1: the output stays within a few tenths
    ranges = observed_ranges(model)
    assert ranges["y"][1] < 2.0
    assert check_model(model, ranges) == []
    (hint,) = check_model(model)
    assert hint.kind == "silu" and "calibrate to measure" in hint.message


@pytest.mark.parametrize("form", ["HardSwish", "x * HardSigmoid(x)"])
def test_hardswish_forms_are_found(form):
    nodes = [conv()]
    if form == "HardSwish":
        nodes.append(oh.make_node("HardSwish", ["c"], ["y"], name="act"))
    else:
        nodes += [oh.make_node("HardSigmoid", ["c"], ["gate"], name="gate", alpha=1 / 6, beta=0.5), oh.make_node("Mul", ["gate", "c"], ["y"], name="act")]
    model = image_model(nodes, CONV, [1, 8, 28, 28])
    (warning,) = check_model(model, observed_ranges(model))
    assert (warning.node, warning.kind) == ("act", "silu") and "HardSwish" in warning.message


# --- padding before pooling --------------------------------------------------------------------------


def pad_model(value: float) -> ir.Model:
    """Conv -> Relu -> Pad(1 row and column of ``value`` at the end) -> MaxPool: TensorFlow's spelling of SAME max pooling."""
    graph = oh.make_graph(
        [conv(), oh.make_node("Relu", ["c"], ["r"], name="relu"), oh.make_node("Pad", ["r", "pads", "fill"], ["p"], name="pad"),
         oh.make_node("MaxPool", ["p"], ["y"], name="pool", kernel_shape=[3, 3], strides=[2, 2])],
        "pad", [oh.make_tensor_value_info("Input3", onnx.TensorProto.FLOAT, [1, 1, 28, 28])],
        [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 8, 14, 14])],
        [nh.from_array(CONV["w"], "w"), nh.from_array(CONV["b"], "b"), nh.from_array(np.array([0, 0, 0, 0, 0, 0, 1, 1], np.int64), "pads"),
         nh.from_array(np.array(value, np.float32), "fill")],
    )
    return inferred(model_from_proto(graph, 17))


def test_pad_with_minus_infinity_before_maxpool():
    model = pad_model(-math.inf)
    for ranges in (None, observed_ranges(model)):
        (warning,) = check_model(model, ranges)
        assert (warning.node, warning.kind) == ("pad", "pad-before-pool")
        assert "-inf" in warning.message and "MaxPool 'pool'" in warning.message


def test_pad_with_a_large_value_says_how_much_it_widens_the_range():
    model = pad_model(-1e5)
    ranges = observed_ranges(model)
    (warning,) = check_model(model, ranges)
    high = ranges["r"][1]
    assert warning.kind == "pad-before-pool" and f"{(high + 1e5) / high:.3g}x" in warning.message
    assert kinds(check_model(model)) == [("pad", "pad-before-pool")]  # >= 1e4 without ranges


def test_pad_with_zero_after_relu_is_silent():
    model = pad_model(0.0)
    assert check_model(model) == [] and check_model(model, observed_ranges(model)) == []


# --- Concat --------------------------------------------------------------------------------------------


def test_concat_of_very_different_ranges():
    """Conv output (hundreds) next to the digits scaled to 0..1: one int8 scale for both."""
    model = image_model(
        [conv(), oh.make_node("Mul", ["Input3", "inverse"], ["pixels"], name="normalize"),
         oh.make_node("Concat", ["c", "pixels"], ["y"], name="concat", axis=1)],
        {**CONV, "inverse": np.array(1 / 255)}, [1, 9, 28, 28],
    )
    ranges = observed_ranges(model)
    (warning,) = check_model(model, ranges)
    ratio = (ranges["c"][1] - ranges["c"][0]) / (ranges["pixels"][1] - ranges["pixels"][0])
    assert (warning.node, warning.kind) == ("concat", "concat-ranges") and ratio > 100
    assert f"differ {ratio:.3g}x" in warning.message and "'pixels'" in warning.message
    assert check_model(model) == []  # needs ranges


def test_concat_of_similar_ranges_is_silent():
    model = image_model(
        [conv(), oh.make_node("Relu", ["c"], ["r"], name="relu"), oh.make_node("Concat", ["c", "r"], ["y"], name="concat", axis=1)],
        CONV, [1, 16, 28, 28],
    )
    ranges = observed_ranges(model)
    assert (ranges["c"][1] - ranges["c"][0]) / (ranges["r"][1] - ranges["r"][0]) < 10
    assert check_model(model, ranges) == []


# --- decomposed LayerNorm ------------------------------------------------------------------------------


@pytest.mark.parametrize("square", ["Pow", "Mul"])
def test_decomposed_layernorm_is_found(square):
    squaring = oh.make_node("Pow", ["d", "two"], ["sq"], name="square") if square == "Pow" else oh.make_node("Mul", ["d", "d"], ["sq"], name="square")
    model = dense_model(
        [oh.make_node("ReduceMean", ["logits"], ["mean"], name="mean", axes=[-1]), oh.make_node("Sub", ["logits", "mean"], ["d"], name="centre"),
         squaring, oh.make_node("ReduceMean", ["sq"], ["var"], name="variance", axes=[-1]), oh.make_node("Add", ["var", "eps"], ["ve"], name="add_eps"),
         oh.make_node("Sqrt", ["ve"], ["std"], name="std"), oh.make_node("Div", ["d", "std"], ["y"], name="normalize")],
        {"two": np.array(2.0), "eps": np.array(1e-5)}, [1, 10],
    )
    (warning,) = check_model(model)
    assert (warning.node, warning.kind) == ("normalize", "decomposed-layernorm")
    assert f"ReduceMean 'mean' -> Sub 'centre' -> {square} 'square' -> ReduceMean 'variance' -> Add 'add_eps' -> Sqrt 'std' -> Div 'normalize'" in warning.message


def test_a_plain_division_is_not_layernorm():
    model = dense_model([oh.make_node("Sqrt", ["scale"], ["root"], name="root"), oh.make_node("Div", ["logits", "root"], ["y"], name="divide")],
                        {"scale": np.array(4.0)}, [1, 10])
    assert check_model(model) == []


# --- Softmax near 1.0 ----------------------------------------------------------------------------------


def softmax_model(temperature: float) -> ir.Model:
    return dense_model([oh.make_node("Mul", ["logits", "inverse"], ["scaled"], name="temperature"), oh.make_node("Softmax", ["scaled"], ["y"], name="softmax")],
                       {"inverse": np.array(1 / temperature)}, [1, 10])


def test_softmax_observed_near_one_saturates():
    """mnist-8's classifier on real digits with logits times 4: the top probability reaches 1.0."""
    model = softmax_model(0.25)
    ranges = observed_ranges(model)
    (warning,) = check_model(model, ranges)
    assert ranges["y"][1] > 255 / 256
    assert (warning.node, warning.kind) == ("softmax", "softmax-saturation")
    assert warning.message.startswith(f"Softmax output reaches {ranges['y'][1]:.6g} > 255/256")


def test_softmax_logit_range_bounds_the_gap_when_the_output_was_not_observed():
    """The logits of mnist-8's classifier on real digits span more than ln(255 * 9) = 7.74, so the
    input range alone cannot rule saturation out; the observed output (max 0.976) does."""
    model = softmax_model(1.0)
    ranges = observed_ranges(model)
    low, high = ranges["scaled"]
    (warning,) = check_model(model, {"scaled": ranges["scaled"]})
    assert (warning.node, warning.kind) == ("softmax", "softmax-saturation")
    assert f"gap of {high - low:.4g} > ln(255*(10-1)) = 7.74" in warning.message
    assert ranges["y"][1] < 255 / 256 and check_model(model, ranges) == []
    assert check_model(model) == []  # needs ranges


def test_softmax_with_small_logits_is_silent():
    model = softmax_model(100.0)
    ranges = observed_ranges(model)
    assert ranges["scaled"][1] - ranges["scaled"][0] < math.log(255 * 9) and ranges["y"][1] < 255 / 256
    assert check_model(model, {"scaled": ranges["scaled"]}) == [] and check_model(model, ranges) == []


# --- a real model without problems ----------------------------------------------------------------------


def test_mnist_8_gives_no_warning():
    raw = load_model(MNIST_MODEL)
    canonical = PassManager(canonicalization_passes(fold_weight_dequantize=False))(load_model(MNIST_MODEL)).model
    assert check_model(raw) == []
    assert check_model(canonical) == [] and check_model(canonical, observed_ranges(canonical)) == []
