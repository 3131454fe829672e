"""Image-folder datasets: decode once, keep the whole set as one uint8 tensor.

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
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torchvision.transforms.v2 import functional as TF

from ..errors import SanitizeError

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".webp"})
GRAYSCALE_MODES = frozenset({"1", "L", "LA", "I", "I;16", "F"})


@dataclass
class ImageDataset:
    """A labelled image set held as one tensor.

    ``paths`` are POSIX-style paths relative to ``root`` (``"cat/0001.png"``); for in-memory
    datasets built with :func:`from_arrays` they are synthetic but still unique.
    """

    images: torch.Tensor  # uint8, N x C x H x W
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

    def to(self, device: torch.device | str) -> ImageDataset:
        return ImageDataset(self.images.to(device), self.labels.to(device), self.classes,
                            self.paths, self.root, list(self.notes), self.labelled)

    def subset(self, index: Sequence[int] | np.ndarray | torch.Tensor) -> ImageDataset:
        """The samples at ``index`` (same classes, paths kept)."""
        idx = torch.as_tensor(np.asarray(index, dtype=np.int64), device=self.images.device)
        paths = [self.paths[i] for i in idx.tolist()]
        return ImageDataset(self.images[idx], self.labels[idx], self.classes, paths, self.root,
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


def decode_image(path: str | Path, what: str = "image") -> Image.Image:
    """Open and decode one image file; anything unreadable is one :class:`SanitizeError` line.

    An image whose header claims more than :func:`image_pixel_limit` pixels (a decompression bomb,
    or a genuinely huge image) is refused before it is decoded; Pillow's own refusal is an error
    that is not an ``OSError`` and is caught here too, so a forged header cannot crash a run.
    """
    limit = image_pixel_limit()
    refused = (f"{path}: {what} refused as a decompression bomb (its header claims more than {limit} pixels; "
               f"set {PIXEL_LIMIT_ENV} to raise the limit)")
    try:
        with Image.open(path) as img:
            if img.width * img.height > limit:
                raise SanitizeError(refused)
            img.load()
            return img
    except SanitizeError:
        raise
    except Image.DecompressionBombError:
        raise SanitizeError(refused) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        reason = str(exc).split("\n")[0] or type(exc).__name__
        raise SanitizeError(f"{path}: cannot decode {what} ({reason})") from None


def _to_array(img: Image.Image, grayscale: bool) -> np.ndarray:
    if grayscale:
        if img.mode in ("I", "I;16", "F"):
            # High-bit-depth grayscale: scale into 8 bits instead of clipping.
            arr = np.asarray(img, dtype=np.float64)
            peak = arr.max() if arr.max() > 255 else 255.0
            return np.round(arr * 255.0 / peak).astype(np.uint8)[..., None]
        return np.array(img.convert("L"), dtype=np.uint8)[..., None]
    return np.array(img.convert("RGB"), dtype=np.uint8)


def decode_images(files: Sequence[Path], *, size: tuple[int, int] | None = None,
                  grayscale: bool | None = None, workers: int | None = None
                  ) -> tuple[torch.Tensor, tuple[int, int], bool, list[str]]:
    """Decode ``files`` into one uint8 ``N x C x H x W`` tensor.

    Returns the tensor, the common size, whether it is grayscale, and notes describing any
    conversion (so the user is told rather than surprised).
    """
    workers = workers or min(16, (os.cpu_count() or 2) * 2)
    with ThreadPoolExecutor(workers) as pool:
        decoded = list(pool.map(decode_image, files))
    notes: list[str] = []
    if grayscale is None:
        grayscale = all(img.mode in GRAYSCALE_MODES for img in decoded)
        if not grayscale and any(img.mode in GRAYSCALE_MODES for img in decoded):
            notes.append("mixed grayscale and colour images: all converted to RGB")
    sizes = Counter((img.height, img.width) for img in decoded)
    if size is None:
        size = sizes.most_common(1)[0][0]
        if len(sizes) > 1:
            notes.append(f"images have {len(sizes)} different sizes: resized to the most common, "
                         f"{size[0]}x{size[1]} (set --size to choose)")
    resized = 0
    out = torch.empty((len(decoded), 1 if grayscale else 3, *size), dtype=torch.uint8)
    for i, img in enumerate(decoded):
        chw = torch.from_numpy(_to_array(img, grayscale)).permute(2, 0, 1)
        if tuple(chw.shape[1:]) != tuple(size):
            chw = TF.resize(chw, list(size), antialias=True)
            resized += 1
        out[i] = chw
    if resized and len(sizes) == 1:
        notes.append(f"all {resized} images resized to {size[0]}x{size[1]}")
    return out, tuple(size), grayscale, notes


def load_image_folder(root: str | Path, *, size: tuple[int, int] | int | None = None,
                      grayscale: bool | None = None, device: torch.device | str = "cpu"
                      ) -> ImageDataset:
    """Load ``root/<class>/<image>`` into an :class:`ImageDataset` on ``device``."""
    root = Path(root)
    classes, entries = list_image_folder(root)
    if isinstance(size, int):
        size = (size, size)
    images, size, grayscale, notes = decode_images([root / rel for rel, _ in entries],
                                                   size=size, grayscale=grayscale)
    labels = torch.tensor([label for _, label in entries], dtype=torch.int64)
    empty = [c for i, c in enumerate(classes) if not (labels == i).any()]
    if empty:
        notes.append(f"class folders without images: {', '.join(empty)}")
    dataset = ImageDataset(images, labels, classes, [rel for rel, _ in entries], root, notes)
    return dataset.to(device)


UNLABELLED_CLASS = "unlabelled"


def load_unlabelled_folder(root: str | Path, *, size: tuple[int, int] | int | None = None,
                           like: ImageDataset | None = None, device: torch.device | str = "cpu") -> ImageDataset:
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
    images, size, _, notes = decode_images([root / rel for rel in files], size=size,
                                           grayscale=None if like is None else like.channels == 1)
    labels = torch.zeros(len(files), dtype=torch.int64)
    return ImageDataset(images, labels, [UNLABELLED_CLASS], files, root, notes, labelled=False).to(device)


def check_labelled(data: ImageDataset, who: str) -> None:
    """Refuse an unlabelled set where labels are needed: ``who`` says which detector and why."""
    if not getattr(data, "labelled", True):
        raise SanitizeError(f"{who} needs labels (one sub-folder per class); this set is unlabelled: "
                            f"asset --paradigm self-supervised inspects unlabelled images")


def load_like(root: str | Path, data: ImageDataset, what: str) -> ImageDataset:
    """Load another folder (reserve, test set) with ``data``'s class indices, size and channels.

    It may cover only some of the classes; a class the data does not have is an error, because
    it means the two folders do not describe the same task. ``what`` names the folder in errors.
    """
    root = Path(root)
    classes, entries = list_image_folder(root)
    unknown = sorted(set(classes) - set(data.classes))
    if unknown:
        raise SanitizeError(f"{what} {root}: class(es) not in the dataset: {', '.join(unknown)}")
    images, _, _, notes = decode_images([root / rel for rel, _ in entries], size=data.size,
                                        grayscale=data.channels == 1)
    mapping = [data.classes.index(c) for c in classes]
    labels = torch.tensor([mapping[label] for _, label in entries], dtype=torch.int64)
    loaded = ImageDataset(images, labels, list(data.classes), [rel for rel, _ in entries], root, notes)
    return loaded.to(data.device)


def load_reserve(root: str | Path, data: ImageDataset) -> ImageDataset:
    """The trusted reserve, aligned with ``data`` (see :func:`load_like`)."""
    return load_like(root, data, "reserve")


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
