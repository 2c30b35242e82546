"""Test kit for edgecomp backend plugin authors (and edgecomp's own tests).

- :func:`registered_plugin`: register a plugin object for the duration of a ``with`` block.
- :func:`check_backend_contract`: the conformance checks every backend must pass: it reports
  support without raising, lowers to an :class:`~edgecomp.backend.Artifact` of plain file names
  and bytes, counts its flash bytes, and is deterministic (two lowerings, identical bytes).

The pytest plugin (:mod:`edgecomp.testing.pytest_plugin`, auto-loaded when edgecomp is installed)
provides the same as fixtures.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

from edgecomp.backend import Artifact, Backend, LowerOptions, SupportReport


@contextlib.contextmanager
def registered_plugin(plugin: Any, name: str = "test-plugin") -> Iterator[None]:
    """Register ``plugin`` (a module or object with ``@hookimpl`` functions) for a ``with`` block.

    The collected registrations are recomputed on entry and exit, so the plugin's backends and
    targets are visible inside the block only.

    Raises:
        PluginError: the plugin breaks the contract (unknown hook, wrong hook arguments).
    """
    from edgecomp.errors import PluginError
    from edgecomp.plugins import get_plugin_manager, register_checked, reset

    manager = get_plugin_manager()
    problem = register_checked(manager, plugin, name)
    if problem:
        raise PluginError(str(problem))
    reset()
    try:
        yield
    finally:
        manager.unregister(plugin)
        reset()


def check_backend_contract(backend: Backend, model_factory, target, options: LowerOptions) -> Artifact:
    """Assert the backend contract on a model; returns the first artifact.

    Args:
        backend: the backend object under test.
        model_factory: zero-argument callable returning a fresh IR model (lowering may mutate it).
        target: a :class:`~edgecomp.targets.Target`.
        options: the lowering options.

    Raises:
        AssertionError: naming the part of the contract that is broken.
    """
    assert isinstance(backend, Backend), "backend lacks name/description/support/legalize/lower"
    assert isinstance(backend.name, str) and backend.name == backend.name.lower(), "backend name must be a lowercase string"
    report = backend.support(model_factory(), target)
    assert isinstance(report, SupportReport), "support() must return a SupportReport"
    assert isinstance(backend.legalize(target), list), "legalize() must return a list of passes"
    first = backend.lower(model_factory(), target, options)
    second = backend.lower(model_factory(), target, options)
    assert isinstance(first, Artifact), "lower() must return an Artifact"
    assert first.files, "the artifact has no files"
    for name, data in first.files.items():
        assert "/" not in name and "\\" not in name and name not in ("", ".", ".."), f"file name {name!r} must be a plain name"
        assert isinstance(data, bytes), f"{name}: contents must be bytes"
    assert isinstance(first.flash_bytes, int) and first.flash_bytes > 0, "flash_bytes must be a positive int"
    assert first.files == second.files, "two lowerings of the same model differ: output must be deterministic"
    return first
