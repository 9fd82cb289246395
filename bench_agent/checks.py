"""Checks shared by the pure modules (policy, soc, counters, uplink) for their
configuration and their saved state: one wording, so every refusal reads alike;
and the depth check every parser of untrusted JSON runs first."""

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


def require_finite(name: str, value: object) -> None:
    """ValueError unless `value` is a finite number (nan passes every range comparison)."""
    require(is_finite_number(value), name, "must be a finite number", value)


def json_nesting_exceeds(text: str, limit: int) -> bool:
    """Whether JSON `text` nests arrays/objects deeper than `limit` (strings skipped).

    Checked before `json.loads` (commands, control socket requests), so a depth bomb
    never reaches the recursive parser, whose RecursionError escapes `except ValueError`.
    """
    if text.count("[") + text.count("{") <= limit:
        return False
    depth = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            if depth > limit:
                return True
        elif ch in "]}":
            depth -= 1
    return False
