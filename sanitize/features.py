"""Feature-vector datasets (EMBER malware features and plain arrays): read, validate, write back.

A :class:`FeatureDataset` is the tabular sibling of :class:`sanitize.data.ImageDataset`: float32
rows ``X`` (N x D), int64 ``labels`` (-1 = unlabelled), class names, a stable id per row
(``paths``: the row index, or the sha256 when the format has one) and the ``source`` it came
from, so the cleaned set can be written back in the input's own format.

Formats (detected by :func:`detect_format`, or named with ``--format``):

* ``ember`` -- EMBER's vectorised files: ``X_<split>.dat`` (headerless float32, N x D) with
  ``y_<split>.dat`` (float32 labels, N). N comes from the label file, D must then be 2351
  (feature version 1) or 2381 (version 2). The X file is memory-mapped, never read into memory:
  600,000 x 2381 rows are 5.7 GB.
* ``npz`` -- an ``.npz`` with arrays ``X`` and ``y`` (optional ``ids``), or an ``X.npy`` /
  ``y.npy`` pair (``.npy`` files are memory-mapped too).
* ``jsonl`` -- EMBER raw features, one PE file per line, vectorised with :mod:`sanitize.ember`;
  the row id is the record's sha256.

Rows labelled -1 are kept and written back untouched but never inspected (detectors run on
the labelled rows only). Writing back copies the kept rows from the *source file* (same dtype,
feature version and order), so a kept row is byte-identical to its input.

Bad input -- wrong width, NaN/inf values, a label file of the wrong length, a truncated ``.dat``
-- raises :class:`SanitizeError` with one line naming the file and the problem.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from . import ember
from .data import check_several_classes
from .errors import SanitizeError

FORMATS = ("auto", "images", "ember", "npz", "jsonl")
BINARY_CLASSES = ["benign", "malicious"]
CHUNK_ROWS = 16384  # rows per pass when scanning memory-mapped files (64-160 MB at EMBER widths)


@dataclass
class FeatureSource:
    """Where the rows came from and how to write them back in the same format."""

    format: str  # "ember" | "npz" | "npy" | "jsonl"
    path: Path  # X .dat / .npz / X .npy / .jsonl
    label_path: Path | None = None  # y .dat / y .npy
    x_dtype: str = "float32"
    y_dtype: str = "float32"
    x_key: str = "X"
    y_key: str = "y"
    ids_key: str | None = None
    compressed: bool = False
    line_offsets: np.ndarray | None = field(default=None, repr=False)  # jsonl: (start, end) per line
    version: int | None = None  # EMBER feature version when the width says so


@dataclass
class FeatureDataset:
    """Labelled feature rows held as one (possibly memory-mapped) float32 tensor.

    ``rows`` maps each row to its row in ``source`` (identity for a freshly loaded set), so a
    subset can still be written back from the original bytes.
    """

    X: torch.Tensor  # float32, N x D
    labels: torch.Tensor  # int64, N; -1 = unlabelled
    classes: list[str]
    paths: list[str]
    root: Path | None = None
    notes: list[str] = field(default_factory=list)
    source: FeatureSource | None = None
    rows: np.ndarray | None = None
    _stats: tuple[torch.Tensor, torch.Tensor] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.X.dtype != torch.float32 or self.X.ndim != 2:
            raise ValueError("X must be a float32 tensor of shape N x D")
        if not (len(self.X) == len(self.labels) == len(self.paths)):
            raise ValueError("X, labels and paths must have the same length")
        if self.rows is None:
            self.rows = np.arange(len(self.labels), dtype=np.int64)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def dim(self) -> int:
        return int(self.X.shape[1])

    @property
    def device(self) -> torch.device:
        return self.X.device

    @property
    def feature_version(self) -> int | None:
        return ember.version_for_dim(self.dim)

    @property
    def feature_names(self) -> list[str] | None:
        """EMBER's column names when the width is an EMBER feature version, else None."""
        version = self.feature_version
        return None if version is None else ember.feature_names(version)

    def to(self, device: torch.device | str) -> FeatureDataset:
        """The same rows on ``device`` (no copy when already there, e.g. a CPU memory map)."""
        stats = None if self._stats is None else tuple(s.to(device) for s in self._stats)
        return replace(self, X=self.X.to(device), labels=self.labels.to(device), notes=list(self.notes),
                       _stats=stats)

    def subset(self, index: Sequence[int] | np.ndarray | torch.Tensor) -> FeatureDataset:
        """The rows at ``index`` (copied; the source mapping is kept for writing back)."""
        idx = np.asarray(index.cpu() if isinstance(index, torch.Tensor) else index, dtype=np.int64)
        t = torch.from_numpy(idx).to(self.X.device)
        return FeatureDataset(self.X[t], self.labels[t], self.classes, [self.paths[i] for i in idx.tolist()],
                              self.root, list(self.notes), self.source, self.rows[idx])

    def class_counts(self) -> np.ndarray:
        """Rows per class (unlabelled rows are not counted)."""
        labels = self.labels.cpu().numpy()
        return np.bincount(labels[labels >= 0], minlength=self.num_classes)

    def labelled_indices(self) -> np.ndarray:
        return np.flatnonzero(self.labels.cpu().numpy() >= 0)

    @property
    def n_unlabelled(self) -> int:
        return int((self.labels < 0).sum())

    def column_stats(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-column mean and (population) standard deviation, in one chunked pass, cached."""
        if self._stats is None:
            self._stats = _scan(self.X, None)[1]
        return self._stats


def _scan(X: torch.Tensor, what: str | None) -> tuple[np.ndarray, tuple[torch.Tensor, torch.Tensor]]:
    """One pass over ``X`` in chunks: rows with NaN/inf, and column mean/std (float64 sums).

    With ``what`` (the file named in errors), non-finite rows raise at once.
    """
    n, d = X.shape
    s1 = torch.zeros(d, dtype=torch.float64, device=X.device)
    s2 = torch.zeros(d, dtype=torch.float64, device=X.device)
    bad: list[np.ndarray] = []
    for start in range(0, n, CHUNK_ROWS):
        chunk = X[start:start + CHUNK_ROWS].to(torch.float64)
        finite = torch.isfinite(chunk).all(dim=1)
        if not bool(finite.all()):
            bad.append(np.flatnonzero(~finite.cpu().numpy()) + start)
            chunk = chunk[finite]
        s1 += chunk.sum(0)
        s2 += (chunk * chunk).sum(0)
    bad_rows = np.concatenate(bad) if bad else np.zeros(0, dtype=np.int64)
    if what is not None and len(bad_rows):
        raise SanitizeError(f"{what}: {len(bad_rows)} row(s) contain NaN or infinite values "
                            f"(first: row {int(bad_rows[0])})")
    count = max(1, n - len(bad_rows))
    mean = s1 / count
    std = (s2 / count - mean * mean).clamp_min(0).sqrt()
    return bad_rows, (mean.float(), std.float())


# --- format detection --------------------------------------------------------------------------

def _ember_pair(path: Path) -> tuple[Path, Path] | None:
    """(X .dat, y .dat) for a directory or an ``X_<split>.dat`` path, else None."""
    if path.is_file() and path.suffix == ".dat":
        if not path.name.startswith("X"):
            raise SanitizeError(f"{path}: give the X_*.dat file (or its folder), not the labels")
        return path, path.with_name("y" + path.name[1:])
    if path.is_dir():
        xs = sorted(path.glob("X_*.dat"))
        if not xs:
            return None
        train = [p for p in xs if p.name == "X_train.dat"]
        if not train and len(xs) > 1:
            raise SanitizeError(f"{path}: several X_*.dat files ({', '.join(p.name for p in xs)}); "
                                f"give the one to inspect")
        x = (train or xs)[0]
        return x, x.with_name("y" + x.name[1:])
    return None


def _npy_pair(path: Path) -> tuple[Path, Path] | None:
    if path.is_file() and path.suffix == ".npy":
        if not path.name.startswith("X"):
            raise SanitizeError(f"{path}: give the X*.npy file (or its folder), not the labels")
        return path, path.with_name("y" + path.name[1:])
    if path.is_dir():
        for name in ("X.npy", "X_train.npy"):
            if (path / name).is_file():
                return path / name, path / ("y" + name[1:])
    return None


def detect_format(path: Path) -> str:
    """``images``, ``ember``, ``npz`` or ``jsonl`` for an input path (a file or a folder)."""
    path = Path(path)
    if not path.exists():
        raise SanitizeError(f"{path}: no such file or folder")
    if path.is_file():
        by_suffix = {".dat": "ember", ".npz": "npz", ".npy": "npz", ".jsonl": "jsonl"}
        if path.suffix.lower() not in by_suffix:
            raise SanitizeError(f"{path}: unknown feature file type (expected .dat, .npz, .npy or .jsonl)")
        return by_suffix[path.suffix.lower()]
    if list(path.glob("X_*.dat")):
        return "ember"
    if _npy_pair(path) is not None or (list(path.glob("*.npz")) and not _has_subfolders(path)):
        return "npz"
    if list(path.glob("*.jsonl")) and not _has_subfolders(path):
        return "jsonl"
    return "images"


def _has_subfolders(path: Path) -> bool:
    return any(p.is_dir() and not p.name.startswith(".") for p in path.iterdir())


def _single(path: Path, pattern: str, kind: str) -> Path:
    if path.is_file():
        return path
    files = sorted(path.glob(pattern))
    if len(files) != 1:
        raise SanitizeError(f"{path}: expected one {kind} file, found {len(files)}")
    return files[0]


# --- readers -----------------------------------------------------------------------------------

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
    pair = _ember_pair(path)
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
    pair = _npy_pair(path) if path.suffix != ".npz" else None
    if pair is not None:
        return _read_npy_pair(*pair)
    file = _single(path, "*.npz", ".npz")
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
    file = _single(path, "*.jsonl", ".jsonl")
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
    _, stats = _scan(X, what)
    data = FeatureDataset(X, labels, classes, ids, root, [], source, None, stats)
    if data.n_unlabelled:
        data.notes.append(f"{data.n_unlabelled} unlabelled row(s) (label -1) kept untouched and not inspected")
    if source.version is not None:
        data.notes.append(f"EMBER feature version {source.version} ({data.dim} features)")
    return data


def load_features(path: str | Path, fmt: str = "auto") -> FeatureDataset:
    """Read a feature dataset in any supported format (see the module docstring)."""
    path = Path(path)
    if fmt not in FORMATS or fmt == "images":
        raise SanitizeError(f"--format {fmt!r}: expected one of ember, npz, jsonl (or auto)")
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


# --- writers -----------------------------------------------------------------------------------

def _source_rows(data: FeatureDataset, keep: Sequence[int] | np.ndarray) -> np.ndarray:
    return data.rows[np.asarray(keep, dtype=np.int64)]


def write_features(data: FeatureDataset, keep: Sequence[int] | np.ndarray, directory: Path) -> list[str]:
    """Write the rows at ``keep`` into ``directory`` in the input's own format; returns the file names.

    Rows are copied from the source file (same dtype, width and order), so each kept row is
    byte-identical to its input. A dataset without a source file (e.g. a poisoned copy) is
    written from ``X`` in the format named by ``data.source`` (``.dat`` when there is none).
    """
    directory = Path(directory)
    src = data.source
    keep = np.asarray(keep, dtype=np.int64)
    if src is None:
        src = FeatureSource("ember", Path("X_train.dat"), Path("y_train.dat"))
    writers = {"ember": _write_dat, "npy": _write_npy, "npz": _write_npz, "jsonl": _write_jsonl}
    return writers[src.format](data, src, keep, directory)


def _from_file(data: FeatureDataset, src: FeatureSource) -> bool:
    """True when ``data``'s rows are the source file's rows unchanged (not a modified copy)."""
    return src.path.is_file() and data.root is not None


def _write_dat(data: FeatureDataset, src: FeatureSource, keep: np.ndarray, directory: Path) -> list[str]:
    x_name, y_name = src.path.name, (src.label_path.name if src.label_path else "y" + src.path.name[1:])
    rows = _source_rows(data, keep)
    with open(directory / x_name, "wb") as fx:
        if _from_file(data, src):
            n = src.label_path.stat().st_size // 4
            source = np.memmap(src.path, dtype=np.float32, mode="r", shape=(n, data.dim))
            for s in range(0, len(rows), CHUNK_ROWS):
                fx.write(np.ascontiguousarray(source[rows[s:s + CHUNK_ROWS]]).tobytes())
            labels = np.fromfile(src.label_path, dtype=np.float32)[rows]
        else:
            X = data.X.cpu()
            for s in range(0, len(keep), CHUNK_ROWS):
                fx.write(X[torch.from_numpy(keep[s:s + CHUNK_ROWS])].numpy().astype(np.float32).tobytes())
            labels = data.labels.cpu().numpy()[keep].astype(np.float32)
    labels.astype(np.float32).tofile(directory / y_name)
    return [x_name, y_name]


def _arrays(data: FeatureDataset, src: FeatureSource, keep: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Kept X and y in the source dtypes (from the source file when the rows are unchanged)."""
    rows = _source_rows(data, keep)
    if _from_file(data, src):
        if src.format == "npy":
            X = np.load(src.path, mmap_mode="r")[rows]
            y = np.load(src.label_path)[rows]
        else:
            with np.load(src.path, allow_pickle=False) as archive:
                X, y = archive[src.x_key][rows], archive[src.y_key][rows]
        return X, y
    X = data.X.cpu().numpy()[keep].astype(src.x_dtype)
    y = data.labels.cpu().numpy()[keep].astype(src.y_dtype)
    return X, y


def _write_npy(data: FeatureDataset, src: FeatureSource, keep: np.ndarray, directory: Path) -> list[str]:
    X, y = _arrays(data, src, keep)
    y_name = src.label_path.name if src.label_path else "y" + src.path.name[1:]
    np.save(directory / src.path.name, X)
    np.save(directory / y_name, y)
    return [src.path.name, y_name]


def _write_npz(data: FeatureDataset, src: FeatureSource, keep: np.ndarray, directory: Path) -> list[str]:
    X, y = _arrays(data, src, keep)
    arrays = {src.x_key: X, src.y_key: y}
    if src.ids_key or not _from_file(data, src):
        arrays[src.ids_key or "ids"] = np.array([data.paths[i] for i in keep.tolist()])
    save = np.savez_compressed if src.compressed else np.savez
    name = src.path.name if src.path.suffix == ".npz" else "features.npz"
    save(directory / name, **arrays)
    return [name]


def _write_jsonl(data: FeatureDataset, src: FeatureSource, keep: np.ndarray, directory: Path) -> list[str]:
    if not _from_file(data, src) or src.line_offsets is None:
        # modified rows cannot be expressed as raw features: write the vectors with their ids
        npz = replace(src, format="npz", path=Path("features.npz"), x_dtype="float32", y_dtype="float32",
                      ids_key="sha256")
        return _write_npz(data, npz, keep, directory)
    rows = _source_rows(data, keep)
    with open(src.path, "rb") as fin, open(directory / src.path.name, "wb") as fout:
        for start, end in src.line_offsets[rows].tolist():
            fin.seek(start)
            line = fin.read(end - start)
            fout.write(line if line.endswith(b"\n") else line + b"\n")
    return [src.path.name]
