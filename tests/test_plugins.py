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
from edgecomp.plugins import backends, get_backend, plugin_targets, problems
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


FIRST_PARTY = {"c-array", "onnxruntime", "tflite"}


def test_first_party_backends_come_from_entry_points():
    assert FIRST_PARTY <= set(backends())
    assert type(get_backend("onnxruntime")).__module__ == "edgecomp_onnxruntime.backend"


def test_unknown_backend_lists_installed():
    with pytest.raises(PluginError, match="unknown backend 'nope'; installed backends: c, c-array, .*onnxruntime.*tflite"):
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
    target_file.write_text((ROOT / "targets" / "cortex-m7.toml").read_text().replace('"cortex-m7"', '"my-board"').replace('default_backend = "c"', 'default_backend = "echo"'))
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
    assert plugin_targets()["my-board"] == str(target_file)
    assert "my-board" in target_files()
    target = get_target("my-board")
    assert target.default_backend == "echo"
    artifact = check_backend_contract(EchoBackend(), lambda: load_model(MNIST_MODEL), target, LowerOptions(model_name="m"))
    assert list(artifact.files) == ["m.bin"]


def _backend_plugin(*backends_to_register):
    plugin = types.SimpleNamespace()

    @hookimpl
    def edgecomp_register_backends(register):
        for backend in backends_to_register:
            register(backend)

    plugin.edgecomp_register_backends = edgecomp_register_backends
    return plugin


def test_duplicate_backend_name_names_both_plugins_and_spares_the_rest(edgecomp_register):
    edgecomp_register(_backend_plugin(EchoBackend()), "first")
    edgecomp_register(_backend_plugin(EchoBackend()), "second")
    with pytest.raises(PluginError, match="backend name 'echo' is registered by plugins 'first' and 'second'"):
        get_backend("echo")
    assert "onnxruntime" in backends()
    assert any("registered by plugins 'first' and 'second'" in str(p) for p in problems())


def test_malformed_registration_is_isolated(edgecomp_register):
    edgecomp_register(_backend_plugin(object()), "malformed")
    assert FIRST_PARTY <= set(backends()) and "malformed" not in str(backends())
    (problem,) = [p for p in problems() if p.plugin == "malformed"]
    assert str(problem).startswith("plugin 'malformed' registered something malformed in edgecomp_register_backends: <object object")
    assert str(problem).endswith("lacks name/description/support/legalize/lower")


def test_hook_raising_is_isolated(edgecomp_register):
    plugin = types.SimpleNamespace()

    @hookimpl
    def edgecomp_register_backends(register):
        raise RuntimeError("vendor SDK not found")

    plugin.edgecomp_register_backends = edgecomp_register_backends
    edgecomp_register(plugin, "raising")
    assert FIRST_PARTY <= set(backends())
    assert [str(p) for p in problems() if p.plugin == "raising"] == ["plugin 'raising' raised in edgecomp_register_backends: RuntimeError: vendor SDK not found"]


def test_unknown_hook_is_refused(edgecomp_register):
    plugin = types.SimpleNamespace()

    @hookimpl
    def edgecomp_register_flux_capacitor(register):
        pass

    plugin.edgecomp_register_flux_capacitor = edgecomp_register_flux_capacitor
    with pytest.raises(PluginError, match="unknown hook 'edgecomp_register_flux_capacitor'"):
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
    from edgecomp.plugins import register_commands

    register_commands(cli)
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


def _documented_signature(name: str) -> str:
    function = getattr(hookspecs, name)
    annotations = dict(function.__annotations__)
    returns = annotations.pop("return")
    arguments = ", ".join(f"{argument}: {annotation}" for argument, annotation in annotations.items())
    return f"def {name}({arguments}) -> {returns}"


def test_docs_give_every_hook_its_exact_signature():
    docs = (ROOT / "docs" / "plugins.md").read_text()
    for name in HOOKS:
        assert f"### {name}" in docs, f"docs/plugins.md has no section for {name}"
        assert _documented_signature(name) in docs, f"docs/plugins.md signature of {name} drifted from edgecomp/hookspecs.py"
    assert f"PLUGIN_API_VERSION = {hookspecs.PLUGIN_API_VERSION}" in docs


def test_trace_switch_traces_hook_calls(tmp_path):
    result = subprocess.run([sys.executable, "-m", "edgecomp", "targets", "--json"], capture_output=True, text=True,
                            env={"EDGECOMP_TRACE_HOOKS": "1", "PATH": "/usr/bin:/bin"}, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "edgecomp_register_backends" in result.stderr and "edgecomp_register_targets" in result.stderr
