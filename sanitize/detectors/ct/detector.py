"""The Confusion Training estimator for image folders."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch.nn import functional as F

from ...data.images import ImageDataset, check_labelled
from ...data.reserve_fit import fitted_reserve
from ...domains import check_arch, check_seed, check_stream
from ...errors import SanitizeError
from ...nn.devices import PhaseTimer, describe, resolve_device, seed_everything
from ...nn.distributed import current, local_device
from ...nn.engine import (
    PRECISION,
    Preprocess,
    TrainSpec,
    infer,
    train_supervised,
)
from ...nn.models import Classifier, build_model, default_arch
from ...nn.samples import concat_rows, take_rows
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
from .decision import class_ratios, decide_classes
from .distillation import (
    class_frequency_weights,
    confusion_train,
    distill,
    fewest_samples,
    split_canaries,
    with_canaries,
)
from .schedules import CTSchedule, get_schedule

# A suspected class loses its samples below the canaries' FLAG_SHARE quantile
# (sanitize.detectors.canaries.flag_cut): at most about this share of its clean samples.
FLAG_SHARE = 0.04


@dataclass(kw_only=True)
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
    reserve_check: bool = True  # refuse a reserve that does not fit the data (sanitize.data.reserve_fit)
    stream: bool | None = None  # keep the images on the host, a batch at a time on the device (None: when needed)
    # Diagnostics (benchmarks/ct_rounds.py): called after each distillation with the round, the
    # confused model's per-sample losses (float32, inspected samples first, then canaries) and
    # the indices the next round keeps. None (the default) costs nothing.
    on_round: Callable[[int, np.ndarray, np.ndarray], None] | None = None

    def check(self) -> None:
        """Validate the settings, before any data is read (every detector has this one place)."""
        if not isinstance(self.schedule, CTSchedule):
            get_schedule(self.schedule)  # an unknown name is refused with the choices
        check_alpha(self.alpha)
        check_seed(self.seed)
        check_arch(self.arch, also=("ember_mlp",))
        check_stream(self.stream)

    def detect(self, data: ImageDataset, reserve: ImageDataset) -> DetectionResult:
        from ...data.rows import FeatureDataset

        self.check()
        if isinstance(data, FeatureDataset):  # feature rows (EMBER): the paper's feature variant
            from .rows import FeatureConfusionTraining

            if current().parallel:
                raise SanitizeError("torchrun: ct on feature rows runs in one process (image folders run "
                                    "data-parallel)")

            if isinstance(self.schedule, CTSchedule):
                raise SanitizeError("feature rows take a feature schedule (fast or reference), not an image one")
            return FeatureConfusionTraining(schedule=self.schedule, arch=self.arch, device=self.device, seed=self.seed,
                                            progress=self.progress, alpha=self.alpha,
                                            reserve_check=self.reserve_check).detect(data, reserve)
        if self.arch == "ember_mlp":
            raise SanitizeError("arch ember_mlp is the feature-row network; image folders use a CNN")
        check_labelled(data, "ct")  # confusion relabels samples, and the class test reads labels
        device = local_device(resolve_device(self.device))
        schedule = self.schedule if isinstance(self.schedule, CTSchedule) else get_schedule(self.schedule)
        data.check_reserve(reserve)
        need = max(2 * data.num_classes, fewest_samples([r.keep_ratio for r in schedule.rounds if r.keep_ratio]))
        if len(data) < need:
            raise SanitizeError(f"dataset has {len(data)} images: ct ({schedule.name}) needs at least {need} "
                                f"(its distillation rounds keep as little as "
                                f"{min(r.keep_ratio or 1 for r in schedule.rounds):.0%} of them)")
        arch = default_arch(device, min(data.size)) if self.arch == "auto" else self.arch
        progress = self.progress or Silent()
        gen = seed_everything(self.seed)
        timer = PhaseTimer(device)
        data, reserve = data.to(device, stream=self.stream), reserve.to(device)
        fit = None
        if self.reserve_check:
            with timer("reserve check"):
                reserve, fit = fitted_reserve(data, reserve, "images")
        reserve, canaries = split_canaries(reserve, schedule.canary_fraction, gen,
                                             fit.twin_groups if fit else None)
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
            images = take_rows(data.images, subset)
            if final:  # the reference adds the reserve, labels shifted by one, to the last pretraining
                images = concat_rows(images, reserve.images)
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
            if self.on_round is not None:
                self.on_round(r, losses.float().cpu().numpy(), subset.cpu().numpy())

        with timer("detect"), progress.phase("detect", 1) as adv:
            result = self._decide(model, data, prep, n_inspected)
            adv()
        result.finish(timings=timer.timings, seed=self.seed, device=describe(device),
                      notes_first=fit.notes if fit else [],
                      settings={"schedule": schedule.name, "arch": arch,
                                "rounds": [asdict(s) for s in schedule.rounds],
                                "batch_size": schedule.batch_size,
                                "base_model": schedule.base is not None,
                                "canaries": n - n_inspected,
                                "class_test": "canaries" if n > n_inspected else "likelihood ratio (the paper's)",
                                **({"alpha": self.alpha, "flag_share": FLAG_SHARE} if n > n_inspected else {}),
                                **({"reserve_check": fit.as_dict()} if fit else {}),
                                "precision": PRECISION[device.type == "cuda"], "streamed": data.streamed,
                                "processes": current().size})
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
        (not isolated: never below the cut); a suspected class loses its samples below the
        :data:`FLAG_SHARE` quantile of the canaries (docs/ct.md, "The test", step 4, says why
        neither all its isolated samples, as in the paper, nor only those below every canary).
        """
        logits, feats = infer(model, data.images, prep, features=True)
        labels = data.labels.cpu().numpy()
        isolated = (logits.argmax(1) == data.labels).cpu().numpy()
        log_losses = log_loss(logits, data.labels)
        label_prob = torch.softmax(logits, 1).gather(1, data.labels[:, None]).squeeze(1).cpu().numpy()
        c = data.num_classes
        d, k = slice(0, n_inspected), slice(n_inspected, None)
        ratios = class_ratios(feats[d].cpu().numpy(), labels[d], isolated[d], c)
        notes: list[str] = []
        evidence: dict = {}
        if n_inspected == len(labels):
            suspected = decide_classes(ratios)
            flagged = isolated & np.isin(labels, suspected)
            stats = [{"class": cls, "n_samples": int((labels == cls).sum()),
                      "n_isolated": int((isolated & (labels == cls)).sum())} for cls in range(c)]
        else:
            z, canary_z = class_robust_z(log_losses[d], labels[d], log_losses[k], labels[k], c, ~isolated[d],
                                         ~isolated[k])
            z[~isolated[d]], canary_z[~isolated[k]] = np.inf, np.inf
            flagged, suspected, stats, notes = canary_class_test(z, labels[d], canary_z, labels[k], c, self.alpha,
                                                                 isolated[d], isolated[k], class_names=data.classes,
                                                                 flag_share=FLAG_SHARE)
            evidence, spread = set_wide_evidence(*below_pooled_cut(z, labels[d], canary_z, labels[k], stats),
                                                 suspected, self.alpha)
            notes.extend(spread)
        for entry, ratio in zip(stats, ratios, strict=True):
            entry["likelihood_ratio"] = float(ratio)
            entry["suspected"] = entry["class"] in suspected
        notes.extend(share_notes(flagged, labels[d], suspected, data.classes))
        return DetectionResult("ct", scores=label_prob[d], flagged=flagged, suspected_classes=suspected,
                               class_stats=stats, notes=notes, settings={"set_wide": evidence} if evidence else {})


def ct(data: ImageDataset, reserve: ImageDataset, *, schedule: str | CTSchedule = "fast",
       arch: str = "auto", device: str | torch.device = "auto", seed: int = 0,
       progress: Progress | None = None, alpha: float = DEFAULT_ALPHA, stream: bool | None = None
       ) -> DetectionResult:
    """Run Confusion Training on ``data`` with the trusted ``reserve``; see :class:`ConfusionTraining`."""
    return ConfusionTraining(schedule=schedule, arch=arch, device=device, seed=seed, progress=progress,
                             alpha=alpha, stream=stream).detect(data, reserve)
