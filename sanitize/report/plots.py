"""The small inline-SVG plots of the HTML pages (no script, no external file: the pages must
render offline and under a Content-Security-Policy that forbids any other source)."""

from __future__ import annotations

import html
from typing import Any

import numpy as np

BINS = 30


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


def bench_bars_svg(bench: dict[str, Any], no_defence: str) -> str:
    """Grouped bars, one panel per attack: TPR (filled) and FPR (hatched) per detector."""
    entries = [e for e in bench["summary"] if e["detector"] != no_defence]
    attacks = list(dict.fromkeys(e["attack"] for e in entries))
    detectors = list(dict.fromkeys(e["detector"] for e in entries))
    bar, gap, panel_gap, height, top, left = 14, 10, 40, 200, 30, 40
    panel_w = len(detectors) * (2 * bar + gap)
    width = left + len(attacks) * (panel_w + panel_gap)
    colours = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"]
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height + top + 70}" '
             f'font-family="sans-serif" font-size="11">',
             '<defs><pattern id="hatch" width="4" height="4" patternUnits="userSpaceOnUse">'
             '<path d="M0,4 L4,0" stroke="#333" stroke-width="1"/></pattern></defs>']
    for tick in (0, 0.25, 0.5, 0.75, 1.0):
        y = top + height * (1 - tick)
        parts.append(f'<line x1="{left - 4}" x2="{width}" y1="{y}" y2="{y}" stroke="#ddd"/>'
                     f'<text x="{left - 6}" y="{y + 4}" text-anchor="end">{tick:g}</text>')
    for a, attack in enumerate(attacks):
        x0 = left + a * (panel_w + panel_gap)
        parts.append(f'<text x="{x0 + panel_w / 2}" y="{top - 10}" text-anchor="middle" font-weight="bold">'
                     f'{html.escape(attack)}</text>')
        for d, detector in enumerate(detectors):
            e = next((e for e in entries if e["attack"] == attack and e["detector"] == detector), None)
            x = x0 + d * (2 * bar + gap)
            colour = colours[d % len(colours)]
            for k, metric in enumerate(("tpr", "fpr")):
                value = (e or {}).get(metric)
                h = height * (value or 0.0)
                fill = colour if metric == "tpr" else "url(#hatch)"
                label = f"{detector} {metric.upper()} {'n/a' if value is None else f'{value:.3f}'}"
                parts.append(f'<rect x="{x + k * bar}" y="{top + height - h}" width="{bar - 1}" height="{h}" '
                             f'fill="{fill}" stroke="{colour}"><title>{html.escape(label)}</title></rect>')
            parts.append(f'<text transform="translate({x + bar},{top + height + 8}) rotate(45)" '
                         f'fill="{colour}">{html.escape(detector)}</text>')
    parts.append(f'<text x="{left}" y="{height + top + 66}">filled: TPR, hatched: FPR (mean over seeds)</text>')
    parts.append("</svg>")
    return "\n".join(parts)
