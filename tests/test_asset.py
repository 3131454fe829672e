"""ASSET on real data with known ground truth, its CLI contract, and the pieces it is built from."""

from __future__ import annotations

import csv
import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from statsmodels.stats.stattools import medcouple

from sanitize import ASSET, asset
from sanitize.attacks import badnet, blend
from sanitize.detectors import available_detectors, get_detector
from sanitize.detectors.asset import (
    FAST,
    REFERENCE,
    TrainModeMap,
    adjusted_outlyingness,
    batch_norm_without_update,
    canary_p_values,
    class_log_loss_medians,
    concentration_scores,
    crossfit_scores,
    crossfit_selection,
    demo_threshold,
    extractor_inputs,
    extractor_spec,
    frozen_norm_stats,
    global_crossfit_scores,
    global_picks,
    global_selection,
    level_set_z,
    loss_threshold,
    robust_z,
    select_outliers,
    select_poison_rich,
    suspected_from_flags,
)
from sanitize.errors import SanitizeError

from .conftest import (
    assert_bad_inputs_exit_2,
    assert_seeded_on_cpu,
    assert_valid_report,
    bad_input_cases,
    digits_split,
    rates,
    run_cli,
    tree_digest,
)

# --- detection on real data (digits, small_cnn on the CPU) -----------------------------------


# Blend at seed 2 is the case where the paper's selection rule (AO > 2 on in-sample MLP scores)
# found 1-10 % of the poison; fast's cross-fitted selection finds it (docs/asset.md).
# BadNet at seed 0 is the data of test_asset_cli_end_to_end below (the same bounds, through the CLI).
@pytest.mark.parametrize("attack,seed", [(blend, 0), (blend, 2), (badnet, 1)])
def test_asset_finds_poison_on_digits(attack, seed: int) -> None:
    data, reserve = digits_split(seed)
    poisoned = attack(data, 0.05, target=0, seed=seed)
    result = asset(poisoned.dataset, reserve, device="cpu", seed=seed)
    tpr, fpr = rates(result.flagged, poisoned.is_poison)
    assert tpr >= 0.9, (tpr, fpr, result.settings["threshold"])
    assert fpr <= 0.05, (tpr, fpr, result.class_stats)
    assert result.suspected_classes == [0]
    assert result.method == "asset"
    assert {"extractor", "features", "offset loop", "score"} <= set(result.timings)


def test_clean_digits_flag_at_most_one_percent() -> None:
    data, reserve = digits_split(0)
    result = asset(data, reserve, device="cpu", seed=0)
    assert result.n_flagged <= 0.01 * len(data), result.settings
    # nothing in a clean batch stands out: the max step gets under one sample per step on average
    # (where the reference's empty selections crash), and the canaries floor the cut
    assert result.settings["selected_total"] <= result.settings["offset_steps"]
    assert result.settings["canaries"] > 0 and "canary_max_z" in result.settings["threshold"]
    assert result.suspected_classes == []


def tiny() -> object:
    """A short schedule for contract and determinism checks (seconds, not minutes)."""
    return replace(FAST, base=replace(FAST.base, epochs=1), min_base_steps=20, min_offset_steps=4,
                          mlp_steps=10)


def test_same_seed_same_flags_on_cpu() -> None:
    data, reserve = digits_split(0)
    poisoned = badnet(data, 0.05, target=0, seed=0).dataset
    assert_seeded_on_cpu(lambda seed: asset(poisoned, reserve, schedule=tiny(), device="cpu", seed=seed))


def test_registry_and_settings() -> None:
    assert "asset" in available_detectors()
    detector = get_detector("asset", device="cpu", seed=1, epsilon=1e-3)
    assert isinstance(detector, ASSET)
    assert detector.resolved_schedule().epsilon == 1e-3
    with pytest.raises(SanitizeError, match="schedule"):
        ASSET(schedule="slow").resolved_schedule()
    with pytest.raises(SanitizeError, match="epsilon"):
        ASSET(epsilon=0.5).resolved_schedule()
    with pytest.raises(SanitizeError, match="selection"):
        ASSET(selection="top-k").resolved_schedule()
    assert ASSET(selection="ao").resolved_schedule().selection == "ao"
    assert ASSET(selection="global", selection_margin=0.5).resolved_schedule().selection_margin == 0.5
    with pytest.raises(SanitizeError, match="ao_cut"):  # fast selects by crossfit: the cut would do nothing
        ASSET(ao_cut=1.5).resolved_schedule()
    assert ASSET(selection="ao", ao_cut=1.5).resolved_schedule().ao_cut == 1.5
    for bad in ({"threshold": "median"}, {"mlp_loss": "hinge"}, {"features": "logits"}, {"ao_sides": "lower"}):
        with pytest.raises(SanitizeError, match=next(iter(bad))):
            ASSET(schedule=replace(FAST, **bad)).resolved_schedule()
    with pytest.raises(SanitizeError, match="alpha"):
        ASSET(alpha=0.0).resolved_schedule()


def test_reference_schedule_is_the_released_demo() -> None:
    # ASSET_demo.ipynb and new_poi_util.py of reds-lab/ASSET
    assert (REFERENCE.batch_size, REFERENCE.passes, REFERENCE.min_offset_steps) == (512, 1, 0)
    assert (REFERENCE.lr, REFERENCE.mlp_lr, REFERENCE.mlp_steps, REFERENCE.mlp_hidden) == (1e-4, 1e-4, 100, 128)
    assert (REFERENCE.ao_cut, REFERENCE.ao_on, REFERENCE.ao_sides, REFERENCE.epsilon) == (2.0, "prob", "both", 1e-6)
    assert (REFERENCE.mlp_loss, REFERENCE.features, REFERENCE.bn_mode) == ("mse", "map", "batch")
    assert (REFERENCE.threshold, REFERENCE.class_calibration, REFERENCE.extractor_sees_reserve) == ("demo", False,
                                                                                                   False)
    assert (REFERENCE.selection, REFERENCE.canary_fraction) == ("ao", 0.0)
    assert (FAST.selection, FAST.canary_fraction, FAST.extractor_sees_reserve) == ("crossfit", 0.2, True)  # ours
    assert REFERENCE.offset_steps(50_000) == 97  # one pass in batches of 512
    # the extractor: CT's official CIFAR-10 base model (the ASSET repository releases none)
    assert (REFERENCE.base.epochs, REFERENCE.base.batch_size, REFERENCE.base.lr) == (100, 128, 0.1)
    assert (REFERENCE.base.weight_decay, REFERENCE.base.milestones) == (1e-4, (0.5, 0.75))


def test_demo_threshold_is_the_demos_get_t() -> None:
    rng = np.random.default_rng(0)
    scores = np.concatenate([rng.normal(5.0, 1.0, 2000), [40.0, 50.0]])
    flags, fit = demo_threshold(scores, 1e-6)
    lower = scores[scores <= np.quantile(scores, 0.5, method="lower")]
    mu, sigma = lower.mean(), np.sqrt(lower.var() + 1e-6)  # sklearn's one-component fit, reg_covar 1e-6
    cut = sigma * np.sqrt(-2 * np.log(1e-6) * sigma * np.sqrt(2 * np.pi)) + mu
    assert fit["cut"] == pytest.approx(cut, rel=1e-6)
    assert np.array_equal(flags, scores >= cut) and flags[-2:].all()


def test_demo_concentration_mlp_trains_with_mse_and_two_optimisers() -> None:
    torch.manual_seed(0)
    d = torch.cat([torch.randn(60, 8), torch.randn(4, 8) + 6.0])
    r = torch.randn(60, 8)
    probs = concentration_scores(d, r, 100, 1e-2, 16, on="prob", loss="mse")
    assert probs.min() >= 0 and probs.max() <= 1
    assert probs[60:].min() > probs[:60].median()  # the shifted samples look most D-like


def test_extractor_sees_the_reserve_only_when_the_schedule_says_so() -> None:
    from sanitize.detectors.asset import Inputs

    inp = Inputs(torch.zeros(5, 1, 2, 2, dtype=torch.uint8), torch.zeros(5, dtype=torch.long),
                 torch.ones(3, 1, 2, 2, dtype=torch.uint8), torch.ones(3, dtype=torch.long), 2, lambda: None,
                 lambda x: x, "custom", np.arange(5), 5, 2)
    x, y = extractor_inputs(inp, True)
    assert len(x) == len(y) == 8 and y.tolist() == [0] * 5 + [1] * 3 and x[5:].eq(1).all()
    assert extractor_inputs(inp, False)[0] is inp.x


def test_train_mode_map_reads_the_map_before_pooling_with_batch_statistics() -> None:
    from sanitize.nn.engine import Preprocess, pooled_map
    from sanitize.nn.models import build_model

    data, _ = digits_split(0)
    model = build_model("small_cnn", 10, data.channels, 8)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    before = [m.running_mean.clone() for m in norms]
    prep = Preprocess.fit(data.images)
    maps = TrainModeMap(model, data.images, prep)[torch.arange(32)]
    assert maps.shape == (32, 128 * 4 * 4)  # 8 px -> one 2x pool -> 4x4 map of 128 channels
    assert all(torch.equal(m.running_mean, b) for m, b in zip(norms, before, strict=True))
    assert not torch.allclose(maps, pooled_map(model, data.images[:32], prep))  # batch, not running, statistics


def test_reference_runs_the_demos_pipeline_end_to_end() -> None:
    data, reserve = digits_split(0)
    short = replace(REFERENCE, base=replace(REFERENCE.base, epochs=2), min_offset_steps=3, mlp_steps=5)
    result = asset(badnet(data, 0.05, target=0, seed=0).dataset, reserve, schedule=short, device="cpu", seed=0)
    assert result.settings["threshold"].keys() == {"cut", "lower_half_mean", "lower_half_sd"}
    assert result.settings["canaries"] == 0 and all("p_value" not in c for c in result.class_stats)
    assert np.isfinite(result.scores).all()


def test_extractor_spec_fits_small_data() -> None:
    spec = extractor_spec(FAST, 1347, 8, None)
    assert spec.batch_size == 84 and not spec.augment  # >= 16 steps per epoch; no flip/crop on 8 px
    assert spec.epochs * (1347 // 84) >= FAST.min_base_steps
    big = extractor_spec(FAST, 50_000, 32, None)
    assert big.batch_size == 512 and big.augment and big.epochs == FAST.base.epochs


# --- the custom model hook (non-image inputs) --------------------------------------------------


def test_custom_model_factory_runs_on_vectors() -> None:
    from sanitize.nn.models import Classifier

    data, reserve = digits_split(0)

    def factory() -> Classifier:
        trunk = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 32), torch.nn.ReLU())
        return Classifier(trunk, 32, 10)

    result = ASSET(schedule=tiny(), device="cpu", model_factory=factory, preprocess=lambda x: x.float() / 255,
                   augment=False).detect(data, reserve)
    assert result.settings["arch"] == "custom" and np.isfinite(result.scores).all()


# --- Adjusted Outlyingness, threshold, batch-norm handling ------------------------------------


def test_adjusted_outlyingness_is_one_sided_and_uses_the_medcouple() -> None:
    rng = np.random.default_rng(0)
    bulk = rng.normal(size=500)
    high = np.concatenate([bulk, [12.0, 15.0]])
    low = np.concatenate([bulk, [-12.0, -15.0]])
    assert set(select_outliers(high, 2.0)) == {500, 501}
    assert len(select_outliers(low, 2.0)) == 0  # low scores are not poison evidence
    assert set(select_outliers(low, 2.0, sides="both")) == {500, 501}  # the demo's rule: both sides
    ao = adjusted_outlyingness(high)
    assert np.all(ao[high <= np.median(high)] == 0)
    # the upper whisker follows the medcouple: Q3 + 1.5 exp(3 MC) IQR for a right-skewed sample
    skewed = rng.lognormal(size=400)
    q1, med, q3 = np.quantile(skewed, [0.25, 0.5, 0.75])
    whisker = q3 + 1.5 * np.exp(3 * float(medcouple(skewed))) * (q3 - q1)
    top = int(np.argmax(skewed))
    assert adjusted_outlyingness(skewed)[top] == pytest.approx((skewed[top] - med) / (whisker - med))


def test_empty_and_degenerate_selections() -> None:
    assert len(select_outliers(np.random.default_rng(1).normal(size=512), 2.0)) == 0
    assert len(select_outliers(np.full(512, 0.7), 2.0)) == 0  # no spread: AO is 0, nothing selected
    assert len(select_outliers(np.array([1.0, 2.0]), 2.0)) == 0


def planted_batch(n_poison: int, seed: int, n: int = 512, n_reserve: int = 450
                  ) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """Frozen-feature stand-ins shaped like a trained extractor's: 128-d features of a 4-d clean
    latent (plus a little noise), a D batch of ``n`` with ``n_poison`` spread evenly and moved
    along one trigger direction and a reserve batch of ``n_reserve``; and the poison positions."""
    gen = torch.Generator().manual_seed(seed)
    mixing = torch.randn(4, 128, generator=gen) / 2
    trigger = torch.randn(128, generator=gen)

    def clean(size: int) -> torch.Tensor:
        return torch.randn(size, 4, generator=gen) @ mixing + 0.1 * torch.randn(size, 128, generator=gen)

    d, r = clean(n), clean(n_reserve)
    poison = np.arange(0, n, n // max(1, n_poison))[:n_poison]
    d[poison] += 6.0 * trigger / trigger.norm()
    return d, r, poison


def test_crossfit_selection_finds_the_trigger_and_little_else() -> None:
    found = strays = null = 0
    for seed in range(4):
        torch.manual_seed(seed)
        d, r, poison = planted_batch(20, seed)
        chosen = set(select_poison_rich(d, r, FAST, torch.Generator().manual_seed(seed)))
        found, strays = found + len(chosen & set(poison)), strays + len(chosen - set(poison))
        # exchangeable clean batches: a clean sample beats every held-out reserve score (plus the
        # margin) with probability well under 1/226
        null += len(select_poison_rich(*planted_batch(0, seed + 10)[:2], FAST, torch.Generator().manual_seed(seed)))
    assert found >= 0.8 * 80 and strays <= 3 and null <= 3, (found, strays, null)


GLOBAL = replace(FAST, selection="global")


@pytest.mark.parametrize("scope", ["batch", "global"])
def test_crossfit_scores_are_held_out(scope: str) -> None:
    """A sample's score comes from the MLP that never saw it: changing one fold-1 sample leaves the
    fold-0 MLP, hence every other fold-1 score, bit-for-bit unchanged, and moves the fold-0 scores."""
    d, r, _ = planted_batch(20, 0)

    def scores(d_feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        torch.manual_seed(1)
        gen = torch.Generator().manual_seed(1)
        if scope == "global":
            s, _, d_fold, _ = global_crossfit_scores(d_feats, r, replace(GLOBAL, global_min_steps=20), gen)
        else:
            s, _, d_fold, _ = crossfit_scores(d_feats, r, 20, 2e-3, 16, gen)
        return s, d_fold

    before, d_fold = scores(d)
    changed = int(torch.nonzero(d_fold == 1)[0])
    moved = d.clone()
    moved[changed] += 3.0
    after, _ = scores(moved)
    others = (d_fold == 1) & (torch.arange(len(d)) != changed)
    assert torch.equal(before[others], after[others])
    assert not torch.equal(before[d_fold == 0], after[d_fold == 0])
    assert (d_fold == 0).sum() == len(d) // 2  # balanced folds
    # a fold with fewer than two held-out reserve scores has no reference to beat: nothing selected
    assert len(crossfit_selection(before, torch.zeros(1), d_fold, torch.zeros(1, dtype=torch.long), 1.0)) == 0


def test_global_selection_pools_sparse_poison_that_batches_miss() -> None:
    """1 % poison is about 5 images in a batch of 512: few for a per-batch MLP to single out.
    Scored across the whole set (``global``), the same poison stands out, and clean sets give
    few picks (a clean sample beats every held-out reserve score plus the margin rarely)."""
    found = {"batch": 0, "global": 0}
    strays = null = 0
    for seed in range(4):
        d, r, poison = planted_batch(41, seed, n=4096, n_reserve=800)
        is_poison = np.zeros(len(d), dtype=bool)
        is_poison[poison] = True
        torch.manual_seed(seed)
        picked = global_selection(d, r, GLOBAL, torch.Generator().manual_seed(seed)).numpy()
        found["global"] += int(picked[is_poison].sum())
        strays += int(picked[~is_poison].sum())
        gen = torch.Generator().manual_seed(seed)
        for batch in torch.randperm(len(d), generator=gen).view(8, 512):
            chosen = batch[select_poison_rich(d[batch], r[torch.randperm(len(r), generator=gen)[:512]], FAST, gen)]
            found["batch"] += int(is_poison[chosen.numpy()].sum())
        torch.manual_seed(seed)
        null += int(global_selection(*planted_batch(0, seed + 10, n=4096, n_reserve=800)[:2], GLOBAL,
                                     torch.Generator().manual_seed(seed)).sum())
    assert found["global"] >= 0.4 * 4 * 41 and found["global"] > 2 * found["batch"], found
    assert strays <= 0.005 * 4 * 4055 and null <= 0.005 * 4 * 4096, (strays, null)


def test_global_picks_never_take_canaries() -> None:
    d, r, poison = planted_batch(41, 0, n=4096, n_reserve=800)
    d[-20:] = d[poison[:20]]  # canaries that look exactly like poison
    torch.manual_seed(0)
    pick, selected = global_picks(d, r, GLOBAL, 30, torch.Generator().manual_seed(0), canaries=20)
    taken = torch.cat([pick(step) for step in range(30)])
    assert selected > 0 and len(taken) == 30 * min(GLOBAL.global_max_batch, selected)
    assert int(taken.max()) < len(d) - 20


def test_global_selection_runs_end_to_end_and_is_seeded() -> None:
    data, reserve = digits_split(0)
    poisoned = badnet(data, 0.05, target=0, seed=0).dataset
    schedule = replace(tiny(), selection="global", global_min_steps=20)
    result = asset(poisoned, reserve, schedule=schedule, device="cpu", seed=0)
    assert result.settings["selection"] == "global" and result.settings["global_selected"] > 0
    assert_seeded_on_cpu(lambda seed: asset(poisoned, reserve, schedule=schedule, device="cpu", seed=seed))


def test_threshold_is_scale_free_and_robust() -> None:
    assert level_set_z(1e-6) == pytest.approx(5.08, abs=0.01)
    rng = np.random.default_rng(0)
    clean = rng.lognormal(mean=0.8, sigma=0.05, size=2000)
    losses = np.concatenate([clean, np.full(100, 30.0)])  # 5 % poison with a large loss
    flags, fit = loss_threshold(losses, 1e-6)
    assert flags[2000:].all() and flags[:2000].sum() <= 2
    assert np.array_equal(loss_threshold(losses * 1000.0, 1e-6)[0], flags)  # unit of the loss does not matter
    assert not loss_threshold(clean, 1e-6)[0].any()
    assert fit["z_cut"] == pytest.approx(level_set_z(1e-6))
    assert np.all(np.isfinite(robust_z(np.zeros(10))))  # zero spread does not divide by zero


def test_class_calibration_removes_a_class_wide_shift() -> None:
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 500)
    losses = rng.lognormal(mean=0.8, sigma=0.05, size=2000) * np.where(labels == 0, 20.0, 1.0)
    assert loss_threshold(losses, 1e-6)[0].sum() == 500  # the whole shifted class
    shift = class_log_loss_medians(losses, labels, 4)[labels]
    assert loss_threshold(losses, 1e-6, shift)[0].sum() <= 2


def test_suspected_classes_hold_the_flags_without_canaries() -> None:
    labels = np.array([0] * 10 + [1] * 10 + [2] * 10)
    flagged = np.zeros(30, dtype=bool)
    flagged[:8] = True
    flagged[10] = True
    assert suspected_from_flags(flagged, labels, 3) == [0]


def test_stray_flags_are_not_a_target_class_beyond_what_the_canaries_explain() -> None:
    labels = np.repeat(np.arange(10), 135)  # digits-sized classes
    stray = np.zeros(len(labels), dtype=bool)
    stray[[135, 136]] = True  # two flags in class 1
    assert suspected_from_flags(stray, labels, 10) == [1]  # no canaries: the count rule alone
    # 90 canaries: two of 135 clean samples above all of them has probability C(135,2)/C(225,2)
    p = canary_p_values(stray, labels, 10, 90)
    assert p[1] == pytest.approx(135 * 134 / (225 * 224)) and p[2] == 1.0
    poisoned = stray.copy()
    poisoned[:60] = True  # 60 flags in class 0 (dirty-label poison)
    assert canary_p_values(poisoned, labels, 10, 90)[0] < 1e-15


def test_norm_statistics_are_not_moved_by_the_max_step() -> None:
    bn = torch.nn.Sequential(torch.nn.BatchNorm1d(3)).train()
    before = bn[0].running_mean.clone()
    for ctx in (frozen_norm_stats, batch_norm_without_update):
        with ctx(bn):
            bn(torch.randn(8, 3) + 5.0)
        assert torch.equal(bn[0].running_mean, before)
        assert bn.training and bn[0].momentum == 0.1
    with frozen_norm_stats(bn):
        assert not bn[0].training
        bn(torch.randn(1, 3))  # one selected sample works: running statistics, no batch statistics


# --- CLI contract ---------------------------------------------------------------------------


def test_asset_cli_end_to_end(digits_folders, tmp_path) -> None:
    data, reserve, truth = digits_folders
    before = tree_digest(data)
    out = tmp_path / "cleaned"
    code = run_cli("asset", data, "--reserve", reserve, "--out", out, "--device", "cpu", "--quiet")
    assert tree_digest(data) == before

    report = json.loads((out / "report.json").read_text())
    assert_valid_report(report)
    summary = report["summary"]
    assert summary["method"] == "asset"
    assert code == (1 if summary["n_flagged"] else 0)
    samples = report["samples"]
    assert len(samples) == summary["n_samples"] == sum(1 for _ in data.glob("*/*.png"))
    assert np.isfinite([s["score"] for s in samples]).all()
    flagged = {s["path"] for s in samples if s["flagged"]}
    n_clean = len(samples) - len(truth)
    assert len(flagged & truth) >= 0.9 * len(truth)
    assert len(flagged - truth) <= 0.05 * n_clean
    assert code == 1 and summary["suspected_classes"] == ["0"]
    assert {"extractor", "features", "offset loop", "score"} <= set(summary["timings"])

    with open(out / "flagged.csv") as f:
        rows = list(csv.DictReader(f))
    assert {r["path"] for r in rows} == flagged
    kept = {p.relative_to(out).as_posix() for p in out.rglob("*.png")}
    assert kept == {s["path"] for s in samples} - flagged
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".cleaned")]

    # --out exists: refused without --force; the gate options apply as for ct
    assert run_cli("asset", data, "--reserve", reserve, "--out", out, "--device", "cpu", "-q") == 2
    assert (out / "report.json").exists()


def test_bad_input_exits_2_with_one_line(digits_folders, tmp_path) -> None:
    data, reserve, _ = digits_folders
    cases = bad_input_cases("asset", tmp_path, data, reserve)
    cases["bad schedule"] = ["asset", str(data), "--reserve", str(reserve), "--out", str(tmp_path / "o"),
                             "--schedule", "slow"]
    cases["bad epsilon"] = ["asset", str(data), "--reserve", str(reserve), "--out", str(tmp_path / "o"),
                            "--epsilon", "2"]
    assert_bad_inputs_exit_2(cases, [data, reserve, tmp_path / "corrupt"], tmp_path / "o")
