"""Feature-row datasets: EMBER layout, every format's round trip, bad input refused with one line."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sanitize import ember
from sanitize.data.rows import load_features, write_features
from sanitize.ember import synth as ember_synth
from sanitize.errors import SanitizeError

from .conftest import run_cli


@pytest.fixture(scope="module")
def records() -> list[dict]:
    recs = ember_synth.raw_records(240, seed=5, unlabelled=20)
    return recs


def test_layout_matches_ember() -> None:
    assert ember.DIMS == {1: 2351, 2: 2381}
    slices = ember.group_slices(2)
    assert slices["strings"] == slice(512, 616) and slices["general"] == slice(616, 626)
    assert slices["header"] == slice(626, 688) and slices["section"] == slice(688, 943)
    assert slices["imports"] == slice(943, 2223) and slices["datadirectories"] == slice(2351, 2381)
    assert len(ember.NON_HASHED) == 35 and len(ember.INFEASIBLE) == 18 and len(ember.FEASIBLE) == 17
    cols = ember.feature_indices(ember.FEASIBLE)
    assert cols.tolist()[:5] == [612, 613, 614, 615, 616] and cols.max() == 692


def test_vectorize_groups(records) -> None:
    X = ember.vectorize(records, 2)
    assert X.shape == (240, 2381) and X.dtype == np.float32 and np.isfinite(X).all()
    s = ember.group_slices(2)
    np.testing.assert_allclose(X[:, s["histogram"]].sum(1), 1.0, rtol=1e-5)  # normalised histograms
    np.testing.assert_allclose(X[:, s["byteentropy"]].sum(1), 1.0, rtol=1e-5)
    assert (X[:, 616] == [r["general"]["size"] for r in records]).all()
    assert (X[:, s["imports"]] < 0).any()  # signed hashing, as scikit-learn's default
    # the entry name is hashed character by character: ".text" has 5 characters, 4 distinct
    one = dict(records[0], section={"entry": ".text", "sections": []})
    entry = ember.vectorize([one], 2)[0, 688 + 155:688 + 205]
    assert np.abs(entry).sum() == 5
    assert ember.vectorize([{k: v for k, v in records[0].items() if k != "datadirectories"}], 1).shape == (1, 2351)


def _dat(tmp_path, X: np.ndarray, y: np.ndarray, name: str = "ember"):
    d = tmp_path / name
    d.mkdir()
    X.astype(np.float32).tofile(d / "X_train.dat")
    y.astype(np.float32).tofile(d / "y_train.dat")
    return d


def test_ember_dat_round_trip_is_byte_identical(tmp_path, records) -> None:
    X = ember.vectorize(records, 2)
    y = np.array([r["label"] for r in records], dtype=np.float32)
    src = _dat(tmp_path, X, y)
    data = load_features(src)
    assert data.source.format == "ember" and data.dim == 2381 and data.feature_version == 2
    assert data.n_unlabelled == 20 and data.paths[:2] == ["0", "1"]
    assert data.class_counts().sum() == 220
    keep = np.arange(0, 240, 3)
    out = tmp_path / "out"
    out.mkdir()
    assert write_features(data, keep, out) == ["X_train.dat", "y_train.dat"]
    row = 2381 * 4
    raw = (src / "X_train.dat").read_bytes()
    expected = b"".join(raw[i * row:(i + 1) * row] for i in keep)
    assert (out / "X_train.dat").read_bytes() == expected
    assert (out / "y_train.dat").read_bytes() == y[keep].tobytes()
    # feature version 1 is inferred from the sizes too
    v1 = load_features(_dat(tmp_path, X[:, :2351], y, "v1"))
    assert v1.dim == 2351 and v1.feature_version == 1


def test_npz_and_npy_round_trip_keep_dtype(tmp_path, records) -> None:
    X = ember.vectorize(records, 2).astype(np.float64)
    y = np.array([r["label"] for r in records], dtype=np.int64)
    ids = np.array([r["sha256"] for r in records])
    np.savez_compressed(tmp_path / "train.npz", X=X, y=y, ids=ids)
    data = load_features(tmp_path / "train.npz")
    assert data.paths[0] == ids[0] and any("float64" in n for n in data.notes)
    keep = np.array([0, 5, 7, 100, 239])
    (tmp_path / "o1").mkdir()
    write_features(data, keep, tmp_path / "o1")
    with np.load(tmp_path / "o1" / "train.npz") as back:
        assert back["X"].dtype == np.float64 and back["X"].tobytes() == X[keep].tobytes()
        assert back["y"].dtype == np.int64 and (back["y"] == y[keep]).all()
        assert back["ids"].tolist() == ids[keep].tolist()
    pair = tmp_path / "pair"
    pair.mkdir()
    np.save(pair / "X.npy", X.astype(np.float32))
    np.save(pair / "y.npy", y.astype(np.float32))
    data = load_features(pair)
    assert data.source.format == "npy"
    (tmp_path / "o2").mkdir()
    write_features(data.subset(np.arange(10, 20)), np.arange(5), tmp_path / "o2")
    assert np.load(tmp_path / "o2" / "X.npy").tobytes() == X[10:15].astype(np.float32).tobytes()


def test_jsonl_vectorised_and_lines_written_back_verbatim(tmp_path, records) -> None:
    path = tmp_path / "train.jsonl"
    lines = [json.dumps(r) + "\n" for r in records]
    path.write_text("".join(lines))
    data = load_features(path)
    assert data.source.format == "jsonl" and data.paths[3] == records[3]["sha256"]
    np.testing.assert_array_equal(data.X.numpy(), ember.vectorize(records, 2))
    keep = np.array([1, 2, 50, 239])
    (tmp_path / "o").mkdir()
    write_features(data, keep, tmp_path / "o")
    assert (tmp_path / "o" / "train.jsonl").read_text() == "".join(lines[i] for i in keep)


def test_bad_feature_input_is_one_line_exit_2(tmp_path, records, capsys) -> None:
    X = ember.vectorize(records[:40], 2)
    y = np.array([max(0, r["label"]) for r in records[:40]], dtype=np.float32)
    reserve = _dat(tmp_path, X, y, "reserve")
    cases = {}
    cases["wrong dims"] = _dat(tmp_path, X[:, :2000], y, "dims")
    nan = X.copy()
    nan[7, 3] = np.nan
    cases["NaN row"] = _dat(tmp_path, nan, y, "nan")
    inf = X.copy()
    inf[2, 900] = np.inf
    cases["inf row"] = _dat(tmp_path, inf, y, "inf")
    cases["label length"] = _dat(tmp_path, X, y[:-3], "labels")
    trunc = _dat(tmp_path, X, y, "truncated")
    with open(trunc / "X_train.dat", "r+b") as f:
        f.truncate(40 * 2381 * 4 - 100)
    cases["truncated .dat"] = trunc
    np.savez(tmp_path / "short.npz", X=X, y=y[:10])
    cases["npz label length"] = tmp_path / "short.npz"
    bad_json = tmp_path / "bad.jsonl"
    bad_json.write_text(json.dumps(records[0]) + "\n{not json\n")
    cases["bad jsonl"] = bad_json
    huge = y.astype(np.float64)
    huge[0] = 1e9  # would name a billion classes
    np.savez(tmp_path / "huge.npz", X=X, y=huge)
    cases["label 1e9"] = tmp_path / "huge.npz"
    deep = tmp_path / "deep.jsonl"
    deep.write_text(json.dumps(records[0]) + "\n" + "[" * 100_000 + "]" * 100_000 + "\n")
    cases["deeply nested jsonl"] = deep
    for name, path in cases.items():
        code = run_cli("ct", path, "--reserve", reserve, "--out", tmp_path / "o", "--device", "cpu", "-q")
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if line.strip()]
        assert code == 2, (name, err)
        assert len(lines) == 1 and lines[0].startswith("error: "), (name, err)
    assert not (tmp_path / "o").exists()
    with pytest.raises(SanitizeError, match="2351 or 2381 .*wrong feature count"):
        load_features(cases["wrong dims"])
    with pytest.raises(SanitizeError, match="label file length mismatch"):
        load_features(cases["label length"])
    with pytest.raises(SanitizeError, match="NaN or infinite .*first: row 7"):
        load_features(cases["NaN row"])
