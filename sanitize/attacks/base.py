"""What every attack returns, the seeded choice of samples, and the stamping helpers they share.

Every attack is a pure function of ``(dataset, rate, target, seed, **params)``: all randomness is
drawn from NumPy generators derived from ``seed`` (one independent stream per purpose, see
:func:`derived_rng`), so the same call gives the same bytes on the CPU.

A *stamp* is a ``pattern`` (uint8, ``C x h x w``) with a ``mask`` (float in [0, 1], ``1 x h x w``)
placed at ``(top, left)``; stamping at opacity ``a`` computes ``x <- x * (1 - a*m) + p * a*m``
and rounds to uint8. Pixels where ``a*m`` is 0 are therefore bit-for-bit unchanged, and an
opaque patch (``a*m`` = 1) writes the pattern exactly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import torch
from torchvision.transforms.v2 import functional as TF

from ..data.images import ImageDataset, decode_image
from ..domains import check_fraction
from ..errors import ParameterError, SanitizeError
from .catalog import AttackInfo  # noqa: F401 -- re-exported: its historical home

TestTrigger = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class Stamp:
    """A pattern and its mask, placed at ``(top, left)`` of every image it is applied to."""

    pattern: torch.Tensor  # uint8, C x h x w
    mask: torch.Tensor  # float32 in [0, 1], 1 x h x w
    top: int = 0
    left: int = 0

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.pattern.shape[-2]), int(self.pattern.shape[-1])

    def apply(self, images: torch.Tensor, opacity: float = 1.0) -> torch.Tensor:
        """A stamped copy of ``images`` (uint8, N x C x H x W)."""
        out = images.clone()
        h, w = self.shape
        region = out[..., self.top:self.top + h, self.left:self.left + w]
        alpha = self.mask.to(images.device) * float(opacity)
        mixed = region.float() * (1 - alpha) + self.pattern.to(images.device).float() * alpha
        out[..., self.top:self.top + h, self.left:self.left + w] = to_uint8(mixed)
        return out

    def describe(self) -> dict[str, Any]:
        h, w = self.shape
        return {"top": self.top, "left": self.left, "height": h, "width": w}


@dataclass
class PoisonedSet:
    """A poisoned copy of a dataset plus its ground truth.

    ``poison_indices`` carry the trigger (and, for dirty-label attacks, the target label; for an
    *all-to-all* attack, ``target`` is None and a poison sample of class y is labelled y + 1 mod C);
    ``cover_indices`` carry a trigger but keep their true label (adaptive attacks), and count as
    clean when scoring a detector. ``test_trigger`` maps clean uint8 images to their test-time
    triggered version (see :func:`apply_trigger_to_test`); ``stamps`` are the training-time
    pattern(s), kept so they can be saved next to the poisoned set.
    """

    dataset: ImageDataset
    poison_indices: np.ndarray
    target: int | None
    attack: str
    params: dict[str, Any] = field(default_factory=dict)
    cover_indices: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    seed: int = 0
    source: int | None = None
    cover_classes: list[int] = field(default_factory=list)
    clean_label: bool = False
    test_trigger: TestTrigger | None = field(default=None, repr=False, compare=False)
    stamps: list[Stamp] = field(default_factory=list, repr=False, compare=False)
    all_to_all: bool = False

    def backdoor_labels(self, labels: torch.Tensor) -> torch.Tensor:
        """The label the backdoor gives a triggered input of each true label (what ASR counts)."""
        if self.all_to_all:
            return (labels + 1) % self.dataset.num_classes
        return torch.full_like(labels, int(self.target))

    def __post_init__(self) -> None:
        # Modified samples are new files: give them paths under their (possibly new) class folder,
        # so writing ``dataset`` as an image folder keeps every poison sample's target label.
        if isinstance(self.dataset, ImageDataset):  # feature rows keep their ids (row index / sha256)
            self.dataset.paths = relocated_paths(self.dataset, self.is_poison | self.is_cover)

    @property
    def is_poison(self) -> np.ndarray:
        mask = np.zeros(len(self.dataset), dtype=bool)
        mask[self.poison_indices] = True
        return mask

    @property
    def is_cover(self) -> np.ndarray:
        mask = np.zeros(len(self.dataset), dtype=bool)
        mask[self.cover_indices] = True
        return mask


def derived_rng(seed: int, stream: str) -> np.random.Generator:
    """An independent generator per purpose, so adding a draw in one place moves no other."""
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, *stream.encode()])


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    return x.round().clamp_(0, 255).to(torch.uint8)


def count_for(n_total: int, rate: float) -> int:
    """``floor(n_total * rate)``, immune to float noise (0.29 * 100 is 28.999...; we want 29)."""
    return int(np.floor(n_total * rate + 1e-9))


def choose_poison_indices(n_candidates: int, n_total: int, rate: float, seed: int) -> np.ndarray:
    """A seeded random subset of ``floor(n_total * rate)`` of ``range(n_candidates)``, sorted."""
    check_fraction(rate)
    count = count_for(n_total, rate)
    if count > n_candidates:
        raise ParameterError("rate", rate, f"needs {count} samples but only {n_candidates} are eligible")
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n_candidates, size=count, replace=False)).astype(np.int64)


def choose_cover_indices(candidates: np.ndarray, n_total: int, rate: float, seed: int) -> np.ndarray:
    """``floor(n_total * rate)`` of ``candidates`` (disjoint from the poison), seeded, sorted."""
    check_fraction(rate, "cover_rate")
    count = count_for(n_total, rate)
    if count > len(candidates):
        raise ParameterError("cover_rate", rate, f"needs {count} samples but only {len(candidates)} are eligible")
    chosen = derived_rng(seed, "cover").choice(len(candidates), size=count, replace=False)
    return np.sort(np.asarray(candidates, dtype=np.int64)[chosen])


def check_target(dataset: ImageDataset, target: int) -> None:
    if not 0 <= target < dataset.num_classes:
        raise ParameterError("target", target, f"the dataset has classes 0..{dataset.num_classes - 1}")


def scaled(base: float, size: tuple[int, int], minimum: int = 1) -> int:
    """``base`` pixels at 32 px, scaled with the shorter image side (never below ``minimum``)."""
    return max(minimum, round(base * min(size) / 32))


def groups(index: np.ndarray, k: int) -> list[np.ndarray]:
    """Split ``index`` into ``k`` near-equal consecutive groups (used for per-quarter triggers)."""
    return [np.asarray(g, dtype=np.int64) for g in np.array_split(np.asarray(index, dtype=np.int64), k)]


def relocated_paths(dataset: ImageDataset, modified: np.ndarray) -> list[str]:
    """Where each sample of a poisoned ``dataset`` lives in an image folder.

    Unmodified samples keep their path. Modified ones keep their file stem with a ``.png`` suffix
    (their pixels changed, so they are re-encoded losslessly), under the folder of their current
    label. A name already taken gets ``-from-<original folder>`` (and a counter if needed) so
    nothing is overwritten.
    """
    out = list(dataset.paths)
    taken = {p for i, p in enumerate(out) if not modified[i]}
    labels = dataset.labels.cpu().numpy()
    for i in np.flatnonzero(modified).tolist():
        rel = PurePosixPath(dataset.paths[i])
        parts = list(rel.parent.parts) or [""]
        origin = parts[0]
        parts[0] = dataset.classes[int(labels[i])]
        folder = PurePosixPath(*parts)
        candidate = (folder / f"{rel.stem}.png").as_posix()
        counter = 1
        while candidate in taken:
            tag = f"-from-{origin}" + (f"-{counter}" if counter > 1 else "")
            candidate = (folder / f"{rel.stem}{tag}.png").as_posix()
            counter += 1
        taken.add(candidate)
        out[i] = candidate
    return out


def rebuild(dataset: ImageDataset, images: torch.Tensor, labels: torch.Tensor) -> ImageDataset:
    """The poisoned dataset: same classes and paths, no ``root`` (its pixels are not on disk)."""
    return ImageDataset(images, labels, dataset.classes, list(dataset.paths), None, list(dataset.notes))


def stamp_rows(images: torch.Tensor, index: np.ndarray, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
    """Replace ``images[index]`` by ``fn(images[index])`` in place (no-op for an empty index)."""
    if len(index):
        idx = torch.from_numpy(np.asarray(index, dtype=np.int64)).to(images.device)
        images[idx] = fn(images[idx])


def dirty_labels(dataset: ImageDataset, labels: torch.Tensor, index: np.ndarray, target: int,
                 all_to_all: bool) -> torch.Tensor:
    """``labels`` with the samples at ``index`` relabelled: ``target`` (all-to-one), or each its next
    class, y -> y + 1 mod C (all-to-all: no single target class to find)."""
    if all_to_all:
        rows = torch.as_tensor(index, dtype=torch.long)
        labels[rows] = (labels[rows] + 1) % dataset.num_classes
    else:
        relabel(labels, index, target)
    return labels


def relabel(labels: torch.Tensor, index: np.ndarray, target: int) -> None:
    if len(index):
        labels[torch.from_numpy(np.asarray(index, dtype=np.int64)).to(labels.device)] = target


def random_pattern(rng: np.random.Generator, channels: int, height: int, width: int, cells: int | None = None
                   ) -> torch.Tensor:
    """Seeded uint8 noise; with ``cells``, a ``cells x cells`` grid of flat colours (nearest upsampling)."""
    if cells is None or cells >= min(height, width):
        return torch.from_numpy(rng.integers(0, 256, size=(channels, height, width), dtype=np.uint8))
    grid = torch.from_numpy(rng.integers(0, 256, size=(1, channels, cells, cells), dtype=np.uint8))
    return torch.nn.functional.interpolate(grid.float(), size=(height, width), mode="nearest")[0].to(torch.uint8)


def full_mask(height: int, width: int) -> torch.Tensor:
    return torch.ones(1, height, width, dtype=torch.float32)


def load_trigger(path: str | Path, channels: int, mask_path: str | Path | None = None) -> Stamp:
    """A user-supplied trigger image as a :class:`Stamp` at (0, 0).

    The mask comes from ``mask_path`` (a grayscale image of the same size, 255 = trigger) or else
    from the image's alpha channel / transparency, or else the whole image is the trigger. The
    pattern is converted to the dataset's channel count (grayscale or RGB).
    """
    img = decode_image(path, "trigger image")
    has_alpha = img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info
    rgba = img.convert("RGBA")
    pattern_img = rgba.convert("L") if channels == 1 else rgba.convert("RGB")
    arr = np.array(pattern_img, dtype=np.uint8)
    pattern = torch.from_numpy(np.ascontiguousarray(arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)))
    if mask_path is not None:
        mask_img = decode_image(mask_path, "trigger mask").convert("L")
        if mask_img.size != img.size:
            raise ParameterError("mask", mask_path, f"size {mask_img.size[0]}x{mask_img.size[1]} differs from "
                                 f"the trigger's {img.size[0]}x{img.size[1]}")
        mask = np.asarray(mask_img, dtype=np.float32) / 255
    elif has_alpha:
        mask = np.asarray(rgba, dtype=np.float32)[..., 3] / 255
    else:
        mask = np.ones((img.height, img.width), dtype=np.float32)
    if not mask.any():
        raise ParameterError("trigger", path, "the mask is empty (fully transparent)")
    return Stamp(pattern.contiguous(), torch.from_numpy(np.ascontiguousarray(mask[None])))


def fit_full(stamp: Stamp, size: tuple[int, int]) -> Stamp:
    """A whole-image trigger (blend families): resize pattern and mask to ``size`` if needed."""
    if stamp.shape == tuple(size):
        return Stamp(stamp.pattern, stamp.mask, 0, 0)
    pattern = TF.resize(stamp.pattern, list(size), antialias=True)
    mask = TF.resize(stamp.mask, list(size), antialias=True).clamp_(0, 1)
    return Stamp(pattern, mask, 0, 0)


def place(stamp: Stamp, size: tuple[int, int], top: int, left: int, option: str = "--trigger") -> Stamp:
    """Position a patch at ``(top, left)``, moved up/left as needed so it lies inside the image."""
    h, w = stamp.shape
    if h > size[0] or w > size[1]:
        raise SanitizeError(f"{option}: a {h}x{w} patch does not fit in {size[0]}x{size[1]} images")
    return Stamp(stamp.pattern, stamp.mask, min(top, size[0] - h), min(left, size[1] - w))


def check_stamp_channels(stamp: Stamp, dataset: ImageDataset) -> None:
    if stamp.pattern.shape[0] != dataset.channels:
        raise SanitizeError(f"trigger has {stamp.pattern.shape[0]} channel(s), the images {dataset.channels}")


def apply_trigger_to_test(poisoned: PoisonedSet, test: ImageDataset) -> ImageDataset:
    """The triggered copy of ``test`` that measures the attack success rate (ASR).

    Only inputs that can show the backdoor are kept: every class except the target, or for a
    source-specific attack (TaCT) the source class only, for an all-to-all attack every class.
    They carry the test-time trigger (which for adaptive attacks is stronger than the training
    one) and keep their *true* labels and paths, so ASR = fraction of this set predicted as
    ``poisoned.backdoor_labels(labels)`` (the target, or the next class for all-to-all).
    """
    if poisoned.test_trigger is None:
        raise SanitizeError(f"{poisoned.attack}: this poisoned set has no test-time trigger")
    train = poisoned.dataset
    if test.classes != train.classes:
        raise SanitizeError("test set and poisoned set must use the same class list")
    if test.size != train.size or test.channels != train.channels:
        raise SanitizeError(f"test images are {test.channels}x{test.size[0]}x{test.size[1]}, training images "
                            f"{train.channels}x{train.size[0]}x{train.size[1]}")
    labels = test.labels.cpu().numpy()
    if poisoned.all_to_all:
        keep = np.ones(len(labels), dtype=bool)
    else:
        keep = labels == poisoned.source if poisoned.source is not None else labels != poisoned.target
    subset = test.subset(np.flatnonzero(keep))
    images = poisoned.test_trigger(subset.images) if len(subset) else subset.images.clone()
    return ImageDataset(images, subset.labels, subset.classes, subset.paths, None, list(subset.notes))
