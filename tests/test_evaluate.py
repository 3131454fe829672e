"""Scoring a report against ground truth: metrics, truth formats, mismatches, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sanitize.cli.root import main
from sanitize.errors import SanitizeError
from sanitize.evaluate import Truth, evaluate_files, evaluate_report, load_truth

# Ten samples: p1-p3 poison, c1 a cover (counts as clean), n1-n6 clean.
SCORES = {"p1": 0.9, "p2": 0.8, "p3": 0.1, "c1": 0.7, "n1": 0.6, "n2": 0.5, "n3": 0.4, "n4": 0.3, "n5": 0.2,
          "n6": 0.05}
FLAGGED = {"p1", "p2", "c1"}


def make_report(names: list[str] | None = None) -> dict:
    names = list(SCORES) if names is None else names
    samples = [{"path": f"{'0' if n.startswith('p') else '1'}/{n}.png", "label": "x", "score": SCORES[n],
                "flagged": n in FLAGGED} for n in names]
    return {"schema_version": 1, "summary": {"method": "ct"}, "classes": [], "samples": samples}


TRUTH = Truth(poison=["0/p1.png", "0/p2.png", "0/p3.png"], cover=["1/c1.png"])


def test_flags_must_be_json_booleans_and_json_depth_is_bounded(tmp_path: Path) -> None:
    report = make_report()
    report["samples"][0]["flagged"] = "false"  # truthy in Python: it would count as flagged
    with pytest.raises(SanitizeError, match="true or false"):
        evaluate_report(report, TRUTH)
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(SanitizeError, match="nested too deeply"):
        load_truth(deep)
    with pytest.raises(SanitizeError, match="nested too deeply"):
        evaluate_files(deep, deep)
    binary = tmp_path / "report.json"
    binary.write_bytes(b"\xff\xfe\x00 not text")
    with pytest.raises(SanitizeError, match="cannot read report"):
        evaluate_files(binary, deep)


def test_metrics_on_a_hand_made_report() -> None:
    m = evaluate_report(make_report(), TRUTH)
    assert (m["n_samples"], m["n_poison"], m["n_clean"], m["n_cover"]) == (10, 3, 7, 1)
    assert (m["n_flagged"], m["true_positives"], m["false_positives"], m["cover_flagged"]) == (3, 2, 1, 1)
    assert m["tpr"] == pytest.approx(2 / 3)
    assert m["fpr"] == pytest.approx(1 / 7)  # the flagged cover is a false positive
    assert m["precision"] == pytest.approx(2 / 3)
    # AUROC by counting pairs: p1 and p2 beat all 7 clean, p3 (0.1) beats only n6 -> (7 + 7 + 1) / 21.
    assert m["auroc"] == pytest.approx(15 / 21)


def test_undefined_metrics_are_none() -> None:
    m = evaluate_report(make_report(), Truth(poison=[]))
    assert m["tpr"] is None and m["auroc"] is None and m["fpr"] == pytest.approx(3 / 10)
    report = make_report()
    for s in report["samples"]:
        s["flagged"] = False
    m = evaluate_report(report, TRUTH)
    assert m["precision"] is None and m["n_flagged"] == 0 and m["tpr"] == 0.0


def test_truth_formats(tmp_path: Path) -> None:
    (tmp_path / "poison.json").write_text(json.dumps({"attack": "badnet", "poison": ["0/p1.png", "./0/p2.png"],
                                                      "cover": ["1/c1.png"]}))
    (tmp_path / "list.json").write_text(json.dumps(["0/p1.png", "0/p2.png"]))
    (tmp_path / "list.txt").write_text("# poison samples\n0/p1.png\n\n0\\p2.png  # windows separator\n")
    assert load_truth(tmp_path / "poison.json") == Truth(["0/p1.png", "0/p2.png"], ["1/c1.png"])
    assert load_truth(tmp_path / "list.json") == Truth(["0/p1.png", "0/p2.png"])
    assert load_truth(tmp_path / "list.txt") == Truth(["0/p1.png", "0/p2.png"])
    (tmp_path / "bad.json").write_text(json.dumps({"paths": []}))
    with pytest.raises(SanitizeError, match="poison"):
        load_truth(tmp_path / "bad.json")
    with pytest.raises(SanitizeError, match="cannot read"):
        load_truth(tmp_path / "missing.json")


def test_report_and_truth_on_different_folders_is_an_error() -> None:
    with pytest.raises(SanitizeError, match="not in the report"):
        evaluate_report(make_report(), Truth(poison=["0/p1.png", "elsewhere/p9.png"]))
    with pytest.raises(SanitizeError, match="not in the report"):
        evaluate_report(make_report(), Truth(poison=["0/p1.png"], cover=["1/zz.png"]))
    duplicated = make_report()
    duplicated["samples"].append(dict(duplicated["samples"][0]))
    with pytest.raises(SanitizeError, match="more than once"):
        evaluate_report(duplicated, TRUTH)


def run_cli(args: list[str]) -> int:
    with pytest.raises(SystemExit) as exc:
        main(args)
    return int(exc.value.code or 0)


def test_cli_prints_and_writes_metrics(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = tmp_path / "cleaned"
    run_dir.mkdir()
    (run_dir / "report.json").write_text(json.dumps(make_report()))
    (tmp_path / "poison.json").write_text(json.dumps({"poison": TRUTH.poison, "cover": TRUTH.cover}))
    out = tmp_path / "metrics.json"
    assert run_cli(["evaluate", str(run_dir / "report.json"), "--truth", str(tmp_path / "poison.json"),
                    "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "TPR" in printed and "0.6667" in printed and "AUROC" in printed
    written = json.loads(out.read_text())
    assert written["auroc"] == pytest.approx(15 / 21) and written["n_flagged"] == 3 and written["method"] == "ct"
    # The output folder of a detector run is accepted in place of its report.json.
    assert evaluate_files(run_dir, tmp_path / "poison.json")["fpr"] == pytest.approx(1 / 7)


def test_cli_mismatch_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "report.json").write_text(json.dumps(make_report(["p1", "n1", "n2"])))
    (tmp_path / "truth.txt").write_text("0/p1.png\n0/p2.png\n")
    assert run_cli(["evaluate", str(tmp_path / "report.json"), "--truth", str(tmp_path / "truth.txt")]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "0/p2.png" in err
    (tmp_path / "notreport.json").write_text("[]")
    assert run_cli(["evaluate", str(tmp_path / "notreport.json"), "--truth", str(tmp_path / "truth.txt")]) == 2


def test_poison_json_paths_match_a_report_on_the_poisoned_folder(tmp_path: Path) -> None:
    """attack -> (a detector that flags exactly the poison) -> evaluate: TPR 1, FPR 0, AUROC 1."""
    from sanitize import load_image_folder
    from sanitize.data import examples
    from sanitize.output import write_image_subset

    write_image_subset(examples.digits(), range(300), tmp_path / "clean")
    out = tmp_path / "poisoned"
    assert run_cli(["attack", "wanet", str(tmp_path / "clean"), str(out), "--rate", "0.05", "-q"]) == 0
    truth = load_truth(out / "poison.json")
    assert len(truth.poison) == 15 and len(truth.cover) == 30
    poisoned = load_image_folder(out)
    samples = [{"path": p, "label": "x", "score": float(p in truth.poison), "flagged": p in truth.poison}
               for p in poisoned.paths]
    m = evaluate_report({"summary": {}, "samples": samples}, truth)
    assert (m["tpr"], m["fpr"], m["precision"], m["auroc"]) == (1.0, 0.0, 1.0, 1.0)
    assert m["n_cover"] == 30 and m["n_clean"] == 285


def test_cli_json_never_overwrites_an_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = tmp_path / "cleaned"
    run_dir.mkdir()
    report = run_dir / "report.json"
    report.write_text(json.dumps(make_report()))
    truth = tmp_path / "poison.json"
    truth.write_text(json.dumps({"poison": TRUTH.poison, "cover": TRUTH.cover}))
    before = report.read_bytes(), truth.read_bytes()
    for source, json_out in ((run_dir, report), (report, report), (report, truth)):
        assert run_cli(["evaluate", str(source), "--truth", str(truth), "--json", str(json_out)]) == 2
        assert "is an input" in capsys.readouterr().err
    assert (report.read_bytes(), truth.read_bytes()) == before


@pytest.mark.parametrize("args", [["--help"], ["attack", "--help"], ["ct", "--help"], ["evaluate", "REPORT"]])
def test_commands_that_do_not_train_start_without_torch(tmp_path: Path, args: list[str]) -> None:
    """``--help`` and ``evaluate`` import no torch, torchvision or Pillow (the detectors load them
    when they run), so they start in a few tenths of a second instead of seconds; ``evaluate``
    loads scikit-learn for its AUROC and nothing else."""
    import subprocess
    import sys

    (tmp_path / "report.json").write_text(json.dumps(make_report()))
    (tmp_path / "poison.json").write_text(json.dumps({"poison": TRUTH.poison, "cover": TRUTH.cover}))
    heavy = ("torch", "torchvision", "PIL", "scipy", "sklearn", "statsmodels", "jinja2")
    if args == ["evaluate", "REPORT"]:
        args = ["evaluate", str(tmp_path / "report.json"), "--truth", str(tmp_path / "poison.json")]
        heavy = ("torch", "torchvision", "PIL", "statsmodels", "jinja2")
    script = ("import sys\nfrom sanitize.cli.root import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n"
              f"    code = e.code\nprint('LOADED', code, sorted(m for m in {heavy!r} if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=120)
    assert proc.stdout.strip().splitlines()[-1] == "LOADED 0 []", proc.stdout[-500:] + proc.stderr[-500:]
