"""The command line: a thin layer over the Python API (``sanitize.pipeline``, the detectors).

``app`` holds the ``sanitize`` app, ``ct`` and ``demo`` and turns errors into one line and an
exit code; ``common`` the options every detector command shares; one module per command group
(``asset``, ``scan``, ``attack`` with ``evaluate``, ``bench``, ``features``). Nothing here
imports torch until a command runs.
"""

__all__ = ["app", "main"]


def __getattr__(name: str):
    """``app`` and ``main`` on first use, so that ``python -m sanitize.cli.app`` runs one copy."""
    if name in __all__:
        from . import app as module

        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
