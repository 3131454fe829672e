"""Parameter domains shared by every command, so one option is checked the same way everywhere.

Click checks a range before the command runs, and reports a value outside it as a usage error
(one line, exit 2).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar

from .errors import ParameterError

T = TypeVar("T")

# What numpy's and torch's generators both accept as a seed; -1 and 2**64 are refused up front.
SEED_RANGE = {"min": 0, "max": 2**63 - 1}


def choose(name: str, choices: Mapping[str, T], parameter: str = "schedule") -> T:
    """``choices[name]``, or a :class:`ParameterError` that lists the names (schedules, presets)."""
    if name not in choices:
        raise ParameterError(parameter, name, f"choose from {', '.join(choices)}")
    return choices[name]


def check_seed(seed: int) -> None:
    """A seed every generator accepts (the command line's range, checked for Python callers too)."""
    if not SEED_RANGE["min"] <= seed <= SEED_RANGE["max"]:
        raise ParameterError("seed", seed, "expected an integer in 0..2**63-1")


def check_arch(arch: str, also: tuple[str, ...] = ()) -> None:
    """Refuse a network that is neither ``auto``, one of ``also``, nor registered in :mod:`sanitize.nn.models`."""
    from .nn.models import available_models

    if arch != "auto" and arch not in also and arch not in available_models():
        names = ", ".join(("auto", *also, *available_models()))
        raise ParameterError("arch", arch, f"unknown network; choose from {names}")


def check_fraction(value: float, parameter: str = "rate", *, allow_zero: bool = True) -> None:
    """A poison rate or budget: a fraction in ``[0, 1)`` (``(0, 1)`` where zero would make the
    command pointless). Written as ``not lo <= value < 1`` so that NaN fails too."""
    if not (0 <= value < 1 if allow_zero else 0 < value < 1):
        raise ParameterError(parameter, value, f"expected a fraction in {'[0' if allow_zero else '(0'}, 1)")


def check_epochs(epochs: int | None, parameter: str = "epochs") -> None:
    """A training length given by the user (None: the detector's own schedule)."""
    if epochs is not None and epochs < 1:
        raise ParameterError(parameter, epochs, "expected a positive number")


def check_stream(stream: object) -> None:
    """``stream``: True (always), False (never), None (when the set would not fit the device)."""
    if stream not in (None, True, False):
        raise ParameterError("stream", stream, "expected True, False or None (decide by the device's memory)")


def parse_size(size: str | None) -> tuple[int, int] | None:
    """``--size N`` or ``HxW`` as (height, width); None keeps the images' own size."""
    if size is None:
        return None
    try:
        parts = [int(p) for p in size.lower().split("x")]
    except ValueError:
        raise ParameterError("size", size, "expected N or HxW, e.g. 32 or 32x32") from None
    if len(parts) not in (1, 2) or min(parts) < 4:
        raise ParameterError("size", size, "expected N or HxW with sides of at least 4 pixels")
    return (parts[0], parts[-1])


def resolve_class(value: str, classes: list[str], parameter: str) -> int:
    """A class given by folder name or by index (a name wins if both could match)."""
    if value in classes:
        return classes.index(value)
    try:
        index = int(value)
    except ValueError:
        raise ParameterError(parameter, value, "not a class name or index (classes: "
                             f"{', '.join(classes[:12])}{', ...' if len(classes) > 12 else ''})") from None
    if not 0 <= index < len(classes):
        raise ParameterError(parameter, index, f"the dataset has classes 0..{len(classes) - 1}")
    return index
