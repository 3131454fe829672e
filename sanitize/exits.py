"""Exit codes that mean one thing, and how a crash or a signal ends a run.

A CI job gates on the exit code, so a crash must never look like a verdict: Python's default
code for an uncaught exception is 1, which ``sanitize`` uses for "gate failed: poison flagged".
An internal error therefore exits :data:`EXIT_INTERNAL` with one line on stderr naming the
error and the file that holds its traceback. SIGTERM and SIGHUP (what ``timeout``,
``docker stop`` and CI cancellation send) become an exception, so the staging folder of the
outputs is removed on the way out exactly as on Ctrl-C, and the process exits ``128 + signal``.
"""

from __future__ import annotations

import os
import signal
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

EXIT_CLEAN, EXIT_FLAGGED, EXIT_BAD_INPUT, EXIT_INTERNAL = 0, 1, 2, 3
# Set to print the traceback of an internal error on stderr as well (for bug reports).
DEBUG_ENV = "SANITIZE_DEBUG"


class Terminated(BaseException):  # noqa: N818 -- a signal, like KeyboardInterrupt, not an error
    """The process received a termination signal; unwinds like ``KeyboardInterrupt``."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


INTERRUPTED = "interrupted: nothing was written"
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells report for Ctrl-C


def launched() -> bool:
    """Whether a launcher (``torchrun``) started this process as one of several (``WORLD_SIZE`` > 1).

    Read from the environment, without torch, so that the CLI can ask before importing it."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1) > 1


TERMINATED_BY_TORCHRUN = ("torchrun stops every process of a run once one of them fails or the run is "
                          "interrupted; a failed process printed its own line")


def stopped(exc: KeyboardInterrupt | Terminated) -> tuple[str, int]:
    """The one line and the exit code of a run stopped by Ctrl-C or a termination signal.

    Under ``torchrun`` the signal comes from its agent, which sends it to every other process
    as soon as one exits non-zero: a process can receive it before its own collective notices
    the lost peer, so the line says where such a signal comes from instead of suggesting that
    someone stopped the run."""
    if isinstance(exc, Terminated):
        why = f" ({TERMINATED_BY_TORCHRUN})" if launched() else ""
        return f"terminated by {exc.name}{why}: nothing was written", exc.exit_code
    return INTERRUPTED, EXIT_INTERRUPTED


def _raise_terminated(signum: int, _frame) -> None:
    raise Terminated(signum)


_SAVED_HANDLERS: dict[int, object] = {}


def catch_termination() -> None:
    """Turn SIGTERM and SIGHUP into :class:`Terminated` (main thread only; no-op elsewhere)."""
    for name in ("SIGTERM", "SIGHUP"):
        if hasattr(signal, name):
            signum = getattr(signal, name)
            try:
                previous = signal.signal(signum, _raise_terminated)
            except ValueError:  # not the main thread (e.g. the CLI called from a worker)
                return
            _SAVED_HANDLERS.setdefault(signum, previous)


def release_termination() -> None:
    """Give SIGTERM and SIGHUP back their earlier handlers once the run has decided how it ends.

    A signal that arrives later, while the interpreter shuts down (torchrun stops the other
    processes of a run as soon as one exits), would otherwise raise :class:`Terminated` inside
    a library's exit hook and print a traceback after the run's one line."""
    while _SAVED_HANDLERS:
        signum, previous = _SAVED_HANDLERS.popitem()
        signal.signal(signum, previous)


def crash_log_dir() -> Path:
    """Where tracebacks go: ``<cache>/crashes`` (see ``sanitize.nn.cache``), else the temp dir."""
    from .cachedir import default_cache_dir

    return default_cache_dir() / "crashes"


def write_crash_log(exc: BaseException) -> Path | None:
    """Write the traceback of ``exc`` to a new file and return its path (None if nothing could be written)."""
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for folder in (crash_log_dir, lambda: Path(tempfile.gettempdir())):
        try:
            where = folder()
            where.mkdir(parents=True, exist_ok=True)
            handle, name = tempfile.mkstemp(prefix=f"sanitize-crash-{stamp}-", suffix=".log", dir=where)
            with os.fdopen(handle, "w") as log:
                log.write(text)
            return Path(name)
        except OSError:
            continue
    return None


def crash_line(exc: BaseException, log: Path | None) -> str:
    """The one line an internal error prints."""
    message = str(exc).splitlines()[0][:300] if str(exc).strip() else ""
    what = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    where = f"traceback in {log}" if log else "the traceback could not be written"
    return f"internal error: {what} ({where}; this is a bug in sanitize, not a verdict)"


PEER_FAILED = ("stopped: another process of this torchrun run failed (its own line says why); nothing was "
               "written")


def peer_failed(exc: BaseException) -> bool:
    """Whether ``exc`` is this process learning that another rank of its process group died
    (the collective it waited in lost its peer): not a fault of this process, and not a verdict."""
    dist = sys.modules.get("torch.distributed")
    if dist is None or not (dist.is_available() and dist.is_initialized()):
        return False
    backend_error = getattr(dist, "DistBackendError", ())
    text = str(exc)
    return isinstance(exc, backend_error) or any(
        sign in text for sign in ("Connection closed by peer", "remote worker", "Connection reset by peer"))


MAX_WARNING_NOTES = 10


@contextmanager
def warnings_as_notes(notes: list[str]) -> Iterator[None]:
    """Keep library warnings (numpy's ``Mean of empty slice``, torch's ``var`` degrees of freedom)
    off stderr, which carries exactly one line when a run fails, and append them to ``notes``
    instead: a detector run puts them in ``report.json``. Repeats are counted once, at most
    :data:`MAX_WARNING_NOTES` are kept; with ``SANITIZE_DEBUG`` set they are printed as well."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        yield
    lines = list(dict.fromkeys(f"{w.category.__name__} at {Path(w.filename).name}:{w.lineno}: {w.message}"
                               for w in caught))
    notes.extend(f"library warning: {line}" for line in lines[:MAX_WARNING_NOTES])
    if len(lines) > MAX_WARNING_NOTES:
        notes.append(f"library warning: {len(lines) - MAX_WARNING_NOTES} more not shown")
    if os.environ.get(DEBUG_ENV):
        for line in lines:
            print(f"warning: {line}", file=sys.stderr)
