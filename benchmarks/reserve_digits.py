"""How CT depends on the trusted reserve: size, and poison inside it (digits, CPU).

The set-up of tests/test_ct.py: scikit-learn digits, a 25 % stratified split as the reserve pool,
a 3x3 BadNet corner patch on 5 % of the inspected set (target class 0), ``small_cnn``, seed 0.
Each variant changes only the reserve:

* ``size N``: a stratified subset of N reserve images (N/10 per class);
* ``poisoned P``: the full reserve with a fraction P of it carrying the same trigger and the
  target label (the attacker also reached the "trusted" data).

    python benchmarks/reserve_digits.py --json reserve_digits.json
    python benchmarks/reserve_digits.py --sizes 100 --poisoned   # a subset of the variants
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from sanitize import ct
from sanitize.attacks import badnet
from sanitize.data import examples


def stratified(reserve, n: int, seed: int):
    """``n`` reserve images, as equal a share per class as the classes allow."""
    rng = np.random.default_rng(seed)
    labels = reserve.labels.numpy()
    per_class = max(1, n // reserve.num_classes)
    keep = [rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in range(reserve.num_classes)]
    return reserve.subset(np.sort(np.concatenate(keep)))


def run(name: str, data, truth: np.ndarray, reserve, seed: int) -> dict:
    start = time.perf_counter()
    result = ct(data, reserve, device="cpu", seed=seed)
    flagged = result.flagged
    row = {"variant": name, "reserve": len(reserve), "tpr": float(flagged[truth].mean()),
           "fpr": float(flagged[~truth].mean()), "flagged": int(flagged.sum()),
           "suspected": [data.classes[c] for c in result.suspected_classes],
           "seconds": round(time.perf_counter() - start, 1)}
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[40, 100])
    parser.add_argument("--poisoned", type=float, nargs="*", default=[0.05])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="write the rows to this file")
    args = parser.parse_args()

    inspected, pool = examples.split_reserve(examples.digits(), 0.25, seed=args.seed)
    poisoned = badnet(inspected, 0.05, target=0, seed=args.seed)
    data = poisoned.dataset
    truth = np.zeros(len(data), dtype=bool)
    truth[poisoned.poison_indices] = True
    rows = [run(f"size {n}", data, truth, stratified(pool, n, args.seed), args.seed) for n in args.sizes]
    for rate in args.poisoned or []:
        dirty = badnet(pool, rate, target=0, seed=args.seed + 1).dataset
        rows.append(run(f"poisoned {rate:g}", data, truth, dirty, args.seed))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
