"""The on-disk outbox against real SQLite files, real file systems and real SIGKILLs."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from bench_agent.clock import iso_utc
from bench_agent.errors import StorageError
from bench_agent.link.outbox import (
    FAULT_CORRUPT_REPLACED,
    FAULT_FULL,
    FAULT_LOCKED,
    FAULT_READONLY,
    SEQ_FLOOR_EVERY,
    Outbox,
    encode_body,
    pack_body,
)
from tests.support import small_tmpfs as support_small_tmpfs

REPO = Path(__file__).resolve().parents[1]
BOOT = "boot-a"


def put(
    box: Outbox,
    body: dict[str, Any] | None = None,
    *,
    kind: str = "telemetry",
    boot: str = BOOT,
    mono: float = 1.0,
    quality: str = "synced",
    ts: str = "2026-01-01T00:00:00.000Z",
) -> int:
    return box.put(
        kind,  # type: ignore[arg-type]
        body if body is not None else {"w": 1.5},
        boot_id=boot,
        mono_s=mono,
        ts=ts,
        time_quality=quality,
    )


@cache
def stored_as(size: int) -> dict[str, Any]:
    """A body the outbox stores in exactly `size` bytes (bodies are deflated, so a run
    of "x" would shrink to nothing: random base64 barely compresses)."""
    for seed in range(50):
        text = base64.b64encode(random.Random(seed).randbytes(4 * size)).decode()
        for n in range(1, len(text)):
            got = len(pack_body(encode_body({"pad": text[:n]})))
            if got == size:
                return {"pad": text[:n]}
            if got > size:
                break
    raise AssertionError(f"no body is stored in exactly {size} bytes")


def random_pad(chars: int) -> dict[str, Any]:
    """A body of `chars` characters that deflate cannot shrink much."""
    return {"pad": base64.b64encode(random.Random(chars).randbytes(chars)).decode()[:chars]}


def seqs_in_file(path: Path) -> list[int]:
    """Read the file with plain sqlite3 (the outbox must be closed or its process dead)."""
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        return [row[0] for row in conn.execute("SELECT seq FROM outbox ORDER BY seq")]
    finally:
        conn.close()


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "outbox.db"


@pytest.fixture
def box(db: Path) -> Iterator[Outbox]:
    with Outbox(db, max_bytes=1_000_000, max_age_s=100.0, boot_id=BOOT) as outbox:
        yield outbox


# -- seq ---------------------------------------------------------------------------


def test_seq_is_shared_by_kinds_and_increases_across_reopen(db: Path) -> None:
    with Outbox(db, max_bytes=10_000, boot_id=BOOT) as box:
        assert [put(box), put(box, kind="event"), put(box)] == [1, 2, 3]
        box.ack([1, 2, 3])  # an empty table must not let the counter restart
    with Outbox(db, max_bytes=10_000, boot_id=BOOT) as box:
        assert put(box) == 4
        assert box.stats().last_seq == 4
    assert seqs_in_file(db) == [4]
    assert not db.with_name(db.name + "-wal").exists()  # a clean close checkpoints


def test_power_cut_while_running_resumes_seq_past_the_floor(db: Path) -> None:
    # A process that records and vanishes without closing: on the same boot (a
    # crash) the counter just continues; on another boot (the power was cut, the
    # last commits may be lost) it jumps past every seq that could have been used.
    script = textwrap.dedent(
        f"""
        import os
        from pathlib import Path
        from bench_agent.link.outbox import Outbox
        box = Outbox(Path({str(db)!r}), max_bytes=10_000, boot_id="b1").open()
        for _ in range(3):
            box.put("telemetry", {{}}, boot_id="b1", mono_s=1.0, ts="t", time_quality="synced")
        os._exit(0)
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, cwd=REPO, timeout=30)
    with Outbox(db, max_bytes=10_000, boot_id="b1") as box:
        assert put(box) == 4
    subprocess.run([sys.executable, "-c", script], check=True, cwd=REPO, timeout=30)
    with Outbox(db, max_bytes=10_000, boot_id="b2") as box:
        seq = put(box)
    # The last floor was written at open with 4 (the file's last seq): 4 + N.
    assert seq == 4 + SEQ_FLOOR_EVERY


def test_without_a_boot_id_an_unclean_close_counts_as_a_power_cut(db: Path) -> None:
    """Not Linux (no /proc boot id): two runs look like the same boot, so a vanished
    process must be taken for a power cut, or a published seq could be issued again."""
    script = textwrap.dedent(
        f"""
        import os
        from pathlib import Path
        from bench_agent.link.outbox import Outbox
        box = Outbox(Path({str(db)!r}), max_bytes=10_000, boot_id="unknown").open()
        for _ in range(3):
            box.put("telemetry", {{}}, boot_id="unknown", mono_s=1.0, ts="t",
                    time_quality="synced")
        os._exit(0)
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, cwd=REPO, timeout=30)
    with Outbox(db, max_bytes=10_000, boot_id="unknown") as box:
        # Past every seq the floor allowed (written at the first open, 0), not 4.
        assert put(box) == SEQ_FLOOR_EVERY


# -- ack, exclude, reads -----------------------------------------------------------


def test_ack_removes_only_what_is_acked(db: Path) -> None:
    with Outbox(db, max_bytes=10_000, boot_id=BOOT) as box:
        for i in range(5):
            put(box, {"i": i})
        box.ack([2, 4, 99])  # 99 was never stored: ignored
        assert [item.seq for item in box.oldest(10, 10_000)] == [1, 3, 5]
        assert box.stats().depth == 3
        assert box.newest("telemetry", ()) is not None
        put(box)  # the acked rows are deleted by this transaction
        assert [item.seq for item in box.oldest(10, 10_000)] == [1, 3, 5, 6]
        box.ack([6])
    assert seqs_in_file(db) == [1, 3, 5]
    with Outbox(db, max_bytes=10_000, boot_id=BOOT) as box:
        assert [item.body["i"] for item in box.oldest(10, 10_000)] == [0, 2, 4]
        assert box.stats().bytes == sum(len(pack_body(f'{{"i":{i}}}')) for i in (0, 2, 4))


def test_many_acks_are_deleted_without_waiting_for_a_put(db: Path) -> None:
    with Outbox(db, max_bytes=1_000_000, boot_id=BOOT) as box:
        seqs = [put(box) for _ in range(200)]
        box.ack(seqs[:150])
        assert box.stats().depth == 50
    assert seqs_in_file(db) == seqs[150:]


def test_exclude_skips_in_flight_records(box: Outbox) -> None:
    for i in range(5):
        put(box, {"i": i}, kind="event" if i == 3 else "telemetry")
    assert [item.seq for item in box.oldest(10, 10_000, exclude={1, 2})] == [3, 4, 5]
    assert [item.seq for item in box.oldest(2, 10_000, exclude={1})] == [2, 3]
    newest = box.newest("telemetry", exclude={5})
    assert newest is not None and newest.seq == 3
    event = box.newest("event", exclude=())
    assert event is not None and event.seq == 4 and event.kind == "event"
    assert box.newest("event", exclude={4}) is None


def test_oldest_respects_max_bytes_but_always_returns_one(box: Outbox) -> None:
    for _ in range(4):
        put(box, stored_as(100))  # 100 bytes each
    assert all(item.size == 100 for item in box.oldest(10, 10_000))
    assert [item.seq for item in box.oldest(10, 250)] == [1, 2]
    assert [item.seq for item in box.oldest(10, 10)] == [1]  # bigger than max, still sent
    assert box.oldest(0, 10_000) == []


def test_item_round_trips_every_field(box: Outbox) -> None:
    body = {"channels": {"solar": {"v": [12.1, 12.4, 13.0]}}, "wh": 3.25, "note": "Taman Kota"}
    seq = box.put(
        "telemetry",
        body,
        boot_id="b9",
        mono_s=123.5,
        ts="2026-02-03T04:05:06.789Z",
        time_quality="unsynced",
    )
    [item] = box.oldest(1, 10_000)
    assert (item.seq, item.kind, item.boot_id, item.mono_s) == (seq, "telemetry", "b9", 123.5)
    assert (item.ts, item.time_quality, item.body) == (
        "2026-02-03T04:05:06.789Z",
        "unsynced",
        body,
    )
    assert item.size == len(pack_body(json.dumps(body, separators=(",", ":"))))


# -- bounds ------------------------------------------------------------------------


def test_cap_drops_exactly_the_oldest_and_counts_them(db: Path) -> None:
    body = stored_as(100)
    with Outbox(db, max_bytes=300, boot_id=BOOT) as box:
        for _ in range(5):
            put(box, body)
        assert [item.seq for item in box.oldest(10, 10_000)] == [3, 4, 5]
        stats = box.stats()
        assert (stats.depth, stats.bytes, stats.drops_total) == (3, 300, 2)
        assert box.take_new_drops() == 2
        assert box.take_new_drops() == 0
        box.ack([3])  # acked rows make room: no drop
        put(box, body)
        assert box.stats().drops_total == 2
        put(box, body)
        assert [item.seq for item in box.oldest(10, 10_000)] == [5, 6, 7]
        assert box.stats().drops_total == 3
    with Outbox(db, max_bytes=300, boot_id=BOOT) as box:
        assert box.stats().drops_total == 3  # persisted
        assert box.take_new_drops() == 1  # the one not yet reported
        assert box.stats().oldest_seq == 5
    assert seqs_in_file(db) == [5, 6, 7]


def test_cap_never_drops_a_record_in_flight(db: Path) -> None:
    body = stored_as(100)
    with Outbox(db, max_bytes=300, boot_id=BOOT) as box:
        for _ in range(3):
            put(box, body)
        # 1 and 2 were published and wait for their PUBACK: the cap spares them and
        # drops nothing older (there is nothing older), exceeding the cap briefly.
        box.put("telemetry", body, boot_id=BOOT, mono_s=1.0, ts="t", time_quality="synced",
                in_flight={1, 2})  # fmt: skip
        assert [item.seq for item in box.oldest(10, 10_000)] == [1, 2, 3, 4]
        assert box.stats().drops_total == 0
        # Once they are acked the cap holds again, dropping only what was never sent.
        box.ack([1, 2])
        put(box, body)
        put(box, body)
        assert [item.seq for item in box.oldest(10, 10_000)] == [4, 5, 6]
        assert box.stats().drops_total == 1  # seq 3


def test_a_crash_between_floor_and_commit_on_the_same_boot_leaves_no_gap(db: Path) -> None:
    """The floor file is written before every SEQ_FLOOR_EVERY-th commit. A process crash
    right after it (same kernel boot: the page cache keeps every commit) must not make
    the next start skip seqs: the one in the floor was never committed, so never sent."""
    script = textwrap.dedent(
        f"""
        import os
        from pathlib import Path
        from bench_agent.link.outbox import Outbox
        box = Outbox(Path({str(db)!r}), max_bytes=10_000, boot_id="b1").open()
        box.put("telemetry", {{}}, boot_id="b1", mono_s=1.0, ts="t", time_quality="synced")
        box._write_floor(7 * {SEQ_FLOOR_EVERY})  # as just before committing that seq
        os._exit(0)  # killed before the commit
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, cwd=REPO, timeout=30)
    with Outbox(db, max_bytes=10_000, boot_id="b1") as box:
        assert put(box) == 2  # no false gap


def test_the_age_limit_never_drops_a_record_in_flight(db: Path) -> None:
    with Outbox(db, max_bytes=1_000_000, max_age_s=100.0, boot_id=BOOT) as box:
        for mono in (0.0, 1.0, 2.0):
            put(box, mono=mono)
        # All three are old at 105 s, but 1 and 2 are on their way to the broker.
        assert box.purge_expired(BOOT, 105.0, in_flight={1, 2}) == 1
        assert [item.seq for item in box.oldest(10, 10_000)] == [1, 2]
        assert box.stats().drops_total == 1


def test_stats_survive_a_file_that_cannot_be_read(db: Path) -> None:
    """A read error (here: pages scribbled over) must not escape `stats`, which the
    agent calls for every telemetry record: the counts come from memory."""
    box = Outbox(db, max_bytes=50_000_000, boot_id=BOOT).open()
    try:
        for i in range(300):
            put(box, {"x": random_pad(1400)["pad"], "i": i}, mono=float(i))
        assert box._conn is not None
        box._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        box._conn.execute("PRAGMA cache_size=0")
        with db.open("r+b") as f:
            f.seek(2048 * 5)
            f.write(random.Random(1).randbytes(2048 * 200))
        with pytest.raises(StorageError):
            box.oldest(10, 1 << 30)
        stats = box.stats()
        assert stats.depth == 300 and stats.oldest_seq is None and stats.fault is not None
    finally:
        box.close()


def test_record_larger_than_the_cap_is_refused_without_using_a_seq(box: Outbox) -> None:
    with pytest.raises(ValueError, match="exceeds"):
        put(box, random_pad(2_000_000))
    with pytest.raises(ValueError):
        put(box, {"w": float("nan")})  # not JSON
    with pytest.raises(ValueError):
        put(box, kind="log")
    with pytest.raises(ValueError):
        put(box, quality="maybe")
    assert put(box) == 1


def test_purge_by_age_uses_monotonic_time_only(db: Path) -> None:
    with Outbox(db, max_bytes=10_000, max_age_s=100.0, boot_id="b2") as box:
        # An older boot: its down time is unknown; age >= (its last mono - mono) + now.
        old_a = put(box, boot="b1", mono=1000.0, ts="1970-01-01T00:00:00.000Z")
        old_b = put(box, boot="b1", mono=1190.0, ts="2099-01-01T00:00:00.000Z")
        cur_a = put(box, boot="b2", mono=10.0)
        cur_b = put(box, boot="b2", mono=200.0)
        assert box.purge_expired("b2", mono_now_s=50.0) == 1  # old_a: 190 + 50 > 100
        assert box.purge_expired("b2", mono_now_s=250.0) == 2  # cur_a: 240; old_b: 0 + 250
        assert [item.seq for item in box.oldest(10, 10_000)] == [cur_b]
        assert box.stats().drops_total == 3
        assert {old_a, old_b, cur_a}.isdisjoint(s.seq for s in box.oldest(10, 10_000))
    with Outbox(db, max_bytes=10_000, boot_id="b2") as box:
        assert box.purge_expired("b2", mono_now_s=1e9) == 0  # no age limit configured
        assert box.stats().drops_total == 3


def test_correct_timestamps_touches_only_unsynced_rows_of_that_boot(box: Outbox) -> None:
    target = put(box, boot="b1", mono=10.0, quality="unsynced", ts="1970-01-01T00:00:10.000Z")
    synced = put(box, boot="b1", mono=20.0, quality="synced", ts="2026-05-01T00:00:00.000Z")
    other = put(box, boot="b0", mono=30.0, quality="unsynced", ts="1970-01-01T00:00:30.000Z")
    offset = 1_780_000_000.25
    assert box.correct_timestamps("b1", offset) == 1
    items = {item.seq: item for item in box.oldest(10, 10_000)}
    assert items[target].time_quality == "corrected"
    assert items[target].ts == iso_utc(10.0 + offset)
    assert items[target].ts.endswith(".250Z")
    assert (items[synced].ts, items[synced].time_quality) == ("2026-05-01T00:00:00.000Z", "synced")
    assert (items[other].ts, items[other].time_quality) == ("1970-01-01T00:00:30.000Z", "unsynced")
    assert box.correct_timestamps("b1", offset) == 0  # already corrected


# -- storage failures --------------------------------------------------------------


def test_full_database_raises_storage_error_and_recovers(db: Path) -> None:
    with Outbox(db, max_bytes=10_000_000, max_file_bytes=24 * 1024, boot_id=BOOT) as box:
        stored = []
        with pytest.raises(StorageError):
            for _ in range(100):
                stored.append(put(box, random_pad(600)))
        assert box.fault == FAULT_FULL
        assert 0 < len(stored) < 100
        assert [item.seq for item in box.oldest(1000, 10_000_000)] == stored  # nothing lost
        box.ack(stored)  # delivered at last: their pages are free again
        seq = put(box, random_pad(600))
        assert seq == stored[-1] + 1  # the failed put did not consume a seq
        assert box.fault is None
    assert seqs_in_file(db) == [seq]


def test_opening_under_a_file_never_raises(tmp_path: Path) -> None:
    blocker = tmp_path / "state"
    blocker.write_text("not a directory")
    box = Outbox(blocker / "outbox.db", max_bytes=10_000, boot_id=BOOT).open()
    try:
        assert box.fault is not None
        with pytest.raises(StorageError):
            put(box)
        assert box.oldest(10, 10_000) == []
        assert box.stats().depth == 0
        box.ack([1])  # harmless
    finally:
        box.close()


def test_put_before_open_raises_and_close_is_idempotent(db: Path) -> None:
    box = Outbox(db, max_bytes=10_000, boot_id=BOOT)
    with pytest.raises(StorageError):
        put(box)
    box.open()
    put(box)
    box.close()
    box.close()
    with pytest.raises(StorageError):
        put(box)


def test_second_agent_on_the_same_file_is_locked_out(db: Path) -> None:
    with Outbox(db, max_bytes=10_000, boot_id=BOOT) as first:
        put(first)
        second = Outbox(db, max_bytes=10_000, boot_id=BOOT).open()
        try:
            assert second.fault == FAULT_LOCKED
            with pytest.raises(StorageError):
                put(second)
        finally:
            second.close()
        assert put(first) == 2
    assert seqs_in_file(db) == [1, 2]


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A real 256 KiB tmpfs, when we may mount one (root); skipped otherwise."""
    with support_small_tmpfs(tmp_path / "mnt", "256k") as mnt:
        yield mnt


def test_real_full_disk_raises_storage_error_and_recovers(small_fs: Path) -> None:
    db = small_fs / "outbox.db"
    filler = small_fs / "logs"
    filler.write_bytes(b"\0" * 160 * 1024)  # the rest of the card filled by someone else
    with Outbox(db, max_bytes=10_000_000, boot_id=BOOT) as box:
        stored = []
        with pytest.raises(StorageError):
            for _ in range(200):
                stored.append(put(box, random_pad(600)))
        assert box.fault == FAULT_FULL
        assert stored
        filler.unlink()  # the technician (or logrotate) frees space
        seq = put(box, random_pad(600))
        assert seq == stored[-1] + 1
        assert box.fault is None
        assert [item.seq for item in box.oldest(1000, 10_000_000)] == [*stored, seq]
    assert seqs_in_file(db) == [*stored, seq]


def test_backlog_stays_readable_when_the_disk_is_full_at_start(small_fs: Path) -> None:
    db = small_fs / "outbox.db"
    with Outbox(db, max_bytes=10_000_000, boot_id=BOOT) as box:
        stored = [put(box, random_pad(600)) for _ in range(20)]
    filler = small_fs / "logs"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        with contextlib.suppress(OSError):
            while True:
                os.write(fd, b"\0" * 4096)
    finally:
        os.close(fd)
    box = Outbox(db, max_bytes=10_000_000, boot_id="boot-b").open()
    try:
        assert box.fault == FAULT_FULL
        assert [item.seq for item in box.oldest(100, 10_000_000)] == stored  # still sendable
        with pytest.raises(StorageError):
            put(box, boot="boot-b")
        filler.unlink()
        seq = put(box, boot="boot-b")
        assert seq > stored[-1]
        assert box.fault is None
    finally:
        box.close()
    assert seqs_in_file(db) == [*stored, seq]


def test_read_only_file_system_degrades_then_recovers(small_fs: Path) -> None:
    db = small_fs / "outbox.db"
    with Outbox(db, max_bytes=10_000, boot_id=BOOT) as box:
        put(box)
    subprocess.run(["mount", "-o", "remount,ro", str(small_fs)], check=True)
    try:
        box = Outbox(db, max_bytes=10_000, boot_id=BOOT).open()  # never raises
        assert box.fault == FAULT_READONLY
        with pytest.raises(StorageError):
            put(box)
        assert box.fault == FAULT_READONLY
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(small_fs)], check=True)
    try:
        assert put(box) == 2  # the next put reopens the file
        assert box.fault is None
    finally:
        box.close()
    assert seqs_in_file(db) == [1, 2]


def test_unwritable_directory_without_root(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root ignores directory permissions (the tmpfs test covers this)")
    locked = tmp_path / "ro"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        box = Outbox(locked / "outbox.db", max_bytes=10_000, boot_id=BOOT).open()
        assert box.fault == FAULT_READONLY
        with pytest.raises(StorageError):
            put(box)
        box.close()
    finally:
        locked.chmod(0o755)


# -- corruption ----------------------------------------------------------------------


@pytest.mark.parametrize("damage", ["garbage", "truncated", "zeroed_pages"])
def test_corrupt_file_is_replaced_and_seq_keeps_increasing(db: Path, damage: str) -> None:
    with Outbox(db, max_bytes=10_000_000, boot_id=BOOT) as box:
        last = 0
        for i in range(SEQ_FLOOR_EVERY + 6):
            last = put(box, {"i": i, "pad": "x" * 600})
    raw = db.read_bytes()
    if damage == "garbage":
        db.write_bytes(b"\xde\xad\xbe\xef" * 4096)
    elif damage == "truncated":
        db.write_bytes(raw[: len(raw) // 2 + 100])
    else:
        db.write_bytes(raw[:4096] + b"\0" * 8192 + raw[4096 + 8192 :])
    damaged = db.read_bytes()

    box = Outbox(db, max_bytes=10_000_000, boot_id=BOOT).open()  # never raises
    try:
        assert box.fault == FAULT_CORRUPT_REPLACED
        assert box.replaced_as == db.with_name(db.name + ".corrupt-1")
        assert box.replaced_as.read_bytes() == damaged  # kept for forensics
        seq = put(box)
        assert seq > last
        assert box.fault == FAULT_CORRUPT_REPLACED  # latched until acknowledged
        box.clear_fault()
        assert box.fault is None
    finally:
        box.close()
    assert seqs_in_file(db) == [seq]


@pytest.mark.parametrize(
    ("statement", "value"),
    [
        ("UPDATE meta SET value = ? WHERE key = 'last_seq'", "not-a-number"),
        ("INSERT OR REPLACE INTO meta (key, value) VALUES ('drops_total', ?)", -5),
        ("UPDATE meta SET value = ? WHERE key = 'last_seq'", 3.5),
        ("INSERT OR REPLACE INTO meta (key, value) VALUES ('drops_reported', ?)", b"\x00"),
    ],
    ids=["text-seq-floor", "negative-drops", "fractional-seq", "blob-drops"],
)
def test_a_file_holding_nonsense_ends_like_a_corrupt_one(
    db: Path, statement: str, value: object
) -> None:
    # It passes SQLite's quick check; before, Outbox.open raised ValueError: a crash loop.
    with Outbox(db, max_bytes=10_000_000, boot_id=BOOT) as box:
        last = 0
        for i in range(SEQ_FLOOR_EVERY + 3):
            last = put(box, {"i": i})
    conn = sqlite3.connect(db)
    conn.execute(statement, (value,))
    conn.commit()
    conn.close()
    box = Outbox(db, max_bytes=10_000_000, boot_id=BOOT).open()  # never raises
    try:
        assert box.fault == FAULT_CORRUPT_REPLACED
        assert box.replaced_as == db.with_name(db.name + ".corrupt-1")
        assert put(box) > last  # never a seq issued before
    finally:
        box.close()


def test_corrupt_copies_are_bounded(db: Path) -> None:
    for _ in range(5):
        db.write_bytes(b"garbage!" * 1000)
        Outbox(db, max_bytes=10_000, boot_id=BOOT).open().close()
    kept = sorted(p.name for p in db.parent.glob("outbox.db.corrupt-*"))
    assert kept == ["outbox.db.corrupt-3", "outbox.db.corrupt-4", "outbox.db.corrupt-5"]


def test_foreign_sqlite_file_is_moved_aside_not_used(db: Path) -> None:
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE photos (id INTEGER)")
    conn.commit()
    conn.close()
    with Outbox(db, max_bytes=10_000, boot_id=BOOT) as box:
        assert box.fault == FAULT_CORRUPT_REPLACED
        assert put(box) == 1
    assert db.with_name(db.name + ".corrupt-1").exists()


# -- kill -9 -------------------------------------------------------------------------

_WORKER = """
import sys
from pathlib import Path
from bench_agent.link.outbox import Outbox

box = Outbox(Path(sys.argv[1]), max_bytes=100_000_000, boot_id="kill-test").open()
out = sys.stdout
n = 0
while True:
    n += 1
    kind = "event" if n % 10 == 0 else "telemetry"
    seq = box.put(kind, {"n": n, "pad": "x" * 500}, boot_id="kill-test", mono_s=float(n),
                  ts="2026-01-01T00:00:00.000Z", time_quality="synced")
    out.write(f"P {seq}\\n")
    out.flush()
    if n % 2 == 0:
        out.write(f"A {seq - 1}\\n")  # the intent is written before the ack
        out.flush()
        box.ack([seq - 1])
"""


def test_kill_9_at_random_moments_loses_and_reuses_nothing(db: Path, tmp_path: Path) -> None:
    rng = random.Random(os.environ.get("PYTEST_SEED", "outbox"))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    seen: set[int] = set()
    acked: set[int] = set()
    highest = 0
    for run in range(10):
        log = tmp_path / f"run{run}.log"
        with log.open("w") as out:
            proc = subprocess.Popen(
                [sys.executable, "-c", _WORKER, str(db)], stdout=out, env=env, cwd=REPO
            )
            try:
                deadline = time.monotonic() + 20
                while log.stat().st_size == 0 and time.monotonic() < deadline:
                    time.sleep(0.01)
                time.sleep(rng.uniform(0.0, 0.3))
                proc.send_signal(signal.SIGKILL)
            finally:
                proc.kill()
                proc.wait(timeout=10)
        assert proc.returncode == -signal.SIGKILL
        committed: list[int] = []
        for line in log.read_text().splitlines(keepends=True):
            if not line.endswith("\n"):
                continue  # cut by the kill mid-write
            tag, value = line.split()
            if tag == "P":
                committed.append(int(value))
            else:
                acked.add(int(value))
        assert committed, f"run {run} recorded nothing"
        assert committed == sorted(committed)
        assert committed[0] > highest, f"run {run} reused a seq"
        assert seen.isdisjoint(committed)
        seen.update(committed)
        present = set(seqs_in_file(db))  # integrity_check is ok too
        missing = {s for s in seen if s not in present and s not in acked}
        assert not missing, f"run {run}: committed records lost: {sorted(missing)[:10]}"
        highest = max(highest, *present, *committed)


def test_every_outbox_has_its_own_seq_epoch_kept_across_restarts(db: Path) -> None:
    with Outbox(db, max_bytes=10_000_000, boot_id=BOOT) as box:
        epoch = box.seq_epoch
        put(box)
        assert [item.seq_epoch for item in box.oldest(10, 1 << 20)] == [epoch]
    assert re.fullmatch(r"[0-9a-f]{16}", epoch)
    with Outbox(db, max_bytes=10_000_000, boot_id=BOOT) as box:
        assert box.seq_epoch == epoch  # the same store: the same epoch
    # A replaced SD card: a new file, a new epoch, seq from 1 again.
    other = db.with_name("other.db")
    with Outbox(other, max_bytes=10_000_000, boot_id=BOOT) as box:
        assert box.seq_epoch != epoch
        assert put(box) == 1
    # A corrupt file set aside: the fresh one is a new epoch too.
    db.write_bytes(b"garbage!" * 1000)
    with Outbox(db, max_bytes=10_000_000, boot_id=BOOT) as box:
        assert box.fault == FAULT_CORRUPT_REPLACED
        assert box.seq_epoch != epoch


def test_a_store_from_before_epochs_gets_one_and_keeps_its_seqs(db: Path) -> None:
    with Outbox(db, max_bytes=10_000_000, boot_id=BOOT) as box:
        last = put(box)
    conn = sqlite3.connect(db)
    conn.execute("DELETE FROM meta WHERE key = 'seq_epoch'")
    conn.commit()
    conn.close()
    with Outbox(db, max_bytes=10_000_000, boot_id=BOOT) as box:
        assert re.fullmatch(r"[0-9a-f]{16}", box.seq_epoch)
        assert box.fault is None
        assert put(box) == last + 1
