"""CT — Confusion Training (Qi et al., USENIX Security 2023), for image folders and feature rows.

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
checked against the data before training (:mod:`sanitize.data.reserve_fit`).

The package: :mod:`.schedules`, :mod:`.distillation` (confusion training and the rounds),
:mod:`.decision` (the paper's likelihood-ratio rule), :mod:`.detector` (image folders), and
:mod:`.rows` (feature rows such as EMBER, sharing the distillation and the class test).
"""

from __future__ import annotations

from .decision import (
    class_ratios,
    decide_classes,
    likelihood_ratio,
)
from .detector import (
    ConfusionTraining,
    ct,
)
from .distillation import (
    class_frequency_weights,
    confusion_train,
    distill,
    fewest_samples,
    split_canaries,
    with_canaries,
)
from .rows import (
    REFERENCE_BUDGET,
    FeatureConfusionTraining,
    FeatureCTSchedule,
    FeatureRound,
    RowPool,
    Standardise,
    batch,
    ember_mlp,
    get_feature_schedule,
    pretrain,
    row_losses,
)
from .schedules import (
    FAST,
    REFERENCE,
    REFERENCE_GTSRB,
    SCHEDULES,
    CTSchedule,
    RoundSpec,
    get_schedule,
)

__all__ = [
    "CTSchedule", "ConfusionTraining", "FAST", "FeatureCTSchedule", "FeatureConfusionTraining",
    "FeatureRound", "REFERENCE", "REFERENCE_BUDGET", "REFERENCE_GTSRB", "RoundSpec", "RowPool", "SCHEDULES",
    "Standardise", "batch", "class_frequency_weights", "class_ratios", "confusion_train", "ct",
    "decide_classes", "distill", "ember_mlp", "fewest_samples", "get_feature_schedule", "get_schedule",
    "likelihood_ratio", "pretrain", "row_losses", "split_canaries", "with_canaries",
]
