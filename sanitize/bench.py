"""``sanitize bench``: every detector on the same poisoned sets, scored against the ground truth.

For each cell (attack x detector x seed) of the matrix:

1. poison the clean set with :data:`sanitize.attacks.ATTACKS` (same seed -> same poisoned set for
   every detector, so the detectors are compared on identical inputs);
2. run the detector (:func:`sanitize.detectors.get_detector`) and score its report against the
   truth with :func:`sanitize.evaluate.evaluate_report` (TPR, FPR, AUROC) and its seconds;
3. retrain a model on the cleaned set (everything not flagged) and measure clean accuracy (ACC)
   on the test set and attack success rate (ASR) on its triggered copy
   (:func:`sanitize.attacks.apply_trigger_to_test`).

A ``none`` row per attack x seed trains on the poisoned set as is (the no-defence baseline).
Models come from :mod:`sanitize.nn.cache` (same schedule for every row), so the no-defence
model is also the one the passive detectors inspect, trained once.

Resumable: each finished cell is written (atomically) to ``OUT/cells/`` with a fingerprint of
everything that determines it (data content, attack, rate, target, detector and its settings,
seed, model schedule); a re-run skips cells whose fingerprint matches and recomputes the others.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from inspect import signature
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import __version__
from .attacks import ATTACK_INFO, ATTACKS, PoisonedSet, Surrogate, apply_trigger_to_test, run_attack
from .attacks.catalog import attack_variant, variant_names
from .data.images import ImageDataset
from .detectors import detector_class, get_detector
from .domains import check_fraction
from .errors import ParameterError, SanitizeError
from .evaluate import Truth, evaluate_report
from .nn.cache import content_hash, trained_model
from .nn.devices import resolve_device
from .nn.engine import infer
from .output import atomic_write, mark_output
from .progress import Progress, Silent
from .report.build import build_report
from .report.pages import render, svg
from .report.plots import bench_bars_svg

CELL_FORMAT = 1
NO_DEFENCE = "none"


@dataclass
class BenchConfig:
    """The matrix and the shared model settings; ``detector_settings`` maps a detector to extra options."""

    attacks: list[str]
    detectors: list[str]
    seeds: list[int]
    rate: float | None = None  # None: each attack's default rate (docs/attacks.md)
    target: int = 0
    device: str = "auto"
    arch: str = "auto"
    epochs: int | None = None
    cache_dir: str | None = None
    detector_settings: dict[str, dict[str, Any]] = field(default_factory=dict)

    def check(self) -> None:
        """Refuse unknown names and bad values before any work starts."""
        for name in self.attacks:
            if attack_variant(name)[0] not in ATTACKS:
                raise SanitizeError(f"unknown attack {name!r}; choose from {', '.join(variant_names())}")
        for name in self.detectors:
            if name == NO_DEFENCE:
                raise SanitizeError(f"{NO_DEFENCE!r} is the no-defence row, added to every attack: drop it")
            detector_class(name)  # a clear error for names that are not registered (yet)
        for name, values in (("--attacks", self.attacks), ("--detectors", self.detectors), ("--seeds", self.seeds)):
            if not values:
                raise SanitizeError(f"{name}: give at least one")
            if len(set(values)) != len(values):
                raise SanitizeError(f"{name}: duplicates in {', '.join(map(str, values))}")
        if self.rate is not None:
            check_fraction(self.rate, allow_zero=False)  # a bench without poison measures nothing
        resolve_device(self.device)

    def rate_for(self, attack: str) -> float:
        return ATTACK_INFO[attack_variant(attack)[0]].default_rate if self.rate is None else self.rate


def poison(clean: ImageDataset, attack: str, rate: float, target: int, seed: int,
           surrogate: Surrogate | None = None) -> PoisonedSet:
    """``attack`` on ``clean``; ``NAME-all-to-all`` is NAME with every class relabelled to the next.
    ``surrogate``: how the attacks that train a model (cl, narcissus) train it."""
    name, all_to_all = attack_variant(attack)
    return run_attack(name, clean, rate, target, seed, surrogate=surrogate,
                      **({"all_to_all": True} if all_to_all else {}))


def _write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def detector_kwargs(name: str, config: BenchConfig, seed: int, progress: Progress) -> dict[str, Any]:
    """The settings ``name`` accepts among the shared ones, plus its own from ``detector_settings``."""
    accepted = set(signature(detector_class(name)).parameters)
    shared = {"device": config.device, "seed": seed, "progress": progress, "arch": config.arch,
              "epochs": config.epochs, "cache_dir": config.cache_dir}
    own = dict(config.detector_settings.get(name, {}))
    unknown = sorted(set(own) - accepted)
    if unknown:
        raise SanitizeError(f"detector {name} has no setting {', '.join(unknown)}")
    return {**{k: v for k, v in shared.items() if k in accepted}, **own}


class Bench:
    """Runs the matrix on one clean set, reserve and test set, writing cells under ``out``."""

    def __init__(self, clean: ImageDataset, reserve: ImageDataset, test: ImageDataset, out: Path,
                 config: BenchConfig, progress: Progress | None = None,
                 log: Callable[[str], None] | None = None) -> None:
        config.check()
        if not 0 <= config.target < clean.num_classes:
            raise ParameterError("target", config.target, f"the dataset has classes 0..{clean.num_classes - 1}")
        self.clean, self.reserve, self.test = clean, reserve, test
        self.out, self.config = Path(out), config
        self.progress = progress or Silent()
        self.log = log or (lambda _msg: None)
        self.device = resolve_device(config.device)
        self.data_id = hashlib.sha256("".join(content_hash(d) for d in (clean, reserve, test)).encode()).hexdigest()
        self.computed: list[str] = []  # cells computed by this run (the others were resumed)

    # -- fingerprints and cell files ---------------------------------------------------------------
    def fingerprint(self, attack: str, detector: str, seed: int) -> str:
        own = self.config.detector_settings.get(detector, {})
        blob = {"format": CELL_FORMAT, "data": self.data_id, "attack": attack, "rate": self.config.rate_for(attack),
                "target": self.config.target, "detector": detector, "settings": own, "seed": seed,
                "arch": self.config.arch, "epochs": self.config.epochs}
        return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()

    def cell_path(self, attack: str, detector: str, seed: int) -> Path:
        return self.out / "cells" / f"{attack}__{detector}__seed{seed}.json"

    def load_cell(self, attack: str, detector: str, seed: int) -> dict | None:
        path = self.cell_path(attack, detector, seed)
        try:
            cell = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return None
        return cell if cell.get("fingerprint") == self.fingerprint(attack, detector, seed) else None

    # -- the work ----------------------------------------------------------------------------------
    def surrogate(self) -> Surrogate:
        """The model settings of the bench, for the attacks that train their own model."""
        return Surrogate(device=self.device, arch=self.config.arch, cache_dir=self.config.cache_dir,
                         progress=self.progress)

    def run(self) -> dict[str, Any]:
        rows = []
        for attack in self.config.attacks:
            for seed in self.config.seeds:
                poisoned: PoisonedSet | None = None
                for detector in [NO_DEFENCE, *self.config.detectors]:
                    cell = self.load_cell(attack, detector, seed)
                    if cell is None:
                        if poisoned is None:
                            poisoned = poison(self.clean, attack, self.config.rate_for(attack),
                                              self.config.target, seed, self.surrogate())
                        self.log(f"{attack} x {detector} x seed {seed}: running")
                        cell = self.run_cell(poisoned, attack, detector, seed)
                        _write_text(self.cell_path(attack, detector, seed), json.dumps(cell, indent=1) + "\n")
                        self.computed.append(self.cell_path(attack, detector, seed).name)
                    else:
                        self.log(f"{attack} x {detector} x seed {seed}: done earlier, skipped")
                    rows.append(cell)
        return {"config": {k: v for k, v in asdict(self.config).items()}, "device": str(self.device),
                "n_clean": len(self.clean), "n_reserve": len(self.reserve), "n_test": len(self.test),
                "rows": rows, "summary": summarise(rows)}

    def run_cell(self, poisoned: PoisonedSet, attack: str, detector: str, seed: int) -> dict[str, Any]:
        data = poisoned.dataset
        cell: dict[str, Any] = {"attack": attack, "detector": detector, "seed": seed,
                                "rate": self.config.rate_for(attack), "target": poisoned.target,
                                "n_samples": len(data), "n_poison": len(poisoned.poison_indices),
                                "fingerprint": self.fingerprint(attack, detector, seed)}
        keep = np.arange(len(data))
        if detector != NO_DEFENCE:
            det = get_detector(detector, **detector_kwargs(detector, self.config, seed, self.progress))
            start = time.perf_counter()
            result = det.detect(data, self.reserve)
            seconds = time.perf_counter() - start
            truth = Truth([data.paths[i] for i in poisoned.poison_indices],
                          [data.paths[i] for i in poisoned.cover_indices])
            metrics = evaluate_report(build_report(data, result), truth)
            cell.update({k: metrics[k] for k in ("tpr", "fpr", "auroc", "precision", "n_flagged")})
            cell.update(seconds=seconds, suspected_classes=result.suspected_classes)
            keep = result.kept_indices
        acc, asr = self.retrain(poisoned, keep, seed)
        cell.update(acc=acc, asr=asr, n_kept=int(len(keep)))
        return cell

    def retrain(self, poisoned: PoisonedSet, keep: np.ndarray, seed: int) -> tuple[float | None, float | None]:
        """ACC and ASR of a model trained on ``poisoned.dataset[keep]`` (the bench's shared schedule)."""
        kept = poisoned.dataset.subset(keep)
        if len(kept) < 2 or len(np.unique(kept.labels.numpy())) < 2:
            return None, None
        model = trained_model(kept, arch=self.config.arch, seed=seed, device=self.device,
                              cache_dir=self.config.cache_dir, epochs=self.config.epochs, progress=self.progress)
        test = self.test.to(self.device)
        acc = _accuracy(model, test.images, test.labels)
        triggered = apply_trigger_to_test(poisoned, self.test).to(self.device)
        target = poisoned.backdoor_labels(triggered.labels)
        asr = _accuracy(model, triggered.images, target) if len(triggered) else None
        return acc, asr


def _accuracy(model, images: torch.Tensor, labels: torch.Tensor) -> float:
    logits, _ = infer(model.model, images, model.prep)
    return float((logits.argmax(1) == labels).float().mean().item())


def _mean_std(values: list[float | None]) -> tuple[float | None, float | None]:
    vals = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not vals:
        return None, None
    return float(np.mean(vals)), float(np.std(vals)) if len(vals) > 1 else None


METRICS = ("tpr", "fpr", "auroc", "acc", "asr", "seconds")


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean (and std over seeds) of every metric per attack x detector, in matrix order."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        groups.setdefault((row["attack"], row["detector"]), []).append(row)
    out = []
    for (attack, detector), members in groups.items():
        entry: dict[str, Any] = {"attack": attack, "detector": detector, "seeds": [r["seed"] for r in members]}
        for metric in METRICS:
            entry[metric], entry[f"{metric}_std"] = _mean_std([r.get(metric) for r in members])
        out.append(entry)
    return out


def _fmt(mean: float | None, std: float | None, digits: int) -> str:
    if mean is None:
        return "–"
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if std is not None else "")


def markdown_table(bench: dict[str, Any]) -> str:
    lines = ["| attack | detector | seeds | TPR | FPR | AUROC | ACC | ASR | seconds |",
             "|---|---|---|---|---|---|---|---|---|"]
    for e in bench["summary"]:
        lines.append(f"| {e['attack']} | {e['detector']} | {len(e['seeds'])} | "
                     + " | ".join(_fmt(e[m], e[f"{m}_std"], 1 if m == "seconds" else 3) for m in METRICS) + " |")
    return "\n".join(lines) + "\n"


def html_report(bench: dict[str, Any]) -> str:
    """bench.html: the plot, the table and the settings, on the report page's base template."""
    rows = [{"attack": e["attack"], "detector": e["detector"], "seeds": len(e["seeds"]),
             "cells": [_fmt(e[m], e[f"{m}_std"], 1 if m == "seconds" else 3) for m in METRICS]}
            for e in bench["summary"]]
    return render("bench.html", title="sanitize bench", version=__version__,
                  subtitle=f"{len(rows)} attack x detector rows on {bench['n_clean']} clean images",
                  nav=["matrix", "settings"], bench=bench, rows=rows,
                  plot=svg(bench_bars_svg(bench, NO_DEFENCE)),
                  config=json.dumps(bench["config"], indent=1, default=str))


def write_outputs(bench: dict[str, Any], out: Path) -> None:
    _write_text(out / "bench.json", json.dumps(bench, indent=1, default=str) + "\n")
    _write_text(out / "bench.md", markdown_table(bench))
    _write_text(out / "bench.html", html_report(bench))


def run_bench(clean: ImageDataset, reserve: ImageDataset, test: ImageDataset, out: str | Path, config: BenchConfig,
              progress: Progress | None = None, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run (or resume) the matrix and write ``bench.json``, ``bench.md`` and ``bench.html`` to ``out``."""
    bench = Bench(clean, reserve, test, Path(out), config, progress, log)  # validates before anything is made
    Path(out).mkdir(exist_ok=True)
    mark_output(Path(out))  # a bench folder is resumed by later runs; the marker lets them write into it
    result = bench.run()
    result["computed_cells"] = bench.computed
    write_outputs(result, Path(out))
    return result
