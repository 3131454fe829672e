"""CL: the label-consistent (clean-label) backdoor of Turner, Tsipras & Madry (2019).

A clean-label attack cannot relabel, so its poison must be images the model *cannot* classify
from their content: then the trigger is the easiest explanation of their (correct) label. Turner
et al. make target-class images hard with an adversarial perturbation and stamp a trigger on them:

1. a model is trained normally on the clean set (here, locally and cached; see
   :mod:`.surrogate`);
2. ``floor(N * rate)`` random target-class images get an untargeted L-infinity PGD perturbation
   against it (``epsilon`` = 8/255, 10 steps), which pushes them away from their own label;
3. the trigger is stamped: a seeded black/white square of BadNet's size (3 px at 32 px) in each of
   the four corners (the paper's four-corner variant, as in the CT reference's
   ``badnet_patch4_dup``), at ``opacity`` 1 by default; labels are kept.

The test-time trigger is the same four squares at full opacity on unperturbed images.

Deviations, stated in ``docs/attacks.md``: Turner et al. attack an *adversarially trained* model
(the CT reference reuses their precomputed L2 perturbations, ``two_600``); here the model is
trained normally, which is what a user without a robust model has. ``opacity < 1`` is the paper's
reduced-visibility trigger as a blend with the pattern.
"""

from __future__ import annotations

import numpy as np
import torch

from ..data.images import ImageDataset
from ..errors import ParameterError
from .base import PoisonedSet, Stamp, check_target, choose_poison_indices, full_mask, rebuild
from .patch import badnet_trigger, patch_side
from .surrogate import Surrogate, pgd_away_from_label, pixel_levels

CL_EPSILON = 8 / 255
CL_STEPS = 10


def corner_stamps(dataset: ImageDataset, seed: int) -> list[Stamp]:
    """BadNet's seeded pattern in each of the four corners."""
    side = patch_side(dataset.size)
    h, w = dataset.size
    pattern = badnet_trigger(dataset.channels, side, seed)
    mask = full_mask(side, side)
    return [Stamp(pattern, mask, top, left) for top in (0, h - side) for left in (0, w - side)]


def stamp_all(images: torch.Tensor, stamps: list[Stamp], opacity: float = 1.0) -> torch.Tensor:
    for s in stamps:
        images = s.apply(images, opacity)
    return images


def cl(dataset: ImageDataset, rate: float = 0.003, target: int = 0, seed: int = 0, *,
       epsilon: float = CL_EPSILON, steps: int = CL_STEPS, opacity: float = 1.0,
       surrogate: Surrogate | None = None) -> PoisonedSet:
    """Perturb ``floor(N * rate)`` target-class images adversarially, stamp the four corners, keep labels."""
    check_target(dataset, target)
    levels = pixel_levels(epsilon)
    if not isinstance(steps, int) or steps < 1:
        raise ParameterError("steps", steps, "expected a whole number of PGD steps >= 1")
    if not 0 < opacity <= 1:  # written so that NaN fails too
        raise ParameterError("opacity", opacity, "expected a value in (0, 1]")
    surrogate = surrogate or Surrogate()
    candidates = np.flatnonzero(dataset.labels.cpu().numpy() == target)
    index = candidates[choose_poison_indices(len(candidates), len(dataset), rate, seed)]
    stamps = corner_stamps(dataset, seed)
    images = dataset.images.clone()
    if len(index):
        model, prep = surrogate.clean_model(dataset, seed)
        rows = torch.from_numpy(index)
        generator = torch.Generator().manual_seed(seed)
        hard = pgd_away_from_label(model, prep, dataset.images[rows], dataset.labels[rows], levels=levels,
                                   steps=steps, generator=generator)
        images[rows] = stamp_all(hard, stamps, opacity).to(images.device)
    params = {"rate": rate, "epsilon": levels / 255, "epsilon_levels": levels, "steps": steps, "opacity": opacity,
              "trigger": [s.describe() for s in stamps], "surrogate_arch": surrogate.arch}
    return PoisonedSet(
        dataset=rebuild(dataset, images, dataset.labels.clone()), poison_indices=np.sort(index).astype(np.int64),
        target=target, attack="cl", params=params, seed=seed, clean_label=True,
        test_trigger=lambda x: stamp_all(x, stamps), stamps=stamps)
