"""DropoutToIdentityPass (then onnx-ir's IdentityEliminationPass) on mnist-8 with Dropouts inserted.

None of the real models has a Dropout (exporters drop them), so the test models are mnist-8 with
its real weights and a Dropout inserted after its first ReLU and after its logits (graph output).
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
from onnx_ir.passes.common import IdentityEliminationPass

from canonicalize_support import (
    VWW_FLOAT,
    add_initializer,
    insert_after,
    load_mnist,
    mnist_feeds,
    mnist_images,
    op_counts,
    run_ort,
    serialized,
)
from edgecomp.passes.canonicalize import DropoutToIdentityPass


def _mnist_with_dropouts() -> ir.Model:
    model = load_mnist()
    ratio = add_initializer(model, "dropout_ratio", np.array(0.5, np.float32))
    insert_after(model, "ReLU32_Output_0", "Dropout", [ratio], name="dropout_hidden")
    insert_after(model, "Plus214_Output_0", "Dropout", [ratio], name="dropout_logits", num_outputs=2)
    return model


def test_inference_dropouts_are_removed():
    model = _mnist_with_dropouts()
    reference = load_mnist()
    assert op_counts(model)["Dropout"] == 2
    assert [value.name for value in model.graph.outputs] == ["dropout_logits_output_0"]

    result = DropoutToIdentityPass()(model)

    assert result.modified is True
    assert op_counts(model)["Dropout"] == 0
    assert op_counts(model)["Identity"] == 2
    IdentityEliminationPass()(model)
    assert op_counts(model)["Identity"] == 0
    # The graph output keeps its name (onnx-ir renames the Add output to it).
    assert [value.name for value in model.graph.outputs] == ["dropout_logits_output_0"]
    assert model.graph.outputs[0].producer().op_type == "Add"
    onnx.checker.check_model(ir.serde.serialize_model(model), full_check=True)
    # Tolerance 0 on the 2000 real eval digits: inference Dropout is the identity.
    x, _ = mnist_images("eval")
    (before,) = run_ort(reference, mnist_feeds(x))
    (after,) = run_ort(model, mnist_feeds(x))
    np.testing.assert_array_equal(before, after)


def test_dropout_with_used_mask_is_refused():
    model = load_mnist()
    ratio = add_initializer(model, "dropout_ratio", np.array(0.5, np.float32))
    dropout = insert_after(model, "ReLU32_Output_0", "Dropout", [ratio], name="dropout_hidden", num_outputs=2)
    model.graph.outputs.append(dropout.outputs[1])  # the mask is read
    before = serialized(model)
    dropout_pass = DropoutToIdentityPass()
    assert dropout_pass(model).modified is False
    assert serialized(model) == before
    assert dropout_pass.refusals == {"dropout_hidden": "mask output is used"}


def test_training_mode_dropout_is_refused():
    model = load_mnist()
    ratio = add_initializer(model, "dropout_ratio", np.array(0.5, np.float32))
    training = add_initializer(model, "training_mode", np.array(True))
    insert_after(model, "ReLU32_Output_0", "Dropout", [ratio, training], name="dropout_hidden")
    before = serialized(model)
    dropout_pass = DropoutToIdentityPass()
    assert dropout_pass(model).modified is False
    assert serialized(model) == before
    assert dropout_pass.refusals == {"dropout_hidden": "training_mode is true"}


def test_model_without_dropout_left_alone():
    model = ir.load(VWW_FLOAT)
    before = serialized(model)
    assert DropoutToIdentityPass()(model).modified is False
    assert serialized(model) == before
