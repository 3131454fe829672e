"""Poison concentration and selection: which samples of a batch the max step pulls on."""

from __future__ import annotations

import copy
import math

import numpy as np
import torch
from statsmodels.stats.stattools import medcouple
from torch import nn
from torch.func import functional_call, stack_module_state
from torch.nn import functional as F

from ...nn.engine import (
    host_to_device,
    planned_batches,
)
from .schedules import AssetSchedule

# ---------------------------------------------------------------------------------------------
# Selection: Adjusted Outlyingness


def adjusted_outlyingness(scores: np.ndarray, sides: str = "upper") -> np.ndarray:
    """Adjusted Outlyingness of each score.

    Hubert & Van der Veeken's skew-adjusted boxplot: the whiskers are
    ``Q3 + 1.5 * exp(3 MC) * IQR`` and ``Q1 - 1.5 * exp(-4 MC) * IQR`` for a medcouple ``MC >= 0``,
    ``Q3 + 1.5 * exp(4 MC) * IQR`` and ``Q1 - 1.5 * exp(-3 MC) * IQR`` otherwise; AO is the distance
    from the median in units of (whisker - median) on the sample's side. ``sides="upper"`` (ours)
    keeps the upper side only, 0 at or below the median: poison is what the concentration MLP
    finds *more* D-like than the reserve, so a low score is never evidence of poison.
    ``"both"`` is the demo's rule, where a low outlier is selected too. A side with no spread
    gets AO 0.
    """
    s = np.asarray(scores, dtype=np.float64)
    if len(s) < 4:
        return np.zeros_like(s)
    med = float(np.median(s))
    q1, q3 = np.quantile(s, [0.25, 0.75])
    mc = float(medcouple(s))
    upper = q3 + 1.5 * math.exp((3.0 if mc >= 0 else 4.0) * mc) * (q3 - q1)
    lower = q1 - 1.5 * math.exp((-4.0 if mc >= 0 else -3.0) * mc) * (q3 - q1)
    ao = np.zeros_like(s)
    above = s > med
    if np.isfinite(upper) and upper > med:
        ao[above] = (s[above] - med) / (upper - med)
    if sides == "both" and np.isfinite(lower) and lower < med:
        ao[~above] = (med - s[~above]) / (med - lower)
    return ao


def select_outliers(scores: np.ndarray, cut: float, sides: str = "upper") -> np.ndarray:
    """Indices whose AO (``sides`` as in :func:`adjusted_outlyingness`) exceeds ``cut`` (possibly none)."""
    return np.flatnonzero(adjusted_outlyingness(scores, sides) > cut)


def crossfit_selection(d_scores: torch.Tensor, r_scores: torch.Tensor, d_fold: torch.Tensor, r_fold: torch.Tensor,
                       margin: float) -> np.ndarray:
    """Positions in the D batch whose held-out score clears every held-out reserve score of its fold.

    ``d_scores``/``r_scores`` come from :func:`crossfit_scores`: in fold k, D and reserve samples
    are scored by the same MLP, which saw neither. A clean D sample's score is then exchangeable
    with the reserve's, so it beats all m of them with probability 1/(m+1) (1/257 for a fold of a
    512-image reserve batch), however the scores are distributed; ``margin`` robust standard
    deviations (1.4826 MAD) of the reserve scores on top of their maximum make that rarer still
    (measured in ``docs/asset.md``). A fold without at least two reserve samples selects nothing.
    """
    chosen = torch.zeros(len(d_scores), dtype=torch.bool, device=d_scores.device)
    for k in (0, 1):
        ref = r_scores[r_fold == k]
        if len(ref) < 2:
            continue
        spread = 1.4826 * (ref - ref.median()).abs().median()
        chosen |= (d_fold == k) & (d_scores > ref.max() + margin * spread)
    return torch.nonzero(chosen).flatten().cpu().numpy()


# ---------------------------------------------------------------------------------------------
# Poison concentration


def concentration_mlp(in_dim: int, hidden: int) -> nn.Module:
    """feature -> hidden -> hidden -> 1 logit (the paper's two-hidden-layer MLP)."""
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                         nn.Linear(hidden, 1))


def concentration_scores(d_feats: torch.Tensor, r_feats: torch.Tensor, steps: int, lr: float,
                         hidden: int, on: str = "logit", loss: str = "bce") -> torch.Tensor:
    """Train a fresh MLP (D -> 1, reserve -> 0) on frozen features; its scores of the D batch.

    ``on="logit"`` returns the MLP's logit, ``"prob"`` its sigmoid (the demo). The sigmoid
    squeezes the upper tail, where poison sits, against 1, so a skew-adjusted boxplot finds few
    outliers there; the logit keeps the tail (measured in ``docs/asset.md``).

    ``loss="bce"`` (ours): one Adam step per iteration on the summed binary cross-entropy of the
    two halves, each weighing equally whatever their sizes. ``"mse"`` (the demo): two Adam
    optimisers, one stepping on the squared error of the D half's sigmoid against 1, then the other
    on the reserve half's against 0. The paper states BCE; the demo's code trains with MSE.
    """
    mlp = concentration_mlp(d_feats.shape[1], hidden).to(d_feats.device)
    ones = torch.ones(len(d_feats), device=d_feats.device)
    zeros = torch.zeros(len(r_feats), device=r_feats.device)
    if loss == "mse":
        opts = [torch.optim.Adam(mlp.parameters(), lr=lr) for _ in range(2)]
        halves = ((d_feats, ones), (r_feats, zeros))
        for _ in range(steps):
            for opt, (x, target) in zip(opts, halves, strict=True):
                step_loss = F.mse_loss(torch.sigmoid(mlp(x).squeeze(1)), target)
                opt.zero_grad(set_to_none=True)
                step_loss.backward()
                opt.step()
    else:
        opt = torch.optim.Adam(mlp.parameters(), lr=lr)
        for _ in range(steps):
            step_loss = (F.binary_cross_entropy_with_logits(mlp(d_feats).squeeze(1), ones)
                         + F.binary_cross_entropy_with_logits(mlp(r_feats).squeeze(1), zeros))
            opt.zero_grad(set_to_none=True)
            step_loss.backward()
            opt.step()
    with torch.no_grad():
        logits = mlp(d_feats).squeeze(1)
    return logits if on == "logit" else torch.sigmoid(logits)


def _fold_ensemble(in_dim: int, hidden: int, device: torch.device):
    """Two fresh concentration MLPs stacked as one ``vmap`` ensemble: (params, buffers, forward)."""
    members = [concentration_mlp(in_dim, hidden).to(device) for _ in range(2)]
    params, buffers = stack_module_state(members)
    skeleton = copy.deepcopy(members[0]).to("meta")

    def member_logits(p: dict, b: dict, inputs: torch.Tensor) -> torch.Tensor:
        return functional_call(skeleton, (p, b), (inputs,)).squeeze(-1)

    return params, buffers, torch.vmap(member_logits, in_dims=(0, 0, None))


def _fold_step(ensemble, params: dict, buffers: dict, opt: torch.optim.Optimizer, x: torch.Tensor,
               fold: torch.Tensor, is_d: torch.Tensor) -> None:
    """One Adam step of both members: member k fits D -> 1, reserve -> 0 on the samples of fold k,
    the D and reserve parts weighing equally whatever their sizes."""
    trains = (fold[None, :] == torch.arange(2, device=x.device)[:, None]).float()
    d_part, r_part = trains * is_d, trains * ~is_d
    weight = d_part / d_part.sum(1, keepdim=True).clamp_min(1) + r_part / r_part.sum(1, keepdim=True).clamp_min(1)
    losses = F.binary_cross_entropy_with_logits(ensemble(params, buffers, x), is_d.float().expand(2, -1),
                                                reduction="none")
    opt.zero_grad(set_to_none=True)
    (losses * weight).sum().backward()
    opt.step()


@torch.no_grad()
def _held_out_logits(ensemble, params: dict, buffers: dict, x: torch.Tensor, fold: torch.Tensor,
                     chunk: int = 8192) -> torch.Tensor:
    """Each sample's logit from the member that did not train on it (member ``1 - fold``)."""
    return torch.cat([ensemble(params, buffers, x[s:s + chunk]).gather(0, (1 - fold[s:s + chunk])[None]).squeeze(0)
                      for s in range(0, len(x), chunk)])


def _random_folds(n: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    return host_to_device(torch.randperm(n, generator=generator) % 2, device)


def crossfit_scores(d_feats: torch.Tensor, r_feats: torch.Tensor, steps: int, lr: float, hidden: int,
                    generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Held-out concentration logits of a D batch and a reserve batch, and each sample's fold (0/1).

    Both batches are split in random halves. Two fresh MLPs learn D -> 1, reserve -> 0 (BCE, both
    halves weighing equally, as in :func:`concentration_scores`), each on one fold, and each
    sample is scored by the MLP that did not train on it. A score the MLP did not fit to the
    sample's own membership label can be compared with the reserve's held-out scores
    (:func:`crossfit_selection`); in-sample scores cannot, since the MLP also memorises which
    clean samples were labelled D.

    The two MLPs train as one stacked ensemble (``torch.func.stack_module_state`` + ``vmap``):
    each member's gradient comes from its own loss only and Adam is elementwise, so this is two
    independent trainings in the kernel launches of one, at the FLOPs of one MLP on both batches.
    """
    device = d_feats.device
    nd, nr = len(d_feats), len(r_feats)
    d_fold, r_fold = _random_folds(nd, generator, device), _random_folds(nr, generator, device)
    x = torch.cat([d_feats, r_feats]).float()
    fold = torch.cat([d_fold, r_fold])
    is_d = torch.arange(nd + nr, device=device) < nd
    params, buffers, ensemble = _fold_ensemble(x.shape[1], hidden, device)
    opt = torch.optim.Adam(params.values(), lr=lr)
    for _ in range(steps):
        _fold_step(ensemble, params, buffers, opt, x, fold, is_d)
    held_out = _held_out_logits(ensemble, params, buffers, x, fold)
    return held_out[:nd], held_out[nd:], d_fold, r_fold


def global_crossfit_scores(d_feats: torch.Tensor, r_feats: torch.Tensor, schedule: AssetSchedule,
                           generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`crossfit_scores` over the whole inspected set and reserve instead of one batch pair.

    Each member trains on its half of all of D against its half of the reserve, in minibatches
    of ``schedule.batch_size`` from each side (``global_epochs`` passes over its half of D, at
    least ``global_min_steps`` steps), on features standardised with the reserve's mean and
    standard deviation. Every sample of D and of the reserve is then scored by the member that
    did not see it.

    Why (measured in ``docs/asset.md``): per batch, 1 % poison is about 5 images among 512, too
    few for an MLP trained on that batch alone to single out (within-batch held-out AUROC 0.77
    for a 1 % Blend on 10,000 CIFAR-10 images). Across the whole set the same poison is 50
    images per fold against a reserve that has none, and the held-out AUROC was 0.94.
    """
    device = d_feats.device
    nd, nr = len(d_feats), len(r_feats)
    mean, std = r_feats.float().mean(0), r_feats.float().std(0) + 1e-3
    d_x, r_x = (d_feats.float() - mean) / std, (r_feats.float() - mean) / std
    d_fold, r_fold = _random_folds(nd, generator, device), _random_folds(nr, generator, device)
    batch = min(schedule.batch_size, nd, nr)
    steps = max(schedule.global_min_steps, schedule.global_epochs * (nd // 2) // batch)
    d_plan = planned_batches(nd, batch, steps, generator, device)
    r_plan = planned_batches(nr, batch, steps, generator, device)
    is_d = torch.arange(2 * batch, device=device) < batch
    params, buffers, ensemble = _fold_ensemble(d_x.shape[1], schedule.mlp_hidden, device)
    opt = torch.optim.Adam(params.values(), lr=schedule.mlp_lr)
    for step in range(steps):
        d_idx, r_idx = d_plan[step], r_plan[step]
        _fold_step(ensemble, params, buffers, opt, torch.cat([d_x[d_idx], r_x[r_idx]]),
                   torch.cat([d_fold[d_idx], r_fold[r_idx]]), is_d)
    return (_held_out_logits(ensemble, params, buffers, d_x, d_fold),
            _held_out_logits(ensemble, params, buffers, r_x, r_fold), d_fold, r_fold)


def global_selection(d_feats: torch.Tensor, r_feats: torch.Tensor, schedule: AssetSchedule,
                     generator: torch.Generator) -> torch.Tensor:
    """A CPU boolean mask over D: the samples the ``global`` rule hands to max steps.

    The rule of :func:`crossfit_selection` (margin ``selection_margin``) on
    :func:`global_crossfit_scores`: in fold k, a clean D sample's held-out score is exchangeable
    with the fold's m held-out reserve scores, so it beats all of them with probability 1/(m+1),
    and the margin makes that rarer still. The *number* of clean samples that do so is not
    binomial: it hangs on one realised maximum, so its tail is geometric (mean about n_k/m).
    """
    d_scores, r_scores, d_fold, r_fold = global_crossfit_scores(d_feats, r_feats, schedule, generator)
    mask = torch.zeros(len(d_feats), dtype=torch.bool)
    mask[crossfit_selection(d_scores, r_scores, d_fold, r_fold, schedule.selection_margin)] = True
    return mask


def select_poison_rich(d_feats: torch.Tensor, r_feats: torch.Tensor, schedule: AssetSchedule,
                       generator: torch.Generator) -> np.ndarray:
    """Positions in a D batch for the max step: poison concentration, then the schedule's selection rule.

    ``"ao"``: the paper's, AO above ``ao_cut`` of the MLP's scores of the batch it trained on.
    ``"crossfit"``: held-out scores above the reserve's (:func:`crossfit_scores`,
    :func:`crossfit_selection`).
    """
    if schedule.selection == "crossfit":
        d_scores, r_scores, d_fold, r_fold = crossfit_scores(d_feats, r_feats, schedule.mlp_steps, schedule.mlp_lr,
                                                             schedule.mlp_hidden, generator)
        return crossfit_selection(d_scores, r_scores, d_fold, r_fold, schedule.selection_margin)
    scores = concentration_scores(d_feats, r_feats, schedule.mlp_steps, schedule.mlp_lr, schedule.mlp_hidden,
                                  schedule.ao_on, schedule.mlp_loss)
    return select_outliers(scores.cpu().numpy(), schedule.ao_cut, schedule.ao_sides)
