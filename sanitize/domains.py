"""Parameter domains shared by every command, so one option is checked the same way everywhere.

Click checks a range before the command runs, and reports a value outside it as a usage error
(one line, exit 2).
"""

from __future__ import annotations

from .errors import SanitizeError

# What numpy's and torch's generators both accept as a seed; -1 and 2**64 are refused up front.
SEED_RANGE = {"min": 0, "max": 2**63 - 1}


def check_fraction(value: float, option: str = "--rate", *, allow_zero: bool = True) -> None:
    """A poison rate or budget: a fraction in ``[0, 1)`` (``(0, 1)`` where zero would make the
    command pointless). Written as ``not lo <= value < 1`` so that NaN fails too."""
    if not (0 <= value < 1 if allow_zero else 0 < value < 1):
        raise SanitizeError(f"{option} {value}: expected a fraction in {'[0' if allow_zero else '(0'}, 1)")


def check_epochs(epochs: int | None, option: str = "--epochs") -> None:
    """A training length given by the user (None: the detector's own schedule)."""
    if epochs is not None and epochs < 1:
        raise SanitizeError(f"{option} {epochs}: expected a positive number")


def parse_size(size: str | None) -> tuple[int, int] | None:
    """``--size N`` or ``HxW`` as (height, width); None keeps the images' own size."""
    if size is None:
        return None
    try:
        parts = [int(p) for p in size.lower().split("x")]
    except ValueError:
        raise SanitizeError(f"--size {size!r}: expected N or HxW, e.g. 32 or 32x32") from None
    if len(parts) not in (1, 2) or min(parts) < 4:
        raise SanitizeError(f"--size {size!r}: expected N or HxW with sides of at least 4 pixels")
    return (parts[0], parts[-1])


def resolve_class(value: str, classes: list[str], option: str) -> int:
    """A class given by folder name or by index (a name wins if both could match)."""
    if value in classes:
        return classes.index(value)
    try:
        index = int(value)
    except ValueError:
        raise SanitizeError(f"{option} {value!r}: not a class name or index "
                            f"(classes: {', '.join(classes[:12])}{', ...' if len(classes) > 12 else ''})") from None
    if not 0 <= index < len(classes):
        raise SanitizeError(f"{option} {value}: the dataset has classes 0..{len(classes) - 1}")
    return index
