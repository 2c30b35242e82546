"""pytest plugin shipped with edgecomp (entry point ``pytest11``): fixtures for backend plugin authors.

Fixtures:
    edgecomp_register: a function ``register(plugin, name=...)`` that registers a plugin object for
        the duration of the test.
"""

from __future__ import annotations

import contextlib

import pytest


@pytest.fixture
def edgecomp_register():
    """Register plugin objects for one test; they are unregistered afterwards."""
    from edgecomp.testing import registered_plugin

    with contextlib.ExitStack() as stack:

        def register(plugin, name: str = "test-plugin") -> None:
            stack.enter_context(registered_plugin(plugin, name))

        yield register
