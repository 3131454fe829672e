"""User-facing errors.

Anything the user can fix (a bad path, a corrupt image, a wrong option) is raised as
:class:`SanitizeError`. The CLI turns it into one line on stderr and exit code 2; every other
exception is a bug: one line and exit code 3, its traceback in a file (``sanitize.exits``).
"""


class SanitizeError(ValueError):
    """Bad usage or bad input: reported as one line, exit code 2.

    A :class:`ValueError`, as scikit-learn's estimators raise for a bad parameter, so Python
    callers may catch either. Code that turns other ``ValueError``s into a SanitizeError lets
    this one through unchanged (``except SanitizeError: raise`` first), keeping its message."""
