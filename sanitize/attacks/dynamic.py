"""Dynamic: the input-aware backdoor of Nguyen & Tran (NeurIPS 2020).

No two poison images share a trigger. A *pattern* network ``G`` and a *mask* network ``M``
(encoder-decoders, as in the reference) map each image to its own pattern and mask; the
triggered image is ``x + (G(x) - x) * t(M(x))`` with ``t`` the reference's soft threshold
``tanh(20 m - 10) / 2 + 1/2``. Both are trained here, on the clean set, in the reference's two
stages:

1. ``M`` alone for ``mask_epochs`` (25): a mask density penalty (``lambda_norm`` = 100 times the
   mean mask beyond ``mask_density`` = 0.032) plus the diversity term (``lambda_div`` = 1: the
   distance between two images over the distance between their masks, so that different images
   get different masks);
2. ``G`` jointly with a classifier for ``epochs``: in every batch a tenth of the images
   (``p_attack``) carry their own trigger and the target label, a tenth (``p_cross``) carry
   *another* image's trigger and keep their label (the cross-trigger term, which forces the
   trigger to depend on the input), plus the diversity term on the patterns. SGD (lr 0.01) for the
   classifier, Adam (lr 0.01, betas 0.5/0.9) for ``G``, as in the reference.

The poisoned set: ``floor(N * rate)`` random images carry their own trigger and are relabelled to
the target; ``floor(N * cover_rate)`` others carry another image's trigger and keep their label
(cross-trigger covers, clean for scoring). The test-time trigger is each test image's own.

Deviation, stated in ``docs/attacks.md``: the reference trains for 1,000 epochs (on CIFAR-10,
on a GPU); here ``epochs`` defaults to enough for at least 1,000 SGD steps (20 epochs or more), a
budget a CPU can pay. The networks are cached by data, seed and settings.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..data.images import ImageDataset
from ..errors import ParameterError
from ..nn.devices import seed_everything
from ..nn.engine import Preprocess, epoch_batches, make_sgd
from ..nn.models import build_model, default_arch
from .base import (
    PoisonedSet,
    check_target,
    choose_cover_indices,
    choose_poison_indices,
    derived_rng,
    dirty_labels,
    rebuild,
    to_uint8,
)
from .surrogate import Surrogate, normalised

MASK_DENSITY = 0.032
LAMBDA_NORM = 100.0
LAMBDA_DIV = 1.0
P_ATTACK = 0.1
P_CROSS = 0.1
MASK_EPOCHS = 25
MIN_STEPS = 1000
BATCH = 128
EPSILON = 1e-7


class TriggerNet(nn.Module):
    """The reference's encoder-decoder: conv-BN-ReLU blocks, ``depth`` 2x poolings and back up.

    Upsampling goes back to each level's recorded size, so any image size works (the reference
    assumes sides divisible by ``2**depth``). Output in (0, 1).
    """

    def __init__(self, in_channels: int, out_channels: int, depth: int, width: int) -> None:
        super().__init__()
        self.down = nn.ModuleList()
        c, nxt = in_channels, width
        for _ in range(depth):
            self.down.append(nn.Sequential(block(c, nxt), block(nxt, nxt)))
            c = nxt
            nxt *= 2
        self.middle = block(c, c)
        self.up = nn.ModuleList()
        for level in range(depth):
            last = level == depth - 1
            out = out_channels if last else c // 2
            self.up.append(nn.Sequential(block(c, c), block(c, out, relu=not last)))
            c = out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sizes = []
        for stage in self.down:
            x = stage(x)
            sizes.append(x.shape[-2:])
            x = F.max_pool2d(x, 2)
        x = self.middle(x)
        for stage, size in zip(self.up, reversed(sizes), strict=True):
            x = stage(F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False))
        return torch.tanh(x) / (2 + EPSILON) + 0.5


def block(c_in: int, c_out: int, relu: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out, momentum=0.05)]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def threshold(mask: torch.Tensor) -> torch.Tensor:
    return torch.tanh(mask * 20 - 10) / (2 + EPSILON) + 0.5


def net_shape(size: tuple[int, int], channels: int) -> dict[str, int]:
    """The reference's CIFAR-10 networks (3 poolings, 32 channels at the top) scaled down: one
    pooling per halving above 4 px, 16 channels for one-channel images (its MNIST setting)."""
    depth = max(1, int(math.log2(max(1, min(size) // 4))))
    return {"depth": min(depth, 3), "width": 16 if channels == 1 else 32}


def diversity(x1: torch.Tensor, x2: torch.Tensor, g1: torch.Tensor, g2: torch.Tensor) -> torch.Tensor:
    """Distance of the images over distance of their generated outputs: small when different
    inputs get different triggers."""
    d_images = (x1 - x2).pow(2).mean(dim=(1, 2, 3)).sqrt()
    d_outputs = (g1 - g2).pow(2).mean(dim=(1, 2, 3)).sqrt()
    return (d_images / (d_outputs + EPSILON)).mean()


class Triggers:
    """The trained pattern and mask networks: ``apply`` stamps each image with its own (or another's) trigger."""

    def __init__(self, pattern: TriggerNet, mask: TriggerNet, prep: Preprocess) -> None:
        self.pattern, self.mask, self.prep = pattern.eval(), mask.eval(), prep

    @torch.no_grad()
    def apply(self, images: torch.Tensor, source: torch.Tensor | None = None, batch_size: int = 512) -> torch.Tensor:
        """uint8 ``images`` carrying the trigger generated from ``source`` (default: themselves)."""
        device = next(self.pattern.parameters()).device
        source = images if source is None else source
        out = []
        for start in range(0, len(images), batch_size):
            x = images[start:start + batch_size].to(device).float() / 255
            s = normalised(self.prep, source[start:start + batch_size].to(device).float() / 255)
            mixed = x + (self.pattern(s) - x) * threshold(self.mask(s))
            out.append(to_uint8(mixed * 255).to(images.device))
        return torch.cat(out) if out else images.clone()


def train_triggers(data: ImageDataset, target: int, seed: int, surrogate: Surrogate, epochs: int,
                   mask_epochs: int) -> dict[str, dict[str, torch.Tensor]]:
    """Both stages of the reference's training; returns the two networks' state dicts."""
    device = surrogate.torch_device
    generator = seed_everything(seed)
    shape = net_shape(data.size, data.channels)
    pattern = TriggerNet(data.channels, data.channels, **shape).to(device)
    mask = TriggerNet(data.channels, 1, **shape).to(device)
    arch = default_arch(device, min(data.size)) if surrogate.arch == "auto" else surrogate.arch
    classifier = build_model(arch, data.num_classes, data.channels, min(data.size)).to(device)
    images, labels = data.images.to(device), data.labels.to(device)
    prep = Preprocess.fit(images)
    batch = min(BATCH, len(data))

    def pairs() -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]:
        for idx in epoch_batches(len(data), batch, generator, device):
            other = idx[torch.randperm(len(idx), generator=generator).to(device)]
            x1 = images[idx].float() / 255
            yield x1, labels[idx], images[other].float() / 255, idx

    opt_mask = torch.optim.Adam(mask.parameters(), lr=0.01, betas=(0.5, 0.9))
    with surrogate.progress.phase("train trigger masks", mask_epochs) as advance:
        for _ in range(mask_epochs):
            for x1, _, x2, _ in pairs():
                m1, m2 = mask(normalised(prep, x1)), mask(normalised(prep, x2))
                loss = LAMBDA_NORM * F.relu(m1.mean() - MASK_DENSITY) + LAMBDA_DIV * diversity(x1, x2, m1, m2)
                opt_mask.zero_grad(set_to_none=True)
                loss.backward()
                opt_mask.step()
            advance()
    mask.eval().requires_grad_(False)

    opt_c = make_sgd(classifier, 0.01, 0.9, 5e-4, False)
    opt_g = torch.optim.Adam(pattern.parameters(), lr=0.01, betas=(0.5, 0.9))
    with surrogate.progress.phase("train trigger patterns", epochs) as advance:
        for _ in range(epochs):
            pattern.train()
            classifier.train()
            for x1, y, x2, _ in pairs():
                n_bd, n_cross = int(P_ATTACK * len(y)), int(P_CROSS * len(y))
                s1, s2 = normalised(prep, x1), normalised(prep, x2)
                p1, p2 = pattern(s1), pattern(s2)
                m1, m2 = threshold(mask(s1)), threshold(mask(s2))
                triggered = x1 + (p1 - x1) * m1
                crossed = x1 + (p2 - x1) * m2
                x = torch.cat([triggered[:n_bd], crossed[n_bd:n_bd + n_cross], x1[n_bd + n_cross:]])
                y_mixed = torch.cat([torch.full_like(y[:n_bd], target), y[n_bd:]])
                loss = F.cross_entropy(classifier(normalised(prep, x)), y_mixed)
                loss = loss + LAMBDA_DIV * diversity(x1[:n_bd], x2[:n_bd], p1[:n_bd], p2[:n_bd])
                opt_c.zero_grad(set_to_none=True)
                opt_g.zero_grad(set_to_none=True)
                loss.backward()
                opt_c.step()
                opt_g.step()
            advance()
    state = {f"pattern.{k}": v for k, v in pattern.state_dict().items()}
    state.update({f"mask.{k}": v for k, v in mask.state_dict().items()})
    state.update({"prep.mean": prep.mean, "prep.std": prep.std})
    return state


def load_triggers(state: dict[str, torch.Tensor], data: ImageDataset, device: torch.device) -> Triggers:
    shape = net_shape(data.size, data.channels)
    pattern = TriggerNet(data.channels, data.channels, **shape)
    mask = TriggerNet(data.channels, 1, **shape)
    pattern.load_state_dict({k.removeprefix("pattern."): v for k, v in state.items() if k.startswith("pattern.")})
    mask.load_state_dict({k.removeprefix("mask."): v for k, v in state.items() if k.startswith("mask.")})
    prep = Preprocess(state["prep.mean"].to(device), state["prep.std"].to(device))
    return Triggers(pattern.to(device), mask.to(device), prep)


def default_epochs(n: int) -> int:
    return max(20, math.ceil(MIN_STEPS / max(1, n // min(BATCH, n))))


def dynamic(dataset: ImageDataset, rate: float = 0.003, target: int = 0, seed: int = 0, *,
            cover_rate: float = 0.003, epochs: int | None = None, mask_epochs: int = MASK_EPOCHS,
            surrogate: Surrogate | None = None) -> PoisonedSet:
    """Relabel ``floor(N * rate)`` images carrying their own generated trigger; covers carry another's."""
    check_target(dataset, target)
    epochs = default_epochs(len(dataset)) if epochs is None else epochs
    for value, name in ((epochs, "epochs"), (mask_epochs, "mask_epochs")):
        if not isinstance(value, int) or value < 1:
            raise ParameterError(name, value, "expected a whole number >= 1")
    surrogate = surrogate or Surrogate()
    index = choose_poison_indices(len(dataset), len(dataset), rate, seed)
    cover = choose_cover_indices(np.setdiff1d(np.arange(len(dataset)), index), len(dataset), cover_rate, seed)
    settings = {"target": target, "epochs": epochs, "mask_epochs": mask_epochs}
    state = surrogate.cached("dynamic", dataset, seed, settings,
                             lambda: train_triggers(dataset, target, seed, surrogate, epochs, mask_epochs))
    triggers = load_triggers(state, dataset, surrogate.torch_device)
    images, labels = dataset.images.clone(), dataset.labels.clone()
    if len(index):
        rows = torch.from_numpy(index)
        images[rows] = triggers.apply(dataset.images[rows])
    if len(cover):
        rows = torch.from_numpy(cover)
        donors = derived_rng(seed, "dynamic-cross").choice(len(dataset), size=len(cover))
        donors = np.where(donors == cover, (donors + 1) % len(dataset), donors)  # never its own trigger
        images[rows] = triggers.apply(dataset.images[rows], dataset.images[torch.from_numpy(donors)])
    params = {"rate": rate, "cover_rate": cover_rate, "epochs": epochs, "mask_epochs": mask_epochs,
              "mask_density": MASK_DENSITY, "surrogate_arch": surrogate.arch,
              **net_shape(dataset.size, dataset.channels)}
    return PoisonedSet(
        dataset=rebuild(dataset, images, dirty_labels(dataset, labels, index, target, False)),
        poison_indices=index, target=target, attack="dynamic", params=params, cover_indices=cover, seed=seed,
        test_trigger=triggers.apply)
