"""`sanitize ct` as CI pipelines use it: exit codes, outputs, untouched input, bad input."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import numpy as np

from sanitize.output import write_image_subset

from .conftest import assert_bad_inputs_exit_2, bad_input_cases, digits_split, run_cli, tree_digest


def test_ct_cli_end_to_end(digits_folders, ct_digits_run, tmp_path) -> None:
    data, reserve, truth = digits_folders
    out, code, before = ct_digits_run
    assert tree_digest(data) == before  # the input is never modified

    report = json.loads((out / "report.json").read_text())
    summary = report["summary"]
    for key in ("method", "n_samples", "n_flagged", "suspected_classes", "seconds", "seed", "device", "versions"):
        assert key in summary
    assert summary["method"] == "ct"
    assert code == (1 if summary["n_flagged"] else 0)
    samples = report["samples"]
    assert len(samples) == summary["n_samples"] == sum(1 for _ in data.glob("*/*.png"))
    assert set(samples[0]) >= {"path", "label", "score", "flagged"}
    assert np.isfinite([s["score"] for s in samples]).all()
    flagged = {s["path"] for s in samples if s["flagged"]}
    assert len(flagged & truth) >= 0.9 * len(truth)  # the TPR / FPR bounds, through the CLI
    assert len(flagged - truth) <= 0.05 * (len(samples) - len(truth))
    assert code == 1 and summary["suspected_classes"] == ["0"]

    # the user's self-test: attack -> ct -> evaluate (the fixture made `data` with `sanitize attack`)
    assert run_cli("evaluate", out / "report.json", "--truth", data / "poison.json", "--json",
                   tmp_path / "metrics.json", "-q") == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["tpr"] >= 0.9 and metrics["fpr"] <= 0.05 and metrics["n_poison"] == len(truth)

    with open(out / "flagged.csv") as f:
        rows = list(csv.DictReader(f))
    assert {r["path"] for r in rows} == flagged
    scores = [float(r["score"]) for r in rows]
    assert scores == sorted(scores, reverse=True)

    kept = {p.relative_to(out).as_posix() for p in out.rglob("*.png")}
    assert kept == {s["path"] for s in samples} - flagged
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == sorted(p.name for p in data.iterdir() if p.is_dir())
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".cleaned")]  # no staging leftovers

    # --out exists: refused without --force, nothing touched
    assert run_cli("ct", data, "--reserve", reserve, "--out", out, "--device", "cpu", "-q") == 2
    assert (out / "report.json").exists()


def test_clean_folder_exits_zero(tmp_path) -> None:
    data, reserve = digits_split(1)
    write_image_subset(data, range(len(data)), tmp_path / "data")
    write_image_subset(reserve, range(len(reserve)), tmp_path / "reserve")
    code = run_cli("ct", tmp_path / "data", "--reserve", tmp_path / "reserve", "--out", tmp_path / "out",
                   "--device", "cpu", "--seed", "1", "-q")
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["summary"]["n_flagged"] <= 0.01 * len(data)
    assert code == (1 if report["summary"]["n_flagged"] else 0)


def test_bad_input_exits_2_with_one_line(digits_folders, tmp_path) -> None:
    data, reserve, _ = digits_folders
    cases = bad_input_cases("ct", tmp_path, data, reserve)
    assert_bad_inputs_exit_2(cases, [data, reserve, tmp_path / "corrupt"], tmp_path / "o")


def test_error_messages_name_the_problem(digits_folders, tmp_path) -> None:
    data, reserve, _ = digits_folders
    cases = bad_input_cases("ct", tmp_path, data, reserve)
    expected = {"empty folder": "no images found", "corrupt image": "cannot decode image",
                "reserve with unknown class": "not in the dataset: cat", "--out inside the input": "inside the input"}
    for name, fragment in expected.items():
        proc = subprocess.run([sys.executable, "-m", "sanitize", *cases[name]], capture_output=True, text=True,
                              timeout=120)
        assert fragment in proc.stderr, (name, proc.stderr)
