#!/usr/bin/env python3
"""Diagnose ASSET's poison-concentration step on CIFAR-10: does the MLP single out the poison?

ASSET's offset loop only acts on what the concentration MLP selects (``--selection ao``: the
paper's AO > cut within each inspected batch; ``crossfit``: ``fast``'s held-out scores above the
reserve's, see docs/asset.md). This script trains the feature extractor once, as ``sanitize asset`` does,
then draws ``--batches`` (inspected, reserve) batch pairs and, for each feature variant and MLP
setting, reports per batch: the poison it holds, how many samples AO selects and how many of
them are poison, and the within-batch AUROC of the MLP's scores (poison vs clean; held-out
scores for ``crossfit``).

Feature variants: ``eval`` (penultimate features with the running batch-norm statistics: what
``sanitize asset`` uses), ``train-bn`` (the reference code's: the extractor in train mode, so each
batch is normalised by its own statistics), ``map`` (the last activation map before global
pooling, which keeps a small trigger's few positions; what the passive baselines read).

With ``--global``, the eval features of the whole set are also scored as the opt-in ``global``
selection scores them (:func:`sanitize.detectors.asset.global_crossfit_scores`: two MLPs, each on
half of all of D against half of the reserve, each sample scored by the one that did not see
it): the held-out AUROC over the whole set, and how many poison and clean images the ``global``
rule selects.

    python benchmarks/asset_concentration.py --attack blend:0.01 --limit 2500 --device cpu --threads 1
"""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np
import torch
from asset_cifar10 import parse_attack
from common import detection_parser, load_cifar_subset, pick_device, use_threads
from sklearn.metrics import roc_auc_score

from sanitize.attacks import ATTACKS
from sanitize.detectors import asset as asset_module
from sanitize.nn.devices import seed_everything
from sanitize.nn.engine import infer, pooled_map, train_supervised


@torch.no_grad()
def train_mode_features(model, x: torch.Tensor, prep) -> torch.Tensor:
    """Penultimate features with batch statistics (the running averages left as they are)."""
    model.train()
    with asset_module.batch_norm_without_update(model):
        features = model.trunk(prep(x)).float()
    model.eval()
    return features


def select(d: torch.Tensor, r: torch.Tensor, steps: int, lr: float, hidden: int, args,
           gen: torch.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The D batch's concentration scores and the positions the chosen rule selects."""
    if args.selection == "crossfit":
        d_scores, r_scores, d_fold, r_fold = asset_module.crossfit_scores(d, r, steps, lr, hidden, gen)
        return d_scores.cpu().numpy(), asset_module.crossfit_selection(d_scores, r_scores, d_fold, r_fold, args.margin)
    scores = asset_module.concentration_scores(d, r, steps, lr, hidden).cpu().numpy()
    return scores, asset_module.select_outliers(scores, args.ao_cut)


def report_whole_set(model, inp, schedule, truth: np.ndarray, seed: int) -> None:
    """Held-out AUROC of the set-wide concentration scores, and what the ``global`` rule selects."""
    d = asset_module.penultimate(model, inp.x, inp.prep)
    r = asset_module.penultimate(model, inp.reserve_x, inp.prep)
    global_schedule = replace(schedule, selection="global")
    torch.manual_seed(seed)
    scored = asset_module.global_crossfit_scores(d, r, global_schedule, torch.Generator().manual_seed(seed))
    chosen = np.zeros(len(truth), dtype=bool)  # global_selection's rule on these scores, not scored again
    chosen[asset_module.crossfit_selection(*scored, global_schedule.selection_margin)] = True
    scores = scored[0]
    print(f"whole set (global): held-out AUROC {roc_auc_score(truth, scores.cpu().numpy()):.3f}; selected "
          f"{chosen.sum()}: {chosen[truth].sum()} of {truth.sum()} poison, {chosen[~truth].sum()} clean", flush=True)


def main() -> None:
    ap = detection_parser(__doc__, reserve=1000)
    ap.add_argument("--attack", default="blend:0.01", help="NAME:RATE")
    ap.add_argument("--batches", type=int, default=12)
    ap.add_argument("--mlp", nargs="+", default=["50:2e-3", "200:2e-3", "1000:2e-3"], help="STEPS:LR settings")
    ap.add_argument("--ao-cut", type=float, default=2.0)
    ap.add_argument("--selection", choices=["ao", "crossfit"], default="ao")
    ap.add_argument("--margin", type=float, default=1.0, help="crossfit: robust SDs above the reserve's maximum")
    ap.add_argument("--global", dest="whole_set", action="store_true",
                    help="also score the whole set as the global selection does")
    args = ap.parse_args()
    use_threads(args.threads)
    name, rate = parse_attack(args.attack)
    data, reserve = load_cifar_subset(args.data_dir, args.train_parts, args.limit, args.reserve)
    poisoned = ATTACKS[name](data, rate, target=0, seed=args.seed)
    truth = poisoned.is_poison

    device = torch.device(pick_device(args.device)[0])
    detector = asset_module.ASSET(seed=args.seed, arch=args.arch)
    schedule = detector.resolved_schedule()
    gen = seed_everything(args.seed)
    inp = detector.inputs(poisoned.dataset, reserve, device)
    spec = asset_module.extractor_spec(schedule, len(inp.y), inp.image_side, None)
    start = time.perf_counter()
    model = train_supervised(inp.factory(), inp.x, inp.y, spec, inp.prep, gen)
    model.eval()
    predicted = infer(model, inp.x, inp.prep)[0].argmax(1).cpu().numpy()
    print(f"extractor ({inp.arch}, {time.perf_counter() - start:.0f} s): poison predicted as the target "
          f"{(predicted[truth] == 0).mean():.2f}, clean training accuracy "
          f"{(predicted[~truth] == inp.y.cpu().numpy()[~truth]).mean():.2f}")

    if args.whole_set:
        report_whole_set(model, inp, schedule, truth, args.seed)
    draw = torch.Generator().manual_seed(args.seed + 1)
    pairs = [(torch.randperm(len(inp.y), generator=draw)[:schedule.batch_size].to(device),
              torch.randperm(len(inp.reserve_y), generator=draw)[:schedule.batch_size].to(device))
             for _ in range(args.batches)]
    # each variant's (inspected, reserve) features of every batch pair, computed once for all MLP settings
    stored = {"eval": (asset_module.penultimate(model, inp.x, inp.prep),
                       asset_module.penultimate(model, inp.reserve_x, inp.prep)),
              "map": (pooled_map(model, inp.x, inp.prep).to(device),
                      pooled_map(model, inp.reserve_x, inp.prep).to(device))}
    features = {name: [(d[d_idx], r[r_idx]) for d_idx, r_idx in pairs] for name, (d, r) in stored.items()}
    features["train-bn"] = [(train_mode_features(model, inp.x[d_idx], inp.prep),
                             train_mode_features(model, inp.reserve_x[r_idx], inp.prep)) for d_idx, r_idx in pairs]
    print("| features | MLP steps, lr | poison per batch | selected | poison selected | empty | AUROC |")
    print("|---|---|---|---|---|---|---|")
    for variant in ("eval", "train-bn", "map"):
        for setting in args.mlp:
            steps_text, lr_text = setting.split(":")
            steps, lr = int(steps_text), float(lr_text)
            rows = []
            for b, ((d_idx, _), (d, r)) in enumerate(zip(pairs, features[variant], strict=True)):
                torch.manual_seed(args.seed + b)
                scores, chosen = select(d, r, steps, lr, schedule.mlp_hidden, args, torch.Generator().manual_seed(b))
                poison = truth[d_idx.cpu().numpy()]
                auroc = roc_auc_score(poison, scores) if 0 < poison.sum() < len(poison) else np.nan
                rows.append((poison.sum(), len(chosen), poison[chosen].sum(), len(chosen) == 0, auroc))
            m = np.array(rows, dtype=float)
            print(f"| {variant} | {steps}, {lr:g} | {m[:, 0].mean():.1f} | {m[:, 1].mean():.2f} | "
                  f"{m[:, 2].mean():.2f} | {int(m[:, 3].sum())}/{len(pairs)} | {np.nanmean(m[:, 4]):.3f} |", flush=True)


if __name__ == "__main__":
    main()
