"""Which feature format a path holds (``--input-format auto``)."""

from __future__ import annotations

from pathlib import Path

from ...errors import SanitizeError


def ember_pair(path: Path) -> tuple[Path, Path] | None:
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


def npy_pair(path: Path) -> tuple[Path, Path] | None:
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
    if npy_pair(path) is not None or (list(path.glob("*.npz")) and not _has_subfolders(path)):
        return "npz"
    if list(path.glob("*.jsonl")) and not _has_subfolders(path):
        return "jsonl"
    return "images"


def _has_subfolders(path: Path) -> bool:
    return any(p.is_dir() and not p.name.startswith(".") for p in path.iterdir())


def single_file(path: Path, pattern: str, kind: str) -> Path:
    if path.is_file():
        return path
    files = sorted(path.glob(pattern))
    if len(files) != 1:
        raise SanitizeError(f"{path}: expected one {kind} file, found {len(files)}")
    return files[0]
