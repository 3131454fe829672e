"""What the loop needs from image folders and from feature rows (and the frozen extractor)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from torch import nn

from ...data.images import ImageDataset
from ...data.reserve_fit import fitted_reserve
from ...data.rows import FeatureDataset
from ...errors import ParameterError, SanitizeError
from ...nn.devices import describe
from ...nn.engine import (
    Preprocess,
    TrainSpec,
    global_pool,
    infer,
    stratified_split,
)
from ...nn.models import Classifier, build_model, default_arch
from ...nn.samples import Samples, concat_rows, take_rows
from ..ct.rows import Standardise, ember_mlp
from .offset import batch_norm_without_update
from .schedules import AssetSchedule

ModelFactory = Callable[[], nn.Module]
Dataset = ImageDataset | FeatureDataset


# ---------------------------------------------------------------------------------------------
# Inputs: what the loop needs from image folders and from feature rows


@dataclass
class Inputs:
    """The inspected and reserve samples as the loop sees them, and the model to run on them.

    ``x``/``reserve_x`` are tensors (images) or :class:`Samples` (feature rows); ``inspected``
    lists the input's rows that ``x`` holds, in order (every row for images; the labelled rows
    for feature data), before any canaries.
    """

    x: torch.Tensor | Samples
    y: torch.Tensor
    reserve_x: torch.Tensor | Samples
    reserve_y: torch.Tensor
    num_classes: int
    factory: ModelFactory
    prep: Callable
    arch: str
    inspected: np.ndarray
    n_rows: int
    image_side: int | None  # None: feature rows (no augmentation)
    embed: Callable[[nn.Module, Any, Callable], torch.Tensor] | None = None  # None: penultimate features
    settings: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    n_canaries: int = 0  # the last n_canaries samples of x are reserve canaries (see with_canaries)
    reserve_groups: np.ndarray | None = None  # near twins in a clustered reserve (ReserveFit.twin_groups)


def with_canaries(inp: Inputs, fraction: float, gen: torch.Generator) -> Inputs:
    """Move a stratified ``fraction`` of the reserve behind the inspected samples, as canaries.

    Canaries are clean samples that take every step an inspected clean sample takes: the
    extractor trains on them, the concentration MLP can select them, the max step can raise their
    loss; only ``l_min`` no longer sees them. Their losses therefore show how far the loop pushes
    clean samples by chance, which :func:`loss_threshold` uses as a floor for the cut. Classes
    with fewer than 4 reserve samples give none, and every class keeps at least 2 for ``l_min``.

    Images on the device are concatenated: a copy of a few hundred images costs nothing, and a
    plain tensor is gathered per batch without the boolean masks of :class:`Samples`, which
    wait for the GPU on every batch. Feature rows and streamed images stay :class:`Samples`
    views, so a memory-mapped set is never copied whole.
    """
    kept, canaries = stratified_split(inp.reserve_y, inp.num_classes, fraction, gen, min_kept=2,
                                      groups=inp.reserve_groups)
    if len(canaries) == 0:
        return inp
    device = inp.reserve_y.device
    kept, canaries = kept.to(device), canaries.to(device)
    x, reserve_x = concat_rows(inp.x, take_rows(inp.reserve_x, canaries)), take_rows(inp.reserve_x, kept)
    return replace(inp, x=x, y=torch.cat([inp.y, inp.reserve_y[canaries]]), reserve_x=reserve_x,
                   reserve_y=inp.reserve_y[kept], n_canaries=len(canaries))


class TrainModeMap:
    """The demo's concentration features, computed batch by batch: ``feats[idx]``.

    The demo cuts its extractor before the classifier head and runs it in train mode, so the
    features are the last activation map before global pooling, flattened (8,192 values for a
    ResNet-18 at 32 px), with every batch-norm layer normalising by the statistics of the batch
    being read (a D batch and a reserve batch separately). The extractor's running statistics
    are left as they are. A model without a pooling module gives its penultimate features, in
    train mode likewise.
    """

    def __init__(self, model: nn.Module, x: torch.Tensor | Samples, prep: Callable):
        self.model, self.x, self.prep = model, x, prep

    def __len__(self) -> int:
        return len(self.x)

    @torch.no_grad()
    def __getitem__(self, idx: torch.Tensor) -> torch.Tensor:
        inputs = self.prep(self.x[idx])
        self.model.train()
        with batch_norm_without_update(self.model):
            pool = global_pool(self.model)
            if pool is None:
                return self.model.features_and_logits(inputs)[0].float()
            captured: list[torch.Tensor] = []
            handle = pool.register_forward_hook(lambda _m, args, _o: captured.append(args[0].float().flatten(1)))
            try:
                self.model.trunk(inputs)
            finally:
                handle.remove()
        return captured[0]


def penultimate(model: nn.Module, x: torch.Tensor | Samples, prep: Callable) -> torch.Tensor:
    """The model's penultimate features of every sample (eval mode, in batches)."""
    return infer(model, x, prep, features=True)[1]


@torch.no_grad()
def first_block(model: Classifier, x: Samples, prep: Callable, batch_size: int = 4096) -> torch.Tensor:
    """Activations of the EMBER MLP's first block (Linear -> BatchNorm -> ReLU, 200 wide), eval mode.

    Feature rows use these instead of the 20-d penultimate features. The bottleneck keeps what
    tells benign from malicious; a clean-label trigger on benign rows, which are benign without
    it, is mostly squeezed out there, while the wide first layer keeps it (measured in
    ``docs/ember.md``).
    """
    model.eval()
    head = model.trunk[:3]
    out = [head(prep(x[s:s + batch_size])).float() for s in range(0, len(x), batch_size)]
    return torch.cat(out) if out else torch.empty(0)


def image_backbone(data: ImageDataset, arch: str, device: torch.device) -> tuple[ModelFactory, Callable]:
    """A model factory and the uint8 -> normalised-float preprocessing for image data."""
    size = min(data.size)

    def factory() -> Classifier:
        model = build_model(arch, data.num_classes, data.channels, size).to(device)
        return model.to(memory_format=torch.channels_last) if device.type == "cuda" else model

    return factory, Preprocess.fit(data.images)


def image_inputs(data: ImageDataset, reserve: ImageDataset, arch: str, device: torch.device,
                 custom: bool, reserve_check: bool = True, stream: bool | None = False) -> Inputs:
    """Image folders on ``device``: a CNN on per-channel normalised pixels (``arch`` or auto).
    With ``reserve_check`` the reserve must fit the data (:func:`sanitize.data.reserve_fit.fitted_reserve`)."""
    data.check_reserve(reserve)
    if len(data) < 2 * data.num_classes:
        raise SanitizeError(f"dataset has {len(data)} images: too few to inspect")
    reserve, fit_settings, notes, groups = _fitted(data, reserve, "images", reserve_check)
    if not custom:
        chosen = default_arch(device, min(data.size)) if arch == "auto" else arch
        if arch == "auto":
            notes.append(f"--arch auto chose {chosen} for {describe(device)} at {data.size[0]}x{data.size[1]} px")
        arch = chosen
    data, reserve = data.to(device, stream=stream), reserve.to(device)
    factory, prep = image_backbone(data, arch, device)
    return Inputs(data.images, data.labels, reserve.images, reserve.labels, data.num_classes, factory, prep, arch,
                  np.arange(len(data)), len(data), min(data.size), notes=notes, settings=fit_settings,
                  reserve_groups=groups)


def _fitted(data: Dataset, reserve: Dataset, what: str, check: bool
            ) -> tuple[Dataset, dict[str, Any], list[str], np.ndarray | None]:
    """The reserve after :func:`sanitize.data.reserve_fit.fitted_reserve` (when ``check``), the settings
    entry recording the check, its notes, and the reserve's near-twin groups when it is clustered."""
    if not check:
        return reserve, {}, [], None
    reserve, fit = fitted_reserve(data, reserve, what)
    return reserve, {"reserve_check": fit.as_dict()}, list(fit.notes), fit.twin_groups


def feature_inputs(data: FeatureDataset, reserve: FeatureDataset, arch: str, device: torch.device,
                   reserve_check: bool = True) -> Inputs:
    """Feature rows on ``device``: the CT paper's EMBER MLP with one output per class, labelled rows only.

    Rows are standardised as ``(x - mean) / (std + 0.1)`` with the inspected set's statistics,
    batch by batch. The MLP has two outputs for binary data (not EMBER's single logit) so that
    ``l_min`` (variance of the logits across classes) and the cross-entropy score apply unchanged:
    for two logits the variance is half the squared logit difference, i.e. ``l_min`` pulls the
    reserve's predictions to 50/50, the binary form of "flat logits". Unlabelled rows (-1) are
    neither trained on nor scored.
    """
    if arch not in ("auto", "ember_mlp"):
        raise ParameterError("arch", arch, "feature rows use the ember_mlp network (or auto)")
    if data.num_classes < 2:
        raise SanitizeError(f"ASSET needs at least two classes, the dataset has {data.num_classes}")
    data.check_reserve(reserve)
    labelled = data.labelled_indices()
    counts = np.bincount(data.labels.cpu().numpy()[labelled], minlength=data.num_classes)
    if len(labelled) < 20 or (counts < 2).any():
        raise SanitizeError(f"dataset has {len(labelled)} labelled rows ({counts.tolist()} per class): "
                            f"too few of each class to inspect")
    reserve, fit_settings, fit_notes, groups = _fitted(data, reserve, "rows", reserve_check)
    data, reserve = data.to(device), reserve.to(device)
    prep = Standardise.fit(data)
    dim, classes = data.dim, data.num_classes

    def factory() -> Classifier:
        return ember_mlp(dim, classes).to(device)

    index = torch.from_numpy(labelled).to(device)
    reserve_index = torch.from_numpy(reserve.labelled_indices()).to(device)
    notes = fit_notes + ([f"{data.n_unlabelled} unlabelled row(s) not inspected (score 0, never flagged)"]
                         if data.n_unlabelled else [])
    return Inputs(Samples((data.X, index)), data.labels[index], Samples((reserve.X, reserve_index)),
                  reserve.labels[reserve_index], classes, factory, prep, "ember_mlp", labelled, len(data), None,
                  embed=first_block, notes=notes, reserve_groups=groups,
                  settings={"standardisation": "(x - mean) / (std + 0.1)", "outputs": classes,
                            "concentration_features": "first hidden layer (200)", **fit_settings})


def extractor_inputs(inp: Inputs, with_reserve: bool) -> tuple[torch.Tensor | Samples, torch.Tensor]:
    """What the feature extractor trains on: the inspected samples (and canaries), and with
    ``with_reserve`` the reserve as well, under its true labels.

    Why the reserve (``fast``): the cross-fitted selection compares D's held-out concentration
    scores with the reserve's. A model trained on D but not on the reserve places its own training
    samples differently from unseen ones, so clean D would stand out from the reserve by
    membership alone, and the comparison would not be between exchangeable samples. Trained on
    both, clean D and the reserve differ only in what poison adds. The reserve is trusted clean,
    so it cannot teach the extractor a trigger.
    """
    if not with_reserve:
        return inp.x, inp.y
    y = torch.cat([inp.y, inp.reserve_y])
    return concat_rows(inp.x, inp.reserve_x), y


def extractor_spec(schedule: AssetSchedule, n: int, image_side: int | None, augment: bool | None) -> TrainSpec:
    """The extractor's training run, fitted to the data.

    Small datasets get smaller batches (at least 16 steps per epoch) and at least
    ``min_base_steps`` steps. Flip-and-crop augmentation is used from 32 px up unless set
    explicitly: a 4-pixel crop shift is half of an 8-pixel digit, and flips change digits.
    Feature rows (``image_side`` None) are never augmented.
    """
    spec = schedule.base
    if schedule.min_base_steps and n // 16 < spec.batch_size:  # linear lr scaling with the batch
        batch = max(32, n // 16)
        spec = replace(spec, batch_size=batch, lr=spec.lr * batch / spec.batch_size)
    per_epoch = max(1, n // min(spec.batch_size, n))
    epochs = max(spec.epochs, math.ceil(schedule.min_base_steps / per_epoch))
    if image_side is None:
        return replace(spec, epochs=epochs, augment=False)
    use_aug = spec.augment and image_side >= 32 if augment is None else augment
    return replace(spec, epochs=epochs, augment=use_aug)
