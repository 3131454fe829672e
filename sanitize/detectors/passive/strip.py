"""STRIP (Gao, Xu, Wang, Chen, Ranasinghe, Nepal, ACSAC 2019), used to filter a training set.

A trigger dominates the prediction whatever else is in the image, so a poisoned input
superimposed on other images keeps being classified as the target: the predictions have low
entropy. A clean input superimposed on other images is pulled every which way: high entropy.
For every sample, ``perturbations`` (paper: N = 100) superimposed copies are made with random
clean images and classified by the model trained on the data; the sample's score is minus the
mean Shannon entropy of those predictions (low entropy = suspicious).

Superimposition follows the paper's implementation: the two images are added pixel-wise and
saturated at 255 (``overlay="add"``); ``overlay="average"`` takes their mean instead.

Threshold: the entropy below which only a fraction ``frr`` (the false rejection rate, default
1 %) of *clean* inputs fall. The clean entropy distribution is estimated on the reserve (each
reserve image superimposed with other reserve images) when one is given, as in the paper, which
assumes held-out clean inputs. Without a reserve the data stands in for clean data, both as the
overlay pool and for the threshold, so exactly ``frr`` of the data is flagged; poison is then in
the estimate, which is documented as a weaker mode.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ...data.images import ImageDataset
from ...errors import ParameterError, SanitizeError
from ...nn.cache import TrainedModel
from ...nn.devices import seed_everything
from ...nn.engine import full_precision
from ...result import DetectionResult
from .base import PassiveDetector


def superimpose(images: torch.Tensor, overlays: torch.Tensor, mode: str) -> torch.Tensor:
    """uint8 ``images`` (B x C x H x W) combined with ``overlays`` (B x N x C x H x W) -> B*N images."""
    base = images[:, None].to(torch.int16)
    if mode == "add":
        mixed = (base + overlays.to(torch.int16)).clamp_(0, 255)
    else:
        mixed = (base + overlays.to(torch.int16) + 1) // 2
    return mixed.to(torch.uint8).flatten(0, 1)


@torch.no_grad()
def strip_entropy(trained: TrainedModel, images: torch.Tensor, pool: torch.Tensor, perturbations: int,
                  gen: torch.Generator, mode: str, exclude_self: bool = False, chunk: int = 4096,
                  advance=None) -> np.ndarray:
    """Mean prediction entropy (nats) of each image superimposed with ``perturbations`` pool images.

    With ``exclude_self`` (the pool *is* ``images``), an image is never overlaid on itself.
    """
    model, prep = trained.model, trained.prep
    model.eval()
    device = images.device
    out = np.empty(len(images))
    per_batch = max(1, chunk // perturbations)
    for start in range(0, len(images), per_batch):
        stop = min(len(images), start + per_batch)
        draw = torch.randint(0, len(pool) - int(exclude_self), (stop - start, perturbations), generator=gen)
        if exclude_self:
            own = torch.arange(start, stop)[:, None]
            draw = draw + (draw >= own).long()
        mixed = superimpose(images[start:stop], pool[draw.to(device)], mode)
        with full_precision(device):
            logits = model(prep(mixed)).float()
        logp = torch.log_softmax(logits, dim=1)
        entropy = -(logp.exp() * logp).sum(dim=1).view(stop - start, perturbations).mean(dim=1)
        out[start:stop] = entropy.cpu().numpy()
        if advance:
            advance()
    return out


@dataclass(kw_only=True)
class STRIP(PassiveDetector):
    """STRIP detector: ``STRIP(frr=0.01, seed=0).detect(data, reserve)``."""

    perturbations: int = 100
    frr: float = 0.01
    overlay: str = "add"

    name = "strip"

    def check_settings(self) -> None:
        if self.perturbations < 1:
            raise SanitizeError(f"perturbations {self.perturbations}: expected at least 1")
        if not 0.0 < self.frr < 1.0:
            raise ParameterError("frr", self.frr, "expected a false rejection rate in (0, 1)")
        if self.overlay not in ("add", "average"):
            raise SanitizeError(f"overlay {self.overlay!r}: expected add or average")

    def score(self, trained: TrainedModel, data: ImageDataset, reserve: ImageDataset | None) -> DetectionResult:
        gen = seed_everything(self.seed + 1)  # its own stream: the model's training used seed
        pool = reserve.images if reserve is not None else data.images
        entropy = strip_entropy(trained, data.images, pool, self.perturbations, gen, self.overlay,
                                exclude_self=reserve is None)
        if reserve is not None:
            clean = strip_entropy(trained, reserve.images, reserve.images, self.perturbations, gen, self.overlay,
                                  exclude_self=True)
            source = "reserve"
        else:
            clean, source = entropy, "data (no reserve)"
        threshold = float(np.quantile(clean, self.frr))
        flagged = entropy < threshold
        labels = data.labels.cpu().numpy()
        stats = [{"class": c, "n_samples": int((labels == c).sum()),
                  "mean_entropy": float(entropy[labels == c].mean()) if (labels == c).any() else None,
                  "n_flagged": int(flagged[labels == c].sum())} for c in range(data.num_classes)]
        notes = [f"entropy threshold {threshold:.4g} = the {self.frr:g} quantile of the clean estimate ({source})"]
        return DetectionResult(self.name, scores=-entropy, flagged=flagged, suspected_classes=[], class_stats=stats,
                               notes=notes)
