"""From INT8 ``.tflite`` bytes to a :class:`Program`: kernel calls, API tensors and the arena plan.

Steps, in order:

1. :func:`edgecomp_c.program.read_ops` reads the operators of the file.
2. **Boundaries.** A float graph input read only by ``QUANTIZE`` ops (float32 -> int8) and a float
   graph output written by a ``DEQUANTIZE`` of an int8 tensor are kept out of the program: the
   C API takes and returns the int8 tensors (``<name>_invoke``); the float wrapper
   (``<name>_invoke_float``) runs those boundary kernels around it.
3. **Aliases.** ``RESHAPE`` (and ``SQUEEZE``/``EXPAND_DIMS``) only relabel the bytes of an int8
   tensor: the output is stored in the input's buffer and no kernel runs.
4. **Kernel calls.** Every other operator goes through its builder (:mod:`edgecomp_c.ops`). Every
   operator no builder handles is collected, and :class:`~edgecomp.errors.UnsupportedError` lists
   them all (op, tensor, reason).
5. **Arena.** Each buffer (an activation tensor with its aliases) is alive from the call that writes
   it (call 0 for an API input) to the last call that reads it (the last call for an API output);
   sizes are rounded up to the alignment; :func:`edgecomp.memory.best_plan` gives offsets.
   Kernels here need no scratch memory (the reference kernels accumulate in registers), so the
   arena holds activations only.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from edgecomp.errors import UnsupportedError
from edgecomp.memory import Buffer, Plan, best_plan, greedy_by_size
from edgecomp_c.ops import builders
from edgecomp_c.program import KernelCall, OpView, TensorInfo, TensorList, Unlowerable, read_ops

__all__ = ["ALIAS_OPS", "Boundary", "Program", "lower_program"]

#: TFLite builtins that relabel the bytes of their first input (no kernel; output aliases input).
ALIAS_OPS = frozenset({"RESHAPE", "SQUEEZE", "EXPAND_DIMS"})


@dataclasses.dataclass(frozen=True)
class Boundary:
    """A float graph input/output and the int8 tensor the C API takes/returns instead.

    Attributes:
        float_tensor: the ``.tflite`` graph input (float32) or output (float32).
        int8_tensor: the int8 tensor written by its ``QUANTIZE`` / read by its ``DEQUANTIZE``;
            for a graph input/output that is int8 already, the same tensor as ``float_tensor``.
        call: the boundary kernel (QUANTIZE / DEQUANTIZE) for ``<name>_invoke_float``, or None.
    """

    float_tensor: TensorInfo
    int8_tensor: TensorInfo
    call: KernelCall | None


@dataclasses.dataclass
class Program:
    """Everything the emitter writes.

    Attributes:
        ops: the operators that run, in order (boundary Q/DQ and aliases removed).
        calls: ``calls[i]`` runs ``ops[i]``.
        tensors: every tensor by TFLite index.
        inputs / outputs: the C API's tensors, in graph order.
        buffer_of: activation tensor index -> index of its buffer in ``plan.buffers``.
        plan: the arena plan (offsets in bytes); ``greedy``: TFLite Micro's greedy-by-size plan of the
            same buffers, for the report.
        aliases: tensors stored in another tensor's buffer (RESHAPE outputs), index -> root index.
    """

    ops: list[OpView]
    calls: list[KernelCall]
    tensors: dict[int, TensorInfo]
    inputs: list[Boundary]
    outputs: list[Boundary]
    buffer_of: dict[int, int]
    plan: Plan
    greedy: Plan
    aliases: dict[int, int]

    def offset(self, tensor: int) -> int:
        """Byte offset in the arena of activation tensor ``tensor``."""
        return self.plan.offsets[self.buffer_of[tensor]]

    def constants(self) -> list[TensorInfo]:
        """Constant tensors passed to a kernel, in first-use order (each once)."""
        seen: dict[int, TensorInfo] = {}
        for call in self.calls:
            for index in _call_tensors(call):
                tensor = self.tensors[index]
                if tensor.is_constant and index not in seen:
                    seen[index] = tensor
        return list(seen.values())


def _call_tensors(call: KernelCall) -> list[int]:
    listed = [index for value in call.params.values() if isinstance(value, TensorList) for index in value.tensors]
    return list(call.tensors) + listed


def _boundaries(ops: list[OpView], graph_inputs: list[int], graph_outputs: list[int], tensors: dict[int, TensorInfo]):
    """Split off the float boundary QUANTIZE/DEQUANTIZE ops (module docstring, step 2)."""
    build = builders()
    readers: dict[int, list[OpView]] = {}
    for op in ops:
        for tensor in op.inputs:
            if tensor is not None:
                readers.setdefault(tensor.index, []).append(op)
    removed: set[int] = set()
    inputs, outputs = [], []
    for index in graph_inputs:
        tensor = tensors[index]
        users = readers.get(index, [])
        if tensor.ctype == "float" and len(users) == 1 and users[0].builtin == "QUANTIZE" and users[0].outputs[0].ctype == "int8_t":
            op = users[0]
            removed.add(op.index)
            inputs.append(Boundary(tensor, op.outputs[0], build["QUANTIZE"](op)))
        else:
            inputs.append(Boundary(tensor, tensor, None))
    producers = {out.index: op for op in ops for out in op.outputs}
    for index in graph_outputs:
        tensor = tensors[index]
        op = producers.get(index)
        if tensor.ctype == "float" and op is not None and op.builtin == "DEQUANTIZE" and op.inputs[0].ctype == "int8_t" and not op.inputs[0].is_constant:
            removed.add(op.index)
            outputs.append(Boundary(tensor, op.inputs[0], build["DEQUANTIZE"](op)))
        else:
            outputs.append(Boundary(tensor, tensor, None))
    return inputs, outputs, removed


def _align(size: int, alignment: int) -> int:
    return -(-size // alignment) * alignment


def lower_program(model, *, alignment: int = 16, search_budget: int | None = None) -> Program:
    """Build the :class:`Program` of a ``.tflite`` model (``schema.ModelT``).

    Args:
        model: the parsed ``.tflite`` (``edgecomp_tflite.writer.read_model``).
        alignment: bytes; every arena offset and buffer size is a multiple of it.
        search_budget: :func:`edgecomp.memory.best_plan`'s node budget (None: its default).

    Raises:
        UnsupportedError: every operator the C kernels cannot run, on one line separated by "; "
            (``<BUILTIN> (output '<tensor name>'): <reason>``), or an API tensor that is not int8.
    """
    try:
        ops, tensors = read_ops(model)
    except Unlowerable as error:
        raise UnsupportedError(f"c: {error}") from None
    subgraph = model.subgraphs[0]
    graph_inputs = [int(i) for i in subgraph.inputs]
    graph_outputs = [int(i) for i in subgraph.outputs]
    build = builders()
    problems: list[str] = []
    inputs, outputs, removed = _boundaries(ops, graph_inputs, graph_outputs, tensors)

    aliases: dict[int, int] = {}
    running: list[OpView] = []
    calls: list[KernelCall] = []
    for op in ops:
        if op.index in removed:
            continue
        where = f"{op.builtin} (output {op.outputs[0].name!r})" if op.outputs else op.builtin
        if op.builtin in ALIAS_OPS:
            source, target = op.inputs[0], op.outputs[0]
            if source.is_constant or source.ctype != target.ctype:
                problems.append(f"{where}: only reshapes of activations without a type change are aliased")
                continue
            aliases[target.index] = aliases.get(source.index, source.index)
            continue
        function = build.get(op.builtin)
        if function is None:
            problems.append(f"{where}: no C kernel for {op.builtin}")
            continue
        try:
            call = function(op)
        except Unlowerable as error:
            problems.append(f"{where}: {error}")
            continue
        running.append(op)
        calls.append(call)
    for boundary in inputs + outputs:
        if boundary.int8_tensor.ctype != "int8_t":
            problems.append(f"graph tensor {boundary.float_tensor.name!r}: {boundary.int8_tensor.ctype} at the API; the C program takes and returns int8 tensors")
    if problems:
        raise UnsupportedError(f"c backend cannot lower {len(problems)} operator(s) or tensor(s): " + "; ".join(problems))

    def root(index: int) -> int:
        return aliases.get(index, index)

    # buffers: root tensor -> [first, last]
    last_call = max(len(calls) - 1, 0)
    spans: dict[int, list[int]] = {}
    order: list[int] = []

    def touch(index: int, step: int) -> None:
        key = root(index)
        if key not in spans:
            spans[key] = [step, step]
            order.append(key)
        else:
            spans[key][0] = min(spans[key][0], step)
            spans[key][1] = max(spans[key][1], step)

    for boundary in inputs:
        touch(boundary.int8_tensor.index, 0)
    for step, (op, call) in enumerate(zip(running, calls)):
        for index in _call_tensors(call):
            if not tensors[index].is_constant:
                touch(index, step)
    for boundary in outputs:
        touch(boundary.int8_tensor.index, last_call)
    sizes: dict[int, int] = {}
    for index, tensor in tensors.items():
        if not tensor.is_constant:
            key = root(index)
            sizes[key] = max(sizes.get(key, 0), tensor.nbytes)
    buffers, buffer_index = [], {}
    for key in order:
        members = tuple(tensors[i].name for i in sorted(tensors) if not tensors[i].is_constant and root(i) == key and (i in spans or i in aliases))
        buffer_index[key] = len(buffers)
        buffers.append(Buffer(tensors[key].name, _align(sizes[key], alignment), spans[key][0], spans[key][1], members))
    kwargs: dict[str, Any] = {"alignment": alignment}
    if search_budget is not None:
        kwargs["search_budget"] = search_budget
    plan = best_plan(buffers, **kwargs)
    plan.verify()
    greedy = greedy_by_size(buffers, alignment=alignment)
    buffer_of = {index: buffer_index[root(index)] for index in tensors if not tensors[index].is_constant and root(index) in buffer_index}
    return Program(running, calls, tensors, inputs, outputs, buffer_of, plan, greedy, aliases)
