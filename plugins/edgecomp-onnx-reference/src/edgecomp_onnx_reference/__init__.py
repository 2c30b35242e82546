"""edgecomp plugin ``onnx-reference``: registers the backend and the ``reference-host`` target.

Found by edgecomp through the entry point ``onnx-reference = "edgecomp_onnx_reference"`` in the
``edgecomp`` group (see this package's pyproject.toml). The backend module is imported only when
edgecomp asks for backends.
"""

from importlib.resources import files

from edgecomp.hookspecs import hookimpl


@hookimpl
def edgecomp_register_backends(register):
    from edgecomp_onnx_reference.backend import OnnxReferenceBackend

    register(OnnxReferenceBackend())


@hookimpl
def edgecomp_register_targets(register):
    register("reference-host", files("edgecomp_onnx_reference") / "targets" / "reference-host.toml")
