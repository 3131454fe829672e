#!/usr/bin/env python3
"""Measure each attack's clean accuracy (ACC) and attack success rate (ASR) on CIFAR-10.

Data: the offline CIFAR-10 copy in ``../shared/data`` (or ``--data-dir``). The training set is
the first ``--train`` training images, poisoned by each attack at its default rate (or
``--rate``) with target class 0; a model (``--arch``, default small_cnn) is trained on it with
the shared engine (SGD, one-cycle schedule, flip + crop augmentation). ACC is measured on the
first ``--test`` official test images; ASR on their triggered copy
(:func:`sanitize.attacks.apply_trigger_to_test`: non-target classes, TaCT: the source class) as
the fraction predicted as the target. ``--baseline`` also trains on the clean set and reports
each trigger's "ASR" there: the rate at which a trigger alone already flips predictions.

    python benchmarks/attack_asr.py --attacks badnet blend trojan --train 5000 --epochs 15
    python benchmarks/attack_asr.py --device cuda --train 50000 --arch resnet18 --epochs 40 --json asr.json
    python benchmarks/attack_asr.py --digits --attacks cl narcissus --rate 0.05 --epochs 30
    python benchmarks/attack_asr.py --attacks issba --train 3000 --draw 0 --rate 0.03 --baseline

``cl`` and ``narcissus`` train their own model of the task first (cached under ``--cache-dir``);
the "attack seconds" column is that cost.

Prints one Markdown table row per attack and, with ``--json``, writes every figure.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch
from common import CLASSES, DEFAULT_DATA_DIR, drawn_positions, load_module

from sanitize import from_arrays
from sanitize.attacks import ATTACK_INFO, ATTACKS, PoisonedSet, Surrogate, apply_trigger_to_test, run_attack
from sanitize.data import examples
from sanitize.data.images import ImageDataset
from sanitize.nn.devices import resolve_device, seed_everything
from sanitize.nn.engine import Preprocess, TrainSpec, infer, train_supervised
from sanitize.nn.models import Classifier, build_model


def train(data: ImageDataset, args: argparse.Namespace, device: torch.device) -> tuple[Classifier, Preprocess]:
    generator = seed_everything(args.seed)
    model = build_model(args.arch, data.num_classes, data.channels, data.size[0]).to(device)
    prep = Preprocess.fit(data.images)
    spec = TrainSpec(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, momentum=0.9,
                     weight_decay=5e-4, augment=not args.no_augment, lr_schedule="onecycle", nesterov=True)
    train_supervised(model, data.images, data.labels, spec, prep, generator)
    return model, prep


def accuracy(model: Classifier, prep: Preprocess, data: ImageDataset) -> float:
    logits, _ = infer(model, data.images, prep)
    return float((logits.argmax(1).cpu() == data.labels.cpu()).float().mean())


def success_rate(model: Classifier, prep: Preprocess, triggered: ImageDataset, target: int) -> float:
    logits, _ = infer(model, triggered.images, prep)
    return float((logits.argmax(1).cpu() == target).float().mean())


def load_sets(args: argparse.Namespace) -> tuple[ImageDataset, ImageDataset]:
    """(training set to poison, clean test set): digits 70/30, or the first CIFAR-10 images."""
    if args.digits:
        train_set, test_set = examples.split_reserve(examples.digits(), 0.3, seed=0)
        return train_set, test_set
    if not (args.data_dir / "load.py").exists():
        sys.exit(f"no CIFAR-10 data under {args.data_dir} (pass --data-dir)")
    loader = load_module(args.data_dir)
    if args.draw is None:
        x, y = loader.load("cifar10", "train", list(range((args.train - 1) // 10_000 + 1)))
        take = slice(None, args.train)
    else:
        x, y = loader.load("cifar10", "train", None)
        take = drawn_positions(len(x), args.train, args.draw)
    xt, yt = loader.load("cifar10", "test", [0])
    return (from_arrays(x[take], y[take], CLASSES),
            from_arrays(xt[: args.test], yt[: args.test], CLASSES))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    ap.add_argument("--digits", action="store_true",
                    help="scikit-learn digits instead of CIFAR-10: a stratified 70/30 train/test split")
    ap.add_argument("--cache-dir", type=Path, default=None, help="cache of the models cl and narcissus train")
    ap.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                    help="an attack setting for every attack, e.g. test_magnification=1 (a JSON value)")
    ap.add_argument("--attacks", nargs="+", default=list(ATTACKS), choices=list(ATTACKS))
    ap.add_argument("--rate", type=float, default=None, help="poison rate for every attack (default: per attack)")
    ap.add_argument("--train", type=int, default=5000, help="first N CIFAR-10 training images")
    ap.add_argument("--draw", type=int, default=None, metavar="SEED",
                    help="N training images drawn at random by this seed instead of the first N: the set "
                         "false_alarms.py --datasets cifar10 --limit N inspects at that seed")
    ap.add_argument("--test", type=int, default=2000, help="first N CIFAR-10 test images")
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--arch", default="small_cnn")
    ap.add_argument("--no-augment", action="store_true", help="train without flip + crop")
    ap.add_argument("--target", type=int, default=0)
    ap.add_argument("--baseline", action="store_true", help="also train on the clean set")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    train_set, test_set = load_sets(args)
    where = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"{len(train_set)} train / {len(test_set)} test images; {args.arch}, {args.epochs} epochs, "
          f"{'no augmentation' if args.no_augment else 'flip + crop'}; {where}",
          flush=True)

    rows = []
    poisoned_sets: dict[str, PoisonedSet] = {}
    print("| attack | rate | poison | cover | clean ACC | ASR | attack seconds | train seconds |")
    print("|---|---|---|---|---|---|---|---|")
    surrogate = Surrogate(device=device, cache_dir=args.cache_dir)
    params = {k: json.loads(v) for k, v in (p.split("=", 1) for p in args.param)}
    for name in args.attacks:
        rate = ATTACK_INFO[name].default_rate if args.rate is None else args.rate
        start = time.perf_counter()
        poisoned = run_attack(name, train_set, rate, args.target, args.seed, surrogate=surrogate, **params)
        attack_seconds = time.perf_counter() - start
        poisoned_sets[name] = poisoned
        start = time.perf_counter()
        model, prep = train(poisoned.dataset.to(device), args, device)
        seconds = time.perf_counter() - start
        triggered = apply_trigger_to_test(poisoned, test_set).to(device)
        row = {"attack": name, "rate": rate, "n_poison": len(poisoned.poison_indices),
               "n_cover": len(poisoned.cover_indices), "acc": accuracy(model, prep, test_set.to(device)),
               "asr": success_rate(model, prep, triggered, args.target), "seconds": seconds,
               "attack_seconds": attack_seconds, "params": poisoned.params}
        rows.append(row)
        print(f"| {name} | {rate:g} | {row['n_poison']} | {row['n_cover']} | {row['acc']:.3f} | {row['asr']:.3f} | "
              f"{attack_seconds:.0f} | {seconds:.0f} |", flush=True)

    baseline = None
    if args.baseline:
        model, prep = train(train_set.to(device), args, device)
        baseline = {"acc": accuracy(model, prep, test_set.to(device)),
                    "asr": {name: success_rate(model, prep, apply_trigger_to_test(p, test_set).to(device), args.target)
                            for name, p in poisoned_sets.items()}}
        print(f"clean model: ACC {baseline['acc']:.3f}; trigger-only 'ASR': "
              + ", ".join(f"{k} {v:.3f}" for k, v in baseline["asr"].items()), flush=True)

    if args.json:
        settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
        args.json.write_text(json.dumps({"settings": settings, "device": where, "python": platform.python_version(),
                                         "torch": torch.__version__, "rows": rows, "baseline": baseline},
                                        indent=1, default=str))


if __name__ == "__main__":
    main()
