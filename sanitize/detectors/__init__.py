"""Detectors: each returns a :class:`sanitize.result.DetectionResult`."""
