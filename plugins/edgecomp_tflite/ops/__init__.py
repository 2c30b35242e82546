"""Op lowerings: ONNX op type -> function writing TFLite operators, plus its support check.

Each lowering is registered with :func:`register` and has two parts:

- ``check(info, node) -> str | None``: run by ``support()`` before any work, on the IR only
  (:class:`~edgecomp_tflite.context.GraphInfo`); returns why this node cannot be lowered
  (attribute value, non-constant weight, rank ...) or None.
- ``lower(ctx, node)``: writes the operators through the
  :class:`~edgecomp_tflite.context.LoweringContext`, which owns layouts and element types, so the
  same function serves float32 and (through :mod:`edgecomp_tflite.tensor_types`) INT8.

Modules by concern: :mod:`.conv` (Conv, ConvTranspose), :mod:`.pool`, :mod:`.dense` (Gemm,
MatMul), :mod:`.elementwise` (arithmetic and activations), :mod:`.shape` (Reshape family,
Transpose, Concat, Slice, Pad), :mod:`.reduce` (Softmax, ReduceMean), :mod:`.resize`,
:mod:`.qdq` (QuantizeLinear/DequantizeLinear, INT8 extension point). Shared helpers:
:mod:`.spatial` (padding), the context (layout changes, constants, activation fusion).
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import onnx_ir as ir

from edgecomp_tflite.context import GraphInfo, LoweringContext

Check = Callable[[GraphInfo, ir.Node], "str | None"]
Lower = Callable[[LoweringContext, ir.Node], None]


@dataclasses.dataclass(frozen=True)
class OpLowering:
    """One registered ONNX op type: its lowering and its support check."""

    op_type: str
    lower: Lower
    check: Check


REGISTRY: dict[str, OpLowering] = {}


def _no_check(info: GraphInfo, node: ir.Node) -> None:
    return None


def register(*op_types: str, check: Check | None = None) -> Callable[[Lower], Lower]:
    """Decorator registering ``lower`` for ONNX ``op_types`` (default domain) with ``check``."""

    def decorate(lower: Lower) -> Lower:
        for op_type in op_types:
            if op_type in REGISTRY:
                raise ValueError(f"two TFLite lowerings for ONNX {op_type}")
            REGISTRY[op_type] = OpLowering(op_type, lower, check or _no_check)
        return lower

    return decorate


def load_all() -> dict[str, OpLowering]:
    """Import every lowering module (registering them) and return the registry."""
    from edgecomp_tflite.ops import (  # noqa: F401
        conv,
        dense,
        elementwise,
        pool,
        qdq,
        reduce,
        resize,
        shape,
    )

    return REGISTRY
