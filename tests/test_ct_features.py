"""CT on EMBER-format rows, end to end through the CLI: attack -> ct -> evaluate, against ground truth."""

from __future__ import annotations

import json

import numpy as np

from .conftest import EMBER_N, EMBER_UNLABELLED, assert_valid_report, run_cli


def test_ct_finds_explanation_guided_trigger(ember_dirs, ember_poisoned, tmp_path, one_thread) -> None:
    poisoned = ember_poisoned
    truth = json.loads((poisoned / "poison.json").read_text())
    assert truth["n_poison"] == int(0.01 * (EMBER_N - EMBER_UNLABELLED)) and truth["clean_label"]
    assert len(truth["params"]["features"]) == 32
    labels = np.fromfile(poisoned / "y_train.dat", dtype=np.float32)
    assert (labels[[int(p) for p in truth["poison"]]] == 0).all()  # benign rows, labels kept

    out = tmp_path / "cleaned"
    code = run_cli("ct", poisoned, "--reserve", ember_dirs / "reserve", "--out", out, "--device", "cpu", "-q")
    report = json.loads((out / "report.json").read_text())
    assert_valid_report(report)
    assert code == 1 and report["summary"]["suspected_classes"] == ["benign"]
    assert report["summary"]["n_not_inspected"] == EMBER_UNLABELLED
    unlabelled = [s for s in report["samples"] if s.get("inspected") is False]
    assert len(unlabelled) == EMBER_UNLABELLED and not any(s["flagged"] for s in unlabelled)

    assert run_cli("evaluate", out, "--truth", poisoned / "poison.json", "--json", tmp_path / "m.json", "-q") == 0
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["tpr"] >= 0.9, metrics
    assert metrics["fpr"] <= 0.05, metrics

    # written back in the input format: kept rows byte-identical and in order, unlabelled rows kept
    kept = np.array([int(s["path"]) for s in report["samples"] if not s["flagged"]])
    row = 2381 * 4
    src = (poisoned / "X_train.dat").read_bytes()
    assert (out / "X_train.dat").read_bytes() == b"".join(src[i * row:(i + 1) * row] for i in kept)
    assert np.array_equal(np.fromfile(out / "y_train.dat", dtype=np.float32), labels[kept])


def test_image_only_detectors_refuse_feature_rows(ember_dirs, tmp_path, capsys) -> None:
    """The passive baselines inspect image folders only and say so: exit 2, one line."""
    code = run_cli("scan", "spectral", ember_dirs / "clean", "--reserve", ember_dirs / "reserve", "--out",
                   tmp_path / "o", "--device", "cpu", "-q")
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(err) == 1 and "feature rows" in err[0], err
    assert not (tmp_path / "o").exists()


def test_attack_sets_trigger_values_past_every_clean_value(ember_dirs, tmp_path, capsys) -> None:
    out = tmp_path / "beyond"
    assert run_cli("attack", "ember-explanation", ember_dirs / "clean", out, "--constrained",
                   "--trigger-values", "beyond-range", "-q") == 0
    truth = json.loads((out / "poison.json").read_text())
    assert truth["params"]["value_selection"] == "beyond-range" and truth["clean_label"]
    clean = np.fromfile(ember_dirs / "clean" / "X_train.dat", dtype=np.float32).reshape(-1, 2381)
    columns, values = truth["params"]["columns"], np.array(truth["params"]["values"])
    assert (values > clean[:, columns].max(axis=0)).all()
    poisoned = np.fromfile(out / "X_train.dat", dtype=np.float32).reshape(-1, 2381)
    rows = [int(p) for p in truth["poison"]]
    assert np.array_equal(poisoned[np.ix_(rows, columns)], np.tile(values.astype(np.float32), (len(rows), 1)))
    capsys.readouterr()
    assert run_cli("attack", "ember-explanation", ember_dirs / "clean", tmp_path / "bad",
                   "--trigger-values", "widest") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "widest" in err



def noisy_rows(n: int, seed: int, noise: float):
    """Generated EMBER-format rows of which ``noise`` carry the other label: classes a model can
    only partly learn (the user's set ran at about 81 % clean accuracy). The draw of
    ``benchmarks/false_alarms.py --datasets ember --label-noise``."""
    import torch

    from sanitize.data.rows import FeatureDataset
    from sanitize.ember import synth

    X, y = synth.vectors(n, seed=seed)
    flip = np.random.default_rng(seed + 100_000).random(n) < noise
    y[flip] = 1 - y[flip]
    return FeatureDataset(torch.from_numpy(X), torch.from_numpy(y.astype(np.int64)), ["benign", "malicious"],
                          [str(i) for i in range(n)])


def test_ct_finds_a_beyond_range_trigger_that_one_outlying_canary_hid(monkeypatch, one_thread) -> None:
    """A user's miss: on rows with label noise, a constrained trigger set past every clean value
    (benign rows, labels kept) was fitted by the confused model, yet a canary with an extreme
    margin lay below it and the test at the lowest canary alone named nothing. The class test
    also cuts at the next canaries when a class has many (docs/ember.md, "One outlying canary").
    The draw of false_alarms.py --datasets ember --limit 4000 --reserve-per-class 1500 --seeds 0
    --label-noise 0.19 --attack ember-explanation --constrained --trigger-values beyond-range
    --rate 0.02, where the lowest canary alone names nothing."""
    import sanitize.detectors.ct.rows as ct_rows
    from sanitize.attacks import ember_explanation
    from sanitize.detectors.canaries import canary_class_test

    poisoned = ember_explanation(noisy_rows(4000, 1, 0.19), 0.02, seed=0, constrained=True, values="beyond-range")
    pool = noisy_rows(6000, 2, 0.19)
    rng, labels = np.random.default_rng(10_000), pool.labels.numpy()
    reserve = pool.subset(np.sort(np.concatenate([rng.choice(np.flatnonzero(labels == c), 1500, replace=False)
                                                  for c in (0, 1)])))
    lowest_only = []

    def both_ways(*args, **kwargs):
        lowest_only.append(canary_class_test(*args, **{**kwargs, "cut_orders": 1})[1])
        return canary_class_test(*args, **kwargs)

    monkeypatch.setattr(ct_rows, "canary_class_test", both_ways)
    result = ct_rows.FeatureConfusionTraining(seed=0, device="cpu").detect(poisoned.dataset, reserve)
    truth = np.zeros(len(poisoned.dataset), dtype=bool)
    truth[poisoned.poison_indices] = True
    assert lowest_only == [[]]
    assert result.suspected_classes == [0] and result.class_stats[0]["cut_order"] > 1
    assert result.flagged[truth].mean() >= 0.9 and result.flagged[~truth].mean() <= 0.02
