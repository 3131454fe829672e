"""Patch triggers: BadNet (Gu et al., 2017).

The reference trigger is a 3x3 black/white pattern pasted at the bottom-right corner of 32x32
images. Here the pattern is drawn from the seed (no third-party image) and its side scales with
the image, ``max(3, round(3 * min(H, W) / 32))`` pixels, so it stays a small corner patch on
any image size.
"""

from __future__ import annotations

import numpy as np
import torch

from ..data import ImageDataset
from .base import PoisonedSet, check_target, choose_poison_indices


def patch_side(size: tuple[int, int]) -> int:
    return max(3, round(3 * min(size) / 32))


def badnet_trigger(channels: int, side: int, seed: int) -> torch.Tensor:
    """A seeded black/white ``channels x side x side`` uint8 pattern with both colours present."""
    rng = np.random.default_rng(seed)
    while True:
        bits = rng.integers(0, 2, size=(side, side))
        if 0 < bits.sum() < bits.size:
            break
    pattern = torch.from_numpy(bits.astype(np.uint8) * 255)
    return pattern.expand(channels, side, side).clone()


def paste_corner(images: torch.Tensor, trigger: torch.Tensor) -> torch.Tensor:
    """Paste ``trigger`` at the bottom-right corner of every image (returns a copy)."""
    out = images.clone()
    side_h, side_w = trigger.shape[-2:]
    out[..., -side_h:, -side_w:] = trigger.to(out.device)
    return out


def badnet(dataset: ImageDataset, rate: float, target: int = 0, seed: int = 0) -> PoisonedSet:
    """Paste a corner patch on ``floor(N * rate)`` random samples and relabel them ``target``."""
    check_target(dataset, target)
    index = choose_poison_indices(len(dataset), len(dataset), rate, seed)
    side = patch_side(dataset.size)
    trigger = badnet_trigger(dataset.channels, side, seed)
    images = dataset.images.clone()
    labels = dataset.labels.clone()
    idx = torch.from_numpy(index).to(images.device)
    images[idx] = paste_corner(images[idx], trigger)
    labels[idx] = target
    poisoned = ImageDataset(images, labels, dataset.classes, list(dataset.paths), None, list(dataset.notes))
    return PoisonedSet(poisoned, index, target, "badnet", {"rate": rate, "patch_side": side}, seed=seed)
