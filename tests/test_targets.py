"""Target TOML loading: the built-in targets and the key-path errors."""

from __future__ import annotations

import pytest

from realdata import ROOT

from edgecomp.errors import TargetError
from edgecomp.targets import get_target, load_target_file, target_files


def test_builtin_targets():
    assert {"cortex-m4", "cortex-m7", "host-x86_64", "rpi4-aarch64"} <= set(target_files())
    m4 = get_target("cortex-m4")
    assert (m4.kind, m4.default_backend, m4.flash_bytes, m4.ram_bytes) == ("mcu", "c", 1048576, 196608)
    assert m4.c_array.section == ".rodata.edgecomp_model" and m4.toolchain.cc == "arm-none-eabi-gcc"
    # a microcontroller's c-array embeds the .tflite TensorFlow Lite Micro runs, not an .ort file
    assert m4.c_array.embed_backend == get_target("cortex-m7").c_array.embed_backend == "tflite"
    assert get_target("host-x86_64").flash_bytes is None


def test_every_key_is_documented():
    readme = (ROOT / "targets" / "README.md").read_text()
    for key in ("name", "description", "kind", "arch", "default_backend", "[memory] flash_bytes", "[memory] ram_bytes",
                "[toolchain] cc", "[toolchain] cflags", "[c_array] section", "[c_array] alignment", "[c_array] embed_backend"):
        assert f"| `{key}` |" in readme, key


def _write(tmp_path, text: str):
    path = tmp_path / "board.toml"
    path.write_text(text)
    return path


BASE = 'name = "board"\ndescription = "d"\nkind = "mcu"\narch = "armv7e-m"\ndefault_backend = "c-array"\n'


@pytest.mark.parametrize(
    "text, message",
    [
        (BASE + "[memory]\nflash = 5\n", r"board.toml: unknown key 'memory.flash' \(known keys: memory.flash_bytes, memory.ram_bytes\)"),
        (BASE + "[memory]\nflash_bytes = -1\n", r"board.toml: key 'memory.flash_bytes' must be a positive number of bytes"),
        (BASE + "[memory]\nflash_bytes = \"1M\"\n", r"board.toml: key 'memory.flash_bytes' must be int"),
        (BASE + "memory = 5\n", r"board.toml: key 'memory' must be a table"),
        (BASE.replace('kind = "mcu"', 'kind = "fpga"'), r"board.toml: key 'kind' must be one of host, linux, mcu"),
        (BASE.replace('arch = "armv7e-m"\n', ""), r"board.toml: missing key 'arch'"),
        (BASE + "[c_array]\nalignment = 24\n", r"'c_array.alignment' must be a power of two"),
        (BASE + "[toolchain]\ncflags = [1]\n", r"'toolchain.cflags' must be a list of strings"),
        ("name = \n", r"board.toml: not valid TOML"),
    ],
)
def test_invalid_target_files(tmp_path, text, message):
    with pytest.raises(TargetError, match=message):
        load_target_file(_write(tmp_path, text))


def test_unknown_target_lists_known():
    with pytest.raises(TargetError, match="unknown target 'esp32'; known targets: cortex-m4, cortex-m7, host-x86_64, .*rpi4-aarch64"):
        get_target("esp32")
