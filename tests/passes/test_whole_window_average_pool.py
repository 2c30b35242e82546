"""WholeWindowAveragePoolPass on the real MLPerf Tiny models whose final pool covers its whole map.

ResNet-8 (ic) pools 8x8 over an 8x8 map, DS-CNN (kws) 25x5 over 25x5, MobileNet (vww) 3x3 over 3x3:
each becomes a GlobalAveragePool with the same name and output value, and ONNX Runtime's outputs
on the real inputs stay equal. Windows that are not the whole input are refused with a reason.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx_ir.passes.common import ShapeInferencePass

from canonicalize_support import (
    IC_FLOAT,
    KWS_FLOAT,
    VWW_FLOAT,
    image_batch,
    kws_input_float,
    max_relative_difference,
    op_counts,
    run_ort,
)
from edgecomp.passes.canonicalize import WholeWindowAveragePoolPass

CASES = {
    "ic": (IC_FLOAT, lambda: image_batch(32, 1.0)),
    "kws": (KWS_FLOAT, kws_input_float),
    "vww": (VWW_FLOAT, lambda: image_batch(96, 1 / 255)),
}


def _shaped(path) -> ir.Model:
    model = ir.load(path)
    ShapeInferencePass()(model)
    return model


def _pool(model: ir.Model) -> ir.Node:
    (pool,) = [node for node in model.graph if node.op_type == "AveragePool"]
    return pool


@pytest.mark.parametrize("name", sorted(CASES))
def test_whole_window_pool_becomes_global_average_pool(name):
    path, inputs = CASES[name]
    model, reference = _shaped(path), ir.load(path)
    pool = _pool(model)
    pool_name, output_name = pool.name, pool.outputs[0].name
    result = WholeWindowAveragePoolPass()(model)
    assert result.modified is True
    assert op_counts(model)["AveragePool"] == 0
    (global_pool,) = [node for node in model.graph if node.op_type == "GlobalAveragePool"]
    assert (global_pool.name, global_pool.outputs[0].name) == (pool_name, output_name)
    onnx.checker.check_model(ir.serde.serialize_model(model), full_check=True)
    feeds = [{model.graph.inputs[0].name: inputs()}]
    (before,) = run_ort(reference, feeds, optimize=False)
    (after,) = run_ort(model, feeds, optimize=False)
    assert max_relative_difference(before, after) <= 1e-6
    assert np.array_equal(before.argmax(1), after.argmax(1))


@pytest.mark.parametrize(
    ("attributes", "reason"),
    [
        ({"kernel_shape": [4, 4], "strides": [4, 4]}, "kernel_shape [4, 4] is not the whole input [8, 8]"),
        ({"pads": [1, 1, 1, 1]}, "pads are not zero"),
        ({"auto_pad": "SAME_UPPER"}, "auto_pad pads the input"),
        ({"dilations": [2, 2]}, "dilations are not 1"),
    ],
)
def test_other_windows_are_refused(attributes, reason):
    model = _shaped(IC_FLOAT)
    pool = _pool(model)
    for key, value in attributes.items():
        pool.attributes[key] = ir.AttrString(key, value) if isinstance(value, str) else ir.AttrInt64s(key, value)
    pass_ = WholeWindowAveragePoolPass()
    assert pass_(model).modified is False
    assert pass_.refusals == {pool.name: reason}


def test_unknown_spatial_dimensions_are_refused():
    model = ir.load(IC_FLOAT)  # no shape inference: the pool's input has no shape
    pass_ = WholeWindowAveragePoolPass()
    assert pass_(model).modified is False
    assert pass_.refusals == {_pool(model).name: "input rank unknown or not kernel rank + 2"}
