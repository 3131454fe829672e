"""Atomic output folders that can never touch the input, nor anything else the user owns.

Everything a command writes goes to a hidden staging folder next to ``--out``; only when all of
it is written is the staging folder renamed into place (an existing ``--out`` is swapped out
and deleted only with ``force``). An interrupted run therefore leaves either the old ``--out`` or
the complete new one, never a half-written folder. ``--out`` may not be inside the input, nor
contain it, so even ``--force`` cannot delete a dataset; and ``--force`` replaces only a folder
that ``sanitize`` wrote (it carries :data:`OUTPUT_MARKER`) or an empty one, so a mistyped
``--out`` cannot delete the user's own work. A run holds an exclusive lock on its ``--out``
(:func:`claim_out_dir`), so two runs cannot race to the same folder.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from .errors import SanitizeError

if TYPE_CHECKING:
    import numpy as np

    from .data.images import ImageDataset


def _is_within(path: Path, parent: Path) -> bool:
    try:
        path.relative_to(parent)
        return True
    except ValueError:
        return False


def check_out_dir(out: Path, inputs: Iterable[Path | None], force: bool, option: str = "--out") -> Path:
    """Validate ``--out`` against the inputs before any work starts (fail fast, lose nothing).

    ``option`` is how messages name the folder (the command's own flag or argument)."""
    out = Path(out).expanduser().resolve()
    for src in inputs:
        if src is None:
            continue
        src = Path(src).expanduser().resolve()
        if _is_within(out, src):
            raise SanitizeError(f"{option} {out} is inside the input {src}; choose a folder outside it")
        if _is_within(src, out):
            raise SanitizeError(f"{option} {out} contains the input {src}; choose another folder")
    if out.exists() and not out.is_dir():
        raise SanitizeError(f"{option} {out} exists and is not a folder")
    if out.exists() and not written_by_sanitize(out):
        raise SanitizeError(f"{option} {out} exists and was not written by sanitize (it has no {OUTPUT_MARKER}): "
                            f"sanitize never replaces it, even with --force; remove it yourself or choose "
                            f"another folder")
    if out.exists() and not force:
        raise SanitizeError(f"{option} {out} already exists (use --force to replace it)")
    if not out.parent.is_dir():
        raise SanitizeError(f"{option} {out}: parent folder {out.parent} does not exist")
    _probe_staging(out, option)
    return out


OUTPUT_MARKER = ".sanitize-output.json"
"""The file in every folder ``sanitize`` writes: the proof ``--force`` asks for before it deletes."""


def written_by_sanitize(folder: Path) -> bool:
    """True for a folder ``--force`` may replace: one that ``sanitize`` wrote, or an empty one."""
    return (folder / OUTPUT_MARKER).is_file() or not any(folder.iterdir())


def mark_output(folder: Path) -> None:
    """Mark ``folder`` as written by ``sanitize`` (hidden, so loaders skip it; no time stamp, so
    the same run writes the same bytes)."""
    from . import __version__

    record = {"written_by": "sanitize", "version": __version__,
              "note": "sanitize --force may replace this folder; without this file it refuses to"}
    (folder / OUTPUT_MARKER).write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")


def _lock_path(out: Path) -> Path:
    return out.with_name(f".{out.name}.sanitize-lock")


@contextmanager
def output_lock(out: Path, option: str = "--out") -> Iterator[None]:
    """Hold an exclusive lock on ``out`` for a whole run, so a second run to the same folder is
    refused at once instead of finishing and replacing the first one's results.

    The lock is an ``flock`` on a hidden file beside ``out``, removed when the run ends (a killed
    run's stale file is harmless: the kernel released its lock). Where ``fcntl`` does not exist
    (Windows) runs are not locked; the final rename still never replaces a folder that appeared.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    path = _lock_path(out)
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as exc:
            raise SanitizeError(f"{option} {out}: cannot write in {out.parent} ({exc.strerror or exc})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode("ascii", "replace").strip() or "?"
            os.close(fd)
            raise SanitizeError(f"{option} {out}: another sanitize run (pid {holder}) is writing it; wait for it to "
                                f"end or choose another folder") from None
        try:  # the previous holder may have removed the file between our open and our lock
            current = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            current = False
        if current:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        yield
    finally:
        path.unlink(missing_ok=True)
        os.close(fd)


@contextmanager
def claim_out_dir(out: Path, inputs: Iterable[Path | None], force: bool, option: str = "--out") -> Iterator[Path]:
    """:func:`check_out_dir`, then hold :func:`output_lock` until the block ends (the whole run)."""
    inputs = list(inputs)
    out = check_out_dir(out, inputs, force, option)
    with output_lock(out, option):
        check_out_dir(out, inputs, force, option)  # again, under the lock: a run that just ended may have written it
        yield out


def _probe_staging(out: Path, option: str) -> None:
    """Create and remove the staging folder the run will need, so that a read-only parent or a
    name too long for the file system is found before the work, not after it."""
    try:
        os.rmdir(tempfile.mkdtemp(prefix=f".{out.name}.staging-", dir=out.parent))
    except OSError as exc:
        raise SanitizeError(f"{option} {out}: cannot write in {out.parent} ({exc.strerror or exc})") from None


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
def staged_output(out: Path, force: bool = False, option: str = "--out") -> Iterator[Path]:
    """Yield a staging folder; on success move it to ``out`` atomically, else remove it.

    An ``out`` that exists when the results are ready is replaced only with ``force`` and only
    if ``sanitize`` wrote it: otherwise it appeared (or changed) while the run was going (a second
    run, the user), and it is left as it is; the results are moved beside it under a visible name
    and the run fails saying where. The staged folder is marked (:func:`mark_output`).
    """
    out = Path(out)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.staging-", dir=out.parent))
    try:
        os.chmod(staging, user_dir_mode())  # mkdtemp makes it 0700; --out is an ordinary folder
        yield staging
        mark_output(staging)
        if out.exists() and not (force and out.is_dir() and written_by_sanitize(out)):
            kept = _move_beside(staging, out)
            what = "appeared while this run was going" if not force else "is no longer a folder sanitize wrote"
            raise SanitizeError(f"{option} {out} {what}; it was left as it is, and this run's results are in {kept}")
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


def _move_beside(staging: Path, out: Path) -> Path:
    """Move ``staging`` to a new visible name beside ``out`` (never onto anything that exists)."""
    stem = f"{out.name}.sanitize-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    for n in range(1, 1000):
        kept = out.with_name(stem if n == 1 else f"{stem}-{n}")
        try:
            os.mkdir(kept)  # claim the name; renaming onto an empty folder we just made is atomic
        except FileExistsError:
            continue
        os.replace(staging, kept)
        return kept
    raise SanitizeError(f"{out}: no free name beside it for this run's results")


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def write_image_subset(dataset: ImageDataset, keep: Sequence[int] | np.ndarray, directory: Path,
                       on_file: Callable[[], None] | None = None) -> None:
    """Write the samples at ``keep`` as ``directory/<class>/<file>`` (an unlabelled set: under its own paths).

    Files of an on-disk dataset are hard-linked (zero copy; falls back to a copy across file
    systems) under their original relative paths; in-memory datasets are saved as PNG. Every
    class folder is created, even an empty one, so class indices stay stable for loaders.
    """
    import numpy as np
    from PIL import Image

    labelled = getattr(dataset, "labelled", True)  # an unlabelled set keeps its own layout, folders mean nothing
    for name in dataset.classes if labelled else ():
        (directory / name).mkdir(parents=True, exist_ok=True)
    directory.mkdir(parents=True, exist_ok=True)
    images = None if dataset.root is not None else dataset.images.cpu()
    labels = dataset.labels.cpu().numpy()
    for i in np.asarray(keep, dtype=np.int64).tolist():
        if labelled and PurePosixPath(dataset.paths[i]).parts[0] != dataset.classes[labels[i]]:
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
