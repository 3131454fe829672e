"""CT — Confusion Training (Qi et al., USENIX Security 2023), for image datasets.

Idea: train on the inspected set D while fitting a small trusted reserve R under deliberately
wrong ("confusion") labels with a large weight. Normal features lose their link to the labels;
the trigger -> target shortcut of poison samples is a different feature and survives, so after
confusion only poison samples are still predicted as their label. Rounds of *poison
distillation* retrain on the lowest-loss part of D, each round richer in poison. A per-class
two-Gaussian likelihood-ratio test on the last confused model's features picks the target
class(es); their still-fitted ("isolated") samples are flagged.

Two schedules:

* ``reference`` — the paper's settings for CIFAR-10 (batch 32, 100/100/40/40/40/40 pretraining
  epochs, 6000/2000 confusion steps, a separately trained base model for confusion labels).
* ``fast`` (default) — our schedule: larger batches, fewer epochs/steps scaled to the data,
  bf16 on CUDA, and confusion labels from the round-0 model instead of a separate base model.
  Its TPR/FPR against ``reference`` are measured in ``docs/benchmarks.md``.

Deviations from the reference code, each documented in ``docs/ct.md``: seeded; distillation
top-up adds each class's lowest-loss samples without duplicates (the reference can append the
same index twice); the two-Gaussian test uses sklearn's Gaussian fit with a diagonal 1e-3
regulariser; the ``fast`` schedule's decision rule adds a consistency check (see
:func:`decide_classes`) so clean datasets are not flagged, and its class test also reads the last
round's pretrained model (see :meth:`ConfusionTraining._decide`).
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
    Preprocess,
    TrainSpec,
    autocast,
    global_pool,
    infer,
    make_sgd,
    planned_batches,
    pooled_map,
    stratified_split,
    train_supervised,
)
from ..errors import SanitizeError
from ..models import Classifier, build_model, default_arch
from ..progress import Progress, Silent
from ..result import DetectionResult


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
    holdout_fraction: float = 0.0  # reserve share kept out of training for the clean-fit check
    pretrain_batch_size: int | None = None
    # The class test also reads the last round's pretrained model (see ConfusionTraining._decide)
    cluster_test_on_pretrained: bool = False

    @property
    def pretrain_batch(self) -> int:
        return self.pretrain_batch_size or self.batch_size


REFERENCE = CTSchedule(
    name="reference",
    rounds=(
        RoundSpec(100, 6000, 1e-3, 20, 2, 1 / 2, 50),
        RoundSpec(100, 6000, 1e-3, 20, 2, 1 / 5, 50),
        RoundSpec(40, 6000, 1e-3, 20, 4, 1 / 25, 50),
        RoundSpec(40, 6000, 1e-2, 30, 8, 1 / 50, 50),
        RoundSpec(40, 2000, 1e-2, 30, 8, 1 / 100, 100),
        RoundSpec(40, 2000, 1e-2, 15, 2, None),
    ),
    batch_size=32,
    inspect_batch_size=32,
    pretrain_lr=0.01,
    base=TrainSpec(epochs=100, batch_size=128, lr=0.1, momentum=0.9, weight_decay=1e-4,
                   augment=True, lr_schedule="multistep"),
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
    holdout_fraction=0.2,
    cluster_test_on_pretrained=True,
)

SCHEDULES = {s.name: s for s in (FAST, REFERENCE)}


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


OVERWHELMING_RATIO = 1e3  # mean log-likelihood gain > 6.9 nats: a tight, separate cluster


def decide_classes(ratios: np.ndarray, isolated_fraction: np.ndarray,
                   clean_fit_rate: np.ndarray | None = None) -> list[int]:
    """Which classes are backdoor targets.

    Reference rule: the class with the largest likelihood ratio if it exceeds 1.5, and any class
    whose ratio exceeds 2. With ``clean_fit_rate`` (the ``fast`` schedule's held-out check) a
    class must also have more fitted ("isolated") samples than clean data of that class explains:
    its isolated fraction must exceed the rate at which held-out clean reserve images of the class
    stay fitted, and either exceed it twice over or come with an overwhelming cluster separation
    (ratio > 1e3). A backdoor target passes (its poison is fitted through the trigger and forms a
    tight cluster); a class that confusion merely failed to erase on a clean dataset does not,
    which removes the reference's false alarms on clean data. The held-out estimate rests on
    tens of images per class, hence the ratio escape for low poison rates.
    """
    top = float(ratios.max()) if len(ratios) else 0.0
    chosen = [c for c, r in enumerate(ratios) if (r == top and r > 1.5) or r > 2.0]
    if clean_fit_rate is None:
        return chosen
    return [c for c in chosen
            if isolated_fraction[c] > clean_fit_rate[c]
            and (isolated_fraction[c] > 2.0 * clean_fit_rate[c] or ratios[c] > OVERWHELMING_RATIO)]


def held_out_fit_rate(fitted: np.ndarray, labels: np.ndarray, num_classes: int,
                      prior_weight: float = 10.0) -> np.ndarray:
    """Per-class rate at which held-out clean images keep their label.

    A reserve holds only tens of images per class, so each class's rate is shrunk toward the
    pooled rate over all held-out images (a beta prior worth ``prior_weight`` images): a class
    with no held-out images gets the pooled rate, a well-sampled class mostly its own.
    """
    pooled = (fitted.sum() + 0.5) / (len(fitted) + 1.0)
    rates = np.empty(num_classes)
    for c in range(num_classes):
        members = labels == c
        rates[c] = (fitted[members].sum() + prior_weight * pooled) / (members.sum() + prior_weight)
    return rates


def split_holdout(reserve: ImageDataset, fraction: float, gen: torch.Generator
                  ) -> tuple[ImageDataset, ImageDataset | None]:
    """Stratified split of the reserve into (confusion part, held-out part)."""
    if fraction <= 0:
        return reserve, None
    kept, held = stratified_split(reserve.labels, reserve.num_classes, fraction, gen)
    if len(held) == 0:
        return reserve, None
    return reserve.subset(kept), reserve.subset(held)


@dataclass
class ConfusionTraining:
    """Confusion Training detector (estimator-style: configure, then :meth:`detect`).

    >>> result = ConfusionTraining(schedule="fast", seed=0).detect(dataset, reserve)
    """

    schedule: str | CTSchedule = "fast"
    arch: str = "auto"
    device: str | torch.device = "auto"
    seed: int = 0
    progress: Progress | None = None

    def detect(self, data: ImageDataset, reserve: ImageDataset) -> DetectionResult:
        device = resolve_device(self.device)
        schedule = self.schedule if isinstance(self.schedule, CTSchedule) else get_schedule(self.schedule)
        check_reserve(reserve, data)
        if len(data) < 2 * data.num_classes:
            raise SanitizeError(f"dataset has {len(data)} images: too few to inspect")
        arch = default_arch(device, min(data.size)) if self.arch == "auto" else self.arch
        progress = self.progress or Silent()
        gen = seed_everything(self.seed)
        timer = PhaseTimer(device)
        data, reserve = data.to(device), reserve.to(device)
        reserve, holdout = split_holdout(reserve, schedule.holdout_fraction, gen)
        prep = Preprocess.fit(data.images)
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

        reader = None
        if schedule.cluster_test_on_pretrained:
            reader = new_model()
            reader.load_state_dict(pretrained)
        with timer("detect"), progress.phase("detect", 1) as adv:
            result = self._decide(model, data, holdout, prep, reader)
            adv()
        result.timings = timer.timings
        result.seed = self.seed
        result.device = describe(device)
        result.settings = {"schedule": schedule.name, "arch": arch,
                           "rounds": [asdict(s) for s in schedule.rounds],
                           "batch_size": schedule.batch_size,
                           "base_model": schedule.base is not None,
                           "precision": "bf16 autocast" if device.type == "cuda" else "float32"}
        if self.arch == "auto":
            result.notes.append(f"--arch auto chose {arch} for {describe(device)} at "
                                f"{data.size[0]}x{data.size[1]} px")
        return result

    def _decide(self, model: Classifier, data: ImageDataset, holdout: ImageDataset | None,
                prep: Preprocess, pretrained: Classifier | None = None) -> DetectionResult:
        """Pick the target classes and flag their isolated samples.

        ``isolated`` (still predicted as its label) always comes from the confused model. The
        cluster test reads the confused model's penultimate features, as the reference does, and,
        when ``pretrained`` is given (``fast``), also the last round's pretrained model; a class's
        statistic is the larger of the two. Confusion pulls every feature towards the reserve's
        wrong labels, and in a small network that can merge the poison with clean images of its
        class even though the poison stays fitted: on 3,000 CIFAR-10 images with the CPU's small
        CNN the target's ratio was 1.16-1.19 in the confused model and 1e10-1e14 in the last
        pretrained model, which was trained on the distilled, poison-rich set (docs/ct.md). That
        model is read before pooling (:func:`pooled_map`) where the architecture allows, because
        a small trigger is diluted by global average pooling. Reading a second model can only
        raise a class's statistic, so the held-out clean-fit check guards clean classes.
        """
        logits, feats = infer(model, data.images, prep, features=True)
        labels = data.labels
        isolated = (logits.argmax(1) == labels).cpu().numpy()
        label_prob = torch.softmax(logits, 1).gather(1, labels[:, None]).squeeze(1).cpu().numpy()
        labels_np = labels.cpu().numpy()
        feats_np = feats.cpu().numpy()
        c = data.num_classes
        sizes = np.bincount(labels_np, minlength=c)
        counts = np.bincount(labels_np[isolated], minlength=c)
        confused_ratios = np.ones(c)
        pretrained_ratios = np.ones(c) if pretrained is not None else None
        for cls in range(c):
            members = labels_np == cls
            if sizes[cls] < 4:
                continue
            confused_ratios[cls] = likelihood_ratio(feats_np[members], isolated[members])
            if pretrained is not None:
                images = data.images[torch.from_numpy(np.flatnonzero(members)).to(data.images.device)]
                pretrained_ratios[cls] = likelihood_ratio(last_hidden_layer(pretrained, images, prep),
                                                          isolated[members])
        ratios = confused_ratios if pretrained_ratios is None else np.maximum(confused_ratios, pretrained_ratios)
        fraction = counts / np.maximum(sizes, 1)
        fit_rate = None
        if holdout is not None:
            held_fitted = (infer(model, holdout.images, prep)[0].argmax(1) == holdout.labels).cpu().numpy()
            fit_rate = held_out_fit_rate(held_fitted, holdout.labels.cpu().numpy(), c)
        suspected = decide_classes(ratios, fraction, fit_rate)
        flagged = isolated & np.isin(labels_np, suspected)
        stats = [{"class": cls, "n_samples": int(sizes[cls]), "n_isolated": int(counts[cls]),
                  "likelihood_ratio": float(ratios[cls]),
                  "likelihood_ratio_confused": float(confused_ratios[cls]),
                  "likelihood_ratio_pretrained": None if pretrained_ratios is None else float(pretrained_ratios[cls]),
                  "held_out_fit_rate": None if fit_rate is None else float(fit_rate[cls]),
                  "suspected": cls in suspected}
                 for cls in range(c)]
        return DetectionResult("ct", scores=label_prob, flagged=flagged, suspected_classes=suspected,
                               class_stats=stats)


def last_hidden_layer(model: Classifier, images: torch.Tensor, prep: Preprocess) -> np.ndarray:
    """The activation map before global pooling, or the pooled features if the model has no pool module."""
    if global_pool(model) is not None:
        return pooled_map(model, images, prep).numpy()
    return infer(model, images, prep, features=True)[1].cpu().numpy()


def ct(data: ImageDataset, reserve: ImageDataset, *, schedule: str | CTSchedule = "fast",
       arch: str = "auto", device: str | torch.device = "auto", seed: int = 0,
       progress: Progress | None = None) -> DetectionResult:
    """Run Confusion Training on ``data`` with the trusted ``reserve``; see :class:`ConfusionTraining`."""
    return ConfusionTraining(schedule, arch, device, seed, progress).detect(data, reserve)


def with_overrides(schedule: CTSchedule, **changes) -> CTSchedule:
    """A copy of ``schedule`` with some fields changed (for experiments and tests)."""
    return replace(schedule, **changes)
