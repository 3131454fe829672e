"""Atomic output folders that can never touch the input.

Everything a command writes goes to a hidden staging folder next to ``--out``; only when all of
it is written is the staging folder renamed into place (an existing ``--out`` is swapped out
and deleted only with ``force``). An interrupted run therefore leaves either the old ``--out`` or
the complete new one, never a half-written folder. ``--out`` may not be inside the input, nor
contain it, so even ``--force`` cannot delete a dataset.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image

from .data import ImageDataset
from .errors import SanitizeError


def _is_within(path: Path, parent: Path) -> bool:
    try:
        path.relative_to(parent)
        return True
    except ValueError:
        return False


def check_out_dir(out: Path, inputs: Iterable[Path | None], force: bool) -> Path:
    """Validate ``--out`` against the inputs before any work starts (fail fast, lose nothing)."""
    out = Path(out).expanduser().resolve()
    for src in inputs:
        if src is None:
            continue
        src = Path(src).expanduser().resolve()
        if _is_within(out, src):
            raise SanitizeError(f"--out {out} is inside the input {src}; choose a folder outside it")
        if _is_within(src, out):
            raise SanitizeError(f"--out {out} contains the input {src}; choose another folder")
    if out.exists() and not force:
        raise SanitizeError(f"--out {out} already exists (use --force to replace it)")
    if out.exists() and not out.is_dir():
        raise SanitizeError(f"--out {out} exists and is not a folder")
    if not out.parent.is_dir():
        raise SanitizeError(f"--out {out}: parent folder {out.parent} does not exist")
    _probe_staging(out)
    return out


def _probe_staging(out: Path) -> None:
    """Create and remove the staging folder the run will need, so that a read-only parent or a
    name too long for the file system is found before the work, not after it."""
    try:
        os.rmdir(tempfile.mkdtemp(prefix=f".{out.name}.staging-", dir=out.parent))
    except OSError as exc:
        raise SanitizeError(f"--out {out}: cannot write in {out.parent} ({exc.strerror or exc})") from None


def _umask() -> int:
    """The process umask (reading it means setting it; it is put back at once)."""
    umask = os.umask(0)
    os.umask(umask)
    return umask


def user_dir_mode() -> int:
    """``0o777`` less the umask: the mode ``mkdir`` would give a new folder."""
    return 0o777 & ~_umask()


def user_file_mode() -> int:
    """``0o666`` less the umask: the mode ``open()`` would give a new file."""
    return 0o666 & ~_umask()


def atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """Write one file via a temporary file in the same folder, then rename: never a half-written file.

    ``write`` fills the temporary path it is given. The file gets the mode ``open()`` would give
    it (``mkstemp`` makes 0600 files).
    """
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, user_file_mode())  # mkstemp makes 0600 files; outputs follow the umask like any other
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def staged_output(out: Path, force: bool = False) -> Iterator[Path]:
    """Yield a staging folder; on success move it to ``out`` atomically, else remove it.

    An ``out`` that exists when the results are ready is replaced only with ``force``: without
    it, ``out`` appeared while the run was going (a second run, the user), and it is left as it
    is; the results are moved beside it under a visible name and the run fails saying where.
    """
    out = Path(out)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.staging-", dir=out.parent))
    try:
        os.chmod(staging, user_dir_mode())  # mkdtemp makes it 0700; --out is an ordinary folder
        yield staging
        if out.exists() and not force:
            kept = out.with_name(f"{out.name}.sanitize-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}")
            os.replace(staging, kept)
            raise SanitizeError(f"--out {out} appeared while this run was going; it was left as it is, and "
                                f"this run's results are in {kept}")
        if out.exists():
            retired = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, retired / "old")
            os.replace(staging, out)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def write_image_subset(dataset: ImageDataset, keep: Sequence[int] | np.ndarray, directory: Path,
                       on_file: Callable[[], None] | None = None) -> None:
    """Write the samples at ``keep`` as ``directory/<class>/<file>``.

    Files of an on-disk dataset are hard-linked (zero copy; falls back to a copy across file
    systems) under their original relative paths; in-memory datasets are saved as PNG. Every
    class folder is created, even an empty one, so class indices stay stable for loaders.
    """
    for name in dataset.classes:
        (directory / name).mkdir(parents=True, exist_ok=True)
    images = None if dataset.root is not None else dataset.images.cpu()
    labels = dataset.labels.cpu().numpy()
    for i in np.asarray(keep, dtype=np.int64).tolist():
        if PurePosixPath(dataset.paths[i]).parts[0] != dataset.classes[labels[i]]:
            # Written under another class folder, the sample would be read back with another label.
            raise ValueError(f"{dataset.paths[i]} is labelled {dataset.classes[labels[i]]!r}: its folder must match")
        dst = directory / dataset.paths[i]
        dst.parent.mkdir(parents=True, exist_ok=True)
        if dataset.root is not None:
            _link_or_copy(dataset.root / dataset.paths[i], dst)
        else:
            chw = images[i].numpy()
            Image.fromarray(chw[0] if chw.shape[0] == 1 else chw.transpose(1, 2, 0)).save(dst)
        if on_file:
            on_file()
