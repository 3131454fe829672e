"""Image-folder datasets: decode once, keep the whole set as one uint8 tensor (in memory, or
memory-mapped from the on-disk decode cache of :mod:`sanitize.data.decode_cache`).

Layout: ``root/<class name>/<image file>``. Every detector reads an :class:`ImageDataset`, which
holds the decoded pixels (``N x C x H x W`` uint8, on the chosen device), integer labels, the class
names and each sample's path relative to ``root`` so reports can point back at the input files.

Images of any size and mode are accepted: if every image is single-channel the set stays
grayscale, otherwise everything is converted to RGB; images whose size differs from the common
``size`` (by default the most frequent one) are resized with antialiasing. Both decisions are
recorded in :attr:`ImageDataset.notes` and end up in the report.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import SanitizeError
from ..nn.samples import Samples, should_stream, stream_images, take_rows
from ..progress import Progress
from .decode_cache import DecodeCache, decode_to_cache
from .decoding import (  # noqa: F401  (decode_image, image_pixel_limit, PIXEL_LIMIT_ENV: re-exported)
    GRAYSCALE_MODES,
    PIXEL_LIMIT_ENV,
    common_format,
    decode_image,
    decode_rows,
    image_pixel_limit,
    probe_all,
)

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".webp"})


@dataclass
class ImageDataset:
    """A labelled image set held as one tensor.

    ``paths`` are POSIX-style paths relative to ``root`` (``"cat/0001.png"``); for in-memory
    datasets built with :func:`from_arrays` they are synthetic but still unique.
    """

    images: torch.Tensor | Samples  # uint8, N x C x H x W (Samples: streamed to the device per batch)
    labels: torch.Tensor  # int64, N
    classes: list[str]
    paths: list[str]
    root: Path | None = None
    notes: list[str] = field(default_factory=list)
    labelled: bool = True  # False: an unlabelled folder (one pseudo-class, see load_unlabelled_folder)

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise ValueError("images must be a uint8 tensor of shape N x C x H x W")
        if not (len(self.images) == len(self.labels) == len(self.paths)):
            raise ValueError("images, labels and paths must have the same length")

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def channels(self) -> int:
        return int(self.images.shape[1])

    @property
    def size(self) -> tuple[int, int]:
        return int(self.images.shape[2]), int(self.images.shape[3])

    @property
    def device(self) -> torch.device:
        return self.images.device

    @property
    def streamed(self) -> bool:
        """Whether the pixels stay on the host and reach the device a batch at a time."""
        return isinstance(self.images, Samples) and bool(self.images.streamed)

    def to(self, device: torch.device | str, *, stream: bool | None = False) -> ImageDataset:
        """This set on ``device``: the pixels copied there, or with ``stream`` left where they are
        (the host; a memory-mapped decoded folder stays mapped) and sent per batch. ``stream``
        None decides: stream when the pixels would fill more than half of the device's free memory."""
        device = torch.device(device)
        if stream is None:
            stream = self.streamed or should_stream(self.images.dtype.itemsize * int(np.prod(self.images.shape)),
                                                    device)
        if stream:
            images = stream_images(self.images, device)
        else:
            images = (self.images[:] if isinstance(self.images, Samples) else self.images).to(device)
        return ImageDataset(images, self.labels.to(device), self.classes, self.paths, self.root, list(self.notes),
                            self.labelled)

    def subset(self, index: Sequence[int] | np.ndarray | torch.Tensor) -> ImageDataset:
        """The samples at ``index`` (same classes, paths kept)."""
        idx = torch.as_tensor(np.asarray(index, dtype=np.int64), device=self.labels.device)
        paths = [self.paths[i] for i in idx.tolist()]
        return ImageDataset(take_rows(self.images, idx), self.labels[idx], self.classes, paths, self.root,
                            list(self.notes), self.labelled)

    def class_counts(self) -> np.ndarray:
        return np.bincount(self.labels.cpu().numpy(), minlength=self.num_classes)

    # The :class:`sanitize.data.protocol.Dataset` protocol: what the pipeline asks of any kind of data.
    kind = "images"

    def write_subset(self, keep: Sequence[int] | np.ndarray, directory: Path) -> None:
        """The kept samples as an image folder (hard links to the input's files where possible)."""
        from ..output import write_image_subset

        write_image_subset(self, keep, directory)

    def report_evidence(self) -> dict:
        """What report.html draws from: the pixels (thumbnails and the recovered trigger)."""
        return {"images": self.images}

    def check_reserve(self, reserve: ImageDataset) -> None:
        """Refuse a reserve that cannot serve as trusted clean data for these images."""
        if getattr(reserve, "kind", None) != self.kind:
            raise SanitizeError("the reserve must be the same kind of data as the dataset (images or feature rows)")
        check_reserve(reserve, self)


def from_arrays(images: np.ndarray, labels: np.ndarray, classes: Sequence[str],
                paths: Sequence[str] | None = None) -> ImageDataset:
    """Build a dataset from ``N x H x W`` (grayscale) or ``N x H x W x C`` uint8 arrays."""
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise SanitizeError(f"images must be uint8, got {images.dtype}")
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4:
        raise SanitizeError(f"images must be N x H x W (x C), got shape {images.shape}")
    labels = np.asarray(labels, dtype=np.int64)
    if len(labels) and (labels.min() < 0 or labels.max() >= len(classes)):
        raise SanitizeError("labels must lie in [0, number of classes)")
    if paths is None:
        paths = [f"{classes[y]}/{i:06d}.png" for i, y in enumerate(labels)]
    tensor = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
    return ImageDataset(tensor, torch.from_numpy(labels), list(classes), list(paths))


def _unreadable(exc: OSError) -> None:
    """A folder that cannot be listed stops the run: read as empty, it would drop a class silently."""
    raise SanitizeError(f"{exc.filename}: cannot read folder ({exc.strerror or exc})")


def list_image_folder(root: Path) -> tuple[list[str], list[tuple[str, int]]]:
    """Class names (sorted sub-folder names) and ``(relative path, class index)`` per image.

    Hidden entries and files with other suffixes are ignored; sub-folders of a class folder are
    searched too (their images belong to that class).
    """
    root = Path(root)
    if not root.is_dir():
        raise SanitizeError(f"{root}: not a directory")
    try:
        classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError as exc:
        _unreadable(exc)
    entries: list[tuple[str, int]] = []
    for index, name in enumerate(classes):
        for dirpath, dirnames, filenames in os.walk(root / name, onerror=_unreadable):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for filename in sorted(filenames):
                if filename.startswith(".") or Path(filename).suffix.lower() not in IMAGE_SUFFIXES:
                    continue
                rel = Path(dirpath, filename).relative_to(root).as_posix()
                entries.append((rel, index))
    if not entries:
        loose = bool(_image_files(root, recursive=False))
        raise SanitizeError(
            f"{root}: images lie directly in the folder, with no class sub-folders: an unlabelled set, which only "
            f"asset --paradigm self-supervised inspects (a labelled set has one sub-folder per class)" if loose else
            f"{root}: no images found (expected one sub-folder per class containing "
            f"{', '.join(sorted(IMAGE_SUFFIXES))} files)"
        )
    return classes, entries


def _image_files(root: Path, recursive: bool = True) -> list[str]:
    """Relative POSIX paths of the image files under ``root`` (hidden entries skipped), sorted."""
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root, onerror=_unreadable):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".")) if recursive else []
        found.extend(Path(dirpath, f).relative_to(root).as_posix() for f in sorted(filenames)
                     if not f.startswith(".") and Path(f).suffix.lower() in IMAGE_SUFFIXES)
    return found


def decode_images(files: Sequence[Path], *, size: tuple[int, int] | None = None,
                  grayscale: bool | None = None, workers: int | None = None
                  ) -> tuple[torch.Tensor, tuple[int, int], bool, list[str]]:
    """Decode ``files`` into one in-memory uint8 ``N x C x H x W`` tensor.

    Returns the tensor, the common size, whether it is grayscale, and notes describing any
    conversion (so the user is told rather than surprised).
    """
    workers = workers or min(16, (os.cpu_count() or 2) * 2)
    fmt = common_format(probe_all(files, workers), size, grayscale)
    out = np.empty((len(files), fmt.channels, *fmt.size), dtype=np.uint8)
    chunk = max(1, -(-len(files) // workers))
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(lambda start: decode_rows(files[start:start + chunk], out, start, fmt),
                      range(0, len(files), chunk)))
    return torch.from_numpy(out), fmt.size, fmt.grayscale, list(fmt.notes)


def _decode(root: Path, files: list[str], size: tuple[int, int] | None, grayscale: bool | None,
            cache: DecodeCache | None, progress: Progress | None) -> tuple[torch.Tensor, list[str]]:
    """``root/<files>`` decoded in memory, or mapped from the decode cache when ``cache`` wants it;
    with the notes on what was converted (and where the pixels came from)."""
    if cache is None or not cache.wants(len(files)):
        images, _, _, notes = decode_images([root / rel for rel in files], size=size, grayscale=grayscale)
        return images, notes
    mapped, fmt, reused = decode_to_cache(root, files, size=size, grayscale=grayscale, cache=cache,
                                          progress=progress)
    where = "mapped from" if reused else "kept in"
    return torch.from_numpy(mapped), [*fmt.notes, f"decoded images {where} the decode cache ({cache.root})"]


def load_image_folder(root: str | Path, *, size: tuple[int, int] | int | None = None,
                      grayscale: bool | None = None, device: torch.device | str = "cpu",
                      cache: DecodeCache | None = None, progress: Progress | None = None) -> ImageDataset:
    """Load ``root/<class>/<image>`` into an :class:`ImageDataset` on ``device``.

    ``cache``: decode to (or map from) the on-disk decode cache when it wants a folder this large
    (:mod:`sanitize.data.decode_cache`); the images then stay memory-mapped on the host until a
    detector moves them (``device`` "cpu" leaves them mapped).
    """
    root = Path(root)
    classes, entries = list_image_folder(root)
    if isinstance(size, int):
        size = (size, size)
    images, notes = _decode(root, [rel for rel, _ in entries], size, grayscale, cache, progress)
    labels = torch.tensor([label for _, label in entries], dtype=torch.int64)
    empty = [c for i, c in enumerate(classes) if not (labels == i).any()]
    if empty:
        notes.append(f"class folders without images: {', '.join(empty)}")
    dataset = ImageDataset(images, labels, classes, [rel for rel, _ in entries], root, notes)
    return dataset.to(device)


UNLABELLED_CLASS = "unlabelled"


def load_unlabelled_folder(root: str | Path, *, size: tuple[int, int] | int | None = None,
                           like: ImageDataset | None = None, device: torch.device | str = "cpu",
                           cache: DecodeCache | None = None, progress: Progress | None = None) -> ImageDataset:
    """Every image file under ``root``, at any depth, as one unlabelled set.

    Folder names carry no meaning here (a web-scraped pile, a flat folder, a tree by date): the
    set has a single pseudo-class and ``labelled`` False, so that a detector that needs labels
    refuses it and the cleaned copy keeps the input's own layout. ``like``: read with that set's
    size and channels (the reserve of an unlabelled set).
    """
    root = Path(root)
    if not root.is_dir():
        raise SanitizeError(f"{root}: not a directory")
    files = _image_files(root)
    if not files:
        raise SanitizeError(f"{root}: no images found ({', '.join(sorted(IMAGE_SUFFIXES))} files at any depth)")
    if isinstance(size, int):
        size = (size, size)
    if like is not None:
        size = like.size
    images, notes = _decode(root, files, size, None if like is None else like.channels == 1, cache, progress)
    labels = torch.zeros(len(files), dtype=torch.int64)
    return ImageDataset(images, labels, [UNLABELLED_CLASS], files, root, notes, labelled=False).to(device)


def check_labelled(data: ImageDataset, who: str) -> None:
    """Refuse an unlabelled set where labels are needed: ``who`` says which detector and why."""
    if not getattr(data, "labelled", True):
        raise SanitizeError(f"{who} needs labels (one sub-folder per class); this set is unlabelled: "
                            f"asset --paradigm self-supervised inspects unlabelled images")


def load_like(root: str | Path, data: ImageDataset, what: str, *, cache: DecodeCache | None = None,
              progress: Progress | None = None) -> ImageDataset:
    """Load another folder (reserve, test set) with ``data``'s class indices, size and channels.

    It may cover only some of the classes; a class the data does not have is an error, because
    it means the two folders do not describe the same task. ``what`` names the folder in errors.
    """
    root = Path(root)
    classes, entries = list_image_folder(root)
    unknown = sorted(set(classes) - set(data.classes))
    if unknown:
        raise SanitizeError(f"{what} {root}: class(es) not in the dataset: {', '.join(unknown)}")
    images, notes = _decode(root, [rel for rel, _ in entries], data.size, data.channels == 1, cache, progress)
    mapping = [data.classes.index(c) for c in classes]
    labels = torch.tensor([mapping[label] for _, label in entries], dtype=torch.int64)
    loaded = ImageDataset(images, labels, list(data.classes), [rel for rel, _ in entries], root, notes)
    return loaded.to(data.device)


def load_reserve(root: str | Path, data: ImageDataset, *, cache: DecodeCache | None = None,
                 progress: Progress | None = None) -> ImageDataset:
    """The trusted reserve, aligned with ``data`` (see :func:`load_like`)."""
    return load_like(root, data, "reserve", cache=cache, progress=progress)


def check_several_classes(labels: np.ndarray, classes: list[str], what: str) -> None:
    """Refuse data with samples of fewer than two classes: every detector compares classes
    (a backdoor relabels samples into one class), so a one-class set cannot be inspected."""
    present = np.unique(labels[labels >= 0])
    if len(present) < 2:
        which = f"only class {classes[int(present[0])]}" if len(present) else "no labelled samples"
        raise SanitizeError(f"the data has {which}: a detector compares classes, so it needs {what} of at "
                            f"least two")


def check_reserve(reserve: ImageDataset, data: ImageDataset) -> None:
    """Reject a reserve that cannot serve as trusted clean data for ``data``."""
    if reserve.classes != data.classes:
        raise SanitizeError("reserve and dataset must use the same class list")
    if reserve.size != data.size or reserve.channels != data.channels:
        raise SanitizeError(
            f"reserve images are {reserve.channels}x{reserve.size[0]}x{reserve.size[1]}, "
            f"dataset images {data.channels}x{data.size[0]}x{data.size[1]}"
        )
    check_several_classes(data.labels.cpu().numpy(), data.classes, "images")
    if len(reserve) < 2 * max(1, data.num_classes):
        raise SanitizeError(
            f"reserve has {len(reserve)} images: need at least two per class "
            f"({2 * data.num_classes}); a few hundred or more is recommended"
        )
