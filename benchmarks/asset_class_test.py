#!/usr/bin/env python3
"""How ASSET's class test reads the offset model's losses, replayed under each standardisation.

ASSET (``fast``) places a fifth of the reserve into the data as canaries, scores every sample by
its log-loss under the offset model, standardises, and flags the samples above every canary and
above the level set ``z* = 5.08``; a class is named when it holds more of them than clean data
gives by chance (the exact tail ``C(n, k) / C(n + m, k)`` against all ``m`` canaries, Bonferroni
over the classes). That tail holds only if a class's clean samples and the pooled canaries share
one distribution after the standardisation. This script runs ``asset`` on the draws of
``false_alarms.py`` (same data, reserve, attack and seed), records the losses it scored (the
inspected samples, then the canaries), their labels and the poison truth, and replays each run
under each standardisation:

* ``median shift``: each class's log-losses less the class's median (over its inspected samples
  and canaries), then one robust z (median, MAD) over all samples: what ``asset`` does;
* ``class MAD``: each class on its own median and MAD, as CT's class test standardises;
* ``class lower spread``: each class less its median, over a spread read below its median (its
  q10 to q40, which poison in the upper tail does not widen), never below the set-wide spread
  read the same way.

    python benchmarks/asset_class_test.py --datasets gtsrb --attacks clean badnet --rate 0.03 \\
        --reserve-per-class 20 --seeds 0 1 2 --record .bench/asset-class-test
    python benchmarks/asset_class_test.py --replay .bench/asset-class-test     # the tables only
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
from common import pick_device, record_all, recording_parser

ALPHA = 1e-3  # asset's default, which the recorded runs used
EPSILON = 1e-6  # the fast schedule's level set
RULES = ("median shift", "class MAD", "class lower spread")
LOWER_QUANTILES = (0.1, 0.4)


def record_run(name: str, attack: str, per_class: int, seed: int, args, out: Path) -> None:
    """Run asset once and save what its class test read (and the truth) to ``out``."""
    import false_alarms

    import sanitize.detectors.asset.detector as asset_detector
    from sanitize import asset

    args.attack = None if attack == "clean" else attack.removesuffix("-a2a").removesuffix("-constrained")
    args.constrained, args.all_to_all = attack.endswith("-constrained"), attack.endswith("-a2a")
    data, reserve, truth = false_alarms.draw(name, per_class, seed, args)
    seen: dict = {}
    original = asset_detector.class_log_loss_medians

    def recording(losses, labels, num_classes):
        seen.update(losses=np.asarray(losses, dtype=np.float64), labels=np.asarray(labels))
        return original(losses, labels, num_classes)

    asset_detector.class_log_loss_medians = recording
    try:
        device, _ = pick_device(args.device)
        result = asset(data, reserve, seed=seed, device=device)
    finally:
        asset_detector.class_log_loss_medians = original
    seen["canaries"] = int(result.settings["canaries"])
    inspected = len(seen["labels"]) - seen["canaries"]
    assert inspected == len(data) and seen["canaries"] > 0, "asset must have run with canaries on every sample"
    assert np.array_equal(result.flagged, flags(seen, "median shift")), "the replay must reproduce asset's flags"
    np.savez(out, truth=truth, suspected=np.array(result.suspected_classes, dtype=np.int64), target=args.target,
             **seen)


def standardised(run, rule: str) -> np.ndarray:
    """The z of every recorded loss (inspected, then canaries) under ``rule``."""
    from sanitize.detectors.asset.threshold import class_log_loss_medians, robust_z

    losses, labels = run["losses"], run["labels"]
    num_classes = int(labels.max()) + 1
    log_loss = np.log(np.maximum(losses, 1e-12))
    shifted = log_loss - class_log_loss_medians(losses, labels, num_classes)[labels]
    if rule == "median shift":
        return robust_z(shifted)
    spreads = np.ones(num_classes)
    floor = lower_spread(shifted)
    for c in np.unique(labels):
        mine = shifted[labels == c]
        spread = 1.4826 * np.median(np.abs(mine)) if rule == "class MAD" else max(lower_spread(mine), floor)
        spreads[c] = spread if spread > 1e-12 else 1.0
    return shifted / spreads[labels]


def lower_spread(values: np.ndarray) -> float:
    """A Gaussian-equivalent standard deviation read between the q10 and q40 of ``values``."""
    from scipy.stats import norm

    low, high = np.quantile(values, LOWER_QUANTILES)
    return float((high - low) / (norm.ppf(LOWER_QUANTILES[1]) - norm.ppf(LOWER_QUANTILES[0])))


def decision(run, rule: str) -> tuple[np.ndarray, list[int]]:
    """(flags of the inspected samples, named classes) under ``rule``: above the highest canary and
    the level set, in a class whose count is significant at ``ALPHA`` over the classes."""
    from sanitize.detectors.asset.threshold import canary_p_values, level_set_z

    labels, m = run["labels"], int(run["canaries"])
    z = standardised(run, rule)
    n = len(labels) - m
    above = z[:n] > max(level_set_z(EPSILON), float(z[n:].max()))
    num_classes = int(labels.max()) + 1
    p_values = canary_p_values(above, labels[:n], num_classes, m)
    level = ALPHA / int((np.bincount(labels[:n], minlength=num_classes) > 0).sum())
    named = [k for k in range(num_classes) if p_values[k] < level]
    return above & np.isin(labels[:n], named), named


def flags(run, rule: str) -> np.ndarray:
    return decision(run, rule)[0]


def table(folder: Path) -> list[str]:
    """Per setting and rule: runs naming a class, TPR (min / mean), FPR (mean / max) over the seeds."""
    groups: dict[tuple, list] = defaultdict(list)
    for path in sorted(folder.glob("*.npz")):
        name, attack, per_class, _ = path.stem.split("_")
        groups[(name, attack, int(per_class))].append(np.load(path))
    rows = ["| data | attack | reserve/class | runs | rule | runs naming a class (target) | TPR (min / mean) | "
            "FPR (mean / max) |", "|---|---|---|---|---|---|---|---|"]
    for (name, attack, per_class), runs in sorted(groups.items()):
        for rule in RULES:
            tpr, fpr, naming, target = [], [], 0, 0
            for run in runs:
                f, named = decision(run, rule)
                t = run["truth"]
                tpr.append(f[t].mean() if t.any() else np.nan)
                fpr.append(f[~t].mean())
                naming += bool(named)
                target += (int(run["target"]) if "target" in run else 0) in named and bool(t.any())
            shown = f"{np.nanmin(tpr):.3f} / {np.nanmean(tpr):.3f}" if not np.isnan(tpr).all() else "–"
            named_col = f"{naming} ({target})" if attack != "clean" else f"{naming}"
            rows.append(f"| {name} | {attack} | {per_class} | {len(runs)} | {rule} | {named_col} | {shown} | "
                        f"{np.mean(fpr):.4f} / {np.max(fpr):.4f} |")
    return rows


def run_lines(folder: Path) -> list[str]:
    """Per recorded run and rule: the named classes and how many inspected samples stand above the cut."""
    rows = ["| run | rule | named | above the cut (poison) |", "|---|---|---|---|"]
    for path in sorted(folder.glob("*.npz")):
        run = np.load(path)
        for rule in RULES:
            f, named = decision(run, rule)
            rows.append(f"| {path.stem} | {rule} | {named} | {int(f.sum())} ({int((f & run['truth']).sum())}) |")
    return rows


def main() -> None:
    ap = recording_parser(__doc__.splitlines()[0], ["digits", "cifar10", "gtsrb", "ember"],
                          ["clean", "badnet", "blend"],
                          "attack names, 'clean', NAME-a2a for the all-to-all variant (badnet-a2a), "
                          "ember-explanation[-constrained] for rows", [20])
    folder = record_all(ap.parse_args(), record_run)
    print("\n".join(table(folder)))
    print("\n".join(run_lines(folder)))


if __name__ == "__main__":
    main()
