"""The paper's class decision: a two-Gaussian likelihood ratio on the confused model's features."""

from __future__ import annotations

import math

import numpy as np
from sklearn.decomposition import PCA
from sklearn.mixture import GaussianMixture


def likelihood_ratio(features: np.ndarray, isolated: np.ndarray) -> float:
    """exp(mean log-likelihood gain) of "isolated vs rest" Gaussians over one "rest" Gaussian.

    Features are projected to 2-D by PCA first. Returns 1.0 when either group has fewer than
    two samples (no evidence either way).
    """
    if isolated.sum() < 2 or (~isolated).sum() < 2:
        return 1.0
    # An activation map has thousands of columns: an exact SVD of every class would cost seconds
    # each on 50,000 images, and the two leading directions are all the test needs.
    solver = "full" if features.shape[1] <= 1024 else "randomized"
    projected = PCA(n_components=2, svd_solver=solver, random_state=0).fit_transform(features.astype(np.float64))

    def gaussian(points: np.ndarray) -> GaussianMixture:
        return GaussianMixture(n_components=1, covariance_type="full", reg_covar=1e-3,
                               random_state=0).fit(points)

    rest = gaussian(projected[~isolated])
    own = np.where(isolated, gaussian(projected[isolated]).score_samples(projected),
                   rest.score_samples(projected))
    gain = float(np.mean(own - rest.score_samples(projected)))
    return float(math.exp(min(gain, 700.0)))


def decide_classes(ratios: np.ndarray) -> list[int]:
    """The reference's rule: the class with the largest likelihood ratio if it exceeds 1.5, and any
    class whose ratio exceeds 2."""
    top = float(ratios.max()) if len(ratios) else 0.0
    return [c for c, r in enumerate(ratios) if (r == top and r > 1.5) or r > 2.0]


def class_ratios(features: np.ndarray, labels: np.ndarray, isolated: np.ndarray, num_classes: int) -> np.ndarray:
    """The reference's statistic (:func:`likelihood_ratio`) of every class with at least 4 samples (else 1)."""
    ratios = np.ones(num_classes)
    for cls in range(num_classes):
        members = labels == cls
        if members.sum() >= 4:
            ratios[cls] = likelihood_ratio(features[members], isolated[members])
    return ratios
