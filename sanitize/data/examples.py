"""Small real datasets that ship offline, for the demo and the tests."""

from __future__ import annotations

import numpy as np

from .images import ImageDataset, from_arrays


def digits() -> ImageDataset:
    """scikit-learn's handwritten digits (1,797 8x8 grayscale images, 10 classes) as uint8."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)
    return from_arrays(images, bunch.target, [str(c) for c in range(10)])


def split_reserve(dataset: ImageDataset, fraction: float, seed: int = 0) -> tuple[ImageDataset, ImageDataset]:
    """Stratified split into (inspected part, trusted reserve of ``fraction`` of each class)."""
    rng = np.random.default_rng(seed)
    labels = dataset.labels.cpu().numpy()
    reserve = np.concatenate([
        rng.choice(np.flatnonzero(labels == c), size=max(2, int(round(fraction * (labels == c).sum()))),
                   replace=False)
        for c in range(dataset.num_classes) if (labels == c).sum() >= 4
    ])
    mask = np.zeros(len(dataset), dtype=bool)
    mask[reserve] = True
    return dataset.subset(np.flatnonzero(~mask)), dataset.subset(np.sort(reserve))
