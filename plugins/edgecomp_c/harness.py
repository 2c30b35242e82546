"""Build and run generated C: on the host (``gcc``) and on an emulated Cortex-M4 (QEMU ``mps2-an386``).

Used by the backend's verification, the tests and the benchmarks. A *source folder* is what the
``c`` backend writes: ``<model>.h``, ``<model>.c`` and the runtime (``ec_*.h``, ``ec_*.c``).

- :func:`build_host` / :func:`run_host`: a driver reads samples from stdin (per sample: every input's
  bytes, in order) and writes every output's bytes to stdout, one ``<model>_invoke`` (int8) or
  ``<model>_invoke_float`` (float32) per sample.
- :func:`build_qemu` / :func:`run_qemu`: the samples are compiled into the image; the driver prints
  each sample's outputs as one hex line through semihosting; QEMU exits with ``main``'s status.
- :func:`arm_size`: ``arm-none-eabi-size`` of object files: text (code and ``const`` data), data,
  bss, and the flash (text + data) and RAM (data + bss) they need.

Raises :class:`HarnessError` (with the compiler's or emulator's message) when a step fails.
"""

from __future__ import annotations

import dataclasses
import pathlib
import re
import shutil
import subprocess
from typing import Sequence

import numpy as np

__all__ = [
    "ARM_CFLAGS",
    "HOST_CFLAGS",
    "HarnessError",
    "HostProcess",
    "Sources",
    "arm_size",
    "build_host",
    "build_qemu",
    "qemu_available",
    "read_sources",
    "run_host",
    "run_qemu",
    "runtime_sources",
]

RUNTIME = pathlib.Path(__file__).resolve().parent / "runtime"
QEMU_SUPPORT = pathlib.Path(__file__).resolve().parent / "qemu"
HOST_CFLAGS = ("-std=c99", "-Wall", "-Wextra", "-Werror", "-O2")
ARM_CFLAGS = ("-mcpu=cortex-m4", "-mthumb", "-std=c99", "-Wall", "-Wextra", "-Werror", "-O2")
QEMU_MACHINE = "mps2-an386"


class HarnessError(RuntimeError):
    """A build or run of generated C failed (the message carries the tool's output)."""


def runtime_sources() -> dict[str, bytes]:
    """The C runtime (kernels and headers) by file name, sorted."""
    return {path.name: path.read_bytes() for path in sorted(RUNTIME.glob("ec_*.[ch]"))}


@dataclasses.dataclass(frozen=True)
class Sources:
    """A source folder and the I/O sizes read from its header.

    Attributes:
        directory: the folder.
        model: the C prefix (``mnist_8``).
        input_bytes / output_bytes: bytes of each int8 input/output tensor (``<NAME>_INPUT_<i>_BYTES``).
        float_api: the header declares ``<model>_invoke_float`` (every graph input and output of the
            ``.tflite`` is float behind a QUANTIZE/DEQUANTIZE).
    """

    directory: pathlib.Path
    model: str
    input_bytes: tuple[int, ...]
    output_bytes: tuple[int, ...]
    float_api: bool = False

    def c_files(self) -> list[pathlib.Path]:
        return sorted(self.directory.glob("*.c"))


def read_sources(directory: str | pathlib.Path, model: str) -> Sources:
    """Read ``<model>.h`` in ``directory`` for the I/O sizes."""
    directory = pathlib.Path(directory)
    header = (directory / f"{model}.h").read_text()
    upper = model.upper()

    def sizes(kind: str) -> tuple[int, ...]:
        found = dict(re.findall(rf"#define {upper}_{kind}_(\d+)_BYTES (\d+)", header))
        return tuple(int(found[str(i)]) for i in range(len(found)))

    return Sources(directory, model, sizes("INPUT"), sizes("OUTPUT"), f"{model}_invoke_float(" in header)


def _run(command: Sequence[str], *, what: str, timeout: float, stdin: bytes | None = None, cwd=None) -> subprocess.CompletedProcess:
    try:
        result = subprocess.run(list(command), input=stdin, capture_output=True, timeout=timeout, cwd=cwd)
    except FileNotFoundError:
        raise HarnessError(f"{what}: {command[0]} is not installed") from None
    except subprocess.TimeoutExpired:
        raise HarnessError(f"{what}: timed out after {timeout:g} s") from None
    if result.returncode != 0:
        message = (result.stderr or result.stdout).decode(errors="replace").strip()
        found = [line for line in message.splitlines() if "error" in line or "warning" in line]
        raise HarnessError(f"{what} failed (exit {result.returncode}): {' | '.join(found[:5]) or message[-2000:]}"[:4000])
    return result


def _host_driver(src: Sources, float_io: bool) -> str:
    ctype, scale = ("float", 4) if float_io else ("int8_t", 1)
    function = f"{src.model}_invoke_float" if float_io else f"{src.model}_invoke"
    lines = ["#include <stdint.h>", "#include <stdio.h>", f'#include "{src.model}.h"', "", "int main(void)", "{"]
    for i, size in enumerate(src.input_bytes):
        lines.append(f"    static {ctype} in{i}[{size}];")
    for i, size in enumerate(src.output_bytes):
        lines.append(f"    static {ctype} out{i}[{size}];")
    lines.append("    for (;;) {")
    for i in range(len(src.input_bytes)):
        lines.append(f"        if (fread(in{i}, {scale}, sizeof in{i} / {scale}, stdin) != sizeof in{i} / {scale}) return 0;")
    args = [f"in{i}" for i in range(len(src.input_bytes))] + [f"out{i}" for i in range(len(src.output_bytes))]
    lines.append(f"        {function}({', '.join(args)});")
    for i in range(len(src.output_bytes)):
        lines.append(f"        fwrite(out{i}, {scale}, sizeof out{i} / {scale}, stdout);")
    lines += ["        fflush(stdout);", "    }", "}", ""]
    return "\n".join(lines)


def build_host(src: Sources, build_dir: str | pathlib.Path, *, cc: str = "gcc", cflags: Sequence[str] = HOST_CFLAGS, float_io: bool = False) -> pathlib.Path:
    """Compile the source folder with a host driver; returns the executable's path.

    Raises:
        HarnessError: the compiler is missing or reports an error (warnings are errors).
    """
    build_dir = pathlib.Path(build_dir)
    build_dir.mkdir(parents=True, exist_ok=True)
    driver = build_dir / f"{src.model}_host_main{'_float' if float_io else ''}.c"
    driver.write_text(_host_driver(src, float_io))
    exe = build_dir / f"{src.model}_host{'_float' if float_io else ''}"
    _run([cc, *cflags, "-I", str(src.directory), *map(str, src.c_files()), str(driver), "-o", str(exe), "-lm"], what=f"{cc} build of {src.model}", timeout=600)
    return exe


def _stack_rows(arrays: Sequence[np.ndarray], sizes: Sequence[int], dtype) -> tuple[int, list[np.ndarray]]:
    rows = []
    count = None
    for array, size in zip(arrays, sizes):
        flat = np.ascontiguousarray(array, dtype=dtype).reshape(-1)
        if flat.size % size:
            raise ValueError(f"input of {flat.size} elements is not a whole number of {size}-element samples")
        n = flat.size // size
        if count is not None and n != count:
            raise ValueError("inputs have different sample counts")
        count = n
        rows.append(flat.reshape(n, size))
    return count or 0, rows


def run_host(exe: str | pathlib.Path, src: Sources, inputs: Sequence[np.ndarray], *, float_io: bool = False, timeout: float = 600) -> list[np.ndarray]:
    """Run a host build on ``inputs`` (one array per model input, samples along the first axis, or
    flat); returns one ``(samples, output elements)`` array per model output (int8, or float32)."""
    dtype = np.float32 if float_io else np.int8
    count, rows = _stack_rows(inputs, src.input_bytes, dtype)
    stdin = b"".join(b"".join(row[n].tobytes() for row in rows) for n in range(count))
    stdout = _run([str(exe)], what=f"host run of {src.model}", timeout=timeout, stdin=stdin).stdout
    flat = np.frombuffer(stdout, dtype=dtype)
    per_sample = sum(src.output_bytes)
    if flat.size != count * per_sample:
        raise HarnessError(f"host run of {src.model}: {flat.size} output elements, expected {count * per_sample}")
    table = flat.reshape(count, per_sample)
    bounds = np.cumsum((0, *src.output_bytes))
    return [table[:, bounds[i] : bounds[i + 1]].copy() for i in range(len(src.output_bytes))]


class HostProcess:
    """A host build kept running: samples go through its stdin and results come back on stdout,
    so many small calls (``--eval`` with batch-1 models) do not start a process each.

    Args:
        exe: the executable of :func:`build_host`; src: its :class:`Sources`; float_io: as built.
    """

    def __init__(self, exe: str | pathlib.Path, src: Sources, *, float_io: bool = False) -> None:
        self.src, self.dtype = src, np.float32 if float_io else np.int8
        self._process = subprocess.Popen([str(exe)], stdin=subprocess.PIPE, stdout=subprocess.PIPE)

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        """As :func:`run_host`, on the running process."""
        count, rows = _stack_rows(inputs, self.src.input_bytes, self.dtype)
        per_sample = sum(self.src.output_bytes) * np.dtype(self.dtype).itemsize
        table = []
        for n in range(count):
            self._process.stdin.write(b"".join(row[n].tobytes() for row in rows))
            self._process.stdin.flush()
            data = self._process.stdout.read(per_sample)
            if len(data) != per_sample:
                raise HarnessError(f"host run of {self.src.model}: the program stopped (exit {self._process.poll()})")
            table.append(np.frombuffer(data, dtype=self.dtype))
        flat = np.stack(table) if table else np.zeros((0, sum(self.src.output_bytes)), self.dtype)
        bounds = np.cumsum((0, *self.src.output_bytes))
        return [flat[:, bounds[i] : bounds[i + 1]].copy() for i in range(len(self.src.output_bytes))]

    def close(self) -> None:
        if self._process.poll() is None:
            self._process.stdin.close()
            self._process.wait(timeout=10)
            self._process.stdout.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown: nothing left to report to
            pass


def qemu_available() -> bool:
    """True when ``arm-none-eabi-gcc`` and ``qemu-system-arm`` are on PATH."""
    return shutil.which("arm-none-eabi-gcc") is not None and shutil.which("qemu-system-arm") is not None


def _qemu_driver(src: Sources, rows: list[np.ndarray], count: int) -> str:
    lines = ["#include <stdint.h>", "#include <stdio.h>", f'#include "{src.model}.h"', ""]
    for i, row in enumerate(rows):
        values = ",".join(str(int(v)) for v in row.reshape(-1))
        lines.append(f"static const int8_t samples{i}[{count * src.input_bytes[i]}] = {{{values}}};")
    for i, size in enumerate(src.output_bytes):
        lines.append(f"static int8_t out{i}[{size}];")
    lines += ["", "int main(void)", "{", f"    for (unsigned n = 0; n < {count}u; ++n) {{"]
    args = [f"&samples{i}[n * {src.input_bytes[i]}u]" for i in range(len(src.input_bytes))] + [f"out{i}" for i in range(len(src.output_bytes))]
    lines.append(f"        {src.model}_invoke({', '.join(args)});")
    lines.append('        printf("S");')
    for i, size in enumerate(src.output_bytes):
        lines.append(f"        for (unsigned k = 0; k < {size}u; ++k) printf(\"%02x\", (unsigned)(uint8_t)out{i}[k]);")
    lines += ['        printf("\\n");', "    }", "    return 0;", "}", ""]
    return "\n".join(lines)


def build_qemu(src: Sources, build_dir: str | pathlib.Path, inputs: Sequence[np.ndarray], *, cflags: Sequence[str] = ARM_CFLAGS) -> pathlib.Path:
    """Cross-compile the source folder with the samples ``inputs`` compiled in (int8; one array per
    model input) for QEMU's mps2-an386 (Cortex-M4); returns the ELF's path.

    Raises:
        HarnessError: ``arm-none-eabi-gcc`` is missing or reports an error.
    """
    build_dir = pathlib.Path(build_dir)
    build_dir.mkdir(parents=True, exist_ok=True)
    count, rows = _stack_rows(inputs, src.input_bytes, np.int8)
    driver = build_dir / f"{src.model}_qemu_main.c"
    driver.write_text(_qemu_driver(src, rows, count))
    elf = build_dir / f"{src.model}_qemu.elf"
    command = [
        "arm-none-eabi-gcc", *cflags, "--specs=rdimon.specs", "-T", str(QEMU_SUPPORT / "mps2_an386.ld"),
        "-I", str(src.directory), *map(str, src.c_files()), str(driver), str(QEMU_SUPPORT / "startup.c"),
        "-o", str(elf), "-lc", "-lrdimon", "-lm",
    ]
    _run(command, what=f"arm-none-eabi-gcc build of {src.model}", timeout=600)
    return elf


def run_qemu(elf: str | pathlib.Path, src: Sources, *, timeout: float = 900) -> list[np.ndarray]:
    """Run an ELF from :func:`build_qemu` in ``qemu-system-arm -M mps2-an386 -semihosting``;
    returns one ``(samples, output bytes)`` int8 array per model output."""
    command = ["qemu-system-arm", "-M", QEMU_MACHINE, "-nographic", "-semihosting", "-kernel", str(elf)]
    stdout = _run(command, what=f"QEMU run of {src.model}", timeout=timeout).stdout.decode()
    lines = [line[1:] for line in stdout.splitlines() if line.startswith("S")]
    per_sample = sum(src.output_bytes)
    table = np.array([np.frombuffer(bytes.fromhex(line), dtype=np.int8) for line in lines]).reshape(len(lines), per_sample)
    bounds = np.cumsum((0, *src.output_bytes))
    return [table[:, bounds[i] : bounds[i + 1]].copy() for i in range(len(src.output_bytes))]


def arm_size(src: Sources, build_dir: str | pathlib.Path, *, cflags: Sequence[str] = ARM_CFLAGS, cc: str = "arm-none-eabi-gcc") -> dict[str, int]:
    """Compile the source folder's ``.c`` files to objects with ``cc`` (default: Cortex-M4) and sum
    the matching ``size`` tool's figures (``arm-none-eabi-size`` for ``arm-none-eabi-gcc``).

    Returns:
        ``{"text", "data", "bss", "flash", "ram"}`` in bytes: text is code plus ``const`` data
        (weights, parameters), ``flash = text + data``, ``ram = data + bss`` (the arena is bss).
    """
    build_dir = pathlib.Path(build_dir)
    build_dir.mkdir(parents=True, exist_ok=True)
    objects = []
    for source in src.c_files():
        obj = build_dir / (source.stem + ".o")
        _run([cc, *cflags, "-I", str(src.directory), "-c", str(source), "-o", str(obj)], what=f"{cc} -c {source.name}", timeout=600)
        objects.append(str(obj))
    size_tool = cc[: -len("gcc")] + "size" if cc.endswith("gcc") else "size"
    out = _run([size_tool, "-t", *objects], what=size_tool, timeout=60).stdout.decode().splitlines()
    text, data, bss = (int(v) for v in out[-1].split()[:3])
    return {"text": text, "data": data, "bss": bss, "flash": text + data, "ram": data + bss}
