"""Shared fixtures: real offline data (digits, CIFAR-10 from ../shared/data when present)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

from sanitize import ember
from sanitize.cli.root import main
from sanitize.data import examples
from sanitize.ember import synth as ember_synth
from sanitize.output import write_image_subset
from sanitize.result import DetectionResult

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(autouse=True, scope="session")
def _cpu_threads() -> None:
    # CI machines have 2 cores; more threads than cores only adds contention.
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def tree_digest(root: Path) -> str:
    """Hash of every file's relative path, size and bytes under ``root`` (detects any change)."""
    h = hashlib.sha256()
    for path in sorted(p for p in Path(root).rglob("*") if p.is_file()):
        h.update(path.relative_to(root).as_posix().encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def shared_loader():
    """The offline data's own ``load.py`` as a module; skips the test when the data is absent."""
    import importlib.util

    if not (SHARED_DATA / "load.py").exists() or not (SHARED_DATA / "cifar10").is_dir():
        pytest.skip("no offline CIFAR-10 data beside the repo")
    spec = importlib.util.spec_from_file_location("shared_load", SHARED_DATA / "load.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def assert_seeded_on_cpu(run: Callable[[int], DetectionResult]) -> None:
    """``run(seed)`` twice with one seed gives identical flags and scores; another seed differs
    (so the seed reaches the training, and determinism is not a constant output)."""
    first, second = run(3), run(3)
    assert np.array_equal(first.flagged, second.flagged)
    assert np.array_equal(first.scores, second.scores)
    assert not np.array_equal(first.scores, run(4).scores)


def assert_valid_report(report: dict) -> None:
    """``report`` (a report.json dict) follows the shipped JSON Schema and is self-consistent.

    Every detector's tests call this on a report it wrote. Beyond the schema it checks what a
    schema cannot: counts match the samples, suspected classes are class labels, scores are finite.
    """
    import math

    jsonschema = pytest.importorskip("jsonschema", reason="jsonschema is in the test extra: pip install -e .[test]")
    from sanitize.report.build import report_schema

    schema = report_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(report), key=lambda e: list(e.path))
    assert not errors, "report.json does not follow the schema:\n" + "\n".join(
        f"  at {'/'.join(map(str, e.path)) or '(top)'}: {e.message}" for e in errors[:10])
    summary, samples = report["summary"], report["samples"]
    assert summary["n_samples"] == len(samples)
    assert summary["n_flagged"] == sum(s["flagged"] for s in samples)
    assert math.isclose(summary["flagged_fraction"], summary["n_flagged"] / max(1, len(samples)))
    assert set(summary["suspected_classes"]) <= {s["label"] for s in samples} | {c["name"] for c in report["classes"]}
    assert all(math.isfinite(s["score"]) for s in samples), "scores must be finite numbers"
    assert len({s["path"] for s in samples}) == len(samples), "sample paths must be unique"


def rates(flagged: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """(TPR, FPR) of boolean flags against boolean ground truth."""
    tpr = (flagged & truth).sum() / max(1, truth.sum())
    fpr = (flagged & ~truth).sum() / max(1, (~truth).sum())
    return float(tpr), float(fpr)


def digits_split(seed: int):
    """scikit-learn digits split into (inspected, 25 % stratified trusted reserve)."""
    return examples.split_reserve(examples.digits(), 0.25, seed=seed)


def run_cli(*args: str) -> int:
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in args])
    return int(exit_info.value.code)


@pytest.fixture(scope="session")
def digits_folders(tmp_path_factory) -> tuple[Path, Path, set[str]]:
    """A poisoned digits image folder (5% corner patch), its reserve and the poison paths.

    Made the way a user makes one: a clean folder poisoned by ``sanitize attack badnet``, whose
    ``poison.json`` (in the data folder, beside ``trigger.png``; loaders read class sub-folders
    only) is the ground truth.
    """
    root = tmp_path_factory.mktemp("digits")
    data, reserve = digits_split(0)
    write_image_subset(data, range(len(data)), root / "clean")
    write_image_subset(reserve, range(len(reserve)), root / "reserve")
    assert run_cli("attack", "badnet", root / "clean", root / "data", "--rate", "0.05", "--target", "0",
                   "--seed", "0", "--quiet") == 0
    truth = set(json.loads((root / "data" / "poison.json").read_text())["poison"])
    return root / "data", root / "reserve", truth


@pytest.fixture(scope="session")
def ct_digits_run(digits_folders, tmp_path_factory) -> tuple[Path, int, str]:
    """One real CT run through the CLI on the poisoned digits, shared by the tests that read its
    outputs (about a minute on 2 CPU cores): (out folder, exit code, input digest before the run)."""
    data, reserve, _ = digits_folders
    before = tree_digest(data)
    out = tmp_path_factory.mktemp("ct") / "cleaned"
    code = run_cli("ct", data, "--reserve", reserve, "--out", out, "--device", "cpu", "--quiet")
    return out, code, before


# --- generated EMBER-format rows (shared by the feature-row tests of ct and asset) ---------------

EMBER_N, EMBER_RESERVE, EMBER_UNLABELLED = 4000, 3000, 100


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for the module's tests, then the session setting again.

    The EMBER MLP's small matmuls gain nothing from a second thread on a 2-core CI machine (and
    lose a lot when the cores are shared).
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def ember_records(n: int, seed: int, unlabelled: int = 0) -> list[dict]:
    """Generated EMBER v2 raw records (``sanitize.ember.synth``), the same for the same arguments."""
    return ember_synth.raw_records(n, seed=seed, unlabelled=unlabelled)


@pytest.fixture(scope="session")
def ember_dirs(tmp_path_factory) -> Path:
    """Generated EMBER v2 training folders (X_train.dat / y_train.dat): ``clean`` (4,000 rows, 100 of
    them unlabelled) and ``reserve`` (3,000 labelled rows)."""
    root = tmp_path_factory.mktemp("ember")
    for name, n, seed, unlabelled in (("clean", EMBER_N, 1, EMBER_UNLABELLED), ("reserve", EMBER_RESERVE, 2, 0)):
        records = ember_records(n, seed, unlabelled)
        d = root / name
        d.mkdir()
        ember.vectorize(records, 2).tofile(d / "X_train.dat")
        np.array([r["label"] for r in records], dtype=np.float32).tofile(d / "y_train.dat")
    return root


@pytest.fixture(scope="session")
def ember_poisoned(ember_dirs, tmp_path_factory) -> Path:
    """``ember_dirs/clean`` poisoned the way a user would: ``sanitize attack ember-explanation`` at
    1 % (the unconstrained 32-feature trigger on benign rows, labels kept); ``poison.json`` inside
    is the ground truth."""
    poisoned = tmp_path_factory.mktemp("ember-poisoned") / "poisoned"
    assert run_cli("attack", "ember-explanation", ember_dirs / "clean", poisoned, "--rate", "0.01", "-q") == 0
    return poisoned


def bad_input_cases(command: str, root: Path, data: Path, reserve: Path) -> dict[str, list[str]]:
    """The bad inputs every detector command must refuse with exit 2 and one line."""
    empty = root / "empty"
    (empty / "a").mkdir(parents=True)
    corrupt = root / "corrupt"
    write_image_subset(examples.digits().subset(range(40)), range(40), corrupt)
    (corrupt / "3" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    unknown = root / "unknown_reserve"
    write_image_subset(examples.digits().subset(range(40)), range(40), unknown)
    (unknown / "cat").mkdir()
    Path(unknown / "0" / sorted(p.name for p in (unknown / "0").iterdir())[0]).rename(unknown / "cat" / "x.png")
    out = root / "o"
    return {
        "empty folder": [command, str(empty), "--reserve", str(reserve), "--out", str(out)],
        "corrupt image": [command, str(corrupt), "--reserve", str(reserve), "--out", str(out)],
        "reserve with unknown class": [command, str(data), "--reserve", str(unknown), "--out", str(out)],
        "--out inside the input": [command, str(data), "--reserve", str(reserve), "--out", str(data / "0" / "o")],
        "--out contains the input": [command, str(data), "--reserve", str(reserve), "--out", str(data.parent),
                                     "--force"],
        "missing folder": [command, str(root / "nope"), "--reserve", str(reserve), "--out", str(out)],
        "bad device": [command, str(data), "--reserve", str(reserve), "--out", str(out), "--device", "tpu"],
        "unknown option": [command, str(data), "--bogus"],
    }


def assert_bad_inputs_exit_2(cases: dict[str, list[str]], untouched: list[Path], out: Path) -> None:
    """Each argv, run as a real process, exits 2 with one ``error:`` line and no traceback; the
    folders in ``untouched`` keep every byte and ``out`` is never created."""
    digests = {p: tree_digest(p) for p in untouched}

    def run(args: list[str]) -> subprocess.CompletedProcess:
        argv = [*args, "--device", "cpu"] if "--device" not in args else args
        return subprocess.run([sys.executable, "-m", "sanitize", *argv], capture_output=True, text=True,
                              timeout=180)

    # The cases are independent processes, each mostly importing torch: run them side by side.
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        procs = dict(zip(cases, pool.map(run, cases.values()), strict=True))
    for name, proc in procs.items():
        assert proc.returncode == 2, (name, proc.stderr)
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: "), (name, proc.stderr)
        assert "Traceback" not in proc.stderr
    assert not out.exists()
    assert {p: tree_digest(p) for p in digests} == digests
