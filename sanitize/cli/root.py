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

import os
import sys
import tempfile
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from ..domains import check_fraction
from ..errors import SanitizeError
from ..exits import (  # noqa: F401 -- EXIT_* are part of this module's interface
    DEBUG_ENV,
    EXIT_BAD_INPUT,
    EXIT_CLEAN,
    EXIT_FLAGGED,
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    INTERRUPTED,
    PEER_FAILED,
    Terminated,
    catch_termination,
    crash_line,
    peer_failed,
    release_termination,
    stopped,
    warnings_as_notes,
    write_crash_log,
)
from . import asset, attack, bench, features, scan
from .common import (
    AlphaOpt,
    CacheDirOpt,
    CTScheduleName,
    DataArg,
    DecodeCacheMode,
    DecodeCacheOpt,
    DeviceOpt,
    FailOnDetectOpt,
    ForceOpt,
    FormatOpt,
    HtmlOpt,
    InputFormat,
    JsonOnlyOpt,
    MaxFlaggedOpt,
    OldFormatOpt,
    OutOpt,
    QuietOpt,
    ReserveOpt,
    SeedOpt,
    SizeOpt,
    StreamOpt,
    input_format,
    join_torchrun,
    refuse_torchrun,
    run_detector,
    stderr,
    stdout,
)

if TYPE_CHECKING:
    from ..data.protocol import Dataset
    from ..progress import Progress
    from ..result import DetectionResult

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Find and remove backdoor-poisoned samples from a training set.")


@app.command("ct")
def ct_command(
    data: DataArg,
    reserve: ReserveOpt,
    out: OutOpt,
    schedule: Annotated[CTScheduleName, typer.Option(
        help="fast: ours (calibrated class test); reference: the official code's CIFAR-10 settings; "
             "reference-gtsrb: its GTSRB settings.")] = CTScheduleName.fast,
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
    fmt: FormatOpt = InputFormat.auto,
    fmt_old: OldFormatOpt = None,
    html: HtmlOpt = True,
    cache_dir: CacheDirOpt = None,
    decode_cache: DecodeCacheOpt = DecodeCacheMode.auto,
    stream: StreamOpt = None,
) -> int:
    """Confusion Training (Qi et al., USENIX Security 2023): flag poison samples in DATA."""
    from ..detectors.ct import ConfusionTraining
    from ..nn.devices import resolve_device
    from ..pipeline import RunOptions

    resolve_device(device)
    join_torchrun(device)
    detector = ConfusionTraining(schedule=schedule.value, arch=arch, device=device, seed=seed, alpha=alpha,
                                 stream=stream)
    detector.check()  # a bad --arch / --alpha: exit 2 before any loading

    def detect(d: Dataset, r: Dataset, progress: Progress) -> DetectionResult:
        detector.progress = progress
        return detector.detect(d, r)  # feature rows too

    return run_detector(detect, data, reserve, RunOptions(out, force, size, quiet, json_only, max_flagged_fraction,
                                                          fail_on_detect, input_format(fmt, fmt_old), html, cache_dir,
                                                          decode_cache.value))


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
    from ..attacks import badnet
    from ..data import examples
    from ..detectors.ct import ConfusionTraining
    from ..output import write_image_subset
    from ..pipeline import RunOptions
    from ..report.build import read_report

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

    def detect(d: Dataset, r: Dataset, progress: Progress) -> DetectionResult:
        return ConfusionTraining(device=device, seed=seed, progress=progress).detect(d, r)

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


# The command groups that live in their own modules (they import .common, never this module).
for _module in (attack, asset, scan, bench, features):
    _module.register(app)


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
        _run(argv)
    finally:
        release_termination()


def _run(argv: list[str] | None) -> None:
    """The command, and the one line and exit code of each way it can end."""
    try:
        refuse_torchrun(sys.argv[1:] if argv is None else [str(a) for a in argv])
        with warnings_as_notes([]):  # the commands that do not write a report: kept off stderr (see there)
            code = app(args=argv, standalone_mode=False)
    except SanitizeError as exc:
        _fail(exc.command_line())
    except (KeyboardInterrupt, Terminated) as exc:
        line, code = stopped(exc)
        stderr.print(line, markup=False, highlight=False, soft_wrap=True, emoji=False)
        sys.exit(code)
    except typer.Exit as exc:  # Click's own Exit in Typer releases that use Click, Typer's where it vendors it
        sys.exit(exc.exit_code)
    except typer.Abort:
        stderr.print(INTERRUPTED, markup=False)
        sys.exit(EXIT_INTERRUPTED)
    except Exception as exc:
        if peer_failed(exc):
            stderr.print(PEER_FAILED, markup=False, highlight=False, soft_wrap=True, emoji=False)
            sys.exit(EXIT_INTERNAL)
        message = _usage_error_message(exc)
        if message is None:
            _crash(exc)
        if not message.strip():  # bare ``sanitize``: the usage was printed, there is nothing to add
            sys.exit(EXIT_BAD_INPUT)
        _fail(message)
    if code == EXIT_INTERRUPTED:  # Click returns 130 for a Ctrl-C it caught itself, having printed nothing
        stderr.print(INTERRUPTED, markup=False)
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
    main()
