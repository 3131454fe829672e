"""Where sanitize keeps what it can reuse between runs: trained models, decoded image folders, crash logs."""

from __future__ import annotations

import os
from pathlib import Path


def default_cache_dir() -> Path:
    """``$SANITIZE_CACHE``, else the user cache directory (XDG), plus ``sanitize``."""
    env = os.environ.get("SANITIZE_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME")
    return (Path(base).expanduser() if base else Path.home() / ".cache") / "sanitize"
