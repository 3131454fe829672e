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

