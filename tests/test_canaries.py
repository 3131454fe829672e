"""The calibrated class test shared by CT and ASSET (sanitize.detectors.canaries)."""

from __future__ import annotations

import numpy as np
import pytest

from sanitize.detectors.canaries import (
    CANARIES_PER_CUT,
    below_canary_p,
    below_lowest_canary_p,
    below_pooled_cut,
    broken_classes,
    canary_class_test,
    check_alpha,
    class_robust_z,
    detectable_count,
    flag_cut,
    log_loss,
    pooled_canaries,
    scan_canary_cuts,
    scan_orders,
    set_wide_evidence,
    share_notes,
)
from sanitize.errors import SanitizeError


def test_tail_probability_is_exact_for_exchangeable_samples() -> None:
    n, m = 40, 15
    assert below_lowest_canary_p(n, 1, m) == pytest.approx(n / (n + m))
    assert below_lowest_canary_p(n, 0, m) == 1.0
    rng = np.random.default_rng(0)
    draws = rng.random((40000, n + m))
    below = (draws[:, :n] < draws[:, n:].min(axis=1, keepdims=True)).sum(axis=1)
    for k in (1, 2, 4, 6):
        empirical = (below >= k).mean()
        assert empirical == pytest.approx(below_lowest_canary_p(n, k, m), abs=4 * np.sqrt(empirical / 40000) + 1e-3)


def test_tail_below_a_higher_canary_is_exact_for_exchangeable_samples() -> None:
    n, m = 60, 30
    assert below_canary_p(n, 5, m, 1) == below_lowest_canary_p(n, 5, m)
    rng = np.random.default_rng(3)
    draws = rng.random((40000, n + m))
    for order in (2, 3):
        cut = np.sort(draws[:, n:], axis=1)[:, order - 1:order]
        below = (draws[:, :n] < cut).sum(axis=1)
        for k in (2, 5, 9):
            empirical = (below >= k).mean()
            assert empirical == pytest.approx(below_canary_p(n, k, m, order),
                                              abs=4 * np.sqrt(empirical / 40000) + 1e-3)


def test_the_scan_grows_with_the_canaries_and_keeps_its_level() -> None:
    assert [scan_orders(m, None) for m in (0, 15, CANARIES_PER_CUT - 1, CANARIES_PER_CUT, 300)] == [0, 1, 1, 2, 4]
    assert scan_orders(10, 3) == 3 and scan_orders(2, 3) == 2
    rng = np.random.default_rng(4)
    runs, level, alarms = 4000, 0.05, 0
    for _ in range(runs):  # exchangeable: the Bonferroni over the cuts keeps the p-value valid
        alarms += scan_canary_cuts(rng.random(200), rng.random(300), None)[2] < level
    assert alarms / runs <= level + 3 * np.sqrt(level / runs)


def test_one_outlying_canary_does_not_hide_a_cluster_in_the_tail() -> None:
    """Feature rows with a rare extreme value give a canary far below the others (a row whose
    label the confused model fits with an enormous margin). A trigger cluster just above it, below
    every other canary, was invisible to a cut at the lowest canary (EMBER-format rows with label
    noise, docs/ember.md); the scan's second cut (CT on rows) sees it, and the flags reach the cut
    it used."""
    scores, labels, canary_scores, canary_labels = clean_run(np.random.default_rng(5), classes=2, n=5000, m=300,
                                                             shift=False)
    canary_scores[0] = -40.0  # class 0's outlying canary
    poison = np.flatnonzero(labels == 0)[:100]
    scores[poison] = np.sort(canary_scores)[1] - 0.5  # below every canary but the outlying one
    z, cz = class_robust_z(scores, labels, canary_scores, canary_labels, 2)
    only_lowest = canary_class_test(z, labels, cz, canary_labels, 2, 1e-3)  # the default: images' single cut
    assert only_lowest[1] == []
    flagged, suspected, stats, _ = canary_class_test(z, labels, cz, canary_labels, 2, 1e-3, cut_orders=None)
    assert suspected == [0] and flagged[poison].all() and flagged.sum() <= len(poison) + 10
    assert stats[0]["n_below_cut"] >= len(poison)


def test_detectable_count_is_the_first_significant_count() -> None:
    k = detectable_count(500, 200, 1e-4)
    assert below_lowest_canary_p(500, k, 200) < 1e-4 <= below_lowest_canary_p(500, k - 1, 200)
    assert detectable_count(10, 2, 1e-4) == 11  # two canaries can never make ten samples significant


def clean_run(rng: np.random.Generator, classes: int = 3, n: int = 300, m: int = 30, shift: bool = True):
    """Exchangeable log-scores per class, each class at its own location and scale."""
    labels, canary_labels = np.repeat(np.arange(classes), n), np.repeat(np.arange(classes), m)
    loc, scale = (rng.normal(0, 3, classes), rng.uniform(0.5, 2, classes)) if shift else (np.zeros(3), np.ones(3))
    scores = rng.normal(loc[labels], scale[labels])
    canary_scores = rng.normal(loc[canary_labels], scale[canary_labels])
    return scores, labels, canary_scores, canary_labels


def test_false_alarm_rate_holds_the_stated_level_on_clean_classes() -> None:
    alpha, runs, alarms = 0.05, 400, 0
    for seed in range(runs):
        scores, labels, canary_scores, canary_labels = clean_run(np.random.default_rng(seed))
        z, cz = class_robust_z(scores, labels, canary_scores, canary_labels, 3)
        _, suspected, _, _ = canary_class_test(z, labels, cz, canary_labels, 3, alpha)
        alarms += bool(suspected)
    assert alarms / runs <= alpha + 3 * np.sqrt(alpha / runs)  # family-wise, Bonferroni over the classes


def test_a_small_well_fitted_cluster_is_found_and_only_it_is_flagged() -> None:
    scores, labels, canary_scores, canary_labels = clean_run(np.random.default_rng(1), m=100)
    poison = np.flatnonzero(labels == 2)[:15]  # 5 % of class 2, fitted far better than any clean sample
    scores[poison] = scores[labels == 2].min() - 10
    z, cz = class_robust_z(scores, labels, canary_scores, canary_labels, 3)
    flagged, suspected, stats, notes = canary_class_test(z, labels, cz, canary_labels, 3, 1e-3)
    assert suspected == [2] and set(np.flatnonzero(flagged)) >= set(poison)
    assert flagged.sum() <= len(poison) + 3 and stats[2]["p_value"] < 1e-4 and not notes
    assert stats[2]["n_below_cut"] >= len(poison) >= stats[2]["detectable_count"]


def test_a_class_whose_canaries_stay_fitted_is_tested_against_its_own() -> None:
    scores, labels, canary_scores, canary_labels = clean_run(np.random.default_rng(2))
    fitted, canary_fitted = labels == 1, canary_labels == 1  # confusion did not erase class 1, D nor canaries
    scores[fitted] -= 20
    canary_scores[canary_fitted] -= 20
    z, cz = class_robust_z(np.where(fitted, scores, np.inf), labels, np.where(canary_fitted, canary_scores, np.inf),
                           canary_labels, 3)
    flagged, suspected, stats, notes = canary_class_test(z, labels, cz, canary_labels, 3, 1e-3, fitted,
                                                         canary_fitted)
    assert suspected == [] and not flagged.any()
    assert stats[1]["canary_pool"] == "own" and stats[1]["n_canaries_fitted"] == 30
    assert stats[0]["canary_pool"] == "all classes" and stats[1]["homogeneity_p"] < 1e-6
    assert len(notes) == 1 and "own canaries only" in notes[0]


def test_a_class_left_fitted_does_not_set_the_other_classes_cut() -> None:
    """GTSRB's failure (docs/benchmarks.md): a small class that confusion left fitted, canaries and
    all, sat far below the poison of the target class; the pooled cut came from its canaries and
    the poison had nothing below it. Its canaries now leave the pool."""
    z, labels, cz, canary_labels, fitted, canary_fitted = resistant_run(np.random.default_rng(4), poison=40)
    left = canary_labels == 5
    cz[left], canary_fitted[left] = cz[np.isfinite(cz)].min() - 50, True  # class 5: every canary fitted, far down
    fitted_5 = labels == 5
    z[fitted_5], fitted[fitted_5] = cz[left].min() + 1, True
    flagged, suspected, stats, _ = canary_class_test(z, labels, cz, canary_labels, 10, 1e-3, fitted, canary_fitted)
    assert stats[5]["canary_pool"] == "own" and 5 not in suspected
    assert suspected == [0] and flagged[:40].all()
    assert not pooled_canaries(cz, canary_labels, broken_classes(canary_labels, canary_fitted, 10))[left].any()


def test_chance_alone_rarely_sends_a_class_to_its_own_canaries() -> None:
    """Every class's canaries stay fitted at the same rate: the fallback is for a class that confusion
    visibly failed, so chance alone must rarely trigger it in a run (family-wise, not per class;
    per class at 0.05, ten classes of 15 canaries triggered it in about 40 % of runs)."""
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(10), 15)
    runs = [bool(broken_classes(labels, rng.random(150) < 0.1, 10)) for _ in range(500)]
    assert np.mean(runs) < 0.06


@pytest.mark.parametrize("fitted_canaries,p_range", [
    # seed 0: 4 of the target's 15 canaries against 10 of the other 135 (p = 0.036, not significant
    # once corrected over the classes)
    ([0, 1, 2, 3, 20, 21, 40, 41, 60, 61, 80, 81, 100, 120], (0.03, 0.05)),
    # seed 7: 5 of 15 against 7 of 135 (p = 0.0026, significant even corrected, but a third of the
    # canaries, not a visible failure of confusion)
    ([0, 1, 2, 3, 4, 20, 40, 60, 80, 100, 120, 140], (0.002, 0.005)),
])
def test_a_target_fitted_a_little_more_keeps_the_pooled_test(fitted_canaries, p_range) -> None:
    """CIFAR-10, 3 % BadNet, 30 reserve images per class (docs/benchmarks.md): poison raises its
    target's fitted share, so its canaries stay fitted more often than the other classes'. That is
    no visible failure of confusion: the target keeps the pooled test and is named."""
    rng = np.random.default_rng(1)
    labels, canary_labels = np.repeat(np.arange(10), 290), np.repeat(np.arange(10), 15)
    scores, canary_scores = rng.normal(size=2900), rng.normal(size=150)
    canary_fitted = np.zeros(150, dtype=bool)
    canary_fitted[fitted_canaries] = True
    fitted = rng.random(2900) < 0.1
    poison = np.flatnonzero(labels == 0)[:90]
    scores[poison], fitted[poison] = canary_scores.min() - 1 - rng.random(90), True
    flagged, suspected, stats, _ = canary_class_test(scores, labels, canary_scores, canary_labels, 10, 1e-3,
                                                     fitted, canary_fitted)
    assert p_range[0] < stats[0]["homogeneity_p"] < p_range[1] and stats[0]["canary_pool"] == "all classes"
    assert suspected == [0] and flagged[poison].all()


def test_a_class_with_most_canaries_fitted_falls_back_to_its_own() -> None:
    """GTSRB, clean, 20 per class (docs/benchmarks.md): 8 of a class's 10 canaries and 16 of its 17
    images stayed fitted, 12 of them below all its canaries (train-split tracks against test-split
    canaries); the pooled test with its own canaries' veto would name it, the fallback does not."""
    rng = np.random.default_rng(3)
    labels, canary_labels = np.repeat(np.arange(10), [17] + [100] * 9), np.repeat(np.arange(10), 10)
    scores, canary_scores = rng.normal(size=len(labels)), rng.normal(size=100)
    fitted, canary_fitted = rng.random(len(labels)) < 0.1, rng.random(100) < 0.05
    canary_fitted[:10], canary_scores[:8] = np.arange(10) < 8, np.linspace(-26, -13, 8)  # class 0
    fitted[:17] = np.arange(17) < 16
    scores[:12] = np.linspace(-68, -29, 12)
    flagged, suspected, stats, _ = canary_class_test(scores, labels, canary_scores, canary_labels, 10, 1e-3,
                                                     fitted, canary_fitted)
    assert stats[0]["canary_pool"] == "own" and stats[0]["p_value_own"] < 0.05
    others = canary_scores[10:].min()
    assert below_lowest_canary_p(17, int((scores[:17] < others).sum()), 92) < 1e-4  # what the pooled test saw
    assert suspected == [] and not flagged.any()


def resistant_run(rng: np.random.Generator, poison: int = 0, classes: int = 10, n: int = 160, m: int = 10):
    """Inputs of the CT test where confusion erases the clean classes unevenly, as it does on digits.

    Each class keeps its own share (0-60 %) of clean samples fitted, D and canaries alike, at
    losses well below its erased ones by a class-specific gap; ``poison`` samples of class 0 are
    fitted far better still.
    """
    labels, canary_labels = np.repeat(np.arange(classes), n), np.repeat(np.arange(classes), m)
    share = rng.uniform(0, 0.6, classes)
    fitted = rng.random(len(labels)) < share[labels]
    canary_fitted = rng.random(len(canary_labels)) < share[canary_labels]
    loc, scale, gap = rng.normal(0, 1, classes), rng.uniform(0.5, 2, classes), rng.uniform(2, 6, classes)
    scores = rng.normal(loc[labels], scale[labels]) - gap[labels] * fitted
    canary_scores = rng.normal(loc[canary_labels], scale[canary_labels]) - gap[canary_labels] * canary_fitted
    fitted[:poison], scores[:poison] = True, loc[0] - 12
    z, cz = class_robust_z(scores, labels, canary_scores, canary_labels, classes, ~fitted, ~canary_fitted)
    z[~fitted], cz[~canary_fitted] = np.inf, np.inf
    return z, labels, cz, canary_labels, fitted, canary_fitted


def test_uneven_confusion_does_not_name_a_clean_class() -> None:
    """The pooled test alone names a clean class in about a sixth of these runs; its own canaries veto."""
    runs, pooled_alarms, alarms, found = 200, 0, 0, 0
    for seed in range(runs):
        z, labels, cz, canary_labels, fitted, canary_fitted = resistant_run(np.random.default_rng(seed))
        _, suspected, stats, _ = canary_class_test(z, labels, cz, canary_labels, 10, 1e-3, fitted, canary_fitted)
        alarms += bool(suspected)
        cut = cz.min()
        pooled_alarms += any(below_lowest_canary_p(160, int(((labels == c) & (z < cut)).sum()), 100) < 1e-4
                             for c in range(10))
        z, labels, cz, canary_labels, fitted, canary_fitted = resistant_run(np.random.default_rng(seed), poison=60)
        _, suspected, _, _ = canary_class_test(z, labels, cz, canary_labels, 10, 1e-3, fitted, canary_fitted)
        found += suspected == [0]
    assert pooled_alarms / runs > 0.1
    assert alarms / runs <= 0.04
    assert found / runs >= 0.5


def test_a_suspected_class_loses_what_lies_below_the_canaries_flag_share_quantile() -> None:
    """The flag cut is the k-th lowest canary, k = max(1, floor(share (m + 1))): share 0 is the lowest
    canary; a share reaching an unfitted (infinite) canary takes every fitted sample."""
    scores, labels, canary_scores, canary_labels = clean_run(np.random.default_rng(3), m=100)
    poison = np.flatnonzero(labels == 0)[:30]
    scores[poison] = -50
    fitted = np.zeros(len(labels), dtype=bool)
    fitted[poison] = True
    fitted[np.flatnonzero(labels == 0)[30:33]] = True  # three clean samples of the target stay fitted too
    z, cz = class_robust_z(np.where(fitted, scores, np.inf), labels, canary_scores, canary_labels, 3,
                           ~fitted, np.ones(len(canary_labels), dtype=bool))
    cz[:] = np.inf
    cz[0] = -5.0  # one canary stays fitted, well enough to sit between the poison and the clean fitted ones
    canary_fitted = np.isfinite(cz)
    flagged, suspected, _, _ = canary_class_test(z, labels, cz, canary_labels, 3, 1e-3, fitted, canary_fitted,
                                                 flag_share=0.02)  # k = 2 of 100: an unfitted canary
    assert suspected == [0] and flagged.sum() == 33
    below_only, _, _, _ = canary_class_test(z, labels, cz, canary_labels, 3, 1e-3, fitted, canary_fitted)
    assert set(np.flatnonzero(below_only)) == set(poison)
    ordered = np.arange(99.0)
    assert flag_cut(ordered, 0.0) == 0.0 and flag_cut(ordered, 0.02) == 1.0 and flag_cut(ordered, 0.05) == 4.0


def test_alpha_must_be_a_probability() -> None:
    for bad in (0.0, 1.0, -0.1, float("nan")):
        with pytest.raises(SanitizeError, match="alpha"):
            check_alpha(bad)
    check_alpha(1e-3)


def test_implausible_shares_are_said_in_one_line() -> None:
    labels = np.repeat([0, 1], 10)
    flagged = np.zeros(20, dtype=bool)
    flagged[:8] = True
    notes = share_notes(flagged, labels, [0], ["cat", "dog"])
    assert len(notes) == 1 and notes[0].startswith("class cat: 8 of 10") and "reserve" in notes[0]
    assert share_notes(flagged, labels, [1], ["cat", "dog"]) == []


def test_poison_spread_over_every_class_is_said_not_flagged() -> None:
    """Ten classes, each with 12 of 200 samples far below every canary (an all-to-all pattern): no
    class holds enough to be named against 10 canaries of its own, but the set-wide count is
    improbable for clean data, and the note says so; a clean set gets the scope line instead."""
    rng = np.random.default_rng(0)
    labels, canary_labels = np.repeat(np.arange(10), 200), np.repeat(np.arange(10), 10)
    scores, canary_scores = rng.normal(size=2000), rng.normal(size=100)
    spread = np.concatenate([np.flatnonzero(labels == c)[:12] for c in range(10)])
    scores[spread] = -10.0
    flagged, suspected, _, _ = canary_class_test(scores, labels, canary_scores, canary_labels, 10, alpha=1e-3)
    assert suspected == [] and not flagged.any()
    k = int((scores < canary_scores.min()).sum())
    evidence, notes = set_wide_evidence(k, len(scores), len(canary_scores), suspected, 1e-3)
    assert evidence["n_beyond_cut"] >= 120 and evidence["p_value"] < 1e-3
    assert len(notes) == 1 and "all-to-all attack) looks like this; nothing was flagged" in notes[0]
    clean = rng.normal(size=2000)
    evidence, notes = set_wide_evidence(int((clean < canary_scores.min()).sum()), 2000, 100, [], 1e-3)
    assert evidence["p_value"] > 1e-3 and "can pass it" in notes[0]
    assert set_wide_evidence(120, 2000, 100, [0], 1e-3)[1] == []  # a named class: nothing to add


def test_a_class_left_fitted_does_not_count_towards_the_set_wide_evidence() -> None:
    """CIFAR-10, clean, 200 reserve images per class (docs/benchmarks.md): a class that confusion left
    fitted had its samples, as low as its own canaries, counted against the other classes'
    canaries, and the set-wide note read like an all-to-all attack. Only the pooled classes count."""
    rng = np.random.default_rng(0)
    labels, canary_labels = np.repeat(np.arange(10), 300), np.repeat(np.arange(10), 30)
    scores, canary_scores = rng.normal(size=3000), rng.normal(size=300)
    fitted, canary_fitted = rng.random(3000) < 0.1, rng.random(300) < 0.1
    scores[labels == 5] -= 20.0  # class 5: left fitted, D and canaries alike
    canary_scores[canary_labels == 5] -= 20.0
    fitted[labels == 5], canary_fitted[canary_labels == 5] = True, True
    flagged, suspected, stats, _ = canary_class_test(scores, labels, canary_scores, canary_labels, 10, 1e-3,
                                                     fitted, canary_fitted)
    assert suspected == [] and stats[5]["canary_pool"] == "own"
    k, n, m = below_pooled_cut(scores, labels, canary_scores, canary_labels, stats)
    assert (n, m) == (2700, 270)
    assert k == int(((labels != 5) & (scores < canary_scores[canary_labels != 5].min())).sum())
    assert set_wide_evidence(k, n, m, suspected, 1e-3)[0]["p_value"] > 1e-3
    # one of its canaries among the others': the class test's pool keeps it, and so does the count
    canary_scores[np.flatnonzero(canary_labels == 5)[0]] = 0.0
    _, suspected, stats, _ = canary_class_test(scores, labels, canary_scores, canary_labels, 10, 1e-3, fitted,
                                               canary_fitted)
    assert stats[5]["canary_pool"] == "own"
    in_pool = pooled_canaries(canary_scores, canary_labels, [5])
    assert below_pooled_cut(scores, labels, canary_scores, canary_labels, stats) == (k, 2700, int(in_pool.sum()))
    assert in_pool.sum() == 271


def test_log_loss_is_exact_where_the_float32_loss_underflows() -> None:
    import torch
    from torch.nn import functional as F

    logits = torch.randn(500, 10) * 3
    labels = torch.randint(0, 10, (500,))
    exact = np.log(F.cross_entropy(logits.double(), labels, reduction="none").numpy())
    assert np.allclose(log_loss(logits, labels), exact, atol=1e-9)
    one = torch.randn(500) * 5
    binary = torch.randint(0, 2, (500,))
    exact = np.log(F.binary_cross_entropy_with_logits(one.double(), binary.double(), reduction="none").numpy())
    assert np.allclose(log_loss(one, binary), exact, atol=1e-8)
    # margins whose float32 loss is exactly 0 keep their order instead of one tie at a floor
    margins = torch.tensor([120.0, 200.0, 900.0])
    assert (F.binary_cross_entropy_with_logits(margins, torch.ones(3), reduction="none") == 0).all()
    assert np.allclose(log_loss(margins, torch.ones(3, dtype=torch.long)), [-120.0, -200.0, -900.0])
    wide = torch.tensor([[150.0, 0.0, 0.0], [0.0, 0.0, 900.0]])
    assert np.allclose(log_loss(wide, torch.tensor([0, 0])), [-150.0 + np.log(2.0), np.log(900.0)])
