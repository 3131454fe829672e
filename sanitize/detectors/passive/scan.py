"""SCAn — statistical contamination analyser (Tang, Wang, Tang, Zhang, USENIX Security 2021).

Model: a sample's representation is ``r = mu_class + e``: an identity vector per class plus a
variation ``e`` whose distribution ``N(0, S_e)`` is shared by all classes (and ``mu ~ N(0, S_mu)``).
A clean class is one identity; a class that received poison mixes two (its own and the
source's, carrying the trigger).

1. **Global model** on the trusted reserve: ``S_mu`` and ``S_e`` by the EM algorithm of the joint
   Bayesian face model (Chen et al., ECCV 2012), as the paper does on clean data.
2. **Local model** per class of the inspected data: split it into two sub-groups with
   identities ``u1, u2`` sharing ``S_e``, alternating the means and the linear (LDA) assignment
   ``x' F (u1 - u2) > (u1' F u1 - u2' F u2) / 2`` with ``F = S_e^-1``.
3. **Untangling statistic** ``J`` per class: the mean log-likelihood gain of the two-identity
   model over the one-identity model (identity: the global model's posterior mean of the
   class), ``mean_i [(x_i - mu)' F (x_i - mu) - (x_i - u_z(i))' F (x_i - u_z(i))]``.
4. **Decision**: ``J`` standardised across classes by the median and the MAD (x 1.4826); a class
   whose standardised score exceeds ``threshold`` (the paper's ``e^2`` ~ 7.39) is a target, and
   its sub-group farther (in ``F`` distance) from the class's clean reserve mean is flagged.

Deviations, documented in docs/baselines.md: the split starts from the sign of the top principal
component (the reference starts at random), which converges to the same fixed point in our tests
and is deterministic; the test is one-sided (only classes *above* the median can be targets);
``S_e`` gets a small ridge (1e-6 of its trace) before inversion.

Scores: the class's standardised ``J`` plus, for each sample, a number in (0, 1) that grows
towards the flagged sub-group (a logistic of its signed LDA margin), so classes rank by ``J``
and samples within a class by their side of the split.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ...data.images import ImageDataset
from ...errors import SanitizeError
from ...nn.cache import TrainedModel
from ...result import DetectionResult
from .base import PassiveDetector, class_features

THRESHOLD = math.exp(2)


def _inverse(cov: np.ndarray) -> np.ndarray:
    ridge = 1e-6 * max(float(np.trace(cov)) / len(cov), 1e-12)
    return np.linalg.pinv(cov + ridge * np.eye(len(cov)), hermitian=True)


def global_model(features: np.ndarray, labels: np.ndarray, max_iter: int = 100, tol: float = 1e-4
                 ) -> tuple[np.ndarray, np.ndarray]:
    """``(S_mu, S_e)`` by EM on clean ``features`` (each class a sample of identity + variation)."""
    x = features - features.mean(axis=0)
    classes = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    means = np.stack([x[idx].mean(axis=0) for idx in classes])
    s_mu = np.cov(means, rowvar=False, bias=True)
    s_e = np.cov(np.concatenate([x[idx] - means[k] for k, idx in enumerate(classes)]), rowvar=False, bias=True)
    for _ in range(max_iter):
        f = _inverse(s_e)
        identities = np.stack([posterior_identity(x[idx], s_mu, s_e, f) for idx in classes])
        u = np.concatenate([np.repeat(identities[k][None], len(idx), axis=0) for k, idx in enumerate(classes)])
        e = np.concatenate([x[idx] - identities[k] for k, idx in enumerate(classes)])
        new_mu, new_e = np.cov(u, rowvar=False, bias=True), np.cov(e, rowvar=False, bias=True)
        change = np.linalg.norm(new_mu - s_mu) + np.linalg.norm(new_e - s_e)
        scale = np.linalg.norm(s_mu) + np.linalg.norm(s_e)
        s_mu, s_e = new_mu, new_e
        if change <= tol * max(scale, 1e-12):
            break
    return s_mu, s_e


def posterior_identity(x: np.ndarray, s_mu: np.ndarray, s_e: np.ndarray, f: np.ndarray) -> np.ndarray:
    """Posterior mean of one identity given its ``m`` samples: ``S_e (m S_mu + S_e)^-1 S_mu F sum(x)``."""
    m = len(x)
    return s_e @ np.linalg.pinv(m * s_mu + s_e) @ s_mu @ f @ x.sum(axis=0)


def two_subgroups(x: np.ndarray, f: np.ndarray, max_iter: int = 100) -> np.ndarray:
    """Boolean sub-group assignment of ``x`` under a shared covariance (LDA updates)."""
    centred = x - x.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    z = centred @ vt[0] > 0
    for _ in range(max_iter):
        if z.all() or not z.any():
            break
        u1, u2 = x[z].mean(axis=0), x[~z].mean(axis=0)
        new = x @ f @ (u1 - u2) > 0.5 * (u1 @ f @ u1 - u2 @ f @ u2)
        if np.array_equal(new, z):
            break
        z = new
    return z


def untangling_statistic(x: np.ndarray, z: np.ndarray, s_mu: np.ndarray, s_e: np.ndarray, f: np.ndarray) -> float:
    """``J``: mean gain in ``F``-distance from one identity to the two sub-group identities."""
    if z.all() or not z.any():
        return 0.0
    mu = posterior_identity(x, s_mu, s_e, f)
    own = np.where(z[:, None], x[z].mean(axis=0), x[~z].mean(axis=0))
    d_one = np.einsum("ij,jk,ik->i", x - mu, f, x - mu)
    d_two = np.einsum("ij,jk,ik->i", x - own, f, x - own)
    return float(np.mean(d_one - d_two))


def anomaly_index(values: np.ndarray) -> np.ndarray:
    """``(v - median) / (1.4826 MAD)``: signed, robust standardisation across classes."""
    median = np.median(values)
    mad = 1.4826 * np.median(np.abs(values - median))
    return (values - median) / max(mad, 1e-12)


@dataclass(kw_only=True)
class SCAn(PassiveDetector):
    """SCAn detector: ``SCAn(seed=0).detect(data, reserve)`` (the reserve is required)."""

    threshold: float = THRESHOLD

    name = "scan"
    needs_reserve = True

    def check_settings(self) -> None:
        if self.threshold <= 0:
            raise SanitizeError(f"threshold {self.threshold}: expected a positive value")

    def score(self, trained: TrainedModel, data: ImageDataset, reserve: ImageDataset | None) -> DetectionResult:
        assert reserve is not None
        from ...nn.engine import infer

        _, reserve_feats = infer(trained.model, reserve.images, trained.prep, features=True)
        r_feats = reserve_feats.double().cpu().numpy()
        r_labels = reserve.labels.cpu().numpy()
        s_mu, s_e = global_model(r_feats, r_labels)
        f = _inverse(s_e)
        labels = data.labels.cpu().numpy()
        centre = trained.features.double().numpy().mean(axis=0)
        c = data.num_classes
        j = np.zeros(c)
        splits: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        for k in range(c):
            members, feats = class_features(trained, labels, k)
            if len(members) < 4:
                continue
            x = feats - centre
            z = two_subgroups(x, f)
            j[k] = untangling_statistic(x, z, s_mu, s_e, f)
            splits[k] = (members, self._suspicious_side(x, z, r_feats[r_labels == k] - centre, f))
        index = anomaly_index(j)
        suspected = [k for k in range(c) if index[k] > self.threshold and k in splits]
        scores = index[labels].astype(np.float64)
        flagged = np.zeros(len(data), dtype=bool)
        for k, (members, side) in splits.items():
            scores[members] += side[1]
            if k in suspected:
                flagged[members[side[0]]] = True
        stats = [{"class": k, "n_samples": int((labels == k).sum()), "J": float(j[k]),
                  "anomaly_index": float(index[k]), "suspected": k in suspected,
                  "n_flagged": int(flagged[labels == k].sum())} for k in range(c)]
        return DetectionResult(self.name, scores=scores, flagged=flagged, suspected_classes=suspected,
                               class_stats=stats)

    @staticmethod
    def _suspicious_side(x: np.ndarray, z: np.ndarray, clean: np.ndarray, f: np.ndarray
                         ) -> tuple[np.ndarray, np.ndarray]:
        """(mask of the sub-group to flag, per-sample closeness to it in (0, 1)).

        The flagged sub-group is the one whose mean lies farther from the class's clean reserve
        mean; without reserve images of the class, the smaller one.
        """
        if z.all() or not z.any():
            return np.zeros(len(x), dtype=bool), np.full(len(x), 0.5)
        u1, u2 = x[z].mean(axis=0), x[~z].mean(axis=0)
        if len(clean):
            ref = clean.mean(axis=0)
            first = (u1 - ref) @ f @ (u1 - ref) > (u2 - ref) @ f @ (u2 - ref)
        else:
            first = z.sum() < (~z).sum()
        bad, good = (u1, u2) if first else (u2, u1)
        margin = x @ f @ (bad - good) - 0.5 * (bad @ f @ bad - good @ f @ good)
        scale = max(float(np.std(margin)), 1e-12)
        closeness = 1.0 / (1.0 + np.exp(-np.clip(margin / scale, -50, 50)))
        return (z if first else ~z), closeness
