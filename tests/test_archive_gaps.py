"""`bench-ops gaps`' logic (bench_agent/ops/archive_gaps.py): the pure classification
of missing seqs, then the whole report from an archive on SQLite and on PostgreSQL
(`archive_url`) filled with the agent's own records, edited as the cases need, and the
console script on it."""

from __future__ import annotations

import json
import subprocess
from datetime import UTC, datetime
from typing import Any

import pytest

from bench_agent.ops.archive_db import open_store
from bench_agent.ops.archive_gaps import SeqRange, classify, gap_report
from bench_agent.ops.archive_store import Row
from bench_agent.ops.gaps import parse_since
from bench_agent.ops.opsctl import main
from tests.bridge_support import BENCH_OPS, captured_records

RECEIVED = "2026-11-28T00:00:00.000Z"
NOW = datetime(2026, 11, 28, tzinfo=UTC).timestamp()


@pytest.mark.parametrize(
    ("first", "holes", "drops", "expected"),
    [
        # Nothing missing.
        (1, [], [], []),
        # A loss on the way, no report from the bench.
        (1, [(5, 7, False)], [], [(5, 7, "lost")]),
        # The bench dropped 3 and said so after its backlog (historical from 8 on).
        (1, [(5, 7, True)], [(20, 3)], [(5, 7, "dropped_by_bench")]),
        # It dropped 2 of a hole of 3: the top two (the oldest waiting were just under
        # the backlog); the lowest was lost before.
        (1, [(5, 7, True)], [(20, 2)], [(5, 5, "lost"), (6, 7, "dropped_by_bench")]),
        # A hole under a backlog is preferred to a nearer one that is not.
        (
            1,
            [(5, 6, True), (12, 12, False)],
            [(20, 2)],
            [(5, 6, "dropped_by_bench"), (12, 12, "lost")],
        ),
        # Only holes below the event can be its drops.
        (1, [(5, 6, True), (30, 31, True)], [(20, 2)],
         [(5, 6, "dropped_by_bench"), (30, 31, "lost")]),
        # Two outages, two reports: each takes its own.
        (
            1,
            [(5, 6, True), (40, 42, True)],
            [(20, 2), (60, 3)],
            [(5, 6, "dropped_by_bench"), (40, 42, "dropped_by_bench")],
        ),
        # Before the first stored seq: not a loss; a report can explain it.
        (10, [], [], [(1, 9, "before_first")]),
        (10, [], [(15, 4)], [(1, 5, "before_first"), (6, 9, "dropped_by_bench")]),
        # A report larger than what is missing takes what there is.
        (1, [(5, 5, True)], [(9, 10)], [(5, 5, "dropped_by_bench")]),
    ],
)  # fmt: skip
def test_classify(
    first: int,
    holes: list[tuple[int, int, bool]],
    drops: list[tuple[int, int]],
    expected: list[tuple[int, int, str]],
) -> None:
    assert classify(first, holes, drops) == [SeqRange(a, b, c) for a, b, c in expected]  # type: ignore[arg-type]


def _rows(records: list[tuple[str, dict[str, Any]]], bench: str = "sim-bench-01") -> list[Row]:
    out = []
    for kind, record in records:
        if kind == "event":
            record["bench"] = bench
        row = Row.of(bench, kind, record)  # type: ignore[arg-type]
        assert row is not None
        out.append(row)
    return out


def edited_day() -> list[tuple[str, dict[str, Any]]]:
    """The simulated day with what each case needs: seqs 100-102 and 700 lost on the
    way; 300-309 dropped by the bench (an outbox_dropped event at 320, its backlog
    historical from 310); a restart at seq 500; from seq 1000 a new epoch (a wiped state
    directory: the seqs start again at 1)."""
    records = [(k, r) for k, r in captured_records() if r["seq"] not in {100, 101, 102, 700}]
    records = [(k, r) for k, r in records if not 300 <= r["seq"] <= 309]
    for _, record in records:
        if 310 <= record["seq"] <= 319:
            record["historical"] = True
        if record["seq"] == 320:
            kind_event: dict[str, Any] = {
                key: record[key]
                for key in ("seq", "seq_epoch", "ts", "time_quality", "boot_id", "uptime_s")
            }
            record.clear()
            record.update({"v": 1, "bench": "x", **kind_event, "type": "outbox_dropped",
                           "records": 10, "total": 10})  # fmt: skip
        if record["seq"] >= 500:
            record["boot_id"] = "boot-two"
        if record["seq"] >= 1000:
            record["seq_epoch"] = "00000000000000e2"
            record["seq"] -= 999
    return [("event" if r.get("type") else k, r) for k, r in records]


def test_the_report_names_each_loss_by_cause_restarts_epochs_and_clock(archive_url: str) -> None:
    with open_store(archive_url) as store:
        store.insert(_rows(edited_day()), RECEIVED)
        report = gap_report(store, min_silence_s=900, now=NOW)
    first, second = report.epochs
    assert (first.seq_epoch, second.seq_epoch) == ("7f10fadb3828c092", "00000000000000e2")
    assert (first.first_seq, first.last_seq) == (1, 999)
    assert first.ranges == (
        SeqRange(100, 102, "lost"),
        SeqRange(300, 309, "dropped_by_bench"),
        SeqRange(700, 700, "lost"),
    )
    assert first.reported_drops == 10 and first.stored == 999 - 14
    assert [(r.seq, r.boot_before, r.boot_after) for r in first.restarts] == [
        (500, "sim-435f8ffc-3d32-4426-b372-aace6011560d", "boot-two")
    ]
    # The new epoch starts at seq 1: not a gap, and its own restart-free seq space.
    assert (second.first_seq, second.last_seq, second.ranges, second.restarts) == (1, 457, (), ())
    assert first.unsynced == 35 and [c.seq for c in first.clock_syncs] == [468]
    assert report.totals == {
        "benches": 1, "epochs": 2, "stored": 999 - 14 + 457, "lost": 4,
        "dropped_by_bench": 10, "before_first": 0, "restarts": 1, "silences": 2,
    }  # fmt: skip
    # Silences: the unsynced stretch (its times are not the real ones) and since the end.
    assert [(s.start, s.end) for s in report.silences] == [
        ("2026-11-27T05:09:10.500Z", "2026-11-27T05:45:11.472Z"),
        ("2026-11-27T21:54:10.187Z", None),
    ]
    doc = report.json()
    json.dumps(doc)  # JSON all through
    assert doc["epochs"][0]["missing"][1] == {  # type: ignore[index]
        "first": 300,
        "last": 309,
        "count": 10,
        "cause": "dropped_by_bench",
    }


def test_since_keeps_what_ends_after_it_and_the_seq_arithmetic_of_the_whole_epoch(
    archive_url: str,
) -> None:
    with open_store(archive_url) as store:
        store.insert(_rows(edited_day()), RECEIVED)
        store.insert(_rows(captured_records()[:50], "other-bench"), RECEIVED)
        # Seq 700 was at 09:24; 100-102 (23:38 the day before) and the restart (06:16) earlier.
        report = gap_report(store, since="2026-11-27T09:00:00.000Z", now=NOW)
        one = gap_report(store, bench="other-bench", now=NOW)
    (epoch, new_epoch) = report.epochs  # other-bench ends before the 26th is out
    assert epoch.ranges == (SeqRange(700, 700, "lost"),)
    assert epoch.first_seq == 1 and epoch.restarts == ()
    assert new_epoch.seq_epoch == "00000000000000e2"
    assert [e.bench for e in one.epochs] == ["other-bench"] and one.epochs[0].ranges == ()


def test_the_console_script_table_and_json(
    tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "a.sqlite"
    with open_store(db) as store:
        store.insert(_rows(edited_day()), RECEIVED)
    table = subprocess.run(
        [str(BENCH_OPS), "gaps", "--db", str(db)], capture_output=True, text=True, check=True
    ).stdout
    assert "lost (never arrived): 4  [100-102, 700]" in table
    assert "dropped by the bench: 10  [300-309]" in table
    assert "a new epoch" in table and "restart at" in table
    assert all(len(line) <= 100 for line in table.splitlines())
    done = subprocess.run(
        [str(BENCH_OPS), "gaps", "--db", str(db), "--json", "--since", "2026-11-27"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    doc = json.loads(done.stdout)
    # 100-102 went on the 26th: before --since; 700 after.
    assert doc["totals"]["lost"] == 1 and doc["since"] == "2026-11-27T00:00:00.000Z"
    # A missing archive, a bad flag: one line each, their exit codes.
    assert main(["gaps", "--db", str(tmp_path / "none.sqlite")]) == 75
    assert capsys.readouterr().err.count("\n") == 1
    assert main(["gaps", "--db", str(db), "--since", "last week"]) == 64
    assert "--since" in capsys.readouterr().err


def test_parse_since() -> None:
    now = datetime(2026, 11, 28, 12, tzinfo=UTC).timestamp()
    assert parse_since("7d", now) == datetime(2026, 11, 21, 12, tzinfo=UTC)
    assert parse_since("90m", now) == datetime(2026, 11, 28, 10, 30, tzinfo=UTC)
    assert parse_since("2026-11-27") == datetime(2026, 11, 27, tzinfo=UTC)
    assert parse_since("2026-11-27T06:00+07:00") == datetime(2026, 11, 26, 23, tzinfo=UTC)
