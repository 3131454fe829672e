"""Passive baselines on digits with a 5 % corner patch: measured recall/FPR, the shared model cache,
and ``sanitize scan`` as CI pipelines use it.

Every test here reads the poisoned folder of ``digits_folders`` and one module-wide model cache,
so the model is trained once per seed for all five baselines and the CLI runs (which is the point
of the cache). Spectral Signatures and Activation Clustering are held to what their papers
predict on this easy case (recall >= 0.8 at their default budgets, on two seeds); the other
baselines' bounds are their measured values (docs/baselines.md) with a margin.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from sanitize.attacks.base import rebuild
from sanitize.attacks.patch import badnet_stamp
from sanitize.data.images import load_image_folder, load_reserve
from sanitize.detectors import available_detectors, get_detector
from sanitize.detectors.passive.activation_clustering import judge_cluster
from sanitize.detectors.passive.base import activation_maps, global_pool, layer_notes
from sanitize.detectors.passive.spectral import DEFAULT_BUDGET
from sanitize.nn import cache as model_cache
from sanitize.nn.engine import TrainSpec
from sanitize.nn.models import build_model

from .conftest import assert_valid_report, bad_input_cases, digits_split, run_cli, tree_digest

BASELINES = ("spectral", "activation-clustering", "strip", "scan", "spectre")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("model-cache")


@pytest.fixture(scope="module")
def folders(digits_folders):
    data_dir, reserve_dir, truth = digits_folders
    data = load_image_folder(data_dir)
    reserve = load_reserve(reserve_dir, data)
    is_poison = np.array([p in truth for p in data.paths])
    return data, reserve, is_poison


@pytest.fixture(scope="module")
def results(folders, cache):
    data, reserve, _ = folders
    settings = {"strip": {"perturbations": 32}}
    return {name: get_detector(name, device="cpu", seed=0, cache_dir=cache, **settings.get(name, {}))
            .detect(data, reserve) for name in BASELINES}


@pytest.fixture(scope="module")
def seed1_results(folders, cache):
    """Spectral Signatures and Activation Clustering on a second seed (one more model to train)."""
    data, reserve, _ = folders
    return {name: get_detector(name, device="cpu", seed=1, cache_dir=cache).detect(data, reserve)
            for name in PAPER_RECALL}


def rates(result, is_poison) -> tuple[float, float, float]:
    tpr = (result.flagged & is_poison).sum() / is_poison.sum()
    fpr = (result.flagged & ~is_poison).sum() / (~is_poison).sum()
    return float(tpr), float(fpr), float(roc_auc_score(is_poison, result.scores))


def test_registered() -> None:
    assert set(BASELINES) <= set(available_detectors())


# (min TPR, max FPR, min AUROC) at the default settings, measured on this set-up (docs/baselines.md).
# Spectral Signatures and Activation Clustering: the recall their papers predict on a 5 % corner
# patch (>= 0.8). SS removes DEFAULT_BUDGET (0.3) of every class, so its FPR is that budget by
# construction (bound: budget + 0.01). AC has no budget: its false positives are the smaller
# halves of clean classes with a genuine two-style split (digits' class 1: ~3 % of clean samples
# each); bound 0.10. Seeds 0 / 1 measured TPR / FPR / AUROC: spectral .836/.273/.971 and
# .851/.272/.971, activation-clustering 1/.033/.982 and 1/.052/.970.
# Other baselines, seed 0: strip .642/.020/.985, scan 1/0/1, spectre .836/.273/.873 (runs are
# bit-for-bit repeatable on one CPU and thread count; the margin covers other CPUs' kernels).
PAPER_RECALL = {
    "spectral": (0.80, DEFAULT_BUDGET + 0.01, 0.90),
    "activation-clustering": (0.80, 0.10, 0.90),
}
BOUNDS = {
    **PAPER_RECALL,
    "strip": (0.55, 0.05, 0.95),
    "scan": (0.95, 0.01, 0.99),
    "spectre": (0.75, 0.32, 0.80),
}


def assert_within_bounds(name: str, result, is_poison, bounds: tuple[float, float, float]) -> None:
    """Measured TPR/FPR/AUROC against (min TPR, max FPR, min AUROC); printed for the log."""
    tpr, fpr, auroc = rates(result, is_poison)
    print(f"{name}: TPR {tpr:.3f} FPR {fpr:.4f} AUROC {auroc:.3f}")
    low_tpr, high_fpr, low_auroc = bounds
    assert tpr >= low_tpr and fpr <= high_fpr and auroc >= low_auroc, (name, tpr, fpr, auroc)


@pytest.mark.parametrize("name", BASELINES)
def test_baseline_detects_corner_patch(name, results, folders) -> None:
    data, _, is_poison = folders
    result = results[name]
    assert_within_bounds(name, result, is_poison, BOUNDS[name])
    assert result.method == name and len(result.scores) == len(data)
    if name in ("activation-clustering", "scan"):  # the methods with a class-level decision
        assert 0 in result.suspected_classes
        print(f"  suspected classes {result.suspected_classes}")


@pytest.mark.parametrize("name", PAPER_RECALL)
def test_paper_recall_on_a_second_seed(name, seed1_results, folders) -> None:
    _, _, is_poison = folders
    assert_within_bounds(f"{name} seed 1", seed1_results[name], is_poison, PAPER_RECALL[name])


def test_map_is_the_input_of_the_global_pool(folders, cache, results) -> None:
    """``layer="map"`` reads the activation map whose spatial mean is the cached penultimate vector."""
    data, _, _ = folders
    trained = model_cache.trained_model(data, seed=0, device=torch.device("cpu"), cache_dir=cache)
    maps = activation_maps(trained, data.images[:50])
    channels = trained.features.shape[1]
    assert maps.shape[0] == 50 and maps.shape[1] % channels == 0 and maps.shape[1] > channels
    pooled = maps.reshape(50, channels, -1).mean(dim=2)
    torch.testing.assert_close(pooled, trained.features[:50], rtol=1e-4, atol=1e-5)
    for name in PAPER_RECALL:
        assert results[name].settings["layer"] == "map"
        assert any("--layer map" in note for note in results[name].notes)


def test_map_falls_back_to_pooled_where_pooling_is_a_function() -> None:
    """MobileNetV2 pools with a function call: no module to hook, so the pooled vector is read and
    the report says so; the default architectures all have the module."""
    for arch in ("small_cnn", "resnet18", "vgg16"):
        assert global_pool(build_model(arch, 10, 3, 32)) is not None, arch
    mobilenet = SimpleNamespace(model=build_model("mobilenet_v2", 10, 3, 32), arch="mobilenet_v2")
    assert global_pool(mobilenet.model) is None
    assert "used the pooled features" in layer_notes(mobilenet, "map")[0]
    assert "--layer pooled" in layer_notes(mobilenet, "pooled")[0]


def test_budget_is_the_fraction_removed_per_class(results, folders) -> None:
    data, _, _ = folders
    labels = data.labels.numpy()
    for name in ("spectral", "spectre"):
        result = results[name]
        assert result.settings["budget"] == 0.3
        for c in range(data.num_classes):
            n = (labels == c).sum()
            assert result.flagged[labels == c].sum() == int(np.floor(0.3 * n + 0.5))


def test_model_is_trained_once_and_reused(results, folders, cache, monkeypatch) -> None:
    data, reserve, _ = folders
    trained = [r.settings["model_cached"] for r in results.values()]
    assert trained.count(False) == 1  # the first baseline trained, the other four loaded it
    assert len({r.settings["model_key"] for r in results.values()}) == 1

    def no_training(*args, **kwargs):
        raise AssertionError("retrained although the model is cached")

    monkeypatch.setattr(model_cache, "train_supervised", no_training)
    again = get_detector("spectral", device="cpu", seed=0, cache_dir=cache).detect(data, reserve)
    assert again.settings["model_cached"] and "load cached model" in again.timings
    np.testing.assert_array_equal(again.flagged, results["spectral"].flagged)


def test_cache_key_covers_data_seed_arch_schedule(folders) -> None:
    data, _, _ = folders
    h = model_cache.content_hash(data)
    spec = model_cache.default_schedule(len(data), 8)
    key = model_cache.cache_key(h, 0, "small_cnn", spec)
    changed = data.subset(np.arange(len(data)))
    changed.images[0, 0, 0, 0] ^= 1
    assert model_cache.content_hash(changed) != h
    assert key != model_cache.cache_key(h, 1, "small_cnn", spec)
    assert key != model_cache.cache_key(h, 0, "resnet18", spec)
    assert key != model_cache.cache_key(h, 0, "small_cnn", TrainSpec(**{**spec.__dict__, "epochs": spec.epochs + 1}))
    assert key == model_cache.cache_key(model_cache.content_hash(data.subset(np.arange(len(data)))), 0, "small_cnn",
                                        spec)


def test_scan_needs_reserve(folders, cache) -> None:
    data, _, _ = folders
    with pytest.raises(Exception, match="reserve"):
        get_detector("scan", device="cpu", cache_dir=cache).detect(data, None)


def test_scan_cli_end_to_end(digits_folders, cache, tmp_path) -> None:
    data, reserve, truth = digits_folders
    before = (tree_digest(data), tree_digest(reserve))
    out = tmp_path / "cleaned"
    code = run_cli("scan", "scan", data, "--reserve", reserve, "--out", out, "--device", "cpu", "--cache-dir", cache,
                   "--quiet")
    assert (tree_digest(data), tree_digest(reserve)) == before
    report = json.loads((out / "report.json").read_text())
    assert_valid_report(report)
    summary = report["summary"]
    assert summary["method"] == "scan" and summary["suspected_classes"] == ["0"]
    assert summary["settings"]["model_cached"]  # trained by the API tests above, same content
    flagged = {s["path"] for s in report["samples"] if s["flagged"]}
    assert len(flagged & truth) >= 0.95 * len(truth) and len(flagged - truth) <= 0.01 * len(report["samples"])
    assert code == 1  # poison flagged: the gate fails
    kept = {p.relative_to(out).as_posix() for p in out.rglob("*.png")}
    assert kept == {s["path"] for s in report["samples"]} - flagged

    # no reserve: spectral runs on the data alone; --budget is reported
    out2 = tmp_path / "spectral"
    code = run_cli("scan", "spectral", data, "--out", out2, "--budget", "0.1", "--device", "cpu",
                   "--cache-dir", cache, "--json-only")
    summary = json.loads((out2 / "report.json").read_text())["summary"]
    assert summary["settings"]["budget"] == 0.1 and not summary["settings"]["reserve"] and code == 1
    assert abs(summary["flagged_fraction"] - 0.1) < 0.01


def test_scan_bad_input_exits_2_with_one_line(digits_folders, cache, tmp_path, capsys) -> None:
    data, reserve, _ = digits_folders
    cases = {name: ["scan", "spectral", *args[1:]] for name, args in
             bad_input_cases("scan", tmp_path, data, reserve).items()}
    cases.update({
        "unknown method": ["scan", "nope", str(data), "--out", str(tmp_path / "o")],
        "scan without reserve": ["scan", "scan", str(data), "--out", str(tmp_path / "o")],
        "budget for strip": ["scan", "strip", str(data), "--out", str(tmp_path / "o"), "--budget", "0.1"],
        "layer for scan": ["scan", "scan", str(data), "--reserve", str(reserve), "--out", str(tmp_path / "o"),
                           "--layer", "map"],
        "unknown layer": ["scan", "spectral", str(data), "--out", str(tmp_path / "o"), "--layer", "conv1"],
        "budget out of range": ["scan", "spectral", str(data), "--out", str(tmp_path / "o"), "--budget", "1.5"],
        "reclassify threshold zero": ["scan", "activation-clustering", str(data), "--out", str(tmp_path / "o"),
                                      "--reclassify", "--reclassify-threshold", "0"],
        "reclassify for spectral": ["scan", "spectral", str(data), "--out", str(tmp_path / "o"), "--reclassify"],
        "threshold without reclassify": ["scan", "activation-clustering", str(data), "--out", str(tmp_path / "o"),
                                         "--reclassify-threshold", "2"],
    })
    digests = {p: tree_digest(p) for p in (data, reserve)}
    for name, args in cases.items():
        capsys.readouterr()
        assert run_cli(*args, "--cache-dir", cache) == 2, name
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: "), (name, err)
    assert not (tmp_path / "o").exists()
    assert {p: tree_digest(p) for p in digests} == digests


# --- Activation Clustering's exclusionary reclassification (--reclassify) -------------------------


def test_reclassification_verdict_is_l_over_p() -> None:
    """l: predicted as the label; p: the most frequent other class; legitimate iff l/p > T."""
    verdict = judge_cluster(np.array([1, 1, 1, 7, 7, 3]), label=1, num_classes=10, threshold=1.0)
    assert (verdict.l, verdict.p, verdict.other_class, verdict.ratio, verdict.legitimate) == (3, 2, 7, 1.5, True)
    assert not judge_cluster(np.array([1, 1, 7, 7]), 1, 10, 1.0).legitimate  # l/p == T: not above it
    assert not judge_cluster(np.array([7, 7, 7, 1]), 1, 10, 1.0).legitimate
    everything_label = judge_cluster(np.array([4, 4]), 4, 10, 1.0)
    assert everything_label.legitimate and everything_label.p == 0 and everything_label.ratio is None


def assert_consistent_reclassification(classes: list[dict], suspected: set[str], threshold: float) -> None:
    """Every candidate carries l, p, ratio and a decision that follows l/p > T; the others carry
    none; suspected = the candidates judged poison."""
    for entry in classes:
        if not entry["candidate"]:
            assert entry["reclass_decision"] is None and entry["reclass_l"] is None, entry
            continue
        legitimate = entry["reclass_ratio"] is None or entry["reclass_ratio"] > threshold
        assert entry["reclass_decision"] == ("legitimate" if legitimate else "poison"), entry
        assert (entry["name"] in suspected) == (not legitimate), entry
    assert suspected <= {entry["name"] for entry in classes if entry["candidate"]}


def test_reclassify_cli_reports_the_evidence(digits_folders, cache, tmp_path) -> None:
    """``--reclassify`` on the corner patch (seed 0): one extra model, evidence per candidate.

    The poison is drawn from every class, the target included, and the new model predicts it by
    its source: l is the poison made from class-0 images and p the largest other source, so l/p is
    near 1 (measured 1.0-1.22 over seeds 0-2), which is why reclassification is off by default.
    The clean class-1 cluster is a second writing style the new model mostly does not recognise
    as a 1 (measured l at most 45 % of the cluster).
    """
    data, _, _ = digits_folders
    out = tmp_path / "ac"
    run_cli("scan", "activation-clustering", data, "--out", out, "--reclassify", "--device", "cpu",
            "--cache-dir", cache, "--json-only")
    report = json.loads((out / "report.json").read_text())
    assert_valid_report(report)
    summary, classes = report["summary"], {c["name"]: c for c in report["classes"]}
    assert summary["settings"]["reclassify"] and summary["settings"]["reclassify_threshold"] == 1.0
    assert summary["timings"]["exclusionary reclassification"] > 0
    candidates = [name for name, c in classes.items() if c["candidate"]]
    assert "0" in candidates
    assert any(f"1 model trained without the {len(candidates)} candidate cluster(s)" in n for n in summary["notes"])
    assert_consistent_reclassification(report["classes"], set(summary["suspected_classes"]), 1.0)
    origin = json.loads((data / "poison.json").read_text())["origin"]
    sources = np.bincount([int(o.split("/")[0]) for o in origin.values()], minlength=10)
    poison = classes["0"]
    print("class 0", {k: v for k, v in poison.items() if k.startswith("reclass")}, "sources", sources.tolist())
    assert abs(poison["reclass_l"] - sources[0]) <= 3 and poison["reclass_p"] <= sources[1:].max() + 3
    if "1" in candidates:
        style = classes["1"]
        size = round(style["relative_size"] * style["n_samples"])
        print("class 1", {k: v for k, v in style.items() if k.startswith("reclass")}, "cluster", size)
        assert style["reclass_l"] <= 0.6 * size


@pytest.fixture(scope="module")
def single_source_poison():
    """The paper's setting: 67 images of one source class (7) with the corner patch, labelled 0
    (the same count and patch as the test set above, from a single source)."""
    data, _ = digits_split(0)
    labels = data.labels.numpy()
    index = np.random.default_rng(0).choice(np.flatnonzero(labels == 7), 67, replace=False)
    rows = torch.from_numpy(index)
    images, poisoned_labels = data.images.clone(), data.labels.clone()
    images[rows] = badnet_stamp(data, 0).apply(images[rows])
    poisoned_labels[rows] = 0
    is_poison = np.zeros(len(data), dtype=bool)
    is_poison[index] = True
    return rebuild(data, images, poisoned_labels), is_poison


@pytest.mark.parametrize("seed", [0, 1])
def test_reclassification_keeps_single_source_poison(single_source_poison, cache, seed) -> None:
    """Where the paper's premise holds (one source class), the model trained without the poison
    cluster predicts it as the source (l/p = 0 measured at seeds 0-2), so recall stays; clusters
    can only be cleared, never added, so FPR never rises (measured 0.034 -> 0 at seed 0, 0.054 ->
    0.054 at seed 1: the class-1 style's l/p was 0.44 there)."""
    data, is_poison = single_source_poison
    plain = get_detector("activation-clustering", device="cpu", seed=seed, cache_dir=cache).detect(data)
    result = get_detector("activation-clustering", device="cpu", seed=seed, cache_dir=cache,
                          reclassify=True).detect(data)
    (tpr, fpr), (plain_tpr, plain_fpr) = rates(result, is_poison)[:2], rates(plain, is_poison)[:2]
    poison = result.class_stats[0]
    print(f"seed {seed}: TPR {plain_tpr:.3f} -> {tpr:.3f}, FPR {plain_fpr:.4f} -> {fpr:.4f}; "
          f"suspected {plain.suspected_classes} -> {result.suspected_classes}; class 0 l={poison['reclass_l']} "
          f"p={poison['reclass_p']} source {poison['reclass_other_class']}")
    assert tpr >= 0.8 and 0 in result.suspected_classes
    assert poison["reclass_other_class"] == "7" and poison["reclass_l"] <= 2 and poison["reclass_p"] >= 60
    assert fpr <= plain_fpr and set(result.suspected_classes) <= set(plain.suspected_classes)
    named = [{**s, "name": data.classes[s["class"]]} for s in result.class_stats]
    assert_consistent_reclassification(named, {data.classes[c] for c in result.suspected_classes}, 1.0)
