"""The rules a number given by a user must meet, written once (as kornia's ``kornia.core.check``): the configs, the
job, tiling, the timelapse, batch and the web page ask these instead of restating them.

A bool is never a number here: Python counts ``True`` as 1, a user who typed ``--tile true`` (or a manifest cell
``true``) did not mean one pixel. The predicates only answer; each caller keeps its own one-line message, and
``whole_number`` / ``finite_number`` raise the configs' wording for those that share it."""

from __future__ import annotations

import math
from typing import TypeGuard

from .errors import DipError


def is_number(value: object) -> TypeGuard[int | float]:
    """An int or a float, not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_whole(value: object, low: int | None = None, high: int | None = None) -> TypeGuard[int]:
    """An int (not a bool) within ``low``..``high`` (both included; None: no bound)."""
    if not isinstance(value, int) or isinstance(value, bool):
        return False
    return (low is None or value >= low) and (high is None or value <= high)


def is_finite(
    value: object, low: float = -math.inf, high: float = math.inf, *, low_open: bool = False, high_open: bool = False
) -> bool:
    """A finite number (nan and inf are never valid) in its range, each end closed unless said open."""
    if not (is_number(value) and math.isfinite(value)):
        return False
    return (value > low if low_open else value >= low) and (value < high if high_open else value <= high)


def whole_number(
    label: str, value: object, low: int = 1, high: int | None = None, *, error: type[DipError] = DipError
) -> None:
    """Raises ``error`` unless ``value`` is a whole number in ``low``..``high``: "LABEL must be a whole number >= 1"."""
    if not is_whole(value, low, high):
        within = f">= {low}" if high is None else f"between {low} and {high}"
        raise error(f"{label} must be a whole number {within}, got {value!r}")


def finite_number(
    label: str,
    value: object,
    low: float,
    high: float = math.inf,
    *,
    low_open: bool = False,
    high_open: bool = False,
    error: type[DipError] = DipError,
) -> None:
    """Raises ``error`` unless ``value`` is a finite number in its range, which the message writes as an interval."""
    if not is_finite(value, low, high, low_open=low_open, high_open=high_open):
        ends = ("(" if low_open else "[") + f"{low:g}", f"{high:g}" + (")" if high_open else "]")
        raise error(f"{label} must be a finite number in {ends[0]}, {ends[1]}, got {value!r}")


def integral(value: object) -> int | None:
    """A whole number however a client sent it (2, 2.0, "2", "2.0"), None where it is none (a bool, 2.5, nan, 1e400,
    text): the web page's number fields, which arrive as floats or text."""
    if isinstance(value, bool):
        return None
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):
        return None
    return int(number) if math.isfinite(number) and number == int(number) else None
