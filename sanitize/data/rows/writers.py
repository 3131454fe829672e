"""Writing kept rows back in the input's own format (byte-identical rows)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from .dataset import CHUNK_ROWS, FeatureDataset, FeatureSource


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
