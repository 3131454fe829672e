"""The numbers behind report.html: per-class thresholds, recovered triggers, feature contrasts.

Computed from the report dict and the dataset's own arrays, never from a detector object, so every
detector gets the same evidence; :mod:`sanitize.report.html` only lays them out.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

TOP_FEATURES = 15


def class_names(report: dict[str, Any]) -> list[str]:
    """Class names in the detector's order, then any label it did not list (sorted)."""
    names = [c["name"] for c in report.get("classes", [])]
    seen = set(names)
    return names + sorted({s["label"] for s in report["samples"]} - seen)


def class_threshold(report: dict[str, Any], name: str) -> tuple[float | None, str]:
    """The score threshold of one class and where it comes from.

    A detector that decides by a score threshold reports it (``threshold`` in the class's entry of
    ``classes`` or in ``summary.settings``) and that value is used. Otherwise the threshold is the
    lowest score among the class's flagged samples: the score from which this run flagged. For CT,
    which flags *isolated* samples of suspected classes rather than cutting at a score, this is a
    visual guide; a class with nothing flagged has no threshold.
    """
    for entry in report.get("classes", []):
        if entry.get("name") == name and isinstance(entry.get("threshold"), (int, float)):
            return float(entry["threshold"]), "reported by the detector"
    settings = report["summary"].get("settings") or {}
    if isinstance(settings.get("threshold"), (int, float)) and not isinstance(settings["threshold"], bool):
        return float(settings["threshold"]), "reported by the detector"
    flagged = [s["score"] for s in report["samples"] if s["label"] == name and s["flagged"]]
    if flagged:
        return float(min(flagged)), "lowest flagged score"
    return None, "nothing flagged"


def _mean_image(images: np.ndarray, mask: np.ndarray, chunk: int = 1024) -> np.ndarray | None:
    """Mean of ``images[mask]`` in float64, in chunks so a 50k-image set never doubles in memory."""
    idx = np.flatnonzero(mask)
    if len(idx) == 0:
        return None
    total = np.zeros(images.shape[1:], dtype=np.float64)
    for start in range(0, len(idx), chunk):
        total += images[idx[start:start + chunk]].astype(np.float64).sum(0)
    return total / len(idx)


def recovered_trigger(images: np.ndarray, labels: np.ndarray, flagged: np.ndarray,
                      target: int) -> dict[str, np.ndarray | None]:
    """What the flagged samples of ``target`` share that clean samples lack.

    * ``vs_others``: mean of the flagged images labelled ``target`` minus the mean of the kept
      images of the *other* classes. Dirty-label poison (BadNet, Blend, Trojan, WaNet, ...) is
      made from other classes' images, so their content averages out and the trigger remains.
    * ``vs_same``: the same mean minus the mean of the kept images *of the target class*. For
      clean-label poison (SIG, Narcissus), which is drawn from the target class itself, this is
      the contrast that cancels the content.

    Both are signed, in pixel levels (0..255), C x H x W; ``None`` where a group is empty.
    """
    images = np.asarray(images)
    is_target = labels == target
    poison = _mean_image(images, flagged & is_target)
    others = _mean_image(images, ~flagged & ~is_target)
    same = _mean_image(images, ~flagged & is_target)
    return {"poison_mean": poison, "others_mean": others, "same_mean": same,
            "vs_others": None if poison is None or others is None else poison - others,
            "vs_same": None if poison is None or same is None else poison - same}


def display_difference(diff: np.ndarray) -> np.ndarray:
    """|difference| scaled so its largest value is white: where the images differ, not how."""
    mag = np.abs(diff)
    peak = mag.max()
    if peak <= 0:
        return np.zeros(diff.shape, dtype=np.uint8)
    return np.clip(np.rint(255 * mag / peak), 0, 255).astype(np.uint8)


def difference_stats(diff: np.ndarray) -> tuple[float, float]:
    """Peak |difference| (pixel levels) and the fraction of pixels above half of it.

    A patch trigger concentrates the difference on few pixels (a small fraction); a blend or
    warp spreads it over the image (a large one).
    """
    mag = np.abs(diff).max(0)  # per pixel, over channels
    peak = float(mag.max())
    return peak, float((mag > peak / 2).mean()) if peak > 0 else 0.0


def feature_contrast(features: np.ndarray, feature_names: Sequence[str] | None, flagged: np.ndarray,
                     top: int = TOP_FEATURES, chunk: int = 65536) -> list[dict[str, Any]]:
    """The features whose values most distinguish flagged rows from kept ones.

    Effect size per feature: (mean over flagged - mean over kept) / standard deviation over all
    rows. Dividing by the overall spread (not the pooled within-group one) keeps the figure finite
    when a trigger sets a feature to one constant value, as feature-space backdoors on malware
    (e.g. explanation-guided poisoning of EMBER) do. Constant features score 0.
    """
    flagged = np.asarray(flagged, dtype=bool)
    if features.ndim != 2 or len(features) != len(flagged):
        raise ValueError("features must be N x D with one flag per row")
    if feature_names is not None and len(feature_names) != features.shape[1]:
        raise ValueError("feature_names must name every column")
    if not flagged.any() or flagged.all():
        return []
    # Chunked float64 sums: the rows may be a memory map far larger than memory (EMBER: 600k x 2381).
    total, total_sq, flagged_sum = (np.zeros(features.shape[1]) for _ in range(3))
    for start in range(0, len(flagged), chunk):
        x = np.asarray(features[start:start + chunk], dtype=np.float64)
        total += x.sum(0)
        total_sq += (x * x).sum(0)
        flagged_sum += x[flagged[start:start + chunk]].sum(0)
    n, n_f = len(flagged), int(flagged.sum())
    mean_f, mean_k = flagged_sum / n_f, (total - flagged_sum) / (n - n_f)
    spread = np.sqrt(np.maximum(total_sq / n - (total / n) ** 2, 0.0))
    with np.errstate(divide="ignore", invalid="ignore"):
        effect = np.where(spread > 1e-12 * (1 + np.abs(total / n)), (mean_f - mean_k) / spread, 0.0)
    order = np.argsort(-np.abs(effect), kind="stable")[:top]
    names = feature_names if feature_names is not None else [f"f{j}" for j in range(features.shape[1])]
    return [{"feature": str(names[j]), "index": int(j), "mean_flagged": float(mean_f[j]),
             "mean_kept": float(mean_k[j]), "std": float(spread[j]), "effect": float(effect[j])}
            for j in order if effect[j] != 0]
