"""The bench's own event history: what `bench-agent events` reads with the uplink down."""

from __future__ import annotations

import contextlib
import json
import os
from datetime import UTC, datetime
from pathlib import Path

import pytest

from bench_agent.eventlog import EventLog
from tests.support import small_tmpfs


def event(n: int, ts: str = "2026-11-27T10:00:00.000Z") -> dict[str, object]:
    return {"seq": n, "ts": ts, "time_quality": "synced", "type": "tamper", "open": n % 2 == 0}


def test_events_survive_a_restart_in_order(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    log = EventLog(path, keep=10)
    for n in range(1, 4):
        log.append(event(n))
    assert [e["seq"] for e in EventLog(path, keep=10).recent()] == [1, 2, 3]


def test_only_the_newest_are_kept_and_the_file_stays_bounded(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    log = EventLog(path, keep=5)
    for n in range(1, 24):
        log.append(event(n))
        assert len(path.read_text().splitlines()) <= 2 * 5
    assert [e["seq"] for e in log.recent()] == [19, 20, 21, 22, 23]
    assert [e["seq"] for e in EventLog(path, keep=5).recent()] == [19, 20, 21, 22, 23]
    assert not path.with_name("events.jsonl.tmp").exists()


def test_since_and_limit(tmp_path: Path) -> None:
    log = EventLog(tmp_path / "events.jsonl")
    log.append(event(1, "2026-11-27T08:00:00.000Z"))
    log.append(event(2, "2026-11-27T09:30:00.000Z"))
    log.append(event(3, "2026-11-27T10:00:00.000Z"))
    since = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)
    assert [e["seq"] for e in log.recent(since=since)] == [2, 3]
    assert [e["seq"] for e in log.recent(limit=1)] == [3]
    assert log.recent(limit=0) == []


def test_a_torn_or_garbled_line_is_skipped(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    good = json.dumps(event(1))
    # A crash mid-append leaves a torn last line; bad bytes are not UTF-8.
    path.write_bytes(f"{good}\n\xff\xfe garbage\n[1, 2]\n{good[:20]}".encode("latin-1"))
    log = EventLog(path)
    assert [e["seq"] for e in log.recent()] == [1]
    log.append(event(2))
    assert [e["seq"] for e in EventLog(path).recent()][-1] == 2


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_an_unwritable_directory_never_raises(tmp_path: Path) -> None:
    directory = tmp_path / "ro"
    directory.mkdir()
    log = EventLog(directory / "events.jsonl")
    directory.chmod(0o500)
    try:
        log.append(event(1))  # logged, not raised: the outbox already holds the event
        assert [e["seq"] for e in log.recent()] == [1]
    finally:
        directory.chmod(0o700)


def test_a_full_disk_never_raises(tmp_path: Path) -> None:
    with small_tmpfs(tmp_path / "small", "64k") as mnt:
        log = EventLog(mnt / "events.jsonl", keep=1000)
        ballast = mnt / "ballast"
        with contextlib.suppress(OSError), ballast.open("wb", buffering=0) as f:
            while True:
                f.write(b"x" * 4096)
        for n in range(1, 40):  # enough to need new blocks, and a compaction
            log.append(event(n))  # logged once, not raised: the outbox holds the events
        assert [e["seq"] for e in log.recent()][-1] == 39
        ballast.unlink()
        log.append(event(40))
        assert [e["seq"] for e in EventLog(mnt / "events.jsonl").recent()][-1] == 40
