"""The CI gate and machine output of every detector command, without training a model.

``run_detector`` is driven with a deterministic detector double that flags known paths, so these
tests check the plumbing (exit codes, --json-only, --max-flagged-fraction, --fail-on-detect)
quickly; real detection is asserted in each detector's own tests.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from sanitize.cli.common import run_detector
from sanitize.errors import SanitizeError
from sanitize.pipeline import RunOptions, gate
from sanitize.result import DetectionResult


def flag_paths(truth: set[str], suspected: list[int]):
    def detect(data, reserve, progress) -> DetectionResult:
        flagged = np.array([p in truth for p in data.paths])
        return DetectionResult("double", scores=flagged.astype(float), flagged=flagged,
                               suspected_classes=suspected)
    return detect


def summary(n_flagged: int, n: int = 100, suspected: list[str] | None = None) -> dict:
    return {"n_flagged": n_flagged, "flagged_fraction": n_flagged / n, "suspected_classes": suspected or []}


@pytest.mark.parametrize(("n_flagged", "max_fraction", "fail_on_detect", "suspected", "code"), [
    (0, 0.0, False, [], 0),
    (1, 0.0, False, ["0"], 1),       # default: any flag fails
    (3, 0.05, False, ["0"], 0),      # under the tolerated fraction
    (6, 0.05, False, ["0"], 1),      # over it
    (3, 0.05, True, ["0"], 1),       # a suspected class fails the gate whatever the fraction
    (0, 0.05, True, [], 0),
])
def test_gate_exit_codes(n_flagged, max_fraction, fail_on_detect, suspected, code) -> None:
    verdict = gate(summary(n_flagged, suspected=suspected), max_fraction, fail_on_detect)
    assert verdict["exit_code"] == code
    assert verdict["passed"] == (code == 0)
    assert bool(verdict["reasons"]) == (code == 1)


def test_max_flagged_fraction_is_checked() -> None:
    with pytest.raises(SanitizeError, match="max_flagged_fraction"):
        RunOptions(out="o", max_flagged_fraction=1.5)


def test_json_only_prints_one_document_and_gates(digits_folders, tmp_path, capsys) -> None:
    data, reserve, truth = digits_folders
    detect = flag_paths(truth, [0])
    n = sum(1 for _ in data.rglob("*.png"))

    code = run_detector(detect, data, reserve, RunOptions(tmp_path / "a", json_only=True))
    doc = json.loads(capsys.readouterr().out)  # nothing but the JSON document on stdout
    assert code == 1 and doc["summary"]["n_flagged"] == len(truth)
    assert doc["summary"]["gate"]["passed"] is False and doc["out"] == str(tmp_path / "a")
    report = json.loads((tmp_path / "a" / "report.json").read_text())
    assert report["summary"]["gate"] == doc["summary"]["gate"]

    tolerant = RunOptions(tmp_path / "b", json_only=True, max_flagged_fraction=2 * len(truth) / n)
    assert run_detector(detect, data, reserve, tolerant) == 0
    assert json.loads(capsys.readouterr().out)["summary"]["gate"]["passed"] is True

    strict = RunOptions(tmp_path / "c", json_only=True, max_flagged_fraction=0.5, fail_on_detect=True)
    assert run_detector(detect, data, reserve, strict) == 1
    capsys.readouterr()
    assert run_detector(flag_paths(set(), []), data, reserve, RunOptions(tmp_path / "d", quiet=True)) == 0


def test_no_colour_codes_when_not_a_terminal(digits_folders, tmp_path) -> None:
    """CI logs are not terminals: tables and help come out as plain text, no ANSI escapes."""
    import os
    import subprocess
    import sys

    data, reserve, truth = digits_folders
    report = {"schema_version": 1, "summary": {"method": "double"}, "classes": [],
              "samples": [{"path": p, "label": p.split("/")[0], "score": float(p in truth), "flagged": p in truth}
                          for p in sorted(str(q.relative_to(data).as_posix()) for q in data.glob("*/*.png"))]}
    (tmp_path / "report.json").write_text(json.dumps(report))
    env = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "TERM")}
    for args in (["--help"], ["evaluate", str(tmp_path / "report.json"), "--truth", str(data / "poison.json")]):
        proc = subprocess.run([sys.executable, "-m", "sanitize", *args], capture_output=True, text=True,
                              env=env, timeout=120)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip() and "\x1b[" not in proc.stdout + proc.stderr, args
