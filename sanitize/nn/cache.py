"""One trained model per dataset, shared by the passive detectors (and cached on disk).

Spectral Signatures, Activation Clustering, STRIP, SCAn and SPECTRE all inspect a model trained
*normally* on the (possibly poisoned) data: the backdoor is learnt, and the detectors look for
its traces in that model's features or predictions. Training is the expensive part, so running
five detectors on one dataset should train once. :func:`trained_model` trains with
:func:`sanitize.nn.engine.train_supervised` and stores the weights, the normalisation and the
penultimate features of every sample under a key made of

* a SHA-256 of the data's content (image bytes, labels, shape and class names),
* the seed, the architecture and the full training schedule,

so a different dataset, seed, model or schedule never reuses a stale model, and the same ones
always do. Files are written atomically (temporary file + rename), so a run interrupted while
writing leaves no half-written entry and two runs racing for one key both end with a valid file.

The cache directory is, in order: the ``cache_dir`` argument (CLI ``--cache-dir``), the
``SANITIZE_CACHE`` environment variable, ``$XDG_CACHE_HOME/sanitize``, ``~/.cache/sanitize``.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..cachedir import default_cache_dir
from ..data.images import ImageDataset
from ..errors import ParameterError, SanitizeError
from ..output import atomic_write
from ..progress import Progress, Silent
from .devices import seed_everything
from .distributed import current, everyone
from .engine import Preprocess, TrainSpec, infer, train_supervised
from .models import Classifier, build_model, default_arch

CACHE_FORMAT = 1
MIN_STEPS = 600  # small datasets: at least this many SGD steps, so the backdoor is learnt


def default_schedule(n: int, image_size: int, epochs: int | None = None) -> TrainSpec:
    """Plain supervised training long enough for a backdoor to be learnt.

    SGD with Nesterov momentum and a one-cycle learning rate; flip + crop augmentation only at
    32 px and above (on 8 px digits a 4 px crop would erase a corner trigger). Small datasets get
    at least :data:`MIN_STEPS` steps: with few images per epoch, 20 epochs are too few updates.
    """
    batch = 256 if n >= 10_000 else 64
    steps = max(1, n // min(batch, max(1, n)))
    if epochs is None:
        epochs = max(20, math.ceil(MIN_STEPS / steps))
    return TrainSpec(epochs=epochs, batch_size=batch, lr=0.05, momentum=0.9, weight_decay=5e-4,
                     augment=image_size >= 32, lr_schedule="onecycle", nesterov=True)


def content_hash(data: ImageDataset) -> str:
    """SHA-256 of what training sees: pixels, labels, shape and class names (not the paths)."""
    h = hashlib.sha256()
    h.update(json.dumps({"shape": list(data.images.shape), "classes": data.classes}).encode())
    h.update(data.images.detach().cpu().contiguous().numpy().tobytes())
    h.update(data.labels.detach().cpu().to(torch.int64).contiguous().numpy().tobytes())
    return h.hexdigest()


def cache_key(data_hash: str, seed: int, arch: str, spec: TrainSpec) -> str:
    blob = json.dumps({"format": CACHE_FORMAT, "data": data_hash, "seed": seed, "arch": arch,
                       "schedule": asdict(spec)}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


@dataclass
class TrainedModel:
    """A model trained on ``data`` plus what every passive detector reads from it."""

    model: Classifier
    prep: Preprocess
    features: torch.Tensor  # N x D penultimate features of the data, float32, CPU
    logits: torch.Tensor  # N x C, float32, CPU
    arch: str
    spec: TrainSpec
    key: str
    cached: bool  # True when loaded from the cache (no training happened)
    train_seconds: float  # training time of the run that produced it

    def settings(self) -> dict:
        return {"arch": self.arch, "train": asdict(self.spec), "model_key": self.key, "model_cached": self.cached}


def _atomic_save(obj: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def _load(path: Path, device: torch.device) -> dict | None:
    """The cached entry, or None if absent or unreadable (a corrupt entry is retrained over)."""
    if not path.is_file():
        return None
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except Exception:  # noqa: BLE001 - any unreadable file is simply a cache miss
        return None


def trained_model(data: ImageDataset, *, arch: str = "auto", seed: int = 0, device: torch.device,
                  cache_dir: str | Path | None = None, epochs: int | None = None,
                  progress: Progress | None = None, use_cache: bool = True) -> TrainedModel:
    """The model for ``(data, seed, arch, schedule)``: loaded from the cache, else trained and stored."""
    progress = progress or Silent()
    if len(data) < 2:
        raise SanitizeError(f"dataset has {len(data)} images: too few to train on")
    arch = default_arch(device, min(data.size)) if arch == "auto" else arch
    spec = default_schedule(len(data), min(data.size), epochs)
    key = cache_key(content_hash(data), seed, arch, spec)
    world = current()
    if world.parallel:  # trained data-parallel: the same model up to noise on GPUs, not bit for bit (see distributed)
        key = f"{key}-{world.size}p"
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    path = root / "models" / f"{key}.pt"
    gen = seed_everything(seed)  # before the model is built: its initial weights come from the seed too
    model = build_model(arch, data.num_classes, data.channels, min(data.size)).to(device)
    entry = _load(path, device) if use_cache else None
    if everyone(entry is not None and entry.get("format") == CACHE_FORMAT):
        model.load_state_dict(entry["state_dict"])
        prep = Preprocess(entry["mean"].to(device), entry["std"].to(device), channels_last=device.type == "cuda")
        return TrainedModel(model, prep, entry["features"].float().cpu(), entry["logits"].float().cpu(), arch, spec,
                            key, True, float(entry["train_seconds"]))
    images, labels = data.images.to(device), data.labels.to(device)
    prep = Preprocess.fit(images)
    start = time.perf_counter()
    with progress.phase("train model", spec.epochs) as advance:
        train_supervised(model, images, labels, spec, prep, gen, on_epoch=advance)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    logits, feats = infer(model, images, prep, features=True)
    trained = TrainedModel(model, prep, feats.float().cpu(), logits.float().cpu(), arch, spec, key, False, seconds)
    if use_cache and world.main:
        try:
            _atomic_save({"format": CACHE_FORMAT, "state_dict": {k: v.cpu() for k, v in model.state_dict().items()},
                          "mean": prep.mean.cpu(), "std": prep.std.cpu(), "features": trained.features,
                          "logits": trained.logits, "train_seconds": seconds, "arch": arch, "seed": seed,
                          "schedule": asdict(spec)}, path)
        except OSError as exc:
            raise ParameterError("cache_dir", root, f"cannot write the model cache ({exc.strerror or exc})") from None
    return trained
