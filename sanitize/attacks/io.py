"""Writing an attack's output: the poisoned folder, its trigger images and ``poison.json``.

Unmodified images are hard-linked (or copied across file systems) under their original paths;
poisoned and cover images are written as PNG under the same relative path with a ``.png``
suffix. ``poison.json`` is the ground truth ``sanitize evaluate`` scores against (format in
``docs/attacks.md``).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..data.images import ImageDataset
from ..output import write_image_subset
from ..report.build import library_versions
from .base import PoisonedSet, Stamp
from .catalog import ATTACK_INFO, FEATURE_ATTACK_INFO

POISON_SCHEMA_VERSION = 1


def save_png(chw: torch.Tensor, path: Path) -> None:
    """Write a ``C x H x W`` uint8 tensor as PNG (grayscale or RGB)."""
    arr = chw.cpu().numpy()
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr[0] if arr.shape[0] == 1 else arr.transpose(1, 2, 0)).save(path)


def save_stamp(stamp: Stamp, path: Path) -> None:
    """The trigger as an image ``--trigger`` reads back: pattern + mask in the alpha channel."""
    pattern = stamp.pattern.cpu().numpy()
    alpha = np.round(stamp.mask.cpu().numpy()[0] * 255).astype(np.uint8)
    if pattern.shape[0] == 1:
        Image.fromarray(np.stack([pattern[0], alpha], axis=-1), mode="LA").save(path)
    else:
        Image.fromarray(np.concatenate([pattern.transpose(1, 2, 0), alpha[..., None]], axis=-1), mode="RGBA").save(path)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _json_params(params: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in params.items() if not isinstance(v, Stamp)}


def write_poisoned(data: ImageDataset, poisoned: PoisonedSet, directory: Path) -> list[str]:
    """Write the poisoned folder into ``directory`` (a staging folder); return each sample's path."""
    paths = poisoned.dataset.paths
    modified = np.zeros(len(data), dtype=bool)
    modified[poisoned.poison_indices] = True
    modified[poisoned.cover_indices] = True
    write_image_subset(data, np.flatnonzero(~modified), directory)
    images = poisoned.dataset.images
    for i in np.flatnonzero(modified).tolist():
        save_png(images[i], directory / paths[i])
    return paths


def write_triggered_test(triggered: ImageDataset, directory: Path) -> list[str]:
    """The triggered test copy: PNGs under their true class folders (every class folder exists)."""
    for name in triggered.classes:
        (directory / name).mkdir(parents=True, exist_ok=True)
    taken: set[str] = set()
    written = []
    for i, rel in enumerate(triggered.paths):
        path = PurePosixPath(rel)
        candidate, counter = path.with_suffix(".png").as_posix(), 1
        while candidate in taken:
            candidate = path.with_name(f"{path.stem}-{counter}.png").as_posix()
            counter += 1
        taken.add(candidate)
        save_png(triggered.images[i], directory / candidate)
        written.append(candidate)
    return written


def _record(data: Any, poisoned: PoisonedSet, kind: str, paths: list[str]) -> dict[str, Any]:
    """What every poison.json holds, for image folders and feature rows alike."""
    classes = data.classes
    return {
        "schema_version": POISON_SCHEMA_VERSION,
        "attack": poisoned.attack,
        "kind": kind,
        "params": _json_params(poisoned.params),
        "seed": poisoned.seed,
        "target": poisoned.target,
        "target_class": classes[poisoned.target] if poisoned.target is not None else None,
        "all_to_all": poisoned.all_to_all,
        "source": poisoned.source,
        "source_class": classes[poisoned.source] if poisoned.source is not None else None,
        "cover_classes": list(poisoned.cover_classes),
        "cover_class_names": [classes[c] for c in poisoned.cover_classes],
        "clean_label": poisoned.clean_label,
        "classes": list(classes),
        "n_samples": len(data),
        "n_poison": len(poisoned.poison_indices),
        "n_cover": len(poisoned.cover_indices),
        "poison": [paths[i] for i in poisoned.poison_indices.tolist()],
        "cover": [paths[i] for i in poisoned.cover_indices.tolist()],
        "notes": list(data.notes),
        "versions": library_versions(),
    }


def poison_record(data: ImageDataset, poisoned: PoisonedSet, paths: list[str], trigger_files: list[str],
                  test_info: dict[str, Any] | None, trigger: Path | None) -> dict[str, Any]:
    """The ground truth of an image attack, written as poison.json (format in docs/attacks.md)."""
    record = _record(data, poisoned, ATTACK_INFO[poisoned.attack].kind, paths)
    if trigger is not None:
        record["params"]["trigger_file"] = {"path": str(Path(trigger).resolve()), "sha256": _sha256(Path(trigger))}
    modified = np.concatenate([poisoned.poison_indices, poisoned.cover_indices]).tolist()
    record.update({
        "image_size": list(data.size),
        "channels": data.channels,
        "input": str(Path(data.root).resolve()) if data.root is not None else None,
        "trigger_files": trigger_files,
        "origin": {paths[i]: data.paths[i] for i in modified},
        "test": test_info,
    })
    return record


def feature_poison_record(data: Any, poisoned: PoisonedSet, clean: Path, files: list[str]) -> dict[str, Any]:
    """The ground truth of a feature-row attack (rows keep their ids; format in docs/ember.md)."""
    record = _record(data, poisoned, FEATURE_ATTACK_INFO[poisoned.attack].kind, poisoned.dataset.paths)
    record.update({"n_features": data.dim, "feature_version": data.feature_version,
                   "input": str(Path(clean).resolve()), "format": data.source.format if data.source else None,
                   "files": files})
    return record


def write_poison_json(directory: Path, record: dict[str, Any]) -> None:
    """``poison.json`` in the (staging) folder of a poisoned set."""
    (directory / "poison.json").write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
