"""The plugin contract of edgecomp, and nothing else.

Plugins are modules or objects registered under the setuptools entry-point group ``edgecomp``
(``[project.entry-points.edgecomp]`` in a plugin's ``pyproject.toml``). They implement any of the
hooks below, decorated with :data:`hookimpl`. edgecomp always calls hooks with keyword arguments
(pluggy matches them by name), so an implementation may take any subset of a hook's arguments.
No hook is first-result: every implementation is called, in registration order. Hooks only ever
change by gaining arguments, so a plugin written against :data:`PLUGIN_API_VERSION` keeps working;
a hook or argument to be retired is first marked with pluggy's ``warn_on_impl`` for a release.
First-party backends (``plugins/``) use exactly these hooks. ``docs/plugins.md`` documents them.
"""

from __future__ import annotations

from typing import Any, Callable

import pluggy

PLUGIN_API_VERSION = 1
"""Version of this contract; raised only when a hook or argument is added."""

hookspec = pluggy.HookspecMarker("edgecomp")
hookimpl = pluggy.HookimplMarker("edgecomp")


@hookspec
def edgecomp_register_backends(register: Callable[[Any], None]) -> None:
    """Register backend objects.

    Called once per process, the first time the plugin manager is asked for backends.

    Args:
        register: call ``register(backend)`` once per backend; ``backend`` satisfies
            :class:`edgecomp.backend.Backend` (``name``, ``description``, ``support``,
            ``legalize``, ``lower``). Two backends with the same name are a
            :class:`~edgecomp.errors.PluginError`.

    Returns:
        None.
    """


@hookspec
def edgecomp_register_targets(register: Callable[[str, Any], None]) -> None:
    """Register target description files shipped by a plugin.

    Called once per process, the first time targets are listed or looked up.

    Args:
        register: call ``register(name, path)`` with a target name and the path of its TOML file
            (same keys as ``targets/README.md``). Names clash with built-in targets are a
            :class:`~edgecomp.errors.PluginError`.

    Returns:
        None.
    """


@hookspec
def edgecomp_register_commands(cli: Any) -> None:
    """Add subcommands to the ``edgecomp`` command-line interface.

    Called once per process when the CLI is built.

    Args:
        cli: the top-level ``click.Group``; add commands with ``@cli.command()``.

    Returns:
        None.
    """
