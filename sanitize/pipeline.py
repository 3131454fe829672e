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

from .data import ImageDataset, load_image_folder, load_reserve
from .domains import parse_size
from .errors import SanitizeError
from .exits import EXIT_CLEAN, EXIT_FLAGGED, warnings_as_notes
from .features import FORMATS, FeatureDataset, detect_format, load_feature_reserve, load_features, write_features
from .html_report import write_html_report
from .output import claim_out_dir, staged_output, write_image_subset
from .progress import Progress, RichProgress, Silent
from .report import build_report, write_report
from .result import DetectionResult

Dataset = ImageDataset | FeatureDataset
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


def run(detect: Detect, data_dir: Path, reserve_dir: Path | None, opts: RunOptions) -> tuple[dict, Path]:
    """load -> detect -> decide -> write: what every detector command does, callable from Python.

    ``--out`` is checked and locked before the inputs are read, and stays locked until the results
    are in place, so a second run to the same folder is refused at once. Returns the report (with
    the gate's verdict in ``summary.gate``) and the folder it was written to."""
    with claim_out_dir(opts.out, [data_dir, reserve_dir], opts.force) as out:
        return _detect_and_write(detect, data_dir, reserve_dir, opts, out), out


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


def refuse_ember_mlp_on_images(arch: str, data: Dataset) -> None:
    """``--arch ember_mlp`` is the feature-row network (ct and asset accept it): not for images."""
    if arch == "ember_mlp" and not isinstance(data, FeatureDataset):
        raise SanitizeError("--arch ember_mlp is for feature rows; image folders use a CNN")
