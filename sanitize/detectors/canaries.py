"""The calibrated class test shared by the proactive detectors: D's evidence against its canaries'.

A *canary* is a trusted reserve sample placed into the inspected set D under its true label from
the first step: it is trained, distilled, confused, selected and scored exactly like a clean
sample of D, and is never flagged or written out. Whatever a detector does to clean samples by
chance, it does to the canaries too, so they are the null distribution of every per-sample
statistic the detector reads, measured in the same run on the same model.

The test (:func:`canary_class_test`, CT on images and feature rows). Each sample has a score,
lower meaning more suspicious: the confused model's log-loss, infinite for a sample the model
no longer predicts as its label. Scores are made comparable across classes by a robust
standardisation within each class (:func:`class_robust_z`), by the median and MAD of the
class's samples that confusion erased, D and canaries alike (poison stays fitted, so it cannot
set them). The cut is the lowest canary score. If class c's n samples of D and the M canaries
of all classes are exchangeable, the number of D samples below the lowest of M canaries is at
least k with probability ``C(n, k) / C(n + M, k)`` (the k lowest of the n + M are all from D),
whatever the scores' distribution (:func:`below_lowest_canary_p`). That is the class's p-value;
a class is suspected when it falls below ``alpha`` divided by the number of classes tested
(Bonferroni), and only suspected classes lose samples. ASSET applies the same tail probability
to its own cut, above the highest canary (``sanitize.detectors.asset.canary_p_values``).

Why pooled over classes: with m canaries of its own, a class can show poison only when it
makes up more than about ``1 - alpha ** (1 / m)`` of the class (a third of it with 22
canaries), since a clean class with that share of well-fitted samples shows none of them among
m canaries often enough. The pooled canaries put the bound at about ``n / M`` samples for a class
of n. The price is an assumption: after standardisation, classes share the shape of their lower
tail. A class that confusion could not erase breaks it; its own canaries show that, and such a
class is reported as not inspectable rather than tested (:data:`RESISTANT_SHARE`).
"""

from __future__ import annotations

import math

import numpy as np
from scipy.special import gammaln

from ..errors import SanitizeError

DEFAULT_ALPHA = 1e-3
# A class with at least this share of its canaries still predicted as their label after confusion
# (and at least two of them) was not erased by confusion: its clean samples resist, and a test
# built on "only poison stays fitted" cannot tell them from poison.
RESISTANT_SHARE = 0.5


def class_robust_z(values: np.ndarray, labels: np.ndarray, canary_values: np.ndarray, canary_labels: np.ndarray,
                   num_classes: int, reference: np.ndarray | None = None,
                   canary_reference: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per class, ``(x - median) / (1.4826 MAD)`` with the median and MAD of the class's D samples
    and canaries together, or of those among them that ``reference`` / ``canary_reference`` mark.

    CT standardises by the samples confusion erased (not fitted): poison is fitted, so it cannot
    move the reference even when it makes up most of a class, and the same rule applies to D and
    canaries, which keeps them exchangeable. Infinite values stay infinite and never enter the
    reference. A class with no reference or zero spread falls back to all its samples, then to a
    unit scale.
    """
    z, cz = np.full(len(values), np.inf), np.full(len(canary_values), np.inf)
    for c in range(num_classes):
        mine, theirs = labels == c, canary_labels == c
        pooled = np.concatenate([values[mine], canary_values[theirs]])
        if reference is not None and canary_reference is not None:
            chosen = pooled[np.concatenate([reference[mine], canary_reference[theirs]])]
            pooled = chosen if np.isfinite(chosen).any() else pooled
        pooled = pooled[np.isfinite(pooled)]
        if len(pooled) == 0:
            continue
        med = float(np.median(pooled))
        spread = 1.4826 * float(np.median(np.abs(pooled - med)))
        spread = spread if spread > 1e-12 else 1.0
        z[mine] = (values[mine] - med) / spread
        cz[theirs] = (canary_values[theirs] - med) / spread
    return z, cz


def below_lowest_canary_p(n: int, k: int, m: int) -> float:
    """P(at least ``k`` of ``n`` exchangeable samples lie below the lowest of ``m`` others) = C(n,k)/C(n+m,k)."""
    if k <= 0:
        return 1.0
    if m <= 0:
        return 1.0
    log_p = gammaln(n + 1) - gammaln(n - k + 1) - gammaln(n + m + 1) + gammaln(n + m - k + 1)
    return float(math.exp(log_p))


def detectable_count(n: int, m: int, level: float) -> int:
    """The fewest samples below the cut that make a class of ``n`` significant at ``level`` (n + 1: none)."""
    for k in range(1, n + 1):
        if below_lowest_canary_p(n, k, m) < level:
            return k
    return n + 1


def canary_class_test(scores: np.ndarray, labels: np.ndarray, canary_scores: np.ndarray, canary_labels: np.ndarray,
                      num_classes: int, alpha: float = DEFAULT_ALPHA,
                      fitted: np.ndarray | None = None, canary_fitted: np.ndarray | None = None,
                      class_names: list[str] | None = None, flag_fitted: bool = False
                      ) -> tuple[np.ndarray, list[int], list[dict], list[str]]:
    """Flags, suspected classes, per-class evidence and notes (see the module docstring).

    ``scores``/``canary_scores``: lower is more suspicious, already comparable across classes
    (:func:`class_robust_z`), infinite for samples that cannot be flagged. ``fitted`` /
    ``canary_fitted`` (optional): whether the model still predicts each sample's label after
    confusion; a class with at least :data:`RESISTANT_SHARE` of its canaries fitted is not
    inspectable. A suspected class loses its samples below the cut, or with ``flag_fitted``
    every fitted sample (the CT paper's rule: the test picks the class, confusion the samples).
    ``class_names`` name the classes in notes (default: their indices).
    """
    names = class_names or [str(c) for c in range(num_classes)]
    m_total = len(canary_scores)
    cut = float(canary_scores.min()) if len(canary_scores) else -np.inf
    tested = [c for c in range(num_classes) if (labels == c).any()]
    level = alpha / max(1, len(tested))
    flagged = np.zeros(len(scores), dtype=bool)
    suspected: list[int] = []
    stats: list[dict] = []
    notes: list[str] = []
    for c in range(num_classes):
        mine = labels == c
        n, m_c = int(mine.sum()), int((canary_labels == c).sum())
        below = mine & (scores < cut)
        k = int(below.sum())
        p_value = below_lowest_canary_p(n, k, m_total)
        entry = {"class": c, "n_samples": n, "n_canaries": m_c, "n_below_cut": k, "p_value": p_value,
                 "detectable_count": detectable_count(n, m_total, level) if n else None}
        if fitted is not None and canary_fitted is not None:
            j = int(canary_fitted[canary_labels == c].sum())
            entry.update(n_fitted=int(fitted[mine].sum()), n_canaries_fitted=j)
            entry["inspectable"] = not (m_c and j >= 2 and j >= RESISTANT_SHARE * m_c)
        else:
            entry["inspectable"] = True
        is_suspect = bool(n and p_value < level and entry["inspectable"])
        if not entry["inspectable"] and p_value < level:
            notes.append(f"class {names[c]}: not inspectable: {entry['n_canaries_fitted']} of its {m_c} clean canaries "
                         f"stayed fitted after confusion, so its {k} well-fitted samples are not evidence of poison")
        entry["suspected"] = is_suspect
        if is_suspect:
            suspected.append(c)
            flagged |= (mine & fitted) if flag_fitted and fitted is not None else below
        stats.append(entry)
    return flagged, suspected, stats, notes


# More than this share of one class flagged is an unusual poisoning budget: a dirty-label attack
# relabels a few per cent of the data into its target class. It is reported, not hidden.
PLAUSIBLE_SHARE = 0.5


def check_alpha(alpha: float) -> None:
    """Refuse a false-alarm level outside (0, 1) (nan included)."""
    if not 0.0 < alpha < 1.0:
        raise SanitizeError(f"--alpha {alpha}: the false-alarm level must lie strictly between 0 and 1")


def share_notes(flagged: np.ndarray, labels: np.ndarray, suspected: list[int], class_names: list[str]) -> list[str]:
    """One line for each suspected class that loses more than :data:`PLAUSIBLE_SHARE` of its samples."""
    notes = []
    for c in suspected:
        members = labels == c
        share = flagged[members].sum() / max(1, members.sum())
        if share > PLAUSIBLE_SHARE:
            notes.append(f"class {class_names[c]}: {int(flagged[members].sum())} of {int(members.sum())} samples "
                         f"flagged ({share:.0%}), more than a poisoning budget usually reaches: check that the "
                         f"reserve was drawn from the same distribution as the data")
    return notes
