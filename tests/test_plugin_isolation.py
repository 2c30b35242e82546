"""Broken third-party plugins installed through real entry points never take the compiler down."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

from realdata import MNIST_MODEL

BROKEN_IMPORT = "raise ImportError('libvendor.so: cannot open shared object file')\n"
RAISING_HOOK = '''from edgecomp.hookspecs import hookimpl


@hookimpl
def edgecomp_register_backends(register):
    raise RuntimeError("accelerator driver not found")
'''


def install_fake_plugin(site: pathlib.Path, name: str, source: str) -> None:
    """A minimal installed distribution: a module plus a dist-info with an ``edgecomp`` entry point."""
    (site / f"{name}.py").write_text(source)
    info = site / f"{name}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[edgecomp]\n{name} = {name}\n")


@pytest.fixture
def broken_site(tmp_path) -> dict[str, str]:
    site = tmp_path / "site"
    site.mkdir()
    install_fake_plugin(site, "vendor_npu", BROKEN_IMPORT)
    install_fake_plugin(site, "vendor_dsp", RAISING_HOOK)
    return {**os.environ, "PYTHONPATH": str(site)}


def run(env, *args, cwd):
    return subprocess.run([sys.executable, "-m", "edgecomp", *args], capture_output=True, text=True, env=env, cwd=cwd)


def warnings(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.strip()]


EXPECTED = [
    "edgecomp: warning: plugin 'vendor_npu' failed to load (vendor_npu): ImportError: libvendor.so: cannot open shared object file",
    "edgecomp: warning: plugin 'vendor_dsp' raised in edgecomp_register_backends: RuntimeError: accelerator driver not found",
]


def test_targets_and_plugins_still_work(broken_site, tmp_path):
    targets = run(broken_site, "targets", cwd=tmp_path)
    assert targets.returncode == 0 and "cortex-m4" in targets.stdout
    assert sorted(warnings(targets)) == sorted(EXPECTED)
    plugins = run(broken_site, "plugins", "--json", cwd=tmp_path)
    assert plugins.returncode == 0
    assert '"onnxruntime"' in plugins.stdout and "accelerator driver not found" in plugins.stdout
    assert "Traceback" not in targets.stderr + plugins.stderr


def test_compile_with_another_backend_still_works(broken_site, tmp_path):
    result = run(broken_site, "compile", str(MNIST_MODEL), "-t", "host-x86_64", "-q", "none", "-o", "out", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    not_verified = "edgecomp: warning: mnist-8.onnx: not-verified: no --calibration or --eval data, so the artifact was not run against the reference; give data to verify it"
    assert sorted(warnings(result)) == sorted([*EXPECTED, not_verified])
    assert (tmp_path / "out" / "mnist-8.onnx").is_file()


def test_asking_for_the_broken_backend_names_the_problem(broken_site, tmp_path):
    result = run(broken_site, "compile", str(MNIST_MODEL), "-t", "host-x86_64", "-b", "vendor_npu", "-q", "none", "-o", "out", cwd=tmp_path)
    assert result.returncode == 6
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("edgecomp: error: unknown backend 'vendor_npu'") and "failed to load" in last
    assert not (tmp_path / "out").exists()
