"""Parameter domains shared by every command, so one option is checked the same way everywhere.

Click checks a range before the command runs, and reports a value outside it as a usage error
(one line, exit 2).
"""

from __future__ import annotations

# What numpy's and torch's generators both accept as a seed; -1 and 2**64 are refused up front.
SEED_RANGE = {"min": 0, "max": 2**63 - 1}


def check_fraction(value: float, option: str = "--rate", *, allow_zero: bool = True) -> None:
    """A poison rate or budget: a fraction in ``[0, 1)`` (``(0, 1)`` where zero would make the
    command pointless). Written as ``not lo <= value < 1`` so that NaN fails too."""
    from .errors import SanitizeError

    if not (0 <= value < 1 if allow_zero else 0 < value < 1):
        raise SanitizeError(f"{option} {value}: expected a fraction in {'[0' if allow_zero else '(0'}, 1)")


def check_epochs(epochs: int | None, option: str = "--epochs") -> None:
    """A training length given by the user (None: the detector's own schedule)."""
    from .errors import SanitizeError

    if epochs is not None and epochs < 1:
        raise SanitizeError(f"{option} {epochs}: expected a positive number")
