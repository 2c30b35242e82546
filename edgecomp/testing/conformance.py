"""The backend conformance kit: a test class every backend plugin subclasses.

Usage, in a plugin's test suite::

    from edgecomp.testing.conformance import BackendConformance

    class TestMyBackend(BackendConformance):
        backend_name = "my-backend"          # as registered through edgecomp_register_backends
        target = "host-x86_64"               # a target name or .toml path the backend serves
        tolerance = {"none": 1e-4, "naive": 0.02}   # max |artifact - ONNX Runtime| / output range

It compiles a small real model (mnist-8 with 16 real digits, shipped in ``edgecomp/testing/data``)
and small synthetic models built from its real weights, through the public pipeline
(:func:`edgecomp.compile.compile_model`), and checks that

- the backend is registered and its support report names only nodes the model has;
- a model it reports unsupported is refused cleanly: :class:`~edgecomp.errors.UnsupportedError`
  naming the node, and no output folder;
- a model it supports compiles, and the artifact is byte-identical across two compiles;
- the artifact's host runner (when it has one) agrees with ONNX Runtime running the IR the backend
  was given (float model, or the QDQ simulation for ``naive``) within :attr:`tolerance`.
"""

from __future__ import annotations

import importlib.resources
import pathlib
from typing import ClassVar

import numpy as np
import onnx
import onnx.helper
import onnx.numpy_helper
import pytest

from edgecomp.compile import CompileOptions, compile_model
from edgecomp.errors import UnsupportedError
from edgecomp.ir.load import load_model
from edgecomp.ir.run import make_session
from edgecomp.plugins import backends
from edgecomp.targets import get_target


def kit_data(name: str) -> pathlib.Path:
    """Path of a data file shipped with the kit (``mnist-8.onnx``, ``mnist_digits_16.npz``)."""
    return pathlib.Path(str(importlib.resources.files("edgecomp.testing") / "data" / name))


def dense_sigmoid_model(path: pathlib.Path) -> pathlib.Path:
    """A synthetic 2-D model with mnist-8's real dense weights: Flatten -> Gemm -> Sigmoid -> [1,10]."""
    mnist = onnx.load(kit_data("mnist-8.onnx"))
    weights = {t.name: onnx.numpy_helper.to_array(t) for t in mnist.graph.initializer}
    gemm_weight = weights["Parameter193"].reshape(256, 10).astype(np.float32)
    bias = weights["Parameter194"].reshape(10).astype(np.float32)
    graph = onnx.helper.make_graph(
        [
            onnx.helper.make_node("Gemm", ["x", "w", "b"], ["logits"], name="dense"),
            onnx.helper.make_node("Sigmoid", ["logits"], ["y"], name="sigmoid"),
        ],
        "dense_sigmoid",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 256])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 10])],
        [onnx.numpy_helper.from_array(gemm_weight, "w"), onnx.numpy_helper.from_array(bias, "b")],
    )
    onnx.save(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 13)]), path)
    return path


class BackendConformance:
    """Subclass in a test module; set :attr:`backend_name` (and optionally the rest)."""

    backend_name: ClassVar[str] = ""
    target: ClassVar[str] = "host-x86_64"
    tolerance: ClassVar[dict[str, float]] = {"none": 1e-4, "naive": 0.02}

    @pytest.fixture
    def mnist_data(self, tmp_path) -> pathlib.Path:
        digits = np.load(kit_data("mnist_digits_16.npz"))
        path = tmp_path / "digits.npz"
        np.savez(path, x=digits["x"].astype(np.float32), y=digits["y"])
        return path

    @pytest.fixture
    def dense_data(self, tmp_path) -> pathlib.Path:
        digits = np.load(kit_data("mnist_digits_16.npz"))["x"].astype(np.float32)
        path = tmp_path / "dense.npz"
        np.savez(path, x=(digits[:, 0, 6:22, 6:22].reshape(16, 256) / 255.0).astype(np.float32))  # real pixels
        return path

    def _compile(self, model: pathlib.Path, data: pathlib.Path, quantize: str, output: pathlib.Path):
        return compile_model(
            CompileOptions(model=str(model), target=self.target, backend=self.backend_name, quantize=quantize,
                           calibration=str(data), output=str(output))
        )

    def _cases(self, tmp_path, mnist_data, dense_data):
        return [(kit_data("mnist-8.onnx"), mnist_data), (dense_sigmoid_model(tmp_path / "dense_sigmoid.onnx"), dense_data)]

    def test_backend_is_registered(self):
        assert self.backend_name in backends(), f"backend {self.backend_name!r} is not registered (entry point group 'edgecomp')"

    @pytest.mark.parametrize("quantize", ["none", "naive"])
    def test_support_report_names_real_nodes(self, quantize, tmp_path, mnist_data, dense_data):
        backend = backends()[self.backend_name]
        for model_path, _ in self._cases(tmp_path, mnist_data, dense_data):
            model = load_model(model_path)
            report = backend.support(model, get_target(self.target))
            names = {node.name for node in model.graph} | {"*"}
            assert report.backend == self.backend_name
            for entry in report.unsupported:
                assert entry.node in names, f"support() names {entry.node!r}, which is not a node of {model_path.name}"
                assert entry.reason.strip(), "every unsupported entry needs a reason"

    @pytest.mark.parametrize("quantize", ["none", "naive"])
    def test_compiles_deterministically_or_refuses_cleanly(self, quantize, tmp_path, mnist_data, dense_data):
        backend = backends()[self.backend_name]
        for index, (model_path, data) in enumerate(self._cases(tmp_path, mnist_data, dense_data)):
            report = backend.support(load_model(model_path), get_target(self.target))
            first, second = tmp_path / f"a{index}", tmp_path / f"b{index}"
            if not report.ok:
                with pytest.raises(UnsupportedError, match=report.unsupported[0].node if report.unsupported[0].node != "*" else ""):
                    self._compile(model_path, data, quantize, first)
                assert not first.exists(), "a refused compile must leave no output folder"
                continue
            self._compile(model_path, data, quantize, first)
            self._compile(model_path, data, quantize, second)
            files = sorted(p.name for p in first.iterdir())
            assert files == sorted(p.name for p in second.iterdir())
            for name in files:
                assert (first / name).read_bytes() == (second / name).read_bytes(), f"{name} differs between two compiles"

    @pytest.mark.parametrize("quantize", ["none", "naive"])
    def test_outputs_agree_with_onnxruntime(self, quantize, tmp_path, mnist_data, dense_data):
        from edgecomp.backend import LowerOptions
        from edgecomp.ir.load import to_bytes
        from edgecomp.passes.base import PassManager
        from edgecomp.passes.canonicalize import canonicalization_passes
        from edgecomp.passes.quantize.calibration_data import input_specs, open_dataset
        from edgecomp.passes.quantize.naive import quantize_naive
        from edgecomp.plugins import get_backend

        backend = backends()[self.backend_name]
        target = get_target(self.target)
        for model_path, data in self._cases(tmp_path, mnist_data, dense_data):
            model = PassManager(canonicalization_passes(fold_weight_dequantize=quantize == "none"))(load_model(model_path)).model
            if not backend.support(model, target).ok:
                continue
            dataset = open_dataset(data, input_specs(model))
            batches = list(dataset.batches())
            float_session = make_session(to_bytes(model), optimize=False)
            float_outputs = tuple(tuple(float_session.run(None, dict(batch))) for batch in batches)
            if quantize == "naive":
                quantize_naive(model, batches, "minmax")
            legalize = backend.legalize(target)
            if legalize:
                model = PassManager(legalize)(model).model  # as the pipeline does before lowering
            options = LowerOptions(
                quantize=quantize, verification_inputs=tuple(batches), reference_outputs=float_outputs,
                model_name=model_path.stem, get_backend=get_backend,
            )  # as the pipeline passes them
            artifact = backend.lower(model, target, options)
            given = to_bytes(artifact.model or model)  # the IR the artifact holds: float, or the QDQ simulation
            if artifact.runner is None:
                pytest.skip(f"backend {self.backend_name!r} has no host runner")
            reference = make_session(given, optimize=False)
            for batch in batches:
                for expected, actual in zip(reference.run(None, dict(batch)), artifact.runner(batch)):
                    scale = max(float(np.ptp(expected)), 1e-12)
                    error = float(np.max(np.abs(np.asarray(actual, np.float64) - expected))) / scale
                    assert error <= self.tolerance[quantize], f"{model_path.name} ({quantize}): error {error:.3g} of the output range"
