"""The pipeline every detector command runs: load -> detect -> decide (the gate) -> write.

The command line is a thin layer over :func:`run`: it parses options into :class:`RunOptions`,
builds the detector, and prints what :func:`run` returns. Python callers get the same checks,
the same outputs and the same report.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

from .data.decode_cache import DecodeCache
from .data.protocol import Dataset
from .data.protocol import load_inputs as read_inputs
from .data.rows import FORMATS
from .domains import parse_size
from .errors import ParameterError
from .exits import EXIT_CLEAN, EXIT_FLAGGED, warnings_as_notes
from .nn.distributed import barrier, current
from .output import claim_out_dir, staged_output
from .progress import Progress, RichProgress, Silent
from .report.build import build_report, write_report
from .report.html import write_html_report
from .result import DetectionResult

# The reserve is None only for detectors that work without one (the passive baselines).
Detect = Callable[[Dataset, Dataset | None, Progress], DetectionResult]


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
    format: str = "auto"  # --input-format: auto | images | ember | npz | jsonl
    html: bool = True  # also write the self-contained report.html
    cache_dir: Path | None = None  # --cache-dir: decoded folders (and scan's models); None: the user cache
    decode_cache: str = "auto"  # auto | on | off: see sanitize.data.decode_cache

    def __post_init__(self) -> None:
        DecodeCache(self.cache_dir, self.decode_cache)  # validated here, with the other options
        if not 0.0 <= self.max_flagged_fraction <= 1.0:
            raise ParameterError("max_flagged_fraction", self.max_flagged_fraction, "expected a value in [0, 1]")
        if self.format not in FORMATS:
            raise ParameterError("format", self.format, f"expected one of {', '.join(FORMATS)}", flag="--input-format")


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


def load_inputs(data_dir: Path, reserve_dir: Path | None, opts: RunOptions,
                progress: Progress | None = None) -> tuple[Dataset, Dataset | None]:
    """The inspected data and its reserve, read as ``opts.format`` names (or detected)."""
    return read_inputs(data_dir, reserve_dir, opts.format, parse_size(opts.size),
                       cache=DecodeCache(opts.cache_dir, opts.decode_cache), progress=progress)


def run(detect: Detect, data_dir: Path, reserve_dir: Path | None, opts: RunOptions) -> tuple[dict, Path]:
    """load -> detect -> decide -> write: what every detector command does, callable from Python.

    ``--out`` is checked and locked before the inputs are read, and stays locked until the results
    are in place, so a second run to the same folder is refused at once. Returns the report (with
    the gate's verdict in ``summary.gate``) and the folder it was written to.

    Under ``torchrun`` every rank loads and detects (the detector shares the work out), and rank 0
    alone claims ``--out``, shows progress and writes; the other ranks return the same report.
    """
    if not current().main:
        report = _detect(detect, data_dir, reserve_dir, opts)[2]
        barrier()  # until rank 0 has written: torchrun stops every process once one has exited non-zero
        return report, opts.out
    with claim_out_dir(opts.out, [data_dir, reserve_dir], opts.force) as out:
        data, result, report = _detect(detect, data_dir, reserve_dir, opts)
        with staged_output(out, opts.force) as staging:
            data.write_subset(result.kept_indices, staging)  # the cleaned copy, in the input's own form
            write_report(report, staging)
            if opts.html:
                write_html_report(report, staging, **data.report_evidence())
    barrier()
    return report, out


def _detect(detect: Detect, data_dir: Path, reserve_dir: Path | None, opts: RunOptions
            ) -> tuple[Dataset, DetectionResult, dict]:
    """The inspected data, the detector's result and the report (with the gate's verdict)."""
    world = current()
    warned: list[str] = []
    with warnings_as_notes(warned):
        shown = world.main and not (opts.quiet or opts.json_only)
        with (RichProgress() if shown else nullcontext(Silent())) as progress:
            if not world.main:
                barrier()  # rank 0 decodes into the cache first; the other ranks map what it wrote
            data, reserve = load_inputs(data_dir, reserve_dir, opts, progress)
            if world.main:
                barrier()
            result = detect(data, reserve, progress)
    result.notes.extend(warned)
    report = build_report(data, result)
    report["summary"]["gate"] = gate(report["summary"], opts.max_flagged_fraction, opts.fail_on_detect)
    return data, result, report
