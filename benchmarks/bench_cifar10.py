#!/usr/bin/env python3
"""The detector matrix on CIFAR-10: attacks x detectors x seeds, at the papers' poison rates.

Data: the offline CIFAR-10 copy in ``../shared/data`` (or ``--data-dir``). The clean set is the
first ``--limit`` training images; the trusted reserve is the first ``--reserve`` images of the
official test split and the test set (ACC/ASR) the next ``--test`` ones, so the three never
overlap. Poison rates default to each attack's CIFAR-10 rate from the CT paper's reproduction
settings (``sanitize.attacks.ATTACK_INFO``: 0.3 % for BadNet and Blend).

    # GPU, full matrix (ResNet-18 picked automatically):
    python benchmarks/bench_cifar10.py --out bench-cifar \\
        --detectors ct,spectral,activation-clustering,strip,scan,spectre
    # CPU smoke run (small CNN, a few thousand images):
    python benchmarks/bench_cifar10.py --limit 2000 --reserve 500 --test 1000 --epochs 10 \\
        --strip-perturbations 20 --out bench-cpu

Everything is written by ``sanitize.bench.run_bench`` (bench.json, bench.md, bench.html; resumable).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from common import CLASSES, DEFAULT_DATA_DIR, load_module

from sanitize import from_arrays
from sanitize.bench import BenchConfig, markdown_table, run_bench


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--limit", type=int, default=None, help="first N training images (default: all 50,000)")
    ap.add_argument("--reserve", type=int, default=2000)
    ap.add_argument("--test", type=int, default=8000)
    ap.add_argument("--attacks", default="badnet,blend")
    ap.add_argument("--detectors", default="spectral,activation-clustering,strip,scan,spectre")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--rate", type=float, default=None, help="override every attack's default rate")
    ap.add_argument("--arch", default="auto")
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--cache-dir", default=None)
    ap.add_argument("--strip-perturbations", type=int, default=None, help="STRIP's N (paper and default: 100)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if not (args.data_dir / "load.py").exists():
        sys.exit(f"no CIFAR-10 data under {args.data_dir} (pass --data-dir)")
    loader = load_module(args.data_dir)
    parts = None if args.limit is None else list(range(-(-args.limit // 10000)))
    x, y = loader.load("cifar10", "train", parts)
    x, y = x[: args.limit], y[: args.limit]
    xt, yt = loader.load("cifar10", "test", None)
    clean = from_arrays(x, y, CLASSES)
    reserve = from_arrays(xt[: args.reserve], yt[: args.reserve], CLASSES)
    test = from_arrays(xt[args.reserve: args.reserve + args.test], yt[args.reserve: args.reserve + args.test],
                       CLASSES)
    settings = {}
    if args.strip_perturbations:
        settings["strip"] = {"perturbations": args.strip_perturbations}
    config = BenchConfig(args.attacks.split(","), args.detectors.split(","), [int(s) for s in args.seeds.split(",")],
                         rate=args.rate, device=args.device, arch=args.arch, epochs=args.epochs,
                         cache_dir=args.cache_dir, detector_settings=settings)
    print(f"clean {len(clean)}, reserve {len(reserve)}, test {len(test)}", flush=True)
    result = run_bench(clean, reserve, test, args.out, config, log=lambda m: print(m, flush=True))
    print(markdown_table(result))


if __name__ == "__main__":
    main()
