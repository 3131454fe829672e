"""Does the trusted reserve fit the data? Checked before any training, for every proactive detector.

CT and ASSET measure the data against the reserve, and their class tests compare the data with
reserve samples (canaries) under the assumption that the two are drawn from the same
distribution. A reserve that breaks it gives a verdict about the reserve, not about the data:
on feature rows whose reserve came from elsewhere, CT once flagged 94 % of a clean class. So
four things are checked first, and :func:`check_reserve_fit` returns the findings for the
report and notes:

* **Shared samples.** Reserve samples whose pixels (or feature values) also occur in the data,
  exactly or after coarse quantisation (a re-encoded copy). A reserve that is mostly the data
  itself is an error: it was not held out, so it is not trusted. A few shared samples (public
  test splits overlap their training splits) are dropped from the reserve, with a note.
* **Missing classes.** Classes with fewer than four reserve samples give no canaries, and a
  class is named only when its own canaries agree; the note names them.
* **A different distribution.** A classifier two-sample test (Lopez-Paz & Oquab, ICLR 2017): a
  logistic regression learns to tell reserve samples from an equal number of data samples on
  coarse features (thumbnails for images, standardised rows for feature data), scored by
  cross-validated AUROC. Drawn from one distribution, the AUROC stays near 0.5, and a few per
  cent of poison in the data moves it by about half their share. A reserve that the classifier
  tells apart (AUROC at least :data:`MISMATCH_AUROC`, and significant) is an error.
* **A clustered reserve.** Reserve samples nearer one another than the data's samples are to
  them (:func:`reserve_clustering`): frames of the same videos, bursts, near copies. The
  canaries would have near twins among the samples the detector trains on, the data's samples
  none; a note says so, and :attr:`ReserveFit.twin_groups` lets the detectors draw canaries a
  group of twins at a time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from ..errors import SanitizeError

MISMATCH_AUROC = 0.75  # held-out AUROC at which the reserve is refused (same distribution: ~0.5)
MISMATCH_P = 1e-6  # ... and only when the AUROC is this unlikely under the same distribution
MOSTLY_SHARED = 0.5  # a reserve with this share of its samples in the data was not held out
MAX_PER_SIDE = 2000  # samples per side of the two-sample test
CLUSTERED_AUROC = 0.6  # reserve samples nearer one another than the data's are to them: warned from here
CLUSTERED_P = 1e-6  # ... when this unlikely under "drawn alike"
MAX_DATA_NEIGHBOURS = 4000  # data samples whose nearest reserve sample the clustering check measures
TWIN_QUANTILE = 0.05  # reserve samples nearer than this quantile of the data's nearest distances are twins
MAX_RESERVE_PER_CLASS = 1000  # reserve samples of a class the clustering check compares (a random subset)
THUMBNAIL = 8  # images are compared as THUMBNAIL x THUMBNAIL thumbnails


@dataclass
class ReserveFit:
    """What the checks found (recorded in ``report.json`` under ``summary.settings.reserve_check``)."""

    shared: int = 0
    missing_classes: list[int] = field(default_factory=list)
    two_sample_auroc: float | None = None
    two_sample_p: float | None = None
    clustering_auroc: float | None = None
    clustering_p: float | None = None
    twin_groups: np.ndarray | None = None  # a clustered reserve: group ids of near twins (kept positions)
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"shared_samples_dropped": self.shared, "classes_without_canaries": self.missing_classes,
                "two_sample_auroc": self.two_sample_auroc, "two_sample_p": self.two_sample_p,
                "clustering_auroc": self.clustering_auroc, "clustering_p": self.clustering_p,
                "twin_groups": None if self.twin_groups is None else int(len(np.unique(self.twin_groups)))}


def _rows(samples: torch.Tensor) -> np.ndarray:
    """One row of coarse features per sample: an image's thumbnail, or a feature row as it is
    (NaN and infinite values, which rows built through the Python API may hold, read as 0)."""
    x = samples.float()
    if x.ndim == 4:  # images, N x C x H x W
        side = min(THUMBNAIL, x.shape[2], x.shape[3])
        x = F.adaptive_avg_pool2d(x, side).flatten(1) / 255.0
    return np.nan_to_num(x.cpu().numpy().astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)


@torch.no_grad()
def _keys(samples: torch.Tensor, coarse: bool, chunk: int = 4096) -> set[tuple[int, int]] | list[tuple[int, int]]:
    """Two 64-bit hashes per sample (random linear forms that wrap around in int64, computed where
    the samples are) of its exact values, or of its values quantised to 8 levels (near copies)."""
    width = int(np.prod(samples.shape[1:]))
    gen = torch.Generator().manual_seed(0)
    weights = torch.randint(1, 2 ** 62, (2, width), generator=gen, dtype=torch.int64).to(samples.device)
    keys = []
    for start in range(0, len(samples), chunk):  # a chunk at a time: the samples may be streamed
        x = samples[start:start + chunk].reshape(-1, width)
        if coarse:
            x = x // 32 if x.dtype == torch.uint8 else torch.round(x.float() * 8)
        values = x.to(torch.int64) if x.dtype == torch.uint8 else x.float().view(torch.int32).to(torch.int64)
        keys.append(torch.stack([(values * w).sum(1) for w in weights], 1))  # no integer matmul on CUDA
    return [tuple(row) for row in torch.cat(keys).cpu().tolist()] if keys else []


def shared_indices(data_x: torch.Tensor, reserve_x: torch.Tensor) -> np.ndarray:
    """Reserve positions whose sample occurs in the data, exactly or as a near copy."""
    found = np.zeros(len(reserve_x), dtype=bool)
    for coarse in (False, True):
        seen = set(_keys(data_x, coarse))
        found |= np.array([k in seen for k in _keys(reserve_x, coarse)], dtype=bool)
    return np.flatnonzero(found)


def matched_draw(data_labels: np.ndarray, reserve_labels: np.ndarray, rng: np.random.Generator
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Positions of equally many data and reserve samples of every class (at most
    :data:`MAX_PER_SIDE` a side), so that the two sides differ in what their samples look like,
    not in how their classes are mixed."""
    per_class = [min(int((data_labels == c).sum()), int((reserve_labels == c).sum()))
                 for c in range(int(max(data_labels.max(initial=0), reserve_labels.max(initial=0))) + 1)]
    scale = min(1.0, MAX_PER_SIDE / max(1, sum(per_class)))
    d, r = [], []
    for c, k in enumerate(per_class):
        k = int(k * scale)
        if k:
            d.append(rng.choice(np.flatnonzero(data_labels == c), k, replace=False))
            r.append(rng.choice(np.flatnonzero(reserve_labels == c), k, replace=False))
    empty = np.zeros(0, dtype=np.int64)
    return (np.sort(np.concatenate(d)) if d else empty), (np.sort(np.concatenate(r)) if r else empty)


def two_sample_auroc(data_x: torch.Tensor, data_labels: np.ndarray, reserve_x: torch.Tensor,
                     reserve_labels: np.ndarray, seed: int = 0) -> tuple[float, float] | None:
    """Cross-validated AUROC of a logistic regression telling reserve samples from data samples of
    the same classes (:func:`matched_draw`), and its one-sided p-value under "same distribution"
    (Mann-Whitney's normal approximation); None when fewer than 20 pairs can be matched."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    d_idx, r_idx = matched_draw(data_labels, reserve_labels, np.random.default_rng(seed))
    n = len(d_idx)
    if n < 20:
        return None
    d = _rows(data_x[torch.as_tensor(d_idx).to(data_x.device)])
    r = _rows(reserve_x[torch.as_tensor(r_idx).to(reserve_x.device)])
    x, y = np.concatenate([d, r]), np.repeat([0, 1], n)
    model = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=300))
    folds = StratifiedKFold(n_splits=5, shuffle=True, random_state=seed)
    scores = cross_val_predict(model, x, y, cv=folds, method="decision_function")
    auroc = float(roc_auc_score(y, scores))
    sd = math.sqrt((2 * n + 1) / (12.0 * n * n))
    p_value = 0.5 * math.erfc((auroc - 0.5) / sd / math.sqrt(2))
    return auroc, p_value


def _directions(rows: np.ndarray) -> np.ndarray:
    """Rows centred on their own mean and scaled to unit length: the cosine geometry in which a
    thumbnail's nearest neighbour does not depend on its brightness or contrast."""
    rows = rows - rows.mean(1, keepdims=True)
    return rows / (np.linalg.norm(rows, axis=1, keepdims=True) + 1e-12)


def reserve_clustering(data_x: torch.Tensor, data_labels: np.ndarray, reserve_x: torch.Tensor,
                       reserve_labels: np.ndarray, seed: int = 0) -> tuple[float, float, np.ndarray] | None:
    """Are the reserve's samples nearer one another than the data's samples are to them?

    Per class, each reserve sample's distance to its nearest *other* reserve sample is compared
    with each data sample's distance to its nearest reserve sample, one reserve sample of the
    class left out at random, so that both look among the same number. Drawn alike, the two are
    exchangeable and the AUROC of "the reserve sample is nearer" is 0.5, whatever the data
    looks like. A reserve of frames from the same videos, bursts or augmented copies, beside a
    data set drawn otherwise (GTSRB's test split beside its training split), scores well above:
    the canaries then have near twins among the reserve samples that ``ℓ_min`` or confusion
    train on, and the data's samples do not, which the class tests' exact tails do not allow
    for. Distances are between the coarse rows of :func:`_rows` in :func:`_directions`'
    geometry. Returns (AUROC, one-sided p under "drawn alike", twin groups), or None with too few
    samples; the twin groups join reserve samples of a class nearer each other than all but
    :data:`TWIN_QUANTILE` of the data's samples come to the reserve (connected components). A
    class with more than :data:`MAX_RESERVE_PER_CLASS` reserve samples is compared, and grouped,
    on a random subset of that many.
    """
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import connected_components
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(seed)
    data_pick = np.flatnonzero(data_labels >= 0)
    if len(data_pick) > MAX_DATA_NEIGHBOURS:
        data_pick = np.sort(rng.choice(data_pick, MAX_DATA_NEIGHBOURS, replace=False))
    data_rows = _directions(_rows(data_x[torch.as_tensor(data_pick).to(data_x.device)]))
    reserve_rows = _directions(_rows(reserve_x))
    picked_labels = data_labels[data_pick]
    compared, data_near = [], []  # first the data's distances, which set the twin threshold
    for c in np.unique(reserve_labels):
        mine, theirs = np.flatnonzero(reserve_labels == c), np.flatnonzero(picked_labels == c)
        if len(mine) < 3 or len(theirs) == 0:
            continue
        if len(mine) > MAX_RESERVE_PER_CLASS:  # bounded memory and time; the others stay ungrouped
            mine = np.sort(rng.choice(mine, MAX_RESERVE_PER_CLASS, replace=False))
        compared.append(mine)
        to_reserve = data_rows[theirs] @ reserve_rows[mine].T
        to_reserve[np.arange(len(theirs)), rng.integers(0, len(mine), len(theirs))] = -np.inf
        data_near.append(1.0 - to_reserve.max(1))
    if not compared:
        return None
    near_d = np.concatenate(data_near)
    twin = float(np.quantile(near_d, TWIN_QUANTILE))
    reserve_near, rows, cols = [], [], []
    for mine in compared:  # then the reserve's, one class's distances at a time
        among = 1.0 - reserve_rows[mine] @ reserve_rows[mine].T
        np.fill_diagonal(among, np.inf)
        reserve_near.append(among.min(1))
        i, j = np.nonzero(among < twin)
        rows.extend(mine[i])
        cols.extend(mine[j])
    near_r = np.concatenate(reserve_near)
    n1, n2 = len(near_r), len(near_d)
    if n1 < 20 or n2 < 20:
        return None
    auroc = float(roc_auc_score(np.repeat([1, 0], [n1, n2]), -np.concatenate([near_r, near_d])))
    sd = math.sqrt((n1 + n2 + 1) / (12.0 * n1 * n2))
    graph = csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(reserve_labels),) * 2)
    groups = connected_components(graph, directed=False)[1]
    return auroc, 0.5 * math.erfc((auroc - 0.5) / sd / math.sqrt(2)), groups


def check_reserve_fit(data_x: torch.Tensor, data_labels: torch.Tensor, reserve_x: torch.Tensor,
                      reserve_labels: torch.Tensor, num_classes: int, class_names: list[str],
                      what: str = "samples") -> tuple[np.ndarray, ReserveFit]:
    """The reserve positions to keep and the findings; raises :class:`SanitizeError` on a reserve
    that was not held out from the data or does not come from its distribution.

    ``data_x``/``reserve_x``: uint8 images (N x C x H x W) or feature rows (N x D), with their
    labels; label -1 (an unlabelled row) takes part in the duplicate check only. ``what`` names
    the samples in messages ("images", "rows"). Returns the reserve positions to keep.
    """
    fit = ReserveFit()
    reserve_labels_np = reserve_labels.cpu().numpy()
    labelled = reserve_labels_np >= 0
    reserve_x = reserve_x[torch.as_tensor(np.flatnonzero(labelled)).to(reserve_x.device)]
    reserve_labels_np = reserve_labels_np[labelled]
    shared = shared_indices(data_x, reserve_x)
    if len(shared) >= MOSTLY_SHARED * len(reserve_x):
        raise SanitizeError(f"the reserve shares {len(shared)} of its {len(reserve_x)} {what} with the data: it "
                            f"must be held out from the data to be trusted (a poisoned data set poisons it too)")
    keep = np.setdiff1d(np.arange(len(reserve_x)), shared)
    if len(shared):
        fit.shared = len(shared)
        fit.notes.append(f"{len(shared)} reserve {what} also occur in the data (exact or near copies); they were "
                         f"left out of the reserve")
    counts = np.bincount(reserve_labels_np[keep], minlength=num_classes)
    data_labels_np = data_labels.cpu().numpy()
    present = np.bincount(data_labels_np[data_labels_np >= 0], minlength=num_classes) > 0
    fit.missing_classes = [c for c in range(num_classes) if present[c] and counts[c] < 4]
    if fit.missing_classes:
        names = ", ".join(class_names[c] for c in fit.missing_classes[:8])
        more = f" and {len(fit.missing_classes) - 8} more" if len(fit.missing_classes) > 8 else ""
        fit.notes.append(f"the reserve has fewer than 4 {what} of class(es) {names}{more}: they get no canaries of "
                         f"their own, so the class test cannot name them")
    test = two_sample_auroc(data_x, data_labels_np, reserve_x[torch.as_tensor(keep).to(reserve_x.device)],
                            reserve_labels_np[keep])
    if test is not None:
        auroc, p_value = test
        fit.two_sample_auroc, fit.two_sample_p = round(auroc, 4), p_value
        if auroc >= MISMATCH_AUROC and p_value < MISMATCH_P:
            raise SanitizeError(f"the reserve does not look drawn from the data's distribution: a classifier tells "
                                f"reserve from data {what} apart (held-out AUROC {auroc:.2f}; 0.5 when they match); "
                                f"use clean {what} collected the way the data was")
    clustering = reserve_clustering(data_x, data_labels_np, reserve_x[torch.as_tensor(keep).to(reserve_x.device)],
                                    reserve_labels_np[keep])
    if clustering is not None:
        auroc, p_value, groups = clustering
        fit.clustering_auroc, fit.clustering_p = round(auroc, 4), p_value
        if auroc >= CLUSTERED_AUROC and p_value < CLUSTERED_P:
            fit.twin_groups = groups
            fit.notes.append(f"the reserve's {what} are nearer one another than the data's are to them (AUROC "
                             f"{auroc:.2f}; 0.5 when drawn alike), as frames of the same videos or near copies are; "
                             f"canaries are drawn a group of near twins at a time ({len(np.unique(groups))} groups), "
                             f"so that none has a twin left in the reserve (docs/guide.md#the-reserve-set)")
    return np.flatnonzero(labelled)[keep], fit


def fitted_reserve(data, reserve, what: str):
    """``reserve`` without the samples it shares with ``data``, and the findings (see
    :func:`check_reserve_fit`); for image folders (``images``) and feature rows (``X``) alike."""
    data_x = data.images if hasattr(data, "images") else data.X
    reserve_x = reserve.images if hasattr(reserve, "images") else reserve.X
    keep, fit = check_reserve_fit(data_x, data.labels, reserve_x, reserve.labels, data.num_classes, data.classes, what)
    return (reserve.subset(keep) if len(keep) < len(reserve) else reserve), fit
