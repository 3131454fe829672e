"""Data-parallel runs under ``torchrun``: PyTorch's own launcher and process groups, nothing of ours.

``torchrun --nproc-per-node N -m sanitize ct ...`` (or ``asset``, ``scan``) starts N processes
(ranks) that all read the same data and draw the same seeded batch plans. What is shared out is
:func:`sanitize.nn.engine.train_supervised`, CT's confusion training and
:func:`sanitize.nn.engine.infer`; every other computation runs in full on every rank, on the
same inputs, and so gives the same result there. Every training batch is cut into N contiguous
shards, one per rank; the model is wrapped in :class:`~torch.nn.parallel.DistributedDataParallel`,
which averages the gradients, and each rank scales its loss so that the average is the gradient
of the whole batch's loss (shards may differ in size by one). Per-sample passes (losses, scores,
features) give each rank a contiguous part of the rows and gather the parts in rank order, so
every rank holds the same full result and reaches the same decision; rank 0 alone writes.

On CUDA batch normalisation is synchronised across ranks (``SyncBatchNorm``), so a batch is
normalised by the statistics of the whole batch, as in a single-process run, and the result
equals it up to floating-point noise. PyTorch synchronises batch normalisation on GPUs only: on
the CPU (the gloo backend) each rank normalises by its own shard, and the run is close to, not
equal to, a single-process one (the tolerance is measured in the tests).

Random draws for augmentation are made for the whole batch from the generator every rank shares,
and each rank applies its slice, so the generators stay in step and the batch plans agree.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from ..exits import launched


@dataclass(frozen=True)
class World:
    """This process's place in the run: rank ``rank`` of ``size`` (1: a plain single-process run)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """The rank that writes outputs and prints."""
        return self.rank == 0

    @property
    def parallel(self) -> bool:
        return self.size > 1

    def shard(self, n: int) -> slice:
        """This rank's contiguous part of ``n`` rows (the first ``n % size`` ranks get one more)."""
        base, extra = divmod(n, self.size)
        start = self.rank * base + min(self.rank, extra)
        return slice(start, start + base + (self.rank < extra))

    def local(self, batch: torch.Tensor) -> torch.Tensor:
        """This rank's shard of ``batch`` (the whole batch in a single-process run)."""
        return batch[self.shard(len(batch))] if self.parallel else batch


def current() -> World:
    """The running process group's view of this process (single process when none is running)."""
    if not (dist.is_available() and dist.is_initialized()):
        return World()
    return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))


def start(device: torch.device) -> World:
    """Join the process group ``torchrun`` describes (NCCL for CUDA, gloo for the CPU); a no-op
    when the process was not launched as one of several or the group already exists."""
    if launched() and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return current()


def local_device(device: torch.device) -> torch.device:
    """``cuda`` means this rank's own GPU (``LOCAL_RANK``) in a parallel run."""
    world = current()
    if device.type == "cuda" and device.index is None and world.parallel:
        return torch.device("cuda", world.local_rank)
    return device


def data_parallel(model: nn.Module) -> nn.Module:
    """``model`` wrapped for a data-parallel run (the model itself when there is one process).

    The wrapper shares the model's parameters: training through it trains ``model``. On CUDA the
    batch-normalisation layers are converted to synchronised ones first (in place).
    """
    world = current()
    if not world.parallel:
        return model
    device = next(model.parameters()).device
    if device.type == "cuda":
        nn.SyncBatchNorm.convert_sync_batchnorm(model)
        return nn.parallel.DistributedDataParallel(model, device_ids=[device.index])
    return nn.parallel.DistributedDataParallel(model)


def loss_scale(local: int, total: int) -> float:
    """The factor that makes the ranks' averaged gradients the gradient of the whole batch's mean
    loss, when this rank's mean is over ``local`` of the batch's ``total`` samples."""
    return local * current().size / max(1, total)


def gather_rows(part: torch.Tensor, total: int) -> torch.Tensor:
    """Every rank's ``part`` (its :meth:`World.shard` of ``total`` rows), concatenated in rank order
    on every rank."""
    world = current()
    if not world.parallel:
        return part
    sizes = [World(r, world.size).shard(total) for r in range(world.size)]
    width = max(s.stop - s.start for s in sizes)
    padded = part.new_zeros((width, *part.shape[1:]))
    padded[: len(part)] = part
    pieces = [torch.empty_like(padded) for _ in range(world.size)]
    dist.all_gather(pieces, padded.contiguous())
    return torch.cat([piece[: s.stop - s.start] for piece, s in zip(pieces, sizes, strict=True)])


def everyone(flag: bool) -> bool:
    """Whether ``flag`` holds on every rank: a decision all ranks must take the same way (whether a
    cached model can be loaded: a rank that trains while another loads would wait forever)."""
    world = current()
    if not world.parallel:
        return flag
    flags: list[object] = [None] * world.size
    dist.all_gather_object(flags, bool(flag))
    return all(flags)


def barrier() -> None:
    if current().parallel:
        dist.barrier()
