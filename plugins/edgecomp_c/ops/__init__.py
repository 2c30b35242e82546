"""Op builders: one function per TFLite builtin, :class:`~edgecomp_c.program.OpView` ->
:class:`~edgecomp_c.program.KernelCall` (the kernel's parameters computed exactly as the TFLite
reference kernel's ``Prepare`` computes them).

A builder raises :class:`~edgecomp_c.program.Unlowerable` with the reason for a combination of
types or options its kernel does not implement. Builders register with :func:`builder`; modules
are imported by :func:`builders`.
"""

from __future__ import annotations

import importlib
from typing import Callable

from edgecomp_c.program import KernelCall, OpView

Builder = Callable[[OpView], KernelCall]

_BUILDERS: dict[str, Builder] = {}
_MODULES = ("conv", "pool", "elementwise", "softmax", "shape")


def builder(*names: str) -> Callable[[Builder], Builder]:
    """Register the decorated function as the builder of the TFLite builtins ``names``."""

    def register(function: Builder) -> Builder:
        for name in names:
            if name in _BUILDERS:
                raise RuntimeError(f"two builders for {name}")
            _BUILDERS[name] = function
        return function

    return register


def builders() -> dict[str, Builder]:
    """Builtin name -> builder, every module of this package loaded."""
    for module in _MODULES:
        try:
            importlib.import_module(f"edgecomp_c.ops.{module}")
        except ModuleNotFoundError as error:
            if error.name != f"edgecomp_c.ops.{module}":
                raise
    return dict(_BUILDERS)
