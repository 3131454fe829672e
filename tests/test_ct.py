"""CT detection on real data with known ground truth, plus the pieces CT is built from."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sanitize import ct, from_arrays
from sanitize.attacks import badnet
from sanitize.detectors.ct import (
    FAST,
    REFERENCE,
    decide_classes,
    distill,
    held_out_fit_rate,
    last_hidden_layer,
    likelihood_ratio,
    split_holdout,
    with_overrides,
)
from sanitize.engine import Preprocess, infer
from sanitize.errors import SanitizeError
from sanitize.models import build_model

from .conftest import assert_seeded_on_cpu, digits_split, rates, shared_loader


@pytest.mark.parametrize("rate,seed", [(0.02, 0), (0.05, 0), (0.1, 0), (0.02, 1), (0.05, 1), (0.1, 1)])
def test_ct_finds_corner_patch_on_digits(rate: float, seed: int) -> None:
    data, reserve = digits_split(seed)
    poisoned = badnet(data, rate, target=0, seed=seed)
    result = ct(poisoned.dataset, reserve, device="cpu", seed=seed)
    tpr, fpr = rates(result.flagged, poisoned.is_poison)
    assert tpr >= 0.9, result.class_stats
    assert fpr <= 0.05, result.class_stats
    assert result.suspected_classes == [0]


@pytest.mark.parametrize("seed", [0, 1])
def test_ct_flags_almost_nothing_on_clean_digits(seed: int) -> None:
    data, reserve = digits_split(seed)
    result = ct(data, reserve, device="cpu", seed=seed)
    assert result.n_flagged <= 0.01 * len(data), result.class_stats


def tiny_schedule():
    """A short schedule so determinism can be checked twice in seconds."""
    rounds = tuple(with_overrides(r, pretrain_epochs=1, confusion_steps=20, reserve_passes=None)
                   for r in FAST.rounds[:3])
    rounds = rounds[:-1] + (with_overrides(rounds[-1], keep_ratio=None, topup_divisor=None),)
    return with_overrides(FAST, rounds=rounds, min_pretrain_steps=5, min_confusion_steps=0)


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
    for stat in result.class_stats:  # fast: the class test reads the confused and the pretrained model
        assert stat["likelihood_ratio"] == max(stat["likelihood_ratio_confused"], stat["likelihood_ratio_pretrained"])


def test_reference_class_test_reads_the_confused_model_only() -> None:
    data, reserve = digits_split(0)
    reference_like = with_overrides(tiny_schedule(), cluster_test_on_pretrained=False)
    result = ct(data, reserve, schedule=reference_like, device="cpu", seed=0)
    assert not REFERENCE.cluster_test_on_pretrained
    for stat in result.class_stats:
        assert stat["likelihood_ratio_pretrained"] is None
        assert stat["likelihood_ratio"] == stat["likelihood_ratio_confused"]


def test_last_hidden_layer_reads_the_map_before_pooling() -> None:
    data, _ = digits_split(0)
    model = build_model("small_cnn", 10, data.channels, 8)
    prep = Preprocess.fit(data.images)
    maps = last_hidden_layer(model, data.images[:5], prep)
    assert maps.shape == (5, 128 * 4 * 4)  # 8 px -> one 2x pool -> 4x4 map of 128 channels
    pooled = infer(model, data.images[:5], prep, features=True)[1].numpy()
    np.testing.assert_allclose(maps.reshape(5, 128, 16).mean(axis=2), pooled, rtol=1e-4, atol=1e-5)


def test_reference_schedule_is_the_papers() -> None:
    assert [r.pretrain_epochs for r in REFERENCE.rounds] == [100, 100, 40, 40, 40, 40]
    assert [r.confusion_steps for r in REFERENCE.rounds] == [6000] * 4 + [2000] * 2
    assert [r.lam for r in REFERENCE.rounds] == [20, 20, 20, 30, 30, 15]
    assert [r.lr for r in REFERENCE.rounds] == [1e-3] * 3 + [1e-2] * 3
    assert [r.keep_ratio for r in REFERENCE.rounds] == [1 / 2, 1 / 5, 1 / 25, 1 / 50, 1 / 100, None]
    assert REFERENCE.batch_size == REFERENCE.inspect_batch_size == 32
    assert REFERENCE.base is not None and REFERENCE.base.epochs == 100
    assert REFERENCE.holdout_fraction == 0


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


def test_decision_rule() -> None:
    ratios = np.array([1.0, 1e6, 1.6, 3.0])
    frac = np.array([0.0, 0.10, 0.30, 0.02])
    # reference: the max (> 1.5) and any class above 2
    assert decide_classes(ratios, frac) == [1, 3]
    # held-out check: class 3's isolated share (2%) is what clean images of class 3 show (3%)
    fit = np.array([0.01, 0.01, 0.01, 0.03])
    assert decide_classes(ratios, frac, fit) == [1]
    # a small excess is accepted only with an overwhelming ratio
    assert decide_classes(np.array([1.0, 1e6]), np.array([0.0, 0.09]), np.array([0.05, 0.05])) == [1]
    assert decide_classes(np.array([1.0, 10.0]), np.array([0.0, 0.09]), np.array([0.05, 0.05])) == []


def test_held_out_rate_shrinks_sparse_classes_to_the_pool() -> None:
    fitted = np.array([0] * 40 + [1] * 2 + [0] * 38)
    labels = np.array([0] * 40 + [1] * 40)
    rates_ = held_out_fit_rate(fitted, labels, 3)
    assert rates_[0] < rates_[1]
    assert rates_[2] == pytest.approx((2 + 0.5) / 81)  # no held-out images: the pooled rate


def test_split_holdout_is_stratified() -> None:
    _, reserve = digits_split(0)
    train, held = split_holdout(reserve, 0.2, torch.Generator().manual_seed(0))
    assert len(train) + len(held) == len(reserve)
    assert set(train.paths).isdisjoint(held.paths)
    counts = held.class_counts() / reserve.class_counts()
    assert np.all(np.abs(counts - 0.2) < 0.05)


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
