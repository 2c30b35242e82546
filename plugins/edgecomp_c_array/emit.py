"""C text for the ``c-array`` backend: identifiers, literals, and the ``.h``/``.c`` pair.

Every function here is a pure function of its arguments (no clock, no randomness, no dict-order
surprises), so equal inputs give byte-identical files. Large arrays are formatted with one
``str``/lookup per element and one ``join`` per line of :data:`VALUES_PER_LINE` values (about 0.1 s
for a million values).

The generated C is C99 (``-std=c99 -pedantic`` clean) and C11/C++ friendly:

- ``EDGECOMP_ALIGNAS(n)`` expands to ``_Alignas(n)`` under C11, else ``__attribute__((aligned(n)))``
  (GCC, Clang, and compilers that imitate them such as armclang), else ``__declspec(align(n))`` (MSVC);
  any other compiler stops with ``#error`` unless the build defines ``EDGECOMP_ALIGNAS`` itself.
- the linker section (``target.c_array.section``) is ``__attribute__((section("...")))`` under GCC/Clang
  and is left out elsewhere (place the arrays with that toolchain's own pragma or linker script).
- string and comment text from ONNX names is escaped: no ``*/``, no trigraphs, no non-ASCII bytes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from typing import Sequence

import numpy as np

from edgecomp_c_array.qdq import INTEGER_CTYPES, IOTensor, QuantizedTensor

VALUES_PER_LINE = 16
MAX_NAME_BODY = 48  # longer sanitized ONNX names are cut and given a hash suffix
INDENT = "    "

_HEX_BYTES = [f"0x{value:02x}" for value in range(256)]
_INT32_MIN = -(2**31)


# --------------------------------------------------------------------------- identifiers and literals


def c_identifier(text: str) -> str:
    """``text`` as a lowercase C identifier fragment: runs of other characters become one ``_``.

    ``"functional_1/conv2d/Conv2D"`` -> ``"functional_1_conv2d_conv2d"``; empty input gives ``"tensor"``.
    """
    body = re.sub(r"[^0-9A-Za-z]+", "_", text).strip("_").lower()
    return body or "tensor"


def identifier_prefix(model_name: str) -> str:
    """The identifier prefix for a model name: sanitized, never starting with a digit (``mnist-8`` -> ``mnist_8``)."""
    prefix = c_identifier(model_name) if model_name else "model"
    return f"m_{prefix}" if prefix[0].isdigit() else prefix


def shortened_name_body(onnx_name: str) -> str:
    """A C identifier fragment for an ONNX name, at most :data:`MAX_NAME_BODY` characters.

    Longer sanitized names keep their first characters and end in ``_`` plus the first 8 hex digits
    of the SHA-1 of the full ONNX name, so the result is deterministic and distinct names stay distinct
    (TFLite-converted models have names of 200+ characters made of ``;``-joined op names).
    """
    body = c_identifier(onnx_name)
    if len(body) <= MAX_NAME_BODY:
        return body
    digest = hashlib.sha1(onnx_name.encode("utf-8")).hexdigest()[:8]
    return f"{body[:MAX_NAME_BODY - 9].rstrip('_')}_{digest}"


class NameAllocator:
    """Hands out unique C names; two names clash when they are equal ignoring case.

    Array names are lowercase and macros uppercase, so comparing case-folded names keeps both
    unique. :meth:`allocate` checks a base name together with every suffix that will be derived
    from it (``_scale``, ``_ZERO_POINT`` ...), and appends ``_2``, ``_3`` ... until all are free.
    """

    def __init__(self) -> None:
        self._taken: set[str] = set()

    def reserve(self, *names: str) -> None:
        """Mark ``names`` as used (fixed names such as ``<prefix>_model_data``)."""
        self._taken.update(name.lower() for name in names)

    def allocate(self, base: str, suffixes: Sequence[str]) -> str:
        """The first of ``base``, ``base_2``, ... whose derived names ``base + suffix`` are all free."""
        candidate, counter = base, 1
        while any((candidate + suffix).lower() in self._taken for suffix in ("", *suffixes)):
            counter += 1
            candidate = f"{base}_{counter}"
        self.reserve(candidate, *(candidate + suffix for suffix in suffixes))
        return candidate


def integer_literals(values: np.ndarray) -> list[str]:
    """Decimal C literals of an integer array, flattened in C order.

    The int32 minimum is written ``(-2147483647 - 1)``: ``-2147483648`` would be the negation of a
    ``long`` literal.
    """
    flat = np.asarray(values).reshape(-1)
    tokens = list(map(str, flat.tolist()))
    if flat.dtype == np.int32 and flat.size and int(flat.min()) == _INT32_MIN:
        tokens = ["(-2147483647 - 1)" if token == "-2147483648" else token for token in tokens]
    return tokens


def float_literal(value: float) -> str:
    """The shortest decimal that reads back as the same float32, with an ``f`` suffix (``5.847029e-01f``).

    Raises:
        ValueError: ``value`` is not finite (C has no literal for it).
    """
    single = np.float32(value)
    if not np.isfinite(single):
        raise ValueError(f"{value!r} is not finite")
    return np.format_float_scientific(single, unique=True, trim="0") + "f"


def byte_literals(data: bytes) -> list[str]:
    """``0x..`` literals of every byte of ``data``."""
    return list(map(_HEX_BYTES.__getitem__, data))


def wrap_values(tokens: Sequence[str]) -> str:
    """Array initializer body: :data:`VALUES_PER_LINE` tokens per indented line, comma separated."""
    rows = [", ".join(tokens[start:start + VALUES_PER_LINE]) for start in range(0, len(tokens), VALUES_PER_LINE)]
    return INDENT + f",\n{INDENT}".join(rows)


def string_literal(text: str) -> str:
    """``text`` as a C string literal: UTF-8 bytes, with quotes, backslashes, ``?`` and non-printables escaped."""
    parts = []
    for byte in text.encode("utf-8"):
        char = chr(byte)
        if char in '"\\?':
            parts.append("\\" + char)
        elif 0x20 <= byte < 0x7F:
            parts.append(char)
        else:
            parts.append(f"\\{byte:03o}")
    return '"' + "".join(parts) + '"'


def comment_text(text: str) -> str:
    """``text`` made safe inside a ``/* */`` comment: ASCII only, no ``*/``, ``/*``, trigraph or line break."""
    safe = text.encode("ascii", "backslashreplace").decode("ascii")
    safe = re.sub(r"[\x00-\x1f\x7f]", " ", safe)
    safe = safe.replace("*/", "* /").replace("/*", "/ *")
    while "??" in safe:
        safe = safe.replace("??", "? ?")
    return safe


# --------------------------------------------------------------------------- the file model


@dataclasses.dataclass(frozen=True)
class Macro:
    """``#define name value`` in the header."""

    name: str
    value: str


@dataclasses.dataclass(frozen=True)
class ArrayDefinition:
    """One ``const`` array: declared ``extern`` in the header, defined in the source.

    Attributes:
        name: C identifier.
        ctype: element type (``int8_t``, ``int32_t``, ``float``, ``uint8_t``).
        tokens: the element literals, C order.
        length_macro: the header macro holding the element count (used as the array bound).
        nbytes: bytes the array occupies (elements * element size).
        role: for the report: ``weight``, ``bias``, ``scale``, ``zero_point``, ``embedded_model``.
        onnx_name: the ONNX initializer it came from, or None.
        dtype: numpy-style element dtype name for the report.
        alignment: ``EDGECOMP_ALIGNAS(alignment)`` on the definition, or None for natural alignment.
    """

    name: str
    ctype: str
    tokens: Sequence[str]
    length_macro: str
    nbytes: int
    role: str
    onnx_name: str | None
    dtype: str
    alignment: int | None = None

    @property
    def elements(self) -> int:
        """Number of elements."""
        return len(self.tokens)


@dataclasses.dataclass(frozen=True)
class ScalarDefinition:
    """One ``const`` scalar, declared ``extern`` in the header and defined in the source."""

    name: str
    ctype: str
    literal: str
    nbytes: int
    role: str


@dataclasses.dataclass(frozen=True)
class Block:
    """A group of header macros and definitions under one comment (one tensor, the I/O, the model)."""

    comment: tuple[str, ...]
    macros: tuple[Macro, ...] = ()
    arrays: tuple[ArrayDefinition, ...] = ()
    scalars: tuple[ScalarDefinition, ...] = ()


@dataclasses.dataclass(frozen=True)
class CFiles:
    """Everything needed to write ``<file_stem>.h`` and ``<file_stem>.c``.

    Attributes:
        file_stem: file name without extension.
        macro_prefix: uppercase prefix of every macro (``KWS``).
        banner: comment lines at the top of both files (tool, version, model).
        documentation: comment lines in the header explaining the layout.
        section: linker section of every array, or None.
        blocks: in emission order.
    """

    file_stem: str
    macro_prefix: str
    banner: tuple[str, ...]
    documentation: tuple[str, ...]
    section: str | None
    blocks: tuple[Block, ...]

    @property
    def arrays(self) -> list[ArrayDefinition]:
        """Every array in emission order."""
        return [array for block in self.blocks for array in block.arrays]

    @property
    def scalars(self) -> list[ScalarDefinition]:
        """Every scalar in emission order."""
        return [scalar for block in self.blocks for scalar in block.scalars]

    @property
    def const_bytes(self) -> int:
        """Bytes of all const data defined in the source (arrays + scalars, padding excluded)."""
        return sum(a.nbytes for a in self.arrays) + sum(s.nbytes for s in self.scalars)


def _comment_block(lines: Sequence[str], indent: str = "") -> str:
    if len(lines) == 1:
        return f"{indent}/* {comment_text(lines[0])} */\n"
    body = "".join(f"{indent} *{' ' if line else ''}{comment_text(line)}\n" for line in lines)
    return f"{indent}/*\n{body}{indent} */\n"


def render_header(files: CFiles) -> str:
    """The header: include guard, ``<stdint.h>``/``<stddef.h>``, macros and ``extern`` declarations."""
    guard = f"{files.macro_prefix}_H"
    out = [_comment_block(files.banner), "\n", f"#ifndef {guard}\n#define {guard}\n\n",
           "#include <stddef.h>\n#include <stdint.h>\n\n",
           "#ifdef __cplusplus\nextern \"C\" {\n#endif\n\n",
           _comment_block(files.documentation), "\n"]
    for block in files.blocks:
        out.append(_comment_block(block.comment))
        width = max((len(m.name) for m in block.macros), default=0)
        out.extend(f"#define {m.name.ljust(width)} {m.value}\n" for m in block.macros)
        out.extend(f"extern const {a.ctype} {a.name}[{a.length_macro}];\n" for a in block.arrays)
        out.extend(f"extern const {s.ctype} {s.name};\n" for s in block.scalars)
        out.append("\n")
    out.append(f"#ifdef __cplusplus\n}}\n#endif\n\n#endif /* {guard} */\n")
    return "".join(out)


_ALIGNAS_DEFINITION = """\
/* EDGECOMP_ALIGNAS(n): align an object to n bytes, in C99 as in C11. Define it on the command line
 * for a compiler not listed here. */
#ifndef EDGECOMP_ALIGNAS
#if defined(__STDC_VERSION__) && __STDC_VERSION__ >= 201112L
#define EDGECOMP_ALIGNAS(n) _Alignas(n)
#elif defined(__GNUC__) || defined(__clang__)
#define EDGECOMP_ALIGNAS(n) __attribute__((aligned(n)))
#elif defined(_MSC_VER)
#define EDGECOMP_ALIGNAS(n) __declspec(align(n))
#else
#error "edgecomp: define EDGECOMP_ALIGNAS(n) for this compiler (it must align an object to n bytes)"
#endif
#endif

"""


def _section_definition(macro: str, section: str | None) -> str:
    if section is None:
        return f"/* No linker section requested by the target. */\n#define {macro}\n\n"
    return (
        f"/* {macro}: the linker section of every array in this file (target c_array.section). */\n"
        "#if defined(__GNUC__) || defined(__clang__)\n"
        f"#define {macro} __attribute__((section({string_literal(section)})))\n"
        "#else\n"
        f"#define {macro} /* place the arrays in {comment_text(section)} with this toolchain's linker script */\n"
        "#endif\n\n"
    )


def render_source(files: CFiles) -> str:
    """The source: includes its header and defines every array and scalar."""
    section_macro = f"{files.macro_prefix}_SECTION"
    out = [_comment_block(files.banner), "\n", f'#include "{files.file_stem}.h"\n\n',
           _ALIGNAS_DEFINITION, _section_definition(section_macro, files.section)]
    for block in files.blocks:
        if not block.arrays and not block.scalars:
            continue
        out.append(_comment_block(block.comment[:1]))
        for array in block.arrays:
            aligned = f"EDGECOMP_ALIGNAS({array.alignment}) " if array.alignment else ""
            out.append(f"{section_macro} {aligned}const {array.ctype} {array.name}[{array.length_macro}] = {{\n")
            out.append(wrap_values(array.tokens))
            out.append("\n};\n")
        for scalar in block.scalars:
            out.append(f"{section_macro} const {scalar.ctype} {scalar.name} = {scalar.literal};\n")
        out.append("\n")
    return "".join(out).rstrip("\n") + "\n"


# --------------------------------------------------------------------------- building the model's blocks


@dataclasses.dataclass(frozen=True)
class EmbeddedFile:
    """The other backend's file embedded as one byte array.

    Attributes:
        backend: the backend that produced it.
        file_name: its file name in that backend's artifact.
        data: its bytes.
        alignment: byte alignment of the array (target ``c_array.alignment``).
    """

    backend: str
    file_name: str
    data: bytes
    alignment: int


_TENSOR_SUFFIXES = ("_scale", "_zero_point", "_RANK", "_SHAPE", "_ELEMENTS", "_QUANT_AXIS", "_QUANT_COUNT")


def _shape_macros(prefix: str, shape: Sequence[int] | None) -> list[Macro]:
    if shape is None:
        return []
    macros = [Macro(f"{prefix}_RANK", str(len(shape)))]
    if shape:
        macros.append(Macro(f"{prefix}_SHAPE", "{" + ", ".join(str(d) for d in shape) + "}"))
    macros.append(Macro(f"{prefix}_ELEMENTS", str(int(np.prod(shape, dtype=np.int64)))))
    return macros


def _tensor_block(tensor: QuantizedTensor, name: str) -> Block:
    macro = name.upper()
    ctype = INTEGER_CTYPES[tensor.dtype]
    dtype = str(tensor.values.dtype)
    shape = list(tensor.values.shape)
    granularity = "per-tensor" if tensor.axis is None else f"per-channel along axis {tensor.axis}"
    comment = (
        f"{tensor.role} {tensor.onnx_name}",
        f"ONNX initializer {tensor.onnx_name!r}: {dtype} {shape}, {tensor.layout}, row-major (C order);",
        f"{granularity}, {tensor.quant_count} scale(s); dequantized by node {tensor.dequantize_node!r}.",
    )
    macros = _shape_macros(macro, tensor.values.shape)
    macros += [Macro(f"{macro}_QUANT_AXIS", str(-1 if tensor.axis is None else tensor.axis)),
               Macro(f"{macro}_QUANT_COUNT", str(tensor.quant_count))]
    arrays = (
        ArrayDefinition(name, ctype, integer_literals(tensor.values), f"{macro}_ELEMENTS",
                        int(tensor.values.nbytes), tensor.role, tensor.onnx_name, dtype),
        ArrayDefinition(f"{name}_scale", "float", [float_literal(s) for s in tensor.scale.tolist()],
                        f"{macro}_QUANT_COUNT", int(tensor.scale.nbytes), "scale", tensor.onnx_name, "float32"),
        ArrayDefinition(f"{name}_zero_point", ctype, integer_literals(tensor.zero_point), f"{macro}_QUANT_COUNT",
                        int(tensor.zero_point.nbytes), "zero_point", tensor.onnx_name, dtype),
    )
    return Block(comment, tuple(macros), arrays)


def _io_block(kind: str, index: int, tensor: IOTensor, macro_prefix: str) -> Block:
    macro = f"{macro_prefix}_{kind.upper()}_{index}"
    comment = [f"graph {kind} {index}: {tensor.name!r}, {tensor.dtype}"]
    if tensor.shape is None:
        comment.append("shape not given by the model")
    for dim_index, symbol in tensor.dynamic_dims:
        comment.append(f"dimension {dim_index} is dynamic ({symbol}) in the model; fixed to 1 here")
    macros = [Macro(f"{macro}_NAME", string_literal(tensor.name)), Macro(f"{macro}_DTYPE", string_literal(tensor.dtype))]
    if tensor.ctype is not None:
        macros.append(Macro(f"{macro}_CTYPE", tensor.ctype))
    macros += _shape_macros(macro, tensor.shape)
    quantized = tensor.scale is not None
    macros.append(Macro(f"{macro}_QUANTIZED", "1" if quantized else "0"))
    if quantized:
        comment.append(f"quantization read from node {tensor.quantization_node!r}: real = (q - ZERO_POINT) * SCALE")
        macros += [Macro(f"{macro}_SCALE", float_literal(tensor.scale)), Macro(f"{macro}_ZERO_POINT", str(tensor.zero_point))]
    return Block(tuple(comment), tuple(macros))


def _documentation(macro_prefix: str, prefix: str, embedded: EmbeddedFile, section: str | None, backend_rule: str) -> tuple[str, ...]:
    p = macro_prefix
    return (
        "How to read these arrays",
        "",
        "Layout: every weight/bias array is one ONNX initializer exactly as stored in the model, in ONNX",
        "layout, row-major (C order, last dimension fastest): Conv weight [C_out, C_in/group, kH, kW],",
        "ConvTranspose weight [C_in, C_out/group, kH, kW], MatMul B [K, N], Gemm B [K, N] ([N, K] when",
        "transB=1), biases [C_out]. Models converted from TFLite keep NHWC activations, but their weights",
        "are in this ONNX layout. Each array's comment names the operator it feeds.",
        "",
        "Quantization (ONNX DequantizeLinear; TFLite int8 quantization specification):",
        "    real = (q[i] - NAME_zero_point[c]) * NAME_scale[c]",
        "where c is the index of element i along NAME_QUANT_AXIS (per-channel), or c = 0 when",
        "NAME_QUANT_AXIS is -1 (per-tensor). NAME_QUANT_COUNT scales and zero points; int32 biases have",
        "zero point 0 and scale = input scale * weight scale.",
        "",
        "Per-array macros (NAME in upper case): NAME_RANK, NAME_SHAPE (a brace initializer:",
        "`static const int dims[] = NAME_SHAPE;`), NAME_ELEMENTS, NAME_QUANT_AXIS, NAME_QUANT_COUNT.",
        "Array names are the ONNX names sanitized to C (long ones cut and given a hash suffix), with the",
        f"prefix {prefix}_; identifiers may exceed 63 characters (every mainstream compiler accepts that).",
        "",
        f"Graph inputs/outputs: {p}_INPUT_<i>_* and {p}_OUTPUT_<i>_*: NAME, DTYPE, CTYPE, RANK, SHAPE,",
        "ELEMENTS (dynamic dimensions fixed to 1), QUANTIZED, and when quantized SCALE and ZERO_POINT",
        "(q = round(real / SCALE) + ZERO_POINT).",
        "",
        f"Embedded model: {prefix}_model_data ({p}_MODEL_DATA_LEN bytes, also {prefix}_model_data_len)",
        f"is the file {embedded.file_name!r} of the {embedded.backend!r} backend's artifact, byte for byte,",
        f"aligned to {p}_MODEL_DATA_ALIGNMENT bytes"
        + (f", in linker section {section!r}." if section else "."),
        f"File choice: {backend_rule}.",
        f"{p}_CONST_DATA_BYTES is the total size of all const data in the .c file (padding excluded).",
    )


def build_c_files(
    *,
    model_name: str,
    file_stem: str,
    banner: Sequence[str],
    tensors: Sequence[QuantizedTensor],
    inputs: Sequence[IOTensor],
    outputs: Sequence[IOTensor],
    embedded: EmbeddedFile,
    section: str | None,
    embedded_file_rule: str,
) -> CFiles:
    """Describe the ``.h``/``.c`` pair for one model (render with :func:`render_header`/:func:`render_source`).

    Args:
        model_name: the model name the identifier prefix is made from.
        file_stem: name of the files without extension.
        banner: comment lines at the top of both files.
        tensors: quantized initializers, in emission order.
        inputs, outputs: graph I/O descriptions.
        embedded: the other backend's file.
        section: linker section for every array, or None.
        embedded_file_rule: one line saying how the embedded file was chosen (for the header).
    """
    prefix = identifier_prefix(model_name)
    macro_prefix = prefix.upper()
    names = NameAllocator()
    model_data = f"{prefix}_model_data"
    names.reserve(model_data, f"{model_data}_len", f"{macro_prefix}_SECTION", f"{macro_prefix}_H",
                  f"{macro_prefix}_CONST_DATA_BYTES", f"{macro_prefix}_INPUT_COUNT", f"{macro_prefix}_OUTPUT_COUNT",
                  *(f"{macro_prefix}_MODEL_DATA_{s}" for s in ("LEN", "ALIGNMENT", "BACKEND", "FILE", "SECTION")))
    for kind, tensors_io in (("INPUT", inputs), ("OUTPUT", outputs)):
        for index in range(len(tensors_io)):
            io = f"{macro_prefix}_{kind}_{index}"
            names.reserve(*(f"{io}_{s}" for s in ("NAME", "DTYPE", "CTYPE", "RANK", "SHAPE", "ELEMENTS", "QUANTIZED", "SCALE", "ZERO_POINT")))
    tensor_blocks = [
        _tensor_block(tensor, names.allocate(f"{prefix}_{shortened_name_body(tensor.onnx_name)}", _TENSOR_SUFFIXES))
        for tensor in tensors
    ]
    io_blocks = [Block((f"Graph inputs and outputs of {model_name}",), (
        Macro(f"{macro_prefix}_INPUT_COUNT", str(len(inputs))), Macro(f"{macro_prefix}_OUTPUT_COUNT", str(len(outputs)))))]
    io_blocks += [_io_block("input", i, t, macro_prefix) for i, t in enumerate(inputs)]
    io_blocks += [_io_block("output", i, t, macro_prefix) for i, t in enumerate(outputs)]
    length = len(embedded.data)
    model_macros = [
        Macro(f"{macro_prefix}_MODEL_DATA_LEN", str(length)),
        Macro(f"{macro_prefix}_MODEL_DATA_ALIGNMENT", str(embedded.alignment)),
        Macro(f"{macro_prefix}_MODEL_DATA_BACKEND", string_literal(embedded.backend)),
        Macro(f"{macro_prefix}_MODEL_DATA_FILE", string_literal(embedded.file_name)),
    ]
    if section is not None:
        model_macros.append(Macro(f"{macro_prefix}_MODEL_DATA_SECTION", string_literal(section)))
    model_block = Block(
        (f"embedded model: {embedded.file_name} from the {embedded.backend} backend, {length} bytes",),
        tuple(model_macros),
        (ArrayDefinition(model_data, "uint8_t", byte_literals(embedded.data), f"{macro_prefix}_MODEL_DATA_LEN",
                         length, "embedded_model", None, "uint8", alignment=embedded.alignment),),
        (ScalarDefinition(f"{model_data}_len", "unsigned int", f"{length}u", 4, "embedded_model_length"),),
    )
    blocks = (*io_blocks, *tensor_blocks, model_block)
    const_bytes = CFiles(file_stem, macro_prefix, (), (), section, blocks).const_bytes
    total_block = Block(("total size of the const data defined in the .c file, in bytes (padding excluded)",),
                        (Macro(f"{macro_prefix}_CONST_DATA_BYTES", str(const_bytes)),))
    return CFiles(
        file_stem=file_stem,
        macro_prefix=macro_prefix,
        banner=tuple(banner),
        documentation=_documentation(macro_prefix, prefix, embedded, section, embedded_file_rule),
        section=section,
        blocks=(*blocks, total_block),
    )
