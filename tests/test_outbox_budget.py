"""The outbox's two rules for dropping unsent records (link/outbox_budget.py): the
byte cap drops the oldest and never one in flight; the age limit drops only what is
certainly older than the limit, ageing an older boot's records by a lower bound."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator

import pytest

from bench_agent.link.outbox_budget import cap_victims, expired_rows
from bench_agent.link.outbox_file import create_schema

ROWS = [(1, 100), (2, 100), (3, 100), (4, 100)]  # (seq, size) in seq order


def test_nothing_is_dropped_while_the_bodies_fit() -> None:
    assert cap_victims(ROWS, total=400, max_bytes=400, in_flight=()) == {}


@pytest.mark.parametrize(
    ("total", "dropped"),
    [(401, {1: 100}), (500, {1: 100}), (501, {1: 100, 2: 100}), (800, dict(ROWS))],
)
def test_the_oldest_are_dropped_until_the_rest_fits(total: int, dropped: dict[int, int]) -> None:
    assert cap_victims(ROWS, total=total, max_bytes=400, in_flight=()) == dropped


def test_a_record_in_flight_stops_the_drops_even_over_the_cap() -> None:
    """A drop must mean "never sent", and drops stay the oldest: nothing past the first
    record in flight is dropped, though the cap is still exceeded."""
    assert cap_victims(ROWS, total=800, max_bytes=400, in_flight={3}) == {1: 100, 2: 100}
    assert cap_victims(ROWS, total=800, max_bytes=400, in_flight={1}) == {}


def test_rows_are_read_only_as_far_as_needed() -> None:
    def rows() -> Iterator[tuple[int, int]]:
        yield from ROWS[:2]
        raise AssertionError("read past the last row needed")

    assert cap_victims(rows(), total=450, max_bytes=400, in_flight=()) == {1: 100}


@pytest.fixture
def conn() -> Iterator[sqlite3.Connection]:
    conn = sqlite3.connect(":memory:")
    create_schema(conn)
    yield conn
    conn.close()


def store(conn: sqlite3.Connection, seq: int, boot_id: str, mono_s: float) -> None:
    conn.execute(
        "INSERT INTO outbox VALUES (?, 'telemetry', ?, ?, 't', 'synced', ?, '{}')",
        (seq, boot_id, mono_s, 10 * seq),
    )


def test_this_boots_records_are_aged_by_the_monotonic_clock(conn: sqlite3.Connection) -> None:
    for seq, mono in enumerate((850.0, 899.0, 900.0, 999.0), start=1):
        store(conn, seq, "now", mono)
    # 1000 s now, a 100 s limit: only what is MORE than 100 s old goes
    assert expired_rows(conn, "now", 1000.0, 100.0) == [(1, 10), (2, 20)]


def test_an_older_boot_is_aged_by_a_lower_bound(conn: sqlite3.Connection) -> None:
    """The time the Pi was off is unknown: an older boot's record is at least as old as
    (that boot's newest stored record - it) + the time since this boot began."""
    for seq, mono in enumerate((10.0, 150.0, 170.0, 200.0), start=1):
        store(conn, seq, "before", mono)
    store(conn, 5, "now", 5.0)
    # 60 s into this boot, a 100 s limit: ages at least 250, 110, 90 and 60 s
    assert expired_rows(conn, "now", 60.0, 100.0) == [(1, 10), (2, 20)]
    # the older boot's newest record is aged by this boot's time alone
    assert (4, 40) in expired_rows(conn, "now", 101.0, 100.0)


def test_the_bound_follows_what_is_still_stored(conn: sqlite3.Connection) -> None:
    for seq, mono in enumerate((10.0, 150.0, 200.0), start=1):
        store(conn, seq, "before", mono)
    conn.execute("DELETE FROM outbox WHERE seq = 3")  # acked: its time no longer counts
    assert expired_rows(conn, "now", 60.0, 100.0) == [(1, 10)]
