"""What the model-based attacks share: a model trained here on the clean set, and bounded steps on pixels.

CL and Narcissus need a model of the victim's task. The reference code downloads one (or
precomputed adversarial images); ``sanitize`` trains it on the data it is given instead, with
the same cached trainer the passive detectors use (:func:`sanitize.nn.cache.trained_model`: keyed
by a hash of the pixels and labels, the seed, the architecture and the schedule), so a second
attack on the same folder and seed does not train again.

Perturbations are bounded in *pixel levels*: ``epsilon`` (a fraction of the 0-255 range) becomes
``floor(epsilon * 255)`` levels, and every poisoned uint8 image differs from its clean original by
at most that many levels in every pixel, exactly (rounding never crosses the bound).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import torch
from torch.nn import functional as F

from ..data.images import ImageDataset
from ..errors import ParameterError
from ..nn.devices import resolve_device
from ..nn.engine import Preprocess
from ..nn.models import Classifier
from ..output import atomic_write
from ..progress import Progress, Silent

TRIGGER_CACHE_FORMAT = 1
T = TypeVar("T", torch.Tensor, dict)


@dataclass(kw_only=True)
class Surrogate:
    """How an attack trains the models it needs: device, architecture, cache and progress bars."""

    device: str | torch.device = "cpu"
    arch: str = "auto"
    cache_dir: str | Path | None = None
    progress: Progress = field(default_factory=Silent)

    def clean_model(self, data: ImageDataset, seed: int) -> tuple[Classifier, Preprocess]:
        """A model trained normally on ``data`` (loaded from the cache when it was trained before)."""
        from ..nn.cache import trained_model

        trained = trained_model(data, arch=self.arch, seed=seed, device=self.torch_device, cache_dir=self.cache_dir,
                                progress=self.progress)
        trained.model.eval()
        return trained.model, trained.prep

    @property
    def torch_device(self) -> torch.device:
        return resolve_device(self.device)

    def cached(self, kind: str, data: ImageDataset, seed: int, settings: dict, compute: Callable[[], T]) -> T:
        """``compute()`` (a tensor or a dict of tensors), or what it returned before for the same
        data, seed, settings and surrogate.

        Kept beside the trained models (same directory rules, atomic writes), under a key made of
        the data's content hash, the seed, the surrogate's architecture and ``settings``.
        """
        from ..nn.cache import content_hash, default_cache_dir

        blob = json.dumps({"format": TRIGGER_CACHE_FORMAT, "kind": kind, "data": content_hash(data), "seed": seed,
                           "arch": self.arch, "settings": settings}, sort_keys=True)
        root = Path(self.cache_dir).expanduser() if self.cache_dir is not None else default_cache_dir()
        path = root / "attacks" / f"{kind}-{hashlib.sha256(blob.encode()).hexdigest()[:32]}.pt"
        if path.is_file():
            try:
                return torch.load(path, map_location="cpu", weights_only=True)
            except Exception:  # noqa: BLE001 - an unreadable entry is a cache miss, computed again
                pass
        value = compute()
        value = {k: v.cpu() for k, v in value.items()} if isinstance(value, dict) else value.cpu()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(path, lambda tmp: torch.save(value, tmp))
        except OSError as exc:
            raise ParameterError("cache_dir", root, f"cannot write the cache ({exc.strerror or exc})") from None
        return value


def pixel_levels(epsilon: float, parameter: str = "epsilon") -> int:
    """``epsilon`` (a fraction of the pixel range) as a whole number of uint8 levels, at least 1."""
    if not (isinstance(epsilon, (int, float)) and math.isfinite(epsilon) and 0 < epsilon <= 1):
        raise ParameterError(parameter, epsilon, "expected a fraction of the pixel range in (0, 1], e.g. 8/255")
    levels = math.floor(epsilon * 255 + 1e-9)
    if levels < 1:
        raise ParameterError(parameter, epsilon, "is below one pixel level (1/255)")
    return levels


def normalised(prep: Preprocess, x: torch.Tensor) -> torch.Tensor:
    """Pixels in [0, 1] as the model reads them (differentiable, unlike ``prep`` on uint8)."""
    return (x - prep.mean) / prep.std


def add_bounded(images: torch.Tensor, delta_levels: torch.Tensor, levels: int) -> torch.Tensor:
    """uint8 ``images`` plus a perturbation in pixel levels, clipped to ``levels`` and to 0..255."""
    delta = delta_levels.round().clamp(-levels, levels)
    return (images.float() + delta.to(images.device)).clamp_(0, 255).to(torch.uint8)


def pgd_away_from_label(model: Classifier, prep: Preprocess, images: torch.Tensor, labels: torch.Tensor, *,
                        levels: int, steps: int, generator: torch.Generator, batch_size: int = 256) -> torch.Tensor:
    """Untargeted L-infinity PGD (Madry et al., 2018): raise the loss of the true label.

    Random start in the ball, ``steps`` signed-gradient steps of ``2.5 * epsilon / steps``
    (the usual step rule), projection after each. Computed in float32 with the model in eval mode;
    returns uint8 images within ``levels`` of ``images``.
    """
    model.eval()
    device = next(model.parameters()).device
    eps = levels / 255
    step = 2.5 * eps / max(1, steps)
    out = []
    for start in range(0, len(images), batch_size):
        x0 = images[start:start + batch_size].to(device).float() / 255
        y = labels[start:start + batch_size].to(device)
        delta = (torch.rand(x0.shape, generator=generator) * 2 - 1).mul_(eps).to(device)
        for _ in range(steps):
            delta.requires_grad_(True)
            loss = F.cross_entropy(model(normalised(prep, (x0 + delta).clamp(0, 1))), y)
            (grad,) = torch.autograd.grad(loss, delta)
            delta = (delta.detach() + step * grad.sign()).clamp_(-eps, eps)
            delta = (x0 + delta).clamp_(0, 1) - x0
        out.append(add_bounded(images[start:start + batch_size].to(device), delta.detach() * 255, levels).cpu())
    return torch.cat(out) if out else images.clone()
