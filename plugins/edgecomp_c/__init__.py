"""First-party ``c`` backend: standalone C99 with INT8 kernels and a statically planned tensor arena
(registered through the ``edgecomp`` entry-point group), and the ``edgecomp cmake-module`` command."""
from edgecomp.hookspecs import hookimpl


@hookimpl
def edgecomp_register_backends(register):
    from edgecomp_c.backend import CBackend

    register(CBackend())


@hookimpl
def edgecomp_register_commands(cli):
    from edgecomp_c.commands import cmake_module

    cli.add_command(cmake_module)
