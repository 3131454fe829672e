"""ASSET's transfer and self-supervised paradigms on digits: TPR/FPR with known poison, clean rows beside.

    python benchmarks/asset_paradigms.py --seeds 0 1 --attacks clean badnet blend

Transfer: digits are split once (fixed order); 500 images train the "pretrained" encoder (a
small CNN, supervised, clean) and are never inspected; of the rest, 20 per class form the
reserve and the others are inspected, poisoned at ``--rate`` into class 0. Self-supervised: all
of digits, an unlabelled reserve of 500 (its global test needs many canaries, docs/asset.md) and
the rest inspected with labels ignored. Prints one Markdown row per run (docs/asset.md,
"Learning paradigms").
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from sanitize.attacks import run_attack
from sanitize.data.examples import digits, split_reserve
from sanitize.detectors.asset import ASSET
from sanitize.nn.engine import Preprocess, TrainSpec, train_supervised
from sanitize.nn.models import build_model


def splits(seed: int, paradigm: str):
    """(encoder split, inspected, reserve) for ``paradigm`` (self-supervised: no encoder split)."""
    full = digits()
    if paradigm == "self-supervised":
        data, reserve = split_reserve(full, 500 / len(full), seed=seed)
        return None, data, reserve
    order = np.random.default_rng(100).permutation(len(full))
    encoder_part, rest = full.subset(np.sort(order[:500])), full.subset(np.sort(order[500:]))
    data, reserve = split_reserve(rest, 200 / len(rest), seed=seed)
    return encoder_part, data, reserve


def clean_encoder(part) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model("small_cnn", 10, 1, 8)
    train_supervised(model, part.images, part.labels, TrainSpec(epochs=40, batch_size=64, lr=0.05),
                     Preprocess.fit(part.images), torch.Generator().manual_seed(0))
    return model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--paradigms", nargs="+", default=["transfer", "self-supervised"])
    parser.add_argument("--attacks", nargs="+", default=["clean", "badnet", "blend"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--rate", type=float, default=0.05)
    args = parser.parse_args()
    print("| paradigm | attack | seed | poison | TPR | FPR | flagged | named / found | seconds |")
    print("|---|---|---|---|---|---|---|---|---|")
    for seed in args.seeds:
        for paradigm in args.paradigms:
            encoder_part, data, reserve = splits(seed, paradigm)
            extra = {"encoder": clean_encoder(encoder_part), "normalize": "data"} if encoder_part is not None else {}
            for attack in args.attacks:
                truth = np.zeros(len(data), bool)
                inspected = data
                if attack != "clean":
                    poisoned = run_attack(attack, data, args.rate, target=0, seed=seed)
                    inspected, truth[poisoned.poison_indices] = poisoned.dataset, True
                start = time.time()
                result = ASSET(paradigm=paradigm, seed=seed, device="cpu", **extra).detect(inspected, reserve)
                seconds = time.time() - start
                flagged = result.flagged
                tpr = (flagged & truth).sum() / truth.sum() if truth.any() else float("nan")
                fpr = (flagged & ~truth).sum() / (~truth).sum()
                verdict = (result.suspected_classes if paradigm != "self-supervised"
                           else result.settings["global_test"]["poison_found"])
                print(f"| {paradigm} | {attack} | {seed} | {int(truth.sum())} | {tpr:.3f} | {fpr:.4f} | "
                      f"{int(flagged.sum())} | {verdict} | {seconds:.0f} |", flush=True)


if __name__ == "__main__":
    main()
