"""The one result type every detector returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class DetectionResult:
    """Per-sample verdicts of one detector run on one dataset.

    ``scores`` are comparable within a run only, higher meaning more suspicious; ``flagged`` is the
    detector's decision. ``class_stats`` holds one dict per class with whatever class-level
    evidence the method computed (for CT: the likelihood-ratio statistic), so reports can show
    *why* a class was or was not suspected.
    """

    method: str
    scores: np.ndarray
    flagged: np.ndarray
    suspected_classes: list[int]
    timings: dict[str, float] = field(default_factory=dict)
    seed: int = 0
    device: str = "cpu"
    settings: dict[str, Any] = field(default_factory=dict)
    class_stats: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.scores = np.asarray(self.scores, dtype=np.float64)
        self.flagged = np.asarray(self.flagged, dtype=bool)
        if self.scores.shape != self.flagged.shape:
            raise ValueError("scores and flagged must have one entry per sample")

    def finish(self, *, timings: dict[str, float], seed: int, device: str, settings: dict[str, Any],
               notes_first: list[str] | tuple[str, ...] = ()) -> DetectionResult:
        """Every detector's epilogue: how the run was made (timings, seed, device, settings), so that
        reports read the same fields from every detector. Settings the decision already recorded
        (e.g. the set-wide test) are kept after the detector's own; ``notes_first`` go before the
        decision's notes (what was found about the inputs comes first)."""
        self.timings, self.seed, self.device = dict(timings), seed, device
        self.settings = {**settings, **self.settings}
        self.notes[:0] = list(notes_first)
        return self

    @property
    def n_flagged(self) -> int:
        return int(self.flagged.sum())

    @property
    def flagged_indices(self) -> np.ndarray:
        return np.flatnonzero(self.flagged)

    @property
    def kept_indices(self) -> np.ndarray:
        return np.flatnonzero(~self.flagged)

    @property
    def seconds(self) -> float:
        return float(sum(self.timings.values()))
