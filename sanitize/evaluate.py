"""Score a detector's report against the ground truth of a poisoned set.

The truth is what ``sanitize attack`` writes (``poison.json``: ``poison`` and ``cover`` paths
relative to the poisoned folder) or any plain list of poison paths (a JSON list, or a text file
with one path per line; ``#`` starts a comment). Cover samples carry a trigger but keep their true
label, so they count as clean: flagging them is a false positive.

Metrics: TPR = flagged poison / poison; FPR = flagged clean / clean; precision = flagged poison /
flagged; AUROC of the per-sample scores (higher = more suspicious) against poison-vs-clean.
Undefined values (no poison, nothing flagged, a single class of samples) are ``None``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from .errors import ParameterError, SanitizeError
from .report.build import read_report


@dataclass
class Truth:
    """Poison and cover paths (POSIX, relative to the inspected folder)."""

    poison: list[str]
    cover: list[str] = field(default_factory=list)


def normalise_path(path: str) -> str:
    """Compare paths the way reports write them: POSIX separators, no leading ``./``."""
    return PurePosixPath(str(path).replace("\\", "/")).as_posix().removeprefix("./")


def _path_list(value: Any, where: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(p, str) for p in value):
        raise SanitizeError(f"{where}: expected a list of relative paths")
    return [normalise_path(p) for p in value]


def load_truth(path: str | Path) -> Truth:
    """Read ``poison.json``, a JSON list of paths, or a text file with one path per line."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ParameterError("truth", path, f"cannot read ({exc})") from None
    try:
        data = json.loads(text)
    except RecursionError:
        raise ParameterError("truth", path, "JSON nested too deeply") from None
    except json.JSONDecodeError:
        lines = (line.split("#", 1)[0].strip() for line in text.splitlines())
        return Truth([normalise_path(line) for line in lines if line])
    if isinstance(data, dict):
        if "poison" not in data:
            raise ParameterError("truth", path, "JSON object without a 'poison' list")
        return Truth(_path_list(data["poison"], f"--truth {path} 'poison'"),
                     _path_list(data.get("cover", []), f"--truth {path} 'cover'"))
    return Truth(_path_list(data, f"--truth {path}"))


def _json_bool(value: Any) -> bool:
    """A JSON ``true``/``false``; anything else (the string ``"false"`` is truthy in Python) is refused."""
    if not isinstance(value, bool):
        raise TypeError(f"'flagged' must be true or false, got {value!r}")
    return value


def evaluate_report(report: dict[str, Any], truth: Truth) -> dict[str, Any]:
    """TPR, FPR, precision, AUROC and counts for ``report`` (a dict as in ``report.json``)."""
    from sklearn.metrics import roc_auc_score

    samples = report.get("samples")
    if not isinstance(samples, list):
        raise SanitizeError("report has no 'samples' list")
    try:
        paths = [normalise_path(s["path"]) for s in samples]
        scores = np.array([float(s["score"]) for s in samples], dtype=np.float64)
        flagged = np.array([_json_bool(s["flagged"]) for s in samples], dtype=bool)
    except SanitizeError:
        raise
    except (KeyError, TypeError, ValueError) as exc:
        raise SanitizeError(f"report samples need 'path', 'score' and 'flagged' ({exc})") from None
    if len(set(paths)) != len(paths):
        raise SanitizeError("report lists the same path more than once")
    known = set(paths)
    missing = [p for p in dict.fromkeys(truth.poison + truth.cover) if p not in known]
    if missing:
        raise SanitizeError(f"{len(missing)} truth path(s) are not in the report (e.g. {missing[0]}): "
                            f"the report and the truth describe different folders")
    poison_set, cover_set = set(truth.poison), set(truth.cover) - set(truth.poison)
    is_poison = np.array([p in poison_set for p in paths], dtype=bool)
    is_cover = np.array([p in cover_set for p in paths], dtype=bool)
    n_poison, n_clean = int(is_poison.sum()), int((~is_poison).sum())
    tp, fp = int((flagged & is_poison).sum()), int((flagged & ~is_poison).sum())
    n_flagged = int(flagged.sum())
    auroc = None
    if n_poison and n_clean:
        if not np.isfinite(scores).all():
            raise SanitizeError("report scores must be finite numbers to compute AUROC")
        auroc = float(roc_auc_score(is_poison, scores))
    return {
        "n_samples": len(paths),
        "n_poison": n_poison,
        "n_clean": n_clean,
        "n_cover": int(is_cover.sum()),
        "n_flagged": n_flagged,
        "true_positives": tp,
        "false_positives": fp,
        "cover_flagged": int((flagged & is_cover).sum()),
        "tpr": tp / n_poison if n_poison else None,
        "fpr": fp / n_clean if n_clean else None,
        "precision": tp / n_flagged if n_flagged else None,
        "auroc": auroc,
    }


def evaluate_files(report_path: str | Path, truth_path: str | Path) -> dict[str, Any]:
    """:func:`evaluate_report` on files; ``report_path`` may be a ``sanitize`` output folder."""
    report_path = Path(report_path)
    if report_path.is_dir():
        report_path = report_path / "report.json"
    report = read_report(report_path)
    metrics = evaluate_report(report, load_truth(truth_path))
    method = report["summary"].get("method") if isinstance(report["summary"], dict) else None
    return {"report": str(report_path), "truth": str(truth_path), "method": method, **metrics}


def format_metric(value: float | None, digits: int = 4) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"
