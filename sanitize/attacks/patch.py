"""Patch triggers: BadNet (Gu et al., 2017), Trojan (Liu et al., 2018) and Adap-Patch (Qi et al., 2023).

All patterns are drawn from the seed (no third-party image) and sized relative to a 32 px image,
scaled with the shorter image side ``S``:

* BadNet: a black/white square of side ``max(3, round(3*S/32))`` at the bottom-right corner.
* Trojan: a square of flat colour cells (4 x 4 cells) of side ``max(2, round(8*S/32))`` whose
  top-left corner is at ``(round(21*H/32), round(21*W/32))`` (rows/cols 21-28 on 32 px), moved
  inward if it would not fit. Opaque.
* Adap-Patch: four different colour-cell squares of side ``max(2, round(4*S/32))``, one in each
  corner, inset by ``round(S/32)`` px. Each quarter of the poison (and of the cover) samples gets
  one of them at partial opacity 0.5 / 0.2 / 0.5 / 0.3; the test-time trigger is all four at
  full opacity.

A user-supplied patch (``trigger=`` a :class:`~.base.Stamp`, e.g. from :func:`~.base.load_trigger`)
replaces the generated one at its own size and at the same anchor.
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
    full_mask,
    groups,
    place,
    random_pattern,
    rebuild,
    relabel,
    scaled,
    stamp_rows,
)

ADAP_PATCH_OPACITY = (0.5, 0.2, 0.5, 0.3)


def patch_side(size: tuple[int, int]) -> int:
    """BadNet's side: 3 px at 32 px, scaled with the shorter side, never below 3."""
    return scaled(3, size, minimum=3)


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


def badnet_stamp(dataset: ImageDataset, seed: int, trigger: Stamp | None = None) -> Stamp:
    """The BadNet corner patch (generated, or the user's patch at the same corner)."""
    h_img, w_img = dataset.size
    if trigger is None:
        side = patch_side(dataset.size)
        trigger = Stamp(badnet_trigger(dataset.channels, side, seed), full_mask(side, side))
    check_stamp_channels(trigger, dataset)
    return place(trigger, dataset.size, h_img, w_img)


def trojan_stamp(dataset: ImageDataset, seed: int, trigger: Stamp | None = None) -> Stamp:
    """The Trojan square (generated, or the user's patch at the same anchor)."""
    h_img, w_img = dataset.size
    if trigger is None:
        side = scaled(8, dataset.size, minimum=2)
        pattern = random_pattern(derived_rng(seed, "trojan-pattern"), dataset.channels, side, side, cells=4)
        trigger = Stamp(pattern, full_mask(side, side))
    check_stamp_channels(trigger, dataset)
    return place(trigger, dataset.size, round(21 * h_img / 32), round(21 * w_img / 32))


def _dirty_label(dataset: ImageDataset, rate: float, target: int, seed: int, stamp: Stamp, name: str,
                 params: dict, all_to_all: bool = False) -> PoisonedSet:
    if not all_to_all:
        check_target(dataset, target)
    index = choose_poison_indices(len(dataset), len(dataset), rate, seed)
    images, labels = dataset.images.clone(), dataset.labels.clone()
    stamp_rows(images, index, stamp.apply)
    params = {"rate": rate, "trigger": stamp.describe(), **params}
    return PoisonedSet(rebuild(dataset, images, dirty_labels(dataset, labels, index, target, all_to_all)), index,
                       None if all_to_all else target, name, params, seed=seed, test_trigger=stamp.apply,
                       stamps=[stamp], all_to_all=all_to_all)


def badnet(dataset: ImageDataset, rate: float = 0.003, target: int = 0, seed: int = 0,
           trigger: Stamp | None = None, all_to_all: bool = False) -> PoisonedSet:
    """Paste a corner patch on ``floor(N * rate)`` random samples and relabel them ``target``
    (``all_to_all``: each its next class, y -> y + 1 mod C)."""
    stamp = badnet_stamp(dataset, seed, trigger)
    params = {"patch_side": stamp.shape[0], "custom_trigger": trigger is not None}
    return _dirty_label(dataset, rate, target, seed, stamp, "badnet", params, all_to_all)


def trojan(dataset: ImageDataset, rate: float = 0.003, target: int = 0, seed: int = 0,
           trigger: Stamp | None = None, all_to_all: bool = False) -> PoisonedSet:
    """Paste an opaque colour square (lower right, inside the image) and relabel to ``target``
    (``all_to_all``: each its next class)."""
    stamp = trojan_stamp(dataset, seed, trigger)
    params = {"patch_side": stamp.shape[0], "custom_trigger": trigger is not None}
    return _dirty_label(dataset, rate, target, seed, stamp, "trojan", params, all_to_all)


def adap_patch_stamps(dataset: ImageDataset, seed: int) -> list[Stamp]:
    """Four seeded colour-cell squares, one per corner (see the module docstring for sizes)."""
    h_img, w_img = dataset.size
    side = scaled(4, dataset.size, minimum=2)
    inset = scaled(1, dataset.size, minimum=0)
    corners = [(inset, inset), (inset, w_img - side - inset), (h_img - side - inset, inset),
               (h_img - side - inset, w_img - side - inset)]
    rng = derived_rng(seed, "adap-patch-patterns")
    return [Stamp(random_pattern(rng, dataset.channels, side, side, cells=2), full_mask(side, side), top, left)
            for top, left in corners]


def adap_patch(dataset: ImageDataset, rate: float = 0.003, target: int = 0, seed: int = 0,
               cover_rate: float = 0.006) -> PoisonedSet:
    """Adaptive patch: four weak partial triggers on poison (relabelled) and cover (not) samples.

    Splitting the trigger and adding covers that keep their label weakens the latent separation
    between poison and clean samples that many detectors rely on; at test time the four patches
    are stamped together at full opacity.
    """
    check_target(dataset, target)
    index = choose_poison_indices(len(dataset), len(dataset), rate, seed)
    rest = np.setdiff1d(np.arange(len(dataset)), index)
    cover = choose_cover_indices(rest, len(dataset), cover_rate, seed)
    stamps = adap_patch_stamps(dataset, seed)
    images, labels = dataset.images.clone(), dataset.labels.clone()
    for chosen in (index, cover):
        for stamp, opacity, part in zip(stamps, ADAP_PATCH_OPACITY, groups(chosen, 4), strict=True):
            stamp_rows(images, part, lambda x, s=stamp, a=opacity: s.apply(x, a))
    relabel(labels, index, target)

    def test_trigger(x: torch.Tensor) -> torch.Tensor:
        for stamp in stamps:
            x = stamp.apply(x, 1.0)
        return x

    params = {"rate": rate, "cover_rate": cover_rate, "opacity": list(ADAP_PATCH_OPACITY), "test_opacity": 1.0,
              "triggers": [s.describe() for s in stamps]}
    return PoisonedSet(rebuild(dataset, images, labels), index, target, "adap-patch", params, cover, seed,
                       test_trigger=test_trigger, stamps=stamps)
