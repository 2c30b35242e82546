"""Tests of the c-array backend (plugins/edgecomp_c_array): the generated C is compiled and run.

In the emlearn style (``test/test_c.py``), the generated ``.h``/``.c`` are compiled warning-free with
host gcc (C99 and C11) and, when installed, arm-none-eabi-gcc for the Cortex-M4 target; a C program
that includes the header is linked with the generated source, run, and what it prints is compared
with values read independently from the ONNX files with the ``onnx`` package (not through the
backend). Real models: the MLPerf Tiny KWS and AD QDQ models (tests/assets/mlperf_tiny, see
tests/assets/PROVENANCE.md). The embedded backend is a fake registered only here, returning fixed
bytes; the real onnxruntime backend is used when its plugin is installed.
"""

from __future__ import annotations

import dataclasses
import pathlib
import re
import shutil
import subprocess
import zlib

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgecomp.backend import Artifact, LowerOptions, SupportReport
from edgecomp.errors import PluginError, TargetError, UnsupportedError
from edgecomp.targets import CArrayOptions, get_target
from edgecomp_c_array import emit
from edgecomp_c_array.backend import CArrayBackend, select_embedded_file

ROOT = pathlib.Path(__file__).resolve().parents[2]
MLPERF = ROOT / "tests" / "assets" / "mlperf_tiny"
MODELS = {
    "kws": MLPERF / "kws" / "kws_ref_model_int8_qdq.onnx",
    "ad": MLPERF / "ad" / "ad01_int8_qdq.onnx",
}
# Input/output quantization of the two models as published (shared/README.md), not read by the backend.
IO_QUANTIZATION = {
    "kws": {"input": (0.5847029089927673, 83, [1, 49, 10, 1]), "output": (1 / 256, -128, [1, 12])},
    "ad": {"input": (0.3910152316093445, 89, [1, 640]), "output": (0.36449846625328064, 96, [1, 640])},
}
FAKE_BYTES = np.random.default_rng(7).integers(0, 256, 1001, dtype=np.uint8).tobytes()  # odd length on purpose
FAKE_OUTPUT = [np.arange(3, dtype=np.int8)]
GCC = shutil.which("gcc")
ARM_GCC = shutil.which("arm-none-eabi-gcc")
WARNINGS = ["-Wall", "-Wextra", "-Werror", "-pedantic"]

needs_gcc = pytest.mark.skipif(GCC is None, reason="host gcc not installed")


class FakeEmbedBackend:
    """A backend whose artifact is FAKE_BYTES in one file; records its calls."""

    name = "fake-embed"
    description = "fixed bytes, for tests"
    passes = ["a-legalize-pass"]

    def __init__(self) -> None:
        self.lowered = 0

    def support(self, model, target) -> SupportReport:
        return SupportReport(self.name)

    def legalize(self, target) -> list:
        return list(self.passes)

    def lower(self, model, target, options) -> Artifact:
        self.lowered += 1
        return Artifact(self.name, {f"{options.model_name}.bin": FAKE_BYTES}, len(FAKE_BYTES), {"fake": True},
                        runner=lambda feeds: FAKE_OUTPUT)


def make_lookup(*backends):
    table = {backend.name: backend for backend in backends}

    def lookup(name: str):
        if name not in table:
            raise PluginError(f"unknown backend {name!r}")
        return table[name]

    return lookup


def make_target(section=".rodata.edgecomp_model", alignment=256, embed_backend="fake-embed"):
    base = get_target("cortex-m4")
    return dataclasses.replace(base, c_array=CArrayOptions(section=section, alignment=alignment, embed_backend=embed_backend))


def lower(model: ir.Model, target, model_name="model", fake=None) -> Artifact:
    fake = fake or FakeEmbedBackend()
    options = LowerOptions(quantize="naive", model_name=model_name, get_backend=make_lookup(fake))
    return CArrayBackend().lower(model, target, options)


# --------------------------------------------------------------------------- independent reference


@dataclasses.dataclass
class Reference:
    values: np.ndarray
    scale: np.ndarray
    zero_point: np.ndarray
    axis: int


def reference_tensors(proto: onnx.ModelProto) -> dict[str, Reference]:
    """Quantized initializers read with the onnx package: input 0 of a DequantizeLinear."""
    initializers = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    found: dict[str, Reference] = {}
    for node in proto.graph.node:
        if node.op_type != "DequantizeLinear" or node.input[0] not in initializers or node.input[0] in found:
            continue
        values = initializers[node.input[0]]
        scale = initializers[node.input[1]].astype(np.float32).reshape(-1)
        if len(node.input) > 2 and node.input[2]:
            zero_point = initializers[node.input[2]].reshape(-1)
        else:
            zero_point = np.zeros(scale.shape, values.dtype)
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        per_axis = initializers[node.input[1]].ndim == 1
        found[node.input[0]] = Reference(values, scale, zero_point, axis % values.ndim if per_axis else -1)
    return found


def checksum(values: np.ndarray) -> int:
    """sum((i + 1) * v) modulo 2**64 over the C-order elements; floats by their IEEE-754 bits."""
    flat = np.asarray(values).reshape(-1)
    if flat.dtype == np.float32:
        flat = flat.view(np.uint32)
    weights = np.arange(1, flat.size + 1, dtype=object)
    return int(np.sum(weights * flat.astype(object))) % 2**64 if flat.size else 0


def float_bits(value: float) -> int:
    return int(np.float32(value).view(np.uint32))


# --------------------------------------------------------------------------- compiling and running


def compile_object(source: pathlib.Path, std: str, compiler: str | None = None, flags=()) -> pathlib.Path:
    obj = source.with_suffix(f".{std}.o")
    command = [compiler or GCC, f"-std={std}", *WARNINGS, *flags, "-c", str(source), "-o", str(obj)]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stderr}"
    assert result.stderr == "", result.stderr
    return obj


def write_files(artifact: Artifact, folder: pathlib.Path) -> None:
    for name, data in artifact.files.items():
        (folder / name).write_bytes(data)


TEST_PROGRAM = """\
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include "{header}"

static unsigned long long int_checksum(const void *data, size_t count, int kind)
{{
    unsigned long long sum = 0;
    size_t i;
    for (i = 0; i < count; ++i) {{
        long long value = 0;
        uint32_t bits;
        switch (kind) {{
        case 0: value = ((const int8_t *)data)[i]; break;
        case 1: value = ((const uint8_t *)data)[i]; break;
        case 2: value = ((const int16_t *)data)[i]; break;
        case 3: value = ((const uint16_t *)data)[i]; break;
        case 4: value = ((const int32_t *)data)[i]; break;
        default: memcpy(&bits, (const float *)data + i, sizeof bits); value = (long long)bits; break;
        }}
        sum += (unsigned long long)(i + 1) * (unsigned long long)value;
    }}
    return sum;
}}

static uint32_t crc32(const uint8_t *data, size_t count)
{{
    uint32_t crc = 0xFFFFFFFFu;
    size_t i;
    int bit;
    for (i = 0; i < count; ++i) {{
        crc ^= data[i];
        for (bit = 0; bit < 8; ++bit) {{
            crc = (crc >> 1) ^ (0xEDB88320u & (0u - (crc & 1u)));
        }}
    }}
    return crc ^ 0xFFFFFFFFu;
}}

static void print_dims(const char *label, const int *dims, int rank)
{{
    int d;
    printf("%s", label);
    for (d = 0; d < rank; ++d) {{
        printf(" %d", dims[d]);
    }}
}}

static uint32_t bits_of(float value)
{{
    uint32_t bits;
    memcpy(&bits, &value, sizeof bits);
    return bits;
}}

int main(void)
{{
{body}
    printf("model_data_len %u %u\\n", (unsigned)({P}_MODEL_DATA_LEN), {p}_model_data_len);
    printf("model_data_crc32 %lu\\n", (unsigned long)crc32({p}_model_data, {p}_model_data_len));
    printf("model_data_misalignment %lu\\n", (unsigned long)((uintptr_t){p}_model_data % {P}_MODEL_DATA_ALIGNMENT));
    printf("const_data_bytes %lu\\n", (unsigned long){P}_CONST_DATA_BYTES);
    printf("io_counts %d %d\\n", {P}_INPUT_COUNT, {P}_OUTPUT_COUNT);
    return 0;
}}
"""

KIND = {"int8": 0, "uint8": 1, "int16": 2, "uint16": 3, "int32": 4, "float32": 5}


def io_lines(prefix: str, kind: str, index: int, tensor: dict) -> str:
    macro = f"{prefix}_{kind}_{index}"
    lines = [
        f"    {{ static const int dims[] = {macro}_SHAPE; print_dims(\"{kind}_{index}_shape\", dims, {macro}_RANK); printf(\"\\n\"); }}",
        f"    printf(\"{kind}_{index}_elements %ld %u\\n\", (long){macro}_ELEMENTS, (unsigned)sizeof({macro}_CTYPE));",
        f"    printf(\"{kind}_{index}_name %s %s\\n\", {macro}_NAME, {macro}_DTYPE);",
    ]
    if tensor["scale"] is not None:
        lines.append(f"    printf(\"{kind}_{index}_quant %lu %d %d\\n\", (unsigned long)bits_of({macro}_SCALE), (int)({macro}_ZERO_POINT), {macro}_QUANTIZED);")
    else:
        lines.append(f"    printf(\"{kind}_{index}_quant none none %d\\n\", {macro}_QUANTIZED);")
    return "\n".join(lines)


def program_body(artifact: Artifact) -> str:
    lines = []
    prefix = artifact.metadata["macro_prefix"]
    for array in artifact.metadata["arrays"]:
        if array["role"] in ("embedded_model", "embedded_model_length"):
            continue
        name = array["name"]
        lines.append(
            f"    printf(\"array {name} %llu %lu\\n\", int_checksum({name}, sizeof {name} / sizeof {name}[0], {KIND[array['dtype']]}),"
            f" (unsigned long)(sizeof {name} / sizeof {name}[0]));"
        )
        if array["role"] in ("weight", "bias"):
            macro = name.upper()
            lines.append(f"    {{ static const int dims[] = {macro}_SHAPE; print_dims(\"shape {name}\", dims, {macro}_RANK);")
            lines.append(f"      printf(\" axis %d\\n\", {macro}_QUANT_AXIS); }}")
    for kind, count in (("INPUT", len(artifact.metadata["inputs"])), ("OUTPUT", len(artifact.metadata["outputs"]))):
        for index in range(count):
            key = "inputs" if kind == "INPUT" else "outputs"
            lines.append(io_lines(prefix, kind, index, artifact.metadata[key][index]))
    return "\n".join(lines)


def build_and_run(artifact: Artifact, folder: pathlib.Path, std: str = "c99") -> dict[str, list[str]]:
    """Compile the artifact and a test program with host gcc, run it, return its lines keyed by first words."""
    write_files(artifact, folder)
    header = artifact.metadata["header"]
    prefix = artifact.metadata["macro_prefix"]
    program = folder / "test_program.c"
    program.write_text(TEST_PROGRAM.format(header=header, body=program_body(artifact), P=prefix, p=prefix.lower()))
    objects = [compile_object(folder / artifact.metadata["source"], std), compile_object(program, std)]
    executable = folder / "test_program"
    subprocess.run([GCC, *map(str, objects), "-o", str(executable)], check=True)
    result = subprocess.run([str(executable)], capture_output=True, text=True, check=True)
    printed: dict[str, list[str]] = {}
    for line in result.stdout.splitlines():
        words = line.split()
        if words[0] in ("array", "shape"):
            printed[f"{words[0]} {words[1]}"] = words[2:]
        else:
            printed[words[0]] = words[1:]
    return printed


# --------------------------------------------------------------------------- the real models


@pytest.fixture(scope="module", params=sorted(MODELS))
def real(request):
    """(key, onnx proto, artifact lowered with the fake backend, alignment 256 and a section)."""
    key = request.param
    proto = onnx.load(MODELS[key])
    artifact = lower(ir.load(MODELS[key]), make_target(), model_name=MODELS[key].stem)
    return key, proto, artifact


@needs_gcc
@pytest.mark.parametrize("std", ["c99", "c11"])
def test_generated_c_runs_and_holds_the_model_values(real, tmp_path, std):
    key, proto, artifact = real
    printed = build_and_run(artifact, tmp_path, std)
    references = reference_tensors(proto)
    by_role: dict[str, dict[str, dict]] = {}
    for array in artifact.metadata["arrays"]:
        by_role.setdefault(array["role"], {})[array["onnx_name"]] = array
    assert set(by_role["weight"]) | set(by_role["bias"]) == set(references)
    for onnx_name, reference in references.items():
        role = "bias" if reference.values.dtype == np.int32 else "weight"
        name = by_role[role][onnx_name]["name"]
        assert printed[f"array {name}"] == [str(checksum(reference.values)), str(reference.values.size)], onnx_name
        assert printed[f"array {name}_scale"] == [str(checksum(reference.scale)), str(reference.scale.size)], onnx_name
        assert printed[f"array {name}_zero_point"] == [str(checksum(reference.zero_point)), str(reference.zero_point.size)]
        assert printed[f"shape {name}"] == [*map(str, reference.values.shape), "axis", str(reference.axis)]
    for kind, index in (("input", 0), ("output", 0)):
        scale, zero_point, shape = IO_QUANTIZATION[key][kind]
        assert printed[f"{kind.upper()}_{index}_shape"] == [str(d) for d in shape]
        assert printed[f"{kind.upper()}_{index}_quant"] == [str(float_bits(scale)), str(zero_point), "1"]
        assert printed[f"{kind.upper()}_{index}_elements"] == [str(int(np.prod(shape))), "1"]
    input_name = proto.graph.input[0].name
    assert printed["INPUT_0_name"] == [input_name, "int8"]
    assert printed["model_data_len"] == [str(len(FAKE_BYTES))] * 2
    assert printed["model_data_crc32"] == [str(zlib.crc32(FAKE_BYTES))]
    assert printed["model_data_misalignment"] == ["0"]
    assert printed["const_data_bytes"] == [str(artifact.flash_bytes)]
    assert printed["io_counts"] == ["1", "1"]


def test_flash_bytes_is_the_sum_of_the_const_data(real):
    key, proto, artifact = real
    expected = len(FAKE_BYTES) + 4  # the embedded bytes and its unsigned int length
    for reference in reference_tensors(proto).values():
        expected += reference.values.nbytes + reference.scale.size * 4 + reference.zero_point.size * reference.values.itemsize
    assert artifact.flash_bytes == expected
    assert sum(array["bytes"] for array in artifact.metadata["arrays"]) == expected
    # KWS: 22604 int8/int32 parameters (the model card's count) contribute their bytes.
    if key == "kws":
        assert sum(r.values.size for r in reference_tensors(proto).values()) == 22604


@needs_gcc
def test_object_file_has_the_target_section_and_alignment(real, tmp_path):
    key, proto, artifact = real
    write_files(artifact, tmp_path)
    obj = compile_object(tmp_path / artifact.metadata["source"], "c99")
    sections = subprocess.run(["readelf", "-S", "-W", str(obj)], capture_output=True, text=True, check=True).stdout
    row = next(line for line in sections.splitlines() if ".rodata.edgecomp_model" in line)
    fields = row.split("]", 1)[1].split()
    size, alignment = int(fields[4], 16), int(fields[-1])
    assert alignment >= 256
    arrays = len(artifact.metadata["arrays"])
    # All const data lives in the section; the compiler may only add alignment padding.
    assert artifact.flash_bytes <= size <= artifact.flash_bytes + 32 * arrays + 256


@needs_gcc
def test_no_section_attribute_without_a_target_section(tmp_path):
    artifact = lower(ir.load(MODELS["kws"]), make_target(section=None, alignment=16), model_name="kws")
    source = artifact.files["kws.c"].decode()
    assert "section(" not in source
    assert "KWS_MODEL_DATA_SECTION" not in artifact.files["kws.h"].decode()
    write_files(artifact, tmp_path)
    obj = compile_object(tmp_path / "kws.c", "c11")
    sections = subprocess.run(["readelf", "-S", "-W", str(obj)], capture_output=True, text=True, check=True).stdout
    assert "edgecomp_model" not in sections


@pytest.mark.skipif(ARM_GCC is None, reason="arm-none-eabi-gcc not installed")
@pytest.mark.parametrize("std", ["c99", "c11"])
def test_cross_compiles_for_cortex_m4(tmp_path, std):
    cortex_m4 = get_target("cortex-m4")
    target = make_target(section=cortex_m4.c_array.section, alignment=cortex_m4.c_array.alignment)
    artifact = lower(ir.load(MODELS["kws"]), target, model_name="kws")
    write_files(artifact, tmp_path)
    obj = compile_object(tmp_path / "kws.c", std, ARM_GCC, cortex_m4.toolchain.cflags)
    readelf = shutil.which("arm-none-eabi-readelf") or "readelf"
    sections = subprocess.run([readelf, "-S", "-W", str(obj)], capture_output=True, text=True, check=True).stdout
    assert ".rodata.edgecomp_model" in sections
    symbols = subprocess.run([readelf, "-s", "-W", str(obj)], capture_output=True, text=True, check=True).stdout
    row = next(line for line in symbols.splitlines() if line.split()[-1:] == ["kws_model_data"])
    offset, size = int(row.split()[1], 16), int(row.split()[2])
    assert size == len(FAKE_BYTES)
    assert offset % cortex_m4.c_array.alignment == 0


@needs_gcc
def test_header_compiles_on_its_own_and_twice(tmp_path):
    artifact = lower(ir.load(MODELS["ad"]), make_target(), model_name="ad01_int8_qdq")
    write_files(artifact, tmp_path)
    source = tmp_path / "twice.c"
    source.write_text('#include "ad01_int8_qdq.h"\n#include "ad01_int8_qdq.h"\nint use(void) { return (int)AD01_INT8_QDQ_MODEL_DATA_LEN; }\n')
    compile_object(source, "c99")


def test_two_lowerings_are_byte_identical():
    target = make_target()
    first = lower(ir.load(MODELS["kws"]), target, model_name="kws")
    second = lower(ir.load(MODELS["kws"]), target, model_name="kws")
    assert first.files == second.files
    assert sorted(first.files) == ["kws.c", "kws.h"]
    assert first.metadata == second.metadata


def test_header_says_who_made_it_and_has_no_timestamp(real):
    key, proto, artifact = real
    header = artifact.files[artifact.metadata["header"]].decode()
    from edgecomp import __version__

    assert f"Generated by edgecomp {__version__} (c-array backend) from model {MODELS[key].stem!r}" in header
    assert "#include <stdint.h>" in header and "#include <stddef.h>" in header
    assert not re.search(r"\b(19|20)\d\d-\d\d-\d\d\b|\d\d:\d\d:\d\d", header)
    assert "row-major (C order" in header


def test_metadata_lists_arrays_and_the_embedded_file(real):
    key, proto, artifact = real
    embedded = artifact.metadata["embedded"]
    assert embedded["backend"] == "fake-embed"
    assert embedded["file"] == f"{MODELS[key].stem}.bin"
    assert embedded["bytes"] == len(FAKE_BYTES)
    assert embedded["alignment"] == 256
    assert embedded["section"] == ".rodata.edgecomp_model"
    model_row = next(a for a in artifact.metadata["arrays"] if a["role"] == "embedded_model")
    assert (model_row["dtype"], model_row["elements"], model_row["bytes"]) == ("uint8", len(FAKE_BYTES), len(FAKE_BYTES))
    for row in artifact.metadata["arrays"]:
        itemsize = {"int8": 1, "uint8": 1, "int16": 2, "uint16": 2, "int32": 4, "float32": 4, "uint32": 4}[row["dtype"]]
        assert row["bytes"] == row["elements"] * itemsize


def test_runner_is_the_embedded_artifacts_runner():
    artifact = lower(ir.load(MODELS["ad"]), make_target(), model_name="ad")
    assert artifact.runner({"input_1": np.zeros((1, 640), np.int8)}) is FAKE_OUTPUT


# --------------------------------------------------------------------------- contract details


def test_legalize_returns_the_embedded_backends_passes():
    fake = FakeEmbedBackend()
    backend = CArrayBackend(get_backend=make_lookup(fake))
    assert backend.legalize(make_target()) == FakeEmbedBackend.passes


def test_a_target_embedding_c_array_itself_is_a_target_error():
    backend = CArrayBackend(get_backend=make_lookup(FakeEmbedBackend()))
    with pytest.raises(TargetError, match="c_array.embed_backend"):
        backend.legalize(make_target(embed_backend="c-array"))
    with pytest.raises(TargetError, match="key 'c_array.embed_backend': unknown backend 'no-such-backend'"):
        backend.support(ir.load(MODELS["kws"]), make_target(embed_backend="no-such-backend"))


def test_embedded_file_choice():
    def artifact(*names):
        return Artifact("x", {name: b"1" for name in names}, 1)

    assert select_embedded_file(artifact("m.onnx", "m.ort"), "m") == "m.ort"
    assert select_embedded_file(artifact("m.onnx", "other.onnx"), "m") == "m.onnx"
    assert select_embedded_file(artifact("m.tflite", "m.onnx"), "m") == "m.tflite"
    assert select_embedded_file(artifact("weights.bin"), "m") == "weights.bin"
    with pytest.raises(PluginError, match="cannot tell"):
        select_embedded_file(artifact("a.bin", "b.bin"), "m")


def test_identifiers_are_sanitized_unique_and_bounded():
    assert emit.c_identifier("functional_1/conv2d/Conv2D") == "functional_1_conv2d_conv2d"
    assert emit.identifier_prefix("mnist-8") == "mnist_8"
    assert emit.identifier_prefix("8bit") == "m_8bit"
    long_name = "functional_1/batch_normalization_7/FusedBatchNormV3;functional_1/depthwise_conv2d_3/depthwise"
    short = emit.shortened_name_body(long_name)
    assert len(short) <= emit.MAX_NAME_BODY and short.startswith("functional_1_batch_normalization")
    assert short != emit.shortened_name_body(long_name + ";x")
    names = emit.NameAllocator()
    names.reserve("m_model_data")
    assert names.allocate("m_a", ("_scale",)) == "m_a"
    assert names.allocate("m_A", ("_scale",)) == "m_A_2"  # case-insensitive clash (macros are upper case)
    assert names.allocate("m_a_scale", ("_scale",)) == "m_a_scale_2"  # would clash with m_a's scale array
    assert names.allocate("m_model_data", ()) == "m_model_data_2"


def test_literals():
    assert emit.float_literal(0.5847029089927673) == "5.847029e-01f"
    assert emit.integer_literals(np.array([-(2**31), 5], np.int32)) == ["(-2147483647 - 1)", "5"]
    assert emit.string_literal('a"b\\c??/é') == '"a\\"b\\\\c\\?\\?/\\303\\251"'
    assert "*/" not in emit.comment_text("x */ y") and "??" not in emit.comment_text("??/")
    with pytest.raises(ValueError):
        emit.float_literal(float("inf"))


# --------------------------------------------------------------------------- a small synthetic QDQ model


def synthetic_qdq_model() -> onnx.ModelProto:
    """Float I/O; Gemm (transB=1) with per-channel int8 weight and int32 bias; a uint8 MatMul weight.

    Names are chosen to clash after sanitizing (``fc/weight`` and ``fc_weight``) and to need escaping
    (``*/``, a trigraph, non-ASCII) in comments and strings; the bias holds the int32 minimum; one
    float initializer is not quantized.
    """
    rng = np.random.default_rng(3)
    weight = rng.integers(-127, 128, (3, 4), dtype=np.int8)
    weight_scale = np.array([0.02, 0.03, 0.05], np.float32)
    bias = np.array([-(2**31), 17, 2**31 - 1], np.int32)
    bias_scale = (weight_scale * np.float32(0.05)).astype(np.float32)
    second = rng.integers(0, 256, (3, 2), dtype=np.uint8)
    init = [
        numpy_helper.from_array(weight, "fc/weight"),
        numpy_helper.from_array(weight_scale, "w_scale"),
        numpy_helper.from_array(np.zeros(3, np.int8), "w_zp"),
        numpy_helper.from_array(bias, "fc/bias */ ??/ é"),
        numpy_helper.from_array(bias_scale, "b_scale"),
        numpy_helper.from_array(np.zeros(3, np.int32), "b_zp"),
        numpy_helper.from_array(second, "fc_weight"),
        numpy_helper.from_array(np.array(0.01, np.float32), "u_scale"),
        numpy_helper.from_array(np.array(128, np.uint8), "u_zp"),
        numpy_helper.from_array(np.array(0.05, np.float32), "in_scale"),
        numpy_helper.from_array(np.array(3, np.int8), "in_zp"),
        numpy_helper.from_array(np.array(0.1, np.float32), "out_scale"),
        numpy_helper.from_array(np.array(-5, np.int8), "out_zp"),
        numpy_helper.from_array(np.array([0.5, -0.5], np.float32), "float_offset"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "in_scale", "in_zp"], ["x_q"], name="quantize_input"),
        helper.make_node("DequantizeLinear", ["x_q", "in_scale", "in_zp"], ["x_dq"], name="dequantize_input"),
        helper.make_node("DequantizeLinear", ["fc/weight", "w_scale", "w_zp"], ["w_dq"], name="dq_weight", axis=0),
        helper.make_node("DequantizeLinear", ["fc/bias */ ??/ é", "b_scale", "b_zp"], ["b_dq"], name="dq_bias", axis=0),
        helper.make_node("Gemm", ["x_dq", "w_dq", "b_dq"], ["y"], name="fc", transB=1),
        helper.make_node("QuantizeLinear", ["y", "out_scale", "out_zp"], ["y_q"], name="quantize_output"),
        helper.make_node("DequantizeLinear", ["y_q", "out_scale", "out_zp"], ["y_dq"], name="dequantize_output"),
        helper.make_node("DequantizeLinear", ["fc_weight", "u_scale", "u_zp"], ["u_dq"], name="dq_second"),
        helper.make_node("MatMul", ["y_dq", "u_dq"], ["z"], name="second"),
        helper.make_node("Add", ["z", "float_offset"], ["out"], name="offset"),
    ]
    graph = helper.make_graph(
        nodes, "synthetic", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y_dq", TensorProto.FLOAT, ["batch", 3]),
         helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", 2])], initializer=init,
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="edgecomp-tests")
    onnx.checker.check_model(proto, full_check=True)
    return proto


@needs_gcc
def test_synthetic_model_float_io_uint8_and_name_clashes(tmp_path):
    proto = synthetic_qdq_model()
    artifact = lower(ir.serde.deserialize_model(proto), make_target(alignment=64), model_name="synthetic-1")
    assert sorted(artifact.files) == ["synthetic-1.c", "synthetic-1.h"]
    header = artifact.files["synthetic-1.h"].decode()
    assert "Gemm B [N, K] (transB=1)" in header
    names = {row["onnx_name"]: row["name"] for row in artifact.metadata["arrays"] if row["role"] in ("weight", "bias")}
    assert names["fc/weight"] == "synthetic_1_fc_weight" and names["fc_weight"] == "synthetic_1_fc_weight_2"
    assert artifact.metadata["not_emitted"][0]["onnx_name"] == "float_offset"
    printed = build_and_run(artifact, tmp_path, "c99")
    for onnx_name, reference in reference_tensors(proto).items():
        name = names[onnx_name]
        assert printed[f"array {name}"][0] == str(checksum(reference.values))
        assert printed[f"array {name}_scale"][0] == str(checksum(reference.scale))
        assert printed[f"array {name}_zero_point"][0] == str(checksum(reference.zero_point))
    # Float input: the QuantizeLinear after it; float outputs: the DequantizeLinear before them (or none).
    assert printed["INPUT_0_quant"] == [str(float_bits(0.05)), "3", "1"]
    assert printed["INPUT_0_elements"] == ["4", "4"]  # 4 floats of sizeof(float) 4
    assert printed["OUTPUT_0_quant"] == [str(float_bits(0.1)), "-5", "1"]
    assert printed["OUTPUT_1_quant"] == ["none", "none", "0"]  # MatMul + float Add: not quantized
    assert printed["OUTPUT_1_shape"] == ["1", "2"]  # dynamic batch fixed to 1
    assert printed["model_data_misalignment"] == ["0"]


def test_synthetic_output_without_quantization_has_no_scale_macro():
    artifact = lower(ir.serde.deserialize_model(synthetic_qdq_model()), make_target(), model_name="s")
    header = artifact.files["s.h"].decode()
    assert "#define S_OUTPUT_1_QUANTIZED 0" in re.sub(r" +", " ", header)
    assert "S_OUTPUT_1_SCALE" not in header


# --------------------------------------------------------------------------- unsupported input


def _tiny_model(initializers, nodes, inputs, outputs) -> ir.Model:
    graph = helper.make_graph(nodes, "tiny", inputs, outputs, initializer=initializers)
    return ir.serde.deserialize_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]))


def test_support_reports_float64_initializers_and_int4_weights():
    model = _tiny_model(
        [numpy_helper.from_array(np.ones(2, np.float64), "offset64"),
         helper.make_tensor("w4", TensorProto.INT4, [2], [1, -2]),
         numpy_helper.from_array(np.array(0.5, np.float32), "s")],
        [helper.make_node("Add", ["x", "offset64"], ["y"], name="add64"),
         helper.make_node("DequantizeLinear", ["w4", "s"], ["w"], name="dq4"),
         helper.make_node("Cast", ["w"], ["w64"], name="cast", to=TensorProto.DOUBLE),
         helper.make_node("Add", ["y", "w64"], ["z"], name="add")],
        [helper.make_tensor_value_info("x", TensorProto.DOUBLE, [2])],
        [helper.make_tensor_value_info("z", TensorProto.DOUBLE, [2])],
    )
    backend = CArrayBackend(get_backend=make_lookup(FakeEmbedBackend()))
    report = backend.support(model, make_target())
    assert not report.ok
    entries = {(u.node, u.op_type): u.reason for u in report.unsupported}
    assert "int4" in entries[("dq4", "DequantizeLinear")].lower()
    assert "float64" in entries[("add64", "Add")] and "offset64" in entries[("add64", "Add")]
    assert ("x", "graph input") in entries and ("z", "graph output") in entries
    fake = FakeEmbedBackend()
    with pytest.raises(UnsupportedError, match="dq4"):
        lower(model, make_target(), fake=fake)
    assert fake.lowered == 0  # refused before any work


def test_support_is_clean_for_the_real_models(real):
    key, proto, artifact = real
    backend = CArrayBackend(get_backend=make_lookup(FakeEmbedBackend()))
    assert backend.support(ir.load(MODELS[key]), make_target()).ok


# --------------------------------------------------------------------------- the real onnxruntime backend


def _onnxruntime_backend():
    try:
        from edgecomp_onnxruntime.backend import OnnxRuntimeBackend
    except ImportError:
        return None
    return OnnxRuntimeBackend()


@pytest.mark.skipif(_onnxruntime_backend() is None, reason="onnxruntime backend plugin not installed")
@needs_gcc
def test_embeds_the_onnxruntime_ort_file(tmp_path):
    onnxruntime_backend = _onnxruntime_backend()
    cortex_m4 = dataclasses.replace(get_target("cortex-m4"), c_array=CArrayOptions(".rodata.edgecomp_model", 16, "onnxruntime"))
    lookup = make_lookup(onnxruntime_backend)
    backend = CArrayBackend(get_backend=lookup)
    assert backend.support(ir.load(MODELS["kws"]), cortex_m4).ok  # onnxruntime's "needs an OS" is not merged
    options = LowerOptions(quantize="none", model_name="kws", get_backend=lookup)
    artifact = backend.lower(ir.load(MODELS["kws"]), cortex_m4, options)
    direct = onnxruntime_backend.lower(ir.load(MODELS["kws"]), cortex_m4, options)
    assert artifact.metadata["embedded"]["file"] == "kws.ort"
    printed = build_and_run(artifact, tmp_path, "c11")
    if direct.metadata.get("ort_format_reproducible"):
        assert printed["model_data_crc32"] == [str(zlib.crc32(direct.files["kws.ort"]))]
    assert printed["model_data_len"] == [str(artifact.metadata["embedded"]["bytes"])] * 2
    assert printed["model_data_misalignment"] == ["0"]
    # --eval runs the embedded artifact: the MLPerf sample is class 5 "on" with output 127.
    sample = np.load(MLPERF / "kws" / "mlperf_kws_input_data_int8_1x49x10x1.npy")
    output = artifact.runner({"input_1": sample})[0]
    assert int(np.argmax(output)) == 5 and int(output[0, 5]) == 127
