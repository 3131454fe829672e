"""User-facing errors.

Anything the user can fix (a bad path, a corrupt image, a wrong option) is raised as
:class:`SanitizeError`. The CLI turns it into one line on stderr and exit code 2; every other
exception is a bug: one line and exit code 3, its traceback in a file (``sanitize.exits``).

A parameter outside its domain is a :class:`ParameterError`: it names the Python parameter
(``alpha=2.0: ...``) to a caller of the library and the command-line flag (``--alpha 2.0: ...``)
on the command line, so neither reader has to translate.
"""

from __future__ import annotations

from pathlib import PurePath


class SanitizeError(ValueError):
    """Bad usage or bad input: reported as one line, exit code 2.

    A :class:`ValueError`, as scikit-learn's estimators raise for a bad parameter, so Python
    callers may catch either. Code that turns other ``ValueError``s into a SanitizeError lets
    this one through unchanged (``except SanitizeError: raise`` first), keeping its message."""

    def command_line(self) -> str:
        """The line the command line prints (the same message, unless a subclass names a flag)."""
        return str(self)


class ParameterError(SanitizeError):
    """``parameter`` was given ``value``, which is outside its domain for ``reason``.

    ``flag`` is the command-line spelling when it is not ``--`` + the parameter with dashes.
    """

    def __init__(self, parameter: str, value: object, reason: str, *, flag: str | None = None) -> None:
        self.parameter, self.value, self.reason = parameter, value, reason
        self.flag = flag or "--" + parameter.replace("_", "-")
        super().__init__(f"{parameter}={_shown(value)}: {reason}")

    def command_line(self) -> str:
        return f"{self.flag} {_shown(self.value)}: {self.reason}"


def _shown(value: object) -> str:
    """Strings quoted (an empty or odd value stays visible), paths and numbers as written."""
    if isinstance(value, PurePath):
        return str(value)
    return repr(value) if isinstance(value, str) else str(value)
