"""The offset loop: the min step on the reserve, the max step on the selected samples."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn import functional as F

from ...nn.engine import (
    autocast,
    full_precision,
    host_to_device,
    planned_batches,
)
from .schedules import AssetSchedule
from .selection import global_selection, select_poison_rich

Objective = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (outputs, labels) -> per-sample loss

# ---------------------------------------------------------------------------------------------
# The offset loop


@contextmanager
def batch_norm_without_update(model: nn.Module) -> Iterator[None]:
    """Normalisation layers normalise with batch statistics but leave their running averages alone.

    (``momentum = 0`` keeps the running estimate unchanged.)
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._NormBase) and m.training]
    saved = [m.momentum for m in norms]
    for m in norms:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, momentum in zip(norms, saved, strict=True):
            m.momentum = momentum


@contextmanager
def frozen_norm_stats(model: nn.Module) -> Iterator[None]:
    """Normalisation layers in eval mode: use (and keep) their running statistics.

    In the offset loop these statistics come from reserve batches (the min step runs in train
    mode), i.e. from clean data. The max step runs on a handful of poison-rich samples; in
    train mode their batch statistics would both normalise the step and leak into the running
    averages used for scoring.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._NormBase) and m.training]
    for m in norms:
        m.eval()
    try:
        yield
    finally:
        for m in norms:
            m.train()


def logit_variance(logits: torch.Tensor) -> torch.Tensor:
    """``l_min``: mean over samples of the variance of the logits across classes."""
    return logits.float().var(dim=1).mean()


@dataclass
class OffsetLog:
    steps: int = 0
    empty_selections: int = 0
    selected: int = 0
    selected_per_step: list[int] = field(default_factory=list)
    global_selected: int | None = None  # "global": how many samples of D (canaries excluded) were selected


def offset_loop(offset: nn.Module, data_x: torch.Tensor, data_y: torch.Tensor, reserve_x: torch.Tensor,
                d_feats: torch.Tensor, r_feats: torch.Tensor, schedule: AssetSchedule, prep: Callable,
                gen: torch.Generator, advance: Callable[[], None], bn_mode: str = "batch-frozen",
                canaries: int = 0, objective: Objective | None = None) -> OffsetLog:
    """Alternate ``l_min`` on the reserve and ``l_max`` on the concentrated part of each D batch.

    Batch norm in the max step (``bn_mode``):

    * ``batch-frozen`` (default): normalise the selected samples with their own batch statistics,
      as the demo does, but leave the running averages, which the min steps fill from reserve
      batches, untouched. Scoring then uses clean statistics for every sample.
    * ``reserve``: normalise with the running (reserve) statistics. This lets the max step pass a
      constant shift straight to the logits, and it learns "lower the label's logit for
      everything" instead of the trigger (measured in ``docs/asset.md``).
    * ``batch``: the demo: batch statistics that also update the running averages, and scoring
      in train mode.

    The last ``canaries`` samples of D are reserve canaries (:func:`with_canaries`); the
    ``global`` selection never picks them (see :func:`global_picks`). ``objective``: the
    per-sample loss the max step raises (cross-entropy under the labels unless the paradigm
    says otherwise, :mod:`.paradigms`).
    """
    objective = objective or cross_entropy
    device = data_x.device
    steps = schedule.offset_steps(len(data_y))
    per_batch = schedule.selection != "global"
    d_plan = planned_batches(len(data_y), schedule.batch_size, steps, gen, device) if per_batch else None
    r_plan = planned_batches(len(reserve_x), schedule.batch_size, steps, gen, device)
    if per_batch:
        picks, n_selected = batch_picks(d_plan, r_plan, d_feats, r_feats, schedule, gen), None
    else:
        picks, n_selected = global_picks(d_feats, r_feats, schedule, steps, gen, canaries)
    opt_min = torch.optim.Adam(offset.parameters(), lr=schedule.lr)
    opt_max = torch.optim.Adam(offset.parameters(), lr=schedule.lr)
    log = OffsetLog(global_selected=n_selected)
    offset.train()
    for step in range(steps):
        with autocast(device):
            loss_min = logit_variance(offset(prep(reserve_x[r_plan[step]])))
        opt_min.zero_grad(set_to_none=True)
        loss_min.backward()
        opt_min.step()

        sel = picks(step)
        log.steps += 1
        log.selected_per_step.append(len(sel))
        if len(sel) == 0:  # nothing stands out: no max step (the demo crashes)
            log.empty_selections += 1
            advance()
            continue
        log.selected += len(sel)
        with max_step_norm(offset, bn_mode, len(sel)), autocast(device):
            loss_max = -objective(offset(prep(data_x[sel])), data_y[sel]).mean()
        opt_max.zero_grad(set_to_none=True)
        loss_max.backward()
        opt_max.step()
        advance()
    return log


def batch_picks(d_plan: torch.Tensor, r_plan: torch.Tensor, d_feats: torch.Tensor, r_feats: torch.Tensor,
                schedule: AssetSchedule, gen: torch.Generator) -> Callable[[int], torch.Tensor]:
    """The paper's scheme ("ao", "crossfit"): step i's max step takes what the concentration
    step selects from D batch ``d_plan[i]`` against reserve batch ``r_plan[i]``."""
    def pick(step: int) -> torch.Tensor:
        d_idx = d_plan[step]
        chosen = select_poison_rich(d_feats[d_idx], r_feats[r_plan[step]], schedule, gen)
        return d_idx[torch.as_tensor(chosen, dtype=torch.long, device=d_idx.device)]
    return pick


def global_picks(d_feats: torch.Tensor, r_feats: torch.Tensor, schedule: AssetSchedule, steps: int,
                 gen: torch.Generator, canaries: int = 0) -> tuple[Callable[[int], torch.Tensor], int]:
    """The ``global`` scheme: select once from all of D (:func:`global_selection`), then every
    max step takes ``global_max_batch`` samples of that selection (a fresh permutation per pass).
    Returns the per-step picker and the selection's size.

    Why (measured in ``docs/asset.md``): the selection holds poison and some clean samples. A
    max step on such a mixture keeps pushing what its members share, the trigger, so every
    poison image moves, selected or not, while each clean member is one sample among many.
    Drawn from D's batches instead, the same selection reached the max step two or three
    samples at a time.

    The last ``canaries`` rows of ``d_feats`` are canaries and are never picked. A pick takes
    part in many max steps, so a picked canary would be pushed as far as the poison and lift
    the cut (:func:`loss_threshold`) over them. The canaries stand for the clean samples the
    selection leaves out. The clean samples it takes are the ones that beat the reserve's best held-out
    score by the margin: few, but each is pushed in many steps, which is what makes ``global``
    raise false alarms on clean sets (``docs/asset.md``).
    """
    device = d_feats.device
    members = torch.nonzero(global_selection(d_feats, r_feats, schedule, gen)).flatten()
    members = members[members < len(d_feats) - canaries]
    if len(members) == 0:
        return (lambda _step: torch.zeros(0, dtype=torch.long, device=device)), 0
    plan = host_to_device(members, device)[planned_batches(len(members), schedule.global_max_batch, steps, gen,
                                                           device)]
    return (lambda step: plan[step]), len(members)


@contextmanager
def _nullctx() -> Iterator[None]:
    yield


def max_step_norm(model: nn.Module, bn_mode: str, n_selected: int) -> AbstractContextManager[None]:
    """The normalisation context of one max step on ``n_selected`` samples (see :func:`offset_loop`).

    One sample has no batch statistics in a 1-d batch norm (train-mode ``BatchNorm1d``, as in the
    EMBER MLP, refuses it), so such a step uses the running (reserve) statistics. A 2-d batch norm
    normalises a single image over its pixels and keeps the chosen mode.
    """
    if n_selected < 2 and any(isinstance(m, nn.BatchNorm1d) and m.training for m in model.modules()):
        return frozen_norm_stats(model)
    return {"reserve": frozen_norm_stats, "batch-frozen": batch_norm_without_update}.get(
        bn_mode, lambda _: _nullctx())(model)


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-sample cross-entropy under the dataset label, in float32 (the supervised objective)."""
    return F.cross_entropy(logits.float(), labels, reduction="none")


@torch.no_grad()
def per_sample_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, prep: Callable,
                    batch_size: int = 1024, objective: Objective | None = None) -> torch.Tensor:
    """Cross-entropy of every sample under its label (or the paradigm's ``objective``), in eval
    mode (running BN statistics), in float32.

    The demo scores its clean samples this way but its poison samples in train mode (it sets
    eval mode between the two loops), which a detector that does not know the truth cannot do.
    """
    model.eval()
    out = []
    for start in range(0, len(y), batch_size):
        with full_precision(x.device):
            logits = model(prep(x[start:start + batch_size])).float()
        out.append((objective or cross_entropy)(logits, y[start:start + batch_size]))
    model.eval()
    return torch.cat(out) if out else torch.empty(0)
