"""ASSET on EMBER-format feature rows: ground truth on generated rows, the CLI contract, the parts."""

from __future__ import annotations

import csv
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from sanitize import asset, ember
from sanitize.attacks import ember_explanation
from sanitize.data import examples
from sanitize.data.rows import FeatureDataset, load_feature_reserve, load_features
from sanitize.detectors.asset import (
    ASSET,
    FEATURE_FAST,
    FEATURE_REFERENCE,
    Inputs,
    Samples,
    get_schedule,
    level_set_z,
    loss_threshold,
    max_step_norm,
    robust_z,
    with_canaries,
)
from sanitize.detectors.ct import ember_mlp
from sanitize.output import write_image_subset

from .conftest import (
    EMBER_UNLABELLED,
    assert_bad_inputs_exit_2,
    assert_valid_report,
    ember_records,
    rates,
    run_cli,
    tree_digest,
)

ROW_BYTES = 2381 * 4


def inspected_rates(samples: list[dict], truth: set[str]) -> tuple[float, float]:
    """(TPR, FPR) of a report's flags over its inspected (labelled) rows against the poison ids."""
    inspected = [s for s in samples if s.get("inspected", True)]
    flagged = np.array([s["flagged"] for s in inspected])
    return rates(flagged, np.array([s["path"] in truth for s in inspected]))


# --- detection on generated EMBER rows (ember_mlp on the CPU, one thread) ----------------------


def test_asset_finds_explanation_guided_trigger(ember_dirs, ember_poisoned, tmp_path, one_thread) -> None:
    """1 % clean-label trigger (32 features): through the CLI on an EMBER folder, against poison.json."""
    before = tree_digest(ember_poisoned)
    out = tmp_path / "cleaned"
    code = run_cli("asset", ember_poisoned, "--reserve", ember_dirs / "reserve", "--out", out, "--device", "cpu",
                   "-q")
    assert tree_digest(ember_poisoned) == before
    report = json.loads((out / "report.json").read_text())
    assert_valid_report(report)
    summary, samples = report["summary"], report["samples"]
    assert code == 1 and summary["method"] == "asset" and summary["suspected_classes"] == ["benign"]
    assert summary["settings"]["arch"] == "ember_mlp" and summary["settings"]["canaries"] == 600

    truth = set(json.loads((ember_poisoned / "poison.json").read_text())["poison"])
    tpr, fpr = inspected_rates(samples, truth)
    assert tpr >= 0.9, (tpr, fpr, summary["settings"]["threshold"])
    assert fpr <= 0.05, (tpr, fpr, summary["settings"]["threshold"])

    # unlabelled rows: reported, never inspected or flagged, kept
    assert summary["n_not_inspected"] == EMBER_UNLABELLED
    unlabelled = [s for s in samples if s.get("inspected") is False]
    assert len(unlabelled) == EMBER_UNLABELLED
    assert not any(s["flagged"] for s in unlabelled) and all(s["score"] == 0 for s in unlabelled)

    flagged = [s["path"] for s in samples if s["flagged"]]
    with open(out / "flagged.csv") as f:
        assert {r["path"] for r in csv.DictReader(f)} == set(flagged)
    # written back in the input format: kept rows byte-identical and in order
    kept = np.array([int(s["path"]) for s in samples if not s["flagged"]])
    src = (ember_poisoned / "X_train.dat").read_bytes()
    assert (out / "X_train.dat").read_bytes() == b"".join(src[i * ROW_BYTES:(i + 1) * ROW_BYTES] for i in kept)
    labels = np.fromfile(ember_poisoned / "y_train.dat", dtype=np.float32)
    assert np.array_equal(np.fromfile(out / "y_train.dat", dtype=np.float32), labels[kept])


def test_asset_finds_constrained_trigger(ember_dirs, one_thread) -> None:
    """The 17-feature constrained trigger, another seed, through the Python API."""
    data = load_features(ember_dirs / "clean")
    reserve = load_feature_reserve(ember_dirs / "reserve", data)
    poisoned = ember_explanation(data, 0.01, seed=1, constrained=True)
    result = asset(poisoned.dataset, reserve, device="cpu", seed=1)
    labelled = data.labels.numpy() >= 0
    tpr, fpr = rates(result.flagged[labelled], poisoned.is_poison[labelled])
    assert tpr >= 0.9, (tpr, fpr, result.settings["threshold"])
    assert fpr <= 0.05, (tpr, fpr, result.settings["threshold"])
    assert result.suspected_classes == [0] and not result.flagged[~labelled].any()
    assert {"extractor", "features", "offset loop", "score"} <= set(result.timings)


@pytest.fixture(scope="module")
def ember_jsonl(tmp_path_factory) -> tuple[Path, Path]:
    """The clean rows of ``ember_dirs`` as EMBER raw-feature JSONL (train + reserve files)."""
    root = tmp_path_factory.mktemp("ember-jsonl")
    paths = []
    for name, n, seed, unlabelled in (("train_features", 4000, 1, EMBER_UNLABELLED), ("reserve", 3000, 2, 0)):
        path = root / name / f"{name}.jsonl"
        path.parent.mkdir()
        path.write_text("".join(json.dumps(r) + "\n" for r in ember_records(n, seed, unlabelled)))
        paths.append(path)
    return paths[0], paths[1]


def test_clean_jsonl_flags_at_most_one_percent(ember_jsonl, tmp_path, one_thread) -> None:
    """No poison: at most 1 % flagged; the kept lines of a .jsonl input are written back verbatim."""
    data, reserve = ember_jsonl
    out = tmp_path / "cleaned"
    code = run_cli("asset", data, "--reserve", reserve, "--out", out, "--device", "cpu", "-q")
    report = json.loads((out / "report.json").read_text())
    assert_valid_report(report)
    summary = report["summary"]
    assert summary["n_flagged"] <= 0.01 * (summary["n_samples"] - summary["n_not_inspected"]), summary["settings"]
    assert code == (1 if summary["n_flagged"] else 0)
    lines = data.read_text().splitlines(keepends=True)
    kept = [i for i, s in enumerate(report["samples"]) if not s["flagged"]]
    assert (out / data.name).read_text() == "".join(lines[i] for i in kept)
    assert report["samples"][0]["path"] == json.loads(lines[0])["sha256"]


# --- CLI contract on bad input ------------------------------------------------------------------


def _dat(root: Path, name: str, X: np.ndarray, y: np.ndarray) -> Path:
    d = root / name
    d.mkdir()
    X.astype(np.float32).tofile(d / "X_train.dat")
    y.astype(np.float32).tofile(d / "y_train.dat")
    return d


def test_bad_feature_input_exits_2_with_one_line(tmp_path) -> None:
    records = ember_records(80, seed=3)
    X, y = ember.vectorize(records, 2), np.array([r["label"] for r in records], dtype=np.float32)
    data, reserve = _dat(tmp_path, "data", X[:50], y[:50]), _dat(tmp_path, "reserve", X[50:], y[50:])
    nan = X[:50].copy()
    nan[4, 10] = np.nan
    images = tmp_path / "images"
    write_image_subset(examples.digits().subset(range(40)), range(40), images)
    out = str(tmp_path / "o")
    common = ["--reserve", str(reserve), "--out", out]
    cases = {
        "NaN row": ["asset", str(_dat(tmp_path, "nan", nan, y[:50])), *common],
        "reserve of another width": ["asset", str(data), "--reserve",
                                     str(_dat(tmp_path, "narrow", X[50:, :2351], y[50:])), "--out", out],
        "reserve of one class": ["asset", str(data), "--reserve", str(_dat(tmp_path, "one", X[50:], 0 * y[50:])),
                                 "--out", out],
        "image folder as reserve": ["asset", str(data), "--reserve", str(images), "--out", out],
        "too few rows": ["asset", str(_dat(tmp_path, "few", X[:6], np.array([0, 1] * 3))), *common],
        "CNN on feature rows": ["asset", str(data), *common, "--arch", "resnet18"],
        "ember_mlp on images": ["asset", str(images), "--reserve", str(images), "--out", out, "--arch", "ember_mlp"],
        "--size on feature rows": ["asset", str(data), *common, "--size", "32"],
    }
    assert_bad_inputs_exit_2(cases, [data, reserve, images], tmp_path / "o")


# --- the parts ------------------------------------------------------------------------------------


def test_samples_gather_across_parts_in_order() -> None:
    a, b = torch.arange(20.0).view(10, 2), 100 + torch.arange(12.0).view(6, 2)
    view = Samples((a, torch.tensor([1, 3, 5])), (b, torch.tensor([0, 4])))
    assert len(view) == 5
    expected = torch.stack([a[1], a[3], a[5], b[0], b[4]])
    assert torch.equal(view[torch.arange(5)], expected)
    assert torch.equal(view[torch.tensor([4, 0, 3])], expected[[4, 0, 3]])
    assert torch.equal(view[1:4], expected[1:4])


def test_canaries_are_stratified_and_leave_the_reserve_enough() -> None:
    x, y = torch.zeros(30, 3), torch.tensor([0, 1] * 15)
    ry = torch.tensor([0] * 50 + [1] * 10 + [2] * 3)
    rx = torch.arange(63.0)[:, None].repeat(1, 3)
    inp = Inputs(x, y, rx, ry, 3, lambda: None, lambda v: v, "test", np.arange(30), 30, None)
    out = with_canaries(inp, 0.2, torch.Generator().manual_seed(0))
    assert out.n_canaries == 12 and len(out.x) == 42 and len(out.reserve_y) == 51
    canary_labels = out.y[30:]
    assert (canary_labels == 0).sum() == 10 and (canary_labels == 1).sum() == 2  # class 2 (3 rows) gives none
    assert torch.equal(out.x[torch.arange(30)], x)
    held = set(out.x[torch.arange(30, 42)][:, 0].tolist())
    assert held.isdisjoint(out.reserve_x[torch.arange(51)][:, 0].tolist())  # a canary leaves the reserve


def test_canaries_raise_the_cut() -> None:
    rng = np.random.default_rng(0)
    clean = rng.lognormal(0.0, 0.05, 1000)
    losses = np.concatenate([clean, [clean.max() * 3.0, 50.0], clean[:99], [40.0]])  # 100 canaries, one pushed
    flags, fit = loss_threshold(losses, 1e-6, canaries=100)
    assert len(flags) == 1002 and fit["cut"] == fit["canary_max_z"] > level_set_z(1e-6)
    assert flags[1001] and not flags[1000]  # above the pushed canary only the 50.0
    plain, _ = loss_threshold(losses[:1002], 1e-6)
    assert plain[1000] and plain[1001]
    z = robust_z(np.log(losses))
    assert fit["canary_max_z"] == pytest.approx(z[-100:].max())


def test_single_selected_row_uses_running_statistics() -> None:
    model = ember_mlp(8, 2).train()
    with max_step_norm(model, "batch-frozen", 1):
        model(torch.randn(1, 8))  # train-mode BatchNorm1d would refuse one row
    assert model.training


def test_feature_schedules_and_determinism(one_thread) -> None:
    assert get_schedule("fast", features=True) is FEATURE_FAST
    assert get_schedule("reference", features=True) is FEATURE_REFERENCE
    assert ASSET(epsilon=1e-3).resolved_schedule(features=True).epsilon == 1e-3
    assert FEATURE_FAST.canary_fraction > 0 and FEATURE_FAST.ao_cut == 1.0
    records = ember_records(600, seed=4, unlabelled=20)
    X, y = ember.vectorize(records, 2), np.array([r["label"] for r in records])

    def rows(lo: int, hi: int) -> FeatureDataset:
        return FeatureDataset(torch.from_numpy(X[lo:hi]), torch.from_numpy(y[lo:hi]), ["benign", "malicious"],
                              [str(i) for i in range(hi - lo)])

    data, reserve = rows(0, 400), rows(400, 600)
    reserve = reserve.subset(reserve.labelled_indices())
    tiny = replace(FEATURE_FAST, base=replace(FEATURE_FAST.base, epochs=1), min_base_steps=10,
                          min_offset_steps=4, mlp_steps=5)
    first = asset(data, reserve, schedule=tiny, device="cpu", seed=3)
    second = asset(data, reserve, schedule=tiny, device="cpu", seed=3)
    assert np.array_equal(first.scores, second.scores) and np.array_equal(first.flagged, second.flagged)
    unlabelled = y[:400] < 0
    assert (first.scores[unlabelled] == 0).all() and not first.flagged[unlabelled].any()
    assert np.isfinite(first.scores).all() and first.settings["arch"] == "ember_mlp"
