"""The C kernels of ADD, SUB, MUL, LOGISTIC, TANH and SOFTMAX (int8) against LiteRT's reference kernels.

Every comparison is bit-exact: the C kernel (``runtime/ec_elementwise.c``, ``runtime/ec_softmax.c``),
called with the parameters its builder (``ops/elementwise.py``, ``ops/softmax.py``) computes from a
``.tflite`` file, must produce the same int8 bytes as LiteRT running that file with
``OpResolverType.BUILTIN_REF``.

Where the files come from:

- small ONNX graphs (onnx.helper) lowered by the real pipeline: canonicalization, edgecomp's naive
  INT8 calibration, the tflite backend. The op is checked on the intermediates LiteRT computes
  (``experimental_preserve_all_tensors``) when it runs the whole file;
- the same operator cut out of that file into a one-operator int8 model (its int8 inputs become
  the model inputs), optionally with other shapes, quantization parameters, fused activation or
  beta: this drives the kernels exhaustively (all 65,536 int8 pairs of a binary op, all 256 int8
  values of a unary op and of softmax rows, every softmax input difference across the ``diff_min``
  cut-off for many input scales);
- the real MLPerf Tiny models (ResNet-8 'ic': 3 residual ADDs and a SOFTMAX; KWS and VWW: SOFTMAX),
  quantized with edgecomp's naive INT8 on their real data.

The C side is built and run by ``tests/c_kernel_support.py`` (every case's parameter struct and const
arrays as the emitter writes them, all cases in one program built by ``edgecomp_c.harness``), here
with ``gcc -std=c99 -Wall -Wextra -Werror -O2`` and AddressSanitizer + UndefinedBehaviorSanitizer
(when the host gcc has them).
"""

from __future__ import annotations

import collections

import numpy as np
import onnx.helper as oh
import pytest
from ai_edge_litert import schema_py_generated as schema
from c_kernel_support import (
    STRICT_BUILDS,
    KernelCase,
    check,
    compile_strict,
    file_cases,
    find_op,
    isolate,
    kernel_case,
    litert_output,
    naive_tflite,
    needs_gcc,
    onnx_model,
    real_model,
    run_cases,
)
from edgecomp_c.ops import builders
from edgecomp_c.ops.elementwise import broadcast_walk
from edgecomp_c.ops.softmax import calculate_input_radius, preprocess_softmax_scaling
from edgecomp_c.program import Unlowerable

KERNEL_SOURCES = ("ec_elementwise.c", "ec_softmax.c")
KINDS = ("ADD", "SUB", "MUL", "SOFTMAX", "LOGISTIC", "TANH")
Activation = schema.ActivationFunctionType

pytestmark = needs_gcc


# ------------------------------------------------------------------------------------------ files and cases


def onnx_to_tflite(nodes: list, initializers: dict, input_shape: tuple[int, ...], batch: np.ndarray) -> bytes:
    """An ONNX graph ``x -> nodes -> y`` lowered to INT8 ``.tflite`` by the real pipeline
    (canonicalization, naive min/max calibration on ``batch``, the tflite backend)."""
    weights = {name: np.asarray(value, dtype=np.float32) for name, value in initializers.items()}
    return naive_tflite(onnx_model(nodes, {"x": list(input_shape)}, weights), [{"x": batch}])


def in_rows(batch: np.ndarray, rows: int) -> list[list[np.ndarray]]:
    """LiteRT feeds of ``batch``, ``rows`` at a time (the file's input batch)."""
    return [[batch[start : start + rows]] for start in range(0, len(batch), rows)]


def isolated_case(single: bytes, builtin: str, inputs: list[np.ndarray], label: str) -> KernelCase:
    """The operator of a one-operator model (:func:`isolate`) on ``inputs`` (one ``[samples,
    *shape]`` array per model input), LiteRT's output expected."""
    op = find_op(single, builtin)
    activations = [t.index for t in op.inputs if t is not None and not t.is_constant]
    return kernel_case(op, dict(zip(activations, inputs)), {op.outputs[0].index: litert_output(single, zip(*inputs))}, label)


def run(cases: list[KernelCase], tmp_path) -> collections.Counter:
    """Every case bit-exact with LiteRT, the driver built with the sanitizers."""
    return check(cases, tmp_path, sanitize=True)


# ------------------------------------------------------------------------------------------ inputs


RNG_SEED = 20240611
ALL_INT8 = np.arange(-128, 128, dtype=np.int8)


def all_pairs() -> tuple[np.ndarray, np.ndarray]:
    """Every (x1, x2) int8 pair, as two [1, 65536] sample arrays of shape (65536,)."""
    x1, x2 = np.meshgrid(ALL_INT8, ALL_INT8, indexing="ij")
    return x1.reshape(1, -1), x2.reshape(1, -1)


def gemm_pair(op_type: str) -> bytes:
    """``Gemm(x, w1) <op> Gemm(x, w2)``: a binary op of two computed int8 tensors [8, 32]."""
    rng = np.random.default_rng(RNG_SEED)
    nodes = [oh.make_node("Gemm", ["x", "w1"], ["a"]), oh.make_node("Gemm", ["x", "w2"], ["b"]), oh.make_node(op_type, ["a", "b"], ["y"])]
    weights = {"w1": rng.normal(size=(16, 32)), "w2": 3.0 * rng.normal(size=(16, 32))}
    return onnx_to_tflite(nodes, weights, (8, 16), rng.normal(size=(8, 16)).astype(np.float32))


def relu_const(op_type: str, constant: np.ndarray, *, constant_first: bool = False) -> bytes:
    """``Relu(x) <op> c`` (or ``c <op> Relu(x)``) for x [2, 4, 3, 3]: a broadcast constant operand."""
    rng = np.random.default_rng(RNG_SEED + 1)
    batch = rng.normal(size=(2, 4, 3, 3)).astype(np.float32)
    operands = ["c", "r"] if constant_first else ["r", "c"]
    nodes = [oh.make_node("Relu", ["x"], ["r"]), oh.make_node(op_type, operands, ["y"])]
    return onnx_to_tflite(nodes, {"c": constant}, (2, 4, 3, 3), batch)


def gemm_unary(op_type: str, **attributes) -> tuple[bytes, np.ndarray]:
    rng = np.random.default_rng(RNG_SEED + 2)
    batch = rng.normal(size=(8, 16)).astype(np.float32)
    nodes = [oh.make_node("Gemm", ["x", "w1"], ["a"]), oh.make_node(op_type, ["a"], ["y"], **attributes)]
    return onnx_to_tflite(nodes, {"w1": rng.normal(size=(16, 32))}, (8, 16), batch), batch


# ------------------------------------------------------------------------------------------ builders


def test_builders_are_registered():
    registry = builders()
    for name in ("ADD", "SUB", "MUL", "SOFTMAX", "LOGISTIC", "TANH"):
        assert name in registry


def test_broadcast_walk_merges_axes():
    assert broadcast_walk((1, 32, 32, 16), (1, 32, 32, 16), (1, 32, 32, 16)) == ([16384], [1], [1])
    assert broadcast_walk((2, 3, 3, 4), (1, 1, 1, 4), (2, 3, 3, 4)) == ([18, 4], [4, 1], [0, 1])
    assert broadcast_walk((1, 1), (2, 3, 3, 4), (2, 3, 3, 4)) == ([72], [0], [1])
    assert broadcast_walk((2, 3, 1, 4), (1, 3, 5, 1), (2, 3, 5, 4)) == ([2, 3, 5, 4], [12, 4, 0, 1], [0, 5, 1, 0])
    assert broadcast_walk((4,), (3, 1), (3, 4)) == ([3, 4], [0, 1], [1, 0])
    with pytest.raises(Unlowerable):
        broadcast_walk((3,), (4,), (4,))


def test_softmax_parameters_match_tflite_prepare():
    """Hand-checked PreprocessSoftmaxScaling / CalculateInputRadius values."""
    # beta * scale * 2**26 = 2**26 exactly: multiplier 2**30, shift 27, radius floor(31 * 2**26 / 2**27) = 15
    assert preprocess_softmax_scaling(1.0, 1.0) == (1 << 30, 27)
    assert calculate_input_radius(5, 27) == 15
    # capped at 2**31 - 1: shift 31 and radius 0 (only the row maximum contributes)
    assert preprocess_softmax_scaling(1.0, 64.0) == ((1 << 31) - 1, 31)
    assert calculate_input_radius(5, 31) == 0
    with pytest.raises(Unlowerable):
        preprocess_softmax_scaling(1.0, 1e-9)


def test_unsupported_combinations_are_unlowerable():
    data = gemm_pair("Add")
    op = find_op(isolate(data, "ADD", quantization={2: (1e-9, 0)}), "ADD")  # output scale below max input / 2**19
    with pytest.raises(Unlowerable, match="outside"):
        builders()["ADD"](op)
    data, _ = gemm_unary("Softmax")
    op = find_op(isolate(data, "SOFTMAX", quantization={1: (1 / 256, 0)}), "SOFTMAX")
    with pytest.raises(Unlowerable, match="zero point"):
        builders()["SOFTMAX"](op)


# ------------------------------------------------------------------------------------------ ADD / SUB / MUL


#: (operand position -> (scale, zero point)) overrides of the one-operator model, with a fused activation.
BINARY_SWEEP = [
    ({}, Activation.NONE),
    ({}, Activation.RELU),
    ({}, Activation.RELU6),
    ({}, Activation.RELU_N1_TO_1),
    ({0: (0.5, 0), 1: (0.5, 0), 2: (1.0, 0)}, Activation.NONE),  # equal scales: multipliers 2**30, ties
    ({0: (0.02, -128), 1: (0.02, 127), 2: (0.0390625, -128)}, Activation.NONE),
    ({0: (1e-3, 17), 1: (0.9, -5), 2: (0.05, 3)}, Activation.RELU),
    ({0: (0.25, 127), 1: (3e-5, -128), 2: (0.125, -1)}, Activation.NONE),
    ({0: (0.0078125, 0), 1: (0.0078125, 0), 2: (0.00390625, -128)}, Activation.NONE),
    ({0: (0.1, 3), 1: (0.07, -9), 2: (1e-4, 0)}, Activation.NONE),  # saturating outputs
    ({0: (7.0, -100), 1: (0.3, 90), 2: (200.0, 12)}, Activation.RELU6),
]


@pytest.mark.parametrize("op_type", ["Add", "Sub", "Mul"])
def test_binary_on_the_pipeline_file(op_type, tmp_path):
    """The op as the pipeline wrote it, on the intermediates LiteRT computes in the whole file."""
    rng = np.random.default_rng(RNG_SEED + 3)
    data = gemm_pair(op_type)
    batch = rng.normal(size=(64, 16)).astype(np.float32) * 1.5
    assert run(file_cases(data, in_rows(batch, 8), [op_type.upper()], op_type), tmp_path)[op_type.upper()] == 8


@pytest.mark.parametrize("op_type", ["Add", "Sub", "Mul"])
def test_binary_every_int8_pair(op_type, tmp_path):
    """All 65,536 (x1, x2) pairs, for the pipeline's parameters and each BINARY_SWEEP variant."""
    data = gemm_pair(op_type)
    builtin = op_type.upper()
    x1, x2 = all_pairs()
    flat = (1 << 16,)
    cases = []
    for k, (quantization, activation) in enumerate(BINARY_SWEEP):
        single = isolate(data, builtin, shapes={0: flat, 1: flat, 2: flat}, quantization=quantization, activation=activation)
        cases.append(isolated_case(single, builtin, [x1, x2], f"{builtin} sweep {k} {BINARY_SWEEP[k]}"))
    run(cases, tmp_path)


#: (shape1, shape2, output shape): broadcasts of two non-constant operands.
BROADCAST_SHAPES = [
    ((2, 3, 4, 5), (1, 1, 1, 5), (2, 3, 4, 5)),
    ((1, 1, 1, 5), (2, 3, 4, 5), (2, 3, 4, 5)),
    ((2, 3, 4, 5), (1,), (2, 3, 4, 5)),
    ((1,), (7, 9), (7, 9)),
    ((2, 3, 1, 5), (1, 3, 4, 1), (2, 3, 4, 5)),
    ((4, 1), (1, 6), (4, 6)),
    ((6,), (3, 2, 1), (3, 2, 6)),
    ((2, 1, 3, 1, 2, 1), (1, 2, 1, 3, 1, 2), (2, 2, 3, 3, 2, 2)),
]


@pytest.mark.parametrize("op_type", ["Add", "Sub", "Mul"])
def test_binary_broadcasting(op_type, tmp_path):
    """Broadcast shapes (TFLite's BroadcastAdd6DSlow / BroadcastQuantSubSlow / BroadcastMul6DSlow)."""
    rng = np.random.default_rng(RNG_SEED + 4)
    data = gemm_pair(op_type)
    builtin = op_type.upper()
    cases = []
    for shape1, shape2, shape_out in BROADCAST_SHAPES:
        single = isolate(data, builtin, shapes={0: shape1, 1: shape2, 2: shape_out}, activation=Activation.RELU6)
        x1 = rng.integers(-128, 128, size=(5, *shape1), dtype=np.int8)
        x2 = rng.integers(-128, 128, size=(5, *shape2), dtype=np.int8)
        cases.append(isolated_case(single, builtin, [x1, x2], f"{builtin} {(shape1, shape2, shape_out)}"))
    run(cases, tmp_path)


CONSTANT_OPERANDS = {
    "add_per_channel": ("Add", np.array([0.5, -1.25, 2.0, 0.1], np.float32).reshape(1, 4, 1, 1), False),
    "sub_per_channel_constant_first": ("Sub", np.array([0.3, -0.7, 1.9, -2.2], np.float32).reshape(1, 4, 1, 1), True),
    "mul_per_channel": ("Mul", np.array([0.5, -1.25, 2.0, 0.1], np.float32).reshape(1, 4, 1, 1), False),
    "mul_scalar": ("Mul", np.array([-1.7], np.float32), False),
    "add_scalar": ("Add", np.array([0.75], np.float32), False),
}


@pytest.mark.parametrize("name", sorted(CONSTANT_OPERANDS))
def test_binary_with_a_constant_operand(name, tmp_path):
    """A constant operand (the pipeline's NHWC per-channel or scalar tensor), in the whole file and
    in the one-operator model on random inputs."""
    op_type, constant, constant_first = CONSTANT_OPERANDS[name]
    data = relu_const(op_type, constant, constant_first=constant_first)
    builtin = op_type.upper()
    op = find_op(data, builtin)
    assert sum(t.is_constant for t in op.inputs) == 1
    activation = next(t for t in op.inputs if not t.is_constant)
    rng = np.random.default_rng(RNG_SEED + 5)
    wide = rng.normal(size=(32, 4, 3, 3)).astype(np.float32) * 2
    cases = file_cases(data, in_rows(wide, 2), [builtin], f"{name} in the file")
    x = rng.integers(-128, 128, size=(50, *activation.shape), dtype=np.int8)
    cases.append(isolated_case(isolate(data, builtin), builtin, [x], f"{name} alone"))
    assert run(cases, tmp_path)[builtin] == 16 + 50


# ------------------------------------------------------------------------------------------ LOGISTIC / TANH


UNARY_SWEEP = {
    "LOGISTIC": [{}, {0: (0.01, 0)}, {0: (0.05, -128)}, {0: (0.1, 127)}, {0: (0.0390625, 7)}, {0: (0.3, -20)}, {0: (1e-3, 100)}, {0: (0.0625, 0)}],
    "TANH": [{}, {0: (0.01, 0)}, {0: (0.05, -128), 1: (0.0078125, 0)}, {0: (0.2, 5), 1: (0.01, -3)}, {0: (0.0234375, 0)}, {0: (0.003, 60), 1: (0.004, 10)}],
}


@pytest.mark.parametrize("builtin", ["LOGISTIC", "TANH"])
def test_lookup_table_activations_every_int8_value(builtin, tmp_path):
    """LOGISTIC / TANH: all 256 int8 inputs, several input (and for TANH output) parameters."""
    data, batch = gemm_unary("Sigmoid" if builtin == "LOGISTIC" else "Tanh")
    cases = file_cases(data, in_rows(batch, 8), [builtin], builtin)
    for k, quantization in enumerate(UNARY_SWEEP[builtin]):
        single = isolate(data, builtin, shapes={0: (256,), 1: (256,)}, quantization=quantization)
        cases.append(isolated_case(single, builtin, [ALL_INT8[None]], f"{builtin} case {k} {quantization}"))
    run(cases, tmp_path)


# ------------------------------------------------------------------------------------------ SOFTMAX


def test_softmax_on_the_pipeline_file(tmp_path):
    data, batch = gemm_unary("Softmax")
    rng = np.random.default_rng(RNG_SEED + 6)
    wide = np.concatenate([batch, rng.normal(size=(56, 16)).astype(np.float32) * 3])
    assert run(file_cases(data, in_rows(wide, 8), ["SOFTMAX"], "SOFTMAX"), tmp_path)["SOFTMAX"] == 8


def softmax_rows(depth: int, rng: np.random.Generator) -> np.ndarray:
    """int8 rows of ``depth`` covering every input difference x - max in [-255, 0] against many
    row sums: for each v, rows [127, v, ...] and [v, ...] with the rest random or constant; for
    depth 256 every int8 value in one row; plus uniform random rows."""
    rows = []
    values = ALL_INT8.astype(np.int16)
    if depth == 1:
        return ALL_INT8.reshape(256, 1)
    for v in values:
        rows.append(np.concatenate([[127], np.full(depth - 1, v)]))  # sum = 1 + (depth-1) exp(v-127)
        rows.append(np.concatenate([[127, v], rng.integers(-128, 128, size=depth - 2)]))
        rows.append(np.concatenate([[v], rng.integers(-128, int(v) + 1, size=depth - 1)]))
    if depth == 256:
        rows += [rng.permutation(values) for _ in range(4)]
    rows += [rng.integers(-128, 128, size=depth) for _ in range(64)]
    rows += [np.clip(np.round(rng.normal(size=depth) * 20 + 100), -128, 127) for _ in range(64)]
    return np.stack(rows).astype(np.int8)


#: Input scales: no cut-off (diff_min below -255), radius 248, 124, 62, 31, 15, 7, 3, 1, 0 (capped).
SOFTMAX_SCALES = [0.004, 0.0848, 0.1155, 0.2, 0.45, 0.9, 1.7, 3.3, 7.0, 15.0, 40.0]
SOFTMAX_DEPTHS = [1, 2, 3, 10, 12, 64, 256, 1000]


def sum_of_exponentials(rows: np.ndarray, scale: float, beta: float) -> np.ndarray:
    """The real sum of exp(beta * scale * (x - max)) of each row (float64)."""
    x = rows.astype(np.float64)
    return np.exp(beta * scale * (x - x.max(axis=1, keepdims=True))).sum(axis=1)


@pytest.mark.parametrize("depth", SOFTMAX_DEPTHS)
def test_softmax_exhaustive(depth, tmp_path):
    """Rows of ``depth`` (softmax_rows) for every input scale of SOFTMAX_SCALES (and other betas),
    one-operator models of shape [rows, depth]. Rows whose exponentials sum to 512 or more are left
    out (LiteRT aborts on them; test_softmax_row_sums_of_512_or_more covers them)."""
    data, _ = gemm_unary("Softmax")
    rng = np.random.default_rng(RNG_SEED + depth)
    all_rows = softmax_rows(depth, rng)
    variants = [(scale, zp, 1.0) for scale, zp in zip(SOFTMAX_SCALES, [0, 98, -6, 5, -128, 127, 1, -1, 60, -60, 0])]
    variants += [(0.0848, 98, 0.5), (0.2, 0, 2.0), (0.9, 3, 0.37)]
    cases = []
    for scale, zero_point, beta in variants:
        rows = all_rows[sum_of_exponentials(all_rows, scale, beta) < 500]
        assert len(rows) >= 64
        single = isolate(data, "SOFTMAX", shapes={0: (len(rows), depth), 1: (len(rows), depth)}, quantization={0: (scale, zero_point)}, beta=beta)
        cases.append(isolated_case(single, "SOFTMAX", [rows[None]], f"SOFTMAX depth {depth} variant {(scale, zero_point, beta)}"))
    radii = {-case.call.params["diff_min"] for case in cases}
    assert {0, 1, 3, 7, 15, 31, 62, 124, 248} <= radii  # the cut-off falls inside [-255, 0] for all of these
    run(cases, tmp_path)


def test_softmax_row_sums_of_512_or_more(tmp_path):
    """Where TFLite's reference kernel aborts (TFLITE_CHECK: a row's exponentials sum to 512 or
    more, so the final shift exceeds 31), the C kernel outputs -128, the rounded probability, and
    stays free of undefined behaviour, up to rows longer than 4096 (the saturated sum)."""
    data, _ = gemm_unary("Softmax")
    cases = []
    for depth in (512, 1000, 5000):
        single = isolate(data, "SOFTMAX", shapes={0: (2, depth), 1: (2, depth)}, quantization={0: (0.05, 0)})
        op = find_op(single, "SOFTMAX")
        uneven = np.full(depth, -128) if depth == 512 else np.where(np.arange(depth) % 3 == 0, 127, 126)
        rows = np.stack([np.full(depth, 7), uneven]).astype(np.int8)  # 512 equal terms: exactly 2**28 in Q12.19
        assert (sum_of_exponentials(rows, 0.05, 1.0) >= 512).all()
        cases.append(kernel_case(op, {op.inputs[0].index: rows[None]}))
    for outputs in run_cases(cases, tmp_path, sanitize=True):
        assert all((actual == -128).all() for actual in outputs.values())


# ------------------------------------------------------------------------------------------ real models


@pytest.mark.parametrize("name, expected", [("ic", {"ADD": 3, "SOFTMAX": 1}), ("kws", {"SOFTMAX": 1}), ("vww", {"SOFTMAX": 1})])
def test_real_model_operators(name, expected, tmp_path):
    """Every ADD and SOFTMAX of the real models on LiteRT's own intermediates (real inputs), and the
    same parameters on exhaustive inputs (ADD: all 65,536 int8 pairs; SOFTMAX: softmax_rows)."""
    data, x = real_model(name)
    cases = file_cases(data, in_rows(x, 1), KINDS, f"{name} (real inputs)")
    assert collections.Counter(case.builtin for case in cases) == expected
    # the same parameters on exhaustive inputs: each ADD on every int8 pair (flat shapes), each
    # SOFTMAX on softmax_rows of its depth
    rng = np.random.default_rng(RNG_SEED + 7)
    for case in list(cases):
        if case.builtin == "ADD":
            single = isolate(data, "ADD", index=case.op.index, shapes={0: (1 << 16,), 1: (1 << 16,), 2: (1 << 16,)})
            inputs = list(all_pairs())
        else:
            rows = softmax_rows(case.op.inputs[0].shape[-1], rng)
            single = isolate(data, "SOFTMAX", index=case.op.index, shapes={0: rows.shape, 1: rows.shape})
            inputs = [rows[None]]
        cases.append(isolated_case(single, case.builtin, inputs, f"{name} {case.label} (exhaustive)"))
    run(cases, tmp_path)


# ------------------------------------------------------------------------------------------ compilers


@pytest.mark.parametrize("build", sorted(STRICT_BUILDS))
def test_kernels_compile_strict_c99(build, tmp_path):
    compile_strict(KERNEL_SOURCES, build, tmp_path)
