"""What every attack returns, and the seeded choice of which samples to poison."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..data import ImageDataset
from ..errors import SanitizeError


@dataclass
class PoisonedSet:
    """A poisoned copy of a dataset plus its ground truth.

    ``poison_indices`` carry the trigger (and, for dirty-label attacks, the target label);
    ``cover_indices`` carry a trigger but keep their true label (adaptive attacks), and count as
    clean when scoring a detector.
    """

    dataset: ImageDataset
    poison_indices: np.ndarray
    target: int
    attack: str
    params: dict[str, Any] = field(default_factory=dict)
    cover_indices: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    seed: int = 0

    @property
    def is_poison(self) -> np.ndarray:
        mask = np.zeros(len(self.dataset), dtype=bool)
        mask[self.poison_indices] = True
        return mask


def choose_poison_indices(n_candidates: int, n_total: int, rate: float, seed: int) -> np.ndarray:
    """A seeded random subset of ``floor(n_total * rate)`` of ``range(n_candidates)``, sorted."""
    if not 0 <= rate < 1:
        raise SanitizeError(f"--rate {rate}: expected a fraction in [0, 1)")
    count = int(np.floor(n_total * rate))
    if count > n_candidates:
        raise SanitizeError(f"--rate {rate}: needs {count} samples but only {n_candidates} are eligible")
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n_candidates, size=count, replace=False)).astype(np.int64)


def check_target(dataset: ImageDataset, target: int) -> None:
    if not 0 <= target < dataset.num_classes:
        raise SanitizeError(f"--target {target}: the dataset has classes 0..{dataset.num_classes - 1}")
