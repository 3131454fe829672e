"""Detectors: each returns a :class:`sanitize.result.DetectionResult`.

A detector is an estimator-style object: configure it with keyword arguments (every detector takes
``device``, ``seed`` and ``progress``; the rest are its own), then call ``detect(data, reserve)``.
The registry maps CLI names to import paths so that ``sanitize bench`` and the CLI can enumerate
detectors without importing every one of them at start-up.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any, Protocol

from ..errors import SanitizeError
from ..result import DetectionResult


class Detector(Protocol):
    def detect(self, data: Any, reserve: Any) -> DetectionResult: ...


_REGISTRY: dict[str, str] = {
    "ct": "sanitize.detectors.ct:ConfusionTraining",
    "asset": "sanitize.detectors.asset:ASSET",
    "spectral": "sanitize.detectors.spectral:SpectralSignatures",
    "activation-clustering": "sanitize.detectors.activation_clustering:ActivationClustering",
    "strip": "sanitize.detectors.strip:STRIP",
    "scan": "sanitize.detectors.scan:SCAn",
    "spectre": "sanitize.detectors.spectre:SPECTRE",
}


def register_detector(name: str, target: str) -> None:
    """Register ``name`` -> ``"package.module:Class"`` (the class is imported on first use)."""
    _REGISTRY[name] = target


def available_detectors() -> list[str]:
    return sorted(_REGISTRY)


def detector_class(name: str) -> type:
    """The detector class registered as ``name`` (to inspect which settings it takes)."""
    if name not in _REGISTRY:
        raise SanitizeError(f"unknown detector {name!r}; choose from {', '.join(available_detectors())}")
    module, _, attr = _REGISTRY[name].partition(":")
    return getattr(import_module(module), attr)


def get_detector(name: str, **settings: Any) -> Detector:
    """A configured detector by registry name, e.g. ``get_detector("ct", seed=1, device="cpu")``."""
    return detector_class(name)(**settings)
