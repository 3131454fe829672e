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


def shared_loader():
    """The offline data's own ``load.py`` as a module; skips the test when the data is absent."""
    import importlib.util

    if not (SHARED_DATA / "load.py").exists() or not (SHARED_DATA / "cifar10").is_dir():
        pytest.skip("no offline CIFAR-10 data beside the repo")
    spec = importlib.util.spec_from_file_location("shared_load", SHARED_DATA / "load.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
