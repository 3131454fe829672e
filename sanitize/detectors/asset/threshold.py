"""The decision: the loss threshold, and which classes are suspected."""

from __future__ import annotations

import math

import numpy as np

from ...errors import SanitizeError
from ..canaries import below_lowest_canary_p, own_canary_p

# ---------------------------------------------------------------------------------------------
# Threshold


def level_set_z(epsilon: float) -> float:
    """Standardised cut where a unit Gaussian's density falls to ``epsilon``.

    The reference flags ``x > mu + sigma * sqrt(-2 ln(eps * sigma * sqrt(2 pi)))``: where the
    fitted Gaussian's density equals ``eps``. That depends on the unit of the scores (sigma
    inside the log). Measured in standard deviations the same rule is scale-free:
    ``z* = sqrt(-2 ln(eps * sqrt(2 pi)))`` (5.08 for eps = 1e-6).
    """
    if not 0 < epsilon < 1 / math.sqrt(2.0 * math.pi):  # also refuses nan
        raise SanitizeError(f"epsilon {epsilon}: must lie between 0 and 1/sqrt(2 pi) ~ 0.399")
    return math.sqrt(-2.0 * math.log(epsilon * math.sqrt(2.0 * math.pi)))


def robust_z(values: np.ndarray) -> np.ndarray:
    """(x - median) / (1.4826 MAD): the z-score of a Gaussian fitted to the robust core.

    Median and MAD ignore up to half the data, so a poisoned minority does not widen the
    clean fit (the reference fits on the lower half for the same reason, which biases both the
    mean and the spread low). A zero MAD falls back to the mean absolute deviation, then to 1.
    """
    x = np.asarray(values, dtype=np.float64)
    med = float(np.median(x))
    spread = 1.4826 * float(np.median(np.abs(x - med)))
    if spread <= 1e-12:
        spread = 1.2533 * float(np.mean(np.abs(x - med)))
    if spread <= 1e-12:
        spread = 1.0
    return (x - med) / spread


def class_log_loss_medians(losses: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Median log-loss of each class's samples (0 for a class without any).

    ``fast`` takes them over the inspected samples and the canaries, which went through the loop
    alike: the median ignores a poisoned minority, and the canaries, compared with D after the
    shift, are shifted by a value that treats them exactly as D's clean samples. (The reserve
    samples that ``l_min`` trained on have flattened logits, so their losses are not D's.)
    """
    log_loss = np.log(np.maximum(losses.astype(np.float64), 1e-12))
    return np.array([float(np.median(log_loss[labels == c])) if (labels == c).any() else 0.0
                     for c in range(num_classes)])


def loss_threshold(losses: np.ndarray, epsilon: float, shift: np.ndarray | None = None, canaries: int = 0
                   ) -> tuple[np.ndarray, dict[str, float]]:
    """Flags and the fitted statistics: robust z of log-loss above :func:`level_set_z`.

    The log makes the rule invariant to the scale of the losses and turns their right skew
    (a loss is a product of factors) into a roughly symmetric bulk, which the Gaussian fit
    assumes.

    With ``canaries``, the last ``canaries`` losses belong to clean reserve samples that went
    through the loop exactly like the inspected ones (see :func:`with_canaries`); the cut is
    raised to the highest canary z, and flags are returned for the other samples only. A clean
    sample exchangeable with m canaries lies above all of them with probability 1/(m+1), whatever
    the loss distribution looks like.
    """
    log_loss = np.log(np.maximum(np.asarray(losses, dtype=np.float64), 1e-12))
    if shift is not None:
        log_loss = log_loss - shift
    z = robust_z(log_loss)
    cut = level_set_z(epsilon)
    med = float(np.median(log_loss))
    spread = float((log_loss[0] - med) / z[0]) if len(z) and z[0] != 0 else float("nan")
    fit = {"z_cut": cut, "log_loss_median": med, "log_loss_scale": spread}
    if canaries:
        fit["canary_max_z"] = float(z[-canaries:].max())
        z, cut = z[:-canaries], max(cut, fit["canary_max_z"])
        fit["cut"] = cut
    return z > cut, fit


def demo_threshold(losses: np.ndarray, epsilon: float) -> tuple[np.ndarray, dict[str, float]]:
    """Flags and the fit of the demo's ``get_t``, as its code computes it (``reference``).

    A one-component Gaussian mixture (scikit-learn, as the demo) is fitted to the scores at or
    below their lower median, giving mean ``mu`` and standard deviation ``sigma``; the cut is
    ``sigma * sqrt(-2 ln(eps) * sigma * sqrt(2 pi)) + mu`` and a score at or above it is flagged.
    (The paper writes the level set ``mu + sigma * sqrt(-2 ln(eps * sigma * sqrt(2 pi)))``; the
    code's expression differs, and is what the demo's figures come from.)
    """
    from sklearn.mixture import GaussianMixture

    x = np.asarray(losses, dtype=np.float64)
    lower = x[x <= np.quantile(x, 0.5, method="lower")].reshape(-1, 1)
    fit = GaussianMixture(n_components=1, covariance_type="full", random_state=0).fit(lower)
    mu, sigma = float(fit.means_[0, 0]), float(np.sqrt(fit.covariances_[0, 0, 0]))
    cut = sigma * math.sqrt(-2.0 * math.log(epsilon) * sigma * math.sqrt(2.0 * math.pi)) + mu
    return x >= cut, {"cut": cut, "lower_half_mean": mu, "lower_half_sd": sigma}


def suspected_from_flags(flagged: np.ndarray, labels: np.ndarray, num_classes: int) -> list[int]:
    """Without canaries (``reference``): classes that hold a real share of the flags, >= 2 flags and
    >= half the busiest class's. A dirty-label backdoor concentrates its flags in the target
    class, while a few stray false positives scatter across classes."""
    counts = np.bincount(labels[flagged], minlength=num_classes)
    top = counts.max() if len(counts) else 0
    return [c for c in range(num_classes) if counts[c] >= 2 and counts[c] >= 0.5 * top]


def canary_p_values(flagged: np.ndarray, labels: np.ndarray, num_classes: int, canaries: int) -> np.ndarray:
    """Per class, the exact probability of at least its flag count among clean samples.

    Flags are the samples above every one of the ``canaries`` canaries' scores (the cut is raised
    to the highest canary). If the class's n samples are exchangeable with the canaries, at
    least k of them lie above all m canaries with probability C(n, k) / C(n + m, k)
    (:func:`sanitize.detectors.canaries.below_lowest_canary_p`), whatever the scores look like.
    """
    counts = np.bincount(labels[flagged], minlength=num_classes)
    sizes = np.bincount(labels, minlength=num_classes)
    return np.array([below_lowest_canary_p(int(sizes[c]), int(counts[c]), canaries) for c in range(num_classes)])


def own_canary_p_values(losses: np.ndarray, labels: np.ndarray, n_inspected: int, num_classes: int) -> np.ndarray:
    """Per class, the exact tail of its inspected samples above all of *its own* canaries' losses.

    ``losses``/``labels`` cover the inspected samples, then the canaries. Unlike the pooled
    :func:`canary_p_values` it needs no assumption across classes; it is reported as evidence.
    """
    d, k = labels[:n_inspected], labels[n_inspected:]
    return np.array([own_canary_p(-losses[:n_inspected][d == c], -losses[n_inspected:][k == c])[1]
                     for c in range(num_classes)])
