"""What a run leaves for people and pipelines: ``report.json`` and ``flagged.csv`` (``build``),
and ``report.html`` (``html``: the numbers from ``evidence``, the plots from ``plots``, the markup
from ``templates/`` through ``pages``)."""

from .build import build_report, library_versions, read_report, report_schema, write_report

__all__ = ["build_report", "library_versions", "read_report", "report_schema", "write_report"]
