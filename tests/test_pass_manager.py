"""PassManager with instruments: timing records and IR dumps around every pass, none inside passes."""

from __future__ import annotations

import onnx

from realdata import MNIST_MODEL

from edgecomp.ir.load import load_model
from edgecomp.passes.base import InPlacePass, IRDump, PassManager, PassResult, PassTiming


class RenameFirstNode(InPlacePass):
    def call(self, model):
        first = next(iter(model.graph))
        first.name = first.name + "_renamed"
        return PassResult(model, modified=True)


class DoNothing(InPlacePass):
    def call(self, model):
        return PassResult(model, modified=False)


def test_timing_and_dump_instruments(tmp_path):
    timing = PassTiming()
    dump = IRDump(tmp_path / "dump")
    result = PassManager([DoNothing(), RenameFirstNode()], [timing, dump])(load_model(MNIST_MODEL))
    assert result.modified is True
    assert [(name, modified) for name, _, modified in timing.records] == [("DoNothing", False), ("RenameFirstNode", True)]
    assert all(seconds >= 0 for _, seconds, _ in timing.records)
    files = sorted(p.name for p in (tmp_path / "dump").iterdir())
    assert files == ["00-input.onnx", "01-DoNothing.onnx", "02-RenameFirstNode.onnx"]
    assert onnx.load(tmp_path / "dump" / "02-RenameFirstNode.onnx").graph.node[0].name.endswith("_renamed")
    assert not onnx.load(tmp_path / "dump" / "01-DoNothing.onnx").graph.node[0].name.endswith("_renamed")


def test_unmodified_pipeline_reports_unmodified():
    assert PassManager([DoNothing(), DoNothing()])(load_model(MNIST_MODEL)).modified is False
