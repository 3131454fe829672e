"""report.json and flagged.csv: what was flagged, why, and how the run was made.

The JSON schema is stable, documented in ``docs/report.md`` and shipped as a JSON Schema file
(``sanitize/schemas/report.schema.json``, see :func:`report_schema`); CI pipelines read ``summary``
and the exit code, people read ``flagged.csv`` (most suspicious first) and ``report.html``.
"""

from __future__ import annotations

import csv
import json
import platform
from pathlib import Path
from typing import Any

import numpy as np

from ..result import DetectionResult

SCHEMA_VERSION = 1


def library_versions() -> dict[str, str]:
    import sklearn
    import torch
    import torchvision

    from .. import __version__

    return {"sanitize": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "torchvision": torchvision.__version__, "numpy": np.__version__,
            "scikit-learn": sklearn.__version__}


UNLABELLED = "unlabelled"


def build_report(dataset: Any, result: DetectionResult,
                 extra_summary: dict[str, Any] | None = None) -> dict[str, Any]:
    """The report of ``result`` on ``dataset`` (an ImageDataset or a FeatureDataset).

    Rows labelled -1 (unlabelled feature rows) get the label ``"unlabelled"`` and
    ``"inspected": false``; ``summary.n_not_inspected`` counts them (0 for image folders).
    """
    labels = dataset.labels.cpu().numpy()
    not_inspected = labels < 0
    summary = {
        "method": result.method,
        "n_samples": len(dataset),
        "n_not_inspected": int(not_inspected.sum()),
        "n_flagged": result.n_flagged,
        "flagged_fraction": result.n_flagged / max(1, len(dataset)),
        "suspected_classes": [dataset.classes[c] for c in result.suspected_classes],
        "seconds": round(result.seconds, 3),
        "timings": {k: round(v, 3) for k, v in result.timings.items()},
        "seed": result.seed,
        "device": result.device,
        "versions": library_versions(),
        "settings": result.settings,
        "input": str(dataset.root) if dataset.root is not None else None,
        "notes": list(dataset.notes) + list(result.notes),
        **(extra_summary or {}),
    }
    samples = [
        {"path": dataset.paths[i], "label": dataset.classes[int(labels[i])],
         "score": float(result.scores[i]), "flagged": bool(result.flagged[i])}
        if not not_inspected[i] else
        {"path": dataset.paths[i], "label": UNLABELLED, "score": float(result.scores[i]), "flagged": False,
         "inspected": False}
        for i in range(len(dataset))
    ]
    classes = [{"name": dataset.classes[s["class"]], **{k: v for k, v in s.items() if k != "class"}}
               for s in result.class_stats]
    return {"schema_version": SCHEMA_VERSION, "summary": summary, "classes": classes,
            "samples": samples}


def write_report(report: dict[str, Any], directory: Path) -> None:
    """Write report.json and flagged.csv into ``directory`` (a staging folder)."""
    with open(directory / "report.json", "w", encoding="utf-8") as f:
        json.dump(report, f, indent=1)
        f.write("\n")
    flagged = sorted((s for s in report["samples"] if s["flagged"]), key=lambda s: -s["score"])
    with open(directory / "flagged.csv", "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label", "score"])
        for s in flagged:
            writer.writerow([s["path"], s["label"], f"{s['score']:.6g}"])


def report_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of report.json, as shipped inside the package."""
    from importlib.resources import files

    return json.loads(files("sanitize").joinpath("schemas/report.schema.json").read_text(encoding="utf-8"))


def read_report(path: str | Path) -> dict[str, Any]:
    from ..errors import SanitizeError

    try:
        with open(path, encoding="utf-8") as f:
            report = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SanitizeError(f"{path}: cannot read report ({exc})") from None
    except RecursionError:
        raise SanitizeError(f"{path}: cannot read report (JSON nested too deeply)") from None
    if not isinstance(report, dict) or "samples" not in report or "summary" not in report:
        raise SanitizeError(f"{path}: not a sanitize report (no 'summary'/'samples')")
    return report
