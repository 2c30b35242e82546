"""Tests of the IR analyses: bytes, MACs, parameters, lifetimes, peak memory (edgecomp/ir/analysis.py)."""

from __future__ import annotations

import math
import pathlib
import time

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx_ir.passes.common import ShapeInferencePass

from edgecomp.errors import ModelError
from edgecomp.ir.analysis import (
    ModelSummary,
    TensorLifetime,
    node_macs,
    node_parameters,
    peak_live_bytes,
    summarize,
    tensor_bytes,
    tensor_lifetimes,
)

ROOT = pathlib.Path(__file__).resolve().parents[2]
MNIST = ROOT / "examples" / "mnist" / "mnist-8.onnx"
MLPERF = ROOT / "tests" / "assets" / "mlperf_tiny"
KWS = MLPERF / "kws" / "kws_ref_model_float32.onnx"
VWW = MLPERF / "vww" / "vww_96_float.onnx"
IC = MLPERF / "ic" / "pretrainedResnet.onnx"
AD = MLPERF / "ad" / "ad01_fp32.onnx"


def load(path: pathlib.Path) -> ir.Model:
    return ShapeInferencePass()(ir.load(path)).model


def inferred(nodes, inputs, outputs, initializers=(), opset=17) -> ir.Model:
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    # onnx directly, strict: ShapeInferencePass only logs a warning and returns the model unchanged on failure
    return ir.serde.deserialize_model(onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True))


def by_name(model: ir.Model, name: str) -> ir.Node:
    return next(node for node in model.graph if node.name == name)


def f32(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def weight(name, shape):
    return numpy_helper.from_array(np.zeros(shape, np.float32), name)


# ---------------------------------------------------------------------------------------------
# tensor_bytes


def test_tensor_bytes_static_dynamic_and_dtypes():
    value = ir.Value(name="x", type=ir.TensorType(ir.DataType.FLOAT), shape=ir.Shape(["N", 96, 96, 3]))
    assert tensor_bytes(value) is None  # symbolic batch, nothing substituted
    assert tensor_bytes(value, batch=1) == 96 * 96 * 3 * 4 == 110_592
    assert tensor_bytes(value, batch=4) == 4 * 110_592
    static = ir.Value(name="s", type=ir.TensorType(ir.DataType.FLOAT), shape=ir.Shape([1, 10]))
    assert tensor_bytes(static, batch=8) == 40  # a static first dim is kept
    inner = ir.Value(name="i", type=ir.TensorType(ir.DataType.FLOAT), shape=ir.Shape([1, "T", 40]))
    assert tensor_bytes(inner, batch=1) is None  # only the first dim is substituted
    unknown = ir.Value(name="u", type=ir.TensorType(ir.DataType.FLOAT), shape=ir.Shape([None, 10]))
    assert tensor_bytes(unknown, batch=2) == 80
    scalar = ir.Value(name="c", type=ir.TensorType(ir.DataType.INT64), shape=ir.Shape([]))
    assert tensor_bytes(scalar) == 8
    int4 = ir.Value(name="q", type=ir.TensorType(ir.DataType.INT4), shape=ir.Shape([3, 3]))
    assert tensor_bytes(int4) == 5  # 9 nibbles round up to 5 bytes
    float16 = ir.Value(name="h", type=ir.TensorType(ir.DataType.FLOAT16), shape=ir.Shape([7]))
    assert tensor_bytes(float16) == 14
    assert tensor_bytes(ir.Value(name="t", type=ir.TensorType(ir.DataType.STRING), shape=ir.Shape([2]))) is None
    assert tensor_bytes(ir.Value(name="n")) is None  # no shape, no dtype


# ---------------------------------------------------------------------------------------------
# parameters


def test_mnist_parameters_match_readme_5998():
    model = load(MNIST)
    summary = summarize(model)
    # README: 5,998. Weights/biases: conv1 8*1*5*5 + 8, conv2 16*8*5*5 + 16, dense 16*4*4*10 + 10 = 5,994;
    # the two int64 [2] Reshape shape initializers add 4 elements: every initializer element counts.
    assert 8 * 25 + 8 + 16 * 8 * 25 + 16 + 256 * 10 + 10 + 2 + 2 == 5998
    assert summary.parameters == 5998
    assert summary.parameter_bytes == 5994 * 4 + 4 * 8
    assert node_parameters(by_name(model, "Convolution28")) == 200  # weight only; bias is in Plus30
    assert node_parameters(by_name(model, "Times212_reshape1")) == 2560 + 2
    assert node_parameters(by_name(model, "Times212")) == 0  # its weight is a Reshape output


def test_ad_parameters_match_readme_265864():
    model = load(AD)
    widths = [640, 128, 128, 128, 128, 8, 128, 128, 128, 128, 640]
    dense = sum(a * b + b for a, b in zip(widths, widths[1:]))  # weights + biases of 10 dense layers
    assert dense == 265_864
    assert summarize(model).parameters == 265_864  # the ONNX has exactly these 20 initializers


def reference_figures(path: pathlib.Path) -> tuple[int, int]:
    """(parameters, MACs at batch 1) straight from the protobuf, without onnx_ir: an independent check."""
    proto = onnx.shape_inference.infer_shapes(onnx.load(path))
    graph = proto.graph
    shapes = {init.name: list(init.dims) for init in graph.initializer}
    for info in [*graph.input, *graph.value_info, *graph.output]:
        dims = [d.dim_value if d.HasField("dim_value") else 1 for d in info.type.tensor_type.shape.dim]
        shapes.setdefault(info.name, dims)
    parameters = sum(math.prod(init.dims) for init in graph.initializer)
    macs = 0
    for node in graph.node:
        if node.op_type == "Conv":
            macs += math.prod(shapes[node.output[0]]) * math.prod(shapes[node.input[1]][1:])
        elif node.op_type == "MatMul":
            macs += math.prod(shapes[node.output[0]]) * shapes[node.input[0]][-1]
    return parameters, macs


@pytest.mark.parametrize(
    "path, parameters, macs",
    [
        (KWS, 22_610, 2_656_768),  # DS-CNN: MLPerf Tiny quotes ~2.7 M MACs
        (VWW, 210_852, 7_489_664),  # MobileNetV1 0.25, 96x96: ~7.5 M MACs
        (IC, 77_708, 12_501_632),  # ResNet-8: ~12.5 M MACs
        (AD, 265_864, 264_192),
    ],
    ids=lambda x: x.stem if isinstance(x, pathlib.Path) else None,
)
def test_mlperf_figures_equal_an_independent_protobuf_count(path, parameters, macs):
    summary = summarize(load(path))
    assert (summary.parameters, summary.macs) == (parameters, macs)
    assert reference_figures(path) == (parameters, macs)


def test_shared_initializer_counts_once_in_the_summary():
    model = inferred(
        [helper.make_node("Add", ["x", "w"], ["a"], name="A1"), helper.make_node("Add", ["a", "w"], ["y"], name="A2")],
        [f32("x", [10])],
        [f32("y", [10])],
        [weight("w", [10])],
    )
    assert [node_parameters(node) for node in model.graph] == [10, 10]
    assert summarize(model).parameters == 10 and summarize(model).parameter_bytes == 40


def test_constant_node_is_a_parameter_not_an_activation():
    value = helper.make_tensor("k", TensorProto.FLOAT, [3, 2], [0.0] * 6)
    model = inferred(
        [
            helper.make_node("Constant", [], ["k"], name="K", value=value),
            helper.make_node("MatMul", ["x", "k"], ["y"], name="M"),
        ],
        [f32("x", ["N", 3])],
        [f32("y", ["N", 2])],
    )
    assert node_parameters(by_name(model, "M")) == 6
    assert set(tensor_lifetimes(model)) == {"x", "y"}
    summary = summarize(model, batch=5)
    assert summary.parameters == 6 and summary.macs == 5 * 2 * 3


# ---------------------------------------------------------------------------------------------
# MACs


def test_mnist_macs_by_hand_from_its_layer_shapes():
    model = load(MNIST)
    conv1, conv2, dense = by_name(model, "Convolution28"), by_name(model, "Convolution110"), by_name(model, "Times212")
    # the real shapes: Conv 5x5, 1->8 ch, 28x28 'same'; Conv 5x5, 8->16 ch on 14x14 'same'; MatMul [1,256]x[256,10]
    assert list(conv1.inputs[1].shape) == [8, 1, 5, 5] and list(conv1.outputs[0].shape) == [1, 8, 28, 28]
    assert list(conv2.inputs[1].shape) == [16, 8, 5, 5] and list(conv2.outputs[0].shape) == [1, 16, 14, 14]
    assert list(dense.inputs[0].shape) == [1, 256] and list(dense.inputs[1].shape) == [256, 10]
    # N*C_out*H_out*W_out*(C_in/groups)*kH*kW
    assert node_macs(conv1) == 1 * 8 * 28 * 28 * 1 * 5 * 5 == 156_800
    assert node_macs(conv2) == 1 * 16 * 14 * 14 * 8 * 5 * 5 == 627_200
    assert node_macs(dense) == 256 * 10
    assert node_macs(by_name(model, "Plus30")) == 0 and node_macs(by_name(model, "Pooling66")) == 0
    assert summarize(model).macs == 156_800 + 627_200 + 2_560
    assert summarize(model, batch=7).macs == 786_560  # batch is fixed at 1 in this file


def test_ad_macs_are_the_dense_layers_in_times_out():
    model = load(AD)
    widths = [640, 128, 128, 128, 128, 8, 128, 128, 128, 128, 640]
    expected = sum(a * b for a, b in zip(widths, widths[1:]))
    assert expected == 264_192
    matmuls = [node for node in model.graph if node.op_type == "MatMul"]
    assert [node_macs(node) for node in matmuls] == [a * b for a, b in zip(widths, widths[1:])]
    assert summarize(model).macs == expected
    assert summarize(model, batch=3).macs == 3 * expected  # symbolic batch 'unk__63' -> 3


def test_vww_depthwise_conv_counts_c_h_w_k_k():
    model = load(VWW)
    depthwise = [
        node
        for node in model.graph
        if node.op_type == "Conv" and node.attributes["group"].value > 1 and node.inputs[1].shape[1] == 1
    ]
    assert len(depthwise) == 13
    for node in depthwise:
        channels, _, kh, kw = node.inputs[1].shape
        _, out_channels, height, width = node.outputs[0].shape
        assert node.attributes["group"].value == channels == out_channels
        assert node_macs(node) == channels * height * width * kh * kw
    first = depthwise[0]  # 8 channels, 48x48 output, 3x3 kernel
    assert node_macs(first) == 8 * 48 * 48 * 3 * 3 == 165_888
    assert node_macs(first) != 8 * 8 * 48 * 48 * 3 * 3


def test_grouped_conv_conv_transpose_and_gemm():
    model = inferred(
        [
            helper.make_node("Conv", ["x", "w"], ["c"], name="GC", group=2, kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
            helper.make_node("ConvTranspose", ["c", "wt"], ["t"], name="CT", strides=[2, 2], kernel_shape=[2, 2]),
            helper.make_node("Flatten", ["t"], ["f"], name="F"),
            helper.make_node("Transpose", ["f"], ["ft"], name="TR"),
            helper.make_node("Gemm", ["ft", "g"], ["y"], name="GE", transA=1),
        ],
        [f32("x", [2, 4, 8, 8])],
        [f32("y", [2, 5])],
        [weight("w", [6, 2, 3, 3]), weight("wt", [6, 3, 2, 2]), weight("g", [3 * 16 * 16, 5])],
    )
    # grouped Conv: N=2, C_out=6, 8x8 out, C_in/group = 4/2 = 2, 3x3
    assert node_macs(by_name(model, "GC")) == 2 * 6 * 8 * 8 * 2 * 3 * 3
    # ConvTranspose: each of N*C_in*H_in*W_in = 2*6*8*8 inputs feeds (C_out/group)*kH*kW = 3*2*2 outputs
    assert list(by_name(model, "CT").outputs[0].shape) == [2, 3, 16, 16]
    assert node_macs(by_name(model, "CT")) == 2 * 6 * 8 * 8 * 3 * 2 * 2
    # Gemm with transA: A' = [2, 768], B = [768, 5]: M*N*K
    assert node_macs(by_name(model, "GE")) == 2 * 5 * 768


def test_macs_of_a_matmul_with_a_symbolic_inner_dim_is_a_model_error():
    model = inferred(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="MM")],
        [f32("x", [1, "T", 16])],
        [f32("y", [1, "T", 4])],
        [weight("w", [16, 4])],
    )
    with pytest.raises(ModelError, match="'MM'.*'y'"):
        node_macs(by_name(model, "MM"))


# ---------------------------------------------------------------------------------------------
# lifetimes and peak


def three_node_model() -> ir.Model:
    # x [N,100] -> A: Concat(x, x) -> a [N,200] -> B: ReduceSum(a, axes) -> b [N,1]; C: Add(x, b) -> y [N,100]
    return inferred(
        [
            helper.make_node("Concat", ["x", "x"], ["a"], name="A", axis=1),
            helper.make_node("ReduceSum", ["a", "axes"], ["b"], name="B", keepdims=1),
            helper.make_node("Add", ["x", "b"], ["y"], name="C"),
        ],
        [f32("x", ["N", 100])],
        [f32("y", ["N", 100])],
        [numpy_helper.from_array(np.array([1], np.int64), "axes")],
    )


def test_lifetimes_of_a_three_node_graph_by_hand():
    model = three_node_model()
    lifetimes = tensor_lifetimes(model)
    assert lifetimes == {
        "x": TensorLifetime("x", 0, 2, 400),  # graph input from step 0, read again by C at step 2
        "a": TensorLifetime("a", 0, 1, 800),
        "b": TensorLifetime("b", 1, 2, 4),
        "y": TensorLifetime("y", 2, 2, 400),  # graph output: alive to the last step
    }  # the 'axes' initializer is not an activation
    # step 0: x+a = 1200; step 1: x+a+b = 1204; step 2: x+b+y = 804
    assert peak_live_bytes(model) == (1204, 1)
    assert peak_live_bytes(model, batch=2) == (2408, 1)
    assert tensor_lifetimes(model, batch=3)["a"].bytes == 2400


def test_mnist_peak_is_at_the_first_add():
    model = load(MNIST)
    # step 2 (Plus30): Conv out + Add out, 8x28x28 float each, plus the Reshape'd dense weight
    # [256, 10] (an activation computed from constants, alive from step 0 to the MatMul at step 10).
    assert peak_live_bytes(model) == (2 * 8 * 28 * 28 * 4 + 256 * 10 * 4, 2) == (60_416, 2)
    lifetimes = tensor_lifetimes(model)
    assert "Parameter5" not in lifetimes  # IR-3 initializers listed as graph inputs are constants
    assert lifetimes["Input3"] == TensorLifetime("Input3", 0, 1, 3136)
    assert lifetimes["Plus214_Output_0"] == TensorLifetime("Plus214_Output_0", 11, 11, 40)


def test_peak_matches_a_brute_force_sum_on_real_models():
    for path in (KWS, VWW, IC):
        model = load(path)
        lifetimes = tensor_lifetimes(model)
        steps = max(life.last_step for life in lifetimes.values()) + 1
        live = [sum(l.bytes for l in lifetimes.values() if l.first_step <= s <= l.last_step) for s in range(steps)]
        assert peak_live_bytes(model) == (max(live), live.index(max(live)))
    # ResNet-8: three [16,32,32] float tensors alive at the first residual Add (skip + two branches)
    assert peak_live_bytes(load(IC))[0] == 3 * 16 * 32 * 32 * 4


# ---------------------------------------------------------------------------------------------
# summarize


def test_summarize_vww_is_fast_and_complete():
    model = load(VWW)
    summarize(model)  # warm-up (imports, caches)
    start = time.perf_counter()
    summary = summarize(model)
    seconds = time.perf_counter() - start
    assert seconds < 0.25, f"summarize(vww) took {seconds:.3f} s"
    assert isinstance(summary, ModelSummary)
    assert summary.num_nodes == 60
    assert summary.op_histogram == {
        "Conv": 27, "Relu": 27, "Add": 1, "AveragePool": 1, "MatMul": 1, "Reshape": 1, "Softmax": 1, "Transpose": 1
    }
    assert list(summary.op_histogram)[:2] == ["Conv", "Relu"]
    assert summary.parameter_bytes == 4 * summary.parameters + 4 * 2  # float32 + one int64 [2] shape
    # largest activations: 16x48x48 float (147,456 B) twice, then the 96x96x3 input and its transpose
    assert [size for _, size in summary.largest_tensors] == [147_456, 147_456, 110_592, 110_592, 73_728]
    assert ("input_1", 110_592) in summary.largest_tensors
    assert summary.peak_live_bytes == peak_live_bytes(model)[0] == 2 * 147_456
