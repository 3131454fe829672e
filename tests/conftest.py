"""Shared fixtures: real offline data (digits, CIFAR-10 from ../shared/data when present)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
import torch

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(autouse=True, scope="session")
def _cpu_threads() -> None:
    # CI machines have 2 cores; more threads than cores only adds contention.
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def tree_digest(root: Path) -> str:
    """Hash of every file's relative path, size and bytes under ``root`` (detects any change)."""
    h = hashlib.sha256()
    for path in sorted(p for p in Path(root).rglob("*") if p.is_file()):
        h.update(path.relative_to(root).as_posix().encode())
        h.update(path.read_bytes())
    return h.hexdigest()
