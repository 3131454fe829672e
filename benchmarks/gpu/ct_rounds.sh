#!/usr/bin/env bash
# Issue 22, item 1, the diagnostic: where CT loses poison at 0.3 % BadNet on all 50,000 CIFAR-10
# images (per round: poison kept by distillation, poison vs clean loss quantiles; then TPR/FPR).
# On the GPU machine, after the staging calls of docs/benchmarks.md put all five parts in
# .bench/data. One fast-schedule CT run: about 150 s on an H100 when last measured.
set -euo pipefail
cd "$(dirname "$0")/../.."
out="${OUT:-.bench/out}"
mkdir -p "$out"
export PYTHONPATH=. PYTHONUNBUFFERED=1
python benchmarks/ct_rounds.py --data-dir .bench/data --rate 0.003 --seed "${SEED:-0}" \
    --json "$out/ct_rounds_0.003_seed${SEED:-0}.json"
