"""Pass infrastructure: onnx-ir passes run under a manager with instruments.

Passes are ``onnx_ir.passes.InPlacePass`` / ``FunctionalPass`` subclasses (onnx-ir
``passes/_pass_infra.py``): a pass declares whether it mutates its input, may check
``requires``/``ensures`` invariants, and returns ``PassResult(model, modified)``. This module adds
what onnx-ir leaves to the caller: instruments around every pass (timing, IR dumps; the TVM
``ir/instrument.py`` style) so that passes themselves contain no logging or timing code.
"""

from __future__ import annotations

import dataclasses
import logging
import pathlib
import time
from typing import Iterable, Protocol, Sequence

import onnx_ir as ir
from onnx_ir.passes import FunctionalPass, InPlacePass, PassBase, PassResult

__all__ = [
    "FunctionalPass",
    "InPlacePass",
    "PassBase",
    "PassResult",
    "PassInstrument",
    "PassTiming",
    "IRDump",
    "PassManager",
]

logger = logging.getLogger(__name__)


class PassInstrument(Protocol):
    """Called around every pass the :class:`PassManager` runs."""

    def before_pass(self, pass_: PassBase, model: ir.Model) -> None: ...

    def after_pass(self, pass_: PassBase, result: PassResult) -> None: ...


@dataclasses.dataclass
class PassTiming:
    """Records the wall-clock seconds of every pass run, in run order.

    Attributes:
        records: list of (pass name, seconds, modified) tuples.
    """

    records: list[tuple[str, float, bool]] = dataclasses.field(default_factory=list)
    _start: float = 0.0

    def before_pass(self, pass_: PassBase, model: ir.Model) -> None:
        self._start = time.perf_counter()

    def after_pass(self, pass_: PassBase, result: PassResult) -> None:
        seconds = time.perf_counter() - self._start
        self.records.append((type(pass_).__name__, seconds, bool(result.modified)))
        logger.debug("pass %s: %.4f s, modified=%s", type(pass_).__name__, seconds, result.modified)


@dataclasses.dataclass
class IRDump:
    """Writes the model after every pass as ``NN-PassName.onnx`` into ``directory`` (debugging aid).

    The dumps are for humans inspecting a compile (``edgecomp compile --dump-ir DIR``); they are
    not artifacts and are not written atomically.
    """

    directory: pathlib.Path
    _count: int = 0

    def before_pass(self, pass_: PassBase, model: ir.Model) -> None:
        if self._count == 0:
            self.directory.mkdir(parents=True, exist_ok=True)
            ir.save(model, self.directory / "00-input.onnx")

    def after_pass(self, pass_: PassBase, result: PassResult) -> None:
        self._count += 1
        ir.save(result.model, self.directory / f"{self._count:02d}-{type(pass_).__name__}.onnx")


class PassManager:
    """Runs passes in order, each under every instrument.

    Args:
        passes: the passes, run once each in order.
        instruments: objects with ``before_pass``/``after_pass`` (see :class:`PassInstrument`).

    Calling the manager returns ``PassResult(model, modified)`` where ``modified`` is true when any
    pass modified the model. Errors raised by passes (``onnx_ir.passes.PassError`` and its
    pre/postcondition errors, or :class:`edgecomp.errors.EdgecompError`) propagate unchanged.
    """

    def __init__(self, passes: Sequence[PassBase], instruments: Iterable[PassInstrument] = ()) -> None:
        self.passes = list(passes)
        self.instruments = list(instruments)

    def __call__(self, model: ir.Model) -> PassResult:
        modified = False
        for pass_ in self.passes:
            for instrument in self.instruments:
                instrument.before_pass(pass_, model)
            result = pass_(model)
            for instrument in self.instruments:
                instrument.after_pass(pass_, result)
            model = result.model
            modified = modified or result.modified
        return PassResult(model, modified)
