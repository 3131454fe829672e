#!/usr/bin/env python3
"""Benchmark ASSET on CIFAR-10: BadNet and Blend at 1 %, SIG at 2 %; TPR, FPR and seconds per phase.

Data: the offline CIFAR-10 copy in ``../shared/data`` (or ``--data-dir``), loaded with its
``load.py``. The inspected set is the first ``--limit`` images of the ``--train-parts`` (all
50,000 by default), poisoned by each attack (target class 0); the trusted reserve is the first
``--reserve`` images of the official test split.

    python benchmarks/asset_cifar10.py                                   # all attacks, 50,000 images
    python benchmarks/asset_cifar10.py --train-parts 0 --limit 2500 --attacks badnet:0.01 --device cpu

Prints one Markdown table row per run and, with ``--json``, writes every figure.
"""

from __future__ import annotations

import json
import sys

from common import detection_parser, load_cifar_subset, pick_device, timed_detection, use_threads
from sklearn.metrics import roc_auc_score

from sanitize import asset
from sanitize.attacks import ATTACKS
from sanitize.detectors.asset import SELECTIONS

DEFAULT_ATTACKS = ["badnet:0.01", "blend:0.01", "sig:0.02"]


def parse_attack(spec: str) -> tuple[str, float]:
    name, _, rate = spec.partition(":")
    if name not in ATTACKS or not rate:
        sys.exit(f"--attacks {spec!r}: expected NAME:RATE with NAME in {', '.join(ATTACKS)}")
    return name, float(rate)


def main() -> None:
    ap = detection_parser(__doc__, reserve=1000)
    ap.add_argument("--attacks", nargs="+", default=DEFAULT_ATTACKS, help="NAME:RATE, e.g. blend:0.01")
    ap.add_argument("--ao-cut", type=float, default=None,
                    help="AO selection cut, with --selection ao (default: the schedule's)")
    ap.add_argument("--mlp-steps", type=int, default=None, help="concentration-MLP steps (default: the schedule's)")
    ap.add_argument("--lr", type=float, default=None, help="offset-loop Adam lr (default: the schedule's)")
    ap.add_argument("--selection", choices=list(SELECTIONS), default=None,
                    help="max-step selection rule (default: the schedule's; docs/asset.md)")
    ap.add_argument("--margin", type=float, default=None,
                    help="crossfit/global selection margin in robust SDs (default: the schedule's)")
    args = ap.parse_args()
    use_threads(args.threads)

    attacks = [parse_attack(a) for a in args.attacks]
    data, reserve = load_cifar_subset(args.data_dir, args.train_parts, args.limit, args.reserve)
    device, name = pick_device(args.device)

    rows = []
    print("| attack | rate | schedule | arch | N | poison | TPR | FPR | flagged | suspected | seconds | device |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for attack, rate in attacks:
        poisoned = ATTACKS[attack](data, rate, target=0, seed=args.seed)
        truth = poisoned.is_poison
        for schedule in args.schedules:
            result, seconds, tpr, fpr = timed_detection(
                asset, truth, device, poisoned.dataset, reserve, schedule=schedule, arch=args.arch, seed=args.seed,
                ao_cut=args.ao_cut, mlp_steps=args.mlp_steps, lr=args.lr, selection=args.selection,
                selection_margin=args.margin)
            auroc = float(roc_auc_score(truth, result.scores)) if 0 < truth.sum() < len(truth) else None
            row = {"attack": attack, "rate": rate, "schedule": schedule, "arch": result.settings["arch"],
                   "n": len(data), "n_poison": int(truth.sum()), "tpr": tpr, "fpr": fpr, "auroc": auroc,
                   "n_flagged": result.n_flagged, "suspected": result.suspected_classes, "seconds": seconds,
                   "device": name, "timings": result.timings, "seed": args.seed,
                   "empty_selections": result.settings["empty_selections"],
                   "global_selected": result.settings.get("global_selected"),
                   "offset_steps": result.settings["offset_steps"], "threshold": result.settings["threshold"]}
            rows.append(row)
            print(f"| {attack} | {rate} | {schedule} | {row['arch']} | {len(data)} | {row['n_poison']} | {tpr:.3f} | "
                  f"{fpr:.4f} | {result.n_flagged} | {result.suspected_classes} | {seconds:.1f} | {name} |",
                  flush=True)
            phases = {k: round(v, 1) for k, v in result.timings.items()}
            print(f"    loss AUROC {auroc}; phases: {phases}; offset steps {row['offset_steps']}, "
                  f"{row['empty_selections']} with an empty selection"
                  + (f"; {row['global_selected']} selected from the whole set" if row["global_selected"] is not None
                     else ""), flush=True)
            if args.json:
                args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
