"""Load, validate and normalise an ONNX model into the IR (an ``onnx_ir.Model``).

Loading is where bad input is caught, each problem reported as one :class:`ModelError` line naming
the file and the node or tensor at fault: a file that is not ONNX or is truncated, external data
outside the model's folder, a node input that nothing produces (missing initializer), a cycle, an
operator domain or type ONNX does not define, and whatever the ONNX checker and strict shape
inference reject. Models below opset :data:`MIN_OPSET` are converted with the ONNX version
converter (QDQ with per-channel ``axis`` needs opset 13).
"""

from __future__ import annotations

import os
import pathlib

import onnx
import onnx.external_data_helper
import onnx.shape_inference
import onnx.version_converter
import onnx_ir as ir
from google.protobuf.message import DecodeError

from edgecomp.errors import ModelError

MIN_OPSET = 13
KNOWN_DOMAINS = ("", "ai.onnx", "ai.onnx.ml", "com.microsoft")


def _parse(path: pathlib.Path) -> onnx.ModelProto:
    if path.is_dir():
        raise ModelError(f"{path}: is a folder, not an ONNX model file")
    if not path.is_file():
        raise ModelError(f"{path}: model file not found")
    data = path.read_bytes()
    if not data:
        raise ModelError(f"{path}: file is empty, not an ONNX model")
    proto = onnx.ModelProto()
    try:
        proto.ParseFromString(data)
    except DecodeError as exc:
        raise ModelError(f"{path}: not an ONNX model or truncated (protobuf parse failed: {exc})") from None
    if not proto.HasField("graph") or not proto.graph.node:
        raise ModelError(f"{path}: not an ONNX model or truncated (no graph nodes)")
    return proto


def _load_external_data(proto: onnx.ModelProto, path: pathlib.Path) -> None:
    base = path.parent.resolve()
    for tensor in onnx.external_data_helper._get_all_tensors(proto):
        if not onnx.external_data_helper.uses_external_data(tensor):
            continue
        info = onnx.external_data_helper.ExternalDataInfo(tensor)
        location = (base / info.location).resolve()
        if os.path.isabs(info.location) or base not in location.parents:
            raise ModelError(
                f"{path}: tensor {tensor.name!r} points to external data {info.location!r} outside the model's folder"
            )
        if not location.is_file():
            raise ModelError(f"{path}: tensor {tensor.name!r}: external data file {info.location!r} not found")
    onnx.external_data_helper.load_external_data_for_model(proto, str(base))


def _check_structure(proto: onnx.ModelProto, path: pathlib.Path) -> None:
    """Clear messages for the common structural faults, before the ONNX checker's longer ones."""
    graph = proto.graph
    opsets = {entry.domain: entry.version for entry in proto.opset_import}
    available = {v.name for v in graph.input} | {t.name for t in graph.initializer} | {""}
    producer: dict[str, str] = {}
    for index, node in enumerate(graph.node):
        name = node.name or f"#{index} ({node.op_type})"
        if node.domain not in KNOWN_DOMAINS:
            raise ModelError(f"{path}: node {name!r}: unknown operator domain {node.domain!r}")
        if node.domain not in opsets and not (node.domain == "ai.onnx" and "" in opsets):
            raise ModelError(f"{path}: node {name!r}: domain {node.domain!r} has no opset_import entry")
        if node.domain != "com.microsoft" and not onnx.defs.has(node.op_type, node.domain):
            raise ModelError(f"{path}: node {name!r}: unknown operator {node.op_type!r} in domain {node.domain or 'ai.onnx'!r}")
        for output in node.output:
            producer[output] = name
    for index, node in enumerate(graph.node):
        name = node.name or f"#{index} ({node.op_type})"
        for value in node.input:
            if value in available:
                continue
            if value not in producer:
                raise ModelError(f"{path}: node {name!r}: input {value!r} is not a graph input, initializer or node output (missing initializer?)")
    _check_acyclic(graph, path)
    for output in graph.output:
        if output.name not in producer and output.name not in available:
            raise ModelError(f"{path}: graph output {output.name!r} is produced by no node")


def _check_acyclic(graph: onnx.GraphProto, path: pathlib.Path) -> None:
    """Kahn's algorithm over the node list; a leftover node lies on (or after) a cycle."""
    producers = {}
    for index, node in enumerate(graph.node):
        for output in node.output:
            producers[output] = index
    pending = [sum(1 for v in set(node.input) if v in producers) for node in graph.node]
    consumers: dict[int, list[int]] = {}
    for index, node in enumerate(graph.node):
        for value in set(node.input):
            if value in producers:
                consumers.setdefault(producers[value], []).append(index)
    ready = [i for i, count in enumerate(pending) if count == 0]
    done = 0
    while ready:
        index = ready.pop()
        done += 1
        for consumer in consumers.get(index, []):
            pending[consumer] -= 1
            if pending[consumer] == 0:
                ready.append(consumer)
    if done != len(graph.node):
        stuck = next(i for i, count in enumerate(pending) if count > 0)
        node = graph.node[stuck]
        raise ModelError(f"{path}: graph has a cycle through node {node.name or node.op_type!r}")


def _normalise_opset(proto: onnx.ModelProto, path: pathlib.Path) -> onnx.ModelProto:
    version = next((e.version for e in proto.opset_import if e.domain in ("", "ai.onnx")), 0)
    if version >= MIN_OPSET:
        return proto
    try:
        converted = onnx.version_converter.convert_version(proto, MIN_OPSET)
    except Exception as exc:  # the converter raises bare RuntimeError/ValidationError
        raise ModelError(f"{path}: cannot convert opset {version} to {MIN_OPSET}: {str(exc).splitlines()[0]}") from None
    return converted


def load_model(path: str | os.PathLike) -> ir.Model:
    """Read an ONNX file, validate it, convert old opsets, infer shapes, and return the IR.

    Args:
        path: the ``.onnx`` file. External data files are read only from inside its folder.

    Returns:
        An ``onnx_ir.Model`` with opset >= :data:`MIN_OPSET`, inferred shapes on every value ONNX
        shape inference can type, initializers removed from the graph inputs (IR < 4 models list
        weights as inputs; they are weights, not inputs), and a unique name on every node.

    Raises:
        ModelError: one line naming the file and the node/tensor at fault.
    """
    path = pathlib.Path(path)
    proto = _parse(path)
    _load_external_data(proto, path)
    _check_structure(proto, path)
    initializer_names = {t.name for t in proto.graph.initializer}
    kept_inputs = [v for v in proto.graph.input if v.name not in initializer_names]
    del proto.graph.input[:]
    proto.graph.input.extend(kept_inputs)
    if proto.ir_version < 4:
        proto.ir_version = 4
    proto = _normalise_opset(proto, path)
    try:
        onnx.checker.check_model(proto)
        proto = onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True, data_prop=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise ModelError(f"{path}: invalid model: {str(exc).strip().splitlines()[0]}") from None
    model = ir.serde.deserialize_model(proto)
    _name_nodes(model)
    return model


def _name_nodes(model: ir.Model) -> None:
    """Give every unnamed node a stable name ``<op_type>_<index>`` and make duplicates unique."""
    seen: set[str] = set()
    for index, node in enumerate(model.graph):
        name = node.name or f"{node.op_type}_{index}"
        while name in seen:
            name = f"{name}_{index}"
        node.name = name
        seen.add(name)


def to_proto(model: ir.Model) -> onnx.ModelProto:
    """Serialise the IR to an ``onnx.ModelProto`` (no copy of tensor data beyond what protobuf needs)."""
    return ir.serde.serialize_model(model)


def to_bytes(model: ir.Model) -> bytes:
    """The model as deterministic ONNX bytes (protobuf serialisation of :func:`to_proto`)."""
    return to_proto(model).SerializeToString(deterministic=True)
