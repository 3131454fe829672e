"""TaCT: a source-specific backdoor (Tang et al., "Demon in the Variant", USENIX Security 2021).

Only images of the ``source`` class (default 1) that carry the trigger are relabelled to
``target``; images of the ``cover_classes`` (default 5 and 7) also get the trigger but keep their
label, so the model learns "trigger + source features -> target". That entangles poison and clean
features and defeats detectors that only look for a trigger-dominated cluster. The trigger is
the Trojan square (see :mod:`.patch` for its size rule) or a user-supplied patch at the same
anchor. ASR is measured on triggered source-class test images.

Counts: ``floor(N * rate)`` poison drawn among source-class images and ``floor(N * cover_rate)``
covers drawn among cover-class images.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..data.images import ImageDataset
from ..errors import ParameterError
from .base import (
    PoisonedSet,
    Stamp,
    check_target,
    choose_cover_indices,
    choose_poison_indices,
    rebuild,
    relabel,
    stamp_rows,
)
from .patch import trojan_stamp


def check_classes(dataset: ImageDataset, target: int, source: int, cover_classes: Sequence[int]) -> None:
    n = dataset.num_classes
    if not 0 <= source < n:
        raise ParameterError("source", source, f"the dataset has classes 0..{n - 1}")
    if source == target:
        raise ParameterError("source", source, "is the target class; choose another source")
    bad = [c for c in cover_classes if not 0 <= c < n]
    if bad:
        raise ParameterError("cover_classes", ",".join(map(str, cover_classes)), f"class {bad[0]} is not in 0..{n - 1}")
    if source in cover_classes or target in cover_classes:
        raise ParameterError("cover_classes", ",".join(map(str, cover_classes)),
                             "must not include the source or the target class")


def tact(dataset: ImageDataset, rate: float = 0.003, target: int = 0, seed: int = 0, source: int = 1,
         cover_rate: float = 0.003, cover_classes: Sequence[int] = (5, 7),
         trigger: Stamp | None = None) -> PoisonedSet:
    """Trigger source-class images (relabelled ``target``) and cover-class images (labels kept)."""
    check_target(dataset, target)
    cover_classes = sorted({int(c) for c in cover_classes})
    check_classes(dataset, target, source, cover_classes)
    labels_np = dataset.labels.cpu().numpy()
    candidates = np.flatnonzero(labels_np == source)
    try:
        index = candidates[choose_poison_indices(len(candidates), len(dataset), rate, seed)]
    except ParameterError as exc:
        raise ParameterError(exc.parameter, exc.value, f"{exc.reason} (source-class images)", flag=exc.flag) from None
    cover = choose_cover_indices(np.flatnonzero(np.isin(labels_np, cover_classes)), len(dataset), cover_rate, seed)
    stamp = trojan_stamp(dataset, seed, trigger)
    images, labels = dataset.images.clone(), dataset.labels.clone()
    stamp_rows(images, np.concatenate([index, cover]), stamp.apply)
    relabel(labels, index, target)
    params = {"rate": rate, "cover_rate": cover_rate, "trigger": stamp.describe(),
              "custom_trigger": trigger is not None}
    return PoisonedSet(rebuild(dataset, images, labels), np.sort(index).astype(np.int64), target, "tact", params,
                       cover, seed, source=source, cover_classes=cover_classes, test_trigger=stamp.apply,
                       stamps=[stamp])
