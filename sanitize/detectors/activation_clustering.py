"""Activation Clustering (Chen et al., SafeAI@AAAI 2019).

A poisoned class mixes two reasons for one label (its own content, and the trigger), so its
last-hidden-layer activations split into two clusters, one of them small. Per class: reduce the
features to ``dims`` (10, as the paper) dimensions with ICA (sklearn ``FastICA``; ``reduce="pca"``
for PCA), split them with 2-means (sklearn ``KMeans``), and flag the smaller cluster when

* its relative size (smaller / class size) is at most ``size_threshold`` (default 0.35), and
* the 2-means silhouette score (``sklearn.metrics.silhouette_score``) is at least
  ``silhouette_threshold`` (default 0.10): the split is a real one, not a cut through one blob.

The paper analyses clusters by relative size and by silhouette score (and by exclusionary
reclassification, which retrains once per class and is not implemented here). The two thresholds
are the defaults of IBM's Adversarial Robustness Toolbox implementation by the paper's authors.

Scores: ``d_big / (d_big + d_small)`` of the distances to the two cluster centres (0.5 on the
boundary, towards 1 inside the small cluster), plus 1 for samples of a suspected class, so every
sample of a suspected class ranks above every sample of an unsuspected one.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA, FastICA
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import silhouette_score

from ..data import ImageDataset
from ..errors import SanitizeError
from ..model_cache import TrainedModel
from ..result import DetectionResult
from .passive import PassiveDetector, class_features


def reduce_features(features: np.ndarray, dims: int, method: str, seed: int) -> np.ndarray:
    """``features`` projected to at most ``dims`` dimensions by ICA or PCA (float64)."""
    k = max(1, min(dims, features.shape[1], len(features) - 1))
    if method == "pca":
        return PCA(n_components=k, random_state=seed).fit_transform(features)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return FastICA(n_components=k, whiten="unit-variance", random_state=seed, max_iter=400).fit_transform(features)


@dataclass
class ActivationClustering(PassiveDetector):
    """Activation Clustering detector: ``ActivationClustering(seed=0).detect(data)``."""

    dims: int = 10
    reduce: str = "pca"
    size_threshold: float = 0.35
    silhouette_threshold: float = 0.10

    name = "activation-clustering"

    def check(self) -> None:
        if self.reduce not in ("ica", "pca"):
            raise SanitizeError(f"--reduce {self.reduce!r}: expected ica or pca")
        if not 0.0 < self.size_threshold <= 0.5:
            raise SanitizeError(f"size threshold {self.size_threshold}: expected a value in (0, 0.5]")
        if self.dims < 1:
            raise SanitizeError(f"dims {self.dims}: expected a positive number of dimensions")

    def score(self, trained: TrainedModel, data: ImageDataset, reserve: ImageDataset | None) -> DetectionResult:
        labels = data.labels.cpu().numpy()
        scores = np.zeros(len(data))
        flagged = np.zeros(len(data), dtype=bool)
        suspected, stats = [], []
        for c in range(data.num_classes):
            members, feats = class_features(trained, labels, c)
            stat = {"class": c, "n_samples": len(members), "relative_size": None, "silhouette": None,
                    "suspected": False}
            stats.append(stat)
            if len(members) < 4:
                continue
            reduced = reduce_features(feats, self.dims, self.reduce, self.seed)
            km = KMeans(n_clusters=2, n_init=10, random_state=self.seed).fit(reduced)
            sizes = np.bincount(km.labels_, minlength=2)
            small = int(np.argmin(sizes))
            relative = float(sizes[small] / len(members))
            silhouette = float(silhouette_score(reduced, km.labels_)) if sizes.min() > 0 else 0.0
            dist = km.transform(reduced)
            scores[members] = dist[:, 1 - small] / np.maximum(dist.sum(axis=1), 1e-12)
            is_target = relative <= self.size_threshold and silhouette >= self.silhouette_threshold
            stat.update(relative_size=relative, silhouette=silhouette, suspected=is_target)
            if is_target:
                suspected.append(c)
                scores[members] += 1.0
                flagged[members[km.labels_ == small]] = True
        return DetectionResult(self.name, scores=scores, flagged=flagged, suspected_classes=suspected,
                               class_stats=stats)
