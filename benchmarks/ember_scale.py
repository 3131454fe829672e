"""Time and peak memory to ingest EMBER-format rows and run CT on them (CPU or GPU).

Generates ``--rows`` x 2381 float32 rows in EMBER's ``X_train.dat`` / ``y_train.dat`` layout
under ``--workdir`` (default: a temp folder, never the repository): a pool of generated records
(:mod:`sanitize.ember.synth`) is vectorised once and tiled with small seeded jitter on the
non-hashed count columns, so 600,000 rows take a minute to write instead of an hour to generate.
A 1 % explanation-guided trigger (constrained) is stamped onto benign rows; CT then runs with a
separate generated reserve. Prints one JSON line per phase.

    python benchmarks/ember_scale.py --rows 600000 --ct-rows 600000 --device cuda
    python benchmarks/ember_scale.py --rows 600000 --ct-rows 20000 --device cpu
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from sanitize import ember
from sanitize.attacks.ember_explanation import choose_trigger
from sanitize.data.rows import load_features
from sanitize.detectors.ct import FeatureConfusionTraining
from sanitize.ember import synth as ember_synth

POOL = 4000


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def write_rows(folder: Path, rows: int, seed: int, trigger: tuple[np.ndarray, np.ndarray] | None) -> np.ndarray:
    """Tile a vectorised pool into X_train.dat in chunks; returns the poison row indices."""
    folder.mkdir(parents=True, exist_ok=True)
    X_pool, y_pool = ember_synth.vectors(POOL, seed=seed)
    rng = np.random.default_rng(seed)
    counts = ember.feature_indices(("paths_count", "urls_count", "MZ_count", "timestamp", "size"))
    poison = np.zeros(0, dtype=np.int64)
    with open(folder / "X_train.dat", "wb") as fx, open(folder / "y_train.dat", "wb") as fy:
        for start in range(0, rows, 50_000):
            n = min(50_000, rows - start)
            pick = rng.integers(0, POOL, n)
            X, y = X_pool[pick].copy(), y_pool[pick]
            X[:, counts] *= rng.uniform(0.9, 1.1, (n, len(counts))).astype(np.float32)
            if trigger is not None:
                benign = np.flatnonzero(y == 0)
                chosen = rng.choice(benign, int(0.01 * n), replace=False)
                X[chosen[:, None], trigger[0][None, :]] = trigger[1][None, :]
                poison = np.concatenate([poison, chosen + start])
            fx.write(X.tobytes())
            fy.write(y.astype(np.float32).tobytes())
    return poison


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=600_000)
    parser.add_argument("--ct-rows", type=int, default=None, help="rows CT inspects (default: --rows)")
    parser.add_argument("--reserve", type=int, default=5000)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="ember-scale-"))
    X_fit, y_fit = ember_synth.vectors(POOL, seed=11)
    columns, values, _ = choose_trigger(X_fit.astype(np.float64), y_fit, True, None, 0)
    t = time.perf_counter()
    poison = write_rows(work / "data", args.rows, 1, (columns, values))
    write_rows(work / "reserve", args.reserve, 2, None)
    print(json.dumps({"phase": "generate", "rows": args.rows, "seconds": round(time.perf_counter() - t, 1),
                      "bytes": (work / "data" / "X_train.dat").stat().st_size}), flush=True)
    t = time.perf_counter()
    data = load_features(work / "data")
    print(json.dumps({"phase": "ingest (memory map + NaN/inf check + column stats)", "rows": len(data),
                      "seconds": round(time.perf_counter() - t, 1), "peak_rss_gib": round(peak_rss_gib(), 2)}),
          flush=True)
    reserve = load_features(work / "reserve")
    ct_rows = args.ct_rows or args.rows
    if ct_rows < len(data):
        data = data.subset(np.arange(ct_rows))
        poison = poison[poison < ct_rows]
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    result = FeatureConfusionTraining(schedule="fast", device=args.device, seed=0).detect(data, reserve)
    is_poison = np.zeros(len(data), dtype=bool)
    is_poison[poison] = True
    tp, fp = int((result.flagged & is_poison).sum()), int((result.flagged & ~is_poison).sum())
    out = {"phase": "ct fast", "rows": len(data), "seconds": round(time.perf_counter() - t, 1),
           "timings": {k: round(v, 1) for k, v in result.timings.items()},
           "tpr": tp / max(1, is_poison.sum()), "fpr": fp / max(1, (~is_poison).sum()),
           "flagged": int(result.flagged.sum()), "peak_rss_gib": round(peak_rss_gib(), 2), "device": result.device}
    if args.device.startswith("cuda"):
        out["peak_gpu_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    print(json.dumps(out), flush=True)
    if args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
