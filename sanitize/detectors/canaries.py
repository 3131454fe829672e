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
(Bonferroni), and only suspected classes lose samples.

One canary far below the others hides everything above it: feature rows with a rare extreme
value are fitted by the confused model with an enormous margin, and on EMBER-format rows with
label noise one such canary sat below a trigger cluster that lay under every other canary.
On feature rows a class with many canaries of its own is therefore tested at several cuts, the
lowest canary, the second lowest, ..., one more per :data:`CANARIES_PER_CUT` of its canaries,
each with its exact tail (:func:`below_canary_p`), the smallest p-value multiplied by the cuts
tried (:func:`scan_canary_cuts`): the test stays exact under exchangeability and tolerates one
outlying canary per hundred. Images keep the single cut: their scores are bounded, and on
CIFAR-10 at 200 reserve images per class (100 canaries per class) the second cut named a clean
class in both clean runs measured, through classes whose own canaries were already nearly
rejected at the lowest cut (docs/benchmarks.md, "One outlying canary"). ASSET applies the same tail probability
to its own cut, above the highest canary (``sanitize.detectors.asset.canary_p_values``).

Why pooled over classes, and why not only: with m canaries of its own, a class can show poison
only when it makes up more than about ``1 - alpha ** (1 / m)`` of the class (a third of it with
22 canaries), since a clean class with that share of well-fitted samples shows none of them
among m canaries often enough. The pooled canaries put the bound at about ``n / M`` samples for
a class of n. The price is an assumption: after standardisation, classes share the shape of
their lower tail. Confusion breaks it: it erases some clean classes less than others (on
scikit-learn's digits, between none and most of a class stays fitted), and a pooled test alone
then names a clean class (docs/ct.md, "The class test"). So a class is suspected only when its
own canaries agree at :data:`OWN_LEVEL` too: that test is exact for a clean class whatever
confusion did to it, so it bounds the false alarms per class where the pooling fails, while the
pooled test keeps them at ``alpha`` where it holds. A class that confusion visibly failed on
(:func:`broken_classes`: at least half of its canaries stayed fitted, more often than the other
classes' by a Fisher exact test corrected over the classes, since neither chance nor a target
whose poison raised its fitted share must leave the pool) is tested against its own canaries
only, at the full level, and those of its canaries that lie below every other class's leave the
pool (:func:`pooled_canaries`).
The own test is what limits power on small reserves: poison must be more than about
``1 - OWN_LEVEL ** (1 / m)`` of its class, 26 % with 10 canaries of its own.
Classes without canaries cannot be named.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.special import gammaln
from scipy.stats import fisher_exact, hypergeom

from ..errors import ParameterError

DEFAULT_ALPHA = 1e-3
# The pooled test borrows every class's canaries; each class must also stand the test against its
# own canaries alone at this level. That test needs no assumption across classes (its own
# canaries are exchangeable with its clean samples by construction), so whatever confusion does
# to one class more than to the others, a clean class is suspected with probability at most this.
OWN_LEVEL = 0.05
# A class whose canaries stayed fitted more often than the other classes' (one-sided Fisher exact
# test at this level over the classes tested, Bonferroni) visibly breaks the pooling: it is tested
# against its own canaries only, at the full level. Uncorrected, ten classes of 15 canaries put a
# clean class into that fallback in about every other run by chance, and a poisoned target with
# it: poison raises its target's fitted share.
HOMOGENEITY_LEVEL = 0.05
# ... and only when at least this share of its canaries stayed fitted: confusion visibly failed on
# the class. Poison also raises its target's fitted share (the model leans towards the target),
# enough to pass the corrected test on its own, and a target sent to its own canaries is missed
# where the pooled test names it; the clean classes that break the pooling keep most of their
# canaries fitted (docs/benchmarks.md, "The fallback needs a visible failure").
BROKEN_FITTED_SHARE = 0.5
# On feature rows, a class with m canaries of its own is tested at the 1 + m // CANARIES_PER_CUT
# lowest canaries (pooled and own alike, Bonferroni over the cuts). With fewer, an extra cut
# costs the own test more power than an outlying canary is likely to take (docs/benchmarks.md,
# "One outlying canary", where images are measured too).
CANARIES_PER_CUT = 100


def log_loss(logits, labels) -> np.ndarray:
    """``log`` of each sample's cross-entropy under its label, in float64, exact where the loss
    itself underflows.

    A confused model fits some samples with enormous margins (feature rows with a rare extreme
    value, or a trigger set past every clean value): their float32 loss is exactly 0 and a floor
    under it makes them, poison and clean alike, one tie at the bottom of the class test. The loss
    is ``softplus(s)`` with ``s = logsumexp_{j != y}(z_j - z_y)`` (for one logit ``l`` and a 0/1
    label, ``s = -l`` or ``l``), whose log is ``s`` itself to double precision once ``s < -30``.
    ``logits``: ``(N, C)``, or ``(N,)`` for a binary model's single logit (torch tensors).
    """
    import torch

    z = logits.detach().double()
    y = labels.to(z.device).long()
    if z.ndim == 1:
        s = torch.where(y == 1, -z, z)
    else:
        others = z - z.gather(1, y[:, None])
        s = torch.logsumexp(others.scatter(1, y[:, None], float("-inf")), dim=1)
    s = s.cpu().numpy()
    with np.errstate(over="ignore", divide="ignore"):
        exact = np.log(np.log1p(np.exp(np.minimum(s, 700.0))))
    return np.where(s < -30.0, s, np.where(s > 700.0, np.log(np.maximum(s, 1.0)), exact))


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


def below_canary_p(n: int, k: int, m: int, order: int = 1) -> float:
    """P(at least ``k`` of ``n`` exchangeable samples lie below the ``order``-th lowest of ``m`` others).

    That happens when the ``k + order - 1`` lowest of the ``n + m`` hold at most ``order - 1``
    canaries: a hypergeometric tail. ``order`` 1 is :func:`below_lowest_canary_p`.
    """
    if order <= 1:
        return below_lowest_canary_p(n, k, m)
    if k <= 0 or m < order:
        return 1.0
    return float(hypergeom.cdf(order - 1, n + m, m, k + order - 1))


def scan_orders(m: int, orders: int | None) -> int:
    """How many of the lowest of ``m`` canaries serve as cuts: ``orders``, or by default one more
    per :data:`CANARIES_PER_CUT` canaries."""
    return min(m, orders if orders is not None else 1 + m // CANARIES_PER_CUT)


def scan_canary_cuts(scores: np.ndarray, canary_scores: np.ndarray, orders: int | None) -> tuple[int, int, float]:
    """(order, count, p) of the cut among the lowest canaries (:func:`scan_orders`) that gives the
    smallest tail probability, the p-value multiplied by the cuts tried (Bonferroni)."""
    ordered = np.sort(canary_scores)
    tried = scan_orders(len(ordered), orders)
    if tried == 0:
        return 1, 0, 1.0
    counts = [int((scores < cut).sum()) for cut in ordered[:tried]]
    cuts = [(order, k, below_canary_p(len(scores), k, len(ordered), order)) for order, k in enumerate(counts, 1)]
    order, k, p = min(cuts, key=lambda cut: cut[2])  # the first (lowest) cut among equal p-values
    return order, k, min(1.0, p * tried)


def detectable_count(n: int, m: int, level: float) -> int:
    """The fewest samples below the cut that make a class of ``n`` significant at ``level`` (n + 1: none)."""
    for k in range(1, n + 1):
        if below_lowest_canary_p(n, k, m) < level:
            return k
    return n + 1


def own_canary_p(scores: np.ndarray, canary_scores: np.ndarray) -> tuple[int, float]:
    """(k, p) of one class against its own canaries: k samples below the lowest, p its exact tail."""
    _, k, p = scan_canary_cuts(scores, canary_scores, 1)
    return k, p


def fitted_homogeneity_p(own_fitted: int, own: int, all_fitted: int, total: int) -> float:
    """One-sided Fisher exact p that a class's canaries stayed fitted more often than the others'."""
    if own == 0 or own_fitted == 0:
        return 1.0
    table = [[own_fitted, own - own_fitted], [all_fitted - own_fitted, total - own - all_fitted + own_fitted]]
    return float(fisher_exact(table, alternative="greater")[1])


def homogeneity_p_values(canary_labels: np.ndarray, canary_fitted: np.ndarray, num_classes: int) -> dict[int, float]:
    """:func:`fitted_homogeneity_p` of every class that has canaries."""
    total, all_fitted = len(canary_labels), int(canary_fitted.sum())
    return {c: fitted_homogeneity_p(int(canary_fitted[canary_labels == c].sum()), int((canary_labels == c).sum()),
                                    all_fitted, total)
            for c in range(num_classes) if (canary_labels == c).any()}


def broken_classes(canary_labels: np.ndarray, canary_fitted: np.ndarray | None, num_classes: int,
                   homogeneity: dict[int, float] | None = None) -> list[int]:
    """The classes that confusion visibly failed on: their canaries stayed fitted more often than
    the other classes' canaries (:func:`fitted_homogeneity_p` below :data:`HOMOGENEITY_LEVEL` over
    the classes with canaries) and at least :data:`BROKEN_FITTED_SHARE` of them stayed fitted;
    ``homogeneity``: those p-values when the caller has them (:func:`homogeneity_p_values`)."""
    if canary_fitted is None:
        return []
    if homogeneity is None:
        homogeneity = homogeneity_p_values(canary_labels, canary_fitted, num_classes)
    level = HOMOGENEITY_LEVEL / max(1, len(homogeneity))
    return [c for c, p in homogeneity.items()
            if p < level and canary_fitted[canary_labels == c].mean() >= BROKEN_FITTED_SHARE]


def pooled_canaries(canary_scores: np.ndarray, canary_labels: np.ndarray, broken: list[int]) -> np.ndarray:
    """The canaries the pooled test borrows: all but those of a class that visibly breaks the
    pooling (``broken``, :func:`broken_classes`) which lie below every canary of the other classes.

    Such a class is tested against its own canaries only, and its outlying canaries must not set
    the others' cut: on 3,000 GTSRB images a small class that confusion left fitted had canaries
    at robust z -29, against -17 to -20 for the BadNet poison of class 0, which then had no sample
    below the cut. Its canaries that lie among the others' stay in the pool (dropping them all
    halves the pool of a two-class set such as EMBER's, and with it the test's power).
    """
    keep = np.ones(len(canary_labels), dtype=bool)
    out = np.isin(canary_labels, broken)
    if out.any() and not out.all():
        keep = ~out | (canary_scores >= canary_scores[~out].min())
    return keep


def flag_cut(canary_scores: np.ndarray, share: float, order: int = 1) -> float:
    """The ``k``-th lowest canary score, ``k = max(order, floor(share * (m + 1)))`` of ``m`` canaries.

    In a suspected class, a clean sample exchangeable with the canaries lies below it with
    probability ``k / (m + 1) <= share`` (at least the lowest canary's ``1 / (m + 1)``): ``share``
    bounds the clean share of a suspected class that is flagged with it, while poison that
    confusion left fitted, but not quite below every canary, is still taken. ``order``: the cut
    the class test named the class at (:func:`scan_canary_cuts`); flagging never stops above it.
    """
    ordered = np.sort(canary_scores)
    k = max(order, math.floor(share * (len(ordered) + 1)))
    return float(ordered[min(k, len(ordered)) - 1])


def canary_class_test(scores: np.ndarray, labels: np.ndarray, canary_scores: np.ndarray, canary_labels: np.ndarray,
                      num_classes: int, alpha: float = DEFAULT_ALPHA,
                      fitted: np.ndarray | None = None, canary_fitted: np.ndarray | None = None,
                      class_names: list[str] | None = None, flag_share: float = 0.0, cut_orders: int | None = 1
                      ) -> tuple[np.ndarray, list[int], list[dict], list[str]]:
    """Flags, suspected classes, per-class evidence and notes (see the module docstring).

    ``scores``/``canary_scores``: lower is more suspicious, already comparable across classes
    (:func:`class_robust_z`), infinite for samples that cannot be flagged. A class is suspected
    when its pooled p-value is below ``alpha`` over the number of classes *and* its p-value
    against its own canaries below :data:`OWN_LEVEL`. ``fitted`` / ``canary_fitted``
    (optional): whether the model still predicts each sample's label after confusion; a class
    that confusion visibly failed on (:func:`broken_classes`) is tested against its own canaries
    only, at the full level, and its canaries below every other class's leave the pool
    (:func:`pooled_canaries`). A suspected class loses its
    samples below the ``k``-th lowest score of the canaries it was tested against (:func:`flag_cut`,
    ``k`` from ``flag_share``; 0: the lowest canary, the cut). ``class_names`` name the classes
    in notes. ``cut_orders``: how many of the lowest canaries cut (:func:`scan_orders`; ``None``:
    one more per :data:`CANARIES_PER_CUT` of a class's own canaries, what CT on feature rows uses;
    1: the lowest alone, what CT on images uses).
    """
    names = class_names or [str(c) for c in range(num_classes)]
    m_total = len(canary_scores)
    homogeneity = homogeneity_p_values(canary_labels, canary_fitted, num_classes) if canary_fitted is not None else {}
    broken = broken_classes(canary_labels, canary_fitted, num_classes, homogeneity)
    in_pool = pooled_canaries(canary_scores, canary_labels, broken)
    m_pool = int(in_pool.sum())
    tested = [c for c in range(num_classes) if (labels == c).any()]
    level = alpha / max(1, len(tested))
    all_fitted = int(canary_fitted.sum()) if canary_fitted is not None else 0
    flagged = np.zeros(len(scores), dtype=bool)
    suspected: list[int] = []
    stats: list[dict] = []
    notes: list[str] = []
    for c in range(num_classes):
        mine, theirs = labels == c, canary_labels == c
        n, m_c = int(mine.sum()), int(theirs.sum())
        orders = scan_orders(m_c, cut_orders)  # the class's own canaries set how many cuts both tests scan
        order_own, k_own, p_own = scan_canary_cuts(scores[mine], canary_scores[theirs], orders)
        entry = {"class": c, "n_samples": n, "n_canaries": m_c, "p_value_own": p_own}
        if fitted is not None and canary_fitted is not None:
            j = int(canary_fitted[theirs].sum())
            entry.update(n_fitted=int(fitted[mine].sum()), n_canaries_fitted=j, homogeneity_p=homogeneity.get(c, 1.0))
        pooled = c not in broken
        if pooled:
            order, k, p_value = scan_canary_cuts(scores[mine], canary_scores[in_pool], orders)
            is_suspect = bool(n and p_value < level and p_own < OWN_LEVEL)
            detectable = detectable_count(n, m_pool, level / max(1, orders)) if n else None
        else:
            order, k, p_value = order_own, k_own, p_own
            is_suspect = bool(n and p_own < level)
            detectable = detectable_count(n, m_c, level / max(1, orders)) if n else None
            notes.append(f"class {names[c]}: {entry['n_canaries_fitted']} of its {m_c} clean canaries stayed fitted "
                         f"after confusion, against {all_fitted - entry['n_canaries_fitted']} of the other "
                         f"{m_total - m_c}: tested against its own canaries only, so it is named only with at least "
                         f"{detectable} of its {n} samples below all of them")
        entry.update(canary_pool="all classes" if pooled else "own", n_below_cut=k, cut_order=order,
                     p_value=p_value, detectable_count=detectable, suspected=is_suspect)
        if is_suspect:
            suspected.append(c)
            flagged |= mine & (scores < flag_cut(canary_scores[in_pool if pooled else theirs], flag_share, order))
        stats.append(entry)
    return flagged, suspected, stats, notes


ALL_TO_ALL_DOC = "docs/ct.md#all-to-all-attacks"


def below_pooled_cut(scores: np.ndarray, labels: np.ndarray, canary_scores: np.ndarray, canary_labels: np.ndarray,
                     stats: list[dict]) -> tuple[int, int, int]:
    """``(k, n, m)`` for :func:`set_wide_evidence`: the samples of the classes that the class test
    compared with every class's canaries (``stats[c]["canary_pool"]``), those of them below every
    canary of these classes, and those canaries (:func:`samples_below_pooled_cut`)."""
    below, n, m = samples_below_pooled_cut(scores, labels, canary_scores, canary_labels, stats)
    return int(below.sum()), n, m


def samples_below_pooled_cut(scores: np.ndarray, labels: np.ndarray, canary_scores: np.ndarray,
                             canary_labels: np.ndarray, stats: list[dict]) -> tuple[np.ndarray, int, int]:
    """Which samples :func:`below_pooled_cut` counts, with its ``n`` and ``m``.

    The pool is the class test's own (:func:`pooled_canaries`, the classes tested against their
    own canaries read from ``stats[c]["canary_pool"]``), and so is the cut, its lowest canary. A
    class tested against its own canaries only is left out of the count: confusion left it fitted
    more than the rest, so its samples lie below the others' canaries as its own canaries do, and
    counting them made a clean CIFAR-10 set at 200 reserve images per class look like an
    all-to-all attack (docs/benchmarks.md). Its own test already weighs that class's evidence.
    """
    own = [entry["class"] for entry in stats if entry.get("canary_pool") == "own"]
    classes = [entry["class"] for entry in stats if entry.get("canary_pool") == "all classes"]
    in_pool = pooled_canaries(canary_scores, canary_labels, own)
    mine = np.isin(labels, classes)
    if not classes or not in_pool.any():
        return np.zeros(len(scores), dtype=bool), 0, 0
    return mine & (scores < canary_scores[in_pool].min()), int(mine.sum()), int(in_pool.sum())


def set_wide_evidence(n_beyond: int, n: int, m: int, suspected: list[int], alpha: float,
                      where: str = "below") -> tuple[dict, list[str]]:
    """The whole set's count beyond every canary against what clean samples show, and what to say.

    The class test names a class only where poison concentrates. Poison spread over every class
    (an all-to-all attack: each class's poison relabelled to the next class) leaves each class
    too few samples to be named, and the evidence left is the set-wide count: at least ``n_beyond``
    of ``n`` exchangeable samples beyond all ``m`` canaries has probability ``C(n, k) / C(n + m, k)``.
    It is reported and, when it is below ``alpha`` with no class named, said in a note; it never
    flags, because it pools every class's canaries, which fails where a detector treats clean
    classes unevenly (docs/ct.md, "The class test"). A run that names no class says what the test
    cannot see, so that passing is not read as "no all-to-all backdoor".
    """
    p_value = below_lowest_canary_p(n, n_beyond, m)
    evidence = {"n_samples": n, "n_canaries": m, "n_beyond_cut": n_beyond, "p_value": p_value}
    if suspected:
        return evidence, []
    if p_value < alpha:
        return evidence, [f"{n_beyond} of {n} samples lie {where} every canary, more than clean data gives "
                          f"(p = {p_value:.2g}), but no class holds enough of them to be named: poison spread over "
                          f"many classes (an all-to-all attack) looks like this; nothing was flagged "
                          f"({ALL_TO_ALL_DOC})"]
    return evidence, [f"no class was named; the class test finds poison that concentrates in a few classes, and "
                      f"poison spread evenly over every class (an all-to-all attack) can pass it ({ALL_TO_ALL_DOC})"]


# More than this share of one class flagged is an unusual poisoning budget: a dirty-label attack
# relabels a few per cent of the data into its target class. It is reported, not hidden.
PLAUSIBLE_SHARE = 0.5


def check_alpha(alpha: float) -> None:
    """Refuse a false-alarm level outside (0, 1) (nan included)."""
    if not 0.0 < alpha < 1.0:
        raise ParameterError("alpha", alpha, "the false-alarm level must lie strictly between 0 and 1")


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
