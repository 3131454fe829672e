"""report.html: a self-contained audit page a person can read offline.

The page is built from the report dict (``sanitize.report.build.build_report``) plus the dataset's own
arrays, never from a detector object, so every detector gets the same page. It contains no
script and fetches nothing: styles are inline, images are ``data:`` URIs, histograms are inline
SVG, and a Content-Security-Policy forbids any other source, so the page renders the same from a
laptop, a CI artifact or an air-gapped machine.

Sections (their ``id`` attributes are stable; tests and links rely on them):

* ``summary``: method, counts, suspected target classes, time, seed, device, versions, settings,
  notes and the CI gate verdict.
* ``classes``: the per-class evidence the detector reported (``report["classes"]``).
* ``histograms``: per class (``hist-<i>``), the score histogram split into kept and flagged
  samples, with the decision threshold (see :func:`sanitize.report.evidence.class_threshold`).
* ``samples`` (image data): the top-k flagged thumbnails by score (``flagged-grid``) and kept
  ones of the same classes for contrast (``kept-grid``).
* ``triggers`` (image data): a *recovered trigger* per suspected class (``trigger-<i>``), see
  :func:`sanitize.report.evidence.recovered_trigger`.
* ``features`` (feature data): the features whose values most distinguish flagged rows, see
  :func:`sanitize.report.evidence.feature_contrast`.

The numbers come from :mod:`sanitize.report.evidence`, the plots from :mod:`sanitize.report.plots`, the markup
from the ``report.html`` template (:mod:`sanitize.report.pages`).
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .evidence import (
    class_names,
    class_threshold,
    difference_stats,
    display_difference,
    feature_contrast,
    recovered_trigger,
)
from .pages import render, svg
from .plots import histogram_svg

TOP_K = 24
N_KEPT = 8


def png_data_uri(image: np.ndarray) -> str:
    """A C x H x W uint8 image (1 or 3 channels; others: the first) as a PNG ``data:`` URI."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        image = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    if image.shape[0] >= 3:
        pil = Image.fromarray(np.ascontiguousarray(image[:3].transpose(1, 2, 0)), "RGB")
    else:
        pil = Image.fromarray(np.ascontiguousarray(image[0]), "L")
    buf = io.BytesIO()
    pil.save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _class_rows(report: dict[str, Any], names: list[str], counts: dict[str, tuple[int, int]]
                ) -> tuple[list[str], list[dict[str, Any]]]:
    """The classes table: the columns every detector has, then whatever evidence it reported."""
    extra: list[str] = []
    for entry in report.get("classes", []):
        extra += [k for k in entry if k not in ("name", "suspected", "n_samples") and k not in extra]
    suspected = set(report["summary"]["suspected_classes"])
    by_name = {c["name"]: c for c in report.get("classes", [])}
    rows = [{"name": name, "n": counts.get(name, (0, 0))[0], "flagged": counts.get(name, (0, 0))[1],
             "suspected": name in suspected, "cells": [by_name.get(name, {}).get(k, "") for k in extra]}
            for name in names]
    return extra, rows


def _histograms(report: dict[str, Any], names: list[str], scores: np.ndarray, flagged: np.ndarray,
                labels: np.ndarray) -> list[dict[str, Any]]:
    finite = scores[np.isfinite(scores)]
    lo, hi = (float(finite.min()), float(finite.max())) if len(finite) else (0.0, 1.0)
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    out = []
    for i, name in enumerate(names):
        members = labels == i
        threshold, source = class_threshold(report, name)
        out.append({"name": name, "n": int(members.sum()), "flagged": int(flagged[members].sum()),
                    "svg": svg(histogram_svg(scores[members], flagged[members], lo, hi, threshold)),
                    "caption": f"threshold {threshold:.4g} ({source})" if threshold is not None else source})
    return out


def _thumb(image: np.ndarray, sample: dict[str, Any], flagged: bool) -> dict[str, Any]:
    return {"uri": png_data_uri(image), "path": sample["path"], "label": sample["label"], "score": sample["score"],
            "flagged": flagged}


def _samples(report: dict[str, Any], images: np.ndarray, scores: np.ndarray, flagged: np.ndarray,
             labels: np.ndarray, targets: list[int], top_k: int, n_kept: int) -> dict[str, Any]:
    samples = report["samples"]
    flagged_idx = np.flatnonzero(flagged)
    top = flagged_idx[np.argsort(-scores[flagged_idx], kind="stable")][:top_k]
    pool = np.flatnonzero(~flagged & np.isin(labels, targets)) if targets else np.flatnonzero(~flagged)
    if len(pool) == 0:
        pool = np.flatnonzero(~flagged)
    pool = pool[np.argsort(-scores[pool], kind="stable")]
    # Evenly spaced by score rank: from the kept samples nearest the threshold to the most typical.
    contrast = pool[np.unique(np.linspace(0, len(pool) - 1, min(n_kept, len(pool))).astype(int))] if len(
        pool) else pool
    return {"top": [_thumb(images[i], samples[i], True) for i in top], "n_flagged": len(flagged_idx),
            "kept": [_thumb(images[i], samples[i], False) for i in contrast],
            "where": "of the suspected classes" if targets else ""}


def _triggers(images: np.ndarray, flagged: np.ndarray, labels: np.ndarray, names: list[str],
              targets: list[int]) -> list[dict[str, Any]]:
    blocks = []
    for t in targets:
        views = recovered_trigger(images, labels, flagged, t)
        if views["poison_mean"] is None:
            continue
        figures = [{"title": "mean of flagged", "uri": png_data_uri(views["poison_mean"]), "stat": None}]
        for key, title in (("vs_others", "flagged − kept of other classes"),
                           ("vs_same", "flagged − kept of this class")):
            if views[key] is not None:
                peak, spread = difference_stats(views[key])
                figures.append({"title": title, "uri": png_data_uri(display_difference(views[key])),
                                "stat": f"peak |Δ| {peak:.0f}/255; {100 * spread:.1f} % of pixels above half of it"})
        blocks.append({"index": t, "name": names[t], "n_flagged": int((flagged & (labels == t)).sum()),
                       "figures": figures})
    return blocks


def build_html(report: dict[str, Any], images: np.ndarray | None = None, *, features: np.ndarray | None = None,
               feature_names: Sequence[str] | None = None, top_k: int = TOP_K, n_kept: int = N_KEPT) -> str:
    """The page for ``report``; ``images`` (N x C x H x W uint8) or ``features`` (N x D) are the
    inspected dataset's arrays in the report's sample order."""
    samples = report["samples"]
    n = len(samples)
    for what, arr in (("images", images), ("features", features)):
        if arr is not None and len(arr) != n:
            raise ValueError(f"{what} has {len(arr)} rows but the report has {n} samples")
    names = class_names(report)
    index = {name: i for i, name in enumerate(names)}
    labels = np.array([index[s["label"]] for s in samples], dtype=np.int64)
    scores = np.array([s["score"] for s in samples], dtype=np.float64)
    flagged = np.array([s["flagged"] for s in samples], dtype=bool)
    counts = {name: (int((labels == i).sum()), int(flagged[labels == i].sum())) for i, name in enumerate(names)}
    targets = [index[c] for c in report["summary"]["suspected_classes"] if c in index]
    if not targets and flagged.any():  # a detector that names no class: the class with the most flags
        targets = [int(np.bincount(labels[flagged], minlength=len(names)).argmax())]
    class_columns, classes = _class_rows(report, names, counts)
    context: dict[str, Any] = {"samples": None, "triggers": None, "features": None}
    if images is not None:
        images = np.asarray(images)
        context["samples"] = _samples(report, images, scores, flagged, labels, targets, top_k, n_kept)
        context["triggers"] = _triggers(images, flagged, labels, names, targets)
    if features is not None:
        context["features"] = feature_contrast(features, feature_names, flagged)
    s = report["summary"]
    global_test = (s.get("settings") or {}).get("global_test")  # unlabelled data: one test, no classes
    nav = ["summary", "global" if global_test else "classes", "histograms"] + [
        k for k in ("samples", "triggers", "features") if context[k] is not None]
    return render("report.html", title=f"sanitize {s['method']}: {s['n_flagged']} of {s['n_samples']} flagged",
                  subtitle=f"suspected target classes: {', '.join(s['suspected_classes']) or 'none'} · "
                           f"{s.get('input') or ''}",
                  nav=nav, s=s, gate=s.get("gate"), class_columns=class_columns, classes=classes,
                  global_test=global_test,
                  histograms=_histograms(report, names, scores, flagged, labels),
                  version=s.get("versions", {}).get("sanitize", ""), schema_version=report.get("schema_version"),
                  **context)


def write_html_report(report: dict[str, Any], directory: Path, images: Any = None, **kwargs: Any) -> Path:
    """Write ``report.html`` into ``directory``; ``images`` may be a torch tensor or a numpy array."""
    if images is not None and hasattr(images, "detach"):
        images = images.detach().cpu().numpy()
    path = Path(directory) / "report.html"
    path.write_text(build_html(report, images, **kwargs), encoding="utf-8")
    return path
