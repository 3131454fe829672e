"""What the passive baselines share: one trained model, the run bookkeeping, per-class budgets.

A *passive* detector trains an ordinary model on the inspected data (through
:mod:`sanitize.nn.cache`, so five detectors on one dataset train once) and then reads that
model: its last hidden layer (Spectral Signatures, Activation Clustering, SCAn, SPECTRE) or its
predictions on perturbed inputs (STRIP). Subclasses implement :meth:`PassiveDetector.score`;
:meth:`PassiveDetector.detect` does validation, device, timing and the common report fields.

The last hidden layer can be read at two places (:data:`LAYERS`, see :func:`class_representation`):

* ``"pooled"``: the penultimate vector after global average pooling, the input of the linear
  head (what the model cache stores for every sample);
* ``"map"``: the same layer's activation map *before* that pooling, flattened (channels x
  positions). Global average pooling is a fixed, parameter-free average over positions: a small
  trigger that fires a few units at one corner is averaged with the whole image's content there,
  while in the map it stays a large, consistent change at a few coordinates, which is what
  Spectral Signatures' top singular direction and Activation Clustering's 2-means look for.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from ...data.images import ImageDataset, check_labelled
from ...domains import check_arch, check_epochs, check_seed
from ...errors import ParameterError, SanitizeError
from ...nn.cache import TrainedModel, trained_model
from ...nn.devices import describe, resolve_device
from ...nn.distributed import current, local_device
from ...nn.engine import global_pool, pooled_map
from ...progress import Progress, Silent
from ...result import DetectionResult
from .. import available_detectors

LAYERS = ("map", "pooled")


def check_budget(budget: float) -> None:
    if not 0.0 <= budget < 1.0:
        raise ParameterError("budget", budget, "expected a fraction of each class in [0, 1)")


def check_layer(layer: str) -> None:
    if layer not in LAYERS:
        raise ParameterError("layer", layer, f"expected {' or '.join(LAYERS)}")


def top_fraction_per_class(scores: np.ndarray, labels: np.ndarray, num_classes: int, budget: float) -> np.ndarray:
    """Flag the ``round(budget * n_c)`` highest-scoring samples of every class ``c``."""
    flagged = np.zeros(len(scores), dtype=bool)
    for c in range(num_classes):
        members = np.flatnonzero(labels == c)
        k = min(len(members), math.floor(budget * len(members) + 0.5))
        if k:
            flagged[members[np.argsort(-scores[members], kind="stable")[:k]]] = True
    return flagged


@dataclass(kw_only=True)
class PassiveDetector:
    """Base of the passive baselines: configure, then :meth:`detect`.

    ``arch``/``epochs`` choose the model trained on the data (``auto``: ResNet-18 on a GPU at >= 32
    px, else the small CNN; ``epochs`` None: :func:`sanitize.nn.cache.default_schedule`);
    ``cache_dir`` where trained models are kept (None: ``$SANITIZE_CACHE`` or the user cache dir).
    """

    device: str | torch.device = "auto"
    seed: int = 0
    progress: Progress | None = None
    arch: str = "auto"
    epochs: int | None = None
    cache_dir: str | Path | None = None
    use_cache: bool = True

    name: ClassVar[str] = "passive"
    needs_reserve: ClassVar[bool] = False
    _COMMON: ClassVar[frozenset[str]] = frozenset({"device", "seed", "progress", "arch", "epochs", "cache_dir",
                                                   "use_cache"})

    def own_settings(self) -> dict[str, Any]:
        """The detector's own options (everything but the shared ones), for the report."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in self._COMMON}

    def check(self) -> None:
        """Validate every setting before any work starts: the shared ones here, the detector's own in
        :meth:`check_settings`."""
        check_seed(self.seed)
        check_arch(self.arch)
        check_epochs(self.epochs)
        self.check_settings()

    def check_settings(self) -> None:
        """Validate the detector's own options (override to add checks)."""

    def detect(self, data: ImageDataset, reserve: ImageDataset | None = None) -> DetectionResult:
        self.check()
        if not isinstance(data, ImageDataset):
            readers = " or ".join(available_detectors(getattr(data, "kind", "feature rows")))
            raise SanitizeError(f"{self.name} inspects image folders; for {getattr(data, 'kind', 'this data')} "
                                f"use {readers or 'another detector'}")
        check_labelled(data, self.name)
        device = local_device(resolve_device(self.device))
        if reserve is not None:
            data.check_reserve(reserve)
        elif self.needs_reserve:
            raise SanitizeError(f"{self.name} needs a trusted clean reserve: pass --reserve")
        if len(data) < 2 * data.num_classes:
            raise SanitizeError(f"dataset has {len(data)} images: too few to inspect")
        progress = self.progress or Silent()
        start = time.perf_counter()
        trained = trained_model(data, arch=self.arch, seed=self.seed, device=device, cache_dir=self.cache_dir,
                                epochs=self.epochs, progress=progress, use_cache=self.use_cache)
        model_seconds = time.perf_counter() - start
        start = time.perf_counter()
        with progress.phase(self.name, 1) as advance:
            result = self.score(trained, data.to(device), None if reserve is None else reserve.to(device))
            advance()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        # A detector may time phases of its own inside score() (e.g. a retraining); they are
        # reported beside "score", which keeps the rest, so the phases still sum to the run.
        own = result.timings
        result.finish(timings={("load cached model" if trained.cached else "train model"): model_seconds,
                               "score": max(0.0, time.perf_counter() - start - sum(own.values())), **own},
                      seed=self.seed, device=describe(device),
                      settings={**self.own_settings(), **trained.settings(), "reserve": reserve is not None,
                                "processes": current().size})
        if trained.cached:
            result.notes.append(f"model loaded from the cache (trained in {trained.train_seconds:.1f} s "
                                f"by an earlier run)")
        if self.arch == "auto":
            result.notes.append(f"--arch auto chose {trained.arch} for {describe(device)} at "
                                f"{data.size[0]}x{data.size[1]} px")
        return result

    def score(self, trained: TrainedModel, data: ImageDataset, reserve: ImageDataset | None) -> DetectionResult:
        raise NotImplementedError


def class_features(trained: TrainedModel, labels: np.ndarray, c: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of class ``c`` and their features as float64 (the numerics of the baselines)."""
    members = np.flatnonzero(labels == c)
    return members, trained.features[torch.from_numpy(members)].double().numpy()


def activation_maps(trained: TrainedModel, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """The flattened input of the trunk's global pool for ``images`` (N x C*H*W, float32, CPU).

    Read in eval mode (running batch-norm statistics, no augmentation), the same conditions as
    the cached pooled features.
    """
    if global_pool(trained.model) is None:
        raise ParameterError("layer", "map", f"{trained.arch} has no global-pooling module to read the map from")
    return pooled_map(trained.model, images, trained.prep, batch_size)


def resolved_layer(trained: TrainedModel, layer: str) -> str:
    """``layer``, except ``"map"`` on a model without a pooling module, which falls back to ``"pooled"``."""
    return "pooled" if layer == "map" and global_pool(trained.model) is None else layer


def layer_notes(trained: TrainedModel, layer: str) -> list[str]:
    """Report notes saying which representation was read (and why, when it is not the one asked for)."""
    used = resolved_layer(trained, layer)
    if used != layer:
        return [f"--layer map: {trained.arch} pools with a function, not a module, so its map cannot be read; "
                "used the pooled features"]
    where = "activation map before global pooling" if used == "map" else "pooled penultimate features"
    return [f"representation: the last hidden layer's {where} (--layer {used})"]


def class_representation(trained: TrainedModel, data: ImageDataset, labels: np.ndarray, c: int,
                         layer: str) -> tuple[np.ndarray, np.ndarray]:
    """Indices of class ``c`` and their representation at ``layer`` as float64 (one class at a time:
    a ResNet-18 map on 32 px images is 8,192 numbers per sample, too many to keep for all of them)."""
    members = np.flatnonzero(labels == c)
    if resolved_layer(trained, layer) == "pooled" or len(members) == 0:
        return class_features(trained, labels, c)
    index = torch.from_numpy(members).to(data.images.device)
    return members, activation_maps(trained, data.images[index]).double().numpy()
