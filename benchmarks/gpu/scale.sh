#!/usr/bin/env bash
# Issue 21 on the GPU machine: decode cache and streaming with a real device. Generates 100,000
# 64x64 JPEGs on its local disk (no data to carry), decodes them into the cache, then times one
# streamed pass to the GPU and one ResNet-18 epoch on 20,000 of them, streamed and resident (the
# cost of streaming). About 3 minutes on 16 cores, most of it generating and decoding.
set -euo pipefail
cd "$(dirname "$0")/../.."
work="${WORK:-/tmp/sanitize-scale}"
export PYTHONPATH=. PYTHONUNBUFFERED=1
python benchmarks/scale.py --images "${IMAGES:-100000}" --side 64 --train-images 20000 --device cuda \
    --arch resnet18 --work "$work"
