"""What every kind of data offers the pipeline, so that it never asks which kind it holds.

Two kinds exist: image folders (:class:`sanitize.data.images.ImageDataset`) and feature rows such as
EMBER (:class:`sanitize.data.rows.FeatureDataset`). The pipeline reads them with
:func:`load_inputs` (the reader is chosen by the input format), and writes the cleaned copy and
the report page through the methods below; a new kind of data implements them and registers a
reader here.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch

if TYPE_CHECKING:
    from ..progress import Progress
    from .decode_cache import DecodeCache


class Dataset(Protocol):
    """Samples with labels (-1: unlabelled, never inspected), class names and a stable id each."""

    kind: str  # for messages: "images" or "feature rows"
    labels: torch.Tensor
    classes: list[str]
    paths: list[str]
    root: Path | None
    notes: list[str]

    def __len__(self) -> int: ...

    @property
    def num_classes(self) -> int: ...

    def subset(self, index: Sequence[int] | np.ndarray | torch.Tensor) -> Dataset: ...

    def class_counts(self) -> np.ndarray: ...

    def write_subset(self, keep: Sequence[int] | np.ndarray, directory: Path) -> Any:
        """Write the samples at ``keep`` into ``directory`` in the input's own form."""
        ...

    def report_evidence(self) -> dict[str, Any]:
        """Keyword arguments for :func:`sanitize.report.html.build_html` (pixels or rows)."""
        ...

    def check_reserve(self, reserve: Dataset) -> None:
        """Refuse (SanitizeError) a reserve that cannot serve as trusted clean data for this set."""
        ...


def load_inputs(data_dir: Path, reserve_dir: Path | None, input_format: str = "auto",
                size: tuple[int, int] | None = None, *, cache: DecodeCache | None = None,
                progress: Progress | None = None) -> tuple[Dataset, Dataset | None]:
    """The inspected data and its reserve, read as ``input_format`` names (``auto``: detected).

    ``cache``: image folders are decoded through the on-disk decode cache when it wants them
    (feature rows are read as they are); ``progress`` shows the decoding.
    """
    from ..errors import ParameterError
    from .images import load_image_folder, load_reserve, load_unlabelled_folder
    from .rows import detect_format, load_feature_reserve, load_features

    kind = detect_format(data_dir) if input_format == "auto" else input_format
    if kind == "images":
        data = load_image_folder(data_dir, size=size, cache=cache, progress=progress)
        return data, (load_reserve(reserve_dir, data, cache=cache, progress=progress)
                      if reserve_dir is not None else None)
    if kind == "unlabelled":  # image files at any depth, folder names meaningless (reserve alike)
        data = load_unlabelled_folder(data_dir, size=size, cache=cache, progress=progress)
        return data, (load_unlabelled_folder(reserve_dir, like=data, cache=cache, progress=progress)
                      if reserve_dir is not None else None)
    if size is not None:
        raise ParameterError("size", f"{size[0]}x{size[1]}", "applies to image folders, not feature rows")
    data = load_features(data_dir, kind)
    return data, load_feature_reserve(reserve_dir, data) if reserve_dir is not None else None
