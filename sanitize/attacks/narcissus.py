"""Narcissus: a clean-label backdoor from target-class images alone (Zeng et al., CCS 2023).

The trigger is not a pattern chosen by hand but the perturbation that most strongly says
"target class" to a model of the task, so a few target-class images carrying it (labels kept)
teach the victim that shortcut:

1. a surrogate is trained on data *without* the target class (the paper's "POOD" data: here the
   clean set's other classes, trained locally and cached, see :mod:`.surrogate`), then *warmed
   up* for ``warmup_epochs`` (5, and at least 200 SGD steps) at learning rate 0.01 on the
   target-class images together with as many of those other-class images: the target is a newly
   learnt class, not yet a saturated one, so its loss still has a direction to follow;
2. one additive trigger ``delta`` (the image's size, L-infinity ``epsilon`` = 16/255) is optimised
   with RAdam (lr 0.01) for ``rounds`` (1,000) passes over the target-class images, under flip and
   crop augmentation at 32 px and above, to *minimise* the warmed-up model's loss for the target
   label;
3. ``floor(N * rate)`` random target-class training images get ``delta`` added (rounded to pixel
   levels, so every poison image is within ``epsilon`` of its original); labels are kept;
4. at test time the trigger is magnified ``test_magnification`` times (3, as in the paper).

The constants are the reference implementation's (``l_inf_r = 16/255``, ``warmup_round = 5``,
``generating_lr_tri = 0.01``, ``gen_round = 1000``, ``multi_test = 3``) except the warm-up's
learning rate: the reference's 0.1 for 5 epochs is hundreds of steps on its 100,000
out-of-distribution images, but on a small set it is a few dozen steps at a rate that wrecks the
model (measured in ``docs/attacks.md``), so here it is 0.01 for at least 200 steps. Also a
deviation: the paper's surrogate is trained on out-of-distribution data (Tiny-ImageNet); here
the out-of-distribution part is the victim's other classes, so the attacker knows more of the
task than the paper's. The trigger is cached by data, seed and settings.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import torch
from torch.nn import functional as F

from ..data.images import ImageDataset
from ..errors import ParameterError
from ..nn.engine import Preprocess, TrainSpec, flip_and_crop, train_supervised
from ..nn.models import Classifier
from .base import PoisonedSet, check_target, choose_poison_indices, derived_rng, rebuild
from .surrogate import Surrogate, add_bounded, normalised, pixel_levels

NARCISSUS_EPSILON = 16 / 255
NARCISSUS_ROUNDS = 1000
NARCISSUS_WARMUP_EPOCHS = 5
NARCISSUS_WARMUP_LR = 0.01  # the reference's 0.1, see the module docstring
WARMUP_MIN_STEPS = 200
NARCISSUS_TRIGGER_LR = 0.01
NARCISSUS_TEST_MAGNIFICATION = 3.0
BATCH = 64


def warm_up(model: Classifier, prep: Preprocess, data: ImageDataset, target: int, seed: int, epochs: int
            ) -> Classifier:
    """A copy of ``model`` fine-tuned on the target class and as many other-class images."""
    labels = data.labels.cpu().numpy()
    own = np.flatnonzero(labels == target)
    others = np.flatnonzero(labels != target)
    pood = derived_rng(seed, "narcissus-pood").choice(others, size=min(len(own), len(others)), replace=False)
    rows = torch.from_numpy(np.sort(np.concatenate([own, pood])))
    device = next(model.parameters()).device
    warmed = copy.deepcopy(model)
    epochs = max(epochs, math.ceil(WARMUP_MIN_STEPS / max(1, len(rows) // BATCH)))
    spec = TrainSpec(epochs=epochs, batch_size=BATCH, lr=NARCISSUS_WARMUP_LR, momentum=0.9, weight_decay=5e-4,
                     augment=min(data.size) >= 32)
    train_supervised(warmed, data.images[rows].to(device), data.labels[rows].to(device), spec, prep,
                     torch.Generator().manual_seed(seed))
    return warmed.eval()


def optimise_trigger(model: Classifier, prep: Preprocess, images: torch.Tensor, target: int, *, levels: int,
                     rounds: int, seed: int, advance=lambda: None) -> torch.Tensor:
    """The additive trigger (pixel levels, ``C x H x W``) that minimises the target-class loss."""
    device = next(model.parameters()).device
    for p in model.parameters():
        p.requires_grad_(False)
    eps = levels / 255
    delta = torch.zeros(images.shape[1:], device=device, requires_grad=True)
    opt = torch.optim.RAdam([delta], lr=NARCISSUS_TRIGGER_LR)
    generator = torch.Generator().manual_seed(seed)
    x_all = images.to(device).float() / 255
    y = torch.full((min(BATCH, len(x_all)),), target, device=device)
    augment = min(images.shape[-2:]) >= 32
    for _ in range(rounds):
        for idx in torch.randperm(len(x_all), generator=generator).split(BATCH):
            x = x_all[idx.to(device)]
            if augment:
                x = flip_and_crop(x, generator, 4)
            loss = F.cross_entropy(model(normalised(prep, (x + delta.clamp(-eps, eps)).clamp(0, 1))), y[:len(x)])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        advance()
    return (delta.detach().clamp(-eps, eps) * 255).round().clamp(-levels, levels)


def narcissus(dataset: ImageDataset, rate: float = 0.005, target: int = 0, seed: int = 0, *,
              epsilon: float = NARCISSUS_EPSILON, rounds: int = NARCISSUS_ROUNDS,
              warmup_epochs: int = NARCISSUS_WARMUP_EPOCHS,
              test_magnification: float = NARCISSUS_TEST_MAGNIFICATION,
              surrogate: Surrogate | None = None) -> PoisonedSet:
    """Add an optimised trigger to ``floor(N * rate)`` target-class images (labels kept)."""
    check_target(dataset, target)
    levels = pixel_levels(epsilon)
    for value, name in ((rounds, "rounds"), (warmup_epochs, "warmup_epochs")):
        if not isinstance(value, int) or value < 1:
            raise ParameterError(name, value, "expected a whole number >= 1")
    if not 1 <= test_magnification <= 255:  # written so that NaN fails too
        raise ParameterError("test_magnification", test_magnification, "expected a factor in [1, 255]")
    surrogate = surrogate or Surrogate()
    candidates = np.flatnonzero(dataset.labels.cpu().numpy() == target)
    index = candidates[choose_poison_indices(len(candidates), len(dataset), rate, seed)]

    def trigger() -> torch.Tensor:
        model, prep = surrogate.clean_model(dataset.subset(np.setdiff1d(np.arange(len(dataset)), candidates)), seed)
        warmed = warm_up(model, prep, dataset, target, seed, warmup_epochs)
        with surrogate.progress.phase("optimise trigger", rounds) as advance:
            return optimise_trigger(warmed, prep, dataset.images[torch.from_numpy(candidates)], target,
                                    levels=levels, rounds=rounds, seed=seed, advance=advance)

    settings = {"target": target, "levels": levels, "rounds": rounds, "warmup_epochs": warmup_epochs}
    delta = surrogate.cached("narcissus", dataset, seed, settings, trigger)
    images = dataset.images.clone()
    if len(index):
        rows = torch.from_numpy(index)
        images[rows] = add_bounded(dataset.images[rows], delta, levels).to(images.device)
    test_levels = min(255, round(levels * test_magnification))
    params = {"rate": rate, "epsilon": levels / 255, "epsilon_levels": levels, "rounds": rounds,
              "warmup_epochs": warmup_epochs, "test_magnification": test_magnification,
              "surrogate_arch": surrogate.arch}
    return PoisonedSet(
        dataset=rebuild(dataset, images, dataset.labels.clone()), poison_indices=np.sort(index).astype(np.int64),
        target=target, attack="narcissus", params=params, seed=seed, clean_label=True,
        test_trigger=lambda x: add_bounded(x, delta * test_magnification, test_levels))
