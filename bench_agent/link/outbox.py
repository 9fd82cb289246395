"""The on-disk outbox: every telemetry record and event is stored here BEFORE it is
published, and leaves only when the broker's PUBACK arrives.

SQLite (standard library), one file, one connection owned by the agent's main
loop. Every public method takes a lock, so a call from paho's thread is safe,
but the design is one owner (STYLE.md: callbacks enqueue, one loop acts).

Times are always arguments: the store never reads a clock, because a Pi has no
RTC and its wall clock jumps when NTP first syncs.

Decisions, and why
------------------
seq
    One counter per bench, shared by telemetry and events. `put` writes the row
    with its seq in one transaction, so a committed seq is always either in the
    table or below `meta.last_seq` (every transaction that deletes rows without
    inserting one also writes `meta.last_seq`). At open the counter resumes at
    `max(meta.last_seq, MAX(seq))`. A sidecar `<name>.seqfloor` (atomic rename +
    fsync) is written at every open (with the last seq) and before every
    `SEQ_FLOOR_EVERY`-th seq is committed (with that seq), so every seq ever
    issued is `< floor + SEQ_FLOOR_EVERY`. When the
    database cannot be trusted to hold the newest seq -- it was replaced after
    corruption, deleted, or the machine lost power while we were running -- the
    counter resumes at `floor + SEQ_FLOOR_EVERY`: a gap (which ops read as
    "maybe lost", truthfully) but never a seq used twice.

Durability (WAL + synchronous=NORMAL)
    A commit appends frames to the WAL without fsync; the WAL is fsynced only at
    checkpoints. A process crash (kill -9, OOM) loses nothing: the frames are in
    the kernel's page cache. A power cut can roll back the commits the kernel had
    not yet written back (its writeback window is ~30 s, so at 60 s per record
    that is the last telemetry record) but never corrupts the file. Such a power
    cut is recognised at the next open (not closed cleanly, and a different
    kernel `boot_id`), and the seq counter then jumps past the floor, so a seq
    published just before the cut is never reused. Events are rare and precious
    (a tamper switch opens exactly when someone may cut the power), so an event
    commits with synchronous=FULL: fsynced before `put` returns, which also makes
    every earlier telemetry commit durable.

The other decisions are with the code they explain: SD-card writes (pages, locking,
lazy acks, checkpoints) in outbox_file.py, the byte cap and the age limit in
outbox_budget.py, the faults in outbox_faults.py.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
from collections.abc import Collection, Iterable
from pathlib import Path
from types import TracebackType
from typing import Final

from bench_agent.clock import iso_utc, read_boot_id
from bench_agent.errors import StorageError
from bench_agent.json_value import JsonObject
from bench_agent.link.outbox_budget import cap_victims, expired_rows
from bench_agent.link.outbox_faults import (
    FAULT_CORRUPT,
    FAULT_CORRUPT_REPLACED,
    FAULT_FULL,
    FAULT_IO,
    FAULT_LOCKED,
    FAULT_READONLY,
)
from bench_agent.link.outbox_file import (
    SEQ_FLOOR_EVERY,
    OutboxFile,
    chunks,
    delete_seqs,
    rollback,
    set_meta,
)
from bench_agent.link.outbox_records import (
    KINDS,
    TIME_QUALITIES,
    Kind,
    OutboxItem,
    OutboxStats,
    encode_body,
    pack_body,
)

__all__ = [
    "ACK_FLUSH_AT",
    "FAULT_CORRUPT",
    "FAULT_CORRUPT_REPLACED",
    "FAULT_FULL",
    "FAULT_IO",
    "FAULT_LOCKED",
    "FAULT_READONLY",
    "KINDS",
    "SEQ_FLOOR_EVERY",
    "TIME_QUALITIES",
    "Kind",
    "Outbox",
    "OutboxItem",
    "OutboxStats",
    "encode_body",
    "pack_body",
]

log = logging.getLogger(__name__)

ACK_FLUSH_AT: Final = 64  # pending acks that force a delete transaction of their own


class Outbox(OutboxFile):
    """SQLite outbox with a byte cap, an optional age limit and a persistent seq.

    `max_bytes`: cap on the sum of stored body sizes, bytes.
    `max_age_s`: records older than this (monotonic seconds) are dropped by
    `purge_expired`; None keeps them until the byte cap drops them.
    `max_file_bytes`: hard ceiling on the database file, bytes (None: none).
    `boot_id`: this boot's kernel boot id (default: read from /proc).
    `fault`, `clear_fault()` and `seq_epoch` come with the file (`OutboxFile`).
    """

    def __init__(
        self,
        path: Path,
        *,
        max_bytes: int,
        max_age_s: float | None = None,
        max_file_bytes: int | None = None,
        boot_id: str | None = None,
    ) -> None:
        if max_bytes <= 0:
            raise ValueError(f"max_bytes must be > 0, got {max_bytes}")
        if max_age_s is not None and max_age_s <= 0:
            raise ValueError(f"max_age_s must be > 0, got {max_age_s}")
        super().__init__(path, max_file_bytes=max_file_bytes, boot_id=boot_id)
        self.max_bytes = max_bytes
        self.max_age_s = max_age_s
        self._lock = threading.RLock()

    # -- life cycle -------------------------------------------------------------

    def open(self) -> Outbox:
        """Open (or create) the file. Never raises for storage trouble: see `fault`."""
        with self._lock:
            if self._boot_id is None:
                self._boot_id = read_boot_id()
            self._opened = True
            self._connect()
            return self

    def close(self) -> None:
        """Apply pending acks, mark a clean shutdown and close. Idempotent; never raises."""
        with self._lock:
            self._opened = False
            conn, self._conn = self._conn, None
            if conn is None:
                return
            try:
                conn.execute("BEGIN IMMEDIATE")
                self._delete_pending(conn)
                set_meta(conn, "last_seq", self._last_seq)
                set_meta(conn, "clean", 1)
                conn.execute("COMMIT")
                self._pending_acks.clear()
            except sqlite3.Error as exc:
                log.warning("outbox: could not record a clean close: %s", exc)
            finally:
                with contextlib.suppress(sqlite3.Error):
                    conn.close()  # the last connection checkpoints and removes the WAL

    def __enter__(self) -> Outbox:
        return self.open()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- writing ----------------------------------------------------------------

    def put(
        self,
        kind: Kind,
        body: JsonObject | str,
        *,
        boot_id: str,
        mono_s: float,
        ts: str,
        time_quality: str,
        in_flight: Collection[int] = (),
    ) -> int:
        """Store one record and return its seq, committed before returning.

        `body`: a dict, or the text `encode_body` made of it (the agent encodes each
        record once, for the store and the wire).
        `mono_s`: monotonic seconds since boot `boot_id`; `ts`: ISO 8601 UTC.
        `in_flight`: seqs published and waiting for their PUBACK. The cap never drops
        them (they are about to leave anyway, and a drop must mean "never sent"): it
        drops older ones only, and the file may exceed the cap by their size briefly.
        Raises ValueError for a bad argument (nothing written) and StorageError
        when the disk refuses (see `fault`); the seq is not consumed then.
        """
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {sorted(KINDS)}, got {kind!r}")
        if time_quality not in TIME_QUALITIES:
            raise ValueError(f"time_quality must be one of {sorted(TIME_QUALITIES)}")
        data = pack_body(body if isinstance(body, str) else encode_body(body))
        size = len(data)
        if size > self.max_bytes:
            raise ValueError(f"record of {size} bytes exceeds the outbox cap {self.max_bytes}")
        with self._lock:
            conn = self._writable()
            seq = self._last_seq + 1
            try:
                if self._open_writes_due:
                    self._write_floor(self._last_seq)
                if seq % SEQ_FLOOR_EVERY == 0:
                    self._write_floor(seq)  # before the commit: see the module docstring
                if kind == "event":
                    conn.execute("PRAGMA synchronous=FULL")
                conn.execute("BEGIN IMMEDIATE")
                if self._open_writes_due:
                    self._mark_running(conn)
                freed = self._delete_pending(conn)
                conn.execute(
                    "INSERT INTO outbox (seq, kind, boot_id, mono_s, ts, time_quality, size, body)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (seq, kind, boot_id, mono_s, ts, time_quality, size, data),
                )
                dropped, dropped_bytes = self._drop_over_cap(
                    conn, self._bytes - freed + size, in_flight
                )
                if dropped:
                    set_meta(conn, "drops_total", self._drops_total + dropped)
                conn.execute("COMMIT")
            except (sqlite3.Error, OSError) as exc:
                raise self._write_failed(conn, exc) from exc
            finally:
                if kind == "event":
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("PRAGMA synchronous=NORMAL")
            self._count += 1 - len(self._pending_acks) - dropped
            self._bytes += size - freed - dropped_bytes
            self._pending_acks.clear()
            self._drops_total += dropped
            self._last_seq = seq
            self._open_writes_due = False
            self._write_fault = None
            return seq

    def ack(self, seqs: Iterable[int]) -> None:
        """The broker has these seqs: they leave the outbox. Unknown seqs are ignored.

        The rows are deleted by the next write transaction (see "SD-card writes" in
        outbox_file.py); from now on no read returns them.
        """
        with self._lock:
            wanted = [s for s in set(seqs) if s not in self._pending_acks]
            conn = self._conn
            if conn is None or not wanted:
                return
            try:
                for chunk in chunks(sorted(wanted), 500):
                    marks = ",".join("?" * len(chunk))
                    rows = conn.execute(
                        f"SELECT seq, size FROM outbox WHERE seq IN ({marks})",  # noqa: S608
                        chunk,
                    )
                    self._pending_acks.update(rows)
            except sqlite3.Error as exc:
                raise self._read_failed(exc) from exc
            if len(self._pending_acks) >= ACK_FLUSH_AT:
                self.flush()

    def flush(self) -> None:
        """Delete the acked rows now, in a transaction of their own."""
        with self._lock:
            conn = self._conn
            if conn is None or not self._pending_acks:
                return
            try:
                conn.execute("BEGIN IMMEDIATE")
                freed = self._delete_pending(conn)
                set_meta(conn, "last_seq", self._last_seq)
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                raise self._write_failed(conn, exc) from exc
            self._count -= len(self._pending_acks)
            self._bytes -= freed
            self._pending_acks.clear()

    def correct_timestamps(self, boot_id: str, wall_minus_mono_s: float) -> int:
        """The clock is now synced: give the records of `boot_id` still "unsynced" a
        wall time `mono_s + wall_minus_mono_s` (seconds) and quality "corrected".
        Returns how many were corrected."""
        with self._lock:
            conn = self._writable()
            try:
                rows = [
                    (seq, mono)
                    for seq, mono in conn.execute(
                        "SELECT seq, mono_s FROM outbox WHERE boot_id = ? AND time_quality = ?",
                        (boot_id, "unsynced"),
                    )
                    if seq not in self._pending_acks
                ]
                if not rows:
                    return 0
                conn.execute("BEGIN IMMEDIATE")
                conn.executemany(
                    "UPDATE outbox SET ts = ?, time_quality = 'corrected' WHERE seq = ?",
                    ((iso_utc(mono + wall_minus_mono_s), seq) for seq, mono in rows),
                )
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                raise self._write_failed(conn, exc) from exc
            self._write_fault = None
            return len(rows)

    def purge_expired(
        self, boot_id: str, mono_now_s: float, in_flight: Collection[int] = ()
    ) -> int:
        """Drop records certainly older than `max_age_s` (counted as drops).

        `boot_id`/`mono_now_s`: the current boot and its monotonic seconds now.
        `in_flight`: published, waiting for their PUBACK: spared, like the cap does.
        Older boots are aged by a lower bound (outbox_budget.py). Returns the count.
        """
        if self.max_age_s is None:
            return 0
        with self._lock:
            conn = self._writable()
            try:
                rows = expired_rows(conn, boot_id, mono_now_s, self.max_age_s)
                expired = {
                    seq: size
                    for seq, size in rows
                    if seq not in self._pending_acks and seq not in in_flight
                }
                if not expired:
                    return 0
                conn.execute("BEGIN IMMEDIATE")
                freed = self._delete_pending(conn)
                delete_seqs(conn, expired)
                set_meta(conn, "last_seq", self._last_seq)
                set_meta(conn, "drops_total", self._drops_total + len(expired))
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                raise self._write_failed(conn, exc) from exc
            self._count -= len(self._pending_acks) + len(expired)
            self._bytes -= freed + sum(expired.values())
            self._pending_acks.clear()
            self._drops_total += len(expired)
            self._write_fault = None
            return len(expired)

    def take_new_drops(self) -> int:
        """Drops since the last call (persisted), for the caller to report as an event."""
        with self._lock:
            new = self._drops_total - self._drops_reported
            if new <= 0:
                return 0
            self._drops_reported = self._drops_total
            conn = self._conn
            if conn is not None:
                try:
                    conn.execute("BEGIN IMMEDIATE")
                    set_meta(conn, "drops_reported", self._drops_reported)
                    conn.execute("COMMIT")
                except sqlite3.Error as exc:
                    # Worst case the same drops are reported again after a restart.
                    rollback(conn)
                    log.warning("outbox: could not persist reported drops: %s", exc)
            return new

    # -- reading ----------------------------------------------------------------

    def oldest(self, limit: int, max_bytes: int, exclude: Collection[int] = ()) -> list[OutboxItem]:
        """The backlog in seq order: at most `limit` records and `max_bytes` of
        bodies (but always the first one), skipping seqs in `exclude` (in flight)."""
        items: list[OutboxItem] = []
        if limit <= 0:
            return items
        total = 0
        with self._lock:
            for item in self._scan("ORDER BY seq", (), exclude):
                if items and total + item.size > max_bytes:
                    break
                items.append(item)
                total += item.size
                if len(items) >= limit:
                    break
        return items

    def newest(self, kind: Kind, exclude: Collection[int] = ()) -> OutboxItem | None:
        """The most recent stored record of `kind` not in `exclude`, or None."""
        with self._lock:
            items = self._scan("WHERE kind = ? ORDER BY seq DESC", (kind,), exclude)
            try:
                return next(items, None)
            finally:
                items.close()

    def stats(self) -> OutboxStats:
        """Never raises: the counts are kept in memory; when the file cannot be read
        the oldest record is unknown (None) and `fault` says why."""
        with self._lock:
            items = self._scan("ORDER BY seq", (), ())
            try:
                first = next(items, None)
            except StorageError:
                first = None
            finally:
                items.close()
            return OutboxStats(
                depth=self._count - len(self._pending_acks),
                bytes=self._bytes - sum(self._pending_acks.values()),
                oldest_seq=first.seq if first else None,
                oldest_mono_s=first.mono_s if first else None,
                oldest_boot_id=first.boot_id if first else None,
                drops_total=self._drops_total,
                last_seq=self._last_seq,
                fault=self.fault,
            )

    # -- internals --------------------------------------------------------------

    def _drop_over_cap(
        self, conn: sqlite3.Connection, total: int, in_flight: Collection[int]
    ) -> tuple[int, int]:
        """Delete the oldest rows until `total` body bytes fit the cap, stopping at the
        first one in flight (drops stay "the oldest"); (count, bytes)."""
        if total <= self.max_bytes:
            return 0, 0
        victims = cap_victims(
            conn.execute("SELECT seq, size FROM outbox ORDER BY seq"),
            total,
            self.max_bytes,
            in_flight,
        )
        delete_seqs(conn, victims)
        log.warning(
            "outbox: cap of %d bytes reached, dropped %d oldest", self.max_bytes, len(victims)
        )
        return len(victims), sum(victims.values())
