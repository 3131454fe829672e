"""The HTML pages (report.html, bench.html) are jinja2 templates under ``sanitize/templates``
sharing one base: the same styles, the same Content-Security-Policy (no script, no external
source), every value escaped by the template engine rather than by hand."""

from __future__ import annotations

import json
import math
from functools import cache
from typing import Any

import jinja2
from markupsafe import Markup


def short(value: Any) -> str:
    """Numbers to a short readable form, lists and dicts as compact JSON (cut at 160 characters)."""
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    if isinstance(value, (dict, list)):
        text = json.dumps(value, separators=(",", ":"))
        return text if len(text) <= 160 else text[:157] + "..."
    return str(value)


@cache
def _environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.PackageLoader("sanitize.report", "templates"), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=False, keep_trailing_newline=True)
    env.filters["fmt"] = short
    return env


def render(template: str, **context: Any) -> str:
    """The page ``template`` filled with ``context``; pass pre-built SVG as :func:`svg`."""
    return _environment().get_template(template).render(**context)


def svg(markup: str) -> Markup:
    """Inline SVG this package built from numbers (its labels escaped where they were made)."""
    return Markup(markup)
