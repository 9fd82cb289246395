"""The shared checks: one wording for every refusal, what counts as a finite number, and
the depth check that runs before any untrusted JSON reaches the recursive parser."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench_agent.checks import is_finite_number, json_nesting_exceeds, require, require_finite


def test_require_passes_silently_and_refuses_in_one_wording() -> None:
    require(True, "soc.capacity_ah", "must be positive", -1)  # no exception
    with pytest.raises(ValueError, match=r"^capacity_ah: must be positive \(got -1\)$"):
        require(False, "capacity_ah", "must be positive", -1)
    # The value is shown as repr: a string that looks like a number is told apart.
    with pytest.raises(ValueError) as caught:
        require(False, "day", "must be a date", "2026-13-01")
    assert str(caught.value) == "day: must be a date (got '2026-13-01')"


@pytest.mark.parametrize("value", [0, -3, 7, 0.0, -2.5, 1e308, 10**300])
def test_finite_numbers(value: float) -> None:
    assert is_finite_number(value)
    require_finite("x", value)


@pytest.mark.parametrize(
    "value",
    [
        math.nan,
        math.inf,
        -math.inf,
        True,  # a bool is an int to Python, never a reading or a counter
        False,
        10**400,  # an int too large for a float (a garbled file): OverflowError inside
        -(10**400),
        "1.5",
        None,
        [1.0],
        {"value": 1.0},
    ],
)
def test_not_finite_numbers(value: object) -> None:
    assert not is_finite_number(value)
    with pytest.raises(ValueError, match=r"^energy_wh: must be a finite number \(got "):
        require_finite("energy_wh", value)


def test_nesting_at_the_limit_passes_and_one_deeper_is_refused() -> None:
    assert not json_nesting_exceeds("[[[1]]]", 3)
    assert json_nesting_exceeds("[[[[1]]]]", 3)
    assert not json_nesting_exceeds('{"a":{"b":[1]}}', 3)
    assert json_nesting_exceeds('{"a":{"b":[{}]}}', 3)


def test_many_brackets_side_by_side_are_not_depth() -> None:
    flat = "[" + ",".join(["[]"] * 50) + "]"  # 51 brackets, depth 2
    assert not json_nesting_exceeds(flat, 2)
    assert json_nesting_exceeds(flat, 1)


def test_brackets_inside_strings_do_not_count_and_escaped_quotes_do_not_end_them() -> None:
    assert not json_nesting_exceeds('["[[[[{{{{"]', 1)
    # \" does not close the string, so the brackets after it are still inside it.
    assert not json_nesting_exceeds(r'["\"[[[[[[", 1]', 1)
    # \\ is a whole escape: the quote after it does close the string.
    assert json_nesting_exceeds(r'["\\", [[1]]]', 2)
    assert not json_nesting_exceeds(r'["\\", [[1]]]', 3)


def test_a_depth_bomb_is_found_before_json_loads_would_overflow_the_stack() -> None:
    bomb = "[" * 100_000 + "]" * 100_000
    with pytest.raises(RecursionError):
        json.loads(bomb)
    assert json_nesting_exceeds(bomb, 32)
    # An object bomb, and a bomb that is never closed (the scan stops at the limit).
    assert json_nesting_exceeds('{"a":' * 100_000, 32)
    assert json_nesting_exceeds("[" * 100_000, 32)


def _depth(value: Any) -> int:
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    return 0


# Strings full of what the scan must skip: brackets, quotes and backslashes.
_TEXT = st.text(alphabet='[]{}"\\ab,: é', max_size=8)
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | _TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_TEXT, inner, max_size=3),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(value=_JSON, limit=st.integers(min_value=0, max_value=6), ascii_only=st.booleans())
def test_the_scan_agrees_with_the_real_depth_of_any_json(
    value: Any, limit: int, ascii_only: bool
) -> None:
    text = json.dumps(value, ensure_ascii=ascii_only)
    assert json_nesting_exceeds(text, limit) == (_depth(value) > limit)
