#!/usr/bin/env python3
"""CT on CPU-sized real data: `fast` vs `reference` on scikit-learn's digits, for the time ratio.

The set-up of ``tests/test_ct.py``: digits, 25 % stratified reserve, a BadNet corner patch at
``--rate`` (target class 0), ``small_cnn``. Prints TPR, FPR and seconds per schedule, and each
phase's seconds as it ends (so a run stopped early still says how far it got).

    python benchmarks/ct_digits.py --schedules fast reference --threads 2
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from sanitize import ct
from sanitize.attacks import badnet
from sanitize.data import examples


class PrintPhases:
    """A progress sink that prints each phase's wall time when it ends."""

    @contextmanager
    def phase(self, name: str, total: int) -> Iterator:
        start = time.perf_counter()
        yield lambda: None
        print(f"    {name}: {time.perf_counter() - start:.1f} s ({total} steps)", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--schedules", nargs="+", default=["fast", "reference"])
    ap.add_argument("--rate", type=float, default=0.05)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    data, reserve = examples.split_reserve(examples.digits(), 0.25, seed=args.seed)
    poisoned = badnet(data, args.rate, target=0, seed=args.seed)
    truth = poisoned.is_poison
    print(f"digits: {len(data)} inspected ({truth.sum()} poisoned), {len(reserve)} reserve; "
          f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads", flush=True)
    rows = []
    for schedule in args.schedules:
        print(f"{schedule}:", flush=True)
        start = time.perf_counter()
        result = ct(poisoned.dataset, reserve, schedule=schedule, arch="small_cnn", device="cpu", seed=args.seed,
                    progress=PrintPhases())
        seconds = time.perf_counter() - start
        row = {"schedule": schedule, "tpr": float(result.flagged[truth].mean()),
               "fpr": float(result.flagged[~truth].mean()), "seconds": seconds, "timings": result.timings}
        rows.append(row)
        print(f"{schedule}: TPR {row['tpr']:.3f} FPR {row['fpr']:.4f} {seconds:.1f} s", flush=True)
    if len(rows) == 2:
        print(f"time ratio {rows[1]['schedule']}/{rows[0]['schedule']}: {rows[1]['seconds'] / rows[0]['seconds']:.1f}x")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
