"""The ``c-array`` backend: raw C arrays for microcontroller targets.

``lower`` turns the quantized IR (QDQ ONNX) into ``<model_name>.h`` and ``<model_name>.c`` holding:

- every quantized initializer (int8 weights, int32 biases; also uint8/int16/uint16 data) as a named
  ``const`` array in ONNX layout, row-major, with its float32 scales, zero points, per-channel axis
  and shape (see :mod:`edgecomp_c_array.emit` and the generated header's documentation comment);
- the graph inputs/outputs: names, shapes, dtypes and quantization parameters, as macros;
- another backend's artifact (``target.c_array.embed_backend``, default ``onnxruntime``) as ONE
  ``const uint8_t`` array aligned to ``target.c_array.alignment`` bytes, with its length.

Decisions (documented here because the contract leaves them open):

- **Which file is embedded.** Of the embedded artifact's files, the first present by suffix in
  :data:`EMBEDDED_SUFFIX_PREFERENCE` (``.ort``, then ``.tflite``, then ``.onnx``), preferring the one
  named ``<model_name><suffix>`` when several share the suffix; an artifact of a single file embeds
  that file whatever its name. For onnxruntime this is the ``.ort`` when present, else the ``.onnx``.
- **Float weights that are not quantized** (hybrid models, layers the quantizer skipped) are not
  emitted as named arrays: they live only inside the embedded model, and the report lists them under
  ``metadata["not_emitted"]``. They are not "unsupported".
- **Unsupported** (``support`` entries, ``lower`` raises :class:`~edgecomp.errors.UnsupportedError`):
  quantized initializers of a dtype with no C array type here (int4, float8 ...), non-constant,
  non-finite or blocked scales, and float64/complex/string initializers, constants and graph I/O.
  The embedded backend's own ``support`` report is *not* merged: it judges whether that runtime runs
  on the target (onnxruntime refuses every bare-metal ``mcu`` target), while c-array only needs the
  bytes of its artifact; that backend's ``lower`` still raises when it cannot produce them.
- **legalize** returns the embedded backend's passes: the IR c-array receives is handed unchanged to
  that backend's ``lower``, so it must already be legal for that backend. c-array itself needs none.
- **flash_bytes** is the sum of the sizes of all const data defined in the ``.c`` file: arrays of
  weights, biases, scales, zero points, the embedded model, and the 4-byte ``unsigned int`` length.
  Shapes, axes and I/O parameters are macros and occupy no flash. Linker padding is not counted.
- **Which IR the arrays come from.** The embedded backend may change the IR while lowering (onnxruntime
  narrows weights to 7 bits when its x86 kernels need it, and returns it as ``Artifact.model``). The
  arrays are read *after* it ran, from ``Artifact.model`` when set, else from the IR passed in, so the C
  arrays always equal the embedded model's initializers; c-array's artifact passes ``model`` on.
- **runner** is the embedded artifact's runner (``--eval`` runs what is embedded).
- The backend looks other backends up through ``options.get_backend`` in ``lower``; in ``support`` and
  ``legalize`` (which get no options) through the ``get_backend`` given to the constructor, else
  :func:`edgecomp.plugins.get_backend`.
"""

from __future__ import annotations

import hashlib
import logging
import re
from typing import TYPE_CHECKING, Any, Callable

from edgecomp import __version__
from edgecomp.backend import Artifact, Backend, LowerOptions, SupportReport
from edgecomp.errors import PluginError, TargetError, UnsupportedError
from edgecomp_c_array import emit, qdq

if TYPE_CHECKING:
    import onnx_ir as ir

    from edgecomp.targets import Target

logger = logging.getLogger(__name__)

EMBEDDED_SUFFIX_PREFERENCE = (".ort", ".tflite", ".onnx")
EMBEDDED_FILE_RULE = "first by suffix .ort, .tflite, .onnx (preferring <model_name><suffix>), else the only file"


def select_embedded_file(artifact: Artifact, model_name: str) -> str:
    """The file of ``artifact`` to embed (rule: :data:`EMBEDDED_FILE_RULE`).

    Raises:
        PluginError: the artifact has no files, or several files none of which has a known suffix.
    """
    names = sorted(artifact.files)
    for suffix in EMBEDDED_SUFFIX_PREFERENCE:
        candidates = [name for name in names if name.endswith(suffix)]
        if candidates:
            preferred = f"{model_name}{suffix}"
            return preferred if preferred in candidates else candidates[0]
    if len(names) == 1:
        return names[0]
    raise PluginError(
        f"backend {artifact.backend!r} returned files {names or 'none'}; the c-array backend embeds one file "
        f"and cannot tell which is the model ({EMBEDDED_FILE_RULE})"
    )


def file_stem(model_name: str) -> str:
    """``model_name`` as a file name stem: characters other than letters, digits, ``.``, ``_``, ``-`` become ``_``."""
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", model_name).lstrip(".")
    return stem or "model"


class CArrayBackend:
    """Raw C arrays for microcontroller targets (see the module docstring for every rule).

    Args:
        get_backend: looks up another backend by name for :meth:`support` and :meth:`legalize`;
            defaults to :func:`edgecomp.plugins.get_backend`. :meth:`lower` prefers
            ``options.get_backend``.
    """

    name = "c-array"
    description = "raw C arrays for microcontroller targets: int8 weights, scales, and another backend's model as one aligned array"

    def __init__(self, get_backend: Callable[[str], Backend] | None = None) -> None:
        self._get_backend = get_backend

    def _embedded_backend(self, target: "Target", options: LowerOptions | None) -> Backend:
        """The backend named by ``target.c_array.embed_backend``.

        Raises:
            TargetError: the target names this backend itself, or a backend that is not registered
                (the message names the target file and key).
        """
        name = target.c_array.embed_backend
        if name == self.name:
            raise TargetError(
                f"{target.path or target.name}: key 'c_array.embed_backend' cannot be {self.name!r} "
                "(the c-array backend would embed itself)"
            )
        lookup = (options.get_backend if options is not None else None) or self._get_backend
        if lookup is None:
            from edgecomp.plugins import get_backend as lookup
        try:
            return lookup(name)
        except PluginError as exc:
            raise TargetError(f"{target.path or target.name}: key 'c_array.embed_backend': {exc}") from None

    def support(self, model: "ir.Model", target: "Target") -> SupportReport:
        """Every node c-array cannot represent (see the module docstring). Does no work.

        The embedded backend is looked up (so a bad ``c_array.embed_backend`` fails here, before
        quantization) but its own report is not merged (see the module docstring).

        Raises:
            TargetError, PluginError: see :meth:`_embedded_backend`.
        """
        self._embedded_backend(target, None)
        return SupportReport(self.name, tuple(qdq.find_unsupported(model)))

    def legalize(self, target: "Target") -> list[Any]:
        """The embedded backend's legalization passes (c-array hands the IR to it unchanged).

        Raises:
            TargetError, PluginError: see :meth:`_embedded_backend`.
        """
        return list(self._embedded_backend(target, None).legalize(target))

    def lower(self, model: "ir.Model", target: "Target", options: LowerOptions) -> Artifact:
        """Lower ``model`` to ``<model_name>.h`` and ``<model_name>.c``.

        The embedded backend runs first; the arrays are read from the IR it returns (``Artifact.model``)
        or, when it returns none, from ``model``. Output is a pure function of the model, the target,
        ``options.model_name`` and the embedded bytes (no timestamps): two calls give the same bytes
        when the embedded backend is reproducible.

        Raises:
            UnsupportedError: :meth:`support` would list a c-array problem (first one named, count given).
            TargetError: ``c_array.embed_backend`` is ``c-array``.
            PluginError: unknown embedded backend, or its artifact has no file to embed / an empty one.
        """
        problems = qdq.find_unsupported(model)
        if problems:
            first = problems[0]
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            raise UnsupportedError(f"c-array cannot lower node {first.node!r} ({first.op_type}): {first.reason}{more}")
        embedded_backend = self._embedded_backend(target, options)
        embedded_artifact = embedded_backend.lower(model, target, options)
        embedded_name = select_embedded_file(embedded_artifact, options.model_name)
        data = bytes(embedded_artifact.files[embedded_name])
        if not data:
            raise PluginError(f"backend {embedded_backend.name!r} returned an empty {embedded_name!r}; nothing to embed")

        lowered = embedded_artifact.model if embedded_artifact.model is not None else model
        tensors = qdq.quantized_tensors(lowered)
        inputs, outputs = qdq.io_tensors(lowered)
        not_emitted = [
            {"onnx_name": name, "dtype": dtype, "bytes": nbytes, "reason": "not quantized: kept only inside the embedded model"}
            for name, dtype, nbytes in qdq.unquantized_float_initializers(lowered)
        ]
        not_emitted += [
            {"onnx_name": t.onnx_name, "dtype": str(t.values.dtype), "bytes": 0, "reason": "empty: C has no zero-length arrays"}
            for t in tensors if t.values.size == 0
        ]
        tensors = [t for t in tensors if t.values.size > 0]
        if not_emitted:
            logger.info("c-array: %d initializers not emitted as arrays (see metadata 'not_emitted')", len(not_emitted))
        embedded = emit.EmbeddedFile(embedded_backend.name, embedded_name, data, target.c_array.alignment)

        stem = file_stem(options.model_name)
        c_files = emit.build_c_files(
            model_name=options.model_name,
            file_stem=stem,
            banner=_banner(lowered, options.model_name, embedded),
            tensors=tensors,
            inputs=inputs,
            outputs=outputs,
            embedded=embedded,
            section=target.c_array.section,
            embedded_file_rule=EMBEDDED_FILE_RULE,
        )
        files = {
            f"{stem}.h": emit.render_header(c_files).encode("ascii"),
            f"{stem}.c": emit.render_source(c_files).encode("ascii"),
        }
        return Artifact(
            backend=self.name,
            files=files,
            flash_bytes=c_files.const_bytes,
            metadata=_metadata(c_files, embedded, embedded_artifact, inputs, outputs, not_emitted, target),
            runner=embedded_artifact.runner,
            model=embedded_artifact.model,
        )


def _banner(model: "ir.Model", model_name: str, embedded: emit.EmbeddedFile) -> list[str]:
    producer = " ".join(part for part in (model.producer_name, model.producer_version) if part) or "unknown"
    return [
        f"Generated by edgecomp {__version__} (c-array backend) from model {model_name!r}",
        f"(ONNX graph {model.graph.name or 'unnamed'!r}, producer {producer}). Do not edit.",
        f"Embedded: {embedded.file_name} from the {embedded.backend} backend, {len(embedded.data)} bytes, "
        f"sha256 {hashlib.sha256(embedded.data).hexdigest()}.",
    ]


def _io_metadata(tensor: qdq.IOTensor) -> dict[str, Any]:
    return {
        "name": tensor.name,
        "dtype": tensor.dtype,
        "shape": list(tensor.shape) if tensor.shape is not None else None,
        "scale": float(tensor.scale) if tensor.scale is not None else None,
        "zero_point": tensor.zero_point,
    }


def _metadata(
    c_files: emit.CFiles,
    embedded: emit.EmbeddedFile,
    embedded_artifact: Artifact,
    inputs: list[qdq.IOTensor],
    outputs: list[qdq.IOTensor],
    not_emitted: list[dict[str, Any]],
    target: "Target",
) -> dict[str, Any]:
    arrays = [
        {"name": a.name, "role": a.role, "onnx_name": a.onnx_name, "dtype": a.dtype, "elements": a.elements, "bytes": a.nbytes}
        for a in c_files.arrays
    ]
    arrays += [
        {"name": s.name, "role": s.role, "onnx_name": None, "dtype": "uint32", "elements": 1, "bytes": s.nbytes}
        for s in c_files.scalars
    ]
    return {
        "header": f"{c_files.file_stem}.h",
        "source": f"{c_files.file_stem}.c",
        "macro_prefix": c_files.macro_prefix,
        "arrays": arrays,
        "embedded": {
            "backend": embedded.backend,
            "file": embedded.file_name,
            "bytes": len(embedded.data),
            "sha256": hashlib.sha256(embedded.data).hexdigest(),
            "alignment": embedded.alignment,
            "section": target.c_array.section,
            "rule": EMBEDDED_FILE_RULE,
            "artifact_files": sorted(embedded_artifact.files),
            "artifact_metadata": embedded_artifact.metadata,
        },
        "inputs": [_io_metadata(t) for t in inputs],
        "outputs": [_io_metadata(t) for t in outputs],
        "not_emitted": not_emitted,
    }
