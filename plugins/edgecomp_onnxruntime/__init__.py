"""First-party ONNX Runtime backend (registered through the ``edgecomp`` entry-point group)."""
from edgecomp.hookspecs import hookimpl


@hookimpl
def edgecomp_register_backends(register):
    from edgecomp_onnxruntime.backend import OnnxRuntimeBackend

    register(OnnxRuntimeBackend())
