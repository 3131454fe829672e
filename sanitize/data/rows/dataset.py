"""The feature-row dataset type: rows, labels, ids and the source file they came from."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from ... import ember
from ...errors import SanitizeError

FORMATS = ("auto", "images", "unlabelled", "ember", "npz", "jsonl")
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

    # The :class:`sanitize.data.protocol.Dataset` protocol: what the pipeline asks of any kind of data.
    kind = "feature rows"

    def write_subset(self, keep: Sequence[int] | np.ndarray, directory: Path) -> list[str]:
        """The kept rows in the input's own format (byte-identical rows)."""
        from .writers import write_features

        return write_features(self, keep, directory)

    def report_evidence(self) -> dict:
        """What report.html draws from: the rows and the column names (the feature contrast)."""
        return {"features": self.X, "feature_names": self.feature_names}

    def check_reserve(self, reserve: FeatureDataset) -> None:
        """Refuse a reserve that cannot serve as trusted clean data for these rows."""
        from .readers import check_feature_reserve

        if getattr(reserve, "kind", None) != self.kind:
            raise SanitizeError("the reserve must be the same kind of data as the dataset (images or feature rows)")
        check_feature_reserve(reserve, self)

    @property
    def n_unlabelled(self) -> int:
        return int((self.labels < 0).sum())

    def column_stats(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-column mean and (population) standard deviation, in one chunked pass, cached."""
        if self._stats is None:
            self._stats = scan_rows(self.X, None)[1]
        return self._stats


def scan_rows(X: torch.Tensor, what: str | None) -> tuple[np.ndarray, tuple[torch.Tensor, torch.Tensor]]:
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
