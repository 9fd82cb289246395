"""The archive's database (bench_agent/ops/archive_store.py) on SQLite and on a real
PostgreSQL: each test runs on both (`archive_url`), with the agent's own records of a
simulated day (bench/data/records-day-a.jsonl.gz)."""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from bench_agent.ops.archive_db import open_store
from bench_agent.ops.archive_store import (
    SCHEMA_VERSION,
    ArchiveError,
    BadRecord,
    Row,
)
from tests.bridge_support import captured_records
from tests.support import free_port

RECEIVED = "2026-11-28T00:00:00.000Z"


def day_rows(bench: str = "sim-bench-01") -> list[Row]:
    rows = []
    for kind, record in captured_records():
        if kind == "event":
            record["bench"] = bench
        row = Row.of(bench, kind, record)
        assert row is not None
        rows.append(row)
    return rows


def test_every_record_once_whatever_comes_twice(archive_url: str) -> None:
    rows = day_rows()
    with open_store(archive_url) as store:
        assert store.insert(rows[:1000], RECEIVED) == 1000
        # A redelivery overlapping what is stored, in one transaction with new ones.
        assert store.insert(rows[900:], RECEIVED) == len(rows) - 1000
        assert store.insert(rows, RECEIVED) == 0
        assert store.insert([], RECEIVED) == 0
        assert store.count() == len(rows) == 1456
        keys = store.stored_keys()
    assert keys == sorted(r.key for r in rows)
    assert [seq for _, _, seq in keys] == list(range(1, 1457))
    # Opened again: the schema is there, the rows too.
    with open_store(archive_url) as again:
        assert again.count("sim-bench-01") == 1456 and again.count("nobody") == 0


def test_the_whole_v1_json_comes_back_with_its_columns(archive_url: str) -> None:
    records = captured_records()
    with open_store(archive_url) as store:
        store.insert(day_rows(), RECEIVED)
        back = list(store.records())
    assert len(back) == len(records)
    by_seq = {r.seq: r for r in back}
    for kind, record in records:
        stored = by_seq[record["seq"]]
        assert stored.body == record
        assert (stored.kind, stored.ts, stored.boot_id) == (kind, record["ts"], record["boot_id"])
        assert stored.time_quality == record["time_quality"]
        assert stored.historical == (record.get("historical") is True)
        assert stored.type == (record["type"] if kind == "event" else None)
        assert stored.received_at == RECEIVED
    assert back[0].when.tzinfo is not None


def test_readers_a_period_a_bench_a_kind_events_by_type_in_order(archive_url: str) -> None:
    with open_store(archive_url) as store:
        store.insert(day_rows("bench-a") + day_rows("bench-b"), RECEIVED)
        assert store.benches() == ["bench-a", "bench-b"]
        since = datetime(2026, 11, 27, 6, tzinfo=UTC)
        until = "2026-11-27T07:00:00.000Z"
        hour = list(store.records(since=since, until=until, bench="bench-a"))
        assert hour and all(since <= r.when < datetime.fromisoformat(until) for r in hour)
        assert {r.bench for r in hour} == {"bench-a"}
        assert [r.ts for r in hour] == sorted(r.ts for r in hour)
        both = list(store.records(since=since, until=until))
        assert [r.bench for r in both] == sorted(r.bench for r in both)  # bench, then ts
        assert len(both) == 2 * len(hour)
        telemetry = list(store.records(kind="telemetry", bench="bench-b"))
        assert len(telemetry) == 1434 and {r.kind for r in telemetry} == {"telemetry"}
        sheds = list(store.events(["battery_shed", "tamper"]))
        assert len(sheds) == 2 * (3 + 2)
        assert {e.type for e in sheds} == {"battery_shed", "tamper"}
        assert [e.ts for e in sheds] == sorted(e.ts for e in sheds)
        assert len(list(store.events(bench="bench-a"))) == 22
        assert list(store.events([])) == []
        with pytest.raises(ValueError, match="naive"):
            list(store.records(since=datetime(2026, 11, 27)))


def test_retention_deletes_what_was_received_before_the_cutoff_in_chunks(archive_url: str) -> None:
    rows = day_rows()
    with open_store(archive_url) as store:
        store.insert(rows[:500], "2026-01-01T00:00:00.000Z")
        store.insert(rows[500:], "2026-06-01T00:00:00.000Z")
        assert store.delete_received_before("2026-03-01T00:00:00.000Z", limit=300) == 300
        assert store.delete_received_before("2026-03-01T00:00:00.000Z", limit=300) == 200
        assert store.delete_received_before("2026-03-01T00:00:00.000Z") == 0
        assert [s for _, _, s in store.stored_keys()] == [r.seq for r in rows[500:]]


def test_row_of_refuses_what_the_contract_does_not_allow() -> None:
    _, good = captured_records()[3]
    assert Row.of("b", "telemetry", good) is not None
    assert Row.of("b", "event", {"type": "tamper", "stored": False, "ts": "x"}) is None
    bad: list[tuple[str, Any]] = [
        ("seq", "7"), ("seq", True), ("seq", -1), ("seq", None), ("seq_epoch", ""),
        ("seq_epoch", 5), ("ts", "yesterday"), ("ts", "2026-11-27T06:00:00Z"),
        ("time_quality", "great"), ("boot_id", 3), ("uptime_s", float("nan")),
    ]  # fmt: skip
    for field, value in bad:
        with pytest.raises(BadRecord):
            Row.of("b", "telemetry", {**good, field: value})
    with pytest.raises(BadRecord, match="event type"):
        Row.of("b", "event", good)  # an event without its type


def test_another_schema_version_is_refused(archive_url: str) -> None:
    open_store(archive_url).close()
    with open_store(archive_url) as store:
        store.query("SELECT 1")
        store._execute(store.sql("UPDATE bench_archive_meta SET value = ? WHERE key = ?"),
                       [str(SCHEMA_VERSION + 1), "schema"])  # fmt: skip
        store._commit()
    with pytest.raises(ArchiveError, match="schema version 2"):
        open_store(archive_url)


def test_what_cannot_be_opened_is_one_archive_error(tmp_path: Path) -> None:
    with pytest.raises(ArchiveError, match="no archive there"):
        open_store(tmp_path / "none.sqlite", create=False)
    with pytest.raises(ArchiveError):
        open_store(tmp_path / "no-such-dir" / "a.sqlite")
    not_db = tmp_path / "not.sqlite"
    not_db.write_bytes(b"not a database at all" * 100)
    with pytest.raises(ArchiveError):
        open_store(not_db)
    with pytest.raises(ArchiveError) as caught:
        open_store(f"postgresql://ops:s3cret@127.0.0.1:{free_port()}/archive")
    assert "s3cret" not in str(caught.value)  # the password never reaches a log


def test_a_sqlite_archive_is_a_plain_file_other_tools_read(tmp_path: Path) -> None:
    path = tmp_path / "a.sqlite"
    with open_store(f"sqlite://{path}") as store:
        store.insert(day_rows()[:10], RECEIVED)
    with sqlite3.connect(path) as conn:
        (body,) = conn.execute("SELECT body FROM bench_records WHERE seq = 4").fetchone()
        mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
    assert json.loads(body)["battery"]["soc_pct"] == 52.0 and mode == "wal"


def test_the_readers_stream_and_other_queries_may_run_meanwhile(archive_url: str) -> None:
    """More rows than one fetch (2,000), read while other queries run between them (a
    report reading events for each record it reads)."""
    with open_store(archive_url) as store:
        store.insert(day_rows("bench-a") + day_rows("bench-b"), RECEIVED)
        seen = 0
        for n, record in enumerate(store.records()):
            seen += 1
            if n % 500 == 0:
                assert store.count() == 2 * 1456
                assert len(list(store.events(["tamper"], bench=record.bench))) == 2
        assert seen == 2 * 1456
        first = next(store.records(kind="event"))  # left unfinished
        assert first.kind == "event" and store.benches() == ["bench-a", "bench-b"]
