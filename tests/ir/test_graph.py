"""Tests of the NetworkX view: edges, topological order, cycles (edgecomp/ir/graph.py)."""

from __future__ import annotations

import pathlib

import networkx as nx
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper
from onnx_ir.passes.common import ShapeInferencePass

from edgecomp.errors import ModelError
from edgecomp.ir.graph import consumed_values, find_cycle, to_networkx, topological_order

ROOT = pathlib.Path(__file__).resolve().parents[2]
MNIST = ROOT / "examples" / "mnist" / "mnist-8.onnx"
MLPERF = ROOT / "tests" / "assets" / "mlperf_tiny"
REAL_MODELS = [
    MNIST,
    MLPERF / "kws" / "kws_ref_model_float32.onnx",
    MLPERF / "vww" / "vww_96_float.onnx",
    MLPERF / "ic" / "pretrainedResnet.onnx",
    MLPERF / "ad" / "ad01_fp32.onnx",
]


def load(path: pathlib.Path) -> ir.Model:
    return ShapeInferencePass()(ir.load(path)).model


def model_from(nodes, inputs, outputs, initializers=(), opset=17) -> ir.Model:
    """An IR model from onnx.helper parts; node order is kept as given (even if not sorted)."""
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    return ir.serde.deserialize_model(proto)


def vector(name: str) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, [4])


# ---------------------------------------------------------------------------------------------
# to_networkx


def test_mnist_view_has_one_edge_per_producer_consumer_tensor():
    model = load(MNIST)
    view = to_networkx(model)
    assert isinstance(view, nx.MultiDiGraph)
    assert list(view.nodes) == [node.name for node in model.graph]
    assert view.nodes["Convolution28"]["op_type"] == "Conv"
    assert view.nodes["Convolution28"]["node"] is model.graph.node(1)
    # 12 nodes; every node output is read by exactly one node, except the graph output: 11 edges.
    assert view.number_of_edges() == 11
    assert ("Times212_reshape1", "Times212", "Parameter193_reshape1") in view.edges(keys=True)
    assert ("Convolution28", "Plus30", "Convolution28_Output_0") in view.edges(keys=True)
    for producer, consumer, key, value in view.edges(keys=True, data="value"):
        assert value.name == key
        assert value.producer() is view.nodes[producer]["node"]
        assert view.nodes[consumer]["node"] in value.consumers()
    # initializers and graph inputs have no producer, so no edge: the Convs have no in-edge.
    assert view.in_degree("Convolution28") == 0


def test_two_consumers_give_two_edges_and_a_repeated_input_one():
    model = model_from(
        [
            helper.make_node("Relu", ["x"], ["r"], name="R"),
            helper.make_node("Mul", ["r", "r"], ["m"], name="M"),
            helper.make_node("Neg", ["r"], ["n"], name="N"),
        ],
        [vector("x")],
        [vector("m"), vector("n")],
    )
    view = to_networkx(model)
    assert sorted(view.edges(keys=True)) == [("R", "M", "r"), ("R", "N", "r")]


def test_duplicate_or_empty_node_names_are_model_errors():
    nodes = [helper.make_node("Relu", ["x"], ["a"], name="same"), helper.make_node("Neg", ["a"], ["y"], name="same")]
    with pytest.raises(ModelError, match="'same' is used twice"):
        to_networkx(model_from(nodes, [vector("x")], [vector("y")]))
    nodes = [helper.make_node("Relu", ["x"], ["y"], name="")]
    with pytest.raises(ModelError, match="has no name"):
        to_networkx(model_from(nodes, [vector("x")], [vector("y")]))


# ---------------------------------------------------------------------------------------------
# topological_order


@pytest.mark.parametrize("path", REAL_MODELS, ids=lambda p: p.stem)
def test_real_models_every_node_after_its_producers_and_deterministic(path):
    model = load(path)
    order = topological_order(model)
    assert len(order) == len(model.graph) and len({id(node) for node in order}) == len(order)
    position = {id(node): step for step, node in enumerate(order)}
    for step, node in enumerate(order):
        for value in node.inputs:
            if value is not None and value.producer() is not None:
                assert position[id(value.producer())] < step, (node.name, value.name)
    assert [node.name for node in topological_order(model)] == [node.name for node in order]
    # the files are stored sorted, and the tie-break keeps the graph's own order
    assert [node.name for node in order] == [node.name for node in model.graph]


def test_unsorted_graph_is_sorted_with_ties_broken_by_graph_order():
    # listed out of order: Add needs Q and P; Q and P are both ready at once, Q comes first in the graph
    model = model_from(
        [
            helper.make_node("Add", ["p", "q"], ["y"], name="ADD"),
            helper.make_node("Neg", ["x"], ["q"], name="Q"),
            helper.make_node("Relu", ["x"], ["p"], name="P"),
            helper.make_node("Abs", ["x"], ["z"], name="Z"),
        ],
        [vector("x")],
        [vector("y"), vector("z")],
    )
    # Q (index 1) and P (index 2) ready at step 0; ADD (index 0) is ready once both ran and precedes Z (index 3)
    assert [node.name for node in topological_order(model)] == ["Q", "P", "ADD", "Z"]


def test_value_captured_by_a_subgraph_orders_its_producer_first():
    then_branch = helper.make_graph(
        [helper.make_node("Identity", ["p"], ["t"], name="T")], "then", [], [vector("t")]
    )
    else_branch = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["e"], name="E")], "else", [], [vector("e")]
    )
    model = model_from(
        [
            helper.make_node("If", ["c"], ["y"], name="IF", then_branch=then_branch, else_branch=else_branch),
            helper.make_node("Relu", ["x"], ["p"], name="P"),
        ],
        [helper.make_tensor_value_info("c", TensorProto.BOOL, []), vector("x")],
        [vector("y")],
    )
    if_node = model.graph.node(0)
    names = [value.name for value in consumed_values(if_node)]
    assert names[0] == "c" and sorted(names[1:]) == ["p", "x"]  # inputs first, then captures
    assert [node.name for node in topological_order(model)] == ["P", "IF"]
    assert ("P", "IF", "p") in to_networkx(model).edges(keys=True)


# ---------------------------------------------------------------------------------------------
# cycles


def cyclic_model() -> ir.Model:
    # A reads B's output and B reads A's output; C hangs off the cycle.
    return model_from(
        [
            helper.make_node("Add", ["x", "b"], ["a"], name="A"),
            helper.make_node("Relu", ["a"], ["b"], name="B"),
            helper.make_node("Neg", ["a"], ["y"], name="C"),
        ],
        [vector("x")],
        [vector("y")],
    )


def test_cycle_is_found_and_topological_order_raises_naming_a_node_on_it():
    model = cyclic_model()
    cycle = find_cycle(model)
    assert cycle is not None and sorted(cycle) == ["A", "B"]
    assert find_cycle(model) == cycle  # deterministic
    with pytest.raises(ModelError, match=r"cycle through node '(A|B)'") as raised:
        topological_order(model)
    assert raised.value.exit_code == 3
    assert "'C'" not in str(raised.value)


def test_self_loop_is_a_cycle_of_one_node():
    model = model_from(
        [helper.make_node("Add", ["x", "s"], ["s"], name="S"), helper.make_node("Neg", ["s"], ["y"], name="N")],
        [vector("x")],
        [vector("y")],
    )
    assert find_cycle(model) == ["S"]
    with pytest.raises(ModelError, match="'S'"):
        topological_order(model)


def test_acyclic_real_model_has_no_cycle():
    assert find_cycle(load(MNIST)) is None
