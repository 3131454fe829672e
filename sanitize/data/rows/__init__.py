"""Feature-vector datasets (EMBER malware features and plain arrays): read, validate, write back.

A :class:`FeatureDataset` is the tabular sibling of :class:`sanitize.data.images.ImageDataset`: float32
rows ``X`` (N x D), int64 ``labels`` (-1 = unlabelled), class names, a stable id per row
(``paths``: the row index, or the sha256 when the format has one) and the ``source`` it came
from, so the cleaned set can be written back in the input's own format.

Formats (detected by :func:`detect_format`, or named with ``--input-format``):

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

The package: :mod:`.dataset` (the type), :mod:`.formats` (detection), :mod:`.readers`,
:mod:`.writers`.
"""

from __future__ import annotations

from .dataset import (
    BINARY_CLASSES,
    CHUNK_ROWS,
    FORMATS,
    FeatureDataset,
    FeatureSource,
)
from .formats import (
    detect_format,
)
from .readers import (
    MAX_CLASSES,
    check_feature_reserve,
    load_feature_reserve,
    load_features,
    read_ember_dat,
    read_jsonl,
    read_npz,
)
from .writers import (
    write_features,
)

__all__ = [
    "BINARY_CLASSES", "CHUNK_ROWS", "FORMATS", "FeatureDataset", "FeatureSource", "MAX_CLASSES",
    "check_feature_reserve", "detect_format", "load_feature_reserve", "load_features", "read_ember_dat",
    "read_jsonl", "read_npz", "write_features",
]
