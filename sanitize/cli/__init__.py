"""The command line: a thin layer over the Python API (``sanitize.pipeline``, the detectors).

``root`` holds the ``sanitize`` app, ``ct`` and ``demo``, and ``main``, which turns errors into
one line and an exit code; ``common`` the options every detector command shares; one module per
command group (``asset``, ``scan``, ``attack`` with ``evaluate``, ``bench``, ``features``).
Nothing here imports torch until a command runs.
"""
