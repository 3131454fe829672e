"""WaNet: an imperceptible smooth warp as the trigger (Nguyen & Tran, ICLR 2021).

Construction (``torch.nn.functional.grid_sample``, bilinear, ``align_corners=True``):

1. A ``2 x k x k`` control grid of uniform noise in [-1, 1], normalised to mean |value| 1, is
   upsampled (bicubic) to ``2 x H x W``: a smooth displacement field.
2. The sampling grid is ``identity + s * field / (W, H)`` (x and y components), clamped to
   [-1, 1]: each pixel is resampled about ``s/2 * |field|`` pixels away (``s = 0.5``).
3. Poison samples get the warp and the target label. Cover samples (``cover_rate``, default 0.1)
   get the warp plus per-image random jitter ``U(-1, 1) / (W, H)`` on every grid point and keep
   their label, which teaches the model that only the exact warp is the trigger.

Size rule: the control grid spans the whole image, so its spacing scales with the image;
``k = 4`` for images whose shorter side is at least 8 px, ``max(2, S // 2)`` below. The
strength keeps WaNet's normalisation by the image side (a fixed sub-pixel displacement), as the
paper does for 28, 32 and 64 px images. The test-time trigger is the warp without jitter.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F

from ..data.images import ImageDataset
from .base import (
    PoisonedSet,
    check_target,
    choose_cover_indices,
    choose_poison_indices,
    derived_rng,
    rebuild,
    relabel,
    stamp_rows,
    to_uint8,
)

WANET_STRENGTH = 0.5
CHUNK_PIXELS = 1 << 22  # images x H x W per grid_sample call: bounds memory on large images


def control_points(size: tuple[int, int]) -> int:
    return 4 if min(size) >= 8 else max(2, min(size) // 2)


def identity_grid(size: tuple[int, int]) -> torch.Tensor:
    """``1 x H x W x 2`` sampling grid (x, y) that reproduces the image."""
    h, w = size
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    return torch.stack([xs, ys], dim=-1)[None]


def _scale(size: tuple[int, int]) -> torch.Tensor:
    h, w = size
    return torch.tensor([1.0 / w, 1.0 / h])


def wanet_grid(size: tuple[int, int], seed: int, strength: float = WANET_STRENGTH, k: int | None = None
               ) -> tuple[torch.Tensor, np.ndarray]:
    """The seeded warp: ``1 x H x W x 2`` sampling grid and the ``2 x k x k`` control points."""
    k = k or control_points(size)
    ins = derived_rng(seed, "wanet-grid").uniform(-1, 1, size=(1, 2, k, k))
    ins = ins / np.mean(np.abs(ins))
    field = F.interpolate(torch.from_numpy(ins).float(), size=tuple(size), mode="bicubic", align_corners=True)
    grid = identity_grid(size) + strength * field.permute(0, 2, 3, 1) * _scale(size)
    return grid.clamp(-1, 1), ins[0]


def _chunk(images: torch.Tensor) -> int:
    return max(1, CHUNK_PIXELS // (images.shape[-2] * images.shape[-1]))


def warp(images: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Resample uint8 ``images`` through one ``1 x H x W x 2`` grid, in chunks."""
    out = torch.empty_like(images)
    grid = grid.to(images.device)
    step = _chunk(images)
    for start in range(0, len(images), step):
        x = images[start:start + step].float()
        out[start:start + step] = to_uint8(F.grid_sample(x, grid.expand(len(x), -1, -1, -1), mode="bilinear",
                                                         padding_mode="zeros", align_corners=True))
    return out


def warp_jittered(images: torch.Tensor, grid: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """The cover warp: ``grid`` plus fresh per-image jitter ``U(-1, 1) / (W, H)`` on every point."""
    out = torch.empty_like(images)
    size = (int(images.shape[-2]), int(images.shape[-1]))
    step = _chunk(images)
    for start in range(0, len(images), step):
        x = images[start:start + step]
        jitter = torch.from_numpy(rng.uniform(-1, 1, size=(len(x), *size, 2)).astype(np.float32))
        g = (grid + jitter * _scale(size)).clamp(-1, 1).to(images.device)
        out[start:start + step] = to_uint8(F.grid_sample(x.float(), g, mode="bilinear", padding_mode="zeros",
                                                         align_corners=True))
    return out


def wanet(dataset: ImageDataset, rate: float = 0.05, target: int = 0, seed: int = 0,
          cover_rate: float = 0.1, strength: float = WANET_STRENGTH, k: int | None = None) -> PoisonedSet:
    """Warp ``floor(N*rate)`` samples (relabelled) and ``floor(N*cover_rate)`` jittered covers (not)."""
    check_target(dataset, target)
    index = choose_poison_indices(len(dataset), len(dataset), rate, seed)
    rest = np.setdiff1d(np.arange(len(dataset)), index)
    cover = choose_cover_indices(rest, len(dataset), cover_rate, seed)
    grid, ins = wanet_grid(dataset.size, seed, strength, k)
    images, labels = dataset.images.clone(), dataset.labels.clone()
    stamp_rows(images, index, lambda x: warp(x, grid))
    stamp_rows(images, cover, lambda x: warp_jittered(x, grid, derived_rng(seed, "wanet-cover-noise")))
    relabel(labels, index, target)
    params = {"rate": rate, "cover_rate": cover_rate, "strength": strength, "k": int(ins.shape[-1]),
              "control_points": np.round(ins, 6).tolist()}
    return PoisonedSet(rebuild(dataset, images, labels), index, target, "wanet", params, cover, seed,
                       test_trigger=lambda x: warp(x, grid))
