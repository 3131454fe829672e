"""What the detector commands share: their options, the consoles, and how a run is reported.

Kept free of torch and the detectors (they are imported when a command runs), so that
``sanitize --help`` and ``sanitize evaluate`` start at once.
"""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from ..domains import SEED_RANGE
from ..errors import SanitizeError
from ..exits import EXIT_CLEAN, launched

if TYPE_CHECKING:
    from ..pipeline import Detect, RunOptions

stdout = Console()
stderr = Console(stderr=True)

DataArg = Annotated[Path, typer.Argument(help="Data to inspect: an image folder (one sub-folder per class) or "
                                              "feature rows (EMBER X_*.dat folder, .npz/.npy, raw .jsonl).")]
ReserveOpt = Annotated[Path, typer.Option("--reserve", "-r",
                                          help="Trusted clean data in the same form (class folders or feature rows).")]


class InputFormat(str, Enum):
    """What DATA is: an image folder or one of the feature-row formats (``auto``: detected)."""

    auto = "auto"
    images = "images"
    unlabelled = "unlabelled"
    ember = "ember"
    npz = "npz"
    jsonl = "jsonl"


class CTScheduleName(str, Enum):
    """``ct --schedule`` (the library's :data:`sanitize.detectors.ct.SCHEDULES`; a test keeps them equal)."""

    fast = "fast"
    reference = "reference"
    reference_gtsrb = "reference-gtsrb"


class AssetScheduleName(str, Enum):
    """``asset --schedule`` (the same names for images and feature rows)."""

    fast = "fast"
    reference = "reference"


class ScanMethod(str, Enum):
    """``sanitize scan METHOD``: the registered detectors that read an ordinarily trained model."""

    spectral = "spectral"
    activation_clustering = "activation-clustering"
    strip = "strip"
    scan = "scan"
    spectre = "spectre"


FormatOpt = Annotated[InputFormat, typer.Option("--input-format", help="Input kind (auto: detected from the files).")]
# The flag's name until 0.1: accepted, hidden from --help, for one release.
OldFormatOpt = Annotated[InputFormat | None, typer.Option("--format", hidden=True)]


def input_format(given: InputFormat, old: InputFormat | None) -> str:
    """``--input-format``, or the old ``--format`` when that is what the user wrote."""
    if old is None:
        return given.value
    if given is not InputFormat.auto and given is not old:
        raise SanitizeError("--format is the old name of --input-format: give one of them")
    return old.value


OutOpt = Annotated[Path, typer.Option("--out", "-o", help="New folder for the cleaned dataset and reports.")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Replace --out if sanitize wrote it (never your own folder).")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N.")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Random seed; the same seed on CPU gives identical flags.",
                                      **SEED_RANGE)]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or summary table.")]
SizeOpt = Annotated[str | None, typer.Option(
    "--size", help="Resize images to N or HxW pixels (default: the most common size).")]
JsonOnlyOpt = Annotated[bool, typer.Option(
    "--json-only", help="Print only the report summary as one JSON document on stdout (implies --quiet).")]
MaxFlaggedOpt = Annotated[float, typer.Option(
    "--max-flagged-fraction", help="Exit 1 only when more than this fraction is flagged (0: any flag).")]
FailOnDetectOpt = Annotated[bool, typer.Option(
    "--fail-on-detect", help="Exit 1 whenever a target class is suspected, whatever the flagged fraction.")]
AlphaOpt = Annotated[float, typer.Option(
    "--alpha", help="False-alarm level of the class test: the chance that a clean data set has any class "
                    "suspected (default 0.001; Bonferroni over the classes).")]
class DecodeCacheMode(str, Enum):
    """``--decode-cache``: when image folders are decoded to (and mapped from) the on-disk cache."""

    auto = "auto"
    on = "on"
    off = "off"


CacheDirOpt = Annotated[Path | None, typer.Option(
    "--cache-dir", help="Where decoded image folders (and scan's trained models) are kept "
                        "(default: $SANITIZE_CACHE or ~/.cache/sanitize).")]
DecodeCacheOpt = Annotated[DecodeCacheMode, typer.Option(
    "--decode-cache", help="Decode image folders once to --cache-dir and map them on later runs: auto (folders "
                           "of 10,000 images or more), on, off.")]
StreamOpt = Annotated[bool | None, typer.Option(
    "--stream/--no-stream", help="Keep the images on the host and send them to the device a batch at a time "
                                 "(default: only when they would not fit the device's memory).")]
HtmlOpt = Annotated[bool, typer.Option(
    "--html/--no-html", help="Also write report.html, a self-contained page with thumbnails and histograms.")]


DATA_PARALLEL_COMMANDS = ("ct", "asset", "scan")


def refuse_torchrun(args: list[str]) -> None:
    """Under ``torchrun`` (``WORLD_SIZE`` > 1), only the commands that share their work out may run:
    any other would run once per process, racing for its outputs. Read from the environment, so
    that a plain run does not import torch for it."""
    if not launched():
        return
    command = next((a for a in args if not a.startswith("-")), None)
    if command is not None and command not in DATA_PARALLEL_COMMANDS:
        raise SanitizeError(f"torchrun: {command} runs in one process (only "
                            f"{', '.join(DATA_PARALLEL_COMMANDS)} runs data-parallel); start it without torchrun")


def join_torchrun(device: str) -> None:
    """Under ``torchrun``: join the process group before any data is read (no-op otherwise)."""
    from ..nn.devices import resolve_device
    from ..nn.distributed import start

    if launched():
        start(resolve_device(device))


def run_detector(detect: Detect, data_dir: Path, reserve_dir: Path | None, opts: RunOptions) -> int:
    """Run the pipeline (:func:`sanitize.pipeline.run`) and say what it found: the summary table,
    or one JSON document with ``--json-only``; the exit code is the gate's."""
    from .. import pipeline
    from ..nn.distributed import current

    report, out = pipeline.run(detect, data_dir, reserve_dir, opts)
    if not current().main:  # another rank of a torchrun run: rank 0 speaks for the run (and gives its exit code)
        return EXIT_CLEAN
    if opts.json_only:
        print(json.dumps({"summary": report["summary"], "out": str(out)}))
    elif not opts.quiet:
        print_summary(report, out)
    return report["summary"]["gate"]["exit_code"]


def print_summary(report: dict, out: Path) -> None:
    summary = report["summary"]
    table = Table(title=f"sanitize {summary['method']}", show_header=False)
    table.add_row("samples", str(summary["n_samples"]))
    table.add_row("flagged", f"{summary['n_flagged']} ({100 * summary['flagged_fraction']:.2f}%)")
    table.add_row("suspected classes", ", ".join(summary["suspected_classes"]) or "none")
    table.add_row("time", f"{summary['seconds']:.1f} s on {summary['device']}")
    settings = summary.get("settings", {})
    if settings:
        shown = ("schedule", "arch", "budget", "frr")
        table.add_row("settings", ", ".join(f"{k}={settings[k]}" for k in shown if k in settings))
    for note in summary["notes"]:
        table.add_row("note", note)
    gate_result = summary.get("gate")
    if gate_result:
        table.add_row("gate", "passed" if gate_result["passed"] else "failed: " + "; ".join(gate_result["reasons"]))
    table.add_row("output", str(out))
    stdout.print(table)
