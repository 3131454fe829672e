"""Shared by the benchmark scripts: the offline CIFAR-10 loader kept beside the project."""

from __future__ import annotations

import importlib.util
from pathlib import Path

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
DEFAULT_DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data"


def load_module(data_dir: Path):
    """Import ``data_dir/load.py`` (the shared data's own loader) as a module."""
    spec = importlib.util.spec_from_file_location("shared_load", data_dir / "load.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
