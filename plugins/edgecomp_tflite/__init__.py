"""First-party TFLite backend (registered through the ``edgecomp`` entry-point group)."""
from edgecomp.hookspecs import hookimpl


@hookimpl
def edgecomp_register_backends(register):
    from edgecomp_tflite.backend import TFLiteBackend

    register(TFLiteBackend())
