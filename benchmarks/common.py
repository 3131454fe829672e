"""Shared by the benchmark scripts: the offline CIFAR-10 loader kept beside the project."""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
DEFAULT_DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data"


def detection_parser(description: str | None, reserve: int) -> argparse.ArgumentParser:
    """The options every CIFAR-10 detection benchmark takes (data, subset, reserve size, schedules,
    model, device, seed, JSON output); each script adds what it poisons with."""
    ap = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    ap.add_argument("--train-parts", type=int, nargs="*", default=None, help="CIFAR parts (10,000 each)")
    ap.add_argument("--limit", type=int, default=None, help="first N training images")
    ap.add_argument("--reserve", type=int, default=reserve)
    ap.add_argument("--schedules", nargs="+", default=["fast"])
    ap.add_argument("--arch", default="auto")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's own)")
    return ap


def use_threads(threads: int | None) -> None:
    """Set torch's CPU thread count when ``--threads`` was given (CPU figures name it)."""
    if threads:
        import torch

        torch.set_num_threads(threads)


def load_module(data_dir: Path):
    """Import ``data_dir/load.py`` (the shared data's own loader) as a module."""
    spec = importlib.util.spec_from_file_location("shared_load", data_dir / "load.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_cifar_subset(data_dir: Path, train_parts: list[int], limit: int | None, reserve_size: int):
    """(inspected, reserve) ImageDatasets: the first ``limit`` training images of ``train_parts`` and
    the first ``reserve_size`` official test images as the trusted reserve. Exits with a message
    when the data is absent."""
    from sanitize import from_arrays

    if not (data_dir / "load.py").exists():
        sys.exit(f"no CIFAR-10 data under {data_dir} (pass --data-dir)")
    loader = load_module(data_dir)
    t0 = time.perf_counter()
    x, y = loader.load("cifar10", "train", train_parts)
    xr, yr = loader.load("cifar10", "test", [0])
    data = from_arrays(x[:limit], y[:limit], CLASSES)
    reserve = from_arrays(xr[:reserve_size], yr[:reserve_size], CLASSES)
    print(f"loaded {len(data)} train + {len(reserve)} reserve images in {time.perf_counter() - t0:.1f} s",
          flush=True)
    return data, reserve


def drawn_positions(n_total: int, limit: int, seed: int):
    """The sorted positions of the ``limit`` training images a seed draws at random: the
    inspected set of ``false_alarms.py`` (and the recording scripts), and what ``attack_asr.py
    --draw`` measures an attack's success on, so the two describe the same images."""
    import numpy as np

    return np.sort(np.random.default_rng(seed).permutation(n_total)[:limit])


def pick_device(spec: str) -> tuple[str, str]:
    """(device for the detector, the machine's name for the table) from ``--device``."""
    import torch

    device = ("cuda" if torch.cuda.is_available() else "cpu") if spec == "auto" else spec
    return device, torch.cuda.get_device_name() if device.startswith("cuda") else "cpu"


def timed_detection(detector, truth, device: str, *args, **kwargs):
    """``detector(*args, device=device, **kwargs)`` on a synchronised clock; (result, seconds, TPR, FPR)."""
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    result = detector(*args, device=device, **kwargs)
    seconds = time.perf_counter() - start
    tpr = float((result.flagged & truth).sum() / max(1, truth.sum()))
    fpr = float((result.flagged & ~truth).sum() / max(1, (~truth).sum()))
    return result, seconds, tpr, fpr


def recording_parser(description: str, datasets: list[str], attacks: list[str], attack_help: str,
                     reserve_per_class: list[int]) -> argparse.ArgumentParser:
    """The options of the scripts that record detector runs on ``false_alarms.py``'s draws and
    replay them (``ct_flag_rule.py``, ``asset_class_test.py``)."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--datasets", nargs="+", default=["digits"], choices=datasets)
    ap.add_argument("--attacks", nargs="+", default=attacks, help=attack_help)
    ap.add_argument("--rate", type=float, default=0.05)
    ap.add_argument("--target", type=int, default=0, help="the attacks' target class")
    ap.add_argument("--trigger-values", default="min-population", choices=["min-population", "beyond-range"],
                    help="ember-explanation: how the trigger's values are chosen")
    ap.add_argument("--label-noise", type=float, default=0.0,
                    help="ember: this share of the generated rows (data and reserve) carry the other label")
    ap.add_argument("--reserve-per-class", type=int, nargs="+", default=reserve_per_class)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--limit", type=int, default=3000, help="inspected images (cifar10, gtsrb) or rows (ember)")
    ap.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    ap.add_argument("--cache-dir", type=Path, default=None, help="cache of the attacks' trained parts")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--record", type=Path, help="folder for the recorded runs (those already there are kept)")
    ap.add_argument("--replay", type=Path, help="only print the tables of a folder of recorded runs")
    return ap


def record_all(args: argparse.Namespace, record_run) -> Path:
    """``record_run(name, attack, per_class, seed, args, out)`` for every combination of ``args``
    not yet in ``args.record`` (unless ``--replay``); returns the folder to replay."""
    if args.replay is not None:
        return args.replay
    use_threads(args.threads)
    args.record.mkdir(parents=True, exist_ok=True)
    for name in args.datasets:
        for attack in args.attacks:
            for per_class in args.reserve_per_class:
                for seed in args.seeds:
                    out = args.record / f"{name}_{attack}_{per_class}_{seed}.npz"
                    if not out.exists():
                        record_run(name, attack, per_class, seed, args, out)
                        print(f"recorded {out.name}", flush=True)
    return args.record
