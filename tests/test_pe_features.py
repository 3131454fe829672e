"""`sanitize features` on real PE files: the Windows launchers that ship inside pip and setuptools."""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from sanitize.data.rows import load_features

from .conftest import run_cli

pytest.importorskip("lief")


def launchers() -> list[Path]:
    """Windows .exe launchers of the installed pip (distlib) and setuptools, if present."""
    found = []
    for module in ("pip", "setuptools"):
        spec = importlib.util.find_spec(module)
        if spec is not None and spec.origin:
            found += sorted(Path(spec.origin).parent.rglob("*.exe"))
    return found


def test_features_from_real_pe_files(tmp_path) -> None:
    exes = [p for p in launchers() if "arm" not in p.name][:6]
    if len(exes) < 2:
        pytest.skip("no Windows launchers in the installed pip/setuptools")
    src = tmp_path / "pe"
    src.mkdir()
    for i, exe in enumerate(exes):
        shutil.copy(exe, src / f"{i}-{exe.name}")
    (src / "notes.txt").write_text("not a PE file at all\n")
    (src / "truncated.exe").write_bytes(exes[0].read_bytes()[:300])
    (src / "mz-garbage.exe").write_bytes(b"MZ" + bytes(range(256)) * 4)
    out = tmp_path / "features.jsonl"
    code = run_cli("features", src, "--out", out, "--vectors", tmp_path / "v.npz", "-q")
    assert code == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == len(exes)
    with open(tmp_path / "features.skipped.csv") as f:
        skipped = {row["path"]: row["reason"] for row in csv.DictReader(f)}
    assert set(skipped) == {"notes.txt", "truncated.exe", "mz-garbage.exe"}
    assert skipped["notes.txt"].startswith("not a PE file") and all(skipped.values())

    by_sha = {r["sha256"]: r for r in records}
    for i, exe in enumerate(exes):
        raw = (src / f"{i}-{exe.name}").read_bytes()
        r = by_sha[hashlib.sha256(raw).hexdigest()]
        assert sum(r["histogram"]) == len(raw) == r["general"]["size"]
        assert r["header"]["coff"]["machine"] == ("AMD64" if "64" in exe.name else "I386")
        assert r["header"]["optional"]["magic"] == ("PE32_PLUS" if "64" in exe.name else "PE32")
        assert r["section"]["entry"] == ".text" and r["imports"]  # launchers import kernel32 at least
        assert any(lib.lower() == "kernel32.dll" for lib in r["imports"])
        assert len(r["datadirectories"]) == 16 or len(r["datadirectories"]) == 15
    with np.load(tmp_path / "v.npz") as v:
        X, ids = v["X"], v["sha256"]
    assert X.shape == (len(exes), 2381) and np.isfinite(X).all()
    np.testing.assert_allclose(X[:, :256].sum(1), 1.0, rtol=1e-5)
    # the JSONL reads back as a feature dataset with the same vectors
    data = load_features(out)
    assert data.paths == ids.tolist() and data.n_unlabelled == len(exes)
    np.testing.assert_array_equal(data.X.numpy(), X)


def test_features_refuses_bad_output(tmp_path) -> None:
    assert run_cli("features", tmp_path / "missing", "--out", tmp_path / "f.jsonl") == 2
    assert run_cli("features", tmp_path, "--out", tmp_path / "f.csv") == 2


def test_features_never_writes_over_what_the_user_owns(tmp_path, capsys) -> None:
    """The skip list beside --out is checked like --out; a folder at --out is refused even with --force."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "notes.txt").write_text("not a PE file")
    own = tmp_path / "f.skipped.csv"
    own.write_text("mine")
    assert run_cli("features", inputs, "--out", tmp_path / "f.jsonl", "-q") == 2
    assert own.read_text() == "mine" and not (tmp_path / "f.jsonl").exists()
    (tmp_path / "d.jsonl").mkdir()
    assert run_cli("features", inputs, "--out", tmp_path / "d.jsonl", "--force", "-q") == 2
    assert run_cli("features", inputs, "--out", tmp_path / "f.jsonl", "--force", "-q") == 2  # not even --force
    assert own.read_text() == "mine"
    errors = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(errors) == 3 and "skip list" in errors[0] and "is a folder" in errors[1]
    assert "never replaced, even with --force" in errors[2]
    own.unlink()  # what features wrote itself, --force replaces
    assert run_cli("features", inputs, "--out", tmp_path / "f.jsonl", "-q") == 0
    assert run_cli("features", inputs, "--out", tmp_path / "f.jsonl", "-q") == 2
    assert run_cli("features", inputs, "--out", tmp_path / "f.jsonl", "--force", "-q") == 0


def test_features_outputs_follow_the_umask(tmp_path) -> None:
    import os

    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "notes.txt").write_text("not a PE file")
    old = os.umask(0o022)
    try:
        assert run_cli("features", inputs, "--out", tmp_path / "f.jsonl", "-q") == 0
    finally:
        os.umask(old)
    assert (tmp_path / "f.jsonl").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "f.skipped.csv").stat().st_mode & 0o777 == 0o644
