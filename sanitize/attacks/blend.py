"""Blended triggers: Blend (Chen et al., 2017) and Adap-Blend (Qi et al., ICLR 2023).

The pattern covers the whole image, so it scales with the image by construction: a seeded
uniform-noise image of the dataset's size and channel count, or the user's image resized to it
(its alpha channel / mask, if any, limits where it is blended).

* Blend: ``x <- (1 - a*m) * x + a*m * pattern`` with ``a = 0.2`` (``m`` = 1 for generated noise).
  Every pixel moves towards the pattern by exactly 20 % of their difference (before rounding).
* Adap-Blend: the image is cut into a 4 x 4 grid of pieces (boundaries ``round(i*H/4)``,
  ``round(j*W/4)``); each poison or cover image gets the pattern at ``a = 0.15`` on a random half
  (8 of 16) of the pieces, drawn per image. Covers keep their label. The test-time trigger is
  the full pattern at ``a = 0.2``.
"""

from __future__ import annotations

import numpy as np
import torch

from ..data.images import ImageDataset
from .base import (
    PoisonedSet,
    Stamp,
    check_stamp_channels,
    check_target,
    choose_cover_indices,
    choose_poison_indices,
    derived_rng,
    dirty_labels,
    fit_full,
    full_mask,
    random_pattern,
    rebuild,
    relabel,
    stamp_rows,
    to_uint8,
)

PIECES = 4


def blend_stamp(dataset: ImageDataset, seed: int, trigger: Stamp | None = None, stream: str = "blend") -> Stamp:
    """The whole-image blend pattern: seeded noise, or the user's image fitted to the image size."""
    h, w = dataset.size
    if trigger is None:
        trigger = Stamp(random_pattern(derived_rng(seed, f"{stream}-pattern"), dataset.channels, h, w),
                        full_mask(h, w))
    check_stamp_channels(trigger, dataset)
    return fit_full(trigger, dataset.size)


def blend(dataset: ImageDataset, rate: float = 0.003, target: int = 0, seed: int = 0,
          trigger: Stamp | None = None, alpha: float = 0.2, all_to_all: bool = False) -> PoisonedSet:
    """Blend a whole-image pattern at opacity ``alpha`` into ``floor(N*rate)`` samples, relabel them
    ``target`` (``all_to_all``: each its next class, y -> y + 1 mod C)."""
    if not all_to_all:
        check_target(dataset, target)
    stamp = blend_stamp(dataset, seed, trigger)
    index = choose_poison_indices(len(dataset), len(dataset), rate, seed)
    images, labels = dataset.images.clone(), dataset.labels.clone()
    stamp_rows(images, index, lambda x: stamp.apply(x, alpha))
    labels = dirty_labels(dataset, labels, index, target, all_to_all)
    params = {"rate": rate, "alpha": alpha, "custom_trigger": trigger is not None}
    return PoisonedSet(rebuild(dataset, images, labels), index, None if all_to_all else target, "blend", params,
                       seed=seed, test_trigger=lambda x: stamp.apply(x, alpha), stamps=[stamp], all_to_all=all_to_all)


def piece_masks(size: tuple[int, int], n: int, rng: np.random.Generator, pieces: int = PIECES) -> torch.Tensor:
    """``n x 1 x H x W`` masks, each keeping a random half of the ``pieces x pieces`` grid cells."""
    h, w = size
    rows = np.round(np.linspace(0, h, pieces + 1)).astype(int)
    cols = np.round(np.linspace(0, w, pieces + 1)).astype(int)
    masks = np.zeros((n, 1, h, w), dtype=np.float32)
    cells = pieces * pieces
    for i in range(n):
        for cell in rng.choice(cells, size=cells // 2, replace=False):
            r, c = divmod(int(cell), pieces)
            masks[i, 0, rows[r]:rows[r + 1], cols[c]:cols[c + 1]] = 1
    return torch.from_numpy(masks)


def blend_with_masks(images: torch.Tensor, stamp: Stamp, masks: torch.Tensor, alpha: float) -> torch.Tensor:
    """Per-image masked blend: ``x * (1 - a*m_i*M) + p * a*m_i*M`` (``M`` the stamp's own mask)."""
    weight = masks.to(images.device) * stamp.mask.to(images.device) * alpha
    return to_uint8(images.float() * (1 - weight) + stamp.pattern.to(images.device).float() * weight)


def adap_blend(dataset: ImageDataset, rate: float = 0.003, target: int = 0, seed: int = 0,
               cover_rate: float = 0.003, trigger: Stamp | None = None, alpha: float = 0.15,
               test_alpha: float = 0.2) -> PoisonedSet:
    """Adaptive blend: weak, randomly half-masked blends on poison (relabelled) and covers (not).

    Random partial triggers plus correctly labelled covers keep the model from learning a clean
    separation between poison and clean features; the full trigger at test time still fires.
    """
    check_target(dataset, target)
    stamp = blend_stamp(dataset, seed, trigger, stream="adap-blend")
    index = choose_poison_indices(len(dataset), len(dataset), rate, seed)
    rest = np.setdiff1d(np.arange(len(dataset)), index)
    cover = choose_cover_indices(rest, len(dataset), cover_rate, seed)
    rng = derived_rng(seed, "adap-blend-pieces")
    images, labels = dataset.images.clone(), dataset.labels.clone()
    for chosen in (index, cover):
        masks = piece_masks(dataset.size, len(chosen), rng)
        stamp_rows(images, chosen, lambda x, m=masks: blend_with_masks(x, stamp, m, alpha))
    relabel(labels, index, target)
    params = {"rate": rate, "cover_rate": cover_rate, "alpha": alpha, "test_alpha": test_alpha,
              "pieces": f"{PIECES}x{PIECES}", "pieces_kept": PIECES * PIECES // 2,
              "custom_trigger": trigger is not None}
    return PoisonedSet(rebuild(dataset, images, labels), index, target, "adap-blend", params, cover, seed,
                       test_trigger=lambda x: stamp.apply(x, test_alpha), stamps=[stamp])
