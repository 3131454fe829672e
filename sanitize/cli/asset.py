"""``sanitize asset``: the ASSET detector with the same contract as ``sanitize ct``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from .common import (
    AlphaOpt,
    AssetScheduleName,
    DataArg,
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
    input_format,
    run_detector,
)

if TYPE_CHECKING:
    from ..data.protocol import Dataset
    from ..progress import Progress
    from ..result import DetectionResult

ScheduleOpt = Annotated[AssetScheduleName, typer.Option(help="fast: ours; reference: the released demo's settings.")]
ArchOpt = Annotated[str, typer.Option(help="Model: auto, resnet18, small_cnn, mobilenet_v2, vgg16, densenet121 "
                                           "(auto: resnet18 on a GPU at >= 32 px, else small_cnn; "
                                           "feature rows: the ember_mlp network).")]
EpsilonOpt = Annotated[float | None, typer.Option(
    help="Threshold density level (default 1e-6: flag log-losses more than 5.08 robust SDs above the clean bulk).")]
BatchOpt = Annotated[int | None, typer.Option("--batch-size", help="Offset-loop batch size (default 512).")]


def register(app: typer.Typer) -> None:
    app.command("asset")(asset_command)


def asset_command(
    data: DataArg,
    reserve: ReserveOpt,
    out: OutOpt,
    schedule: ScheduleOpt = AssetScheduleName.fast,
    arch: ArchOpt = "auto",
    epsilon: EpsilonOpt = None,
    batch_size: BatchOpt = None,
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
) -> int:
    """ASSET (Pan et al., USENIX Security 2023): flag poison samples in DATA by active offset."""
    from ..detectors.asset import ASSET
    from ..nn.devices import resolve_device
    from ..pipeline import RunOptions

    resolve_device(device)
    detector = ASSET(schedule=schedule.value, arch=arch, device=device, seed=seed, epsilon=epsilon,
                     batch_size=batch_size, alpha=alpha)
    detector.check()  # a bad --arch / --epsilon / --batch-size: exit 2 before any loading

    def detect(d: Dataset, r: Dataset, progress: Progress) -> DetectionResult:
        detector.progress = progress
        return detector.detect(d, r)

    return run_detector(detect, data, reserve, RunOptions(out, force, size, quiet, json_only, max_flagged_fraction,
                                                          fail_on_detect, input_format(fmt, fmt_old), html))
