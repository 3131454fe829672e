"""The ASSET estimator: inputs, extractor, offset loop, threshold, class test."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ...data.images import ImageDataset, check_labelled
from ...data.rows import FeatureDataset
from ...domains import check_arch, check_seed, check_stream
from ...errors import ParameterError, SanitizeError
from ...nn.contrastive import ContrastiveSpec
from ...nn.devices import PhaseTimer, describe, resolve_device, seed_everything
from ...nn.distributed import current, local_device
from ...nn.encoders import NORMALIZATIONS, Encoder
from ...nn.engine import (
    PRECISION,
    train_supervised,
)
from ...progress import Progress, Silent
from ...result import DetectionResult
from ..canaries import DEFAULT_ALPHA, check_alpha, set_wide_evidence, share_notes
from .inputs import (
    Inputs,
    TrainModeMap,
    extractor_inputs,
    extractor_spec,
    feature_inputs,
    image_inputs,
    penultimate,
    with_canaries,
)
from .offset import offset_loop, per_sample_loss
from .paradigms import (
    OBJECTIVES,
    SSL_CANARY_FRACTION,
    check_paradigm,
    resolve_encoder,
    ssl_features,
    transfer_features,
    transfer_inputs,
    unlabelled_inputs,
)
from .schedules import SELECTIONS, AssetSchedule, get_schedule
from .threshold import (
    canary_p_values,
    class_log_loss_medians,
    demo_threshold,
    level_set_z,
    loss_threshold,
    own_canary_p_values,
    suspected_from_flags,
)

ModelFactory = Callable[[], nn.Module]
Dataset = ImageDataset | FeatureDataset


@dataclass(kw_only=True)
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
    reserve_check: bool = True  # refuse a reserve that does not fit the data (sanitize.data.reserve_fit)
    paradigm: str = "supervised"  # or "transfer", "self-supervised" (see .paradigms)
    encoder: str | Path | nn.Module | Encoder | None = None  # transfer (required) / self-supervised: a frozen encoder
    input_size: int | None = None  # the encoder's input side (default: the images' own)
    normalize: str = "imagenet"  # the encoder's input normalisation: "imagenet" or "data"
    ssl_epochs: int | None = None  # self-supervised: SimCLR epochs (default ContrastiveSpec's, with its step floor)
    stream: bool | None = None  # supervised images: kept on the host, a batch at a time on the device (None: if needed)

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

    def inputs(self, data: Dataset, reserve: Dataset, device: torch.device, encoder: Encoder | None = None
               ) -> Inputs:
        """Validate the data and put it on ``device`` with its model and preprocessing."""
        check_paradigm(self.paradigm, self.encoder, isinstance(data, FeatureDataset))
        if self.paradigm == "transfer":
            return transfer_inputs(data, reserve, encoder, device, input_size=self.input_size,
                                   normalize=self.normalize, reserve_check=self.reserve_check)
        if self.paradigm == "self-supervised":
            return unlabelled_inputs(data, reserve, self.arch, device, reserve_check=self.reserve_check)
        if isinstance(data, FeatureDataset) != isinstance(reserve, FeatureDataset):
            raise SanitizeError("the reserve must be the same kind of data as the dataset (images or feature rows)")
        if isinstance(data, FeatureDataset):
            if self.augment:
                raise SanitizeError("feature rows have no augmentation: leave augment unset")
            inputs = feature_inputs(data, reserve, "auto" if self.model_factory else self.arch, device,
                                    self.reserve_check)
        elif isinstance(data, ImageDataset):
            if self.arch == "ember_mlp":
                raise SanitizeError("arch ember_mlp is the feature-row network; image folders use a CNN")
            check_labelled(data, "asset --paradigm supervised")
            inputs = image_inputs(data, reserve, self.arch, device, custom=self.model_factory is not None,
                                  reserve_check=self.reserve_check, stream=self.stream)
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

    def check(self) -> None:
        """Validate the settings, before any data is read (the schedule with its overrides included)."""
        self.resolved_schedule()
        check_seed(self.seed)
        check_stream(self.stream)
        if self.stream and self.paradigm != "supervised":
            raise SanitizeError("stream applies to the supervised paradigm (the others read every image through "
                                "their encoder once)")
        if self.model_factory is None:
            check_arch(self.arch, also=("ember_mlp",))
        check_paradigm(self.paradigm, self.encoder)
        if self.paradigm != "supervised" and (self.model_factory is not None or self.preprocess is not None):
            raise SanitizeError("model_factory and preprocess apply to the supervised paradigm")
        if self.normalize not in NORMALIZATIONS:
            raise ParameterError("normalize", self.normalize, f"expected one of {', '.join(NORMALIZATIONS)}")
        if self.input_size is not None and not 8 <= self.input_size <= 4096:
            raise ParameterError("input_size", self.input_size, "expected a side between 8 and 4096 pixels")
        if self.input_size is not None and self.encoder is None:
            raise SanitizeError("--input-size applies with --encoder (the frozen encoder's input side)")
        if self.ssl_epochs is not None and self.ssl_epochs < 1:
            raise ParameterError("ssl_epochs", self.ssl_epochs, "expected at least 1")

    def detect(self, data: Dataset, reserve: Dataset) -> DetectionResult:
        """Train the extractor on the inspected samples, run the offset loop, score and threshold."""
        self.check()
        device = local_device(resolve_device(self.device))
        schedule = self.resolved_schedule(features=isinstance(data, FeatureDataset))
        if self.paradigm == "self-supervised":  # one global test: its power grows with the canary count
            schedule = replace(schedule, canary_fraction=max(schedule.canary_fraction, SSL_CANARY_FRACTION))
        progress = self.progress or Silent()
        gen = seed_everything(self.seed)
        timer = PhaseTimer(device)
        with timer("load to device"):
            encoder = resolve_encoder(self.encoder)
            inp = self.inputs(data, reserve, device, encoder)
            if schedule.canary_fraction > 0:
                inp = with_canaries(inp, schedule.canary_fraction, gen)

        d_feats, r_feats, paradigm_settings = self._concentration_features(inp, schedule, encoder, gen, progress,
                                                                           timer)
        objective = OBJECTIVES[self.paradigm]
        steps = schedule.offset_steps(len(inp.y))
        with timer("offset loop"), progress.phase("offset loop", steps) as adv:
            offset = inp.factory()
            log = offset_loop(offset, inp.x, inp.y, inp.reserve_x, d_feats, r_feats, schedule, inp.prep, gen, adv,
                              schedule.bn_mode, inp.n_canaries, objective)
        with timer("score"), progress.phase("score", 1) as adv:
            losses = per_sample_loss(offset, inp.x, inp.y, inp.prep, objective=objective).cpu().numpy()
            labels = inp.y.cpu().numpy()
            if inp.n_canaries:
                class_shift = class_log_loss_medians(losses, labels, inp.num_classes)
            else:
                reserve_losses = per_sample_loss(offset, inp.reserve_x, inp.reserve_y, inp.prep,
                                                 objective=objective).cpu().numpy()
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
        if self.paradigm == "self-supervised":
            result = global_result(inp, losses[:n], flagged, self.alpha)
        else:
            result = self._result(inp, losses[:n], flagged, labels[:n], class_shift, self.alpha, own_p)
        result.finish(timings=timer.timings, seed=self.seed, device=describe(device),
                      settings={"schedule": schedule.name, "paradigm": self.paradigm, **paradigm_settings,
                                "arch": inp.arch, **_schedule_settings(schedule),
                                "offset_steps": log.steps,
                                "empty_selections": log.empty_selections, "selected_total": log.selected,
                                **({"global_selected": log.global_selected} if log.global_selected is not None
                                   else {}),
                                "canaries": inp.n_canaries, "threshold": cut, **inp.settings,
                                "precision": PRECISION[device.type == "cuda"],
                                "streamed": bool(getattr(inp.x, "streamed", False)) and inp.image_side is not None,
                                "processes": current().size})
        if log.empty_selections:
            result.notes.append(f"{log.empty_selections} of {log.steps} offset steps selected nothing "
                                f"(max step skipped)")
        result.notes.extend(inp.notes)
        if self.paradigm == "self-supervised":
            result.notes.append("the self-supervised paradigm is experimental: on digits it found a 5 % BadNet at one "
                                "of two seeds and a 5 % Blend at neither (docs/asset.md, Known limits); a pass is weak "
                                "evidence")
        return result

    def _concentration_features(self, inp: Inputs, schedule: AssetSchedule, encoder: Encoder | None,
                                gen: torch.Generator, progress: Progress, timer: PhaseTimer
                                ) -> tuple[Any, Any, dict[str, Any]]:
        """What the concentration step reads for D and the reserve, by paradigm.

        ``supervised``: a classifier trained on D (and, ``fast``, the reserve) gives its
        penultimate features (``reference``: its last activation map, in train mode).
        ``transfer``: the frozen features joined with the label (:func:`transfer_features`).
        ``self-supervised``: a SimCLR encoder's (or the given encoder's) features.
        """
        if self.paradigm == "transfer":
            return transfer_features(inp)
        if self.paradigm == "self-supervised":
            spec = ContrastiveSpec() if self.ssl_epochs is None else ContrastiveSpec(epochs=self.ssl_epochs,
                                                                                       min_steps=0)
            with timer("encoder"):
                return ssl_features(inp, encoder, spec, schedule.extractor_sees_reserve, gen, progress,
                                    input_size=self.input_size, normalize=self.normalize)
        train_x, train_y = extractor_inputs(inp, schedule.extractor_sees_reserve)
        base_spec = extractor_spec(schedule, len(train_y), inp.image_side, self.augment)
        with timer("extractor"), progress.phase("feature extractor", base_spec.epochs) as adv:
            extractor = train_supervised(inp.factory(), train_x, train_y, base_spec, inp.prep, gen, on_epoch=adv)
        with timer("features"):
            if schedule.features == "map" and inp.image_side is not None:
                return (TrainModeMap(extractor, inp.x, inp.prep), TrainModeMap(extractor, inp.reserve_x, inp.prep),
                        {})
            embed = inp.embed or penultimate
            return embed(extractor, inp.x, inp.prep), embed(extractor, inp.reserve_x, inp.prep), {}

    @staticmethod
    def _result(inp: Inputs, losses: np.ndarray, flagged: np.ndarray, labels: np.ndarray,
                class_shift: np.ndarray, alpha: float, own_p: np.ndarray | None = None) -> DetectionResult:
        """Scores and flags of every input row (rows not inspected: score 0, never flagged), per-class stats.

        With canaries a class is suspected when its pooled p-value is below ``alpha`` over the
        classes. Its p-value against its own canaries (``own_p``) is reported beside it but does
        not decide, unlike CT's: with a fifth of the reserve as canaries, requiring it would
        cost ASSET the power to name a target at 20 reserve images per class (4 canaries of its
        own), and where the pooled test named a clean class (GTSRB) the veto would not have
        stopped it (docs/asset.md, "The class test").
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
        evidence: dict = {}
        if p_values is not None:  # a class the test clears keeps its samples: they are what clean data shows
            evidence, spread = set_wide_evidence(int(flagged.sum()), len(flagged), inp.n_canaries, suspected, alpha,
                                                 where="above")
            notes.extend(spread)
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
                               class_stats=stats, notes=notes, settings={"set_wide": evidence} if evidence else {})


def global_result(inp: Inputs, scores: np.ndarray, flagged: np.ndarray, alpha: float) -> DetectionResult:
    """The self-supervised decision: one global test, no classes.

    The samples above every canary are flagged only when there are more of them than clean data
    gives (the canary tail ``C(n, k) / C(n + m, k)`` below ``alpha``, :func:`canary_p_values` over
    the one pseudo-class); otherwise they are kept, as a class the supervised test clears keeps its.
    """
    n, m = len(flagged), inp.n_canaries
    k = int(flagged.sum())
    p_value = float(canary_p_values(flagged, np.zeros(n, dtype=np.int64), 1, m)[0]) if m else float("nan")
    found = bool(m) and p_value < alpha
    fewest = fewest_findable(n, m, alpha)
    notes = []
    if not m:
        notes.append("no canaries (reserve too small): the global test cannot run, nothing was flagged")
    elif k and not found:
        notes.append(f"{k} sample(s) above every canary, as many as clean data gives by chance (p = {p_value:.2g}): "
                     f"kept")
    if m and not found:
        notes.append(f"with {m} canaries for {n} samples the global test finds poison only when at least {fewest} "
                     f"samples ({fewest / max(1, n):.1%}) stand above every canary; a larger reserve lowers this")
    kept_flags = flagged if found else np.zeros_like(flagged)
    all_scores = np.zeros(inp.n_rows)
    all_flags = np.zeros(inp.n_rows, dtype=bool)
    all_scores[inp.inspected] = scores
    all_flags[inp.inspected] = kept_flags
    evidence = {"n_samples": n, "n_canaries": m, "n_beyond_cut": k, "p_value": p_value, "alpha": alpha,
                "poison_found": found, "fewest_findable": fewest}
    return DetectionResult("asset", scores=all_scores, flagged=all_flags, suspected_classes=[], class_stats=[],
                           notes=notes, settings={"global_test": evidence})


def fewest_findable(n: int, m: int, alpha: float) -> int:
    """The smallest count above every one of ``m`` canaries, among ``n`` samples, whose chance tail
    ``C(n, k) / C(n + m, k)`` falls below ``alpha``: no test on these canaries finds less poison.
    About ``ln(1/alpha) * n / m``, so a global test over a large set needs many canaries."""
    if m <= 0:
        return n + 1
    k, tail = 0, 1.0
    while tail >= alpha and k < n:
        tail *= (n - k) / (n + m - k)
        k += 1
    return k if tail < alpha else n + 1


def _schedule_settings(schedule: AssetSchedule) -> dict[str, Any]:
    settings = asdict(schedule)
    settings.pop("name")
    return settings


def asset(data: Dataset, reserve: Dataset, **settings: Any) -> DetectionResult:
    """Run ASSET on ``data`` with the trusted ``reserve``; keyword settings as in :class:`ASSET`."""
    return ASSET(**settings).detect(data, reserve)
