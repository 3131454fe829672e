"""``sanitize bench`` on a tiny matrix (digits, 2 attacks x 2 detectors x 1 seed): every cell, resume."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sanitize import bench as bench_module
from sanitize.bench import BenchConfig, run_bench
from sanitize.data import examples
from sanitize.errors import SanitizeError
from sanitize.output import write_image_subset

from .conftest import run_cli


@pytest.fixture(scope="module")
def bench_folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    rest, test = examples.split_reserve(examples.digits(), 0.2, seed=3)
    clean, reserve = examples.split_reserve(rest, 0.15, seed=3)
    clean = clean.subset(np.arange(0, len(clean), 3))  # ~400 images: the retrainings stay cheap
    for name, ds in (("clean", clean), ("reserve", reserve), ("test", test)):
        write_image_subset(ds, range(len(ds)), root / name)
    return root


def test_bench_all_cells_then_resume(bench_folders, tmp_path) -> None:
    root = bench_folders
    out = tmp_path / "bench"
    args = ["bench", root / "clean", "--reserve", root / "reserve", "--test", root / "test", "--out", out,
            "--attacks", "badnet,blend", "--detectors", "spectral,activation-clustering", "--seeds", "0",
            "--rate", "0.05", "--epochs", "15", "--device", "cpu", "--cache-dir", tmp_path / "cache", "--quiet"]
    assert run_cli(*args) == 0
    result = json.loads((out / "bench.json").read_text())
    cells = {(r["attack"], r["detector"]) for r in result["rows"]}
    assert cells == {(a, d) for a in ("badnet", "blend") for d in ("none", "spectral", "activation-clustering")}
    assert len(result["computed_cells"]) == 6
    for row in result["rows"]:
        assert 0.0 <= row["acc"] <= 1.0 and 0.0 <= row["asr"] <= 1.0
        if row["detector"] != "none":
            assert 0.0 <= row["tpr"] <= 1.0 and 0.0 <= row["fpr"] <= 1.0 and row["seconds"] > 0
            assert row["auroc"] is not None
    rows = {(r["attack"], r["detector"]): r for r in result["rows"]}
    print({k: {m: r.get(m) for m in ("tpr", "fpr", "acc", "asr")} for k, r in rows.items()})
    assert rows["badnet", "none"]["asr"] >= 0.5  # the backdoor is learnt without a defence
    assert rows["badnet", "none"]["acc"] >= 0.8
    md = (out / "bench.md").read_text()
    assert md.count("\n") == 2 + 6 and "| badnet | spectral |" in md
    page = (out / "bench.html").read_text()
    assert "<svg" in page and "activation-clustering" in page and "http" not in page.replace(
        "http://www.w3.org/2000/svg", "").replace("http-equiv", "")  # self-contained: no external resources
    assert "Content-Security-Policy" in page and "<script" not in page  # the report page's base template

    # Re-run: nothing is recomputed (a detector or a retraining would fail here).
    def fail(*a, **k):
        raise AssertionError("a finished cell was recomputed")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(bench_module, "get_detector", fail)
        mp.setattr(bench_module, "trained_model", fail)
        assert run_cli(*args) == 0
    again = json.loads((out / "bench.json").read_text())
    assert again["computed_cells"] == [] and again["rows"] == result["rows"]

    # A changed setting of one detector invalidates only that detector's cells.
    config = BenchConfig(["badnet"], ["spectral", "activation-clustering"], [0], rate=0.05, epochs=15,
                         device="cpu", cache_dir=str(tmp_path / "cache"),
                         detector_settings={"spectral": {"budget": 0.1}})
    from sanitize.data.images import load_image_folder, load_like, load_reserve

    data = load_image_folder(root / "clean")
    changed = run_bench(data, load_reserve(root / "reserve", data), load_like(root / "test", data, "test"), out,
                        config)
    assert changed["computed_cells"] == ["badnet__spectral__seed0.json"]


def test_bench_refuses_unknown_names(bench_folders, tmp_path) -> None:
    with pytest.raises(SanitizeError, match="unknown detector 'nope'"):
        BenchConfig(["badnet"], ["nope"], [0]).check()
    with pytest.raises(SanitizeError, match="unknown attack"):
        BenchConfig(["nope"], ["spectral"], [0]).check()
    BenchConfig(["blend-all-to-all"], ["spectral"], [0]).check()  # the all-to-all variant of an attack that has one
    with pytest.raises(SanitizeError, match="unknown attack 'sig-all-to-all'.*badnet-all-to-all"):
        BenchConfig(["sig-all-to-all"], ["spectral"], [0]).check()
    root = bench_folders
    assert run_cli("bench", root / "clean", "--reserve", root / "reserve", "--test", root / "test", "--out",
                   tmp_path / "o", "--detectors", "spectral,nope", "--quiet") == 2
    assert not (tmp_path / "o").exists()
