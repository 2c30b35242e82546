"""The plugin manager: loads plugins from the ``edgecomp`` entry-point group and collects what they register.

Environment switches:
    ``EDGECOMP_LOAD_PLUGINS``: comma-separated entry-point names; when set, only those plugins are
        loaded (an empty string loads none). Useful to isolate a broken third-party plugin.
"""

from __future__ import annotations

import functools
import importlib.metadata
import os
from typing import Any

import pluggy

from edgecomp import hookspecs
from edgecomp.backend import Backend
from edgecomp.errors import PluginError

ENTRY_POINT_GROUP = "edgecomp"


def _entry_points() -> list[importlib.metadata.EntryPoint]:
    selected = os.environ.get("EDGECOMP_LOAD_PLUGINS")
    points = sorted(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda ep: ep.name)
    if selected is None:
        return points
    wanted = {name.strip() for name in selected.split(",") if name.strip()}
    return [ep for ep in points if ep.name in wanted]


@functools.lru_cache(maxsize=1)
def get_plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager with every ``edgecomp`` entry point registered.

    Raises:
        PluginError: an entry point fails to import, or implements a hook that is not in
            :mod:`edgecomp.hookspecs` (or with arguments the spec does not have).
    """
    manager = pluggy.PluginManager("edgecomp")
    manager.add_hookspecs(hookspecs)
    for entry_point in _entry_points():
        try:
            plugin = entry_point.load()
        except Exception as exc:  # any import failure of third-party code
            raise PluginError(f"plugin {entry_point.name!r} ({entry_point.value}) failed to load: {exc}") from exc
        manager.register(plugin, name=entry_point.name)
    check_pending(manager)
    return manager


def check_pending(manager: pluggy.PluginManager) -> None:
    """Reject plugins implementing hooks that the contract does not define.

    Raises:
        PluginError: naming the plugin and the unknown hook.
    """
    try:
        manager.check_pending()
    except pluggy.PluginValidationError as exc:
        raise PluginError(f"plugin {manager.get_name(exc.plugin)!r} breaks the plugin contract: {exc}") from exc


@functools.lru_cache(maxsize=1)
def backends() -> dict[str, Backend]:
    """Every registered backend by name, sorted by name.

    Raises:
        PluginError: a registered object lacks part of the :class:`~edgecomp.backend.Backend`
            contract, or two backends share a name.
    """
    found: dict[str, Backend] = {}

    def register(backend: Any) -> None:
        if not isinstance(backend, Backend):
            raise PluginError(f"registered backend {backend!r} lacks name/description/support/legalize/lower")
        if backend.name in found:
            raise PluginError(f"two plugins register a backend named {backend.name!r}")
        found[backend.name] = backend

    get_plugin_manager().hook.edgecomp_register_backends(register=register)
    return dict(sorted(found.items()))


def get_backend(name: str) -> Backend:
    """The backend registered as ``name``.

    Raises:
        PluginError: no such backend (the message lists the installed ones).
    """
    available = backends()
    if name not in available:
        raise PluginError(f"unknown backend {name!r}; installed backends: {', '.join(available) or 'none'}")
    return available[name]


def plugin_targets() -> dict[str, str]:
    """Target name -> TOML path registered by plugins through ``edgecomp_register_targets``."""
    found: dict[str, str] = {}

    def register(name: str, path: Any) -> None:
        if name in found:
            raise PluginError(f"two plugins register a target named {name!r}")
        found[name] = str(path)

    get_plugin_manager().hook.edgecomp_register_targets(register=register)
    return found


def plugin_list() -> list[dict[str, Any]]:
    """Loaded plugins with their distribution version and hooks, for ``edgecomp plugins``."""
    manager = get_plugin_manager()
    versions = {ep.name: (ep.dist.version if ep.dist else None) for ep in _entry_points()}
    rows = []
    for name, plugin in sorted(manager.list_name_plugin(), key=lambda pair: pair[0]):
        hooks = sorted(caller.name for caller in manager.get_hookcallers(plugin) or [])
        rows.append({"name": name, "version": versions.get(name), "hooks": hooks})
    return rows
