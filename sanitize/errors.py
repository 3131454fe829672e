"""User-facing errors.

Anything the user can fix (a bad path, a corrupt image, a wrong option) is raised as
:class:`SanitizeError`. The CLI turns it into one line on stderr and exit code 2; every other
exception is a bug: one line and exit code 3, its traceback in a file (``sanitize.exits``).
"""


class SanitizeError(Exception):
    """Bad usage or bad input: reported as one line, exit code 2."""
