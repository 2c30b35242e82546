"""First-party C-array backend (registered through the ``edgecomp`` entry-point group)."""
from edgecomp.hookspecs import hookimpl


@hookimpl
def edgecomp_register_backends(register):
    from edgecomp_c_array.backend import CArrayBackend

    register(CArrayBackend())
