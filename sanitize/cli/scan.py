"""``sanitize scan METHOD DATA``: the passive baselines behind the same contract as ``sanitize ct``.

Same inputs, same report schema (``method`` is the baseline's name), same exit codes and CI gate.
Every method trains one ordinary model on DATA first, cached by content (``--cache-dir``), so
running several methods on one folder trains once.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from ..errors import SanitizeError
from .common import (
    CacheDirOpt,
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
    ScanMethod,
    SeedOpt,
    SizeOpt,
    input_format,
    join_torchrun,
    run_detector,
)

if TYPE_CHECKING:
    from ..data.images import ImageDataset
    from ..progress import Progress
    from ..result import DetectionResult

SCAN_METHODS = tuple(m.value for m in ScanMethod)
BUDGET_METHODS = ("spectral", "spectre")
LAYER_METHODS = ("spectral", "activation-clustering")


def register(app: typer.Typer) -> None:
    app.command("scan")(scan_command)


def scan_settings(method: str, budget: float | None, frr: float | None, arch: str, epochs: int | None,
                  cache_dir: Path | None, layer: str | None = None, reclassify: bool = False,
                  reclassify_threshold: float | None = None) -> dict:
    """Detector keyword arguments for ``method``; options that do not apply are refused."""
    if method not in SCAN_METHODS:
        raise SanitizeError(f"unknown method {method!r}; choose from {', '.join(SCAN_METHODS)}")
    settings: dict = {"arch": arch, "epochs": epochs, "cache_dir": cache_dir}
    if budget is not None:
        if method not in BUDGET_METHODS:
            raise SanitizeError(f"--budget applies to {' and '.join(BUDGET_METHODS)}, not {method}")
        settings["budget"] = budget
    if layer is not None:
        if method not in LAYER_METHODS:
            raise SanitizeError(f"--layer applies to {' and '.join(LAYER_METHODS)}, not {method}")
        settings["layer"] = layer
    if frr is not None:
        if method != "strip":
            raise SanitizeError(f"--frr applies to strip, not {method}")
        settings["frr"] = frr
    settings.update(reclassify_settings(method, reclassify, reclassify_threshold))
    return settings


def reclassify_settings(method: str, reclassify: bool, threshold: float | None) -> dict:
    """Activation Clustering's exclusionary reclassification options (refused for other methods,
    and a threshold without ``--reclassify``, which would silently do nothing)."""
    if (reclassify or threshold is not None) and method != "activation-clustering":
        option = "--reclassify" if reclassify else "--reclassify-threshold"
        raise SanitizeError(f"{option} applies to activation-clustering, not {method}")
    if threshold is not None and not reclassify:
        raise SanitizeError("--reclassify-threshold applies with --reclassify")
    if not reclassify:
        return {}
    return {"reclassify": True, **({} if threshold is None else {"reclassify_threshold": threshold})}


def scan_command(
    method: Annotated[ScanMethod, typer.Argument(help="The baseline (see docs/baselines.md).")],
    data: DataArg,
    out: OutOpt,
    reserve: Annotated[Path | None, typer.Option(
        "--reserve", "-r", help="Trusted clean images (required by scan; strip uses them for its threshold).")
    ] = None,
    budget: Annotated[float | None, typer.Option(
        help="spectral/spectre: fraction of every class removed (default 0.3).")] = None,
    layer: Annotated[str | None, typer.Option(
        help="spectral/activation-clustering: where the last hidden layer is read, map (before global "
             "pooling, default) or pooled.")] = None,
    frr: Annotated[float | None, typer.Option(
        help="strip: false rejection rate on clean data that sets the threshold (default 0.01).")] = None,
    reclassify: Annotated[bool, typer.Option(
        "--reclassify",
        help="activation-clustering: exclusionary reclassification. One more model, trained without the "
             "suspicious clusters, classifies them; a cluster it recognises as its own label is cleared, not "
             "flagged. Off by default (see docs/baselines.md).")] = False,
    reclassify_threshold: Annotated[float | None, typer.Option(
        help="activation-clustering --reclassify: a cluster is legitimate when l/p exceeds this (l: its "
             "samples predicted as their label, p: as the most frequent other class; default 1).")] = None,
    arch: Annotated[str, typer.Option(help="Model trained on DATA: auto (resnet18 on a GPU at >= 32 px, "
                                           "else small_cnn) or a registered architecture.")] = "auto",
    epochs: Annotated[int | None, typer.Option(help="Training epochs (default: by dataset size).")] = None,
    cache_dir: CacheDirOpt = None,
    device: DeviceOpt = "auto",
    seed: SeedOpt = 0,
    size: SizeOpt = None,
    force: ForceOpt = False,
    quiet: QuietOpt = False,
    json_only: JsonOnlyOpt = False,
    max_flagged_fraction: MaxFlaggedOpt = 0.0,
    fail_on_detect: FailOnDetectOpt = False,
    fmt: FormatOpt = InputFormat.auto,
    fmt_old: OldFormatOpt = None,
    html: HtmlOpt = True,
    decode_cache: DecodeCacheOpt = DecodeCacheMode.auto,
) -> int:
    """Passive baselines: Spectral Signatures, Activation Clustering, STRIP, SCAn, SPECTRE."""
    from ..detectors import get_detector
    from ..nn.devices import resolve_device
    from ..pipeline import RunOptions

    method = ScanMethod(method).value
    settings = scan_settings(method, budget, frr, arch, epochs, cache_dir, layer, reclassify, reclassify_threshold)
    resolve_device(device)
    join_torchrun(device)
    if method == "scan" and reserve is None:
        raise SanitizeError("scan needs a trusted clean reserve: pass --reserve")
    detector = get_detector(method, device=device, seed=seed, **settings)
    detector.check()  # a bad --arch / --budget / --frr: exit 2 before any loading

    def detect(d: ImageDataset, r: ImageDataset | None, progress: Progress) -> DetectionResult:
        detector.progress = progress
        return detector.detect(d, r)

    return run_detector(detect, data, reserve, RunOptions(out, force, size, quiet, json_only, max_flagged_fraction,
                                                          fail_on_detect, input_format(fmt, fmt_old), html, cache_dir,
                                                          decode_cache.value))
