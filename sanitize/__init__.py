"""sanitize — find and remove backdoor-poisoned samples before training.

Python API (the CLI is a thin layer over it)::

    from sanitize import load_image_folder, load_reserve, ct
    data = load_image_folder("data/")
    reserve = load_reserve("clean/", data)
    result = ct(data, reserve, seed=0)      # DetectionResult: scores, flagged, suspected classes

What a command does end to end (load, detect, gate, write the cleaned copy and the reports) is
:func:`sanitize.run` with :class:`sanitize.RunOptions`.
"""



def _version() -> str:
    """The installed distribution's version: pyproject.toml is the one place it is written."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("sanitize")
    except PackageNotFoundError:  # imported from a source tree that was never installed
        return "0+unknown"


__version__ = _version()

# The public names load on first use (PEP 562), so that importing a light submodule (the console
# script's door, ``sanitize.exits``) does not load torch.
_EXPORTS = {
    "ImageDataset": ".data.images", "from_arrays": ".data.images", "load_image_folder": ".data.images",
    "load_reserve": ".data.images",
    "ASSET": ".detectors.asset", "asset": ".detectors.asset",
    "ConfusionTraining": ".detectors.ct", "ct": ".detectors.ct",
    "DetectionResult": ".result",
    "get_detector": ".detectors",
    "load_features": ".data.rows",
    "RunOptions": ".pipeline", "run": ".pipeline",
}

__all__ = ["ASSET", "ConfusionTraining", "asset", "DetectionResult", "ImageDataset", "RunOptions", "ct",
           "from_arrays", "get_detector", "load_features", "load_image_folder", "load_reserve", "run",
           "__version__"]


def __getattr__(name: str):
    if name in _EXPORTS:
        from importlib import import_module

        value = getattr(import_module(_EXPORTS[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
