"""Confusion training and poison distillation: the rounds that leave poison fitted and clean samples not."""

from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F

from ...data.images import ImageDataset
from ...nn.distributed import current, data_parallel, loss_scale
from ...nn.engine import (
    Preprocess,
    autocast,
    make_sgd,
    planned_batches,
    stratified_split,
)
from ...nn.models import Classifier
from ...nn.samples import concat_rows
from .schedules import CTSchedule, RoundSpec


def class_frequency_weights(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """The reference's ``sqrt(count_c / n + 0.001)``; inspected samples are weighted by 1/freq."""
    counts = torch.bincount(labels, minlength=num_classes).float()
    return torch.sqrt(counts / max(1, len(labels)) + 0.001)


def confusion_train(model: Classifier, data: ImageDataset, subset: torch.Tensor, reserve: ImageDataset,
                    base_pred: torch.Tensor, spec: RoundSpec, schedule: CTSchedule, freq: torch.Tensor,
                    prep: Preprocess, gen: torch.Generator, advance) -> Classifier:
    """Fit ``reserve`` under shifted base predictions while keeping ``subset`` of D fitted.

    The confusion label of a reserve sample is ``(base prediction + k) mod C`` with ``k`` cycling
    over ``1..C-1`` from step to step, so it is never the base model's own prediction.
    """
    device = data.device
    c = data.num_classes
    world = current()
    net = data_parallel(model)
    opt = make_sgd(model, spec.lr, schedule.confusion_momentum, schedule.weight_decay)
    steps = spec.steps_for(len(reserve), schedule.batch_size, schedule.min_confusion_steps)
    reserve_plan = planned_batches(len(reserve), schedule.batch_size, steps, gen, device)
    inspect_plan = planned_batches(len(subset), schedule.inspect_batch_size, -(-steps // spec.batch_factor),
                                   gen, device)
    net.train()
    for step in range(steps):
        r_full = reserve_plan[step]
        r_idx = world.local(r_full)
        shift = 1 + step % max(1, c - 1)
        targets_conf = (base_pred[r_idx] + shift) % c
        x = reserve.images[r_idx]
        if step % spec.batch_factor == 0:
            d_full = subset[inspect_plan[step // spec.batch_factor]]
            d_idx = world.local(d_full)
            x = torch.cat([x, data.images[d_idx]])
        with autocast(device):
            logits = net(prep(x)).float()
        loss_conf = F.cross_entropy(logits[: len(r_idx)], targets_conf)
        if world.parallel:
            loss_conf = loss_conf * loss_scale(len(r_idx), len(r_full))
        if len(logits) > len(r_idx):
            d_labels = data.labels[d_idx]
            batch_weights = 1.0 / freq[data.labels[d_full]]
            weights = world.local(batch_weights)
            losses = F.cross_entropy(logits[len(r_idx):], d_labels, reduction="none")
            loss_insp = (losses * weights).sum() / weights.sum()
            if world.parallel:  # this rank's share of the whole batch's weighted mean
                loss_insp = loss_insp * (weights.sum() * world.size / batch_weights.sum())
            loss = ((spec.lam - 1) * loss_conf + loss_insp) / spec.lam
        else:
            loss = loss_conf
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        advance()
    return model


def fewest_samples(keep_ratios: list[float]) -> int:
    """The fewest samples for which every distillation round keeps at least one (``int(keep * n) >= 1``).

    Below it a round distils D to nothing and the next one has nothing to train on; CT refuses
    such a set up front instead of failing mid-run.
    """
    n = 2
    while any(int(keep * n) < 1 for keep in keep_ratios):
        n += 1
    return n


def distill(losses: torch.Tensor, labels: torch.Tensor, num_classes: int, keep_ratio: float,
            topup_divisor: int | None) -> torch.Tensor:
    """Indices of the ``keep_ratio * N`` lowest-loss samples, each class topped up.

    Top-up guarantees every class keeps at least ``|class| // topup_divisor`` samples (its own
    lowest-loss ones), so the next round still sees every class.
    """
    n = len(losses)
    order = torch.argsort(losses, stable=True)
    keep = torch.zeros(n, dtype=torch.bool, device=losses.device)
    keep[order[: int(keep_ratio * n)]] = True
    if topup_divisor:
        for cls in range(num_classes):
            members = order[labels[order] == cls]
            keep[members[: len(members) // topup_divisor]] = True
    return torch.nonzero(keep).flatten()


def split_canaries(reserve, fraction: float, gen: torch.Generator, groups: np.ndarray | None = None):
    """Stratified split of a reserve (images or feature rows) into (confusion part, canaries or None).

    ``round(fraction * n_c)`` samples of each class with at least 4 become canaries; every class
    keeps at least two for confusion. ``groups`` (a clustered reserve's near twins,
    :attr:`sanitize.data.reserve_fit.ReserveFit.twin_groups`) keeps twins on one side, so that a
    canary has no twin among the images confusion trains on, as the data's images have none.
    """
    if fraction <= 0:
        return reserve, None
    kept, held = stratified_split(reserve.labels, reserve.num_classes, fraction, gen, min_kept=2, groups=groups)
    if len(held) == 0:
        return reserve, None
    return reserve.subset(kept), reserve.subset(held)


def with_canaries(data: ImageDataset, canaries: ImageDataset) -> ImageDataset:
    """``data`` followed by ``canaries`` under their true labels, as one tensor the loops index directly
    (as a view when ``data`` is streamed: the set is never copied whole)."""
    return ImageDataset(concat_rows(data.images, canaries.images), torch.cat([data.labels, canaries.labels]),
                        data.classes, data.paths + [f"canary:{p}" for p in canaries.paths], data.root,
                        list(data.notes))
