"""CT — Confusion Training (Qi et al., USENIX Security 2023), for image datasets.

Idea: train on the inspected set D while fitting a small trusted reserve R under deliberately
wrong ("confusion") labels with a large weight. Normal features lose their link to the labels;
the trigger -> target shortcut of poison samples is a different feature and survives, so after
confusion only poison samples are still predicted as their label ("isolated"). Rounds of
*poison distillation* retrain on the lowest-loss part of D, each round richer in poison. A
per-class decision picks the target class(es); their isolated samples are flagged.

Schedules:

* ``reference`` — the official code's CIFAR-10 configuration (batch 32, 100/100/40/40/40/40
  pretraining epochs, 6000/2000 confusion steps, batch factor 2, a separately trained base model
  for confusion labels) and the paper's decision rule (a two-Gaussian likelihood ratio on the
  last confused model's features). ``reference-gtsrb`` — its GTSRB configuration.
* ``fast`` (default) — ours: larger batches, fewer epochs/steps scaled to the data, bf16
  training on CUDA, confusion labels from the round-0 model instead of a separate base model,
  and half the reserve as *canaries* for a calibrated class test
  (:mod:`sanitize.detectors.canaries`) at a stated false-alarm level.

Deviations from the reference code, each documented in ``docs/ct.md``: seeded; distillation
top-up adds each class's lowest-loss samples without duplicates (the reference can append the
same index twice); the two-Gaussian test uses sklearn's Gaussian fit with a diagonal 1e-3
regulariser; every read (distillation losses, features, scores) is float32; the reserve is
checked against the data before training (:mod:`sanitize.reserve_fit`).
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch
from sklearn.decomposition import PCA
from sklearn.mixture import GaussianMixture
from torch.nn import functional as F

from ..data import ImageDataset, check_reserve
from ..devices import PhaseTimer, describe, resolve_device, seed_everything
from ..engine import (
    PRECISION,
    Preprocess,
    TrainSpec,
    autocast,
    infer,
    make_sgd,
    planned_batches,
    stratified_split,
    train_supervised,
)
from ..errors import SanitizeError
from ..models import Classifier, build_model, default_arch
from ..progress import Progress, Silent
from ..reserve_fit import fitted_reserve
from ..result import DetectionResult
from .canaries import DEFAULT_ALPHA, canary_class_test, check_alpha, class_robust_z, share_notes


@dataclass(frozen=True)
class RoundSpec:
    """One round of pretraining -> confusion training -> distillation."""

    pretrain_epochs: int
    confusion_steps: int
    lr: float  # confusion-training learning rate
    lam: float  # confusion weight lambda
    batch_factor: int  # an inspected-set batch joins every ``batch_factor`` confusion steps
    keep_ratio: float | None  # distillation: fraction of D kept; None in the final round
    topup_divisor: int | None = None  # top each class up to |class| / divisor samples
    reserve_passes: float | None = None  # fast: steps = passes over R, capped by confusion_steps

    def steps_for(self, reserve_size: int, batch_size: int, min_steps: int) -> int:
        """Confusion steps for a reserve of ``reserve_size`` (fixed in the reference schedule)."""
        if self.reserve_passes is None:
            return self.confusion_steps
        wanted = math.ceil(self.reserve_passes * reserve_size / batch_size)
        return int(min(self.confusion_steps, max(min_steps, wanted)))


@dataclass(frozen=True)
class CTSchedule:
    name: str
    rounds: tuple[RoundSpec, ...]
    batch_size: int  # reserve batch in confusion training (and pretraining batch unless set below)
    inspect_batch_size: int  # inspected-set batch in confusion training
    pretrain_lr: float
    confusion_momentum: float = 0.7
    weight_decay: float = 1e-4
    base: TrainSpec | None = None  # None: confusion labels come from the round-0 model
    min_pretrain_steps: int = 0  # small datasets: train at least this many steps per round
    min_confusion_steps: int = 0
    # Reserve share placed into D as canaries (trained like D under true labels, the class test's
    # null; sanitize.detectors.canaries). 0: the paper's likelihood-ratio rule decides.
    canary_fraction: float = 0.0
    pretrain_batch_size: int | None = None

    @property
    def pretrain_batch(self) -> int:
        return self.pretrain_batch_size or self.batch_size


# The official code's CIFAR-10 configuration (``config.py`` and ``ct_cleanser.py`` of
# Unispac/Fight-Poison-With-Poison): pretraining 100, 100, 40, 40, 40, 40 epochs at lr 0.01; 6000
# confusion steps in rounds 0-3 and 2000 in rounds 4-5; lr 1e-3 x3 then 1e-2 x3; lambda
# 20, 20, 20, 30, 30, 15; batch factor 2 in every round; batch 32; momentum 0.7; weight decay
# 1e-4; the base model of ``train_on_poisoned_set.py`` (100 epochs, lr 0.1, x0.1 at epochs 50 and 75).
REFERENCE = CTSchedule(
    name="reference",
    rounds=(
        RoundSpec(100, 6000, 1e-3, 20, 2, 1 / 2, 50),
        RoundSpec(100, 6000, 1e-3, 20, 2, 1 / 5, 50),
        RoundSpec(40, 6000, 1e-3, 20, 2, 1 / 25, 50),
        RoundSpec(40, 6000, 1e-2, 30, 2, 1 / 50, 50),
        RoundSpec(40, 2000, 1e-2, 30, 2, 1 / 100, 100),
        RoundSpec(40, 2000, 1e-2, 15, 2, None),
    ),
    batch_size=32,
    inspect_batch_size=32,
    pretrain_lr=0.01,
    base=TrainSpec(epochs=100, batch_size=128, lr=0.1, momentum=0.9, weight_decay=1e-4,
                   augment=True, lr_schedule="multistep"),
)

# The same code's GTSRB configuration: lambda 20 and lr 1e-3 in every round, batch factors
# 2, 2, 4, 8, 8, 2; its base model trains at lr 0.01 (x0.1 at epochs 30 and 60 of 100) with
# random rotations of up to 15 degrees instead of flips and crops.
REFERENCE_GTSRB = replace(
    REFERENCE,
    name="reference-gtsrb",
    rounds=tuple(replace(spec, lr=1e-3, lam=20, batch_factor=factor)
                 for spec, factor in zip(REFERENCE.rounds, (2, 2, 4, 8, 8, 2), strict=True)),
    base=replace(REFERENCE.base, lr=0.01, milestones=(0.3, 0.6), augmentation="rotate", rotation_degrees=15.0),
)

# Our schedule, calibrated on CIFAR-10 (docs/benchmarks.md): pretraining at batch 256 with
# ~8x fewer epochs; confusion at batch 64 (2x the reference, lr scaled 2x) with a third of the
# reference's steps. GPU steps are launch-bound below batch ~256, so the number of confusion
# updates, not their size, sets both cost and strength; fewer than this left clean images of the
# target class fitted. Steps follow passes over the reserve (80 and 28, as 2000/700 steps of 64
# over 1,600 images), capped, so a small reserve is not revisited hundreds of times on a CPU.
FAST = CTSchedule(
    name="fast",
    rounds=(
        RoundSpec(12, 2000, 2e-3, 20, 2, 1 / 2, 50, reserve_passes=80),
        RoundSpec(8, 2000, 2e-3, 20, 2, 1 / 5, 50, reserve_passes=80),
        RoundSpec(8, 2000, 2e-3, 20, 4, 1 / 25, 50, reserve_passes=80),
        RoundSpec(8, 2000, 2e-2, 30, 8, 1 / 50, 50, reserve_passes=80),
        RoundSpec(8, 700, 2e-2, 30, 8, 1 / 100, 100, reserve_passes=28),
        RoundSpec(8, 700, 2e-2, 15, 2, None, reserve_passes=28),
    ),
    batch_size=64,
    inspect_batch_size=64,
    pretrain_batch_size=256,
    pretrain_lr=0.05,
    min_pretrain_steps=150,
    min_confusion_steps=60,
    canary_fraction=0.5,
)

SCHEDULES = {s.name: s for s in (FAST, REFERENCE, REFERENCE_GTSRB)}


def get_schedule(name: str) -> CTSchedule:
    if name not in SCHEDULES:
        raise SanitizeError(f"unknown --schedule {name!r}; choose from {', '.join(SCHEDULES)}")
    return SCHEDULES[name]


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
    opt = make_sgd(model, spec.lr, schedule.confusion_momentum, schedule.weight_decay)
    steps = spec.steps_for(len(reserve), schedule.batch_size, schedule.min_confusion_steps)
    reserve_plan = planned_batches(len(reserve), schedule.batch_size, steps, gen, device)
    inspect_plan = planned_batches(len(subset), schedule.inspect_batch_size, -(-steps // spec.batch_factor),
                                   gen, device)
    model.train()
    for step in range(steps):
        r_idx = reserve_plan[step]
        shift = 1 + step % max(1, c - 1)
        targets_conf = (base_pred[r_idx] + shift) % c
        x = reserve.images[r_idx]
        if step % spec.batch_factor == 0:
            d_idx = subset[inspect_plan[step // spec.batch_factor]]
            x = torch.cat([x, data.images[d_idx]])
        with autocast(device):
            logits = model(prep(x)).float()
        loss_conf = F.cross_entropy(logits[: len(r_idx)], targets_conf)
        if len(logits) > len(r_idx):
            d_labels = data.labels[d_idx]
            weights = 1.0 / freq[d_labels]
            losses = F.cross_entropy(logits[len(r_idx):], d_labels, reduction="none")
            loss_insp = (losses * weights).sum() / weights.sum()
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


def split_canaries(reserve, fraction: float, gen: torch.Generator):
    """Stratified split of a reserve (images or feature rows) into (confusion part, canaries or None).

    ``round(fraction * n_c)`` samples of each class with at least 4 become canaries; every class
    keeps at least two for confusion.
    """
    if fraction <= 0:
        return reserve, None
    kept, held = stratified_split(reserve.labels, reserve.num_classes, fraction, gen, min_kept=2)
    if len(held) == 0:
        return reserve, None
    return reserve.subset(kept), reserve.subset(held)


def with_canaries(data: ImageDataset, canaries: ImageDataset) -> ImageDataset:
    """``data`` followed by ``canaries`` under their true labels, as one tensor the loops index directly."""
    return ImageDataset(torch.cat([data.images, canaries.images]), torch.cat([data.labels, canaries.labels]),
                        data.classes, data.paths + [f"canary:{p}" for p in canaries.paths], data.root,
                        list(data.notes))


def likelihood_ratio(features: np.ndarray, isolated: np.ndarray) -> float:
    """exp(mean log-likelihood gain) of "isolated vs rest" Gaussians over one "rest" Gaussian.

    Features are projected to 2-D by PCA first. Returns 1.0 when either group has fewer than
    two samples (no evidence either way).
    """
    if isolated.sum() < 2 or (~isolated).sum() < 2:
        return 1.0
    # An activation map has thousands of columns: an exact SVD of every class would cost seconds
    # each on 50,000 images, and the two leading directions are all the test needs.
    solver = "full" if features.shape[1] <= 1024 else "randomized"
    projected = PCA(n_components=2, svd_solver=solver, random_state=0).fit_transform(features.astype(np.float64))

    def gaussian(points: np.ndarray) -> GaussianMixture:
        return GaussianMixture(n_components=1, covariance_type="full", reg_covar=1e-3,
                               random_state=0).fit(points)

    rest = gaussian(projected[~isolated])
    own = np.where(isolated, gaussian(projected[isolated]).score_samples(projected),
                   rest.score_samples(projected))
    gain = float(np.mean(own - rest.score_samples(projected)))
    return float(math.exp(min(gain, 700.0)))


def decide_classes(ratios: np.ndarray) -> list[int]:
    """The reference's rule: the class with the largest likelihood ratio if it exceeds 1.5, and any
    class whose ratio exceeds 2."""
    top = float(ratios.max()) if len(ratios) else 0.0
    return [c for c, r in enumerate(ratios) if (r == top and r > 1.5) or r > 2.0]


def class_ratios(features: np.ndarray, labels: np.ndarray, isolated: np.ndarray, num_classes: int) -> np.ndarray:
    """The reference's statistic (:func:`likelihood_ratio`) of every class with at least 4 samples (else 1)."""
    ratios = np.ones(num_classes)
    for cls in range(num_classes):
        members = labels == cls
        if members.sum() >= 4:
            ratios[cls] = likelihood_ratio(features[members], isolated[members])
    return ratios


@dataclass
class ConfusionTraining:
    """Confusion Training detector (estimator-style: configure, then :meth:`detect`).

    >>> result = ConfusionTraining(schedule="fast", seed=0).detect(dataset, reserve)

    ``alpha``: the false-alarm level of the class test of schedules with canaries (``fast``),
    for the whole run (Bonferroni over the classes); see :mod:`sanitize.detectors.canaries`.
    """

    schedule: str | CTSchedule = "fast"
    arch: str = "auto"
    device: str | torch.device = "auto"
    seed: int = 0
    progress: Progress | None = None
    alpha: float = DEFAULT_ALPHA
    reserve_check: bool = True  # refuse a reserve that does not fit the data (sanitize.reserve_fit)

    def detect(self, data: ImageDataset, reserve: ImageDataset) -> DetectionResult:
        from ..features import FeatureDataset

        if isinstance(data, FeatureDataset):  # feature rows (EMBER): the paper's feature variant
            from .ct_features import FeatureConfusionTraining

            if isinstance(self.schedule, CTSchedule):
                raise SanitizeError("feature rows take a feature schedule (fast or reference), not an image one")
            return FeatureConfusionTraining(self.schedule, self.arch, self.device, self.seed, self.progress,
                                            alpha=self.alpha, reserve_check=self.reserve_check).detect(data, reserve)
        device = resolve_device(self.device)
        schedule = self.schedule if isinstance(self.schedule, CTSchedule) else get_schedule(self.schedule)
        check_alpha(self.alpha)
        check_reserve(reserve, data)
        need = max(2 * data.num_classes, fewest_samples([r.keep_ratio for r in schedule.rounds if r.keep_ratio]))
        if len(data) < need:
            raise SanitizeError(f"dataset has {len(data)} images: ct ({schedule.name}) needs at least {need} "
                                f"(its distillation rounds keep as little as "
                                f"{min(r.keep_ratio or 1 for r in schedule.rounds):.0%} of them)")
        arch = default_arch(device, min(data.size)) if self.arch == "auto" else self.arch
        progress = self.progress or Silent()
        gen = seed_everything(self.seed)
        timer = PhaseTimer(device)
        data, reserve = data.to(device), reserve.to(device)
        fit = None
        if self.reserve_check:
            with timer("reserve check"):
                reserve, fit = fitted_reserve(data, reserve, "images")
        reserve, canaries = split_canaries(reserve, schedule.canary_fraction, gen)
        n_inspected = len(data)
        prep = Preprocess.fit(data.images)
        if canaries is not None:
            data = with_canaries(data, canaries)
        c = data.num_classes
        n = len(data)

        def new_model() -> Classifier:
            model = build_model(arch, c, data.channels, min(data.size)).to(device)
            return model.to(memory_format=torch.channels_last) if device.type == "cuda" else model

        base_pred = None
        if schedule.base is not None:
            with timer("base model"), progress.phase("base model", schedule.base.epochs) as adv:
                base = train_supervised(new_model(), data.images, data.labels, schedule.base, prep, gen,
                                        on_epoch=adv)
                base_pred = infer(base, reserve.images, prep)[0].argmax(1)
                del base

        subset = torch.arange(n, device=device)
        pretrained: dict[str, torch.Tensor] | None = None
        last = len(schedule.rounds) - 1
        for r, spec in enumerate(schedule.rounds):
            final = r == last
            labels = data.labels[subset]
            freq = torch.ones(c, device=device) if final else class_frequency_weights(labels, c)
            images = data.images[subset]
            if final:  # the reference adds the reserve, labels shifted by one, to the last pretraining
                images = torch.cat([images, reserve.images])
                labels = torch.cat([labels, (reserve.labels + 1) % c])
            steps_per_epoch = max(1, len(labels) // min(schedule.pretrain_batch, len(labels)))
            epochs = max(spec.pretrain_epochs, math.ceil(schedule.min_pretrain_steps / steps_per_epoch))
            model = new_model()
            if pretrained is not None:
                model.load_state_dict(pretrained)
            train_spec = TrainSpec(epochs=epochs, batch_size=schedule.pretrain_batch, lr=schedule.pretrain_lr,
                                   momentum=0.9, weight_decay=schedule.weight_decay)
            with timer(f"round {r} pretrain"), progress.phase(f"round {r}: pretrain", epochs) as adv:
                train_supervised(model, images, labels, train_spec, prep, gen, on_epoch=adv)
            if not final:
                pretrained = copy.deepcopy(model.state_dict())
            if base_pred is None:  # fast schedule: the round-0 model provides the confusion labels
                base_pred = infer(model, reserve.images, prep)[0].argmax(1)
            steps = spec.steps_for(len(reserve), schedule.batch_size, schedule.min_confusion_steps)
            with timer(f"round {r} confusion"), progress.phase(f"round {r}: confusion", steps) as adv:
                confusion_train(model, data, subset, reserve, base_pred, spec, schedule, freq, prep, gen, adv)
            if final:
                break
            with timer(f"round {r} distill"):
                logits, _ = infer(model, data.images, prep)
                losses = F.cross_entropy(logits, data.labels, reduction="none")
                subset = distill(losses, data.labels, c, spec.keep_ratio, spec.topup_divisor)

        with timer("detect"), progress.phase("detect", 1) as adv:
            result = self._decide(model, data, prep, n_inspected)
            adv()
        result.timings = timer.timings
        result.seed = self.seed
        result.device = describe(device)
        result.settings = {"schedule": schedule.name, "arch": arch,
                           "rounds": [asdict(s) for s in schedule.rounds],
                           "batch_size": schedule.batch_size,
                           "base_model": schedule.base is not None,
                           "canaries": n - n_inspected,
                           "class_test": "canaries" if n > n_inspected else "likelihood ratio (the paper's)",
                           **({"alpha": self.alpha} if n > n_inspected else {}),
                           **({"reserve_check": fit.as_dict()} if fit else {}),
                           "precision": PRECISION[device.type == "cuda"]}
        result.notes[:0] = fit.notes if fit else []
        if self.arch == "auto":
            result.notes.append(f"--arch auto chose {arch} for {describe(device)} at "
                                f"{data.size[0]}x{data.size[1]} px")
        return result

    def _decide(self, model: Classifier, data: ImageDataset, prep: Preprocess, n_inspected: int) -> DetectionResult:
        """Pick the target classes and flag their samples.

        The last confused model reads every sample of D and every canary (the samples after
        ``n_inspected``). *Isolated* samples are those it still predicts as their label. Every
        class gets the reference's cluster statistic on the confused model's penultimate
        features (:func:`likelihood_ratio`). Without canaries (``reference``) the paper's rule
        decides on it and flags the isolated samples of the chosen classes. With canaries the
        calibrated test of :mod:`sanitize.detectors.canaries` decides: scores are the log-losses
        of isolated samples, standardised within each class by the samples confusion erased
        (not isolated: never below the cut); a suspected class loses all its isolated samples,
        as in the paper (docs/ct.md says why not only those below the cut).
        """
        logits, feats = infer(model, data.images, prep, features=True)
        labels = data.labels.cpu().numpy()
        isolated = (logits.argmax(1) == data.labels).cpu().numpy()
        log_loss = np.log(np.maximum(F.cross_entropy(logits, data.labels, reduction="none").cpu().numpy(), 1e-30))
        label_prob = torch.softmax(logits, 1).gather(1, data.labels[:, None]).squeeze(1).cpu().numpy()
        c = data.num_classes
        d, k = slice(0, n_inspected), slice(n_inspected, None)
        ratios = class_ratios(feats[d].cpu().numpy(), labels[d], isolated[d], c)
        notes: list[str] = []
        if n_inspected == len(labels):
            suspected = decide_classes(ratios)
            flagged = isolated & np.isin(labels, suspected)
            stats = [{"class": cls, "n_samples": int((labels == cls).sum()),
                      "n_isolated": int((isolated & (labels == cls)).sum())} for cls in range(c)]
        else:
            z, canary_z = class_robust_z(log_loss[d], labels[d], log_loss[k], labels[k], c, ~isolated[d], ~isolated[k])
            z[~isolated[d]], canary_z[~isolated[k]] = np.inf, np.inf
            flagged, suspected, stats, notes = canary_class_test(z, labels[d], canary_z, labels[k], c, self.alpha,
                                                                 isolated[d], isolated[k], class_names=data.classes,
                                                                 flag_fitted=True)
        for entry, ratio in zip(stats, ratios, strict=True):
            entry["likelihood_ratio"] = float(ratio)
            entry["suspected"] = entry["class"] in suspected
        notes.extend(share_notes(flagged, labels[d], suspected, data.classes))
        return DetectionResult("ct", scores=label_prob[d], flagged=flagged, suspected_classes=suspected,
                               class_stats=stats, notes=notes)


def ct(data: ImageDataset, reserve: ImageDataset, *, schedule: str | CTSchedule = "fast",
       arch: str = "auto", device: str | torch.device = "auto", seed: int = 0,
       progress: Progress | None = None, alpha: float = DEFAULT_ALPHA) -> DetectionResult:
    """Run Confusion Training on ``data`` with the trusted ``reserve``; see :class:`ConfusionTraining`."""
    return ConfusionTraining(schedule, arch, device, seed, progress, alpha).detect(data, reserve)


def with_overrides(schedule: CTSchedule, **changes) -> CTSchedule:
    """A copy of ``schedule`` with some fields changed (for experiments and tests)."""
    return replace(schedule, **changes)
