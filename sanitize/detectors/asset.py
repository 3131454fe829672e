"""ASSET — Active Separation via Offset (Pan et al., USENIX Security 2023), supervised setting.

Idea: one *offset* model is pulled two ways at once. It minimises a label-free loss on the
trusted reserve (the variance of its logits across classes, so clean images get flat logits)
and maximises cross-entropy on a part of the inspected set D that is rich in poison. On clean
samples of D the two pulls cancel; poison samples share a trigger that nothing in the reserve
counteracts, so their loss drifts far above the clean bulk. A threshold fitted to that bulk
flags them.

Each step of the offset loop (one pass over D in batches of 512 in the paper):

1. ``l_min``: one Adam step minimising the mean logit variance on a reserve batch.
2. Poison concentration: a fresh small MLP learns to tell the D batch (label 1) from the
   reserve batch (label 0) on *frozen* features of a model trained on D (binary cross-entropy).
3. Selection: the D samples whose MLP score is a high outlier by Adjusted Outlyingness
   (a skew-aware boxplot rule built on the medcouple) with AO > 2.
4. ``l_max``: one Adam step (its own optimizer state) maximising cross-entropy of the selected
   samples under their dataset labels.

Score: per-sample cross-entropy of the offset model. Threshold: see :func:`loss_threshold`.

Deviations from the reference demo, each documented and measured in ``docs/asset.md``: empty
selections skip the max step; the max step and the scoring use the reserve's batch-norm
statistics (eval mode) instead of statistics of poison-heavy batches; features are computed
once (the extractor is frozen) instead of on every MLP step; the MLP is trained with BCE (the
paper) rather than MSE (the demo); the AO rule is one-sided; the threshold is scale-free. The
``fast`` schedule also replaces the AO selection by a cross-fitted one, with reserve canaries
flooring the cut (:func:`select_poison_rich`; ``reference`` keeps the paper's rule). The opt-in
``selection="global"`` selects once from the whole set instead of once per batch
(:func:`global_picks`; measured, and why it is not the default, in ``docs/asset.md``).

Two kinds of input share the loop: image folders (:func:`image_inputs`: a CNN on normalised
pixels) and feature rows such as EMBER (:func:`feature_inputs`: the CT paper's EMBER MLP with one
output per class on standardised rows, labelled rows only). On rows the concentration MLP reads
the extractor's first hidden layer, selects at AO > 1, and reserve canaries set a floor for the
cut (:func:`with_canaries`; why and measured in ``docs/ember.md``). ``model_factory``/
``preprocess``/``augment`` replace the defaults for other models or inputs.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import torch
from statsmodels.stats.stattools import medcouple
from torch import nn
from torch.func import functional_call, stack_module_state
from torch.nn import functional as F

from ..data import ImageDataset, check_reserve
from ..devices import PhaseTimer, describe, resolve_device, seed_everything
from ..engine import (
    PRECISION,
    Preprocess,
    TrainSpec,
    autocast,
    full_precision,
    global_pool,
    host_to_device,
    infer,
    planned_batches,
    stratified_split,
    train_supervised,
)
from ..errors import SanitizeError
from ..features import FeatureDataset, check_feature_reserve
from ..models import Classifier, build_model, default_arch
from ..progress import Progress, Silent
from ..reserve_fit import fitted_reserve
from ..result import DetectionResult
from .canaries import DEFAULT_ALPHA, below_lowest_canary_p, check_alpha, own_canary_p, share_notes
from .ct_features import Standardise, ember_mlp

ModelFactory = Callable[[], nn.Module]
Dataset = ImageDataset | FeatureDataset


@dataclass(frozen=True)
class AssetSchedule:
    """Settings of one ASSET run (see ``docs/asset.md`` for where each value comes from)."""

    name: str
    base: TrainSpec  # the feature extractor, trained on D
    min_base_steps: int = 0  # small datasets: train the extractor at least this many steps
    batch_size: int = 512  # inspected batch and reserve batch of the offset loop
    passes: int = 1  # passes over D in the offset loop
    min_offset_steps: int = 0  # small datasets: at least this many offset steps
    lr: float = 1e-4  # Adam, both the min and the max step
    mlp_steps: int = 100
    mlp_lr: float = 1e-4
    mlp_hidden: int = 128
    selection: str = "ao"  # "ao": the paper's rule; "crossfit"/"global": held-out scores against the reserve's
    ao_cut: float = 2.0
    ao_on: str = "logit"  # "logit": AO of the MLP's logit; "prob": of its sigmoid output (the demo)
    ao_sides: str = "upper"  # "upper": only high scores are outliers; "both": the demo's two-sided AO
    mlp_loss: str = "bce"  # "bce": one Adam step on the summed BCE; "mse": the demo's (concentration_scores)
    features: str = "pooled"  # "pooled": eval-mode penultimate features; "map": the demo's (see TrainModeMap)
    bn_mode: str = "batch-frozen"  # batch norm in the max step, see offset_loop; "batch" is the demo's
    threshold: str = "robust"  # "robust": loss_threshold; "demo": the demo's get_t (demo_threshold)
    class_calibration: bool = True  # shift each class's log-losses by its median (class_log_loss_medians)
    extractor_sees_reserve: bool = False  # the extractor also trains on the reserve (see extractor_inputs)
    selection_margin: float = 1.0  # "crossfit"/"global": robust sds above the highest held-out reserve score
    epsilon: float = 1e-6
    canary_fraction: float = 0.0  # reserve share held out as canaries for the cut (see loss_threshold)
    global_epochs: int = 20  # "global": passes of each fold's MLP over its half of D
    global_min_steps: int = 200  # "global": at least this many MLP steps (small sets)
    global_max_batch: int = 8  # "global": selected samples per max step

    def offset_steps(self, n: int) -> int:
        per_pass = max(1, n // min(self.batch_size, n))
        return max(self.passes * per_pass, self.min_offset_steps)


# The released demo (ASSET_demo.ipynb and new_poi_util.py of reds-lab/ASSET), constant by constant:
# batch 512 from D and from the reserve, one pass over D; the offset model trained by two Adam
# optimisers at lr 1e-4 (min: logit variance on the reserve batch; max: cross-entropy of the
# selected samples, batch norm in train mode throughout); concentration features read before
# global pooling from the extractor in train mode; a fresh MLP (two hidden layers of 128, sigmoid
# output) trained with MSE by two Adam optimisers at 1e-4, one step each per iteration, 100
# iterations; two-sided AO > 2 of its sigmoid scores; the threshold of get_t with eps 1e-6.
# The demo loads an extractor trained elsewhere (a ResNet-18 on its poisoned CIFAR-10); here it is
# trained on D with the CIFAR-10 recipe of CT's official base model (train_on_poisoned_set.py:
# 100 epochs, batch 128, SGD lr 0.1, momentum 0.9, weight decay 1e-4, x0.1 at epochs 50 and 75,
# flips and crops); the ASSET repository releases no training recipe.
REFERENCE = AssetSchedule(
    name="reference",
    base=TrainSpec(epochs=100, batch_size=128, lr=0.1, momentum=0.9, weight_decay=1e-4, augment=True,
                   lr_schedule="multistep"),
    ao_on="prob",
    ao_sides="both",
    mlp_loss="mse",
    features="map",
    bn_mode="batch",
    threshold="demo",
    class_calibration=False,
)

# Our schedule (calibrated on digits, docs/asset.md): a short one-cycle extractor (it only has
# to learn the trigger as a feature); at least 120 offset steps (one pass over 1,300 digits is
# three steps, far too few to move a fresh model; 120 found a 5 % blend that 60 missed) with a
# 10x larger Adam lr; 50 MLP steps at lr 2e-3 instead of 100 at 1e-4 (100 steps at 1e-4 leave
# the MLP near 0.5 everywhere, and the MLP is most of the loop's cost on a CPU). Selection is
# cross-fitted (crossfit_selection): AO > 2 on the MLP's own training batch handed the max step
# too few poison images at some seeds (digits Blend 5 %: TPR 0.10-1.00 over seeds 0-4). It
# selects more, and some clean samples with them, so a fifth of the reserve goes through the
# loop as canaries that floor the cut (with_canaries), as on feature rows.
FAST = AssetSchedule(
    name="fast",
    base=TrainSpec(epochs=16, batch_size=512, lr=0.2, momentum=0.9, weight_decay=5e-4, augment=True,
                   lr_schedule="onecycle", nesterov=True),
    min_base_steps=400,
    min_offset_steps=120,
    lr=1e-3,
    mlp_steps=50,
    mlp_lr=2e-3,
    selection="crossfit",
    canary_fraction=0.2,
    extractor_sees_reserve=True,
)

SCHEDULES = {s.name: s for s in (FAST, REFERENCE)}
SELECTIONS = ("ao", "crossfit", "global")  # see select_poison_rich and global_selection

# Feature rows (EMBER; measured in docs/ember.md). The extractor is the CT paper's EMBER MLP
# trained as CT pretrains it (SGD lr 0.1, momentum 0.9, weight decay 1e-6, batch 512). Both
# schedules hold out a fifth of the reserve as canaries for the cut (clean rows always give the
# concentration step something to select, see with_canaries). ``reference`` keeps the paper's
# loop settings otherwise. ``fast``: the image schedule's loop with AO > 1 instead of 2 (on rows,
# AO > 2 picks isolated clean rows, and the poison sits between 1 and 2) and Adam lr 2e-3 (1e-3
# left the constrained trigger of one generated set below the canaries).
FEATURE_REFERENCE = AssetSchedule(
    name="reference",
    base=TrainSpec(epochs=10, batch_size=512, lr=0.1, momentum=0.9, weight_decay=1e-6),
    ao_on="prob",
    canary_fraction=0.2,
)
FEATURE_FAST = AssetSchedule(
    name="fast",
    base=TrainSpec(epochs=10, batch_size=512, lr=0.1, momentum=0.9, weight_decay=1e-6),
    min_base_steps=200,
    min_offset_steps=120,
    lr=2e-3,
    mlp_steps=50,
    mlp_lr=2e-3,
    ao_cut=1.0,
    canary_fraction=0.2,
    extractor_sees_reserve=True,
)

FEATURE_SCHEDULES = {s.name: s for s in (FEATURE_FAST, FEATURE_REFERENCE)}


def get_schedule(name: str, features: bool = False) -> AssetSchedule:
    """The named schedule for image folders, or with ``features`` for feature rows."""
    schedules = FEATURE_SCHEDULES if features else SCHEDULES
    if name not in schedules:
        raise SanitizeError(f"unknown --schedule {name!r}; choose from {', '.join(schedules)}")
    return schedules[name]


def with_overrides(schedule: AssetSchedule, **changes: Any) -> AssetSchedule:
    """A copy of ``schedule`` with some fields changed (for experiments and tests)."""
    return replace(schedule, **changes)


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
# Threshold


def level_set_z(epsilon: float) -> float:
    """Standardised cut where a unit Gaussian's density falls to ``epsilon``.

    The reference flags ``x > mu + sigma * sqrt(-2 ln(eps * sigma * sqrt(2 pi)))``: where the
    fitted Gaussian's density equals ``eps``. That depends on the unit of the scores (sigma
    inside the log). Measured in standard deviations the same rule is scale-free:
    ``z* = sqrt(-2 ln(eps * sqrt(2 pi)))`` (5.08 for eps = 1e-6).
    """
    if not 0 < epsilon < 1 / math.sqrt(2.0 * math.pi):  # also refuses nan
        raise SanitizeError(f"epsilon {epsilon}: must lie between 0 and 1/sqrt(2 pi) ~ 0.399")
    return math.sqrt(-2.0 * math.log(epsilon * math.sqrt(2.0 * math.pi)))


def robust_z(values: np.ndarray) -> np.ndarray:
    """(x - median) / (1.4826 MAD): the z-score of a Gaussian fitted to the robust core.

    Median and MAD ignore up to half the data, so a poisoned minority does not widen the
    clean fit (the reference fits on the lower half for the same reason, which biases both the
    mean and the spread low). A zero MAD falls back to the mean absolute deviation, then to 1.
    """
    x = np.asarray(values, dtype=np.float64)
    med = float(np.median(x))
    spread = 1.4826 * float(np.median(np.abs(x - med)))
    if spread <= 1e-12:
        spread = 1.2533 * float(np.mean(np.abs(x - med)))
    if spread <= 1e-12:
        spread = 1.0
    return (x - med) / spread


def class_log_loss_medians(losses: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Median log-loss of each class's samples (0 for a class without any).

    ``fast`` takes them over the inspected samples and the canaries, which went through the loop
    alike: the median ignores a poisoned minority, and the canaries, compared with D after the
    shift, are shifted by a value that treats them exactly as D's clean samples. (The reserve
    samples that ``l_min`` trained on have flattened logits, so their losses are not D's.)
    """
    log_loss = np.log(np.maximum(losses.astype(np.float64), 1e-12))
    return np.array([float(np.median(log_loss[labels == c])) if (labels == c).any() else 0.0
                     for c in range(num_classes)])


def loss_threshold(losses: np.ndarray, epsilon: float, shift: np.ndarray | None = None, canaries: int = 0
                   ) -> tuple[np.ndarray, dict[str, float]]:
    """Flags and the fitted statistics: robust z of log-loss above :func:`level_set_z`.

    The log makes the rule invariant to the scale of the losses and turns their right skew
    (a loss is a product of factors) into a roughly symmetric bulk, which the Gaussian fit
    assumes.

    With ``canaries``, the last ``canaries`` losses belong to clean reserve samples that went
    through the loop exactly like the inspected ones (see :func:`with_canaries`); the cut is
    raised to the highest canary z, and flags are returned for the other samples only. A clean
    sample exchangeable with m canaries lies above all of them with probability 1/(m+1), whatever
    the loss distribution looks like.
    """
    log_loss = np.log(np.maximum(np.asarray(losses, dtype=np.float64), 1e-12))
    if shift is not None:
        log_loss = log_loss - shift
    z = robust_z(log_loss)
    cut = level_set_z(epsilon)
    med = float(np.median(log_loss))
    spread = float((log_loss[0] - med) / z[0]) if len(z) and z[0] != 0 else float("nan")
    fit = {"z_cut": cut, "log_loss_median": med, "log_loss_scale": spread}
    if canaries:
        fit["canary_max_z"] = float(z[-canaries:].max())
        z, cut = z[:-canaries], max(cut, fit["canary_max_z"])
        fit["cut"] = cut
    return z > cut, fit


def demo_threshold(losses: np.ndarray, epsilon: float) -> tuple[np.ndarray, dict[str, float]]:
    """Flags and the fit of the demo's ``get_t``, as its code computes it (``reference``).

    A one-component Gaussian mixture (scikit-learn, as the demo) is fitted to the scores at or
    below their lower median, giving mean ``mu`` and standard deviation ``sigma``; the cut is
    ``sigma * sqrt(-2 ln(eps) * sigma * sqrt(2 pi)) + mu`` and a score at or above it is flagged.
    (The paper writes the level set ``mu + sigma * sqrt(-2 ln(eps * sigma * sqrt(2 pi)))``; the
    code's expression differs, and is what the demo's figures come from.)
    """
    from sklearn.mixture import GaussianMixture

    x = np.asarray(losses, dtype=np.float64)
    lower = x[x <= np.quantile(x, 0.5, method="lower")].reshape(-1, 1)
    fit = GaussianMixture(n_components=1, covariance_type="full", random_state=0).fit(lower)
    mu, sigma = float(fit.means_[0, 0]), float(np.sqrt(fit.covariances_[0, 0, 0]))
    cut = sigma * math.sqrt(-2.0 * math.log(epsilon) * sigma * math.sqrt(2.0 * math.pi)) + mu
    return x >= cut, {"cut": cut, "lower_half_mean": mu, "lower_half_sd": sigma}


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
                canaries: int = 0) -> OffsetLog:
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
    ``global`` selection never picks them (see :func:`global_picks`).
    """
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
            loss_max = -F.cross_entropy(offset(prep(data_x[sel])).float(), data_y[sel])
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


@torch.no_grad()
def per_sample_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, prep: Callable,
                    batch_size: int = 1024) -> torch.Tensor:
    """Cross-entropy of every sample under its label, in eval mode (running BN statistics), in float32.

    The demo scores its clean samples this way but its poison samples in train mode (it sets
    eval mode between the two loops), which a detector that does not know the truth cannot do.
    """
    model.eval()
    out = []
    for start in range(0, len(y), batch_size):
        with full_precision(x.device):
            logits = model(prep(x[start:start + batch_size])).float()
        out.append(F.cross_entropy(logits, y[start:start + batch_size], reduction="none"))
    model.eval()
    return torch.cat(out) if out else torch.empty(0)


# ---------------------------------------------------------------------------------------------
# Inputs: what the loop needs from image folders and from feature rows


class Samples:
    """Samples ``X[index]`` drawn from one or more tensors, addressed as one sequence.

    Stands in for a tensor wherever the engine and the offset loop index samples (``len``, a
    slice or an index tensor, ``device``). Feature rows use it so that the labelled rows are
    never copied out of a (possibly memory-mapped) matrix as a whole and no standardised copy of
    it exists: each batch is gathered and standardised on its own. A second part appends the
    canaries (reserve samples) to the inspected ones without concatenating the two.
    """

    def __init__(self, *parts: tuple[torch.Tensor, torch.Tensor]):
        self.parts = [(X, index.to(X.device)) for X, index in parts]
        self.starts = np.cumsum([0] + [len(index) for _, index in self.parts]).tolist()

    def __len__(self) -> int:
        return self.starts[-1]

    @property
    def device(self) -> torch.device:
        return self.parts[0][0].device

    def __getitem__(self, idx: slice | torch.Tensor) -> torch.Tensor:
        if isinstance(idx, slice):
            idx = torch.arange(len(self), device=self.device)[idx]
        idx = idx.to(self.device)
        if len(self.parts) == 1:
            X, index = self.parts[0]
            return X[index[idx]]
        out = None
        for (X, index), start, stop in zip(self.parts, self.starts, self.starts[1:], strict=False):
            mine = (idx >= start) & (idx < stop)
            rows = X[index[idx[mine] - start]]
            if out is None:
                out = rows.new_empty((len(idx), *rows.shape[1:]))
            out[mine] = rows
        return out


@dataclass
class Inputs:
    """The inspected and reserve samples as the loop sees them, and the model to run on them.

    ``x``/``reserve_x`` are tensors (images) or :class:`Samples` (feature rows); ``inspected``
    lists the input's rows that ``x`` holds, in order (every row for images; the labelled rows
    for feature data), before any canaries.
    """

    x: torch.Tensor | Samples
    y: torch.Tensor
    reserve_x: torch.Tensor | Samples
    reserve_y: torch.Tensor
    num_classes: int
    factory: ModelFactory
    prep: Callable
    arch: str
    inspected: np.ndarray
    n_rows: int
    image_side: int | None  # None: feature rows (no augmentation)
    embed: Callable[[nn.Module, Any, Callable], torch.Tensor] | None = None  # None: penultimate features
    settings: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    n_canaries: int = 0  # the last n_canaries samples of x are reserve canaries (see with_canaries)


def with_canaries(inp: Inputs, fraction: float, gen: torch.Generator) -> Inputs:
    """Move a stratified ``fraction`` of the reserve behind the inspected samples, as canaries.

    Canaries are clean samples that take every step an inspected clean sample takes: the
    extractor trains on them, the concentration MLP can select them, the max step can raise their
    loss; only ``l_min`` no longer sees them. Their losses therefore show how far the loop pushes
    clean samples by chance, which :func:`loss_threshold` uses as a floor for the cut. Classes
    with fewer than 4 reserve samples give none, and every class keeps at least 2 for ``l_min``.

    Images (device tensors) are concatenated: a copy of a few hundred images costs nothing, and
    a plain tensor is gathered per batch without the boolean masks of :class:`Samples`, which
    wait for the GPU on every batch. Feature rows stay :class:`Samples` views, so a
    memory-mapped matrix is never copied whole.
    """
    kept, canaries = stratified_split(inp.reserve_y, inp.num_classes, fraction, gen, min_kept=2)
    if len(canaries) == 0:
        return inp
    device = inp.reserve_y.device
    kept, canaries = kept.to(device), canaries.to(device)
    if isinstance(inp.x, torch.Tensor) and isinstance(inp.reserve_x, torch.Tensor):
        x, reserve_x = torch.cat([inp.x, inp.reserve_x[canaries]]), inp.reserve_x[kept]
    else:
        x = Samples(*_parts(inp.x), *_parts(inp.reserve_x, canaries))
        reserve_x = Samples(*_parts(inp.reserve_x, kept))
    return replace(inp, x=x, y=torch.cat([inp.y, inp.reserve_y[canaries]]), reserve_x=reserve_x,
                   reserve_y=inp.reserve_y[kept], n_canaries=len(canaries))


def _parts(x: torch.Tensor | Samples, take: torch.Tensor | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``x`` (or its samples ``take``) as :class:`Samples` parts."""
    if isinstance(x, Samples):
        if take is None:
            return list(x.parts)
        if len(x.parts) != 1:
            raise ValueError("can only take samples from a single-part view")
        X, index = x.parts[0]
        return [(X, index[take.to(index.device)])]
    index = torch.arange(len(x), device=x.device) if take is None else take.to(x.device)
    return [(x, index)]


class TrainModeMap:
    """The demo's concentration features, computed batch by batch: ``feats[idx]``.

    The demo cuts its extractor before the classifier head and runs it in train mode, so the
    features are the last activation map before global pooling, flattened (8,192 values for a
    ResNet-18 at 32 px), with every batch-norm layer normalising by the statistics of the batch
    being read (a D batch and a reserve batch separately). The extractor's running statistics
    are left as they are. A model without a pooling module gives its penultimate features, in
    train mode likewise.
    """

    def __init__(self, model: nn.Module, x: torch.Tensor | Samples, prep: Callable):
        self.model, self.x, self.prep = model, x, prep

    def __len__(self) -> int:
        return len(self.x)

    @torch.no_grad()
    def __getitem__(self, idx: torch.Tensor) -> torch.Tensor:
        inputs = self.prep(self.x[idx])
        self.model.train()
        with batch_norm_without_update(self.model):
            pool = global_pool(self.model)
            if pool is None:
                return self.model.features_and_logits(inputs)[0].float()
            captured: list[torch.Tensor] = []
            handle = pool.register_forward_hook(lambda _m, args, _o: captured.append(args[0].float().flatten(1)))
            try:
                self.model.trunk(inputs)
            finally:
                handle.remove()
        return captured[0]


def penultimate(model: nn.Module, x: torch.Tensor | Samples, prep: Callable) -> torch.Tensor:
    """The model's penultimate features of every sample (eval mode, in batches)."""
    return infer(model, x, prep, features=True)[1]


@torch.no_grad()
def first_block(model: Classifier, x: Samples, prep: Callable, batch_size: int = 4096) -> torch.Tensor:
    """Activations of the EMBER MLP's first block (Linear -> BatchNorm -> ReLU, 200 wide), eval mode.

    Feature rows use these instead of the 20-d penultimate features. The bottleneck keeps what
    tells benign from malicious; a clean-label trigger on benign rows, which are benign without
    it, is mostly squeezed out there, while the wide first layer keeps it (measured in
    ``docs/ember.md``).
    """
    model.eval()
    head = model.trunk[:3]
    out = [head(prep(x[s:s + batch_size])).float() for s in range(0, len(x), batch_size)]
    return torch.cat(out) if out else torch.empty(0)


def image_backbone(data: ImageDataset, arch: str, device: torch.device) -> tuple[ModelFactory, Callable]:
    """A model factory and the uint8 -> normalised-float preprocessing for image data."""
    size = min(data.size)

    def factory() -> Classifier:
        model = build_model(arch, data.num_classes, data.channels, size).to(device)
        return model.to(memory_format=torch.channels_last) if device.type == "cuda" else model

    return factory, Preprocess.fit(data.images)


def image_inputs(data: ImageDataset, reserve: ImageDataset, arch: str, device: torch.device,
                 custom: bool, reserve_check: bool = True) -> Inputs:
    """Image folders on ``device``: a CNN on per-channel normalised pixels (``arch`` or auto).
    With ``reserve_check`` the reserve must fit the data (:func:`sanitize.reserve_fit.fitted_reserve`)."""
    check_reserve(reserve, data)
    if len(data) < 2 * data.num_classes:
        raise SanitizeError(f"dataset has {len(data)} images: too few to inspect")
    reserve, fit_settings, notes = _fitted(data, reserve, "images", reserve_check)
    if not custom:
        chosen = default_arch(device, min(data.size)) if arch == "auto" else arch
        if arch == "auto":
            notes.append(f"--arch auto chose {chosen} for {describe(device)} at {data.size[0]}x{data.size[1]} px")
        arch = chosen
    data, reserve = data.to(device), reserve.to(device)
    factory, prep = image_backbone(data, arch, device)
    return Inputs(data.images, data.labels, reserve.images, reserve.labels, data.num_classes, factory, prep, arch,
                  np.arange(len(data)), len(data), min(data.size), notes=notes, settings=fit_settings)


def _fitted(data: Dataset, reserve: Dataset, what: str, check: bool) -> tuple[Dataset, dict[str, Any], list[str]]:
    """The reserve after :func:`sanitize.reserve_fit.fitted_reserve` (when ``check``), the settings
    entry recording the check, and its notes."""
    if not check:
        return reserve, {}, []
    reserve, fit = fitted_reserve(data, reserve, what)
    return reserve, {"reserve_check": fit.as_dict()}, list(fit.notes)


def feature_inputs(data: FeatureDataset, reserve: FeatureDataset, arch: str, device: torch.device,
                   reserve_check: bool = True) -> Inputs:
    """Feature rows on ``device``: the CT paper's EMBER MLP with one output per class, labelled rows only.

    Rows are standardised as ``(x - mean) / (std + 0.1)`` with the inspected set's statistics,
    batch by batch. The MLP has two outputs for binary data (not EMBER's single logit) so that
    ``l_min`` (variance of the logits across classes) and the cross-entropy score apply unchanged:
    for two logits the variance is half the squared logit difference, i.e. ``l_min`` pulls the
    reserve's predictions to 50/50, the binary form of "flat logits". Unlabelled rows (-1) are
    neither trained on nor scored.
    """
    if arch not in ("auto", "ember_mlp"):
        raise SanitizeError(f"--arch {arch!r}: feature rows use the ember_mlp network (or auto)")
    if data.num_classes < 2:
        raise SanitizeError(f"ASSET needs at least two classes, the dataset has {data.num_classes}")
    check_feature_reserve(reserve, data)
    labelled = data.labelled_indices()
    counts = np.bincount(data.labels.cpu().numpy()[labelled], minlength=data.num_classes)
    if len(labelled) < 20 or (counts < 2).any():
        raise SanitizeError(f"dataset has {len(labelled)} labelled rows ({counts.tolist()} per class): "
                            f"too few of each class to inspect")
    reserve, fit_settings, fit_notes = _fitted(data, reserve, "rows", reserve_check)
    data, reserve = data.to(device), reserve.to(device)
    prep = Standardise.fit(data)
    dim, classes = data.dim, data.num_classes

    def factory() -> Classifier:
        return ember_mlp(dim, classes).to(device)

    index = torch.from_numpy(labelled).to(device)
    reserve_index = torch.from_numpy(reserve.labelled_indices()).to(device)
    notes = fit_notes + ([f"{data.n_unlabelled} unlabelled row(s) not inspected (score 0, never flagged)"]
                         if data.n_unlabelled else [])
    return Inputs(Samples((data.X, index)), data.labels[index], Samples((reserve.X, reserve_index)),
                  reserve.labels[reserve_index], classes, factory, prep, "ember_mlp", labelled, len(data), None,
                  embed=first_block, notes=notes,
                  settings={"standardisation": "(x - mean) / (std + 0.1)", "outputs": classes,
                            "concentration_features": "first hidden layer (200)", **fit_settings})


def extractor_inputs(inp: Inputs, with_reserve: bool) -> tuple[torch.Tensor | Samples, torch.Tensor]:
    """What the feature extractor trains on: the inspected samples (and canaries), and with
    ``with_reserve`` the reserve as well, under its true labels.

    Why the reserve (``fast``): the cross-fitted selection compares D's held-out concentration
    scores with the reserve's. A model trained on D but not on the reserve places its own training
    samples differently from unseen ones, so clean D would stand out from the reserve by
    membership alone, and the comparison would not be between exchangeable samples. Trained on
    both, clean D and the reserve differ only in what poison adds. The reserve is trusted clean,
    so it cannot teach the extractor a trigger.
    """
    if not with_reserve:
        return inp.x, inp.y
    y = torch.cat([inp.y, inp.reserve_y])
    if isinstance(inp.x, torch.Tensor) and isinstance(inp.reserve_x, torch.Tensor):
        return torch.cat([inp.x, inp.reserve_x]), y
    return Samples(*_parts(inp.x), *_parts(inp.reserve_x)), y


def extractor_spec(schedule: AssetSchedule, n: int, image_side: int | None, augment: bool | None) -> TrainSpec:
    """The extractor's training run, fitted to the data.

    Small datasets get smaller batches (at least 16 steps per epoch) and at least
    ``min_base_steps`` steps. Flip-and-crop augmentation is used from 32 px up unless set
    explicitly: a 4-pixel crop shift is half of an 8-pixel digit, and flips change digits.
    Feature rows (``image_side`` None) are never augmented.
    """
    spec = schedule.base
    if schedule.min_base_steps and n // 16 < spec.batch_size:  # linear lr scaling with the batch
        batch = max(32, n // 16)
        spec = replace(spec, batch_size=batch, lr=spec.lr * batch / spec.batch_size)
    per_epoch = max(1, n // min(spec.batch_size, n))
    epochs = max(spec.epochs, math.ceil(schedule.min_base_steps / per_epoch))
    if image_side is None:
        return replace(spec, epochs=epochs, augment=False)
    use_aug = spec.augment and image_side >= 32 if augment is None else augment
    return replace(spec, epochs=epochs, augment=use_aug)


def suspected_from_flags(flagged: np.ndarray, labels: np.ndarray, num_classes: int) -> list[int]:
    """Without canaries (``reference``): classes that hold a real share of the flags, >= 2 flags and
    >= half the busiest class's. A dirty-label backdoor concentrates its flags in the target
    class, while a few stray false positives scatter across classes."""
    counts = np.bincount(labels[flagged], minlength=num_classes)
    top = counts.max() if len(counts) else 0
    return [c for c in range(num_classes) if counts[c] >= 2 and counts[c] >= 0.5 * top]


def canary_p_values(flagged: np.ndarray, labels: np.ndarray, num_classes: int, canaries: int) -> np.ndarray:
    """Per class, the exact probability of at least its flag count among clean samples.

    Flags are the samples above every one of the ``canaries`` canaries' scores (the cut is raised
    to the highest canary). If the class's n samples are exchangeable with the canaries, at
    least k of them lie above all m canaries with probability C(n, k) / C(n + m, k)
    (:func:`sanitize.detectors.canaries.below_lowest_canary_p`), whatever the scores look like.
    """
    counts = np.bincount(labels[flagged], minlength=num_classes)
    sizes = np.bincount(labels, minlength=num_classes)
    return np.array([below_lowest_canary_p(int(sizes[c]), int(counts[c]), canaries) for c in range(num_classes)])


def own_canary_p_values(losses: np.ndarray, labels: np.ndarray, n_inspected: int, num_classes: int) -> np.ndarray:
    """Per class, the exact tail of its inspected samples above all of *its own* canaries' losses.

    ``losses``/``labels`` cover the inspected samples, then the canaries. Unlike the pooled
    :func:`canary_p_values` it needs no assumption across classes; it is reported as evidence.
    """
    d, k = labels[:n_inspected], labels[n_inspected:]
    return np.array([own_canary_p(-losses[:n_inspected][d == c], -losses[n_inspected:][k == c])[1]
                     for c in range(num_classes)])


@dataclass
class ASSET:
    """ASSET detector (estimator-style: configure, then :meth:`detect`).

    >>> result = ASSET(seed=0).detect(dataset, reserve)

    ``dataset``/``reserve`` are image folders (:class:`ImageDataset`) or feature rows
    (:class:`FeatureDataset`, e.g. EMBER; see :func:`feature_inputs`). ``model_factory`` (a
    no-argument callable returning a fresh classifier with ``features_and_logits``),
    ``preprocess`` (raw stored tensor -> model input) and ``augment`` replace the image
    defaults, so the same loop runs on other models.
    """

    schedule: str | AssetSchedule = "fast"
    arch: str = "auto"
    device: str | torch.device = "auto"
    seed: int = 0
    progress: Progress | None = None
    batch_size: int | None = None
    lr: float | None = None
    mlp_steps: int | None = None
    ao_cut: float | None = None
    selection: str | None = None
    selection_margin: float | None = None
    epsilon: float | None = None
    model_factory: ModelFactory | None = None
    preprocess: Callable | None = None
    augment: bool | None = None
    alpha: float = DEFAULT_ALPHA  # false-alarm level of the class test (with canaries), Bonferroni over classes
    reserve_check: bool = True  # refuse a reserve that does not fit the data (sanitize.reserve_fit)

    def resolved_schedule(self, features: bool = False) -> AssetSchedule:
        """The schedule with this detector's overrides (``features``: the feature-row schedules)."""
        schedule = self.schedule if isinstance(self.schedule, AssetSchedule) else get_schedule(self.schedule,
                                                                                                 features)
        changes = {k: v for k, v in (("batch_size", self.batch_size), ("lr", self.lr), ("mlp_steps", self.mlp_steps),
                                     ("ao_cut", self.ao_cut), ("selection", self.selection),
                                     ("selection_margin", self.selection_margin),
                                     ("epsilon", self.epsilon)) if v is not None}
        schedule = replace(schedule, **changes)
        if schedule.batch_size < 8 or schedule.mlp_steps < 1 or schedule.lr <= 0:
            raise SanitizeError("ASSET needs batch size >= 8, mlp steps >= 1 and a positive learning rate")
        if schedule.selection not in SELECTIONS or schedule.selection_margin < 0:
            raise SanitizeError(f"selection {schedule.selection!r} (margin {schedule.selection_margin}): "
                                f"expected one of {', '.join(SELECTIONS)} with a margin >= 0")
        if self.ao_cut is not None and schedule.selection != "ao":
            raise SanitizeError(f"ao_cut applies to the ao selection only; this schedule selects by "
                                f"{schedule.selection} (pass selection='ao' too)")
        level_set_z(schedule.epsilon)
        check_alpha(self.alpha)
        if schedule.bn_mode not in ("reserve", "batch-frozen", "batch"):
            raise SanitizeError(f"bn_mode {schedule.bn_mode!r}: expected reserve, batch-frozen or batch")
        for name, allowed in (("ao_sides", ("upper", "both")), ("mlp_loss", ("bce", "mse")),
                              ("features", ("pooled", "map")), ("threshold", ("robust", "demo"))):
            if getattr(schedule, name) not in allowed:
                raise SanitizeError(f"{name} {getattr(schedule, name)!r}: expected one of {', '.join(allowed)}")
        if schedule.features == "map" and schedule.selection == "global":
            raise SanitizeError("the global selection needs features computed once (features='pooled')")
        return schedule

    def inputs(self, data: Dataset, reserve: Dataset, device: torch.device) -> Inputs:
        """Validate the data and put it on ``device`` with its model and preprocessing."""
        if isinstance(data, FeatureDataset) != isinstance(reserve, FeatureDataset):
            raise SanitizeError("the reserve must be the same kind of data as the dataset (images or feature rows)")
        if isinstance(data, FeatureDataset):
            if self.augment:
                raise SanitizeError("feature rows have no augmentation: leave augment unset")
            inputs = feature_inputs(data, reserve, "auto" if self.model_factory else self.arch, device,
                                    self.reserve_check)
        elif isinstance(data, ImageDataset):
            inputs = image_inputs(data, reserve, self.arch, device, custom=self.model_factory is not None,
                                  reserve_check=self.reserve_check)
        else:
            raise SanitizeError(f"asset inspects image folders or feature rows, not {type(data).__name__}")
        if self.model_factory is not None:
            if self.preprocess is None and inputs.image_side is not None:
                raise SanitizeError("a custom model_factory needs a preprocess callable too")
            inputs.factory, inputs.arch, inputs.embed = self.model_factory, "custom", None  # penultimate features
            inputs.settings.pop("concentration_features", None)
        if self.preprocess is not None:
            inputs.prep = self.preprocess
        return inputs

    def detect(self, data: Dataset, reserve: Dataset) -> DetectionResult:
        """Train the extractor on the inspected samples, run the offset loop, score and threshold."""
        device = resolve_device(self.device)
        schedule = self.resolved_schedule(features=isinstance(data, FeatureDataset))
        progress = self.progress or Silent()
        gen = seed_everything(self.seed)
        timer = PhaseTimer(device)
        with timer("load to device"):
            inp = self.inputs(data, reserve, device)
            if schedule.canary_fraction > 0:
                inp = with_canaries(inp, schedule.canary_fraction, gen)

        train_x, train_y = extractor_inputs(inp, schedule.extractor_sees_reserve)
        base_spec = extractor_spec(schedule, len(train_y), inp.image_side, self.augment)
        with timer("extractor"), progress.phase("feature extractor", base_spec.epochs) as adv:
            extractor = train_supervised(inp.factory(), train_x, train_y, base_spec, inp.prep, gen, on_epoch=adv)
        with timer("features"):
            if schedule.features == "map" and inp.image_side is not None:
                d_feats, r_feats = TrainModeMap(extractor, inp.x, inp.prep), TrainModeMap(extractor, inp.reserve_x,
                                                                                          inp.prep)
            else:
                embed = inp.embed or penultimate
                d_feats, r_feats = embed(extractor, inp.x, inp.prep), embed(extractor, inp.reserve_x, inp.prep)
                del extractor
        steps = schedule.offset_steps(len(inp.y))
        with timer("offset loop"), progress.phase("offset loop", steps) as adv:
            offset = inp.factory()
            log = offset_loop(offset, inp.x, inp.y, inp.reserve_x, d_feats, r_feats, schedule, inp.prep, gen, adv,
                              schedule.bn_mode, inp.n_canaries)
        with timer("score"), progress.phase("score", 1) as adv:
            losses = per_sample_loss(offset, inp.x, inp.y, inp.prep).cpu().numpy()
            labels = inp.y.cpu().numpy()
            if inp.n_canaries:
                class_shift = class_log_loss_medians(losses, labels, inp.num_classes)
            else:
                reserve_losses = per_sample_loss(offset, inp.reserve_x, inp.reserve_y, inp.prep).cpu().numpy()
                class_shift = class_log_loss_medians(reserve_losses, inp.reserve_y.cpu().numpy(), inp.num_classes)
            if schedule.threshold == "demo":
                flagged, cut = demo_threshold(losses, schedule.epsilon)
                flagged = flagged[:len(flagged) - inp.n_canaries]
            else:
                flagged, cut = loss_threshold(losses, schedule.epsilon,
                                              class_shift[labels] if schedule.class_calibration else None,
                                              inp.n_canaries)
            adv()
        n = len(flagged)  # the inspected samples, without the canaries
        own_p = own_canary_p_values(losses, labels, n, inp.num_classes) if inp.n_canaries else None
        result = self._result(inp, losses[:n], flagged, labels[:n], class_shift, self.alpha, own_p)
        result.timings = timer.timings
        result.seed = self.seed
        result.device = describe(device)
        result.settings = {"schedule": schedule.name, "arch": inp.arch, **_schedule_settings(schedule),
                           "offset_steps": log.steps,
                           "empty_selections": log.empty_selections, "selected_total": log.selected,
                           **({"global_selected": log.global_selected} if log.global_selected is not None else {}),
                           "canaries": inp.n_canaries, "threshold": cut, **inp.settings,
                           "precision": PRECISION[device.type == "cuda"]}
        if log.empty_selections:
            result.notes.append(f"{log.empty_selections} of {log.steps} offset steps selected nothing "
                                f"(max step skipped)")
        result.notes.extend(inp.notes)
        return result

    @staticmethod
    def _result(inp: Inputs, losses: np.ndarray, flagged: np.ndarray, labels: np.ndarray,
                class_shift: np.ndarray, alpha: float, own_p: np.ndarray | None = None) -> DetectionResult:
        """Scores and flags of every input row (rows not inspected: score 0, never flagged), per-class stats.

        With canaries a class is suspected when its pooled p-value is below ``alpha`` over the
        classes. Its p-value against its own canaries (``own_p``) is reported beside it but does
        not decide, unlike CT's: with a fifth of the reserve as canaries, requiring it would
        cost ASSET the power to name a target at 20 reserve images per class (4 canaries of its
        own), and the pooled test has not named a clean class in any clean run measured
        (docs/asset.md, "The class test").
        """
        c = inp.num_classes
        if inp.n_canaries:
            p_values = canary_p_values(flagged, labels, c, inp.n_canaries)
            level = alpha / max(1, int((np.bincount(labels, minlength=c) > 0).sum()))
            suspected = [k for k in range(c) if p_values[k] < level]
        else:
            p_values, suspected = None, suspected_from_flags(flagged, labels, c)
        sizes = np.bincount(labels, minlength=c)
        n_flag = np.bincount(labels[flagged], minlength=c)
        notes = []
        if p_values is not None:  # a class the test clears keeps its samples: they are what clean data shows
            cleared = flagged & ~np.isin(labels, suspected)
            if cleared.any():
                notes.append(f"{int(cleared.sum())} sample(s) above the cut in classes the canary test clears "
                             f"were kept (as many as clean data gives by chance)")
            flagged = flagged & ~cleared
        notes.extend(share_notes(flagged, labels, suspected, [str(k) for k in range(c)]))
        stats = [{"class": k, "n_samples": int(sizes[k]), "n_above_cut": int(n_flag[k]),
                  "median_loss": float(np.median(losses[labels == k])) if sizes[k] else None,
                  "median_log_loss": float(class_shift[k]),
                  "suspected": k in suspected} for k in range(c)]
        if p_values is not None:
            for entry, p_value, p_own in zip(stats, p_values, own_p, strict=True):
                entry.update(p_value=float(p_value), p_value_own=float(p_own))
        scores = np.zeros(inp.n_rows)
        all_flags = np.zeros(inp.n_rows, dtype=bool)
        scores[inp.inspected] = losses
        all_flags[inp.inspected] = flagged
        return DetectionResult("asset", scores=scores, flagged=all_flags, suspected_classes=suspected,
                               class_stats=stats, notes=notes)


def _schedule_settings(schedule: AssetSchedule) -> dict[str, Any]:
    settings = asdict(schedule)
    settings.pop("name")
    return settings


def asset(data: Dataset, reserve: Dataset, **settings: Any) -> DetectionResult:
    """Run ASSET on ``data`` with the trusted ``reserve``; keyword settings as in :class:`ASSET`."""
    return ASSET(**settings).detect(data, reserve)
