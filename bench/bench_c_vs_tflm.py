"""edgecomp's ``c`` backend against TensorFlow Lite Micro: RAM and flash of the same INT8 models.

For each official MLPerf Tiny INT8 ``.tflite`` (KWS, VWW, IC, AD) this measures, in one run:

- **TFLM**: the arena the ``tflite-micro`` Python runtime (the TFLM interpreter, its
  RecordingMicroAllocator) allocates for the file: activations plus TFLM's own persistent data.
- **edgecomp**: the file's QDQ twin compiled with ``--quantize qat`` (same scales, zero points,
  weights and biases) by the ``c`` backend, the generated sources compiled for Cortex-M4
  (``arm-none-eabi-gcc -mcpu=cortex-m4 -mthumb -O2``) and measured with ``arm-none-eabi-size``:
  RAM = data + bss of the model and the kernel runtime (the arena and every other static), flash =
  text + data (code, weights, parameters).
- the activation **lower bound** (largest total size of tensors alive at one step) and the
  planned arena, against TFLite Micro's greedy-by-size planner on the same buffers.

Ratios printed: edgecomp RAM / TFLM arena, edgecomp RAM / lower bound (goal: within 1.10), and
edgecomp flash / (``.tflite`` size + TFLM's code). TFLM's code cannot be rebuilt here at run time
(no TFLM sources offline, and nothing is downloaded when benchmarks run), so it is the recorded
measurement :data:`TFLM_CODE_BYTES`.

Run: ``python bench/bench_c_vs_tflm.py [--json]`` (needs the dev extra and arm-none-eabi-gcc; AD
is skipped without the shared AD data only for the accuracy part, not here).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import re
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

MLPERF = ROOT / "tests" / "assets" / "mlperf_tiny"
MODELS = {
    "kws": (MLPERF / "kws" / "kws_ref_model_int8_qdq.onnx", MLPERF / "kws" / "kws_ref_model.tflite"),
    "vww": (MLPERF / "vww" / "vww_96_int8_qdq.onnx", MLPERF / "vww" / "vww_96_int8.tflite"),
    "ic": (MLPERF / "ic" / "pretrainedResnet_quant_qdq.onnx", MLPERF / "ic" / "pretrainedResnet_quant.tflite"),
    "ad": (MLPERF / "ad" / "ad01_int8_qdq.onnx", MLPERF / "ad" / "ad01_int8.tflite"),
}


TFLM_CODE_BYTES = {"kws": 35_568, "vww": 35_568, "ic": 37_836, "ad": 19_312}
"""Flash (text + data) TensorFlow Lite Micro's own code adds for each model's operator set, measured
once on 2026-11-29: tflite-micro commit 90b983c2b3f1 (reference kernels, no CMSIS-NN), its pinned
flatbuffers/gemmlowp/ruy headers, arm-none-eabi-g++ 12.2.1 ``-mcpu=cortex-m4 -mthumb
-mfloat-abi=hard -mfpu=fpv4-sp-d16 -Os -fno-rtti -fno-exceptions -ffunction-sections
-fdata-sections -DTF_LITE_STATIC_MEMORY -DTF_LITE_STRIP_ERROR_STRINGS`` (TFLM's release build),
a main with a ``MicroMutableOpResolver`` of exactly the model's operators, ``MicroInterpreter``,
``AllocateTensors`` and ``Invoke`` over a 1-byte model stub, linked ``--gc-sections --specs=nano.specs``;
``arm-none-eabi-size`` of that ELF minus the same program without TFLM. Includes the libgcc double
routines and libm functions TFLM's kernels call (about 4.7 KB)."""


def tflm_arena(path: pathlib.Path) -> int:
    """Total arena bytes TFLM's allocator used for the file (``print_allocations``, run in a child
    process whose stdout is captured: the extension writes through its own C++ streams)."""
    script = (
        "import sys\n"
        "from tflite_micro.python.tflite_micro import runtime\n"
        "interpreter = runtime.Interpreter.from_file(sys.argv[1], arena_size=1 << 21)\n"
        "interpreter.print_allocations()\n"
    )
    result = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True, check=True)
    match = re.search(r"Arena allocation total (\d+) bytes", result.stdout + result.stderr)
    if match is None:
        raise RuntimeError(f"tflite-micro printed no arena total for {path}")
    return int(match.group(1))


def edgecomp_figures(qdq: pathlib.Path, name: str, workdir: pathlib.Path) -> dict:
    from edgecomp_c.backend import CBackend
    from edgecomp_c.emit import c_identifier
    from edgecomp_c.harness import arm_size, read_sources

    from edgecomp.backend import LowerOptions
    from edgecomp.ir.load import load_model
    from edgecomp.passes.base import PassManager
    from edgecomp.passes.canonicalize import canonicalization_passes
    from edgecomp.targets import get_target

    model = PassManager(canonicalization_passes(fold_weight_dequantize=False))(load_model(qdq)).model
    artifact = CBackend(verify=False).lower(model, get_target("cortex-m4"), LowerOptions(quantize="qat", model_name=name))
    directory = workdir / name
    directory.mkdir(parents=True)
    for file_name, data in artifact.files.items():
        (directory / file_name).write_bytes(data)
    size = arm_size(read_sources(directory, c_identifier(name)), directory / "obj")
    memory = artifact.metadata["memory"]
    return {**size, **{key: memory[key] for key in ("arena_bytes", "lower_bound_bytes", "tflm_greedy_bytes")}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as name:
        workdir = pathlib.Path(name)
        for model, (qdq, official) in MODELS.items():
            data = official.read_bytes()
            ours = edgecomp_figures(qdq, model, workdir)
            row = {
                "model": model,
                "tflm_arena_bytes": tflm_arena(official),
                "tflite_bytes": len(data),
                "lower_bound_bytes": ours["lower_bound_bytes"],
                "tflm_greedy_activation_bytes": ours["tflm_greedy_bytes"],
                "edgecomp_arena_bytes": ours["arena_bytes"],
                "edgecomp_ram_bytes": ours["ram"],
                "edgecomp_flash_bytes": ours["flash"],
                "edgecomp_text_bytes": ours["text"],
            }
            row["ram_vs_tflm_arena"] = round(row["edgecomp_ram_bytes"] / row["tflm_arena_bytes"], 3)
            row["ram_vs_lower_bound"] = round(row["edgecomp_ram_bytes"] / row["lower_bound_bytes"], 3)
            row["tflm_code_bytes"] = TFLM_CODE_BYTES[model]
            row["flash_vs_tflite_plus_tflm"] = round(row["edgecomp_flash_bytes"] / (row["tflite_bytes"] + row["tflm_code_bytes"]), 3)
            rows.append(row)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    header = (
        f"{'model':6} {'lower bound':>11} {'TFLM greedy':>11} {'ec arena':>9} {'ec RAM':>8} {'TFLM arena':>10} {'RAM/TFLM':>8} {'RAM/bound':>9} "
        f"{'ec flash':>9} {'.tflite':>8} {'TFLM code':>9} {'flash/TFLM':>10}"
    )
    print(header)
    for r in rows:
        print(
            f"{r['model']:6} {r['lower_bound_bytes']:>11} {r['tflm_greedy_activation_bytes']:>11} {r['edgecomp_arena_bytes']:>9} {r['edgecomp_ram_bytes']:>8} "
            f"{r['tflm_arena_bytes']:>10} {r['ram_vs_tflm_arena']:>8.3f} {r['ram_vs_lower_bound']:>9.3f} {r['edgecomp_flash_bytes']:>9} {r['tflite_bytes']:>8} "
            f"{r['tflm_code_bytes']:>9} {r['flash_vs_tflite_plus_tflm']:>10.3f}"
        )
    print("RAM: data+bss of the generated model and kernels (arm-none-eabi-size, -mcpu=cortex-m4 -O2); TFLM arena: tflite-micro's allocator total.")
    print("flash/TFLM: edgecomp text+data over the .tflite plus TFLM's code (recorded measurement, TFLM_CODE_BYTES in this file).")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
