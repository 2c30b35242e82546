"""load_model: validation errors name the file and the node/tensor; old opsets are converted."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.numpy_helper
import pytest

from realdata import MNIST_MODEL
from edgecomp.errors import ModelError
from edgecomp.ir.load import MIN_OPSET, load_model


def _mnist_proto() -> onnx.ModelProto:
    return onnx.load(MNIST_MODEL)


def _save(proto: onnx.ModelProto, path) -> str:
    path.write_bytes(proto.SerializeToString())
    return str(path)


def test_mnist_loads_converted_to_opset_13_with_weights_not_inputs():
    model = load_model(MNIST_MODEL)
    assert model.opset_imports[""] == MIN_OPSET  # the file says opset 8
    assert [v.name for v in model.graph.inputs] == ["Input3"]  # IR 3 listed 8 weights as inputs too
    assert list(model.graph.outputs[0].shape) == [1, 10]
    assert len({node.name for node in model.graph}) == len(list(model.graph))


def test_not_onnx(tmp_path):
    path = tmp_path / "notes.onnx"
    path.write_text("this is a text file, not a model\n")
    with pytest.raises(ModelError, match="notes.onnx: not an ONNX model"):
        load_model(path)


def test_truncated(tmp_path):
    data = MNIST_MODEL.read_bytes()
    path = tmp_path / "truncated.onnx"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError, match="truncated.onnx: not an ONNX model or truncated"):
        load_model(path)


def test_missing_initializer_names_node_and_tensor(tmp_path):
    proto = _mnist_proto()
    kept = [t for t in proto.graph.initializer if t.name != "Parameter5"]
    del proto.graph.initializer[:]
    proto.graph.initializer.extend(kept)
    inputs = [v for v in proto.graph.input if v.name != "Parameter5"]
    del proto.graph.input[:]
    proto.graph.input.extend(inputs)
    with pytest.raises(ModelError, match="node 'Convolution28': input 'Parameter5' is not a graph input, initializer or node output"):
        load_model(_save(proto, tmp_path / "missing.onnx"))


def test_cycle_names_a_node(tmp_path):
    proto = _mnist_proto()
    conv = next(n for n in proto.graph.node if n.name == "Convolution110")
    conv.input[0] = "Plus112_Output_0"  # Conv110 -> Plus112 -> Conv110
    with pytest.raises(ModelError, match="cycle through node '(Convolution110|Plus112|ReLU114|Pooling160)"):
        load_model(_save(proto, tmp_path / "cycle.onnx"))


def test_unknown_domain(tmp_path):
    proto = _mnist_proto()
    proto.graph.node[3].domain = "com.example.custom"
    with pytest.raises(ModelError, match="node 'ReLU32': unknown operator domain 'com.example.custom'"):
        load_model(_save(proto, tmp_path / "domain.onnx"))


def test_unknown_operator(tmp_path):
    proto = _mnist_proto()
    proto.graph.node[3].op_type = "Frobnicate"
    with pytest.raises(ModelError, match="node 'ReLU32': unknown operator 'Frobnicate'"):
        load_model(_save(proto, tmp_path / "op.onnx"))


def test_external_data_outside_model_folder_is_refused(tmp_path):
    outside = tmp_path / "secret.bin"
    outside.write_bytes(b"\0" * 800)
    folder = tmp_path / "model"
    folder.mkdir()
    proto = _mnist_proto()
    tensor = next(t for t in proto.graph.initializer if t.name == "Parameter5")
    tensor.ClearField("raw_data")
    tensor.ClearField("float_data")
    tensor.data_location = onnx.TensorProto.EXTERNAL
    entry = tensor.external_data.add()
    entry.key, entry.value = "location", "../secret.bin"
    with pytest.raises(ModelError, match="tensor 'Parameter5' points to external data '../secret.bin' outside the model's folder"):
        load_model(_save(proto, folder / "m.onnx"))


def test_external_data_inside_folder_is_read(tmp_path):
    proto = _mnist_proto()
    for tensor in proto.graph.initializer:  # CNTK wrote float_data; external data needs raw_data
        tensor.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(tensor), tensor.name))
    onnx.external_data_helper.convert_model_to_external_data(proto, all_tensors_to_one_file=True, location="weights.bin", size_threshold=0)
    onnx.save_model(proto, str(tmp_path / "m.onnx"))
    assert (tmp_path / "weights.bin").stat().st_size > 20000
    external = load_model(tmp_path / "m.onnx").graph.initializers
    embedded = load_model(MNIST_MODEL).graph.initializers
    assert sorted(external) == sorted(embedded)
    for name in embedded:
        assert np.array_equal(external[name].const_value.numpy(), embedded[name].const_value.numpy()), name
