"""``sanitize asset``: the ASSET detector with the same contract as ``sanitize ct``."""

from __future__ import annotations

from enum import Enum
from typing import TYPE_CHECKING, Annotated

import typer

from .common import (
    AlphaOpt,
    AssetScheduleName,
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
    ReserveOpt,
    SeedOpt,
    SizeOpt,
    StreamOpt,
    input_format,
    join_torchrun,
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


class Paradigm(str, Enum):
    supervised = "supervised"
    self_supervised = "self-supervised"
    transfer = "transfer"


class Normalization(str, Enum):
    imagenet = "imagenet"
    data = "data"


ParadigmOpt = Annotated[Paradigm, typer.Option(
    help="How DATA is used for training: supervised (end to end), transfer (a new head on a frozen --encoder) or "
         "self-supervised (experimental; unlabelled images: DATA and --reserve are read as image files at any depth).")]
EncoderOpt = Annotated[str | None, typer.Option(
    help="Frozen pretrained encoder: a TorchScript file, a pickled torch.nn.Module (runs its pickle: trusted "
         "files only) or ARCH:STATE_DICT_FILE for a torchvision architecture. Required by transfer; "
         "self-supervised trains one by SimCLR unless given.")]
InputSizeOpt = Annotated[int | None, typer.Option(help="Side the encoder's input is resized to (default: the "
                                                       "images' own).")]
NormalizeOpt = Annotated[Normalization, typer.Option(
    help="The encoder's input normalisation: imagenet (torchvision and timm checkpoints) or data (the images' own "
         "statistics).")]


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
    paradigm: ParadigmOpt = Paradigm.supervised,
    encoder: EncoderOpt = None,
    input_size: InputSizeOpt = None,
    normalize: NormalizeOpt = Normalization.imagenet,
    cache_dir: CacheDirOpt = None,
    decode_cache: DecodeCacheOpt = DecodeCacheMode.auto,
    stream: StreamOpt = None,
) -> int:
    """ASSET (Pan et al., USENIX Security 2023): flag poison samples in DATA by active offset."""
    from ..detectors.asset import ASSET
    from ..nn.devices import resolve_device
    from ..pipeline import RunOptions

    resolve_device(device)
    join_torchrun(device)
    detector = ASSET(schedule=schedule.value, arch=arch, device=device, seed=seed, epsilon=epsilon,
                     batch_size=batch_size, alpha=alpha, paradigm=paradigm.value, encoder=encoder,
                     input_size=input_size, normalize=normalize.value,
                     stream=stream)
    detector.check()  # a bad --arch / --epsilon / --batch-size / --paradigm: exit 2 before any loading
    if encoder is not None:  # a bad encoder file: one line before any data is read
        from ..detectors.asset.paradigms import resolve_encoder

        detector.encoder = resolve_encoder(encoder)
    kind = input_format(fmt, fmt_old)
    if paradigm is Paradigm.self_supervised and kind in ("auto", "images"):
        kind = "unlabelled"  # labels, and what the folder names say, are ignored

    def detect(d: Dataset, r: Dataset, progress: Progress) -> DetectionResult:
        detector.progress = progress
        return detector.detect(d, r)

    return run_detector(detect, data, reserve, RunOptions(out, force, size, quiet, json_only, max_flagged_fraction,
                                                          fail_on_detect, kind, html, cache_dir, decode_cache.value))
