"""CT -- Confusion Training -- for feature vectors (EMBER malware features).

The EMBER variant of Qi et al. (USENIX Security 2023): features standardised as
``(x - mean) / (std + 0.1)`` over the inspected set, an MLP (D -> 200 -> 100 -> 20 -> 1, batch
norm, dropout 0.5) trained with binary cross-entropy, and five rounds of pretraining ->
confusion training -> distillation. Confusion fits the trusted reserve under *flipped* labels
with weight (lambda-1)/lambda = 0.95, so the ordinary "benign vs malicious" features lose their
link to the labels; rows that stay fitted carry a different shortcut -- the backdoor trigger --
and distillation keeps the 1/5, 1/20, 1/40, 1/80 lowest-loss rows for the next round.

**The cut.** The reference removes the lowest-loss 4 % of rows whatever the data. Here a fifth
of the reserve becomes *canaries*: reserve rows placed among the inspected rows under their
true labels from the first round, pretrained, distilled and confused like them, never flagged.
The class test shared with image CT and ASSET (:mod:`sanitize.detectors.canaries`) compares
each class's fitted rows with the canaries' at a stated false-alarm level (``alpha``), and
only a suspected class loses its rows below the canaries' cut. Rows with a rare extreme value
make outlying canaries, so a class with many canaries is also cut at its next-lowest ones
(``cut_orders=None``, docs/ember.md "One outlying canary"). A clean set flags nothing, and a
10 % attack is not cut off at 4 %. The rule and its measured effect are in ``docs/ember.md``.

Two schedules: ``reference`` (the paper's epochs, 6000/4000 confusion steps at batch 64) and
``fast`` (default): the same rounds with confusion steps set by passes over the reserve and
pretraining epochs reduced, for CPUs and small sets.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ...data.reserve_fit import fitted_reserve
from ...data.rows import FeatureDataset
from ...domains import check_seed, choose
from ...errors import ParameterError, SanitizeError
from ...nn.devices import PhaseTimer, describe, resolve_device, seed_everything
from ...nn.engine import epoch_batches, make_sgd, planned_batches
from ...nn.models import Classifier
from ...progress import Progress, Silent
from ...result import DetectionResult
from ..canaries import (
    DEFAULT_ALPHA,
    below_pooled_cut,
    canary_class_test,
    check_alpha,
    class_robust_z,
    log_loss,
    set_wide_evidence,
    share_notes,
)
from .distillation import distill, fewest_samples, split_canaries


@dataclass(frozen=True)
class FeatureRound:
    pretrain_epochs: int
    confusion_steps: int  # the cap (reference: the exact number)
    lr: float  # confusion learning rate
    batch_factor: int  # an inspected batch joins every ``batch_factor`` confusion steps
    keep_ratio: float | None  # distillation ratio; None in the last round
    with_reserve: bool  # pretraining also fits the reserve under flipped labels


@dataclass(frozen=True)
class FeatureCTSchedule:
    name: str
    rounds: tuple[FeatureRound, ...]
    batch_size: int = 64
    pretrain_batch: int = 512
    pretrain_lr: float = 0.1
    pretrain_momentum: float = 0.9
    confusion_momentum: float = 0.5
    lam: float = 20.0
    weight_decay: float = 1e-6
    reserve_passes: float | None = None  # fast: confusion steps = passes over the reserve (capped)
    min_confusion_steps: int = 0
    min_pretrain_steps: int = 0
    canary_fraction: float = 0.2  # reserve share trained like D under true labels (the class test's null)

    def steps(self, spec: FeatureRound, reserve_size: int) -> int:
        if self.reserve_passes is None:
            return spec.confusion_steps
        wanted = math.ceil(self.reserve_passes * reserve_size / self.batch_size)
        return int(min(spec.confusion_steps, max(self.min_confusion_steps, wanted)))


# The reference code's EMBER settings (ct_cleanser_ember.py of the paper's repository).
REFERENCE = FeatureCTSchedule(
    name="reference",
    rounds=(
        FeatureRound(10, 6000, 0.1, 1, 1 / 5, False),
        FeatureRound(5, 4000, 0.01, 16, 1 / 20, False),
        FeatureRound(5, 4000, 0.01, 64, 1 / 40, True),
        FeatureRound(5, 4000, 0.01, 128, 1 / 80, True),
        FeatureRound(5, 4000, 0.01, 128, None, True),
    ),
)

# Ours: the reference's rounds, ratios, learning rates and batch factors, with confusion steps
# set to 30 passes over the reserve (capped at the reference's counts) and fewer pretraining
# epochs; calibrated on generated EMBER sets (docs/ember.md).
FAST = FeatureCTSchedule(
    name="fast",
    rounds=(
        FeatureRound(4, 6000, 0.1, 1, 1 / 5, False),
        FeatureRound(3, 4000, 0.01, 16, 1 / 20, False),
        FeatureRound(3, 4000, 0.01, 64, 1 / 40, True),
        FeatureRound(3, 4000, 0.01, 128, 1 / 80, True),
        FeatureRound(3, 4000, 0.01, 128, None, True),
    ),
    reserve_passes=30,
    min_confusion_steps=300,
    min_pretrain_steps=60,
)

SCHEDULES = {s.name: s for s in (FAST, REFERENCE)}
REFERENCE_BUDGET = 1 / 25  # the reference flags this fraction, always


def get_feature_schedule(name: str) -> FeatureCTSchedule:
    """The named feature-row schedule (``fast``, ``reference``)."""
    return choose(name, SCHEDULES)


def ember_mlp(dim: int, num_outputs: int = 1) -> Classifier:
    """The CT paper's EMBER network: D -> 200 -> 100 -> 20 -> 1 with batch norm and dropout 0.5.

    Shared with other detectors on feature data (a :class:`Classifier`: 20-d penultimate features).
    """
    def block(i: int, o: int, dropout: bool) -> list[nn.Module]:
        return [nn.Linear(i, o), nn.BatchNorm1d(o), nn.ReLU(inplace=True)] + ([nn.Dropout(0.5)] if dropout else [])

    trunk = nn.Sequential(*block(dim, 200, True), *block(200, 100, True), *block(100, 20, False))
    return Classifier(trunk, 20, num_outputs)


@dataclass
class Standardise:
    """``(x - mean) / (std + 0.1)`` with the inspected set's statistics, applied per batch on the device.

    The +0.1 (from the reference) keeps near-constant columns -- most hashed buckets -- from
    being blown up into large values by a tiny standard deviation.
    """

    mean: torch.Tensor
    scale: torch.Tensor

    @classmethod
    def fit(cls, data: FeatureDataset) -> Standardise:
        mean, std = data.column_stats()
        return cls(mean.to(data.device), (std + 0.1).to(data.device))

    def __call__(self, rows: torch.Tensor) -> torch.Tensor:
        return (rows.float() - self.mean) / self.scale


def batch(X: torch.Tensor, idx: torch.Tensor, prep: Standardise) -> torch.Tensor:
    """Standardised rows ``X[idx]`` on ``prep``'s device (``X`` may be a CPU memory map)."""
    return prep(X[idx.to(X.device)].to(prep.mean.device, non_blocking=True))


@torch.no_grad()
def row_losses(model: Classifier, X: torch.Tensor, labels: torch.Tensor, index: torch.Tensor, prep: Standardise,
               chunk: int = 8192) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row BCE and logit of the rows ``X[index]`` with targets ``labels`` (eval mode)."""
    model.eval()
    logits = torch.cat([model(batch(X, index[s:s + chunk], prep)).squeeze(1).float()
                        for s in range(0, len(index), chunk)])
    losses = F.binary_cross_entropy_with_logits(logits, labels.float(), reduction="none")
    return losses, logits


def pretrain(model: Classifier, parts: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], epochs: int,
             schedule: FeatureCTSchedule, prep: Standardise, gen: torch.Generator, advance) -> None:
    """Supervised BCE on the (X, row index, target) ``parts`` (e.g. distilled rows + flipped reserve)."""
    device = prep.mean.device
    sizes = [len(idx) for _, idx, _ in parts]
    n = sum(sizes)
    opt = make_sgd(model, schedule.pretrain_lr, schedule.pretrain_momentum, schedule.weight_decay)
    model.train()
    size = min(schedule.pretrain_batch, n)
    for _ in range(epochs):
        for order in epoch_batches(n, size, gen):
            x, y = _gather(parts, sizes, order, prep)
            loss = F.binary_cross_entropy_with_logits(model(x).squeeze(1), y.to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        advance()


def _gather(parts, sizes: list[int], order: torch.Tensor, prep: Standardise) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows ``order`` of the concatenation of ``parts`` without materialising it."""
    xs, ys, start = [], [], 0
    for (X, idx, y), size in zip(parts, sizes, strict=True):
        mine = order[(order >= start) & (order < start + size)] - start
        if len(mine):
            mine = mine.to(idx.device)
            xs.append(batch(X, idx[mine], prep))
            ys.append(y[mine.to(y.device)])
        start += size
    return torch.cat(xs), torch.cat([y.to(xs[0].device) for y in ys])


def confusion_train(model: Classifier, inspect: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
                    reserve: FeatureDataset, spec: FeatureRound, steps: int, schedule: FeatureCTSchedule,
                    prep: Standardise, gen: torch.Generator, advance) -> None:
    """Fit the reserve under flipped labels, every ``batch_factor`` steps with a batch of ``inspect``.

    ``inspect`` lists (X, row index, target) parts: the distilled rows of D and, in the last
    round, the canary rows of the held-out reserve.
    """
    device = prep.mean.device
    opt = make_sgd(model, spec.lr, schedule.confusion_momentum, schedule.weight_decay)
    sizes = [len(idx) for _, idx, _ in inspect]
    r_plan = planned_batches(len(reserve), schedule.batch_size, steps, gen, reserve.device)
    d_plan = planned_batches(sum(sizes), schedule.batch_size, -(-steps // spec.batch_factor), gen, torch.device("cpu"))
    flipped = 1.0 - reserve.labels.float()
    lam = schedule.lam
    model.train()
    for step in range(steps):
        r_idx = r_plan[step]
        x = prep(reserve.X[r_idx].to(device))
        y_conf = flipped[r_idx].to(device)
        with_data = step % spec.batch_factor == 0
        if with_data:
            x_d, y_d = _gather(inspect, sizes, d_plan[step // spec.batch_factor], prep)
            x = torch.cat([x, x_d])
        logits = model(x).squeeze(1)
        loss = F.binary_cross_entropy_with_logits(logits[: len(r_idx)], y_conf)
        if with_data:
            loss_insp = F.binary_cross_entropy_with_logits(logits[len(r_idx):], y_d.to(device))
            loss = ((lam - 1) * loss + loss_insp) / lam
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        advance()


@dataclass(kw_only=True)
class FeatureConfusionTraining:
    """Confusion Training on a :class:`FeatureDataset` (binary labels, e.g. EMBER)."""

    schedule: str | FeatureCTSchedule = "fast"
    arch: str = "auto"
    device: str | torch.device = "auto"
    seed: int = 0
    progress: Progress | None = None
    cut: str = "data"  # "data" (ours: the canary class test) or "budget" (the reference's lowest 4 %)
    alpha: float = DEFAULT_ALPHA
    reserve_check: bool = True  # refuse a reserve that does not fit the data (sanitize.data.reserve_fit)

    def check(self) -> None:
        """Validate the settings, before any data is read."""
        if not isinstance(self.schedule, FeatureCTSchedule):
            get_feature_schedule(self.schedule)
        if self.arch not in ("auto", "ember_mlp"):
            raise ParameterError("arch", self.arch, "feature data uses the ember_mlp network (or auto)")
        if self.cut not in ("data", "budget"):
            raise ParameterError("cut", self.cut, "expected data or budget")
        check_alpha(self.alpha)
        check_seed(self.seed)

    def detect(self, data: FeatureDataset, reserve: FeatureDataset) -> DetectionResult:
        self.check()
        device = resolve_device(self.device)
        schedule = self.schedule if isinstance(self.schedule, FeatureCTSchedule) else \
            get_feature_schedule(self.schedule)
        if data.num_classes != 2:
            raise SanitizeError(f"CT on feature data needs binary labels (0/1), found {data.num_classes} classes")
        data.check_reserve(reserve)
        labelled_np = data.labelled_indices()
        need = max(20, fewest_samples([r.keep_ratio for r in schedule.rounds if r.keep_ratio]))
        if len(labelled_np) < need or (np.bincount(data.labels.cpu().numpy()[labelled_np], minlength=2) < 2).any():
            raise SanitizeError(f"dataset has {len(labelled_np)} labelled rows: ct ({schedule.name}) needs at least "
                                f"{need}, two of each class")
        progress = self.progress or Silent()
        gen = seed_everything(self.seed)
        timer = PhaseTimer(device)
        with timer("load to device"):
            data = data.to(device)
            reserve = reserve.to(device)
            prep = Standardise.fit(data)
        fit = None
        if self.reserve_check:
            with timer("reserve check"):
                reserve, fit = fitted_reserve(data, reserve, "rows")
        reserve, canaries = split_canaries(reserve, schedule.canary_fraction, gen,
                                             fit.twin_groups if fit else None)
        if canaries is None:
            raise SanitizeError("reserve too small to set canaries aside for the class test: need at least 4 rows "
                                "of each class")
        pool = RowPool(data, torch.from_numpy(labelled_np).to(device), canaries)
        subset = torch.arange(len(pool), device=device)
        last = len(schedule.rounds) - 1
        model = None
        all_reserve = torch.arange(len(reserve), device=reserve.device)
        for r, spec in enumerate(schedule.rounds):
            model = ember_mlp(data.dim).to(device)
            inspect = pool.parts(subset)
            parts = inspect + ([(reserve.X, all_reserve, 1.0 - reserve.labels.float())] if spec.with_reserve else [])
            steps_per_epoch = max(1, sum(len(p[1]) for p in parts) // schedule.pretrain_batch)
            epochs = max(spec.pretrain_epochs, math.ceil(schedule.min_pretrain_steps / steps_per_epoch))
            with timer(f"round {r} pretrain"), progress.phase(f"round {r}: pretrain", epochs) as adv:
                pretrain(model, parts, epochs, schedule, prep, gen, adv)
            steps = schedule.steps(spec, len(reserve))
            with timer(f"round {r} confusion"), progress.phase(f"round {r}: confusion", steps) as adv:
                confusion_train(model, inspect, reserve, spec, steps, schedule, prep, gen, adv)
            if r == last:
                break
            with timer(f"round {r} distill"):
                losses, _ = pool.losses(model, prep)
                subset = distill(losses, pool.labels, 2, spec.keep_ratio, None)
        with timer("detect"), progress.phase("detect", 1) as adv:
            result = self._decide(model, data, pool, prep)
            adv()
        return result.finish(
            timings=timer.timings, seed=self.seed, device=describe(device), notes_first=fit.notes if fit else [],
            settings={"schedule": schedule.name, "arch": "ember_mlp", "cut": self.cut,
                      "rounds": [asdict(s) for s in schedule.rounds], "batch_size": schedule.batch_size,
                      "lambda": schedule.lam, "alpha": self.alpha, "canaries": len(canaries),
                      "standardisation": "(x - mean) / (std + 0.1)", "precision": "float32",
                      **({"reserve_check": fit.as_dict()} if fit else {})})

    def _decide(self, model: Classifier, data: FeatureDataset, pool: RowPool, prep: Standardise) -> DetectionResult:
        losses_t, logits = pool.losses(model, prep)
        y = pool.labels
        own_prob = torch.sigmoid(torch.where(y == 1, logits, -logits)).cpu().numpy()
        losses, labels = losses_t.cpu().numpy(), y.cpu().numpy()
        n = pool.n_inspected
        d, k = slice(0, n), slice(n, None)
        notes: list[str] = []
        evidence: dict = {}
        if self.cut == "budget":
            order = np.argsort(losses[d], kind="stable")[: int(n * REFERENCE_BUDGET)]
            flagged_l = np.zeros(n, dtype=bool)
            flagged_l[order] = True
            suspected = sorted({int(c) for c in labels[d][flagged_l]})
            stats = [{"class": c, "n_samples": int((labels[d] == c).sum()),
                      "n_flagged": int((flagged_l & (labels[d] == c)).sum()), "suspected": c in suspected}
                     for c in range(data.num_classes)]
        else:
            fitted = own_prob > 0.5
            log_losses = log_loss(logits, y)
            z, canary_z = class_robust_z(log_losses[d], labels[d], log_losses[k], labels[k], data.num_classes,
                                         ~fitted[d], ~fitted[k])
            z[~fitted[d]], canary_z[~fitted[k]] = np.inf, np.inf
            flagged_l, suspected, stats, notes = canary_class_test(z, labels[d], canary_z, labels[k], data.num_classes,
                                                                   self.alpha, fitted[d], fitted[k],
                                                                   class_names=data.classes, cut_orders=None)
            notes.extend(share_notes(flagged_l, labels[d], suspected, data.classes))
            evidence, spread = set_wide_evidence(*below_pooled_cut(z, labels[d], canary_z, labels[k], stats),
                                                 suspected, self.alpha)
            notes.extend(spread)
        # score: probability the confused model gives the row's own label (higher = more suspicious)
        scores = np.zeros(len(data))
        flagged = np.zeros(len(data), dtype=bool)
        idx = pool.labelled.cpu().numpy()
        scores[idx] = own_prob[d]
        flagged[idx] = flagged_l
        if data.n_unlabelled:
            notes.append(f"{data.n_unlabelled} unlabelled row(s) not inspected (score 0, never flagged)")
        return DetectionResult("ct", scores=scores, flagged=flagged, suspected_classes=suspected,
                               class_stats=stats, notes=notes, settings={"set_wide": evidence} if evidence else {})


class RowPool:
    """The rows CT trains and distils: the labelled rows of D, then the canaries (reserve rows under
    their true labels), addressed as one index range without copying either matrix."""

    def __init__(self, data: FeatureDataset, labelled: torch.Tensor, canaries: FeatureDataset):
        self.data, self.labelled, self.canaries = data, labelled, canaries
        self.n_inspected = len(labelled)
        self.labels = torch.cat([data.labels[labelled], canaries.labels.to(labelled.device)])

    def __len__(self) -> int:
        return len(self.labels)

    def parts(self, subset: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """(X, row index, target) parts for the pool rows ``subset``."""
        d = subset[subset < self.n_inspected]
        k = subset[subset >= self.n_inspected] - self.n_inspected
        parts = [(self.data.X, self.labelled[d], self.labels[d].float())]
        if len(k):
            parts.append((self.canaries.X, k.to(self.canaries.device), self.labels[k + self.n_inspected].float()))
        return parts

    def losses(self, model: Classifier, prep: Standardise) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-row BCE and logit of every pool row (eval mode, float32)."""
        d_loss, d_logit = row_losses(model, self.data.X, self.labels[:self.n_inspected], self.labelled, prep)
        k_idx = torch.arange(len(self.canaries), device=self.canaries.device)
        k_loss, k_logit = row_losses(model, self.canaries.X, self.canaries.labels, k_idx, prep)
        return torch.cat([d_loss, k_loss.to(d_loss.device)]), torch.cat([d_logit, k_logit.to(d_logit.device)])
