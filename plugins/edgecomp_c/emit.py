"""C99 source text of a :class:`~edgecomp_c.lowering.Program`: ``<name>.h`` and ``<name>.c``.

The generated API (``<name>`` is the C identifier of the model name, ``<NAME>`` its upper case)::

    int <name>_invoke(const int8_t *input0, ..., int8_t *output0, ...);   /* int8 in, int8 out */
    int <name>_invoke_float(const float *input0, ..., float *output0, ...); /* TFLite QUANTIZE/DEQUANTIZE around it */
    int8_t *<name>_input(unsigned index);        /* the input tensor inside the arena */
    const int8_t *<name>_output(unsigned index); /* the output tensor inside the arena */
    int <name>_run(void);                        /* run on the arena's input tensors in place */

and macros per input/output ``i``, named as the ``c-array`` backend names them:
``<NAME>_INPUT_<i>_NAME`` (the tensor name), ``_RANK``, ``_SHAPE`` (brace list), ``_ELEMENTS``,
``_BYTES``, ``_SCALE`` (float), ``_ZERO_POINT``, plus ``<NAME>_ARENA_BYTES``,
``<NAME>_INPUT_COUNT``, ``<NAME>_OUTPUT_COUNT``. Every function returns 0.

``<name>.c`` holds the weights as ``const`` arrays (aligned, in the target's weight section when it
names one), one ``static`` arena of exactly the planned size, a ``const`` parameter struct per
operator, and ``<name>_run`` calling the kernels in order. Output is a pure function of the program:
the same ``.tflite`` gives byte-identical sources.
"""

from __future__ import annotations

import re

import numpy as np

from edgecomp_c.lowering import Boundary, Program
from edgecomp_c_array.emit import string_literal
from edgecomp_c.program import KernelCall, TensorInfo, TensorList

__all__ = ["TensorNames", "array_body", "c_identifier", "call_statement", "declare_call", "emit_header", "emit_source"]

_VALUES_PER_LINE = 24


def c_identifier(name: str) -> str:
    """A C identifier from a model name (``mnist-8`` -> ``mnist_8``; a leading digit gets ``m_``)."""
    ident = re.sub(r"[^0-9A-Za-z_]", "_", name) or "model"
    return f"m_{ident}" if ident[0].isdigit() else ident


def _float_literal(value: float) -> str:
    value = float(np.float32(value))
    if not np.isfinite(value):
        raise ValueError(f"non-finite float {value} in a generated constant")
    text = repr(value)
    if "e" not in text and "." not in text:
        text += ".0"
    return f"{text}f"


def _int_literal(value: int) -> str:
    value = int(value)
    if value == -(2**31):
        return "(-2147483647 - 1)"
    return f"({value})" if value < 0 else str(value)


def array_body(values: np.ndarray, ctype: str) -> str:
    """C initializer ``{...}`` of ``values`` (flattened) as ``ctype`` literals, 24 per line."""
    flat = values.reshape(-1)
    if ctype == "float":
        items = [_float_literal(v) for v in flat.tolist()]
    else:
        items = [_int_literal(v) if int(v) == -(2**31) else str(int(v)) for v in flat.tolist()]
    lines = [", ".join(items[i : i + _VALUES_PER_LINE]) for i in range(0, len(items), _VALUES_PER_LINE)]
    return "{\n    " + ",\n    ".join(lines) + "\n}" if lines else "{0}"


def _comment(text: str) -> str:
    return text.replace("*/", "* /")


class TensorNames:
    """C expressions for tensors: constants by array name, activations inside the arena."""

    def __init__(self, program: Program, model: str) -> None:
        self.program = program
        self.model = model
        self.const = {tensor.index: f"{model}_t{tensor.index}" for tensor in program.constants()}
        self.overrides: dict[int, str] = {}

    def pointer(self, index: int, *, writable: bool) -> str:
        if index in self.overrides:
            return self.overrides[index]
        tensor = self.program.tensors[index]
        if tensor.is_constant:
            return self.const[index]
        qualifier = "" if writable else "const "
        return f"({qualifier}{tensor.ctype} *)&{self.model}_arena[{self.program.offset(index)}]"


def declare_call(lines: list[str], k: int | str, op, call: KernelCall, names: TensorNames) -> None:
    """Append the const arrays and the parameter struct of ``call`` (operator ``k``) to ``lines``."""
    prefix = f"op{k}"
    for field, (ctype, values) in call.arrays.items():
        lines.append(f"static const {ctype} {prefix}_{field}[{max(values.size, 1)}] = {array_body(np.asarray(values), ctype)};")
    if call.params_type is None:
        return
    fields = []
    for field, value in call.params.items():
        if isinstance(value, TensorList):
            pointers = ", ".join(names.pointer(i, writable=False) for i in value.tensors)
            lines.append(f"static const {value.ctype} *const {prefix}_{field}[{len(value.tensors)}] = {{{pointers}}};")
            text = f"{prefix}_{field}"
        elif isinstance(value, bool):
            text = "1" if value else "0"
        elif isinstance(value, (int, np.integer)):
            text = _int_literal(int(value))
        elif isinstance(value, (float, np.floating)):
            text = _float_literal(float(value))
        elif isinstance(value, str):
            text = f"{prefix}_{value}" if value in call.arrays else value
        else:
            raise TypeError(f"op {k} ({getattr(op, 'builtin', 'boundary')}): parameter {field!r} has unsupported type {type(value).__name__}")
        fields.append(f"    .{field} = {text},")
    lines.append(f"static const {call.params_type} {prefix}_params = {{")
    lines.extend(fields)
    lines.append("};")


def call_statement(k: int | str, call: KernelCall, names: TensorNames, outputs: set[int]) -> str:
    """The C statement calling ``call``'s kernel (tensors in ``outputs`` passed as writable)."""
    args = [] if call.params_type is None else [f"&op{k}_params"]
    args += [names.pointer(index, writable=index in outputs) for index in call.tensors]
    return f"{call.function}({', '.join(args)});"


def _io_macros(lines: list[str], upper: str, kind: str, i: int, boundary: Boundary, layout: str | None = None) -> None:
    """The macros of graph input/output ``i``: NAME is the model's (``.tflite`` signature) name,
    the rest describe the int8 tensor the C API takes or returns."""
    key = f"{upper}_{kind}_{i}"
    tensor: TensorInfo = boundary.int8_tensor
    shape = ", ".join(str(d) for d in tensor.shape)
    where = f", {layout}" if layout else ""
    lines.append(f"/* {kind.lower()} {i}: {_comment(boundary.float_tensor.name)} (row-major{where}) */")
    lines.append(f"#define {key}_NAME {string_literal(boundary.float_tensor.name)}")
    lines.append(f"#define {key}_RANK {len(tensor.shape)}")
    lines.append(f"#define {key}_SHAPE {{{shape}}}")
    lines.append(f"#define {key}_ELEMENTS {int(np.prod(tensor.shape))}")
    lines.append(f"#define {key}_BYTES {tensor.nbytes}")
    scale = tensor.scale[0] if tensor.scale is not None else 0.0
    zero_point = int(tensor.zero_point[0]) if tensor.zero_point is not None else 0
    lines.append(f"#define {key}_SCALE {_float_literal(scale)}")
    lines.append(f"#define {key}_ZERO_POINT {_int_literal(zero_point)}")


def _signature(model: str, program: Program, ctype_in: str, ctype_out: str, suffix: str) -> str:
    params = [f"const {ctype_in} *input{i}" for i in range(len(program.inputs))]
    params += [f"{ctype_out} *output{i}" for i in range(len(program.outputs))]
    return f"int {model}_{suffix}({', '.join(params) or 'void'})"


def _has_float_api(program: Program) -> bool:
    return all(b.call is not None for b in program.inputs + program.outputs)


def emit_header(program: Program, model_name: str, *, producer: str, layouts: tuple[str | None, ...] = ()) -> str:
    """``<name>.h``: the API and the I/O macros (module docstring); ``layouts`` describes each
    input then output's element order (e.g. ``"NCHW, as the ONNX model"``) in its comment."""
    model = c_identifier(model_name)
    upper = model.upper()
    guard = f"{upper}_H"
    lines = [
        f"/* {model}.h: generated by {producer}; do not edit.",
        " *",
        f" * INT8 model '{_comment(model_name)}': {len(program.calls)} kernel calls, tensor arena {program.plan.arena_size} bytes",
        f" * (lower bound {program.plan.lower_bound} bytes). All functions return 0. Not reentrant: one static arena.",
        " */",
        f"#ifndef {guard}",
        f"#define {guard}",
        "",
        "#include <stdint.h>",
        "",
        "#ifdef __cplusplus",
        'extern "C" {',
        "#endif",
        "",
        f"#define {upper}_ARENA_BYTES {program.plan.arena_size}",
        f"#define {upper}_INPUT_COUNT {len(program.inputs)}",
        f"#define {upper}_OUTPUT_COUNT {len(program.outputs)}",
    ]
    described = list(layouts) + [None] * (len(program.inputs) + len(program.outputs) - len(layouts))
    for i, boundary in enumerate(program.inputs):
        _io_macros(lines, upper, "INPUT", i, boundary, described[i])
    for i, boundary in enumerate(program.outputs):
        _io_macros(lines, upper, "OUTPUT", i, boundary, described[len(program.inputs) + i])
    lines += [
        "",
        "/* Copy the int8 inputs into the arena, run, copy the int8 outputs out. */",
        _signature(model, program, "int8_t", "int8_t", "invoke") + ";",
    ]
    if _has_float_api(program):
        lines += [
            "/* Quantize float inputs (TFLite QUANTIZE), run, dequantize the outputs (TFLite DEQUANTIZE). */",
            _signature(model, program, "float", "float", "invoke_float") + ";",
        ]
    lines += [
        "/* The input tensor inside the arena (write it, then call _run; the run may overwrite it). */",
        f"int8_t *{model}_input(unsigned index);",
        "/* The output tensor inside the arena (valid until the next run). */",
        f"const int8_t *{model}_output(unsigned index);",
        f"int {model}_run(void);",
        "",
        "#ifdef __cplusplus",
        "}",
        "#endif",
        "",
        f"#endif /* {guard} */",
        "",
    ]
    return "\n".join(lines)


def _function(signature: str, model: str, before: list[str], after: list[str]) -> list[str]:
    """A C function: ``before`` statements, ``<model>_run()``, ``after`` statements, ``return 0``."""
    body = [*before, f"{model}_run();", *after, "return 0;"]
    return [signature, "{", *(f"    {statement}" for statement in body), "}", ""]


def emit_source(program: Program, model_name: str, *, producer: str, weights_section: str | None = None, arena_section: str | None = None, weights_alignment: int = 16) -> str:
    """``<name>.c``: weights, arena, per-operator parameters and the run function.

    Args:
        program: the lowered program.
        model_name: the artifact stem (``c_identifier`` makes the C prefix).
        producer: written in the banner (e.g. ``edgecomp 0.1.0``).
        weights_section: linker section of the weight arrays (``__attribute__((section))``), or None.
        arena_section: linker section of the arena, or None (``.bss``).
        weights_alignment: byte alignment of each weight array.
    """
    model = c_identifier(model_name)
    upper = model.upper()
    names = TensorNames(program, model)
    weight_attr = f"__attribute__((aligned({weights_alignment})" + (f', section("{weights_section}")' if weights_section else "") + "))"
    arena_attr = f"__attribute__((aligned({program.plan.alignment})" + (f', section("{arena_section}")' if arena_section else "") + "))"
    lines = [
        f"/* {model}.c: generated by {producer}; do not edit.",
        " *",
        f" * Tensor arena: {program.plan.arena_size} bytes ({program.plan.strategy}; lower bound {program.plan.lower_bound} bytes,",
        f" * TFLite Micro's greedy plan {program.greedy.arena_size} bytes). Kernels: ec_kernels.h (bit-exact with the TFLite",
        " * reference int8 kernels).",
        " */",
        "#include <stddef.h>",
        "#include <stdint.h>",
        "#include <string.h>",
        "",
        '#include "ec_kernels.h"',
        f'#include "{model}.h"',
        "",
        f"static int8_t {model}_arena[{max(program.plan.arena_size, 1)}] {arena_attr};",
        "",
        "/* ---- weights and other constant tensors ---- */",
    ]
    for tensor in program.constants():
        shape = "x".join(str(d) for d in tensor.shape) or "scalar"
        lines.append(f"/* {_comment(tensor.name)}: {tensor.ctype} [{shape}] */")
        lines.append(f"static const {tensor.ctype} {names.const[tensor.index]}[{max(tensor.numel, 1)}] {weight_attr} = {array_body(tensor.data, tensor.ctype)};")
    lines += ["", "/* ---- operator parameters ---- */"]
    for k, (op, call) in enumerate(zip(program.ops, program.calls)):
        lines.append(f"/* op {k}: {op.builtin} -> {_comment(op.outputs[0].name) if op.outputs else ''} */")
        declare_call(lines, k, op, call, names)
    lines += ["", f"int {model}_run(void)", "{"]
    for k, (op, call) in enumerate(zip(program.ops, program.calls)):
        outputs = {t.index for t in op.outputs}
        lines.append(f"    {call_statement(k, call, names, outputs)} /* {op.builtin} */")
    lines += ["    return 0;", "}", ""]
    # arena views of the API tensors
    for kind, boundaries, qualifier in (("input", program.inputs, ""), ("output", program.outputs, "const ")):
        lines += [f"{qualifier}int8_t *{model}_{kind}(unsigned index)", "{", "    switch (index) {"]
        for i, boundary in enumerate(boundaries):
            lines.append(f"    case {i}: return &{model}_arena[{program.offset(boundary.int8_tensor.index)}];")
        lines += ["    default: return NULL;", "    }", "}", ""]
    # int8 invoke: copy in, run, copy out
    copy_in = [f"memcpy(&{model}_arena[{program.offset(b.int8_tensor.index)}], input{i}, {upper}_INPUT_{i}_BYTES);" for i, b in enumerate(program.inputs)]
    copy_out = [f"memcpy(output{i}, &{model}_arena[{program.offset(b.int8_tensor.index)}], {upper}_OUTPUT_{i}_BYTES);" for i, b in enumerate(program.outputs)]
    lines += _function(_signature(model, program, "int8_t", "int8_t", "invoke"), model, copy_in, copy_out)
    if _has_float_api(program):
        boundaries = program.inputs + program.outputs
        names.overrides.update({b.float_tensor.index: f"input{i}" for i, b in enumerate(program.inputs)})
        names.overrides.update({b.float_tensor.index: f"output{i}" for i, b in enumerate(program.outputs)})
        lines.append("/* ---- float boundary (TFLite QUANTIZE / DEQUANTIZE) ---- */")
        for i, boundary in enumerate(boundaries):
            declare_call(lines, f"_io{i}", None, boundary.call, names)
        lines.append("")
        # QUANTIZE writes the int8 input, DEQUANTIZE writes the float output
        calls = [call_statement(f"_io{i}", b.call, names, {b.int8_tensor.index if i < len(program.inputs) else b.float_tensor.index}) for i, b in enumerate(boundaries)]
        lines += _function(_signature(model, program, "float", "float", "invoke_float"), model, calls[: len(program.inputs)], calls[len(program.inputs) :])
        names.overrides.clear()
    return "\n".join(lines)
