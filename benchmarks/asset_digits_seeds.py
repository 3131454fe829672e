#!/usr/bin/env python3
"""ASSET's seed sensitivity on digits: schedule variants x attacks x seeds, TPR/FPR per run.

The sets of ``tests/test_asset.py``: scikit-learn digits, 25 % stratified reserve drawn with the
run's seed, 5 % BadNet corner patch or Blend (target class 0), or no poison (``clean``),
``small_cnn`` on the CPU. A variant is a JSON object of ``AssetSchedule`` fields changed from
``fast``; ``{}`` is ``fast`` itself. One JSON line per run (flush on each, so a stopped run keeps
what it measured), then one Markdown row per variant and attack. It makes the same calls as
the runs behind the tables in docs/asset.md ("Cross-fitted selection, with canaries" and "Before
cross-fitting, Blend on digits was seed-sensitive"; two runs side by side, one thread each), e.g.:

    python benchmarks/asset_digits_seeds.py --threads 1 --variants '{}' '{"lr": 0.002}' \
        '{"selection": "ao", "canary_fraction": 0, "ao_cut": 1.5}'
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from dataclasses import replace

import numpy as np
from common import timed_detection, use_threads
from sklearn.metrics import roc_auc_score

from sanitize import asset
from sanitize.attacks import badnet, blend
from sanitize.data import examples
from sanitize.detectors.asset import FAST

ATTACKS = {"badnet": badnet, "blend": blend}


def one_run(attack: str, seed: int, variant: dict, rate: float) -> dict:
    """ASSET on one digits set; its rates, loss AUROC, selections and seconds."""
    data, reserve = examples.split_reserve(examples.digits(), 0.25, seed=seed)
    if attack == "clean":
        inspected, truth = data, np.zeros(len(data), dtype=bool)
    else:
        poisoned = ATTACKS[attack](data, rate, target=0, seed=seed)
        inspected, truth = poisoned.dataset, poisoned.is_poison
    result, seconds, tpr, fpr = timed_detection(asset, truth, "cpu", inspected, reserve, seed=seed,
                                                schedule=replace(FAST, **variant))
    return {"attack": attack, "seed": seed, "variant": variant, "tpr": tpr, "fpr": fpr,
            "n_flagged": result.n_flagged,
            "auroc": float(roc_auc_score(truth, result.scores)) if truth.any() else None,
            "empty_selections": result.settings["empty_selections"],
            "selected_total": result.settings["selected_total"],
            "suspected": result.suspected_classes, "seconds": round(seconds, 1)}


def summary_rows(runs: list[dict]) -> list[str]:
    """A Markdown row per (variant, attack): TPR/FPR per seed and the mean TPR (flags for clean)."""
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for run in runs:
        groups[(json.dumps(run["variant"]), run["attack"])].append(run)
    rows = ["| variant | attack | per seed | mean TPR |", "|---|---|---|---|"]
    for (variant, attack), group in groups.items():
        if attack == "clean":
            cells, mean = ", ".join(f"{r['seed']}: {r['n_flagged']} flagged" for r in group), "–"
        else:
            cells = ", ".join(f"{r['seed']}: {r['tpr']:.3f}/{r['fpr']:.4f}" for r in group)
            mean = f"{np.mean([r['tpr'] for r in group]):.3f}"
        rows.append(f"| {variant} | {attack} | {cells} | {mean} |")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", nargs="+", default=["{}"], help="JSON objects of schedule fields to change")
    ap.add_argument("--attacks", nargs="+", default=["blend", "badnet", "clean"], choices=[*ATTACKS, "clean"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--rate", type=float, default=0.05)
    ap.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's own)")
    args = ap.parse_args()
    use_threads(args.threads)
    runs = []
    for variant in map(json.loads, args.variants):
        for attack in args.attacks:
            for seed in args.seeds:
                runs.append(one_run(attack, seed, variant, args.rate))
                print(json.dumps(runs[-1]), flush=True)
    print("\n".join(summary_rows(runs)))


if __name__ == "__main__":
    main()
