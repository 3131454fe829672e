"""The training engine's batching and augmentation: the pieces every detector trains through."""

from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F

from sanitize.nn.engine import epoch_batches, flip_and_crop, host_to_device, stratified_split


def test_flip_and_crop_is_a_per_sample_flip_then_shift_of_the_padded_image() -> None:
    """Each output image must be a pad-pixel window of the reflect-padded input or of its mirror."""
    pad = 2
    x = torch.arange(6 * 3 * 5 * 5, dtype=torch.float32).view(6, 3, 5, 5)
    out = flip_and_crop(x, torch.Generator().manual_seed(0), pad)
    assert out.shape == x.shape
    for image, result in zip(x, out, strict=True):
        windows = [F.pad(candidate[None], (pad,) * 4, mode="reflect")[0, :, i:i + 5, j:j + 5]
                   for candidate in (image, image.flip(-1))
                   for i in range(2 * pad + 1) for j in range(2 * pad + 1)]
        assert any(torch.equal(result, w) for w in windows)


def test_flip_and_crop_is_seeded_and_varies_across_samples() -> None:
    x = torch.rand(64, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    a = flip_and_crop(x, torch.Generator().manual_seed(7), 4)
    b = flip_and_crop(x, torch.Generator().manual_seed(7), 4)
    assert torch.equal(a, b)
    unchanged = sum(torch.equal(o, i) for o, i in zip(a, x, strict=True))
    assert unchanged < 16  # 1 in 162 (flip, dy, dx) draws is the identity


def test_epoch_batches_cover_every_sample_once() -> None:
    batches = list(epoch_batches(103, 10, torch.Generator().manual_seed(0), torch.device("cpu"), drop_last=False))
    assert sorted(torch.cat(batches).tolist()) == list(range(103))
    assert [len(b) for b in batches] == [10] * 10 + [3]


def test_host_to_device_copies_values_and_leaves_the_source() -> None:
    source = torch.randint(0, 9, (2, 50), generator=torch.Generator().manual_seed(0))
    copy = host_to_device(source, torch.device("cpu"))
    assert torch.equal(copy, source)
    if torch.cuda.is_available():
        on_gpu = host_to_device(source, torch.device("cuda"))
        assert torch.equal(on_gpu.cpu(), source)


def test_stratified_split_keeps_a_group_on_one_side() -> None:
    labels = torch.arange(3).repeat_interleave(20)
    plain = stratified_split(labels, 3, 0.2, torch.Generator().manual_seed(0), min_kept=2)
    singles = stratified_split(labels, 3, 0.2, torch.Generator().manual_seed(0), min_kept=2,
                               groups=np.arange(len(labels)))
    assert all(torch.equal(a, b) for a, b in zip(plain, singles, strict=True))  # single groups: the same split
    groups = np.arange(len(labels)) // 3  # twins in threes, within a class
    kept, held = stratified_split(labels, 3, 0.2, torch.Generator().manual_seed(0), min_kept=2, groups=groups)
    assert set(groups[held.numpy()]).isdisjoint(groups[kept.numpy()])
    for c in range(3):
        assert 4 <= int((labels[held] == c).sum()) <= 6  # its share (4), passed by less than a group
