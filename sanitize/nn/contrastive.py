"""Self-supervised encoders: SimCLR (Chen et al., ICML 2020) on unlabelled images.

ASSET's self-supervised paradigm needs a representation of the inspected set learnt without
labels. SimCLR is the standard contrastive objective: two random views of each image, a
projection head, and the NT-Xent loss (normalised-temperature cross-entropy) that pulls the two
views of an image together and pushes the other images of the batch away.

The views are drawn on the device for the whole batch at once (each image its own random
parameters): a resized crop through an affine sampling grid, a horizontal flip from 32 px up
(a flipped digit is another symbol), brightness and contrast jitter, and for colour images
saturation jitter and random grayscale. torchvision's transforms draw one set of parameters per
call, so applying them image by image would cost a Python loop per sample on every step.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from .engine import Preprocess, autocast, epoch_batches, host_to_device
from .models import Classifier, build_model


@dataclass(frozen=True)
class ContrastiveSpec:
    """One SimCLR run. ``min_steps`` sets a floor on optimiser steps for small sets."""

    epochs: int = 100
    min_steps: int = 300
    batch_size: int = 256
    lr: float = 1e-3  # Adam
    weight_decay: float = 1e-6
    temperature: float = 0.5  # SimCLR's CIFAR-10 setting
    projection_dim: int = 64
    # Area fraction of the random resized crop. SimCLR's (0.08, 1) teaches the encoder to ignore
    # whatever a crop can remove, a corner trigger included: on digits with a 5 % BadNet the
    # concentration step then selected almost no poison from its features; from 0.8 up it selects
    # as much as from a supervised extractor's (docs/asset.md, "Learning paradigms").
    crop_scale: tuple[float, float] = (0.8, 1.0)

    def planned_epochs(self, n: int) -> int:
        per_epoch = max(1, n // min(self.batch_size, n))
        return max(self.epochs, math.ceil(self.min_steps / per_epoch))


def simclr_views(images: torch.Tensor, prep: Preprocess, generator: torch.Generator,
                 crop_scale: tuple[float, float] = (0.8, 1.0)) -> torch.Tensor:
    """One random view of each uint8 image, normalised by ``prep``'s statistics."""
    x = images.float().div(255.0)
    n, c, h, w = x.shape
    device = x.device

    def uniform(low: float, high: float, size: int = n) -> torch.Tensor:  # CPU draws: seeded alike on every device
        return host_to_device(torch.empty(size).uniform_(low, high, generator=generator), device)

    area = uniform(*crop_scale)
    log_ratio = uniform(math.log(3 / 4), math.log(4 / 3))
    sx = torch.sqrt(area * torch.exp(log_ratio)).clamp(max=1.0)
    sy = torch.sqrt(area / torch.exp(log_ratio)).clamp(max=1.0)
    tx, ty = (1 - sx) * uniform(-1, 1), (1 - sy) * uniform(-1, 1)
    flip = torch.where(uniform(0, 1) < 0.5, -1.0, 1.0) if min(h, w) >= 32 else torch.ones(n, device=device)
    theta = torch.zeros(n, 2, 3, device=device)
    theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = sx * flip, tx, sy, ty
    grid = F.affine_grid(theta, [n, c, h, w], align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    jitter = uniform(0, 1) < 0.8  # SimCLR applies colour jitter to 80 % of the views
    brightness = torch.where(jitter, uniform(0.6, 1.4), 1.0).view(n, 1, 1, 1)
    contrast = torch.where(jitter, uniform(0.6, 1.4), 1.0).view(n, 1, 1, 1)
    x = x * brightness
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * contrast + mean
    if c == 3:
        gray = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)
        saturation = torch.where(jitter, uniform(0.6, 1.4), 1.0).view(n, 1, 1, 1)
        to_gray = (uniform(0, 1) < 0.2).view(n, 1, 1, 1)
        x = torch.where(to_gray, gray.expand_as(x), (x - gray) * saturation + gray)
    x = x.clamp(0, 1)
    return (x - prep.mean) / prep.std


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's loss: each view must pick its partner out of the 2N - 1 other views of the batch."""
    z = F.normalize(torch.cat([z1, z2]).float(), dim=1)
    sim = z @ z.T / temperature
    sim.fill_diagonal_(float("-inf"))
    n = len(z1)
    partner = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(sim, partner)


def simclr_encoder(arch: str, channels: int, side: int, projection_dim: int, device: torch.device) -> Classifier:
    """A ``Classifier`` whose head is SimCLR's projection MLP; its trunk is the encoder kept."""
    model = build_model(arch, projection_dim, channels, side)
    d = model.feature_dim
    model.head = nn.Sequential(nn.Linear(d, d), nn.ReLU(inplace=True), nn.Linear(d, projection_dim))
    return model.to(device)


def train_simclr(images: torch.Tensor, *, arch: str, spec: ContrastiveSpec, prep: Preprocess,
                 generator: torch.Generator, on_epoch: Callable[[], None] | None = None) -> Classifier:
    """A SimCLR encoder trained on ``images`` (uint8, device-resident). Labels are never read."""
    device = images.device
    model = simclr_encoder(arch, int(images.shape[1]), int(min(images.shape[-2:])), spec.projection_dim, device)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=spec.lr, weight_decay=spec.weight_decay)
    n = len(images)
    batch = min(spec.batch_size, n)
    for _ in range(spec.planned_epochs(n)):
        for idx in epoch_batches(n, batch, generator, device):
            if len(idx) < 2:
                continue
            x = images[idx]
            v1 = simclr_views(x, prep, generator, spec.crop_scale)
            v2 = simclr_views(x, prep, generator, spec.crop_scale)
            with autocast(device):
                loss = nt_xent(model(v1), model(v2), spec.temperature)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if on_epoch:
            on_epoch()
    model.eval()
    return model
