"""Detectors: each returns a :class:`sanitize.result.DetectionResult`.

A detector is an estimator-style object: configure it with keyword arguments (every detector takes
``device``, ``seed`` and ``progress``; the rest are its own), then call ``detect(data, reserve)``.
The registry maps CLI names to import paths and to the kinds of data each detector reads, so that
``sanitize bench``, the CLI and the contract test (``tests/test_detector_contract.py``) can
enumerate detectors without importing every one of them at start-up.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from importlib import import_module
from typing import Any, Protocol

from ..errors import SanitizeError
from ..result import DetectionResult


class Detector(Protocol):
    def detect(self, data: Any, reserve: Any) -> DetectionResult: ...


IMAGES, ROWS = "images", "feature rows"  # the ``kind`` of each Dataset (sanitize.data.protocol)


@dataclass(frozen=True)
class Entry:
    """Where a detector lives (``"package.module:Class"``) and which kinds of data it reads."""

    target: str
    kinds: frozenset[str]


_REGISTRY: dict[str, Entry] = {
    "ct": Entry("sanitize.detectors.ct:ConfusionTraining", frozenset({IMAGES, ROWS})),
    "asset": Entry("sanitize.detectors.asset:ASSET", frozenset({IMAGES, ROWS})),
    "spectral": Entry("sanitize.detectors.passive.spectral:SpectralSignatures", frozenset({IMAGES})),
    "activation-clustering": Entry("sanitize.detectors.passive.activation_clustering:ActivationClustering",
                                   frozenset({IMAGES})),
    "strip": Entry("sanitize.detectors.passive.strip:STRIP", frozenset({IMAGES})),
    "scan": Entry("sanitize.detectors.passive.scan:SCAn", frozenset({IMAGES})),
    "spectre": Entry("sanitize.detectors.passive.spectre:SPECTRE", frozenset({IMAGES})),
}


def register_detector(name: str, target: str, kinds: Iterable[str] = (IMAGES,)) -> None:
    """Register ``name`` -> ``"package.module:Class"`` reading ``kinds`` (imported on first use)."""
    _REGISTRY[name] = Entry(target, frozenset(kinds))


def available_detectors(kind: str | None = None) -> list[str]:
    """Registered names, or only those that read data of ``kind`` (``"images"``, ``"feature rows"``)."""
    return sorted(name for name, entry in _REGISTRY.items() if kind is None or kind in entry.kinds)


def data_kinds(name: str) -> frozenset[str]:
    """The kinds of data the detector registered as ``name`` reads."""
    return _entry(name).kinds


def _entry(name: str) -> Entry:
    if name not in _REGISTRY:
        raise SanitizeError(f"unknown detector {name!r}; choose from {', '.join(available_detectors())}")
    return _REGISTRY[name]


def detector_class(name: str) -> type:
    """The detector class registered as ``name`` (to inspect which settings it takes)."""
    module, _, attr = _entry(name).target.partition(":")
    return getattr(import_module(module), attr)


def get_detector(name: str, **settings: Any) -> Detector:
    """A configured detector by registry name, e.g. ``get_detector("ct", seed=1, device="cpu")``."""
    return detector_class(name)(**settings)
