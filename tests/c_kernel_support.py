"""Test machinery of the ``c`` backend's kernel tests (``plugins/edgecomp_c/tests/test_kernels_*.py``).

A :class:`KernelCase` is one kernel call, the builder's :class:`~edgecomp_c.program.KernelCall` for
one TFLite operator, on samples of its activation inputs, with LiteRT's outputs for them.
:func:`run_cases` writes a list of cases as a source folder of :mod:`edgecomp_c.harness` (a model
``kernels``: ``kernels.h``, ``kernels.c`` and the runtime files they need), builds it with the
harness for the host (``gcc``, optionally with sanitizers) or for QEMU's Cortex-M4, and runs every
case on all its samples in one ``kernels_invoke``; :func:`check` compares the outputs with LiteRT's
bit for bit. ``kernels.c`` declares every case's parameter struct and const arrays with the
emitter's own code (:mod:`edgecomp_c.emit`), so they are what the ``c`` backend writes.

Files: :func:`single_op_model` (a hand-written one-operator ``.tflite``), :func:`isolate` (one
operator cut out of a file), :func:`naive_tflite` (an ONNX graph through edgecomp's naive INT8
pipeline), :func:`real_model` (the real models, naive INT8 on their real data, built once per
session). LiteRT's reference kernels: :func:`litert`, :func:`litert_output`, :func:`file_cases`.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import pathlib
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Sequence

import flatbuffers
import numpy as np
import onnx
import onnx.helper as oh
import onnx.numpy_helper
import pytest
from edgecomp_c import harness
from edgecomp_c.emit import array_body, call_statement, declare_call
from edgecomp_c.ops import builders
from edgecomp_c.program import KernelCall, OpView, TensorInfo, TensorList, read_ops
from edgecomp_tflite.backend import TFLiteBackend
from edgecomp_tflite.writer import ModelWriter, Quantization, read_model
from model_zoo import TARGET, naive_model

from edgecomp.backend import LowerOptions
from edgecomp.ir.load import load_model
from edgecomp.passes.base import PassManager
from edgecomp.passes.canonicalize import canonicalization_passes
from edgecomp.passes.quantize.naive import quantize_int8

RUNTIME = harness.RUNTIME
HOST_CFLAGS = harness.HOST_CFLAGS
ARM_CFLAGS = harness.ARM_CFLAGS
MODEL = "kernels"

needs_gcc = pytest.mark.skipif(shutil.which("gcc") is None, reason="host gcc is not installed")
needs_qemu = pytest.mark.skipif(not harness.qemu_available(), reason="arm-none-eabi-gcc or qemu-system-arm is not installed")


# ------------------------------------------------------------------------------------------ LiteRT


def interpreter(data: bytes, *, preserve: bool = False):
    """LiteRT on ``data`` with the reference kernels (``BUILTIN_REF``), tensors allocated."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    it = Interpreter(model_content=data, num_threads=1, experimental_op_resolver_type=OpResolverType.BUILTIN_REF, experimental_preserve_all_tensors=preserve)
    it.allocate_tensors()
    return it


def litert(data: bytes, feeds: Iterable[Sequence[np.ndarray]], tensors: Iterable[int] | None = None) -> dict[int, np.ndarray]:
    """One invoke per feed (one array per model input, cast and reshaped to the input tensor):
    tensor index -> its values stacked over the feeds, ``[feeds, *shape]``. ``tensors``: which
    (intermediates kept), or None for the model outputs in order."""
    it = interpreter(data, preserve=tensors is not None)
    wanted = [d["index"] for d in it.get_output_details()] if tensors is None else list(tensors)
    found: dict[int, list[np.ndarray]] = {index: [] for index in wanted}
    for feed in feeds:
        for detail, value in zip(it.get_input_details(), feed):
            it.set_tensor(detail["index"], np.ascontiguousarray(value, dtype=detail["dtype"]).reshape(detail["shape"]))
        it.invoke()
        for index in wanted:
            found[index].append(it.get_tensor(index).copy())
    return {index: np.stack(values) for index, values in found.items()}


def litert_output(data: bytes, feeds: Iterable[Sequence[np.ndarray]]) -> np.ndarray:
    """LiteRT's output 0 for each feed, ``[feeds, *shape]``."""
    return next(iter(litert(data, feeds).values()))


# ------------------------------------------------------------------------------------------ files


def ops_of(data: bytes) -> list[OpView]:
    return read_ops(read_model(data))[0]


def find_op(data: bytes, builtin: str) -> OpView:
    """The one ``builtin`` operator of ``data``."""
    ops = ops_of(data)
    matches = [op for op in ops if op.builtin == builtin]
    assert len(matches) == 1, [op.builtin for op in ops]
    return matches[0]


def single_op_model(code: int, inputs: Sequence[tuple | None], output: tuple, options=None, *, grouped_convolution: bool = False) -> bytes:
    """A one-operator ``.tflite``: ``inputs`` are ``(shape, dtype, quantization, constant data |
    None)`` or None (an omitted optional input), ``output`` is ``(shape, dtype, quantization)``;
    a quantization is None, ``(scale, zero point)`` or a :class:`Quantization`. The activations are
    the graph inputs, in order."""

    def quantization(value) -> Quantization | None:
        if value is None or isinstance(value, Quantization):
            return value
        return Quantization((float(value[0]),), (int(value[1]),))

    writer = ModelWriter("edgecomp test")
    indices, graph_inputs = [], []
    for k, operand in enumerate(inputs):
        if operand is None:
            indices.append(-1)
            continue
        shape, dtype, quant, data = operand
        indices.append(writer.add_tensor(f"in{k}", shape, dtype, data=data, quantization=quantization(quant)))
        if data is None:
            graph_inputs.append(indices[-1])
    shape, dtype, quant = output
    y = writer.add_tensor("out", shape, dtype, quantization=quantization(quant))
    writer.add_operator(code, indices, [y], options, grouped_convolution=grouped_convolution)
    writer.set_io(graph_inputs, [y])
    return writer.finish()


def isolate(
    data: bytes,
    builtin: str,
    *,
    index: int | None = None,
    shapes: dict[int, tuple[int, ...]] | None = None,
    quantization: dict[int, tuple[float, int]] | None = None,
    activation: int | None = None,
    beta: float | None = None,
) -> bytes:
    """The one ``builtin`` operator of ``data`` (or the operator at ``index``) as a one-operator
    model whose inputs are its non-constant inputs.

    Args:
        shapes: operand position (0, 1 ... inputs, then outputs) -> new shape.
        quantization: operand position -> new (scale, zero point).
        activation: a new fused activation; beta: a new SOFTMAX beta.
    """
    model = read_model(data)
    subgraph = model.subgraphs[0]
    op = subgraph.operators[find_op(data, builtin).index if index is None else index]
    operands = [int(i) for i in op.inputs] + [int(i) for i in op.outputs]

    def is_constant(tensor: int) -> bool:
        buffer = model.buffers[subgraph.tensors[tensor].buffer]
        return buffer.data is not None and len(buffer.data) > 0

    for slot, shape in (shapes or {}).items():
        tensor = subgraph.tensors[operands[slot]]
        tensor.shape = list(shape)
        tensor.shapeSignature = None
    for slot, (scale, zero_point) in (quantization or {}).items():
        params = subgraph.tensors[operands[slot]].quantization
        params.scale = [float(np.float32(scale))]
        params.zeroPoint = [int(zero_point)]
    if activation is not None:
        op.builtinOptions.fusedActivationFunction = activation
    if beta is not None:
        op.builtinOptions.beta = float(beta)
    subgraph.operators = [op]
    subgraph.inputs = [int(i) for i in op.inputs if i >= 0 and not is_constant(int(i))]
    subgraph.outputs = [int(i) for i in op.outputs]
    model.signatureDefs = None
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def onnx_model(nodes: list, inputs: dict[str, list], initializers: dict[str, np.ndarray] | None = None, opset: int = 17) -> onnx.ModelProto:
    """A float ONNX graph ``inputs -> nodes -> y`` (``y`` typed by ONNX shape inference)."""
    graph = oh.make_graph(
        nodes,
        "g",
        [oh.make_tensor_value_info(name, onnx.TensorProto.FLOAT, list(shape)) for name, shape in inputs.items()],
        [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
        [onnx.numpy_helper.from_array(np.asarray(value), name) for name, value in (initializers or {}).items()],
    )
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", opset)])
    model.ir_version = 8
    return onnx.shape_inference.infer_shapes(model, strict_mode=True)


def lower_naive(model, name: str = "m") -> bytes:
    """The tflite backend's INT8 file of a model quantized by edgecomp's naive INT8."""
    return TFLiteBackend().lower(model, TARGET, LowerOptions(quantize="naive", model_name=name)).files[f"{name}.tflite"]


def naive_tflite(proto: onnx.ModelProto, calibration: list[dict[str, np.ndarray]]) -> bytes:
    """edgecomp's pipeline on an ONNX graph: the loader, canonicalization, naive INT8 (min/max
    calibration on ``calibration``), the tflite backend."""
    with tempfile.TemporaryDirectory() as directory:
        path = pathlib.Path(directory) / "model.onnx"
        onnx.save(proto, path)
        model = PassManager(canonicalization_passes(fold_weight_dequantize=True))(load_model(path)).model
    quantize_int8(model, calibration, method="minmax")
    return lower_naive(model)


@functools.cache
def real_model(name: str) -> tuple[bytes, np.ndarray]:
    """(naive INT8 ``.tflite`` of a real model (``model_zoo.naive_model``: mnist, kws, vww, ic, ad),
    its real float inputs one per row), built once per session."""
    model, input_name, feeds = naive_model(name)
    return lower_naive(model, name), np.concatenate([feed[input_name] for feed in feeds])


# ------------------------------------------------------------------------------------------ cases


@dataclasses.dataclass
class KernelCase:
    """One kernel call on ``samples`` samples.

    Attributes:
        op: the operator (its tensors are the call's).
        call: the builder's kernel call.
        inputs: activation tensor read by the call -> its samples ``[samples, *shape]``.
        expected: output tensor -> LiteRT's values ``[samples, *shape]`` (None: not compared).
        label: names the case in failures.
    """

    op: OpView
    call: KernelCall
    inputs: dict[int, np.ndarray]
    expected: dict[int, np.ndarray] | None = None
    label: str = ""

    @property
    def builtin(self) -> str:
        return self.op.builtin

    @property
    def tensors(self) -> dict[int, TensorInfo]:
        return {t.index: t for t in (*self.op.inputs, *self.op.outputs) if t is not None}

    @property
    def outputs(self) -> list[int]:
        return [t.index for t in self.op.outputs]

    @property
    def samples(self) -> int:
        return len(next(iter({**self.inputs, **(self.expected or {})}.values()), [None]))

    def referenced(self) -> list[int]:
        """The tensors the call passes, directly or in a :class:`TensorList` parameter."""
        listed = [i for value in self.call.params.values() if isinstance(value, TensorList) for i in value.tensors]
        return list(dict.fromkeys([*self.call.tensors, *listed]))

    def activations(self) -> list[int]:
        """The non-constant tensors the call reads (each needs samples in :attr:`inputs`)."""
        tensors = self.tensors
        return [i for i in self.referenced() if i not in self.outputs and not tensors[i].is_constant]


def kernel_case(op: OpView, inputs: dict[int, np.ndarray], expected: dict[int, np.ndarray] | None = None, label: str = "", *, call: KernelCall | None = None) -> KernelCase:
    """The builder's call for ``op`` (or ``call``) on ``inputs``: activation tensor -> samples (any
    shape with the tensor's element count per sample); ``expected`` likewise for the outputs."""
    case = KernelCase(op, call or builders()[op.builtin](op), {}, None, label or op.builtin)
    tensors = case.tensors

    def stacked(values: dict[int, np.ndarray]) -> dict[int, np.ndarray]:
        return {index: np.asarray(value, dtype=tensors[index].dtype).reshape(-1, *tensors[index].shape) for index, value in values.items()}

    case.inputs = stacked(inputs)
    case.expected = None if expected is None else stacked(expected)
    assert sorted(case.inputs) == sorted(case.activations()), f"{case.label}: inputs {sorted(case.inputs)} for the activations {case.activations()}"
    assert len({len(v) for v in (*case.inputs.values(), *(case.expected or {}).values())}) <= 1, f"{case.label}: sample counts differ"
    return case


def file_cases(data: bytes, feeds: Sequence[Sequence[np.ndarray]], kinds: Iterable[str], label: str = "") -> list[KernelCase]:
    """A case per operator of ``data`` whose builtin is in ``kinds``, on LiteRT's own tensors: its
    activation inputs and expected outputs are what LiteRT computes in the whole file for ``feeds``."""
    kinds = set(kinds)
    ops = [op for op in ops_of(data) if op.builtin in kinds]
    wanted = {t.index for op in ops for t in (*op.inputs, *op.outputs) if t is not None and not t.is_constant}
    values = litert(data, feeds, sorted(wanted))
    cases = []
    for op in ops:
        call = builders()[op.builtin](op)
        reads = KernelCase(op, call, {}).activations()
        outputs = {t.index: values[t.index] for t in op.outputs}
        cases.append(kernel_case(op, {i: values[i] for i in reads}, outputs, f"{label}[op {op.index} {op.builtin}]", call=call))
    return cases


# ------------------------------------------------------------------------------------------ C build and run


@functools.cache
def _source_of(function: str) -> str:
    """The runtime ``.c`` file of a kernel: the one beside the header declaring ``function``."""
    for header in sorted(RUNTIME.glob("ec_*.h")):
        if re.search(rf"\b{re.escape(function)}\s*\(", header.read_text()) and (RUNTIME / f"{header.stem}.c").exists():
            return f"{header.stem}.c"
    raise KeyError(f"no runtime header declares {function}")


class _CaseNames:
    """The emitter's tensor naming, for case ``k``: every tensor is an array ``op<k>_t<index>``."""

    def __init__(self, k: int) -> None:
        self.k = k

    def pointer(self, index: int, *, writable: bool) -> str:
        return f"op{self.k}_t{index}"


def _case_source(k: int, case: KernelCase) -> tuple[list[str], list[str]]:
    """(declarations, statements of ``kernels_invoke``) of case ``k``: its tensors (constants as
    const arrays), its parameters as the emitter declares them, and a loop over its samples that
    copies the inputs in, fills the outputs with a sentinel (an element the kernel does not write
    cannot pass), calls the kernel and copies the outputs out."""
    names, tensors = _CaseNames(k), case.tensors
    decl = [f"/* case {k}: {case.label.replace('*/', '* /')} ({case.call.function}) */"]
    for index in case.referenced():
        tensor = tensors[index]
        if tensor.is_constant:
            decl.append(f"static const {tensor.ctype} op{k}_t{index}[{max(tensor.numel, 1)}] = {array_body(tensor.data, tensor.ctype)};")
        else:
            decl.append(f"static {tensor.ctype} op{k}_t{index}[{max(tensor.numel, 1)}];")
    declare_call(decl, k, case.op, case.call, names)
    body = [f"    for (s = 0; s < {case.samples}; ++s) {{"]
    for index in case.inputs:
        body += [f"        memcpy(op{k}_t{index}, in, {tensors[index].nbytes});", f"        in += {tensors[index].nbytes};"]
    body += [f"        memset(op{k}_t{index}, 0xA5, {tensors[index].nbytes});" for index in case.outputs]
    body.append(f"        {call_statement(k, case.call, names, set(case.outputs))}")
    for index in case.outputs:
        body += [f"        memcpy(out, op{k}_t{index}, {tensors[index].nbytes});", f"        out += {tensors[index].nbytes};"]
    body.append("    }")
    return decl, body


def _bytes_per_sample(case: KernelCase, indices: Iterable[int]) -> int:
    return sum(case.tensors[i].nbytes for i in indices)


def write_sources(cases: Sequence[KernelCase], directory: pathlib.Path) -> harness.Sources:
    """The cases as a harness source folder: ``kernels_invoke(input0, output0)`` runs every case on
    all its samples; ``input0`` is every case's inputs (case by case, sample by sample, in the
    order of :attr:`KernelCase.inputs`), ``output0`` every case's outputs likewise."""
    directory.mkdir(parents=True, exist_ok=True)
    for header in RUNTIME.glob("ec_*.h"):
        shutil.copy(header, directory / header.name)
    for source in sorted({_source_of(case.call.function) for case in cases}):
        shutil.copy(RUNTIME / source, directory / source)
    in_bytes = max(1, sum(case.samples * _bytes_per_sample(case, case.inputs) for case in cases))
    out_bytes = max(1, sum(case.samples * _bytes_per_sample(case, case.outputs) for case in cases))
    upper = MODEL.upper()
    header = [
        f"#ifndef {upper}_H",
        f"#define {upper}_H",
        "#include <stdint.h>",
        f"#define {upper}_INPUT_0_BYTES {in_bytes}",
        f"#define {upper}_OUTPUT_0_BYTES {out_bytes}",
        f"int {MODEL}_invoke(const int8_t *input0, int8_t *output0);",
        "#endif",
        "",
    ]
    (directory / f"{MODEL}.h").write_text("\n".join(header))
    lines = ["#include <stdint.h>", "#include <string.h>", "", '#include "ec_kernels.h"', f'#include "{MODEL}.h"', ""]
    body = [f"int {MODEL}_invoke(const int8_t *input0, int8_t *output0)", "{", "    const int8_t *in = input0;", "    int8_t *out = output0;", "    int32_t s;"]
    for k, case in enumerate(cases):
        decl, statements = _case_source(k, case)
        lines += decl
        body += statements
    body += ["    (void)in;", "    (void)out;", "    (void)s;", "    return 0;", "}", ""]
    (directory / f"{MODEL}.c").write_text("\n".join(lines + [""] + body))
    return harness.read_sources(directory, MODEL)


def _input_blob(cases: Sequence[KernelCase]) -> np.ndarray:
    """``input0`` of :func:`write_sources`, as int8 (one zero byte when no case has an input)."""
    parts = []
    for case in cases:
        if case.inputs:
            rows = [np.ascontiguousarray(value, dtype=case.tensors[i].dtype).view(np.uint8).reshape(case.samples, -1) for i, value in case.inputs.items()]
            parts.append(np.concatenate(rows, axis=1).reshape(-1))
    return (np.concatenate(parts) if parts else np.zeros(1, np.uint8)).view(np.int8)


def _split_outputs(cases: Sequence[KernelCase], blob: np.ndarray) -> list[dict[int, np.ndarray]]:
    """``output0`` of :func:`write_sources` back into each case's outputs ``[samples, *shape]``."""
    data = np.ascontiguousarray(blob).view(np.uint8).reshape(-1)
    results, offset = [], 0
    for case in cases:
        size = case.samples * _bytes_per_sample(case, case.outputs)
        table = data[offset : offset + size].reshape(case.samples, -1)
        offset += size
        outputs, column = {}, 0
        for index in case.outputs:
            tensor = case.tensors[index]
            outputs[index] = table[:, column : column + tensor.nbytes].copy().view(tensor.dtype).reshape(case.samples, *tensor.shape)
            column += tensor.nbytes
        results.append(outputs)
    assert offset == data.size or offset == 0 == data.size - 1, (offset, data.size)
    return results


@functools.cache
def sanitizer_flags() -> tuple[str, ...]:
    """AddressSanitizer + UndefinedBehaviorSanitizer flags (out-of-bounds accesses, signed
    overflow, oversized shifts abort the run), or what of them the host gcc can link."""
    for sanitizers in ("address,undefined", "undefined"):
        flags = (f"-fsanitize={sanitizers}", "-fno-sanitize-recover=all")
        probe = subprocess.run(["gcc", *flags, "-x", "c", "-", "-o", "/dev/null"], input=b"int main(void){return 0;}", check=False, capture_output=True)
        if probe.returncode == 0:
            return flags
    return ()


def run_cases(cases: Sequence[KernelCase], workdir: pathlib.Path, *, qemu: bool = False, cflags: Sequence[str] | None = None, sanitize: bool = False) -> list[dict[int, np.ndarray]]:
    """Build the cases with the harness and run them: on the host (``gcc`` with ``cflags``, default
    the harness' strict C99 flags, plus :func:`sanitizer_flags` with ``sanitize``) or, with ``qemu``,
    cross-compiled (``cflags`` default: the harness' Cortex-M4 flags) on QEMU's mps2-an386.
    Returns each case's outputs, tensor -> ``[samples, *shape]``."""
    src = write_sources(cases, workdir / "src")
    blob = _input_blob(cases)
    if qemu:
        elf = harness.build_qemu(src, workdir / "build", [blob], cflags=cflags or ARM_CFLAGS)
        (out,) = harness.run_qemu(elf, src)
    else:
        flags = (*(cflags or HOST_CFLAGS), *(sanitizer_flags() if sanitize else ()))
        exe = harness.build_host(src, workdir / "build", cflags=flags)
        (out,) = harness.run_host(exe, src, [blob])
    return _split_outputs(cases, out)


def assert_bit_exact(actual: np.ndarray, expected: np.ndarray, what: str) -> None:
    """The same elements, bit for bit (floats compared as bit patterns: NaNs and signed zeros too)."""
    expected = np.asarray(expected)
    assert actual.size == expected.size, f"{what}: {actual.shape} vs {expected.shape}"
    expected = expected.astype(actual.dtype, copy=False).reshape(actual.shape)

    def bits(values: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(values).reshape(-1).view(f"u{values.dtype.itemsize}")

    differ = np.flatnonzero(bits(actual) != bits(expected))
    if differ.size:
        first = differ[:5]
        raise AssertionError(f"{what}: {differ.size} of {actual.size} elements differ, first at {first.tolist()}: C {actual.reshape(-1)[first].tolist()} vs LiteRT {expected.reshape(-1)[first].tolist()}")


def check(cases: Sequence[KernelCase], workdir: pathlib.Path, **options) -> collections.Counter:
    """:func:`run_cases`, then every output equal to the case's ``expected`` bit for bit. Returns the
    number of kernel invocations checked per builtin (samples summed over the cases)."""
    counts: collections.Counter = collections.Counter()
    failures = []
    for case, outputs in zip(cases, run_cases(cases, workdir, **options)):
        for index, expected in (case.expected or {}).items():
            try:
                assert_bit_exact(outputs[index], expected, f"{case.label} -> {case.call.function}")
            except AssertionError as error:
                failures.append(str(error))
        counts[case.builtin] += case.samples
    assert not failures, "\n".join(failures)
    return counts


# ------------------------------------------------------------------------------------------ strict compilers


_ARM = tuple(flag for flag in ARM_CFLAGS if not flag.startswith("-O"))
#: name -> (compiler, flags) of the strict builds every runtime source must pass without a warning.
STRICT_BUILDS = {
    "host": ("gcc", HOST_CFLAGS),
    "cortex-m4": ("arm-none-eabi-gcc", ARM_CFLAGS),
    "cortex-m4-O0": ("arm-none-eabi-gcc", _ARM),
    "cortex-m4-Os-hard-float": ("arm-none-eabi-gcc", (*_ARM, "-Os", "-mfloat-abi=hard", "-mfpu=fpv4-sp-d16")),
}
STRICT_WARNINGS = ("-pedantic", "-Wconversion", "-Wdouble-promotion")


def compile_strict(sources: Iterable[str], build: str, tmp_path: pathlib.Path) -> None:
    """Compile each runtime source (``-c``) with ``STRICT_BUILDS[build]`` and :data:`STRICT_WARNINGS`
    (warnings are errors); skips when the compiler is not installed."""
    cc, flags = STRICT_BUILDS[build]
    if shutil.which(cc) is None:
        pytest.skip(f"{cc} is not installed")
    for source in sources:
        result = subprocess.run([cc, *flags, *STRICT_WARNINGS, "-c", str(RUNTIME / source), "-o", str(tmp_path / f"{source}.o")], check=False, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
