#!/usr/bin/env python3
"""Which samples of a suspected class should CT flag? The class test's inputs, replayed under each rule.

CT's class test (``sanitize/detectors/canaries.py``) decides *which classes* are suspected; a
second rule decides *which of their samples* are flagged. This script runs ``ct`` on the draws of
``false_alarms.py`` (same data, reserve, attack and seed), records what the class test was given
in each run (every sample's standardised score and whether the confused model still fits it, the
same for the canaries, the log-losses before standardisation, and the poison truth), and replays
the runs under each flagging rule:

* ``fitted``: every sample of a suspected class that the confused model still predicts as its label
  (the CT paper's rule; what ``ct`` did before this measurement, which chose ``below 0.02``,
  and ``below 0.04`` since a second one on more sets);
* ``below q``: the samples of a suspected class whose score lies below the ``k``-th lowest canary
  score, ``k = max(1, floor(q (M + 1)))`` of the ``M`` canaries the class was tested against (all
  classes' canaries, or its own where the test used its own). A clean sample exchangeable with the
  canaries lies there with probability at most ``k / (M + 1) <= q``, so ``q`` bounds the share of a
  suspected class's clean samples that are flagged; ``below 0`` is the lowest canary (the cut).

The class decision is the same under every rule; only the suspected classes' flags differ.

    python benchmarks/ct_flag_rule.py --datasets digits --reserve-per-class 20 50 --seeds 0 1 2 \\
        --attacks badnet blend --rate 0.05 --threads 1 --record .bench/flag-rule
    python benchmarks/ct_flag_rule.py --replay .bench/flag-rule            # the table only
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
from common import pick_device, record_all, recording_parser

RULES = ("fitted", "below 0", "below 0.01", "below 0.02", "below 0.03", "below 0.04", "below 0.05")
ALPHA = 1e-3  # ct's default, which the recorded runs used


def record_run(name: str, attack: str, per_class: int, seed: int, args, out: Path) -> None:
    """Run ct once and save the class test's inputs (and the truth) to ``out``."""
    import false_alarms

    import sanitize.detectors.ct.detector as ct_detector
    import sanitize.detectors.ct.rows as ct_rows
    from sanitize import ct
    from sanitize.detectors.ct.detector import FLAG_SHARE

    args.attack = None if attack == "clean" else attack.removesuffix("-a2a").removesuffix("-constrained")
    args.constrained, args.all_to_all = attack.endswith("-constrained"), attack.endswith("-a2a")
    data, reserve, truth = false_alarms.draw(name, per_class, seed, args)
    seen: dict = {}
    module = ct_rows if name == "ember" else ct_detector  # where ct on rows / on images calls the class test
    original = module.canary_class_test

    def recording(scores, labels, canary_scores, canary_labels, num_classes, alpha, fitted, canary_fitted, **kw):
        seen.update(scores=scores, labels=labels, canary_scores=canary_scores, canary_labels=canary_labels,
                    fitted=fitted, canary_fitted=canary_fitted)
        found = original(scores, labels, canary_scores, canary_labels, num_classes, alpha, fitted, canary_fitted,
                         **kw)
        seen.update(suspected=np.array(found[1], dtype=np.int64),
                    own=np.array([s["canary_pool"] == "own" for s in found[2]]))
        return found

    standardise = module.class_robust_z

    def recording_raw(values, labels, canary_values, canary_labels, *rest):
        # the log-losses before the per-class standardisation, so that a change to it can be replayed
        seen.update(log_loss=values, canary_log_loss=canary_values)
        return standardise(values, labels, canary_values, canary_labels, *rest)

    module.canary_class_test, module.class_robust_z = recording, recording_raw
    try:
        device, _ = pick_device(args.device)
        result = ct(data, reserve, seed=seed, device=device)
    finally:
        module.canary_class_test, module.class_robust_z = original, standardise
    own_rule = "below 0" if name == "ember" else f"below {FLAG_SHARE:g}"  # rows flag below the cut
    assert np.array_equal(result.flagged, flags(seen, own_rule, "scan" if name == "ember" else "lowest")), \
        "the replay must reproduce ct's own flags"
    np.savez(out, truth=truth, **seen)


def flags(run, rule: str, cuts: str) -> np.ndarray:
    """The samples ``rule`` flags in one recorded run (:func:`decide`)."""
    return decide(run, rule, cuts)[0]


def decide(run, rule: str, cuts: str) -> tuple[np.ndarray, list[int]]:
    """The samples ``rule`` flags in one recorded run, the classes decided by today's class test
    (``sanitize.detectors.canaries``) on the recorded inputs; ``cuts``: ``scan`` (a class with many
    canaries of its own is also cut at its next-lowest canaries: CT on feature rows since
    2026-12-08) or ``lowest`` (the lowest canary only: CT on images)."""
    from sanitize.detectors.canaries import canary_class_test

    share = 0.0 if rule == "fitted" else float(rule.split()[1])
    num_classes = int(max(run["labels"].max(), run["canary_labels"].max())) + 1
    flagged, suspected, _, _ = canary_class_test(run["scores"], run["labels"], run["canary_scores"],
                                                 run["canary_labels"], num_classes, ALPHA, run["fitted"],
                                                 run["canary_fitted"], flag_share=share,
                                                 cut_orders=1 if cuts == "lowest" else None)
    return (np.isin(run["labels"], suspected) & run["fitted"] if rule == "fitted" else flagged), suspected


def table(folder: Path, cuts: list[str], rules: tuple[str, ...] = RULES) -> list[str]:
    """Per setting, cuts and rule: TPR (min / mean) and FPR (mean / max) over the recorded seeds."""
    groups: dict[tuple, list] = defaultdict(list)
    for path in sorted(folder.glob("*.npz")):
        name, attack, per_class, _ = path.stem.split("_")
        groups[(name, attack, int(per_class))].append(np.load(path))
    rows = ["| data | attack | reserve/class | runs | cuts | rule | runs naming a poisoned class / a clean one "
            "| TPR (min / mean) | FPR (mean / max) |", "|---|---|---|---|---|---|---|---|---|"]
    for (name, attack, per_class), runs in sorted(groups.items()):
        for cut in cuts:
            for rule in rules:
                tpr, fpr, named_poisoned, named_clean = [], [], 0, 0
                for run in runs:
                    (f, suspected), t = decide(run, rule, cut), run["truth"]
                    poisoned = set(np.unique(run["labels"][t]).tolist())
                    named_poisoned += bool(poisoned & set(suspected))
                    named_clean += bool(set(suspected) - poisoned)
                    tpr.append(f[t].mean() if t.any() else np.nan)
                    fpr.append(f[~t].mean())
                shown = f"{np.nanmin(tpr):.3f} / {np.nanmean(tpr):.3f}" if not np.isnan(tpr).all() else "–"
                rows.append(f"| {name} | {attack} | {per_class} | {len(runs)} | {cut} | {rule} | "
                            f"{named_poisoned} / {named_clean} | {shown} | {np.mean(fpr):.4f} / {np.max(fpr):.4f} |")
    return rows


def run_lines(folder: Path) -> list[str]:
    """Per recorded run: the suspected classes and the set-wide count below the lowest canary with
    its exact tail p (what a spread-out, all-to-all poisoning would show, if anything)."""
    from sanitize.detectors.canaries import below_lowest_canary_p, canary_class_test, samples_below_pooled_cut

    rows = ["| run | suspected (recorded / today's test) | poison | below the pooled cut (poison) | set-wide p |",
            "|---|---|---|---|---|"]
    for path in sorted(folder.glob("*.npz")):
        run = np.load(path)
        num_classes = int(max(run["labels"].max(), run["canary_labels"].max())) + 1
        _, today, stats, _ = canary_class_test(run["scores"], run["labels"], run["canary_scores"],
                                               run["canary_labels"], num_classes, ALPHA, run["fitted"],
                                               run["canary_fitted"])
        below, n, m = samples_below_pooled_cut(run["scores"], run["labels"], run["canary_scores"],
                                               run["canary_labels"], stats)
        k = int(below.sum())
        rows.append(f"| {path.stem} | {run['suspected'].tolist()} / {today} | {int(run['truth'].sum())} | "
                    f"{k} ({int((below & run['truth']).sum())}) | {below_lowest_canary_p(n, k, m):.2g} |")
    return rows


def main() -> None:
    ap = recording_parser(__doc__.splitlines()[0], ["digits", "cifar10", "gtsrb", "ember"], ["badnet", "blend"],
                          "attack names, 'clean', NAME-a2a for the all-to-all variant (badnet-a2a), "
                          "ember-explanation-constrained", [20, 50])
    ap.add_argument("--cuts", nargs="+", default=["lowest"], choices=["scan", "lowest"],
                    help="replay the class test with the lowest canary only (CT on images) and/or the scan of "
                         "cuts (CT on feature rows)")
    ap.add_argument("--rules", nargs="+", default=list(RULES), help="flagging rules to replay (default: all)")
    args = ap.parse_args()
    folder = record_all(args, record_run)
    print("\n".join(table(folder, args.cuts, tuple(args.rules))))
    print("\n".join(run_lines(folder)))


if __name__ == "__main__":
    main()
