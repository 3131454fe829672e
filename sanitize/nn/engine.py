"""GPU-resident training engine shared by the detectors.

In the spirit of airbench: the dataset already lives on the device as uint8, so a batch is an
index into it, converted to float, normalised and (optionally) flipped and randomly cropped on
the device. There is no DataLoader, no image copy per step and no worker processes; the only
per-step host-to-device copies are the augmentation draws, made asynchronous from pinned memory.
On CUDA the forward/backward runs under bf16 autocast with channels-last memory; on the CPU it
runs in float32 and is deterministic for a given seed.

Index permutations come from a CPU :class:`torch.Generator`, so a seed selects the same batches
on every device.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .distributed import current, data_parallel, gather_rows, loss_scale
from .models import Classifier
from .samples import Samples, prefetched

Part = tuple[int, slice] | None  # (samples in the whole batch, this rank's slice of it)


@dataclass
class Preprocess:
    """uint8 -> normalised float on the device, with optional flip + crop augmentation."""

    mean: torch.Tensor  # 1 x C x 1 x 1
    std: torch.Tensor
    channels_last: bool = False

    @classmethod
    def fit(cls, images: torch.Tensor) -> Preprocess:
        """Per-channel statistics of the data being inspected (not of a fixed benchmark)."""
        sample = images[:: max(1, len(images) // 20000)].float().div_(255)
        mean = sample.mean(dim=(0, 2, 3), keepdim=True)
        std = sample.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-3)
        return cls(mean, std, channels_last=images.device.type == "cuda")

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float().div_(255).sub_(self.mean).div_(self.std)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x


def host_to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Copy a small CPU tensor to ``device`` without making the host wait for the GPU.

    A plain ``.to("cuda")`` from pageable memory synchronises the stream, so a copy made every
    step would stop the host from queueing the next step while the GPU runs this one. Pinned
    memory lets the copy be asynchronous (the caching host allocator keeps the buffer until the
    copy has run).
    """
    if device.type != "cuda":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


def flip_and_crop(x: torch.Tensor, generator: torch.Generator, pad: int, part: Part = None) -> torch.Tensor:
    """Random horizontal flip and random ``pad``-pixel translation (reflect padding), per sample.

    One gather for the whole batch; the random draws come from the CPU generator so that
    augmentation is seeded the same way as batching, and reach the device without a sync.
    ``part``: ``x`` is the slice ``part[1]`` of a batch of ``part[0]`` samples (a data-parallel
    rank's shard): the draws are made for the whole batch, so every rank's generator stays in step.
    """
    n, _, h, w = x.shape
    total, rows = part or (n, slice(None))
    flip = (torch.rand(total, generator=generator) < 0.5)[rows]
    x = torch.where(host_to_device(flip, x.device)[:, None, None, None], x.flip(-1), x)
    if pad <= 0:
        return x
    shifts = host_to_device(torch.randint(0, 2 * pad + 1, (2, total), generator=generator)[:, rows], x.device)
    padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    rows = (torch.arange(h, device=x.device)[None, :] + shifts[0][:, None])[:, None, :, None]
    cols = (torch.arange(w, device=x.device)[None, :] + shifts[1][:, None])[:, None, None, :]
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    chan = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
    return padded[batch, chan, rows, cols]


def random_rotation(x: torch.Tensor, generator: torch.Generator, degrees: float, fill: torch.Tensor,
                    part: Part = None) -> torch.Tensor:
    """Rotate each image by its own angle drawn uniformly from ``[-degrees, degrees]`` (nearest
    neighbour, corners filled with ``fill``), like torchvision's ``RandomRotation(degrees)`` on the
    undecoded image: the CT paper's GTSRB augmentation (traffic signs must not be flipped).

    ``x`` is normalised, so ``fill`` is what a black pixel normalises to (1 x C x 1 x 1). ``part``:
    as for :func:`flip_and_crop`.
    """
    total, rows = part or (len(x), slice(None))
    angles = host_to_device(((torch.rand(total, generator=generator) * 2 - 1) * degrees * torch.pi / 180)[rows],
                            x.device)
    cos, sin = torch.cos(angles), torch.sin(angles)
    zero = torch.zeros_like(cos)
    theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1).to(x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x - fill, grid, mode="nearest", padding_mode="zeros", align_corners=False) + fill


# What a detector reports as its precision: training under bf16 autocast on CUDA, every read in float32.
PRECISION = {False: "float32", True: "bf16 autocast training, float32 scoring"}


def autocast(device: torch.device):
    """bf16 autocast on CUDA (no loss scaling needed), plain float32 elsewhere."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def full_precision(device: torch.device):
    """float32 where a decision is read, with TF32 matmuls off on CUDA (10-bit mantissa) for the block."""
    if device.type != "cuda":
        return nullcontext()
    return _no_tf32()


@contextmanager
def _no_tf32() -> Iterator[None]:
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def epoch_batches(n: int, batch_size: int, generator: torch.Generator, device: torch.device | None = None,
                  drop_last: bool = True) -> Iterator[torch.Tensor]:
    """Shuffled index batches covering ``n`` samples once.

    The permutation is drawn on the CPU (same seed, same batches on every device) and moved to
    ``device`` once per epoch, so steps do not each wait for a host-to-device copy.
    """
    order = torch.randperm(n, generator=generator)
    if device is not None:
        order = host_to_device(order, device)
    stop = n - n % batch_size if drop_last and n >= batch_size else n
    for start in range(0, stop, batch_size):
        yield order[start:start + batch_size]


def planned_batches(n: int, batch_size: int, count: int, generator: torch.Generator,
                    device: torch.device) -> torch.Tensor:
    """``count`` shuffled index batches (``count x batch_size``), fresh permutation per pass.

    For step-based loops: the whole plan is drawn up front and sent to the device in one copy.
    """
    batch_size = min(batch_size, n)
    per_pass = n // batch_size
    passes = -(-count // per_pass)
    plan = torch.cat([torch.randperm(n, generator=generator)[: per_pass * batch_size] for _ in range(passes)])
    return plan[: count * batch_size].view(count, batch_size).to(device)


def stratified_split(labels: torch.Tensor, num_classes: int, fraction: float, generator: torch.Generator,
                     min_kept: int = 0, groups: np.ndarray | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(kept, held) sorted CPU indices: ``round(fraction * n_c)`` random samples of each class held.

    A class with fewer than 4 samples holds none (a held-out estimate from one or two samples is
    noise, and the kept part must still see the class); ``min_kept`` caps what a class may give.
    One permutation is drawn per class, whatever it gives, so the random stream after the split
    does not depend on the class sizes. With ``groups`` (an id per sample), a group goes to one
    side whole: groups are taken in the order their first member comes in the permutation until
    the class holds its share (one group may take it past by less than its size), so that no
    held sample has a near twin among the kept ones; all groups single, the split is the same.
    """
    labels = labels.cpu()
    held = []
    for c in range(num_classes):
        members = torch.nonzero(labels == c).flatten()
        take = min(int(round(fraction * len(members))), len(members) - min_kept) if len(members) >= 4 else 0
        order = members[torch.randperm(len(members), generator=generator)]
        held.append(order[:take] if groups is None else _whole_groups(order, groups, take,
                                                                       len(members) - min_kept))
    held_idx = torch.cat(held).sort().values if held else torch.zeros(0, dtype=torch.long)
    mask = torch.ones(len(labels), dtype=torch.bool)
    mask[held_idx] = False
    return torch.nonzero(mask).flatten(), held_idx


def _whole_groups(order: torch.Tensor, groups: np.ndarray, take: int, most: int) -> torch.Tensor:
    """Members of ``order`` taken a whole group at a time, in order, until ``take`` are held
    (never more than ``most``; a group that would pass it is skipped)."""
    ids = order.tolist()
    by_group: dict[int, list[int]] = {}
    for i in ids:  # each group's members, in the order they come
        by_group.setdefault(int(groups[i]), []).append(i)
    chosen: list[int] = []
    for members in by_group.values():  # groups in the order of their first member
        if len(chosen) >= take:
            break
        if len(chosen) + len(members) <= most:
            chosen.extend(members)
    return torch.tensor(chosen, dtype=torch.long)


def make_sgd(model: nn.Module, lr: float, momentum: float, weight_decay: float,
             nesterov: bool = False) -> torch.optim.SGD:
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay,
                           nesterov=nesterov and momentum > 0)


@dataclass
class TrainSpec:
    """One supervised training run: how many epochs, batch size and SGD settings."""

    epochs: int
    batch_size: int
    lr: float
    momentum: float = 0.9
    weight_decay: float = 1e-4
    augment: bool = False
    lr_schedule: str = "constant"  # or "multistep" / "onecycle", see lr_factor
    nesterov: bool = False
    crop_pad: int = 4
    augmentation: str = "flip-crop"  # with ``augment``: "flip-crop" or "rotate" (random_rotation)
    rotation_degrees: float = 15.0
    milestones: tuple[float, ...] = (0.5, 0.75)  # "multistep": x0.1 at each fraction of training


def train_supervised(model: Classifier, images: torch.Tensor | Samples, labels: torch.Tensor,
                     spec: TrainSpec, prep: Preprocess, generator: torch.Generator,
                     on_epoch: Callable[[], None] | None = None) -> Classifier:
    """Plain supervised SGD on ``images``/``labels``: device-resident, or streamed :class:`Samples`
    (the next batch gathered while this one trains; the same batches either way). Under
    ``torchrun`` each rank trains on its shard of every batch (:mod:`sanitize.nn.distributed`)."""
    device = images.device
    world = current()
    net = data_parallel(model)
    net.train()
    opt = make_sgd(model, spec.lr, spec.momentum, spec.weight_decay, spec.nesterov)
    n = len(labels)
    batch_size = min(spec.batch_size, n)  # every batch has this many samples (the last partial one is dropped)
    part = (batch_size, world.shard(batch_size)) if world.parallel else None  # augmentation draws for all of it
    steps_per_epoch = max(1, n // batch_size)
    total = steps_per_epoch * spec.epochs
    step = 0
    for _ in range(spec.epochs):
        batches = (world.local(full) for full in epoch_batches(n, batch_size, generator, device))
        for idx, batch in prefetched(images, batches):
            x = prep(batch)
            if spec.augment:
                x = augmented(x, spec, prep, generator, part)
            if spec.lr_schedule != "constant":
                for group in opt.param_groups:
                    group["lr"] = spec.lr * lr_factor(spec.lr_schedule, step, total, milestones=spec.milestones)
            with autocast(device):
                loss = F.cross_entropy(net(x).float(), labels[idx])
            if world.parallel:
                loss = loss * loss_scale(len(idx), batch_size)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
        if on_epoch:
            on_epoch()
    return model


def augmented(x: torch.Tensor, spec: TrainSpec, prep: Preprocess, generator: torch.Generator,
              part: Part = None) -> torch.Tensor:
    """The training batch ``x`` (normalised) under ``spec``'s augmentation (``part``: see
    :func:`flip_and_crop`)."""
    if spec.augmentation == "rotate":
        black = prep(torch.zeros((1, x.shape[1], 1, 1), dtype=torch.uint8, device=x.device))
        return random_rotation(x, generator, spec.rotation_degrees, black, part)
    if spec.augmentation == "flip-crop":
        return flip_and_crop(x, generator, spec.crop_pad, part)
    raise ValueError(f"unknown augmentation {spec.augmentation!r}")


def lr_factor(schedule: str, step: int, total: int, warmup: float = 0.15,
              milestones: tuple[float, ...] = (0.5, 0.75)) -> float:
    """Learning-rate multiplier at ``step`` of ``total``.

    ``multistep``: x0.1 at each milestone fraction of training (the CT paper's base models: 50 %
    and 75 % for CIFAR-10, 30 % and 60 % for GTSRB).
    ``onecycle``: linear warm-up over the first ``warmup`` fraction, then linear decay to zero.
    """
    if schedule == "multistep":
        return 0.1 ** sum(step >= m * total for m in milestones)
    if schedule == "onecycle":
        peak = max(1, int(total * warmup))
        if step < peak:
            return (step + 1) / peak
        return max(0.0, (total - step) / max(1, total - peak))
    raise ValueError(f"unknown lr schedule {schedule!r}")


@torch.no_grad()
def infer(model: Classifier, images: torch.Tensor | Samples, prep: Preprocess, batch_size: int = 1024,
          features: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Logits and optionally penultimate features for every image, in eval mode, in float32.

    Detectors read their decisions from these (distillation losses, class statistics, scores), so
    they are computed at full precision on every device: bf16 keeps 8 bits of mantissa, coarser
    than the loss differences the decisions rest on. Training runs under bf16 autocast. Under
    ``torchrun`` each rank reads its part of the rows and every rank gets all of them.
    """
    model.eval()
    world = current()
    rows = world.shard(len(images)) if world.parallel else slice(0, len(images))
    logits_out, feats_out = [], []
    slices = (slice(start, min(start + batch_size, rows.stop)) for start in range(rows.start, rows.stop, batch_size))
    for _, batch in prefetched(images, slices):
        x = prep(batch)
        with full_precision(images.device):
            feats, logits = model.features_and_logits(x)
        logits_out.append(logits.float())
        if features:
            feats_out.append(feats.float())
    logits = torch.cat(logits_out) if logits_out else torch.empty(0)
    feats = torch.cat(feats_out) if features else None
    if world.parallel:
        logits = gather_rows(logits, len(images))
        feats = gather_rows(feats, len(images)) if features else None
    return logits, feats


def global_pool(model: nn.Module) -> nn.Module | None:
    """The trunk's last global average pool (its input is the last activation map), if it has one.

    Architectures that pool with a function call instead of a module (torchvision's MobileNetV2
    and DenseNet-121) have none; their map cannot be read without changing the model.
    """
    trunk = getattr(model, "trunk", model)
    pools = [m for m in trunk.modules() if isinstance(m, nn.AdaptiveAvgPool2d)]
    return pools[-1] if pools else None


@torch.no_grad()
def pooled_map(model: Classifier, images: torch.Tensor, prep: Preprocess, batch_size: int = 256) -> torch.Tensor:
    """The last activation map, before global average pooling, flattened (N x C*H*W, float32, CPU).

    Pooling averages a small trigger's few active positions with the whole image; the map keeps
    them as a large change at a few coordinates, which clustering and spectral tests can see.
    Read with a forward hook on :func:`global_pool` (the model must have one), in eval mode.
    """
    pool = global_pool(model)
    if pool is None:
        raise ValueError("the model has no global-pooling module")
    captured: list[torch.Tensor] = []
    handle = pool.register_forward_hook(lambda _m, inputs, _o: captured.append(inputs[0].float().flatten(1).cpu()))
    model.eval()
    try:
        for start in range(0, len(images), batch_size):
            with full_precision(images.device):
                model.trunk(prep(images[start:start + batch_size]))
    finally:
        handle.remove()
    return torch.cat(captured) if captured else torch.empty(0)


def steps_per_epoch(n: int, batch_size: int) -> int:
    return max(1, n // min(batch_size, n))
