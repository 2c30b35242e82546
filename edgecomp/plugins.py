"""The plugin manager: loads plugins from the ``edgecomp`` entry-point group and collects what they register.

Isolation: a plugin that fails to import, implements a hook the contract does not have, raises in a
hook, or registers something malformed is recorded as a :class:`PluginProblem` (one line naming
the plugin) and left out; everything else keeps working. The CLI prints each problem once on
stderr. Asking for a backend that a broken plugin would have provided gives a
:class:`~edgecomp.errors.PluginError` that names the problem.

Environment switches:
    ``EDGECOMP_LOAD_PLUGINS``: comma-separated entry-point names; when set, only those plugins are
        loaded (an empty string loads none). Useful to isolate a broken third-party plugin.
    ``EDGECOMP_DISABLE_PLUGIN_AUTOLOAD``: when ``1``, entry points are not loaded unless named in
        ``EDGECOMP_LOAD_PLUGINS`` (first-party backends are entry points too).
    ``EDGECOMP_TRACE_HOOKS``: when ``1``, every hook call and its result is traced on stderr.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.metadata
import os
import sys
from typing import Any, Callable

import pluggy

from edgecomp import hookspecs
from edgecomp.backend import Backend
from edgecomp.errors import PluginError

ENTRY_POINT_GROUP = "edgecomp"


@dataclasses.dataclass(frozen=True)
class PluginProblem:
    """A plugin that was left out, and why (one line)."""

    plugin: str
    message: str

    def __str__(self) -> str:
        return f"plugin {self.plugin!r} {self.message}"


@dataclasses.dataclass
class Registry:
    """What the loaded plugins registered, attributed to the plugin that registered it.

    Attributes:
        manager: the pluggy plugin manager.
        problems: every plugin left out or partly left out, in load order.
        backends: backend name -> (backend, plugin name).
        targets: target name -> (TOML path, plugin name).
        refused: backend/target name -> why it is not available (e.g. registered twice).
    """

    manager: pluggy.PluginManager
    problems: list[PluginProblem]
    backends: dict[str, tuple[Backend, str]] = dataclasses.field(default_factory=dict)
    targets: dict[str, tuple[str, str]] = dataclasses.field(default_factory=dict)
    refused: dict[str, str] = dataclasses.field(default_factory=dict)


def _entry_points() -> list[importlib.metadata.EntryPoint]:
    points = sorted(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda ep: ep.name)
    selected = os.environ.get("EDGECOMP_LOAD_PLUGINS")
    if selected is None:
        return [] if os.environ.get("EDGECOMP_DISABLE_PLUGIN_AUTOLOAD") == "1" else points
    wanted = {name.strip() for name in selected.split(",") if name.strip()}
    return [ep for ep in points if ep.name in wanted]


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


@functools.lru_cache(maxsize=1)
def _manager_and_load_problems() -> tuple[pluggy.PluginManager, list[PluginProblem]]:
    manager = pluggy.PluginManager("edgecomp")
    manager.add_hookspecs(hookspecs)
    problems: list[PluginProblem] = []
    for entry_point in _entry_points():
        try:
            plugin = entry_point.load()
        except Exception as exc:  # any import failure of third-party code
            problems.append(PluginProblem(entry_point.name, f"failed to load ({entry_point.value}): {_one_line(exc)}"))
            continue
        problem = register_checked(manager, plugin, entry_point.name)
        if problem:
            problems.append(problem)
    return manager, problems


def _trace(message: str) -> None:
    """Hook tracing (``EDGECOMP_TRACE_HOOKS=1``): one line per hook call and per registration, on stderr."""
    if os.environ.get("EDGECOMP_TRACE_HOOKS") == "1":
        sys.stderr.write(f"edgecomp: trace: {message}\n")


def register_checked(manager: pluggy.PluginManager, plugin: Any, name: str) -> PluginProblem | None:
    """Register ``plugin`` unless it breaks the contract; returns the problem, or None.

    A hook implementation with arguments the spec lacks, or an ``edgecomp_*`` hook the contract
    does not define (a misspelling), leaves the whole plugin out.
    """
    try:
        manager.register(plugin, name=name)
    except (pluggy.PluginValidationError, ValueError) as exc:
        return PluginProblem(name, f"breaks the plugin contract: {_one_line(exc)}")
    for caller in manager.get_hookcallers(plugin) or []:
        if caller.spec is None:
            manager.unregister(plugin)
            return PluginProblem(name, f"breaks the plugin contract: unknown hook {caller.name!r} (see edgecomp.hookspecs)")
    return None


def get_plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager with every loadable ``edgecomp`` entry point registered."""
    return _manager_and_load_problems()[0]


def _call_each(registry: Registry, hook_name: str, register_for: Callable[[str], Callable[..., None]]) -> None:
    """Call one hook implementation at a time so a failing plugin only loses its own contributions."""
    caller = getattr(registry.manager.hook, hook_name)
    _trace(f"calling {hook_name} ({len(caller.get_hookimpls())} implementations)")
    for implementation in caller.get_hookimpls():  # registration order
        plugin_name = implementation.plugin_name
        _trace(f"{hook_name} -> plugin {plugin_name!r}")
        try:
            implementation.function(register=register_for(plugin_name))
        except _Malformed as exc:
            registry.problems.append(PluginProblem(plugin_name, f"registered something malformed in {hook_name}: {exc}"))
        except Exception as exc:  # third-party code
            registry.problems.append(PluginProblem(plugin_name, f"raised in {hook_name}: {_one_line(exc)}"))


class _Malformed(Exception):
    pass


@functools.lru_cache(maxsize=1)
def registry() -> Registry:
    """Collect every plugin's backends and targets (once per process; see :func:`reset`)."""
    manager, load_problems = _manager_and_load_problems()
    result = Registry(manager, list(load_problems))
    owners: dict[str, list[str]] = {}

    def backend_register(plugin_name: str) -> Callable[[Any], None]:
        def register(backend: Any) -> None:
            if not isinstance(backend, Backend) or not isinstance(getattr(backend, "name", None), str):
                raise _Malformed(f"{backend!r} lacks name/description/support/legalize/lower")
            _trace(f"plugin {plugin_name!r} registered backend {backend.name!r}")
            owners.setdefault(f"backend:{backend.name}", []).append(plugin_name)
            result.backends.setdefault(backend.name, (backend, plugin_name))

        return register

    def target_register(plugin_name: str) -> Callable[[str, Any], None]:
        def register(name: str, path: Any) -> None:
            if not isinstance(name, str) or not name:
                raise _Malformed(f"target name {name!r} is not a non-empty string")
            _trace(f"plugin {plugin_name!r} registered target {name!r} ({path})")
            owners.setdefault(f"target:{name}", []).append(plugin_name)
            result.targets.setdefault(name, (str(path), plugin_name))

        return register

    _call_each(result, "edgecomp_register_backends", backend_register)
    _call_each(result, "edgecomp_register_targets", target_register)
    for key, plugins in owners.items():
        if len(plugins) > 1:
            kind, name = key.split(":", 1)
            message = f"{kind} name {name!r} is registered by plugins {' and '.join(repr(p) for p in plugins)}"
            (result.backends if kind == "backend" else result.targets).pop(name, None)
            result.refused[key] = message
            result.problems.append(PluginProblem(plugins[-1], message))
    result.backends = dict(sorted(result.backends.items()))
    result.targets = dict(sorted(result.targets.items()))
    return result


def reset() -> None:
    """Forget the collected registrations (after registering a plugin by hand, e.g. in tests)."""
    registry.cache_clear()


def problems() -> list[PluginProblem]:
    """Every plugin problem found so far (loading and registering)."""
    return list(registry().problems)


def backends() -> dict[str, Backend]:
    """Every available backend by name, sorted by name."""
    return {name: backend for name, (backend, _) in registry().backends.items()}


def get_backend(name: str) -> Backend:
    """The backend registered as ``name``.

    Raises:
        PluginError: no such backend (the message lists the installed ones, and names the plugin
            problem when a broken or clashing plugin would have provided it).
    """
    current = registry()
    if name in current.backends:
        return current.backends[name][0]
    if f"backend:{name}" in current.refused:
        raise PluginError(current.refused[f"backend:{name}"])
    hint = next((f"; {problem}" for problem in current.problems if problem.plugin == name), "")
    raise PluginError(f"unknown backend {name!r}; installed backends: {', '.join(current.backends) or 'none'}{hint}")


def plugin_targets() -> dict[str, str]:
    """Target name -> TOML path registered by plugins through ``edgecomp_register_targets``."""
    return {name: path for name, (path, _) in registry().targets.items()}


def register_commands(cli: Any) -> None:
    """Let every plugin add CLI subcommands; a plugin raising here is recorded, not fatal."""
    current = registry()
    for implementation in current.manager.hook.edgecomp_register_commands.get_hookimpls():
        _trace(f"edgecomp_register_commands -> plugin {implementation.plugin_name!r}")
        try:
            implementation.function(cli=cli)
        except Exception as exc:  # third-party code
            current.problems.append(PluginProblem(implementation.plugin_name, f"raised in edgecomp_register_commands: {_one_line(exc)}"))


def plugin_list() -> list[dict[str, Any]]:
    """Loaded plugins with version, hooks and what each registered; broken ones with their problem."""
    current = registry()
    versions = {ep.name: (ep.dist.version if ep.dist else None) for ep in _entry_points()}
    rows = []
    for name, plugin in sorted(current.manager.list_name_plugin(), key=lambda pair: pair[0]):
        rows.append(
            {
                "name": name,
                "version": versions.get(name),
                "hooks": sorted(caller.name for caller in current.manager.get_hookcallers(plugin) or []),
                "backends": sorted(b for b, (_, owner) in current.backends.items() if owner == name),
                "targets": sorted(t for t, (_, owner) in current.targets.items() if owner == name),
                "problems": [p.message for p in current.problems if p.plugin == name],
            }
        )
    loaded = {row["name"] for row in rows}
    for problem in current.problems:
        if problem.plugin not in loaded:
            rows.append({"name": problem.plugin, "version": versions.get(problem.plugin), "hooks": [], "backends": [], "targets": [], "problems": [problem.message]})
            loaded.add(problem.plugin)
    return rows
