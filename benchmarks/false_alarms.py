#!/usr/bin/env python3
"""False alarms and detection over the settings a user brings: data sets x reserve sizes x seeds.

For each data set, reserve size (images or rows per class) and seed, the reserve is drawn at
random from data the inspected set does not contain, the inspected set is the rest, optionally
poisoned (``--attack``, target class ``--target``, default 0), and each detector runs through the
Python API on the CPU or GPU. One JSON line per run (appended to ``--json``, so a stopped run keeps what it measured
and a rerun skips what is there), then a Markdown table: per data set, detector and reserve size,
the share of runs that flag anything and the flagged fractions (clean), or TPR/FPR (poisoned).

Data sets:
  digits   scikit-learn's 1,797 8x8 digits (about 180 per class; the reserve is drawn from them)
  cifar10  ``--limit`` CIFAR-10 training images drawn at random (by the seed); reserve from the test split
  gtsrb    ``--limit`` GTSRB training images drawn at random (43 classes); reserve from its test split
  ember    generated EMBER-format rows (sanitize.ember.synth): ``--limit`` rows, separate reserve;
           ``--attack ember-explanation [--constrained]`` stamps the clean-label feature trigger

    python benchmarks/false_alarms.py --datasets digits --reserve-per-class 10 20 50 --seeds 0 1 2 3 4 \\
        --detectors ct asset --json fa-digits.jsonl
    python benchmarks/false_alarms.py --datasets digits --attack badnet --rate 0.05 --json fa-digits-badnet.jsonl
    python benchmarks/false_alarms.py --datasets cifar10 --limit 2000 --reserve-per-class 20 200 --seeds 0 1 \\
        --json fa-cifar.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
from common import DEFAULT_DATA_DIR, drawn_positions, load_module, pick_device, timed_detection, use_threads

from sanitize import asset, ct, from_arrays
from sanitize.attacks import ATTACKS, Surrogate, run_attack
from sanitize.attacks.ember_explanation import ember_explanation
from sanitize.data import examples
from sanitize.errors import SanitizeError

DETECTORS = {"ct": ct, "asset": asset}


def draw_reserve(labels: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """``per_class`` random positions of every class (all of a class that has fewer)."""
    rng = np.random.default_rng(10_000 + seed)
    return np.sort(np.concatenate([rng.choice(np.flatnonzero(labels == c), min(per_class, (labels == c).sum()),
                                              replace=False) for c in np.unique(labels)]))


def image_sets(name: str, per_class: int, seed: int, args):
    """(inspected, reserve) image datasets of one run."""
    if name == "digits":
        pool = examples.digits()
        labels = pool.labels.numpy()
        reserve = draw_reserve(labels, per_class, seed)
        rest = np.setdiff1d(np.arange(len(pool)), reserve)
        return pool.subset(rest), pool.subset(reserve)
    loader = load_module(args.data_dir)
    x, y = loader.load(name, "train", None)
    xt, yt = loader.load(name, "test", None)
    classes = [str(c) for c in range(int(max(y.max(), yt.max())) + 1)]
    take = drawn_positions(len(x), args.limit, seed)
    reserve = draw_reserve(yt, per_class, seed)
    return from_arrays(x[take], y[take], classes), from_arrays(xt[reserve], yt[reserve], classes)


def ember_sets(per_class: int, seed: int, args):
    """(inspected, reserve) generated EMBER-format rows of one run."""
    from sanitize.data.rows import FeatureDataset
    from sanitize.ember import synth as ember_synth

    def rows(n: int, s: int) -> FeatureDataset:
        import torch

        X, y = ember_synth.vectors(n, seed=s)
        if getattr(args, "label_noise", 0):  # labels a model only partly learns
            flip = np.random.default_rng(s + 100_000).random(n) < args.label_noise
            y[flip] = 1 - y[flip]
        return FeatureDataset(torch.from_numpy(X), torch.from_numpy(y.astype(np.int64)), ["benign", "malicious"],
                              [str(i) for i in range(n)])

    data = rows(args.limit, 2 * seed + 1)
    pool = rows(max(2 * per_class + 200, 4 * per_class), 2 * seed + 2)
    return data, pool.subset(draw_reserve(pool.labels.numpy(), per_class, seed))


def attack_name(args) -> str:
    """How a run's attack is recorded: ``clean``, the attack's name, ``... constrained``, ``... beyond-range``,
    ``... label noise R``."""
    noise = f" label noise {args.label_noise:g}" if getattr(args, "label_noise", 0) else ""
    if not args.attack:
        return "clean" + noise
    if args.all_to_all:
        return f"{args.attack} all-to-all"
    values = " beyond-range" if getattr(args, "trigger_values", "min-population") == "beyond-range" else ""
    return (f"{args.attack} constrained" if args.constrained else args.attack) + values + noise


def draw(name: str, per_class: int, seed: int, args) -> tuple:
    """(inspected, reserve, poison truth) of one run: ``args.attack`` (none: clean) at ``args.rate``,
    target class ``args.target``."""
    data, reserve = ember_sets(per_class, seed, args) if name == "ember" else image_sets(name, per_class, seed, args)
    truth = np.zeros(len(data), dtype=bool)
    if args.attack == "ember-explanation":
        poisoned = ember_explanation(data, args.rate, seed=seed, constrained=args.constrained,
                                     values=getattr(args, "trigger_values", "min-population"))
        data, truth = poisoned.dataset, poisoned.is_poison
    elif args.attack:
        surrogate = Surrogate(device=pick_device(args.device)[0], cache_dir=args.cache_dir)  # cl, narcissus, ...
        poisoned = run_attack(args.attack, data, args.rate, args.target, seed, surrogate=surrogate,
                              **({"all_to_all": True} if args.all_to_all else {}))
        data, truth = poisoned.dataset, poisoned.is_poison
    return data, reserve, truth


def one_run(name: str, detector: str, per_class: int, seed: int, args) -> dict:
    data, reserve, truth = draw(name, per_class, seed, args)
    device, machine = pick_device(args.device)
    attack = attack_name(args)
    run = {"dataset": name, "detector": detector, "reserve_per_class": per_class, "seed": seed,
           "attack": attack, "rate": args.rate if args.attack else 0.0, "target": args.target if args.attack else None,
           "n": len(data), "machine": machine}
    try:
        result, seconds, tpr, fpr = timed_detection(DETECTORS[detector], truth, device, data, reserve, seed=seed)
    except SanitizeError as err:  # e.g. a reserve too small for the detector: recorded, not fatal
        return {**run, "error": str(err)}
    return {**run, "n_flagged": result.n_flagged, "flagged_fraction": result.n_flagged / len(data),
            "suspected": result.suspected_classes, "tpr": tpr if truth.any() else None, "fpr": fpr,
            "seconds": round(seconds, 1), "notes": result.notes}


def summary(runs: list[dict]) -> list[str]:
    """One Markdown row per (data set, detector, reserve size, attack)."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in runs:
        groups[(r["dataset"], r["detector"], r["reserve_per_class"], r["attack"], r["rate"])].append(r)
    rows = ["| data | detector | reserve/class | attack | runs | runs flagging | flagged fraction (mean / max) "
            "| TPR (min / mean) | FPR (max) | errors |", "|---|---|---|---|---|---|---|---|---|---|"]
    for (name, det, per_class, attack, rate), group in sorted(groups.items()):
        ok = [r for r in group if "error" not in r]
        frac = [r["flagged_fraction"] for r in ok]
        tprs = [r["tpr"] for r in ok if r["tpr"] is not None]
        label = attack if attack.startswith("clean") else f"{attack} {rate:.0%}"
        rows.append(f"| {name} | {det} | {per_class} | {label} | {len(ok)} | {sum(f > 0 for f in frac)} | "
                    f"{np.mean(frac) if frac else 0:.4f} / {max(frac, default=0):.4f} | "
                    + (f"{min(tprs):.3f} / {np.mean(tprs):.3f}" if tprs else "–")
                    + f" | {max((r['fpr'] for r in ok), default=0):.4f} | {len(group) - len(ok)} |")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", nargs="+", default=["digits"], choices=["digits", "cifar10", "gtsrb", "ember"])
    ap.add_argument("--detectors", nargs="+", default=["ct", "asset"], choices=sorted(DETECTORS))
    ap.add_argument("--reserve-per-class", type=int, nargs="+", default=[10, 20, 50])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--attack", choices=[*sorted(ATTACKS), "ember-explanation"], default=None,
                    help="poison the inspected set (images: target class --target; ember: the clean-label "
                         "feature trigger)")
    ap.add_argument("--constrained", action="store_true", help="ember-explanation: the 17 feasible features")
    ap.add_argument("--trigger-values", default="min-population", choices=["min-population", "beyond-range"],
                    help="ember-explanation: how the trigger's values are chosen")
    ap.add_argument("--label-noise", type=float, default=0.0,
                    help="ember: this share of the generated rows (data and reserve) carry the other label")
    ap.add_argument("--all-to-all", action="store_true", help="badnet, blend, trojan: label y -> y + 1 mod C")
    ap.add_argument("--rate", type=float, default=0.05)
    ap.add_argument("--target", type=int, default=0, help="the attack's target class")
    ap.add_argument("--limit", type=int, default=2000, help="inspected images or rows (cifar10, gtsrb, ember)")
    ap.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--cache-dir", type=Path, default=None, help="cache of what cl, narcissus, dynamic, issba train")
    ap.add_argument("--json", type=Path, required=True, help="JSON lines, appended; runs already there are skipped")
    args = ap.parse_args()
    use_threads(args.threads)
    done = [json.loads(line) for line in args.json.read_text().splitlines()] if args.json.exists() else []
    seen = {(r["dataset"], r["detector"], r["reserve_per_class"], r["seed"], r["attack"], r["rate"]) for r in done}
    with args.json.open("a") as out:
        for name in args.datasets:
            for per_class in args.reserve_per_class:
                for seed in args.seeds:
                    for det in args.detectors:
                        key = (name, det, per_class, seed, attack_name(args), args.rate if args.attack else 0.0)
                        if key in seen:
                            continue
                        run = one_run(name, det, per_class, seed, args)
                        print(json.dumps(run), flush=True, file=sys.stderr)
                        out.write(json.dumps(run) + "\n")
                        out.flush()
                        done.append(run)
    print("\n".join(summary(done)))


if __name__ == "__main__":
    main()
