"""SIG: a clean-label sinusoidal signal (Barni et al., ICIP 2019).

Only images of the target class are poisoned and their labels are kept, so a visual or label
audit finds nothing wrong. Each chosen image gets

    x'[c, i, j] = clamp(round(x[c, i, j] + delta * sin(2*pi * j * f / W)), 0, 255)

with ``delta = 30`` (30/255 of the range) and ``f`` the number of periods across the width.
Size rule: ``f = min(6, W / 4)``, i.e. six periods across the image as on 32 px CIFAR images,
but never shorter than 4 px per period, so small images (8 px digits: 2 periods) do not alias.
The same signal is the test-time trigger.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..data.images import ImageDataset
from .base import PoisonedSet, check_target, choose_poison_indices, rebuild, stamp_rows, to_uint8

SIG_DELTA = 30.0


def sig_frequency(width: int) -> float:
    return min(6.0, width / 4)


def sig_signal(size: tuple[int, int], delta: float = SIG_DELTA) -> torch.Tensor:
    """The ``1 x 1 x H x W`` float signal added to every channel and row."""
    h, w = size
    f = sig_frequency(w)
    j = np.arange(w, dtype=np.float64)
    row = delta * np.sin(2 * math.pi * j * f / w)
    return torch.from_numpy(np.broadcast_to(row, (h, w)).astype(np.float32).copy())[None, None]


def add_signal(images: torch.Tensor, signal: torch.Tensor) -> torch.Tensor:
    return to_uint8(images.float() + signal.to(images.device))


def sig(dataset: ImageDataset, rate: float = 0.02, target: int = 0, seed: int = 0,
        delta: float = SIG_DELTA) -> PoisonedSet:
    """Add the signal to ``floor(N * rate)`` random images of class ``target`` (labels unchanged)."""
    check_target(dataset, target)
    candidates = np.flatnonzero(dataset.labels.cpu().numpy() == target)
    index = candidates[choose_poison_indices(len(candidates), len(dataset), rate, seed)]
    signal = sig_signal(dataset.size, delta)
    images = dataset.images.clone()
    stamp_rows(images, index, lambda x: add_signal(x, signal))
    params = {"rate": rate, "delta": delta, "frequency": sig_frequency(dataset.size[1])}
    return PoisonedSet(
        dataset=rebuild(dataset, images, dataset.labels.clone()),
        poison_indices=np.sort(index).astype(np.int64), target=target, attack="sig", params=params, seed=seed,
        clean_label=True, test_trigger=lambda x: add_signal(x, signal))
