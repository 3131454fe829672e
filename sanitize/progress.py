"""Progress reporting that detectors call and front ends render.

Detectors only say "phase X has N steps" and "one more step"; the CLI renders that with rich
progress bars (with ETA), tests and the Python API use the silent default.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Protocol

Advance = Callable[[], None]


class Progress(Protocol):
    def phase(self, name: str, total: int) -> AbstractContextManager[Advance]: ...


class Silent:
    """No output; the default for the Python API."""

    @contextmanager
    def phase(self, name: str, total: int) -> Iterator[Advance]:
        yield lambda: None


class RichProgress:
    """One rich progress bar per phase, with elapsed time and ETA, on stderr."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self._bars = Progress(TextColumn("{task.description:<28}"), BarColumn(),
                              MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("eta"),
                              TimeRemainingColumn(), console=Console(stderr=True))

    def __enter__(self) -> RichProgress:
        self._bars.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._bars.stop()

    @contextmanager
    def phase(self, name: str, total: int) -> Iterator[Advance]:
        task = self._bars.add_task(name, total=max(1, total))
        yield lambda: self._bars.advance(task)
        self._bars.update(task, completed=max(1, total))
