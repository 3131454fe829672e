#!/usr/bin/env python3
"""Benchmark CT on CIFAR-10 with a BadNet 3x3 patch: TPR, FPR and seconds per phase.

Data: the offline CIFAR-10 copy in ``../shared/data`` (or ``--data-dir``), loaded with its
``load.py``. The inspected set is the first ``--limit`` training images (all 50,000 by default)
poisoned at each ``--rates`` value (target class 0); the trusted reserve is the first
``--reserve`` images of the official test split, as in the CT reference (a clean split held
apart from training data).

    python benchmarks/ct_cifar10.py --rates 0.01 0.003 0 --schedules fast      # rate 0: the clean set
    python benchmarks/ct_cifar10.py --limit 10000 --schedules fast reference --json out.json
    python benchmarks/ct_cifar10.py --limit 3000 --reserve 1000 --rates 0.03 --device cpu --threads 1 --class-stats

Prints one Markdown table row per run and, with ``--json``, writes every figure.
"""

from __future__ import annotations

import json

from common import detection_parser, load_cifar_subset, pick_device, timed_detection, use_threads

from sanitize import ct
from sanitize.attacks import badnet


def print_class_stats(result, truth, labels) -> None:
    """One line per class: the evidence behind the class decision, with the poison it caught.

    ``flagged poison`` counts ground-truth poison among the class's flagged samples; an
    unsuspected class has none flagged. ``fast`` reports the canary test's evidence, ``reference``
    the paper's statistic with its isolated count.
    """
    for stat in result.class_stats:
        members = labels == stat["class"]
        evidence = (f"below cut {stat['n_below_cut']} (detectable {stat['detectable_count']}) p {stat['p_value']:.2g} "
                    f"fitted {stat['n_fitted']} canaries {stat['n_canaries_fitted']}/{stat['n_canaries']} fitted"
                    if "p_value" in stat else f"isolated {stat['n_isolated']}")
        print(f"    class {stat['class']}: n {stat['n_samples']} poison {int(truth[members].sum())} {evidence} "
              f"flagged poison {int((result.flagged & truth)[members].sum())} "
              f"ratio {stat['likelihood_ratio']:.3g} suspected {stat['suspected']}", flush=True)


def main() -> None:
    ap = detection_parser(__doc__, reserve=2000)
    ap.add_argument("--rates", type=float, nargs="+", default=[0.01, 0.003])
    ap.add_argument("--class-stats", action="store_true",
                    help="also print each class's evidence: the canary test's counts and p-value (fast) or "
                         "the isolated samples (reference), the poison among them, the paper's likelihood ratio")
    args = ap.parse_args()
    use_threads(args.threads)

    data, reserve = load_cifar_subset(args.data_dir, args.train_parts, args.limit, args.reserve)
    device, name = pick_device(args.device)

    rows = []
    print("| schedule | arch | N | rate | poison | TPR | FPR | flagged | suspected | seconds | device |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for rate in args.rates:
        poisoned = badnet(data, rate, target=0, seed=args.seed)
        truth = poisoned.is_poison
        for schedule in args.schedules:
            result, seconds, tpr, fpr = timed_detection(
                ct, truth, device, poisoned.dataset, reserve, schedule=schedule, arch=args.arch, seed=args.seed)
            row = {"schedule": schedule, "arch": result.settings["arch"], "n": len(data), "rate": rate,
                   "n_poison": int(truth.sum()), "tpr": tpr, "fpr": fpr, "n_flagged": result.n_flagged,
                   "suspected": result.suspected_classes, "seconds": seconds, "device": name,
                   "timings": result.timings, "class_stats": result.class_stats, "seed": args.seed}
            rows.append(row)
            print(f"| {schedule} | {row['arch']} | {len(data)} | {rate} | {row['n_poison']} | {tpr:.3f} | "
                  f"{fpr:.4f} | {result.n_flagged} | {result.suspected_classes} | {seconds:.1f} | {name} |",
                  flush=True)
            phases = {k: round(v, 1) for k, v in result.timings.items()}
            print(f"    phases: {phases}", flush=True)
            if args.class_stats:
                print_class_stats(result, truth, poisoned.dataset.labels.cpu().numpy())
            if args.json:
                args.json.write_text(json.dumps(rows, indent=1))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
