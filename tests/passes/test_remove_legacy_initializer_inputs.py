"""RemoveLegacyInitializerInputsPass on the real IR 3 mnist-8 model and on IR 7 models."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir

from canonicalize_support import KWS_FLOAT, load_mnist, mnist_feeds, mnist_images, run_ort, serialized
from edgecomp.passes.canonicalize import RemoveLegacyInitializerInputsPass


def test_mnist_ir3_weight_inputs_become_plain_initializers():
    model = load_mnist(remove_legacy_inputs=False)
    reference = load_mnist(remove_legacy_inputs=False)
    assert model.ir_version == 3
    assert len(model.graph.inputs) == 9  # Input3 and the 8 initializers, as IR 3 requires

    result = RemoveLegacyInitializerInputsPass()(model)

    assert result.modified is True
    assert [value.name for value in model.graph.inputs] == ["Input3"]
    assert len(model.graph.initializers) == 8
    assert model.ir_version == 4
    onnx.checker.check_model(ir.serde.serialize_model(model), full_check=True)
    # Nothing is computed differently: outputs on the 2000 real eval digits are bit-identical.
    x, _ = mnist_images("eval")
    (before,) = run_ort(reference, mnist_feeds(x))
    (after,) = run_ort(model, mnist_feeds(x))
    np.testing.assert_array_equal(before, after)


def test_ir7_model_left_alone():
    model = ir.load(KWS_FLOAT)
    before = serialized(model)
    result = RemoveLegacyInitializerInputsPass()(model)
    assert result.modified is False
    assert serialized(model) == before


def test_ir4_initializer_inputs_stay_overridable():
    # From IR 4 on, an initializer listed as an input is an overridable default: keep it.
    model = load_mnist(remove_legacy_inputs=False)
    model.ir_version = 7
    before = serialized(model)
    result = RemoveLegacyInitializerInputsPass()(model)
    assert result.modified is False
    assert serialized(model) == before
    assert len(model.graph.inputs) == 9
