"""The ``sanitize`` command line: a thin layer over the Python API.

Exit codes (CI pipelines gate on them):
  0  finished and the gate passed (by default: nothing flagged)
  1  finished and the gate failed (by default: poison flagged; see --max-flagged-fraction and
     --fail-on-detect)
  2  bad usage or bad input (one line on stderr, no traceback; nothing written)
  3  internal error: a bug or out of memory (one line naming the error and its traceback file)
  130, 143, 129  interrupted (Ctrl-C, SIGTERM, SIGHUP); nothing written
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import traceback
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from .data import ImageDataset, load_image_folder, load_reserve
from .domains import SEED_RANGE, check_fraction
from .errors import SanitizeError
from .exits import (  # noqa: F401 -- EXIT_* are part of this module's interface
    DEBUG_ENV,
    EXIT_BAD_INPUT,
    EXIT_CLEAN,
    EXIT_FLAGGED,
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    INTERRUPTED,
    Terminated,
    catch_termination,
    crash_line,
    stopped,
    warnings_as_notes,
    write_crash_log,
)
from .features import FORMATS, FeatureDataset, detect_format, load_feature_reserve, load_features, write_features
from .html_report import write_html_report
from .output import claim_out_dir, staged_output, write_image_subset
from .progress import Progress, RichProgress, Silent
from .report import build_report, read_report, write_report
from .result import DetectionResult

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Find and remove backdoor-poisoned samples from a training set.")
stdout = Console()
stderr = Console(stderr=True)

Dataset = ImageDataset | FeatureDataset
# The reserve is None only for commands whose detector works without one (``sanitize scan``).
Detect = Callable[[Dataset, Dataset | None, Progress], DetectionResult]

DataArg = Annotated[Path, typer.Argument(help="Data to inspect: an image folder (one sub-folder per class) or "
                                              "feature rows (EMBER X_*.dat folder, .npz/.npy, raw .jsonl).")]
ReserveOpt = Annotated[Path, typer.Option("--reserve", "-r",
                                          help="Trusted clean data in the same form (class folders or feature rows).")]
FormatOpt = Annotated[str, typer.Option("--format", help="Input kind: auto, images, ember, npz or jsonl.")]
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
HtmlOpt = Annotated[bool, typer.Option(
    "--html/--no-html", help="Also write report.html, a self-contained page with thumbnails and histograms.")]


def check_arch(arch: str, also: tuple[str, ...] = ()) -> None:
    """Refuse an --arch that is neither ``auto``, one of ``also``, nor a registered model."""
    from .models import available_models

    if arch != "auto" and arch not in also and arch not in available_models():
        raise SanitizeError(f"unknown --arch {arch!r}; choose from {', '.join(('auto', *also, *available_models()))}")


def refuse_ember_mlp_on_images(arch: str, data: Dataset) -> None:
    """``--arch ember_mlp`` is the feature-row network (ct and asset accept it): not for images."""
    if arch == "ember_mlp" and not isinstance(data, FeatureDataset):
        raise SanitizeError("--arch ember_mlp is for feature rows; image folders use a CNN")


def parse_size(size: str | None) -> tuple[int, int] | None:
    if size is None:
        return None
    try:
        parts = [int(p) for p in size.lower().split("x")]
    except ValueError:
        raise SanitizeError(f"--size {size!r}: expected N or HxW, e.g. 32 or 32x32") from None
    if len(parts) not in (1, 2) or min(parts) < 4:
        raise SanitizeError(f"--size {size!r}: expected N or HxW with sides of at least 4 pixels")
    return (parts[0], parts[-1])


@dataclass
class RunOptions:
    """Options every detector command shares: where to write, how to talk, when to fail the gate."""

    out: Path
    force: bool = False
    size: str | None = None
    quiet: bool = False
    json_only: bool = False
    max_flagged_fraction: float = 0.0
    fail_on_detect: bool = False
    format: str = "auto"  # input kind: auto | images | ember | npz | jsonl
    html: bool = True  # also write the self-contained report.html

    def __post_init__(self) -> None:
        if not 0.0 <= self.max_flagged_fraction <= 1.0:
            raise SanitizeError(f"--max-flagged-fraction {self.max_flagged_fraction}: expected a value in [0, 1]")
        if self.format not in FORMATS:
            raise SanitizeError(f"--format {self.format!r}: expected one of {', '.join(FORMATS)}")


def gate(summary: dict, max_flagged_fraction: float = 0.0, fail_on_detect: bool = False) -> dict:
    """The CI verdict: fail when more than ``max_flagged_fraction`` of the samples is flagged
    (0, the default, fails on any flag), or, with ``fail_on_detect``, whenever a target class is
    suspected even if few samples were flagged."""
    over = summary["n_flagged"] > 0 if max_flagged_fraction == 0 else (
        summary["flagged_fraction"] > max_flagged_fraction)
    detected = fail_on_detect and bool(summary["suspected_classes"])
    reasons = []
    if over:
        reasons.append(f"flagged fraction {summary['flagged_fraction']:.4f} > {max_flagged_fraction}")
    if detected:
        reasons.append(f"suspected classes: {', '.join(summary['suspected_classes'])}")
    passed = not reasons
    return {"passed": passed, "exit_code": EXIT_CLEAN if passed else EXIT_FLAGGED,
            "max_flagged_fraction": max_flagged_fraction, "fail_on_detect": fail_on_detect,
            "reasons": reasons}


def load_inputs(data_dir: Path, reserve_dir: Path | None, opts: RunOptions) -> tuple[Dataset, Dataset | None]:
    """The inspected data and its reserve, read as the kind ``opts.format`` names (or detected)."""
    kind = detect_format(data_dir) if opts.format == "auto" else opts.format
    if kind == "images":
        data = load_image_folder(data_dir, size=parse_size(opts.size))
        return data, load_reserve(reserve_dir, data) if reserve_dir is not None else None
    if opts.size is not None:
        raise SanitizeError("--size applies to image folders, not feature rows")
    data = load_features(data_dir, kind)
    return data, load_feature_reserve(reserve_dir, data) if reserve_dir is not None else None


def write_kept(data: Dataset, keep, directory: Path) -> None:
    """The cleaned set in the input's own form: image files, or feature rows in the input format."""
    if isinstance(data, FeatureDataset):
        write_features(data, keep, directory)
    else:
        write_image_subset(data, keep, directory)


def write_html(report: dict, data: Dataset, directory: Path) -> None:
    """report.html with the evidence the data allows: thumbnails and triggers, or feature contrasts."""
    if isinstance(data, FeatureDataset):
        write_html_report(report, directory, features=data.X, feature_names=data.feature_names)
    else:
        write_html_report(report, directory, images=data.images)


def run_detector(detect: Detect, data_dir: Path, reserve_dir: Path | None, opts: RunOptions) -> int:
    """load -> detect -> decide -> write, shared by every detector command (``reserve_dir`` may be None).

    ``--out`` is checked and locked before the inputs are read, and stays locked until the results
    are in place, so a second run to the same folder is refused at once."""
    with claim_out_dir(opts.out, [data_dir, reserve_dir], opts.force) as out:
        report = _detect_and_write(detect, data_dir, reserve_dir, opts, out)
    if opts.json_only:
        print(json.dumps({"summary": report["summary"], "out": str(out)}))
    elif not (opts.quiet or opts.json_only):
        print_summary(report, out)
    return report["summary"]["gate"]["exit_code"]


def _detect_and_write(detect: Detect, data_dir: Path, reserve_dir: Path | None, opts: RunOptions,
                      out: Path) -> dict:
    warned: list[str] = []
    with warnings_as_notes(warned):
        data, reserve = load_inputs(data_dir, reserve_dir, opts)
        bars = RichProgress() if not (opts.quiet or opts.json_only) else nullcontext(Silent())
        with bars as progress:
            result = detect(data, reserve, progress)
    result.notes.extend(warned)
    report = build_report(data, result)
    report["summary"]["gate"] = gate(report["summary"], opts.max_flagged_fraction, opts.fail_on_detect)
    with staged_output(out, opts.force) as staging:
        write_kept(data, result.kept_indices, staging)
        write_report(report, staging)
        if opts.html:
            write_html(report, data, staging)
    return report


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


@app.command("ct")
def ct_command(
    data: DataArg,
    reserve: ReserveOpt,
    out: OutOpt,
    schedule: Annotated[str, typer.Option(help="fast (default), reference (the official code's CIFAR-10 "
                                               "settings) or reference-gtsrb (its GTSRB settings).")] = "fast",
    arch: Annotated[str, typer.Option(help="Model: auto, resnet18, small_cnn, mobilenet_v2, vgg16, "
                                           "densenet121 (auto: resnet18 on a GPU at >= 32 px, else small_cnn; "
                                           "feature rows: the ember_mlp network).")
                    ] = "auto",
    device: DeviceOpt = "auto",
    seed: SeedOpt = 0,
    alpha: AlphaOpt = 1e-3,
    size: SizeOpt = None,
    force: ForceOpt = False,
    quiet: QuietOpt = False,
    json_only: JsonOnlyOpt = False,
    max_flagged_fraction: MaxFlaggedOpt = 0.0,
    fail_on_detect: FailOnDetectOpt = False,
    fmt: FormatOpt = "auto",
    html: HtmlOpt = True,
) -> int:
    """Confusion Training (Qi et al., USENIX Security 2023): flag poison samples in DATA."""
    from .detectors.canaries import check_alpha
    from .detectors.ct import ConfusionTraining, get_schedule
    from .detectors.ct_features import FeatureConfusionTraining
    from .devices import resolve_device

    get_schedule(schedule)
    resolve_device(device)
    check_arch(arch, also=("ember_mlp",))
    check_alpha(alpha)

    def detect(d: Dataset, r: Dataset, progress: Progress) -> DetectionResult:
        if isinstance(d, FeatureDataset):
            return FeatureConfusionTraining(schedule, arch, device, seed, progress, alpha=alpha).detect(d, r)
        refuse_ember_mlp_on_images(arch, d)
        return ConfusionTraining(schedule, arch, device, seed, progress, alpha).detect(d, r)

    return run_detector(detect, data, reserve, RunOptions(out, force, size, quiet, json_only, max_flagged_fraction,
                                                          fail_on_detect, fmt, html))


@app.command("demo")
def demo_command(
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Where to write (default: a new temp folder).")
                   ] = None,
    rate: Annotated[float, typer.Option(help="Poison rate of the BadNet corner patch.")] = 0.05,
    device: DeviceOpt = "auto",
    seed: SeedOpt = 0,
    quiet: QuietOpt = False,
) -> int:
    """Self-test on bundled data: poison scikit-learn's digits with a corner patch, run CT, score it."""
    from . import examples
    from .attacks import badnet
    from .detectors.ct import ConfusionTraining

    check_fraction(rate)  # before anything is created
    if out and out.exists() and not out.is_dir():
        raise SanitizeError(f"--out {out} exists and is not a folder")
    if out and out.exists() and any(out.iterdir()):
        raise SanitizeError(f"--out {out} exists and is not empty")
    root = Path(out) if out else Path(tempfile.mkdtemp(prefix="sanitize-demo-"))
    root.mkdir(parents=True, exist_ok=True)
    inspected, reserve = examples.split_reserve(examples.digits(), 0.25, seed=seed)
    poisoned = badnet(inspected, rate, target=0, seed=seed)
    write_image_subset(poisoned.dataset, range(len(poisoned.dataset)), root / "data")
    write_image_subset(reserve, range(len(reserve)), root / "reserve")
    if not quiet:
        stdout.print(f"digits: {len(inspected)} images, {len(poisoned.poison_indices)} poisoned with a "
                     f"corner patch -> class '0'; reserve: {len(reserve)} clean images\n"
                     f"written to {root}/data and {root}/reserve")

    def detect(d: ImageDataset, r: ImageDataset, progress: Progress) -> DetectionResult:
        return ConfusionTraining("fast", "auto", device, seed, progress).detect(d, r)

    run_detector(detect, root / "data", root / "reserve", RunOptions(root / "cleaned", quiet=quiet))
    truth = set(poisoned.dataset.paths[i] for i in poisoned.poison_indices)
    report = read_report(root / "cleaned" / "report.json")
    flagged = {s["path"] for s in report["samples"] if s["flagged"]}
    n_clean = len(report["samples"]) - len(truth)
    tpr = len(flagged & truth) / max(1, len(truth))
    fpr = len(flagged - truth) / max(1, n_clean)
    stdout.print(f"ground truth: TPR {tpr:.3f} ({len(flagged & truth)}/{len(truth)} poison flagged), "
                 f"FPR {fpr:.4f} ({len(flagged - truth)}/{n_clean} clean flagged)\n"
                 f"report: {root / 'cleaned' / 'report.json'}")
    return EXIT_CLEAN


# Each module defines ``register(app)``; a module that is not there (yet) is skipped.
COMMAND_MODULES = ("sanitize.cli_attack", "sanitize.cli_asset", "sanitize.cli_scan", "sanitize.cli_bench",
                   "sanitize.cli_features")


def _register_subcommands() -> None:
    """Attach command groups that live in their own modules (attack, evaluate, ...)."""
    from importlib import import_module

    for module in COMMAND_MODULES:
        try:
            import_module(module).register(app)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise


# Run as ``python -m sanitize.cli`` this file is ``__main__``, a second copy of the module; command
# modules import ``sanitize.cli`` for the shared options, so only the package copy registers them
# and ``__main__`` hands over to it (otherwise the two copies import each other half-initialised).
if __name__ != "__main__":
    _register_subcommands()


def _usage_error_message(exc: BaseException) -> str | None:
    """The one-line message of a Click usage error, whichever Click copy raised it.

    Recent Typer releases vendor Click, so the exception classes differ between versions; a usage
    error is recognised by Click's interface (``format_message`` and ``exit_code``).
    """
    if hasattr(exc, "format_message") and hasattr(exc, "exit_code"):
        return str(exc.format_message())
    return None


def main(argv: list[str] | None = None) -> None:
    """Entry point: results to 0/1, user errors to one line + exit 2, crashes to one line + exit 3."""
    catch_termination()
    try:
        with warnings_as_notes([]):  # the commands that do not write a report: kept off stderr (see there)
            code = app(args=argv, standalone_mode=False)
    except SanitizeError as exc:
        _fail(str(exc))
    except (KeyboardInterrupt, Terminated) as exc:
        line, code = stopped(exc)
        stderr.print(line, markup=False)
        sys.exit(code)
    except Exception as exc:
        kind = type(exc).__name__
        if kind == "Exit":
            sys.exit(getattr(exc, "exit_code", 0))
        if kind == "Abort":
            stderr.print(INTERRUPTED, markup=False)
            sys.exit(EXIT_INTERRUPTED)
        message = _usage_error_message(exc)
        if message is None:
            _crash(exc)
        if not message.strip():  # bare ``sanitize``: the usage was printed, there is nothing to add
            sys.exit(EXIT_BAD_INPUT)
        _fail(message)
    sys.exit(code if isinstance(code, int) else 0)


def _crash(exc: BaseException) -> None:
    """An internal error: one line and exit 3, never 1 (the code of a failed gate)."""
    log = write_crash_log(exc)
    if os.environ.get(DEBUG_ENV):
        traceback.print_exception(type(exc), exc, exc.__traceback__)
    stderr.print(crash_line(exc, log), markup=False, highlight=False, soft_wrap=True, emoji=False)
    sys.exit(EXIT_INTERNAL)


def _fail(message: str) -> None:
    stderr.print(f"error: {message}", markup=False, highlight=False, soft_wrap=True, emoji=False)
    sys.exit(EXIT_BAD_INPUT)


if __name__ == "__main__":
    from sanitize.cli import main as package_main

    package_main()
