"""Large image folders: decode to the on-disk cache once, map it later, stream it a batch at a time.

    python benchmarks/scale.py --images 200000 --side 64 --work /path/with/space

Generates a folder of ``--images`` JPEG images (10 classes; smooth random shapes, so that they
compress like photographs, not like noise) unless it exists, then measures

* the first decode into the cache (worker processes) and the second load (mapped, no decoding),
  with the cache's size on disk;
* a streaming pass: every image once, in shuffled batches of 512, gathered from the memory map by
  the prefetching loader and normalised (:func:`sanitize.nn.samples.prefetched`), in images/s;
* one epoch of ``--arch`` training on ``--train-images`` of them, streamed to ``--device`` (and,
  on a GPU, the same epoch with the images resident on it, for the cost of streaming);

with the peak anonymous memory of this process during each phase (``RssAnon``: what the set
would cost if it were loaded; pages of the mapped file are the OS's page cache and are not
counted) and the machine. Prints one Markdown table (docs/benchmarks.md, "Large datasets").
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from sanitize.data.decode_cache import DecodeCache
from sanitize.data.images import load_image_folder
from sanitize.nn.engine import Preprocess, TrainSpec, epoch_batches, train_supervised
from sanitize.nn.models import build_model
from sanitize.nn.samples import prefetched


def _write_class(args: tuple[Path, int, int, int, int]) -> None:
    root, label, start, count, side = args
    rng = np.random.default_rng(label * 1_000_003 + start)
    folder = root / f"class_{label}"
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(start, start + count):
        img = Image.new("RGB", (side, side), tuple(int(v) for v in rng.integers(0, 256, 3)))
        draw = ImageDraw.Draw(img)
        for _ in range(4):
            x0, y0 = rng.integers(0, side, 2)
            x1, y1 = x0 + rng.integers(4, side // 2), y0 + rng.integers(4, side // 2)
            draw.ellipse((int(x0), int(y0), int(x1), int(y1)), fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
        img.save(folder / f"{i:07d}.jpg", quality=90)


def generate(root: Path, n: int, side: int) -> float:
    """The folder of ``n`` images (seconds spent; 0 when it already held them)."""
    if root.is_dir() and sum(1 for _ in root.rglob("*.jpg")) == n:
        return 0.0
    shutil.rmtree(root, ignore_errors=True)
    per_class, step = n // 10, 2000
    tasks = [(root, c, s, min(step, per_class - s), side) for c in range(10) for s in range(0, per_class, step)]
    start = time.perf_counter()
    with ProcessPoolExecutor(os.cpu_count()) as pool:
        list(pool.map(_write_class, tasks))
    return time.perf_counter() - start


def rss_anon_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) / 1024
    return float("nan")


@contextmanager
def peak_anon(record: dict, key: str):
    """The highest RssAnon seen (sampled every 50 ms) while the block runs, in MiB."""
    peak = [rss_anon_mib()]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.05):
            peak[0] = max(peak[0], rss_anon_mib())

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    start = time.perf_counter()
    try:
        yield
    finally:
        done.set()
        thread.join()
        record[key + "_s"] = time.perf_counter() - start
        record[key + "_peak_anon_mib"] = max(peak[0], rss_anon_mib())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=200_000)
    parser.add_argument("--side", type=int, default=64)
    parser.add_argument("--train-images", type=int, default=20_000)
    parser.add_argument("--device", default="cpu", help="where the stream pass and training deliver (cpu, cuda)")
    parser.add_argument("--arch", default="small_cnn")
    parser.add_argument("--work", type=Path, required=True, help="folder for the generated images and the cache")
    args = parser.parse_args()
    root, cache = args.work / f"folder_{args.images}_{args.side}", DecodeCache(args.work / "cache", "on")
    shutil.rmtree(cache.root, ignore_errors=True)
    r: dict = {"generate_s": generate(root, args.images, args.side), "before_mib": rss_anon_mib()}

    with peak_anon(r, "decode"):
        data = load_image_folder(root, cache=cache)
    del data
    with peak_anon(r, "mapped"):
        data = load_image_folder(root, cache=cache)
    r["cache_gib"] = sum(p.stat().st_size for p in cache.root.rglob("*") if p.is_file()) / 2**30
    r["set_gib"] = data.images.numel() / 2**30

    device = torch.device(args.device)
    streamed = data.to(device, stream=True)
    prep = Preprocess.fit(streamed.images)
    gen = torch.Generator().manual_seed(0)
    with peak_anon(r, "stream"):
        total = torch.zeros((), device=device)
        for _, batch in prefetched(streamed.images, epoch_batches(len(streamed), 512, gen)):
            total += prep(batch).mean()
        float(total)  # waits for the device
    r["stream_images_per_s"] = len(streamed) / r["stream_s"]

    rows = np.sort(np.random.default_rng(0).permutation(len(streamed))[: args.train_images])
    spec = TrainSpec(epochs=1, batch_size=256, lr=0.05)
    for name, part in (("train", streamed.subset(rows)),
                       *((("resident", data.subset(rows).to(device)),) if device.type == "cuda" else ())):
        model = build_model(args.arch, part.num_classes, part.channels, args.side).to(device)
        with peak_anon(r, name):
            train_supervised(model, part.images, part.labels, spec, prep, gen)
            float(next(model.parameters()).sum())
        r[f"{name}_images_per_s"] = len(part) / r[f"{name}_s"]

    machine = f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}"
    if device.type == "cuda":
        machine += f", {torch.cuda.get_device_name(device)}"
    resident = f" (resident {r['resident_images_per_s']:,.0f})" if "resident_images_per_s" in r else ""
    print("| images | side | decode (s) | cache (GiB) | mapped load (s) | stream pass (img/s) | "
          f"train epoch {args.arch} streamed (img/s) | peak RssAnon decode / stream / train (MiB) | machine |")
    print("|---|---|---|---|---|---|---|---|---|")
    print(f"| {args.images:,} | {args.side} | {r['decode_s']:.0f} | {r['cache_gib']:.2f} | {r['mapped_s']:.1f} | "
          f"{r['stream_images_per_s']:,.0f} | {r['train_images_per_s']:,.0f}{resident} | "
          f"{r['decode_peak_anon_mib']:.0f} / {r['stream_peak_anon_mib']:.0f} / {r['train_peak_anon_mib']:.0f} | "
          f"{machine} |")
    print(f"\nthe decoded set is {r['set_gib']:.2f} GiB; RssAnon before any loading {r['before_mib']:.0f} MiB; "
          f"generating the folder took {r['generate_s']:.0f} s")


if __name__ == "__main__":
    main()
