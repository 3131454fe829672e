"""Reading image files: a header probe, the set's common format, and decoding one file to pixels.

Decoding is split in two passes so that the output can be allocated before any pixel is read:
the probe reads each file's header (mode and size, a few hundred bytes), :func:`common_format`
decides the size and channels of the whole set from the probes, and :func:`decode_rows` decodes
files straight into their rows of a preallocated ``N x C x H x W`` array -- an in-memory array or
the memory-mapped file of :mod:`sanitize.data.decode_cache`. Peak memory is the output plus one
image per worker, not a second copy of the set.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import SanitizeError

GRAYSCALE_MODES = frozenset({"1", "L", "LA", "I", "I;16", "F"})
PIXEL_LIMIT_ENV = "SANITIZE_MAX_IMAGE_PIXELS"


def image_pixel_limit() -> int:
    """The largest image, in pixels, that is decoded: where Pillow itself refuses (twice its
    ``MAX_IMAGE_PIXELS``, about 179 million), unless ``SANITIZE_MAX_IMAGE_PIXELS`` says otherwise.

    A forged header can claim billions of pixels in a few bytes; decoding it would exhaust memory.
    Users with genuinely huge images raise the limit through the environment, so that every
    command (and the library) honours it without a flag on each.
    """
    raw = os.environ.get(PIXEL_LIMIT_ENV)
    if raw is None:
        return 2 * (Image.MAX_IMAGE_PIXELS or 89_478_485)
    try:
        limit = int(raw)
    except ValueError:
        limit = 0
    if limit < 1:
        raise SanitizeError(f"{PIXEL_LIMIT_ENV}={raw!r}: expected a positive whole number of pixels")
    Image.MAX_IMAGE_PIXELS = max(Image.MAX_IMAGE_PIXELS or 0, limit)  # Pillow's own refusal no lower than ours
    return limit


def _open(path: str | Path, what: str, load: bool) -> Image.Image:
    """Open ``path`` (and decode it when ``load``); anything unreadable is one SanitizeError line."""
    limit = image_pixel_limit()
    refused = (f"{path}: {what} refused as a decompression bomb (its header claims more than {limit} pixels; "
               f"set {PIXEL_LIMIT_ENV} to raise the limit)")
    try:
        with Image.open(path) as img:
            if img.width * img.height > limit:
                raise SanitizeError(refused)
            if load:
                img.load()
            return img
    except SanitizeError:
        raise
    except Image.DecompressionBombError:
        raise SanitizeError(refused) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        reason = str(exc).split("\n")[0] or type(exc).__name__
        raise SanitizeError(f"{path}: cannot decode {what} ({reason})") from None


def decode_image(path: str | Path, what: str = "image") -> Image.Image:
    """Open and decode one image file; anything unreadable is one :class:`SanitizeError` line.

    An image whose header claims more than :func:`image_pixel_limit` pixels (a decompression bomb,
    or a genuinely huge image) is refused before it is decoded; Pillow's own refusal is an error
    that is not an ``OSError`` and is caught here too, so a forged header cannot crash a run.
    """
    return _open(path, what, load=True)


@dataclass(frozen=True)
class Probe:
    """What a file's header says: its mode and its size (height, width)."""

    mode: str
    size: tuple[int, int]


def probe_image(path: str | Path) -> Probe:
    """The header of one image (no pixels decoded); a bomb or an unreadable file is refused here."""
    img = _open(path, "image", load=False)
    return Probe(img.mode, (img.height, img.width))


def probe_all(files: Sequence[str | Path], workers: int | None = None) -> list[Probe]:
    """Every file's header, read by a few threads (reading headers waits on the disk, not the CPU)."""
    with ThreadPoolExecutor(workers or min(16, (os.cpu_count() or 2) * 2)) as pool:
        return list(pool.map(probe_image, files))


@dataclass(frozen=True)
class Format:
    """The size and channels every image of a set is decoded to, and what the user is told."""

    size: tuple[int, int]
    grayscale: bool
    notes: tuple[str, ...] = ()

    @property
    def channels(self) -> int:
        return 1 if self.grayscale else 3


def common_format(probes: Sequence[Probe], size: tuple[int, int] | None = None,
                  grayscale: bool | None = None) -> Format:
    """One format for the whole set: grayscale if every image is, else RGB; ``size``, else the
    most frequent size. Every conversion is put in a note, so the user is told, not surprised."""
    notes: list[str] = []
    if grayscale is None:
        gray = [p.mode in GRAYSCALE_MODES for p in probes]
        grayscale = all(gray)
        if not grayscale and any(gray):
            notes.append("mixed grayscale and colour images: all converted to RGB")
    sizes = Counter(p.size for p in probes)
    if size is None:
        size = sizes.most_common(1)[0][0]
        if len(sizes) > 1:
            notes.append(f"images have {len(sizes)} different sizes: resized to the most common, "
                         f"{size[0]}x{size[1]} (set --size to choose)")
    size = (int(size[0]), int(size[1]))
    resized = sum(count for s, count in sizes.items() if s != size)
    if resized and len(sizes) == 1:
        notes.append(f"all {resized} images resized to {size[0]}x{size[1]}")
    return Format(size, bool(grayscale), tuple(notes))


def _to_array(img: Image.Image, grayscale: bool) -> np.ndarray:
    if grayscale:
        if img.mode in ("I", "I;16", "F"):
            # High-bit-depth grayscale: scale into 8 bits instead of clipping.
            arr = np.asarray(img, dtype=np.float64)
            peak = arr.max() if arr.max() > 255 else 255.0
            return np.round(arr * 255.0 / peak).astype(np.uint8)[..., None]
        return np.array(img.convert("L"), dtype=np.uint8)[..., None]
    return np.array(img.convert("RGB"), dtype=np.uint8)


def decode_pixels(path: str | Path, fmt: Format) -> np.ndarray:
    """One image as a ``C x H x W`` uint8 array in ``fmt`` (resized with antialiasing if needed).

    The resize is torchvision's antialiased bilinear one on the uint8 tensor, whichever way the
    set is decoded (in memory or to the cache), so both give the same pixels.
    """
    chw = _to_array(decode_image(path), fmt.grayscale).transpose(2, 0, 1)
    if tuple(chw.shape[1:]) == fmt.size:
        return chw
    import torch
    from torchvision.transforms.v2 import functional as TF

    return TF.resize(torch.from_numpy(np.ascontiguousarray(chw)), list(fmt.size), antialias=True).numpy()


def decode_rows(files: Sequence[str | Path], out: np.ndarray, start: int, fmt: Format) -> int:
    """Decode ``files`` into ``out[start:start + len(files)]``; returns how many were written."""
    for i, path in enumerate(files):
        out[start + i] = decode_pixels(path, fmt)
    return len(files)
