"""Targets: a board or runtime described by a TOML file (``targets/*.toml``, keys in ``targets/README.md``).

A target names its default backend and its memory budgets. Compiling checks artifacts against the
budgets. Targets are found by name among the built-in ``targets/`` folder and plugin-registered
files, or given directly as a path to a ``.toml`` file.
"""

from __future__ import annotations

import dataclasses
import pathlib
try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib
from typing import Any

from edgecomp.errors import TargetError

BUILTIN_TARGETS_DIR = pathlib.Path(__file__).resolve().parent.parent / "targets"

KINDS = ("host", "linux", "mcu")


@dataclasses.dataclass(frozen=True)
class Toolchain:
    """The C compiler a firmware build would use for this target (informational; used by tests).

    Attributes:
        cc: compiler executable name (``gcc``, ``arm-none-eabi-gcc``).
        cflags: flags selecting the CPU/ABI (tuple of str).
    """

    cc: str = "gcc"
    cflags: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class CArrayOptions:
    """How the ``c-array`` backend lays out its arrays for this target.

    Attributes:
        section: linker section for the model arrays (``__attribute__((section(...)))``), or None.
        alignment: byte alignment of the embedded model array (power of two, >= 4).
        embed_backend: name of the backend whose artifact bytes are embedded as one array.
    """

    section: str | None = None
    alignment: int = 16
    embed_backend: str = "onnxruntime"


@dataclasses.dataclass(frozen=True)
class Target:
    """A deployment target.

    Attributes:
        name: the target name (``cortex-m4``).
        description: one line for humans.
        kind: ``host``, ``linux`` (an embedded Linux board) or ``mcu`` (bare-metal microcontroller).
        arch: CPU architecture (``x86_64``, ``aarch64``, ``armv7e-m``).
        default_backend: backend used when ``--backend`` is not given.
        flash_bytes: read-only memory budget in bytes for the model artifact, or None (no limit).
        ram_bytes: RAM budget in bytes for activations/tensor arena, or None (no limit).
        toolchain: see :class:`Toolchain`.
        c_array: see :class:`CArrayOptions`.
        path: the TOML file this target was read from.
    """

    name: str
    description: str
    kind: str
    arch: str
    default_backend: str
    flash_bytes: int | None = None
    ram_bytes: int | None = None
    toolchain: Toolchain = Toolchain()
    c_array: CArrayOptions = CArrayOptions()
    path: str = ""


class _Table:
    """One TOML table being read, with the file and key path for error messages."""

    def __init__(self, path: pathlib.Path, data: dict[str, Any], prefix: str, known: set[str]) -> None:
        self.path, self.data, self.prefix = path, data, prefix
        unknown = sorted(set(data) - known)
        if unknown:
            raise TargetError(f"{path}: unknown key '{prefix}{unknown[0]}' (known keys: {', '.join(prefix + k for k in sorted(known))})")

    def error(self, key: str, problem: str) -> TargetError:
        return TargetError(f"{self.path}: key '{self.prefix}{key}' {problem}")

    def get(self, key: str, kind: type, required: bool = False) -> Any:
        if key not in self.data:
            if required:
                raise TargetError(f"{self.path}: missing key '{self.prefix}{key}'")
            return None
        value = self.data[key]
        if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
            raise self.error(key, f"must be {'a table' if kind is dict else kind.__name__}, got {value!r}")
        return value

    def table(self, key: str, known: set[str]) -> "_Table":
        return _Table(self.path, self.get(key, dict) or {}, f"{self.prefix}{key}.", known)

    def positive(self, key: str) -> int | None:
        value = self.get(key, int)
        if value is not None and value <= 0:
            raise self.error(key, f"must be a positive number of bytes, got {value}")
        return value


def load_target_file(path: str | pathlib.Path) -> Target:
    """Read and validate one target TOML file.

    Raises:
        TargetError: the file is missing, not TOML, has an unknown key, a missing key or a value of
            the wrong type; the message names the file and the key path (``memory.flash_bytes``).
    """
    path = pathlib.Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TargetError(f"{path}: target file not found") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise TargetError(f"{path}: not valid TOML: {exc}") from None
    top = _Table(path, data, "", {"name", "description", "kind", "arch", "default_backend", "memory", "toolchain", "c_array"})
    kind = top.get("kind", str, required=True)
    if kind not in KINDS:
        raise top.error("kind", f"must be one of {', '.join(KINDS)}, got {kind!r}")
    memory = top.table("memory", {"flash_bytes", "ram_bytes"})
    toolchain = top.table("toolchain", {"cc", "cflags"})
    c_array = top.table("c_array", {"section", "alignment", "embed_backend"})
    cflags = toolchain.get("cflags", list) or []
    if not all(isinstance(flag, str) for flag in cflags):
        raise toolchain.error("cflags", "must be a list of strings")
    alignment = c_array.get("alignment", int) or 16
    if alignment < 4 or alignment & (alignment - 1):
        raise c_array.error("alignment", f"must be a power of two >= 4, got {alignment}")
    return Target(
        name=top.get("name", str, required=True),
        description=top.get("description", str, required=True),
        kind=kind,
        arch=top.get("arch", str, required=True),
        default_backend=top.get("default_backend", str, required=True),
        flash_bytes=memory.positive("flash_bytes"),
        ram_bytes=memory.positive("ram_bytes"),
        toolchain=Toolchain(cc=toolchain.get("cc", str) or "gcc", cflags=tuple(cflags)),
        c_array=CArrayOptions(
            section=c_array.get("section", str),
            alignment=alignment,
            embed_backend=c_array.get("embed_backend", str) or "onnxruntime",
        ),
        path=str(path),
    )


def target_files() -> dict[str, pathlib.Path]:
    """Target name -> TOML path for every built-in and plugin-registered target, sorted by name.

    Raises:
        PluginError: a plugin registers a name that a built-in target already has.
    """
    from edgecomp.errors import PluginError
    from edgecomp.plugins import plugin_targets

    found = {p.stem: p for p in sorted(BUILTIN_TARGETS_DIR.glob("*.toml"))}
    for name, path in plugin_targets().items():
        if name in found:
            raise PluginError(f"plugin target {name!r} clashes with the built-in target of that name")
        found[name] = pathlib.Path(path)
    return dict(sorted(found.items()))


def get_target(name_or_path: str) -> Target:
    """The target called ``name_or_path``, or the one in that ``.toml`` file.

    Raises:
        TargetError: unknown name (the message lists the known ones) or an invalid file.
    """
    if name_or_path.endswith(".toml"):
        return load_target_file(name_or_path)
    files = target_files()
    if name_or_path not in files:
        raise TargetError(f"unknown target {name_or_path!r}; known targets: {', '.join(files)}")
    target = load_target_file(files[name_or_path])
    if target.name != name_or_path:
        raise TargetError(f"{files[name_or_path]}: key 'name' is {target.name!r} but the file is named {name_or_path!r}")
    return target
