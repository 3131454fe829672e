"""report.html: a self-contained audit page a person can read offline.

The page is built from the report dict (``sanitize.report.build_report``) plus the dataset's own
arrays, never from a detector object, so every detector gets the same page. It contains no
script and fetches nothing: styles are inline, images are ``data:`` URIs, histograms are inline
SVG, and a Content-Security-Policy forbids any other source, so the page renders the same from a
laptop, a CI artifact or an air-gapped machine.

Sections (their ``id`` attributes are stable; tests and links rely on them):

* ``summary``: method, counts, suspected target classes, time, seed, device, versions, settings,
  notes and the CI gate verdict.
* ``classes``: the per-class evidence the detector reported (``report["classes"]``).
* ``histograms``: per class (``hist-<i>``), the score histogram split into kept and flagged
  samples, with the decision threshold (see :func:`class_threshold`).
* ``samples`` (image data): the top-k flagged thumbnails by score (``flagged-grid``) and kept
  ones of the same classes for contrast (``kept-grid``).
* ``triggers`` (image data): a *recovered trigger* per suspected class (``trigger-<i>``), see
  :func:`recovered_trigger`.
* ``features`` (feature data): the features whose values most distinguish flagged rows, see
  :func:`feature_contrast`.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

TOP_K = 24
N_KEPT = 8
BINS = 30
TOP_FEATURES = 15

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1d2330;background:#f6f7f9}
header{background:#1d2330;color:#fff;padding:14px 24px}
header h1{margin:0;font-size:20px}
header p{margin:4px 0 0;color:#c9cfdb}
nav{padding:8px 24px;background:#e9ecf2;font-size:13px}
nav a{margin-right:14px;color:#27466e}
main{padding:8px 24px 32px;max-width:1200px}
section{background:#fff;border:1px solid #dde1e8;border-radius:6px;padding:12px 18px;margin:14px 0}
h2{font-size:17px;margin:4px 0 10px}
h3{font-size:14px;margin:10px 0 6px}
table{border-collapse:collapse;font-size:13px}
th,td{border-bottom:1px solid #e4e7ec;padding:3px 10px 3px 0;text-align:left;vertical-align:top}
td.num{text-align:right;font-variant-numeric:tabular-nums}
tr.suspected td{background:#fdecec}
.kv th{color:#5a6270;font-weight:500;white-space:nowrap}
.pass{color:#17713a;font-weight:600}.fail{color:#b3261e;font-weight:600}
.muted{color:#6b7280}
code{font-size:12px;background:#f1f3f6;padding:0 3px;border-radius:3px}
.hists{display:flex;flex-wrap:wrap;gap:10px}
.hist{border:1px solid #e4e7ec;border-radius:4px;padding:4px 6px}
.hist h3{margin:2px 0}
.grid{display:flex;flex-wrap:wrap;gap:8px}
figure{margin:0;width:92px;font-size:11px;text-align:center;overflow-wrap:anywhere}
figure img{width:84px;height:84px;image-rendering:pixelated;border:2px solid #dde1e8;background:#000}
figure.flagged img{border-color:#d33}
.trigger{display:flex;gap:14px;flex-wrap:wrap;align-items:flex-start;margin-bottom:8px}
.trigger figure{width:140px}
.trigger figure img{width:128px;height:128px}
.legend span{display:inline-block;width:10px;height:10px;margin:0 4px 0 10px;vertical-align:middle}
"""

_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _fmt(value: Any) -> str:
    """Numbers to a short readable form; everything else escaped as text."""
    if isinstance(value, bool) or value is None:
        return _e(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return _e(value)
        return _e(f"{value:.4g}")
    if isinstance(value, (dict, list)):
        text = json.dumps(value, separators=(",", ":"))
        return _e(text if len(text) <= 160 else text[:157] + "...")
    return _e(value)


# ---------------------------------------------------------------- numbers behind the page


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


# ---------------------------------------------------------------- rendering


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


def histogram_svg(scores: np.ndarray, flagged: np.ndarray, lo: float, hi: float,
                  threshold: float | None, bins: int = BINS) -> str:
    """Kept (blue) and flagged (red) samples stacked per score bin, threshold as a dashed line."""
    width, height, left, bottom, top = 300, 120, 34, 18, 8
    plot_w, plot_h = width - left - 6, height - bottom - top
    edges = np.linspace(lo, hi, bins + 1)
    kept_n = np.histogram(np.clip(scores[~flagged], lo, hi), edges)[0]
    flag_n = np.histogram(np.clip(scores[flagged], lo, hi), edges)[0]
    peak = max(1, int((kept_n + flag_n).max()))
    bar_w = plot_w / bins
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
             f'viewBox="0 0 {width} {height}">',
             f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" stroke="#999"/>',
             f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + plot_h}" stroke="#999"/>']
    for b in range(bins):
        x = left + b * bar_w
        base = top + plot_h
        for count, colour, what in ((kept_n[b], "#6b8fbf", "kept"), (flag_n[b], "#d33", "flagged")):
            if count == 0:
                continue
            h = plot_h * count / peak
            base -= h
            parts.append(f'<rect x="{x:.1f}" y="{base:.1f}" width="{max(bar_w - 0.6, 0.6):.1f}" '
                         f'height="{h:.1f}" fill="{colour}"><title>{count} {what}, score '
                         f'{edges[b]:.3g} to {edges[b + 1]:.3g}</title></rect>')
    parts.append(f'<text x="{left - 3}" y="{top + 8}" font-size="10" text-anchor="end">{peak}</text>')
    parts.append(f'<text x="{left - 3}" y="{top + plot_h}" font-size="10" text-anchor="end">0</text>')
    parts.append(f'<text x="{left}" y="{height - 4}" font-size="10">{lo:.3g}</text>')
    parts.append(f'<text x="{left + plot_w}" y="{height - 4}" font-size="10" text-anchor="end">{hi:.3g}</text>')
    if threshold is not None and lo <= threshold <= hi:
        tx = left + plot_w * (threshold - lo) / (hi - lo)
        anchor = "end" if tx > left + plot_w / 2 else "start"
        dx = -3 if anchor == "end" else 3
        parts.append(f'<line class="threshold" x1="{tx:.1f}" y1="{top}" x2="{tx:.1f}" y2="{top + plot_h}" '
                     f'stroke="#111" stroke-dasharray="4 3"/>')
        parts.append(f'<text x="{tx + dx:.1f}" y="{top + 18}" font-size="10" text-anchor="{anchor}">'
                     f'threshold {threshold:.3g}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _kv_table(rows: Sequence[tuple[str, str]]) -> str:
    body = "".join(f"<tr><th>{_e(k)}</th><td>{v}</td></tr>" for k, v in rows)
    return f'<table class="kv">{body}</table>'


def _summary_section(report: dict[str, Any]) -> str:
    s = report["summary"]
    gate = s.get("gate")
    if gate is None:
        gate_html = '<span class="muted">not evaluated (report built outside the CLI)</span>'
    else:
        verdict = '<span class="pass">passed</span>' if gate["passed"] else '<span class="fail">failed</span>'
        reasons = "; ".join(gate.get("reasons", []))
        gate_html = (f"{verdict} (exit code {_e(gate['exit_code'])}; max flagged fraction "
                     f"{_fmt(gate['max_flagged_fraction'])}, fail on detect {_e(gate['fail_on_detect'])})"
                     + (f": {_e(reasons)}" if reasons else ""))
    suspected = ", ".join(s["suspected_classes"]) or "none"
    settings = s.get("settings") or {}
    rows = [("method", f"<b>{_e(s['method'])}</b>"),
            ("samples", _e(s["n_samples"])),
            ("flagged", f"{_e(s['n_flagged'])} ({100 * s['flagged_fraction']:.2f} %)"),
            ("suspected target classes", _e(suspected)),
            ("gate", gate_html),
            ("time", f"{s['seconds']:.1f} s"),
            ("seed", _e(s["seed"])),
            ("device", _e(s["device"])),
            ("input", _e(s.get("input") or "(in memory)")),
            ("versions", _e(", ".join(f"{k} {v}" for k, v in s.get("versions", {}).items()) or "–")),
            ("settings", "<br>".join(f"<code>{_e(k)}</code> = {_fmt(v)}" for k, v in settings.items()) or "–")]
    notes = "".join(f"<li>{_e(n)}</li>" for n in s.get("notes", []))
    timings = "".join(f"<tr><td>{_e(k)}</td><td class='num'>{v:.2f}</td></tr>" for k, v in s.get("timings", {}).items())
    return (f'<section id="summary"><h2>Summary</h2>{_kv_table(rows)}'
            + (f"<h3>Notes</h3><ul>{notes}</ul>" if notes else "")
            + (f"<details><summary>Timings (seconds)</summary><table>{timings}</table></details>"
               if timings else "")
            + "</section>")


def _classes_section(report: dict[str, Any], names: list[str], counts: dict[str, tuple[int, int]]) -> str:
    extra: list[str] = []
    for entry in report.get("classes", []):
        extra += [k for k in entry if k not in ("name", "suspected", "n_samples") and k not in extra]
    suspected = set(report["summary"]["suspected_classes"])
    head = "".join(f"<th>{_e(k)}</th>" for k in ["class", "samples", "flagged", "suspected", *extra])
    by_name = {c["name"]: c for c in report.get("classes", [])}
    rows = []
    for name in names:
        entry = by_name.get(name, {})
        n, f = counts.get(name, (0, 0))
        cells = [f"<td>{_e(name)}</td>", f"<td class='num'>{n}</td>", f"<td class='num'>{f}</td>",
                 f"<td>{'yes' if name in suspected else 'no'}</td>"]
        cells += [f"<td class='num'>{_fmt(entry.get(k, ''))}</td>" for k in extra]
        rows.append(f'<tr class="{"suspected" if name in suspected else ""}">{"".join(cells)}</tr>')
    return (f'<section id="classes"><h2>Classes</h2><p class="muted">Per-class evidence the detector '
            f'reported; suspected target classes are highlighted.</p>'
            f'<table><tr>{head}</tr>{"".join(rows)}</table></section>')


def _histograms_section(report: dict[str, Any], names: list[str], scores: np.ndarray, flagged: np.ndarray,
                        labels: np.ndarray) -> str:
    finite = scores[np.isfinite(scores)]
    lo, hi = (float(finite.min()), float(finite.max())) if len(finite) else (0.0, 1.0)
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    blocks = []
    for i, name in enumerate(names):
        members = labels == i
        threshold, source = class_threshold(report, name)
        svg = histogram_svg(scores[members], flagged[members], lo, hi, threshold)
        caption = (f"threshold {threshold:.4g} ({source})" if threshold is not None else source)
        blocks.append(f'<div class="hist" id="hist-{i}"><h3>{_e(name)} <span class="muted">'
                      f'({int(members.sum())} samples, {int(flagged[members].sum())} flagged)</span></h3>'
                      f'{svg}<div class="muted">{_e(caption)}</div></div>')
    return ('<section id="histograms"><h2>Score histograms per class</h2>'
            '<p class="legend muted">Higher score = more suspicious; one x axis for all classes.'
            '<span style="background:#6b8fbf"></span>kept<span style="background:#d33"></span>flagged '
            '&nbsp;dashed line: threshold</p>'
            f'<div class="hists">{"".join(blocks)}</div></section>')


def _thumb(image: np.ndarray, sample: dict[str, Any], flagged: bool) -> str:
    return (f'<figure class="{"flagged" if flagged else "kept"}"><img src="{png_data_uri(image)}" '
            f'alt="{_e(sample["path"])}" title="{_e(sample["path"])}"><figcaption>{_e(sample["label"])} · '
            f'{sample["score"]:.3g}<br><span class="muted">{_e(sample["path"])}</span></figcaption></figure>')


def _samples_section(report: dict[str, Any], images: np.ndarray, scores: np.ndarray, flagged: np.ndarray,
                     labels: np.ndarray, targets: list[int], top_k: int, n_kept: int) -> str:
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
    flagged_html = "".join(_thumb(images[i], samples[i], True) for i in top) or "<p>Nothing was flagged.</p>"
    kept_html = "".join(_thumb(images[i], samples[i], False) for i in contrast) or "<p>Nothing was kept.</p>"
    where = "of the suspected classes" if targets else ""
    return (f'<section id="samples"><h2>Samples</h2>'
            f'<h3>Top {len(top)} of {len(flagged_idx)} flagged, by score</h3>'
            f'<div class="grid" id="flagged-grid">{flagged_html}</div>'
            f'<h3>Kept {where} for contrast (from highest score to lowest)</h3>'
            f'<div class="grid" id="kept-grid">{kept_html}</div></section>')


def _triggers_section(images: np.ndarray, flagged: np.ndarray, labels: np.ndarray, names: list[str],
                      targets: list[int]) -> str:
    blocks = []
    for t in targets:
        views = recovered_trigger(images, labels, flagged, t)
        if views["poison_mean"] is None:
            continue
        figures = [("mean of flagged", views["poison_mean"], None)]
        for key, title in (("vs_others", "flagged − kept of other classes"),
                           ("vs_same", "flagged − kept of this class")):
            if views[key] is not None:
                peak, spread = difference_stats(views[key])
                figures.append((title, display_difference(views[key]),
                                f"peak |Δ| {peak:.0f}/255; {100 * spread:.1f} % of pixels above half of it"))
        cells = "".join(f'<figure><img src="{png_data_uri(img)}" alt="{_e(title)}"><figcaption>{_e(title)}'
                        + (f'<br><span class="muted">{_e(stat)}</span>' if stat else "") + "</figcaption></figure>"
                        for title, img, stat in figures)
        n = int((flagged & (labels == t)).sum())
        blocks.append(f'<div id="trigger-{t}"><h3>{_e(names[t])} <span class="muted">({n} flagged)</span></h3>'
                      f'<div class="trigger">{cells}</div></div>')
    body = "".join(blocks) or "<p>No flagged samples, so nothing to recover.</p>"
    return ('<section id="triggers"><h2>Recovered trigger</h2><p class="muted">What the flagged samples of a '
            'suspected class have in common: their mean minus the mean of kept images of the other classes '
            '(dirty-label poison is made from those) and of the same class (clean-label poison is). Shown as '
            '|difference| scaled so the largest is white.</p>' + body + "</section>")


def _features_section(features: np.ndarray, feature_names: Sequence[str] | None, flagged: np.ndarray) -> str:
    rows = feature_contrast(features, feature_names, flagged)
    if not rows:
        body = "<p>No flagged rows (or nothing kept), so nothing to contrast.</p>"
    else:
        body = ("<table><tr><th>feature</th><th>column</th><th>mean flagged</th><th>mean kept</th><th>std (all)"
                "</th><th>effect</th></tr>"
                + "".join(f"<tr><td>{_e(r['feature'])}</td><td class='num'>{r['index']}</td>"
                          f"<td class='num'>{r['mean_flagged']:.4g}</td><td class='num'>{r['mean_kept']:.4g}</td>"
                          f"<td class='num'>{r['std']:.4g}</td><td class='num'>{r['effect']:+.3g}</td></tr>"
                          for r in rows) + "</table>")
    return ('<section id="features"><h2>Features that distinguish flagged rows</h2><p class="muted">Effect = '
            '(mean flagged − mean kept) / standard deviation over all rows; largest |effect| first.</p>'
            + body + "</section>")


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

    sections = [_summary_section(report), _classes_section(report, names, counts),
                _histograms_section(report, names, scores, flagged, labels)]
    if images is not None:
        images = np.asarray(images)
        sections += [_samples_section(report, images, scores, flagged, labels, targets, top_k, n_kept),
                     _triggers_section(images, flagged, labels, names, targets)]
    if features is not None:
        sections.append(_features_section(features, feature_names, flagged))
    s = report["summary"]
    ids = [sec.split('id="', 1)[1].split('"', 1)[0] for sec in sections]
    nav = "".join(f'<a href="#{i}">{i}</a>' for i in ids)
    title = f"sanitize {s['method']}: {s['n_flagged']} of {s['n_samples']} flagged"
    version = s.get("versions", {}).get("sanitize", "")
    return ("<!DOCTYPE html>\n"
            f'<html lang="en"><head><meta charset="utf-8">'
            f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>"
            f"<header><h1>{_e(title)}</h1><p>suspected target classes: "
            f"{_e(', '.join(s['suspected_classes']) or 'none')} · {_e(s.get('input') or '')}</p></header>"
            f"<nav>{nav}</nav><main>{''.join(sections)}</main>"
            f'<footer class="muted" style="padding:0 24px 16px">sanitize {_e(version)} · report schema '
            f'{_e(report.get("schema_version"))}</footer></body></html>\n')


def write_html_report(report: dict[str, Any], directory: Path, images: Any = None, **kwargs: Any) -> Path:
    """Write ``report.html`` into ``directory``; ``images`` may be a torch tensor or a numpy array."""
    if images is not None and hasattr(images, "detach"):
        images = images.detach().cpu().numpy()
    path = Path(directory) / "report.html"
    path.write_text(build_html(report, images, **kwargs), encoding="utf-8")
    return path
