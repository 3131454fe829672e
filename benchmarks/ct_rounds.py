#!/usr/bin/env python3
"""Where CT loses poison: after every distillation round, how many poison samples the next round
keeps, and the confused model's loss quantiles for poison and clean samples.

The first measurement of issue 22 (the GPU issue): at 0.3 % BadNet on all 50,000 CIFAR-10
images, ``fast`` found nothing in two runs. If poison is already gone after rounds 0-1, the
trigger was not implanted before the first cut; if it survives to the last rounds and still is
not found, confusion was too weak there. The official code prints the same counts.

    python benchmarks/ct_rounds.py --rate 0.003                      # all 50,000 images (GPU)
    python benchmarks/ct_rounds.py --limit 3000 --reserve 300 --rate 0.03 --device cpu   # a CPU check

Prints one line per round and, with ``--json``, writes them with the final TPR/FPR.
"""

from __future__ import annotations

import json

import numpy as np
from common import detection_parser, load_cifar_subset, pick_device, timed_detection, use_threads

from sanitize.attacks import badnet
from sanitize.detectors.ct import ConfusionTraining

QUANTILES = (0.01, 0.1, 0.5, 0.9)


def round_line(r: int, losses: np.ndarray, kept: np.ndarray, truth: np.ndarray) -> dict:
    """The figures of one round: what the next round keeps, and how poison and clean losses compare."""
    n = len(truth)  # inspected samples; the canaries (after them) are neither poison nor clean here
    kept_inspected = kept[kept < n]
    poison, clean = losses[:n][truth], losses[:n][~truth]
    entry = {"round": r, "kept": int(len(kept_inspected)), "poison_kept": int(truth[kept_inspected].sum()),
             "poison_total": int(truth.sum()),
             "poison_loss": [float(np.quantile(poison, q)) for q in QUANTILES] if len(poison) else None,
             "clean_loss": [float(np.quantile(clean, q)) for q in QUANTILES]}
    print(f"round {r}: keeps {entry['kept']} samples, {entry['poison_kept']} of {entry['poison_total']} poison; "
          f"loss quantiles {QUANTILES}: poison {_fmt(entry['poison_loss'])}, clean {_fmt(entry['clean_loss'])}",
          flush=True)
    return entry


def _fmt(values: list[float] | None) -> str:
    return "-" if values is None else "/".join(f"{v:.3g}" for v in values)


def main() -> None:
    ap = detection_parser(__doc__, reserve=2000)
    ap.add_argument("--rate", type=float, default=0.003)
    args = ap.parse_args()
    use_threads(args.threads)
    data, reserve = load_cifar_subset(args.data_dir, args.train_parts, args.limit, args.reserve)
    device, name = pick_device(args.device)
    poisoned = badnet(data, args.rate, target=0, seed=args.seed)
    truth = np.zeros(len(data), dtype=bool)
    truth[poisoned.poison_indices] = True
    runs = []
    for schedule in args.schedules:
        rounds: list[dict] = []

        def log(r: int, losses: np.ndarray, kept: np.ndarray, rounds: list[dict] = rounds) -> None:
            rounds.append(round_line(r, losses, kept, truth))

        def detect(d, r, device: str, schedule: str = schedule):
            return ConfusionTraining(schedule=schedule, arch=args.arch, seed=args.seed, device=device,
                                     on_round=log).detect(d, r)

        result, seconds, tpr, fpr = timed_detection(detect, truth, device, poisoned.dataset, reserve)
        print(f"{schedule}: TPR {tpr:.3f} FPR {fpr:.4f} suspected {result.suspected_classes} "
              f"{seconds:.0f} s on {name}", flush=True)
        runs.append({"schedule": schedule, "n": len(data), "rate": args.rate, "seed": args.seed, "device": name,
                     "rounds": rounds, "tpr": tpr, "fpr": fpr, "seconds": seconds,
                     "suspected": result.suspected_classes})
    if args.json:
        args.json.write_text(json.dumps(runs, indent=1) + "\n")


if __name__ == "__main__":
    main()
