"""The plugin contract: hookspecs documented and tested, entry points, registration errors."""

from __future__ import annotations

import inspect
import subprocess
import sys
import types

import pytest
from click.testing import CliRunner

from realdata import MNIST_MODEL, ROOT

from edgecomp import hookspecs
from edgecomp.backend import Artifact, LowerOptions, SupportReport
from edgecomp.errors import PluginError
from edgecomp.hookspecs import hookimpl
from edgecomp.ir.load import load_model
from edgecomp.plugins import backends, get_backend, plugin_targets
from edgecomp.targets import get_target, target_files
from edgecomp.testing import check_backend_contract

HOOKS = [name for name, obj in inspect.getmembers(hookspecs, inspect.isfunction) if name.startswith("edgecomp_")]


def test_every_hook_is_documented():
    assert HOOKS == ["edgecomp_register_backends", "edgecomp_register_commands", "edgecomp_register_targets"]
    for name in HOOKS:
        doc = inspect.getdoc(getattr(hookspecs, name)) or ""
        assert "Args:" in doc and "Returns:" in doc and "Called" in doc, f"{name} docstring must say Args, Returns and when it is called"
        assert all(p.kind is not p.POSITIONAL_ONLY for p in inspect.signature(getattr(hookspecs, name)).parameters.values())


def test_every_hook_is_tested():
    """datasette-style meta-test: every hook has a test implementing it."""
    sources = "".join(p.read_text() for p in (ROOT / "tests").rglob("test_*.py"))
    for name in HOOKS:
        assert f"def {name}(" in sources, f"hook {name} has no test implementing it"


def test_first_party_backends_come_from_entry_points():
    assert list(backends()) == ["c-array", "onnxruntime"]
    assert type(get_backend("onnxruntime")).__module__ == "edgecomp_onnxruntime.backend"


def test_unknown_backend_lists_installed():
    with pytest.raises(PluginError, match="unknown backend 'nope'; installed backends: c-array, onnxruntime"):
        get_backend("nope")


class EchoBackend:
    """A toy third-party backend: ships the ONNX bytes as one file."""

    name = "echo"
    description = "test backend"

    def support(self, model, target):
        return SupportReport(self.name)

    def legalize(self, target):
        return []

    def lower(self, model, target, options):
        from edgecomp.ir.load import to_bytes

        data = to_bytes(model)
        return Artifact(self.name, {f"{options.model_name}.bin": data}, flash_bytes=len(data))


def test_edgecomp_register_backends_and_targets(edgecomp_register, tmp_path):
    target_file = tmp_path / "my-board.toml"
    target_file.write_text((ROOT / "targets" / "cortex-m7.toml").read_text().replace('"cortex-m7"', '"my-board"').replace('default_backend = "c-array"', 'default_backend = "echo"'))
    plugin = types.SimpleNamespace()

    @hookimpl
    def edgecomp_register_backends(register):
        register(EchoBackend())

    @hookimpl
    def edgecomp_register_targets(register):
        register("my-board", target_file)

    plugin.edgecomp_register_backends = edgecomp_register_backends
    plugin.edgecomp_register_targets = edgecomp_register_targets
    edgecomp_register(plugin, "third-party")
    assert "echo" in backends()
    assert plugin_targets() == {"my-board": str(target_file)}
    assert "my-board" in target_files()
    target = get_target("my-board")
    assert target.default_backend == "echo"
    artifact = check_backend_contract(EchoBackend(), lambda: load_model(MNIST_MODEL), target, LowerOptions(model_name="m"))
    assert list(artifact.files) == ["m.bin"]


def test_duplicate_backend_name_is_refused(edgecomp_register):
    plugin = types.SimpleNamespace()

    @hookimpl
    def edgecomp_register_backends(register):
        register(EchoBackend())
        register(EchoBackend())

    plugin.edgecomp_register_backends = edgecomp_register_backends
    edgecomp_register(plugin, "twice")
    with pytest.raises(PluginError, match="two plugins register a backend named 'echo'"):
        backends()


def test_object_breaking_the_backend_contract_is_refused(edgecomp_register):
    plugin = types.SimpleNamespace()

    @hookimpl
    def edgecomp_register_backends(register):
        register(object())

    plugin.edgecomp_register_backends = edgecomp_register_backends
    edgecomp_register(plugin, "broken")
    with pytest.raises(PluginError, match="lacks name/description/support/legalize/lower"):
        backends()


def test_unknown_hook_is_refused(edgecomp_register):
    plugin = types.SimpleNamespace()

    @hookimpl
    def edgecomp_register_flux_capacitor(register):
        pass

    plugin.edgecomp_register_flux_capacitor = edgecomp_register_flux_capacitor
    with pytest.raises(PluginError, match="breaks the plugin contract"):
        edgecomp_register(plugin, "unknown-hook")


def test_edgecomp_register_commands_adds_a_subcommand(edgecomp_register):
    import click

    from edgecomp.cli import cli

    plugin = types.SimpleNamespace()

    @hookimpl
    def edgecomp_register_commands(cli):
        @cli.command("hello-plugin")
        def hello():
            click.echo("hello from a plugin")

    plugin.edgecomp_register_commands = edgecomp_register_commands
    edgecomp_register(plugin, "commands")
    from edgecomp.plugins import get_plugin_manager

    get_plugin_manager().hook.edgecomp_register_commands(cli=cli)
    try:
        result = CliRunner().invoke(cli, ["hello-plugin"])
        assert result.output == "hello from a plugin\n"
    finally:
        cli.commands.pop("hello-plugin", None)


def test_load_plugins_switch_limits_loading():
    code = "from edgecomp.plugins import backends; print(','.join(backends()))"
    only = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={"EDGECOMP_LOAD_PLUGINS": "onnxruntime", "PATH": "/usr/bin:/bin"})
    assert only.stdout.strip() == "onnxruntime", only.stderr
    none = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={"EDGECOMP_LOAD_PLUGINS": "", "PATH": "/usr/bin:/bin"})
    assert none.stdout.strip() == "", none.stderr
