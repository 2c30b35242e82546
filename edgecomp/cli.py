"""The ``edgecomp`` command line: a thin click group over the Python API. Only this module prints.

Results go to stdout (a rich table, or JSON with ``--json``); diagnostics and progress to stderr.
Errors print one line ``edgecomp: error: ...`` on stderr and exit with the code of the
:class:`~edgecomp.errors.EdgecompError` subclass (see :mod:`edgecomp.errors`); no traceback.
"""

from __future__ import annotations

import json
import math
import os
import sys
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from edgecomp import __version__
from edgecomp.errors import EdgecompError

# Piped output (a build log) gets wide tables instead of rich's 80-column default.
class _Console(Console):
    """rich's Console, but a closed stdout pipe (``edgecomp ... | head``) after the work is done and
    written is no error: exit 0, not rich's 1 (which the README reserves for internal errors)."""

    def on_broken_pipe(self) -> None:
        self.quiet = True
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise SystemExit(0)


stdout = _Console(width=None if sys.stdout.isatty() else 160)
stderr = Console(stderr=True)


def finite_json(value: Any) -> Any:
    """``value`` with every non-finite float (an infinite SQNR of identical outputs, a NaN) replaced
    by None, so ``--json`` prints standard JSON (RFC 8259 has no Infinity or NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: finite_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_json(item) for item in value]
    return value


def _fail(error: EdgecompError) -> None:
    click.echo(f"edgecomp: error: {error}", err=True)
    sys.exit(error.exit_code)


class _Group(click.Group):
    """Turns every EdgecompError raised by a command into one stderr line and its exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except EdgecompError as error:
            _fail(error)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except BrokenPipeError:  # click.echo into a closed pipe: as _Console.on_broken_pipe
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(0)
        except Exception as error:  # a bug in edgecomp or a plugin: one line, exit code 1
            if os.environ.get("EDGECOMP_DEBUG"):
                raise
            click.echo(f"edgecomp: internal error: {type(error).__name__}: {error} (set EDGECOMP_DEBUG=1 for the traceback)", err=True)
            sys.exit(EdgecompError.exit_code)


@click.group(cls=_Group)
@click.version_option(__version__, prog_name="edgecomp")
def cli() -> None:
    """edgecomp: compile ONNX models to quantized artifacts for edge devices."""


def _bytes(count: int | None) -> str:
    return "-" if count is None else f"{count:,} B"


def _format(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _scalar_rows(metadata: dict[str, Any], prefix: str) -> list[tuple[str, str]]:
    """Rows for the human report: scalars as they are, flat dicts on one line, nested dicts recursed."""
    rows = []
    for key, value in sorted(metadata.items()):
        if isinstance(value, (str, int, float, bool)):
            rows.append((f"{prefix}: {key}", _format(value)))
        elif isinstance(value, dict) and all(isinstance(v, (str, int, float, bool)) for v in value.values()):
            rows.append((f"{prefix}: {key}", ", ".join(f"{k}={_format(v)}" for k, v in value.items())))
        elif isinstance(value, dict):
            rows.extend(_scalar_rows(value, f"{prefix}: {key}"))
    return rows


def _print_table(title: str, columns: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    table = Table(title=title)
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*row)
    stdout.print(table)


def _print_report(report: dict[str, Any]) -> None:
    summary = Table(title=f"edgecomp: {report['model']['path']} -> {report['target']} ({report['backend']}, quantize={report['quantize']})")
    summary.add_column("item")
    summary.add_column("value", overflow="fold")
    sizes = report["sizes"]
    summary.add_row("input model", _bytes(sizes["input_model_bytes"]))
    summary.add_row("flash needed / budget", f"{_bytes(sizes['flash_bytes'])} / {_bytes(sizes['flash_budget_bytes'])}")
    memory = report.get("memory") or {}
    if memory:
        summary.add_row("tensor arena (RAM)", f"{_bytes(memory['arena_bytes'])} planned, lower bound {_bytes(memory['lower_bound_bytes'])}, "
                        f"TFLite Micro's planner {_bytes(memory['tflm_greedy_bytes'])}; budget {_bytes(memory['ram_budget_bytes'])}")
    if report["calibration"]:
        summary.add_row("calibration", f"{report['calibration']['samples']} samples, {report['calibration']['method']}")
    for key, value in _scalar_rows(report["backend_metadata"], "backend"):
        summary.add_row(key, value)
    summary.add_row("time", ", ".join(f"{stage} {seconds:.2f}s" for stage, seconds in report["timings_s"].items()))
    stdout.print(summary)
    _print_table("artifacts", ("path", "bytes", "sha256"),
                 [(entry["path"], f"{entry['bytes']:,}", entry["sha256"][:16]) for entry in report["artifacts"]])
    selective = report.get("selective")
    if selective:
        floated = set(selective["float_nodes"])
        _print_table(
            f"selective: layer sensitivity (all-int8 SQNR {selective['all_int8_sqnr_db']:.2f} dB); chart in sensitivity.png",
            ("node", "op", "only this int8 (dB)", "all but this (dB)", "gain (dB)", "kept float"),
            [(row["node"], row["op_type"], _format(row["only_this_int8_db"]), _format(row["all_but_this_db"]), _format(row["gain_db"]),
              "yes" if row["node"] in floated else "") for row in selective["sensitivity"]],
        )
        _print_table(
            f"selective: search for {selective['goal']}" if selective["goal"] != "none" else "selective: no goal, all int8",
            ("float layers", "SQNR (dB)", "accuracy", "meets goal"),
            [(", ".join(step["float_layers"]) or "-", _format(step["sqnr_db"]), _format(step["accuracy"]), str(step["meets_goal"]))
             for step in selective["search"]],
        )
    evaluation = report.get("evaluation")
    if evaluation:
        table = Table(title=f"FP32 vs compiled on {evaluation['samples']} evaluation samples")
        for column in ("output", "SQNR (dB)", "max abs error", "top-1 agreement", "accuracy FP32", "accuracy compiled"):
            table.add_column(column)
        for name, entry in evaluation["outputs"].items():
            table.add_row(
                name,
                f"{entry['sqnr_db']:.2f}",
                f"{entry['max_abs_error']:.4g}",
                f"{entry['top1_agreement']:.2%}",
                f"{entry['accuracy_fp32']:.2%}" if "accuracy_fp32" in entry else "-",
                f"{entry['accuracy_compiled']:.2%}" if "accuracy_compiled" in entry else "-",
            )
        stdout.print(table)


def _key_values(ctx, param, values: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    """``KEY=VALUE`` strings -> ``(key, value)`` pairs (a usage error, exit 2, otherwise)."""
    pairs = []
    for text in values:
        key, sep, value = text.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise click.BadParameter(f"{text!r} is not KEY=VALUE")
        pairs.append((key.strip(), value.strip()))
    return tuple(pairs)


@cli.command("compile")
@click.argument("model")
@click.option("-t", "--target", required=True, help="Target name (see `edgecomp targets`) or path to a target .toml.")
@click.option("-b", "--backend", default=None, help="Backend name (see `edgecomp plugins`); default: the target's default_backend.")
@click.option(
    "-q", "--quantize", type=click.Choice(["auto", "none", "naive", "hybrid", "selective", "dynamic", "qat"]), default="auto", show_default=True,
    help="none: float32; naive: every quantizable operator INT8 (needs --calibration); hybrid: INT8 for --int8-ops, "
    "the rest float32 (needs --calibration); selective: per-tensor calibration method, sensitivity analysis, the most "
    "sensitive layers in float until --min-sqnr/--max-accuracy-drop is met; dynamic: INT8 weights, float activations; qat: keep the QDQ scales "
    "a QAT or pre-quantized model carries; auto: qat for models with QuantizeLinear/DequantizeLinear, else naive.",
)
@click.option("--int8-ops", default=None, help="Comma-separated operator types run in INT8 by -q hybrid (default Conv,Gemm,MatMul; only with -q hybrid).")
@click.option("--equalize", is_flag=True, help="Cross-layer equalization before quantizing (Nagel et al. 2019).")
@click.option("--bias-correction", is_flag=True, help="Empirical bias correction after quantizing (Nagel et al. 2019).")
@click.option("--min-sqnr", "min_sqnr_db", type=float, default=None, help="-q selective goal: output SQNR vs FP32 (dB) on the calibration data.")
@click.option("--max-accuracy-drop", type=float, default=None, help="-q selective goal: accuracy drop vs FP32 in percentage points on labelled --eval data.")
@click.option("--plan", "plan_path", type=click.Path(), default=None, help="Apply a (user-edited) quantization_plan.json: node precisions, per-tensor methods or fixed parameters.")
@click.option("--calibration", type=click.Path(), default=None, help="Calibration data: .npz, folder of .npy, image folder, or test_data_set_* folders.")
@click.option("--calibration-method", type=click.Choice(["minmax", "percentile", "entropy", "mse"]), default="minmax", show_default=True, help="How activation ranges are chosen from the calibration data.")
@click.option("--calibration-limit", type=click.IntRange(min=1), default=None, help="Use at most N calibration samples.")
@click.option("--preprocessing", type=click.Path(dir_okay=False), default=None, help="Image preprocessing TOML for image folders.")
@click.option("--eval", "eval_path", type=click.Path(), default=None, help="Evaluation data, any calibration format (npz: x or input names, optional labels y): FP32 vs compiled comparison.")
@click.option("-o", "--output", type=click.Path(), default=None, help="Output folder (default: <model>-<target>).")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True, help="Samples per run when calibrating, verifying and evaluating (models with a dynamic batch axis); the artifact's input shape is unchanged.")
@click.option("--dump-ir", type=click.Path(file_okay=False), default=None, help="Write the model after every pass to this folder.")
@click.option("--io-layout", type=click.Choice(["nchw", "nhwc"]), default=None, help="Layout of 4-D inputs/outputs in the artifact (default: the ONNX model's).")
@click.option(
    "--backend-option", "backend_options", multiple=True, callback=_key_values, metavar="KEY=VALUE",
    help="A backend setting, repeatable; `edgecomp plugins` lists each backend's options (tflite: weights=float32|float16, dynamic_kernels=auto|hybrid|dequantize, grouped_convolution=native|split).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the compile report as JSON on stdout.")
def compile_command(model, target, backend, quantize, int8_ops, equalize, bias_correction, min_sqnr_db, max_accuracy_drop, plan_path, calibration, calibration_method, calibration_limit, preprocessing, eval_path, output, batch_size, dump_ir, io_layout, backend_options, as_json) -> None:
    """Compile MODEL (ONNX) for a target and write the artifacts and quantization plan."""
    from rich.progress import Progress

    from edgecomp.compile import CompileOptions, compile_model

    options = CompileOptions(
        model=model, target=target, backend=backend, quantize=quantize, calibration=calibration,
        calibration_method=calibration_method, calibration_limit=calibration_limit, preprocessing=preprocessing,
        eval=eval_path, output=output, batch_size=batch_size, dump_ir=dump_ir, io_layout=io_layout, backend_options=backend_options,
        int8_ops=None if int8_ops is None else tuple(op.strip() for op in int8_ops.split(",") if op.strip()), plan=plan_path,
        min_sqnr_db=min_sqnr_db, max_accuracy_drop=max_accuracy_drop, equalize=equalize, bias_correction=bias_correction,
    )
    with Progress(console=stderr, transient=True, disable=not stderr.is_terminal) as bar:
        task = None

        def progress(stage: str, done: int, total: int) -> None:
            nonlocal task
            if task is None:
                task = bar.add_task(stage, total=total)
            bar.update(task, completed=done)

        result = compile_model(options, progress)
    for warning in result.report.get("warnings", []):
        click.echo(f"edgecomp: warning: {warning['node']}: {warning['kind']}: {warning['message']}", err=True)
    if as_json:
        click.echo(json.dumps(finite_json(result.report), indent=2, sort_keys=True, default=str, allow_nan=False))
    else:
        _print_report(result.report)


@cli.command("inspect")
@click.argument("model")
@click.option("-t", "--target", default="host-x86_64", show_default=True, help="Target for the backend support check.")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def inspect_command(model, target, as_json) -> None:
    """Op histogram, parameters, MACs, largest tensors, and which backends support MODEL."""
    import dataclasses

    from edgecomp.ir.analysis import summarize
    from edgecomp.ir.load import load_model
    from edgecomp.plugins import backends
    from edgecomp.targets import get_target

    ir_model = load_model(model)
    summary = summarize(ir_model)
    chosen = get_target(target)
    support = {name: backend.support(ir_model, chosen) for name, backend in backends().items()}
    if as_json:
        data = dataclasses.asdict(summary)
        data["support"] = {name: [dataclasses.asdict(u) for u in report.unsupported] for name, report in support.items()}
        click.echo(json.dumps(data, indent=2, sort_keys=True))
        return
    table = Table(title=f"{model}")
    table.add_column("item")
    table.add_column("value", overflow="fold")
    table.add_row("nodes", str(summary.num_nodes))
    table.add_row("parameters", f"{summary.parameters:,} ({summary.parameter_bytes:,} B)")
    table.add_row("MACs (batch 1)", f"{summary.macs:,}")
    table.add_row("peak live activations", f"{summary.peak_live_bytes:,} B")
    table.add_row("ops", ", ".join(f"{op} x{count}" for op, count in sorted(summary.op_histogram.items())))
    table.add_row("largest tensors", ", ".join(f"{name} ({size:,} B)" for name, size in summary.largest_tensors))
    for name, report in support.items():
        verdict = "all ops supported" if report.ok else "; ".join(f"{u.node} ({u.op_type}): {u.reason}" for u in report.unsupported)
        table.add_row(f"backend {name} on {chosen.name}", verdict)
    stdout.print(table)


@cli.command("targets")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def targets_command(as_json) -> None:
    """List the known targets with their default backend and budgets."""
    import dataclasses

    from edgecomp.targets import get_target, target_files

    targets = [get_target(name) for name in target_files()]
    if as_json:
        click.echo(json.dumps([dataclasses.asdict(t) for t in targets], indent=2, sort_keys=True))
        return
    table = Table(title="targets")
    for column in ("name", "kind", "default backend", "flash", "RAM", "description"):
        table.add_column(column, overflow="fold")
    for t in targets:
        table.add_row(t.name, t.kind, t.default_backend, _bytes(t.flash_bytes), _bytes(t.ram_bytes), t.description)
    stdout.print(table)


@cli.command("plugins")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def plugins_command(as_json) -> None:
    """List loaded plugins, their hooks, and the backends they register."""
    from edgecomp.plugins import backends, plugin_list

    rows = plugin_list()
    found = {name: backend.description for name, backend in backends().items()}
    options = {name: {key: list(values) for key, values in (getattr(backend, "option_choices", {}) or {}).items()} for name, backend in backends().items()}
    if as_json:
        click.echo(json.dumps({"plugins": rows, "backends": found, "backend_options": options}, indent=2, sort_keys=True))
        return
    table = Table(title="plugins")
    for column in ("plugin", "version", "hooks", "registered", "problem"):
        table.add_column(column, overflow="fold")
    for row in rows:
        registered = ", ".join([f"backend {b}" for b in row["backends"]] + [f"target {t}" for t in row["targets"]])
        table.add_row(row["name"], str(row["version"]), ", ".join(row["hooks"]), registered, "; ".join(row["problems"]))
    stdout.print(table)
    backend_table = Table(title="backends")
    backend_table.add_column("name")
    backend_table.add_column("description")
    backend_table.add_column("--backend-option")
    for name, description in found.items():
        backend_table.add_row(name, description, "; ".join(f"{key}={'|'.join(values)}" for key, values in options[name].items()))
    stdout.print(backend_table)


def _report_plugin_problems() -> None:
    """One stderr line per broken plugin; the rest of edgecomp keeps working."""
    from edgecomp.plugins import problems

    for problem in problems():
        click.echo(f"edgecomp: warning: {problem}", err=True)


def main() -> None:
    """Console-script entry point."""
    from edgecomp.plugins import register_commands

    register_commands(cli)
    _report_plugin_problems()
    cli(prog_name="edgecomp")
