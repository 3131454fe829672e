"""Decode an image folder once, to disk, and let later runs map it instead of decoding again.

Decoding dominates loading: a million small JPEGs take minutes on every core a machine has,
and a run that pays it twice (ct, then asset, then scan on the same folder) wastes them. The
first run decodes the folder in worker processes straight into a memory-mapped ``.npy`` file
(``N x C x H x W`` uint8, at the requested size) under ``<cache>/decoded/<key>/``; a later run
with the same key maps that file instead (copy-on-write: nothing it does reaches the file), so
its pages are read from disk only when a batch touches them and the set never has to fit in
memory at once.

The key is a SHA-256 of the folder's resolved path, every image file's relative path, byte size
and modification time, the requested size and channels, and the decoder's pixel limit: a file
added, removed, replaced or touched is a new key, and the folder is decoded again (the entry it
replaces is removed then). An entry is built in a hidden staging folder and renamed into place
when complete, so an interrupted decode leaves nothing a later run could mistake for a result,
and two runs racing for one key both end with a complete entry.

``auto`` (the default) uses the cache for folders of :data:`AUTO_MIN_IMAGES` images or more:
below that, decoding takes seconds and a copy of the data on disk is not worth keeping.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from ..errors import ParameterError, SanitizeError
from ..progress import Progress, Silent
from .decoding import Format, common_format, decode_rows, image_pixel_limit, probe_all

CACHE_FORMAT = 1
AUTO_MIN_IMAGES = 10_000
CHUNK = 512  # files per task: large enough to amortise a task, small enough for a smooth progress bar
PROCESS_MIN_IMAGES = 4_000  # below this, spawning worker processes costs more than it saves
MODES = ("auto", "on", "off")


@dataclass(frozen=True)
class DecodeCache:
    """Where decoded folders are kept and when: ``mode`` auto | on | off (see the module docstring).

    ``directory`` None is ``$SANITIZE_CACHE`` or the user cache directory, as for trained models.
    """

    directory: Path | None = None
    mode: str = "auto"

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ParameterError("decode_cache", self.mode, f"expected one of {', '.join(MODES)}")

    def wants(self, n_images: int) -> bool:
        return self.mode == "on" or (self.mode == "auto" and n_images >= AUTO_MIN_IMAGES)

    @property
    def root(self) -> Path:
        from ..cachedir import default_cache_dir

        base = Path(self.directory).expanduser() if self.directory is not None else default_cache_dir()
        return base / "decoded"


def folder_key(root: Path, files: Sequence[str], size: tuple[int, int] | None, grayscale: bool | None) -> str:
    """The cache key of ``files`` (relative to ``root``) decoded at ``size`` / ``grayscale``."""
    digest = hashlib.sha256(json.dumps({"format": CACHE_FORMAT, **_request(root, size, grayscale),
                                        "pixel_limit": image_pixel_limit()}).encode())
    for rel in files:
        stat = (root / rel).stat()
        digest.update(f"{rel}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:32]


def _request(root: Path, size: tuple[int, int] | None, grayscale: bool | None) -> dict:
    """What an entry was asked for: entries with the same request and another key are stale."""
    return {"root": str(root.resolve()), "size": list(size) if size else None, "grayscale": grayscale}


def decode_to_cache(root: Path, files: Sequence[str], *, size: tuple[int, int] | None = None,
                    grayscale: bool | None = None, cache: DecodeCache | None = None,
                    progress: Progress | None = None) -> tuple[np.ndarray, Format, bool]:
    """The decoded images of ``root/<files>`` as a memory map, decoding them first if no entry matches.

    Returns the ``N x C x H x W`` uint8 map (copy-on-write), the format, and whether an existing
    entry was reused.
    """
    cache = cache or DecodeCache(mode="on")
    key = folder_key(root, files, size, grayscale)
    entry = cache.root / key
    found = _open_entry(entry, len(files))
    if found is not None:
        return (*found, True)
    staging = entry.parent / f".{key}.{uuid.uuid4().hex[:8]}.partial"
    with _writing(cache):
        entry.parent.mkdir(parents=True, exist_ok=True)
        staging.mkdir()
    try:
        fmt = common_format(probe_all([root / rel for rel in files]), size, grayscale)
        shape = (len(files), fmt.channels, *fmt.size)
        _check_space(staging, int(np.prod(shape)), cache)
        with _writing(cache):
            images = np.lib.format.open_memmap(staging / "images.npy", mode="w+", dtype=np.uint8, shape=shape)
        del images  # the workers write through their own maps of the file
        _decode_parallel([str(root / rel) for rel in files], staging / "images.npy", fmt, progress or Silent())
        meta = {"format": CACHE_FORMAT, "request": _request(root, size, grayscale), "count": len(files),
                "size": list(fmt.size), "grayscale": fmt.grayscale, "notes": list(fmt.notes)}
        with _writing(cache):
            (staging / "meta.json").write_text(json.dumps(meta))
        try:
            staging.rename(entry)
        except OSError:  # another run finished the same key first: its entry is as good as ours
            if _open_entry(entry, len(files)) is None:
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    _remove_stale(cache.root, key, meta["request"])
    found = _open_entry(entry, len(files))
    if found is None:
        raise SanitizeError(f"{entry}: the decoded folder could not be read back from the cache")
    return (*found, False)


@contextmanager
def _writing(cache: DecodeCache) -> Iterator[None]:
    """A cache folder that cannot be written (missing parent, a file, no permission) is the
    user's --cache-dir to fix: one line and exit 2, not a crash."""
    try:
        yield
    except OSError as exc:
        raise ParameterError("cache_dir", cache.root.parent,
                             f"cannot write the decode cache there ({exc.strerror or exc})") from None


def _open_entry(entry: Path, count: int) -> tuple[np.ndarray, Format] | None:
    """A complete entry's map and format, or None (missing, from another format, or damaged)."""
    try:
        meta = json.loads((entry / "meta.json").read_text())
        images = np.load(entry / "images.npy", mmap_mode="c")
    except (OSError, ValueError):
        return None
    fmt = Format(tuple(meta.get("size", ())), bool(meta.get("grayscale")), tuple(meta.get("notes", ())))
    if (meta.get("format") != CACHE_FORMAT or images.dtype != np.uint8
            or images.shape != (count, fmt.channels, *fmt.size)):
        return None
    return images, fmt


def _check_space(directory: Path, needed: int, cache: DecodeCache) -> None:
    """Refuse before decoding when the cache's disk cannot hold the decoded set."""
    free = shutil.disk_usage(directory).free
    if free < needed:
        raise SanitizeError(f"{cache.root}: the decoded images need {needed / 2**30:.1f} GiB, the disk has "
                            f"{free / 2**30:.1f} GiB free (choose another --cache-dir, or --no-decode-cache)")


def _remove_stale(root: Path, key: str, request: dict) -> None:
    """Entries for the same folder and request under another key describe files that changed."""
    for meta_file in root.glob("*/meta.json"):
        if meta_file.parent.name == key:
            continue
        try:
            stale = json.loads(meta_file.read_text()).get("request") == request
        except (OSError, ValueError):
            continue
        if stale:
            shutil.rmtree(meta_file.parent, ignore_errors=True)


def _decode_parallel(paths: list[str], npy: Path, fmt: Format, progress: Progress) -> None:
    """Decode ``paths`` into the rows of the ``.npy`` file at ``npy``, in chunks, with a progress bar."""
    chunks = [(start, paths[start:start + CHUNK]) for start in range(0, len(paths), CHUNK)]
    with _executor(len(paths)) as pool, progress.phase("decode images", len(paths)) as advance:
        futures = [pool.submit(_decode_chunk, str(npy), chunk, start, fmt) for start, chunk in chunks]
        try:
            for done in as_completed(futures):
                for _ in range(done.result()):
                    advance()
        except BaseException:
            for future in futures:
                future.cancel()
            raise


def _executor(n_images: int) -> Executor:
    """Worker processes for large folders (decoding holds the GIL for part of each image), threads
    for small ones (a spawned worker imports torch, which costs more than decoding a few files)."""
    cpus = os.cpu_count() or 1
    if n_images < PROCESS_MIN_IMAGES or cpus < 2:
        return ThreadPoolExecutor(min(8, cpus * 2))
    return ProcessPoolExecutor(min(cpus, 16), mp_context=get_context("spawn"), initializer=_one_thread)


def _one_thread() -> None:
    """Each worker decodes one image at a time: torch's own thread pool would oversubscribe the cores."""
    import torch

    torch.set_num_threads(1)


def _decode_chunk(npy: str, paths: list[str], start: int, fmt: Format) -> int:
    """Worker: decode ``paths`` into rows ``start...`` of the shared ``.npy`` map."""
    out = np.load(npy, mmap_mode="r+")
    written = decode_rows(paths, out, start, fmt)
    out.flush()
    return written
