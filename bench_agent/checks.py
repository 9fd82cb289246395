"""Checks shared by the small pure modules (counters.py, uplink.py) for their
configuration and their saved state: one wording, so every refusal reads alike."""

from __future__ import annotations

import math
from typing import TypeGuard


def require(ok: bool, name: str, problem: str, value: object) -> None:
    """Raise ValueError("name: problem (got value)"); the config loader prefixes file and key."""
    if not ok:
        raise ValueError(f"{name}: {problem} (got {value!r})")


def is_finite_number(value: object) -> TypeGuard[float]:
    """A finite int or float (not a bool): what a counter, a reading or a duration may hold."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an int too large for a float, e.g. from a garbled file
        return False
