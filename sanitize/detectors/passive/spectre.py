"""SPECTRE (Hayase, Kong, Somani, Oh, ICML 2021): robust whitening + quantum entropy (QUE) scores.

Spectral Signatures looks for the poison in the top direction of a class's covariance, but the
clean data's own large directions can hide it. SPECTRE first *whitens* the class with a mean and
covariance estimated robustly (so the poison cannot bend the estimate towards itself): in
whitened coordinates clean data is isotropic and any remaining direction of excess variance is
the poison's. The QUE score then weighs every direction by how much excess variance it has,

    Q = cov(whitened),  U = exp(alpha (Q - I) / (||Q||_2 - 1)),
    tau_i = x_i' U x_i / trace(U),

which tends to the spectral score along the top direction as ``alpha`` grows and to the squared
norm at ``alpha = 0`` (paper: ``alpha = 4``). Per class the ``budget`` highest scores are removed
(the paper removes ``1.5 eps``; here an explicit per-class fraction, as for Spectral Signatures).

Simplifications, documented in docs/baselines.md: the features are reduced to a fixed ``dims``
(default 32) top principal components of the class (the paper tries several dimensions); the
robust mean/covariance are sklearn's Minimum Covariance Determinant (``MinCovDet``, support
``1 - budget`` of the class but at least half) instead of the paper's filter-based robust
estimator.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from sklearn.covariance import MinCovDet

from ...data.images import ImageDataset
from ...errors import SanitizeError
from ...nn.cache import TrainedModel
from ...result import DetectionResult
from .base import PassiveDetector, check_budget, class_features, top_fraction_per_class
from .spectral import DEFAULT_BUDGET


def robust_whiten(x: np.ndarray, support: float, seed: int) -> np.ndarray:
    """``x`` whitened with the MCD estimate of its mean and covariance."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        warnings.simplefilter("ignore", UserWarning)
        mcd = MinCovDet(support_fraction=support, random_state=seed).fit(x)
    values, vectors = np.linalg.eigh(mcd.covariance_)
    inv_sqrt = vectors @ np.diag(1.0 / np.sqrt(np.maximum(values, 1e-12 * values.max()))) @ vectors.T
    return (x - mcd.location_) @ inv_sqrt


def que_scores(whitened: np.ndarray, alpha: float) -> np.ndarray:
    """Quantum-entropy outlier scores of whitened samples."""
    q = whitened.T @ whitened / len(whitened)
    values, vectors = np.linalg.eigh(q)
    norm = values.max()
    # No direction with excess variance: every direction weighs the same (the squared norm).
    flat = norm <= 1.0 + 1e-9
    weights = np.ones_like(values) if flat else np.exp(alpha * (values - 1.0) / (norm - 1.0))
    projected = whitened @ vectors
    return (projected ** 2) @ weights / weights.sum()


@dataclass(kw_only=True)
class SPECTRE(PassiveDetector):
    """SPECTRE detector: ``SPECTRE(budget=0.3, seed=0).detect(data)``."""

    budget: float = DEFAULT_BUDGET
    dims: int = 32
    alpha: float = 4.0

    name = "spectre"

    def check_settings(self) -> None:
        check_budget(self.budget)
        if self.dims < 1:
            raise SanitizeError(f"dims {self.dims}: expected a positive number of dimensions")
        if self.alpha < 0:
            raise SanitizeError(f"alpha {self.alpha}: expected a non-negative value")

    def score(self, trained: TrainedModel, data: ImageDataset, reserve: ImageDataset | None) -> DetectionResult:
        labels = data.labels.cpu().numpy()
        scores = np.zeros(len(data))
        stats = []
        support = max(0.5, 1.0 - self.budget)
        for c in range(data.num_classes):
            members, feats = class_features(trained, labels, c)
            stat = {"class": c, "n_samples": len(members), "dims": 0}
            stats.append(stat)
            if len(members) < 4:
                continue
            centred = feats - feats.mean(axis=0)
            k = max(1, min(self.dims, centred.shape[1], len(members) // 4))
            _, _, vt = np.linalg.svd(centred, full_matrices=False)
            reduced = centred @ vt[:k].T
            scores[members] = que_scores(robust_whiten(reduced, support, self.seed), self.alpha)
            stat["dims"] = k
        flagged = top_fraction_per_class(scores, labels, data.num_classes, self.budget)
        for st in stats:
            st["n_flagged"] = int(flagged[labels == st["class"]].sum())
        return DetectionResult(self.name, scores=scores, flagged=flagged, suspected_classes=[], class_stats=stats,
                               notes=[f"removed the top {self.budget:g} of every class (--budget)"])
