#!/usr/bin/env python3
"""Stage the offline CIFAR-10 copy inside the repository, in pieces that fit the GPU machine's transfers.

The GPU machine receives only the repository and the git-ignored paths a call names in
``carry``, at most 64 MiB per call, and keeps carried files between calls while it stays warm.
The shared data lives beside the repository (``../shared/data``), so it has to be copied in:
this script writes ``.bench/data`` (ignored by git) in the loader's own layout, with the test
split cut to the first ``--test-limit`` images (the reserve needs no more), and prints which
files to carry in which call so that no call exceeds the limit.

    python benchmarks/stage_cifar10.py                       # all five training parts
    python benchmarks/stage_cifar10.py --train-parts 0 1     # 20,000 images: one call

The staged folder is a drop-in ``--data-dir`` for the CIFAR-10 benchmark scripts.
"""

from __future__ import annotations

import argparse
import lzma
import shutil
from pathlib import Path

import numpy as np
from common import DEFAULT_DATA_DIR

CALL_LIMIT = 60 * 2**20  # under the 64 MiB per call, leaving room for the repository itself
REPO = Path(__file__).resolve().parents[1]


def write_trimmed_test_part(source: Path, target: Path, limit: int) -> None:
    """The first ``limit`` test images as part 0 (the loader slices labels to the part's length)."""
    with lzma.open(source, "rb") as f:
        images = np.load(f)[:limit]
    with lzma.open(target, "wb", preset=6) as f:
        np.save(f, images)


def stage(data_dir: Path, out: Path, train_parts: list[int], test_limit: int) -> list[Path]:
    """Copy the loader, the labels, the chosen training parts and the trimmed test part to ``out``."""
    src, dst = data_dir / "cifar10", out / "cifar10"
    dst.mkdir(parents=True, exist_ok=True)
    files = [out / "load.py"]
    shutil.copyfile(data_dir / "load.py", files[0])
    for name in ("train-labels.npy", "test-labels.npy"):
        shutil.copyfile(src / name, dst / name)
        files.append(dst / name)
    write_trimmed_test_part(src / "test-images-0.npy.xz", dst / "test-images-0.npy.xz", test_limit)
    files.append(dst / "test-images-0.npy.xz")
    for k in train_parts:
        shutil.copyfile(src / f"train-images-{k}.npy.xz", dst / f"train-images-{k}.npy.xz")
        files.append(dst / f"train-images-{k}.npy.xz")
    return files


def plan_calls(files: list[Path], limit: int = CALL_LIMIT, max_paths: int = 8) -> list[list[Path]]:
    """Greedy grouping, in order, into calls of at most ``limit`` bytes and ``max_paths`` paths."""
    calls: list[list[Path]] = [[]]
    size = 0
    for f in files:
        n = f.stat().st_size
        if calls[-1] and (size + n > limit or len(calls[-1]) == max_paths):
            calls.append([])
            size = 0
        calls[-1].append(f)
        size += n
    return calls


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    ap.add_argument("--out", type=Path, default=REPO / ".bench" / "data")
    ap.add_argument("--train-parts", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--test-limit", type=int, default=2000, help="test images kept (the reserve's pool)")
    args = ap.parse_args()
    if not (args.data_dir / "cifar10").is_dir():
        raise SystemExit(f"no CIFAR-10 data under {args.data_dir} (pass --data-dir)")
    files = stage(args.data_dir, args.out, args.train_parts, args.test_limit)
    for i, call in enumerate(plan_calls(files), 1):
        mib = sum(f.stat().st_size for f in call) / 2**20
        carry = ", ".join(f'"{f.resolve().relative_to(REPO)}"' for f in call)
        print(f"call {i} ({mib:.1f} MiB): carry [{carry}]")


if __name__ == "__main__":
    main()
