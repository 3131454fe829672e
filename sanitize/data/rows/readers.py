"""Readers for EMBER ``.dat``, ``.npz`` / ``.npy`` and raw ``.jsonl`` rows, and the reserve check."""

from __future__ import annotations

import json
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ... import ember
from ...errors import ParameterError, SanitizeError
from ..images import check_several_classes
from .dataset import BINARY_CLASSES, CHUNK_ROWS, FORMATS, FeatureDataset, FeatureSource, scan_rows
from .formats import detect_format, ember_pair, npy_pair, single_file

# Labels index classes 0..K-1 and every class gets a name: a stray 1e9 would build a billion.
MAX_CLASSES = 10_000


def _labels_from(values: np.ndarray, what: str) -> tuple[torch.Tensor, list[str]]:
    """Integer labels (-1 = unlabelled) and class names from a label array."""
    values = np.asarray(values)
    if values.ndim != 1:
        raise SanitizeError(f"{what}: labels must be one value per row, got shape {values.shape}")
    as_float = values.astype(np.float64)
    if not np.isfinite(as_float).all() or (np.round(as_float) != as_float).any():
        raise SanitizeError(f"{what}: labels must be whole numbers (-1 = unlabelled, 0, 1, ...)")
    labels = as_float.astype(np.int64)
    if len(labels) and labels.min() < -1:
        raise SanitizeError(f"{what}: label {labels.min()} is not allowed (-1 = unlabelled, 0, 1, ...)")
    top = int(labels.max()) if len(labels) else 1
    if top >= MAX_CLASSES:
        raise SanitizeError(f"{what}: label {top} is not allowed: class labels run from 0 to at most "
                            f"{MAX_CLASSES - 1} (-1 = unlabelled)")
    classes = list(BINARY_CLASSES) if top <= 1 else [str(c) for c in range(top + 1)]
    return torch.from_numpy(labels), classes


def _check_width(dim: int, what: str, require_ember: bool) -> None:
    if require_ember and ember.version_for_dim(dim) is None:
        raise SanitizeError(f"{what}: rows have {dim} values; EMBER rows have 2351 (feature version 1) "
                            f"or 2381 (version 2)")
    if dim < 1:
        raise SanitizeError(f"{what}: rows have no features")


def read_ember_dat(path: Path) -> FeatureDataset:
    pair = ember_pair(path)
    if pair is None:
        raise SanitizeError(f"{path}: no X_*.dat file")
    x_path, y_path = pair
    if not y_path.is_file():
        raise SanitizeError(f"{x_path}: label file {y_path.name} is missing")
    y_bytes, x_bytes = y_path.stat().st_size, x_path.stat().st_size
    if y_bytes % 4:
        raise SanitizeError(f"{y_path}: {y_bytes} bytes is not a whole number of float32 labels (truncated?)")
    n = y_bytes // 4
    if n == 0:
        raise SanitizeError(f"{y_path}: no labels")
    dims = [d for d in ember.DIMS.values() if x_bytes == 4 * n * d]
    if not dims:
        rows = {d: x_bytes / (4 * d) for d in ember.DIMS.values()}
        whole = [f"{int(r)} rows of {d}" for d, r in rows.items() if r == int(r)]
        if whole:
            raise SanitizeError(f"{x_path}: holds {whole[0]} floats but {y_path.name} has {n} labels "
                                f"(label file length mismatch)")
        raise SanitizeError(f"{x_path}: {x_bytes} bytes is not {n} rows of 2351 or 2381 float32 values "
                            f"(wrong feature count, truncated, or not an EMBER feature file)")
    dim = dims[0]
    labels, classes = _labels_from(np.fromfile(y_path, dtype=np.float32), str(y_path))
    X = torch.from_numpy(np.memmap(x_path, dtype=np.float32, mode="c", shape=(n, dim)))
    source = FeatureSource("ember", x_path, y_path, version=ember.version_for_dim(dim))
    ids = [str(i) for i in range(n)]
    return _finish(X, labels, classes, ids, x_path.parent if path.is_dir() else x_path, source, str(x_path), True)


def _npz_key(names: Sequence[str], candidates: Sequence[str], what: str, role: str) -> str:
    for c in candidates:
        if c in names:
            return c
    raise SanitizeError(f"{what}: no {role} array (expected one of {', '.join(candidates)}; has {', '.join(names)})")


def read_npz(path: Path) -> FeatureDataset:
    pair = npy_pair(path) if path.suffix != ".npz" else None
    if pair is not None:
        return _read_npy_pair(*pair)
    file = single_file(path, "*.npz", ".npz")
    try:
        with np.load(file, allow_pickle=False) as archive:
            names = list(archive.files)
            x_key = _npz_key(names, ("X", "x", "X_train"), str(file), "feature")
            y_key = _npz_key(names, ("y", "Y", "labels", "y_train"), str(file), "label")
            ids_key = next((k for k in ("ids", "sha256") if k in names), None)
            X_np, y_np = archive[x_key], archive[y_key]
            ids = [str(s) for s in archive[ids_key]] if ids_key else None
        with zipfile.ZipFile(file) as zf:
            compressed = any(i.compress_type != zipfile.ZIP_STORED for i in zf.infolist())
    except SanitizeError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise SanitizeError(f"{file}: cannot read ({str(exc).splitlines()[0]})") from None
    source = FeatureSource("npz", file, None, str(X_np.dtype), str(y_np.dtype), x_key, y_key, ids_key, compressed)
    return _from_arrays(X_np, y_np, ids, file, source)


def _read_npy_pair(x_path: Path, y_path: Path) -> FeatureDataset:
    if not y_path.is_file():
        raise SanitizeError(f"{x_path}: label file {y_path.name} is missing")
    try:
        X_np = np.load(x_path, mmap_mode="c", allow_pickle=False)
        y_np = np.load(y_path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise SanitizeError(f"{x_path}: cannot read ({str(exc).splitlines()[0]})") from None
    source = FeatureSource("npy", x_path, y_path, str(X_np.dtype), str(y_np.dtype))
    return _from_arrays(X_np, y_np, None, x_path, source)


def _from_arrays(X_np: np.ndarray, y_np: np.ndarray, ids: list[str] | None, file: Path,
                 source: FeatureSource) -> FeatureDataset:
    if X_np.ndim != 2:
        raise SanitizeError(f"{file}: features must be a 2-D array (rows x features), got shape {X_np.shape}")
    if not np.issubdtype(X_np.dtype, np.number):
        raise SanitizeError(f"{file}: features must be numbers, got dtype {X_np.dtype}")
    if len(y_np) != len(X_np):
        raise SanitizeError(f"{file}: {len(X_np)} feature rows but {len(y_np)} labels (label length mismatch)")
    if ids is not None and (len(ids) != len(X_np) or len(set(ids)) != len(ids)):
        raise SanitizeError(f"{file}: ids must be unique, one per row")
    labels, classes = _labels_from(y_np, str(file))
    notes = []
    if X_np.dtype == np.float32:
        X = torch.from_numpy(X_np)
    else:
        X = torch.from_numpy(np.asarray(X_np, dtype=np.float32))
        notes.append(f"features converted from {X_np.dtype} to float32 for training; written back as {X_np.dtype}")
    source.version = ember.version_for_dim(X_np.shape[1])
    data = _finish(X, labels, classes, ids or [str(i) for i in range(len(X_np))], file, source, str(file), False)
    data.notes.extend(notes)
    return data


def read_jsonl(path: Path) -> FeatureDataset:
    """Vectorise raw records chunk by chunk, so only one chunk of parsed JSON is held at a time."""
    file = single_file(path, "*.jsonl", ".jsonl")
    blocks, labels, ids, offsets, chunk = [], [], [], [], []
    version: int | None = None

    def flush() -> None:
        nonlocal version
        versions = {ember.record_version(r) for r in chunk}
        if version is not None:
            versions.add(version)
        if len(versions) > 1:
            raise SanitizeError(f"{file}: mixes feature versions 1 and 2 (some records lack 'datadirectories')")
        version = versions.pop()
        blocks.append(ember.vectorize(chunk, version))
        chunk.clear()

    start = 0
    try:
        with open(file, "rb") as f:
            for number, line in enumerate(f, 1):
                end = start + len(line)
                if line.strip():
                    record = _parse_record(line, f"{file}:{number}")
                    labels.append(record["label"])
                    ids.append(str(record.get("sha256") or len(ids)))
                    offsets.append((start, end))
                    chunk.append(record)
                    if len(chunk) == CHUNK_ROWS:
                        flush()
                start = end
    except OSError as exc:
        raise SanitizeError(f"{file}: cannot read ({exc})") from None
    if chunk:
        flush()
    if not offsets:
        raise SanitizeError(f"{file}: no records")
    notes = []
    if len(set(ids)) != len(ids):
        ids = [f"{i}:{s}" for i, s in enumerate(ids)]
        notes.append("duplicate sha256 values: ids are 'row:sha256'")
    y, classes = _labels_from(np.array(labels, dtype=np.float64), str(file))
    source = FeatureSource("jsonl", file, line_offsets=np.asarray(offsets, dtype=np.int64), version=version)
    data = _finish(torch.from_numpy(np.vstack(blocks)), y, classes, ids, file, source, str(file), False)
    data.notes.extend(notes)
    return data


def _parse_record(line: bytes, where: str) -> dict:
    try:
        record = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SanitizeError(f"{where}: not a JSON record ({getattr(exc, 'msg', exc)})") from None
    except RecursionError:
        raise SanitizeError(f"{where}: not a JSON record (nested too deeply)") from None
    if not isinstance(record, dict):
        raise SanitizeError(f"{where}: every line must be a JSON object (one PE file's raw features)")
    if "label" not in record:
        raise SanitizeError(f"{where}: record has no 'label' (-1 = unlabelled, 0 benign, 1 malicious)")
    if not isinstance(record["label"], (int, float)) or isinstance(record["label"], bool):
        raise SanitizeError(f"{where}: 'label' must be a number (-1 = unlabelled, 0 benign, 1 malicious)")
    return record


def _finish(X: torch.Tensor, labels: torch.Tensor, classes: list[str], ids: list[str], root: Path,
            source: FeatureSource, what: str, require_ember: bool) -> FeatureDataset:
    _check_width(X.shape[1], what, require_ember)
    _, stats = scan_rows(X, what)
    data = FeatureDataset(X, labels, classes, ids, root, [], source, None, stats)
    if data.n_unlabelled:
        data.notes.append(f"{data.n_unlabelled} unlabelled row(s) (label -1) kept untouched and not inspected")
    if source.version is not None:
        data.notes.append(f"EMBER feature version {source.version} ({data.dim} features)")
    return data


def load_features(path: str | Path, fmt: str = "auto") -> FeatureDataset:
    """Read a feature dataset in any supported format (see the module docstring)."""
    path = Path(path)
    if fmt not in FORMATS or fmt in ("images", "unlabelled"):
        raise ParameterError("fmt", fmt, "expected one of ember, npz, jsonl (or auto)", flag="--input-format")
    kind = detect_format(path) if fmt == "auto" else fmt
    if not path.exists():
        raise SanitizeError(f"{path}: no such file or folder")
    readers = {"ember": read_ember_dat, "npz": read_npz, "jsonl": read_jsonl}
    if kind not in readers:
        raise SanitizeError(f"{path}: not a feature file or folder (found an image folder)")
    return readers[kind](path)


def load_feature_reserve(path: str | Path, data: FeatureDataset, fmt: str = "auto") -> FeatureDataset:
    """The trusted reserve for ``data``: any supported format, same width and classes, labelled rows only."""
    reserve = load_features(path, fmt)
    if reserve.dim != data.dim:
        raise SanitizeError(f"reserve {path}: rows have {reserve.dim} features, the dataset {data.dim}")
    counts = reserve.class_counts()
    if len(counts) > data.num_classes:
        raise SanitizeError(f"reserve {path}: labels up to {len(counts) - 1}, the dataset has "
                            f"{data.num_classes} classes")
    labelled = reserve.labelled_indices()
    if len(labelled) < len(reserve):
        reserve = reserve.subset(labelled)
        reserve.notes.append("unlabelled reserve rows ignored")
    reserve.classes = list(data.classes)
    return reserve


def check_feature_reserve(reserve: FeatureDataset, data: FeatureDataset) -> None:
    """Reject a reserve that cannot serve as trusted clean data for ``data``."""
    if reserve.dim != data.dim:
        raise SanitizeError(f"reserve rows have {reserve.dim} features, the dataset {data.dim}")
    check_several_classes(data.labels.cpu().numpy(), data.classes, "rows")
    counts = np.bincount(reserve.labels.cpu().numpy()[reserve.labels.cpu().numpy() >= 0],
                         minlength=data.num_classes)
    if (counts[: data.num_classes] < 2).any() or len(counts) > data.num_classes:
        raise SanitizeError(f"reserve has {counts.tolist()} rows per class: need at least two of every class "
                            f"(a few thousand rows are recommended)")
