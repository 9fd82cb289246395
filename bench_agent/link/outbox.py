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

SD-card writes
    * `page_size=2048`: a WAL frame is one page, so small pages mean few bytes per
      commit, but the agent's ~1.5 kB telemetry row must fit one page (1024-byte
      pages spill it to overflow pages: 3.2 kB per delivered record against 2.1 kB).
    * `locking_mode=EXCLUSIVE`: the WAL index lives in heap memory, so there is no
      `-shm` file to dirty on every commit. It also stops a second agent from
      opening the same outbox (it gets `storage_locked`). The CLI asks the daemon
      over its socket, never this file.
    * Acks are applied lazily: `ack` only remembers the seqs; their rows are
      deleted inside the next `put`'s transaction (before the insert, so a
      steady-state commit rewrites the single leaf page: one ~2 kB frame per
      record), or at `flush`/`close`, or once `ACK_FLUSH_AT` acks wait. After a
      crash the last few acked records are sent again: a duplicate by seq, which
      QoS 1 allows anyway, never a loss.
    * `wal_autocheckpoint=128` pages, `journal_size_limit` 256 KiB, no index but
      the primary key, `secure_delete=OFF`, bodies as compact JSON.
    Measured (bench/bench_outbox_disk.py, ext4, the agent's 1.5 kB records): SQLite
    writes 2.1 kB per delivered record (8.4 kB per record while offline). The kernel
    writes whole 4 KiB pages, so when each record is written back on its own (60 s
    apart, the default 30 s writeback) the card sees ~6.5 kB per delivered record;
    ~2.4 kB when writeback merges records (a longer `vm.dirty_expire_centisecs`).
    The 1 kB target is below the record's own size: see the README.

Bound
    `max_bytes` caps the sum of stored body sizes (UTF-8 bytes of the compact JSON;
    the file is larger by row and page overhead: 1.37x with 2 kB pages and the
    agent's 1.5 kB records; a week offline is a 20.7 MB file for 15.1 MB of bodies,
    see bench/bench_outbox_disk.py). On overflow the OLDEST rows not in flight are
    dropped in the same transaction as the insert; every drop is counted in
    `meta.drops_total`.
    An optional `max_file_bytes` sets `PRAGMA max_page_count` as a hard ceiling
    that protects the rest of the SD card; reaching it is `storage_full`.

Age (`purge_expired`)
    Age is measured with monotonic time only. For the current boot: `mono_now_s -
    mono_s`. For an older boot the time the Pi was off is unknown, so the age used
    is a LOWER bound: `(newest mono_s of that boot still stored - mono_s) +
    mono_now_s`. A record is dropped only when it is certainly older than
    `max_age_s`; the byte cap bounds whatever this keeps.

Faults (`fault`)
    `storage_full`, `storage_readonly`, `storage_locked`, `storage_io_error`,
    `storage_corrupt`: a write failed; `put` raises StorageError and the next
    successful `put` clears the fault. `storage_corrupt_replaced`: the file was
    unreadable at open and was moved aside as `<name>.corrupt-<n>` (with its -wal);
    it stays latched until `clear_fault()` so the main loop cannot miss it.
    The store never raises at `open`: when it cannot open, it is degraded (every
    `put` retries the open and raises StorageError), and the agent keeps
    publishing live data. When the file opens but cannot be written (a full disk
    at boot), the backlog stays readable so it can still be sent.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import secrets
import sqlite3
import threading
from collections.abc import Collection, Generator, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Literal

from bench_agent.clock import UNKNOWN_BOOT_ID, iso_utc, read_boot_id
from bench_agent.errors import StorageError
from bench_agent.statefile import replace_atomically

log = logging.getLogger(__name__)

Kind = Literal["telemetry", "event"]
KINDS: Final = frozenset({"telemetry", "event"})
TIME_QUALITIES: Final = frozenset({"synced", "unsynced", "corrected"})

FAULT_FULL: Final = "storage_full"
FAULT_READONLY: Final = "storage_readonly"
FAULT_LOCKED: Final = "storage_locked"
FAULT_IO: Final = "storage_io_error"
FAULT_CORRUPT: Final = "storage_corrupt"
FAULT_CORRUPT_REPLACED: Final = "storage_corrupt_replaced"

SCHEMA_VERSION: Final = 1
PAGE_SIZE: Final = 2048  # bytes; one WAL frame per page changed
WAL_AUTOCHECKPOINT_PAGES: Final = 128
JOURNAL_SIZE_LIMIT: Final = 256 * 1024  # bytes the WAL is truncated to after a checkpoint
SEQ_FLOOR_EVERY: Final = 64  # seqs between two writes of the sidecar floor (~1 h at 60 s)
ACK_FLUSH_AT: Final = 64  # pending acks that force a delete transaction of their own
_EPOCH = re.compile(r"[0-9a-f]{16}")
KEEP_CORRUPT: Final = 3  # corrupt copies kept for forensics; older ones are deleted

# Primary result codes (sqlite3.h); extended codes carry them in the low byte.
_SQLITE_PERM = 3
_SQLITE_BUSY = 5
_SQLITE_LOCKED = 6
_SQLITE_READONLY = 8
_SQLITE_IOERR = 10
_SQLITE_CORRUPT = 11
_SQLITE_FULL = 13
_SQLITE_CANTOPEN = 14
_SQLITE_NOTADB = 26

_SQLITE_FAULTS: Final = {
    _SQLITE_FULL: FAULT_FULL,
    _SQLITE_READONLY: FAULT_READONLY,
    _SQLITE_PERM: FAULT_READONLY,
    _SQLITE_BUSY: FAULT_LOCKED,
    _SQLITE_LOCKED: FAULT_LOCKED,
    _SQLITE_CORRUPT: FAULT_CORRUPT,
    _SQLITE_NOTADB: FAULT_CORRUPT,
}
_ERRNO_FAULTS: Final = {
    errno.ENOSPC: FAULT_FULL,
    errno.EDQUOT: FAULT_FULL,
    errno.EROFS: FAULT_READONLY,
    errno.EACCES: FAULT_READONLY,
    errno.EPERM: FAULT_READONLY,
}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    boot_id TEXT NOT NULL,
    mono_s REAL NOT NULL,
    ts TEXT NOT NULL,
    time_quality TEXT NOT NULL,
    size INTEGER NOT NULL,
    body TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID;
"""
_COLUMNS = "seq, kind, boot_id, mono_s, ts, time_quality, size, body"


@dataclass(frozen=True, slots=True)
class OutboxItem:
    """One stored record, as the publisher needs it.

    The body stays the compact JSON text it was stored as: the publisher splices
    it into the message without decoding and re-encoding it, which is most of the
    CPU a backlog drain costs (bench/bench_drain.py). `body` decodes on demand.
    """

    seq: int
    kind: str  # "telemetry" | "event"
    boot_id: str  # kernel boot id of the boot that recorded it
    mono_s: float  # monotonic seconds since that boot, at recording
    ts: str  # ISO 8601 UTC wall time at recording (or corrected afterwards)
    time_quality: str  # "synced" | "unsynced" | "corrected"
    body_json: str  # the record without the envelope: a compact JSON object
    size: int  # bytes of the stored body (UTF-8)
    # The outbox's random id, made with its file: a replaced SD card (or a corrupt
    # file set aside) starts a new epoch, so ops never mistake a new seq 1 for an
    # old one. Ops dedupe on (bench, seq_epoch, seq). Empty before it is stored.
    seq_epoch: str = ""

    @property
    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = json.loads(self.body_json)
        return body

    @classmethod
    def of(
        cls,
        seq: int,
        kind: str,
        body: dict[str, Any],
        *,
        boot_id: str,
        mono_s: float,
        ts: str,
        time_quality: str,
    ) -> OutboxItem:
        """An item from a body dict (a record just made, not read back from the store)."""
        text = encode_body(body)
        return cls(seq, kind, boot_id, mono_s, ts, time_quality, text, len(text.encode()))


def encode_body(body: dict[str, Any]) -> str:
    """The stored form of a body: compact JSON, UTF-8 text, no NaN."""
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


@dataclass(frozen=True, slots=True)
class OutboxStats:
    """The outbox at a glance (for telemetry health and the technician's `status`)."""

    depth: int  # records waiting for a PUBACK
    bytes: int  # sum of their body sizes, bytes (what `max_bytes` caps)
    oldest_seq: int | None
    oldest_mono_s: float | None  # monotonic seconds of the oldest record, in its boot
    oldest_boot_id: str | None
    drops_total: int  # records dropped by the cap or age limit, ever (persisted)
    last_seq: int  # the last seq issued (0 before the first record)
    fault: str | None


class _CorruptError(Exception):
    """The file is not a usable outbox (corrupt, not SQLite, or not our schema)."""


class Outbox:
    """SQLite outbox with a byte cap, an optional age limit and a persistent seq.

    `max_bytes`: cap on the sum of stored body sizes, bytes.
    `max_age_s`: records older than this (monotonic seconds) are dropped by
    `purge_expired`; None keeps them until the byte cap drops them.
    `max_file_bytes`: hard ceiling on the database file, bytes (None: none).
    `boot_id`: this boot's kernel boot id (default: read from /proc).
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
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.max_age_s = max_age_s
        self.max_file_bytes = max_file_bytes
        self._boot_id = boot_id
        self._floor_path = self.path.with_name(self.path.name + ".seqfloor")
        self._lock = threading.RLock()
        self._conn: sqlite3.Connection | None = None
        self._opened = False
        self._last_seq = 0
        self._count = 0  # rows in the table, pending acks included
        self._bytes = 0  # their body sizes
        self._pending_acks: dict[int, int] = {}  # seq -> size, acked but not yet deleted
        self._drops_total = 0
        self._drops_reported = 0
        self._write_fault: str | None = None
        self._open_writes_due = False  # the floor and meta of `_load` wait for a put
        self._replaced_fault = False
        self.replaced_as: Path | None = None  # where the last corrupt file went
        self._seq_epoch = ""  # read (or made) when the file is opened

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
                _set_meta(conn, "last_seq", self._last_seq)
                _set_meta(conn, "clean", 1)
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

    # -- faults -----------------------------------------------------------------

    @property
    def fault(self) -> str | None:
        """The current storage fault, or None. A write fault wins over the latched
        `storage_corrupt_replaced`."""
        if self._write_fault is not None:
            return self._write_fault
        return FAULT_CORRUPT_REPLACED if self._replaced_fault else None

    def clear_fault(self) -> None:
        """Acknowledge `storage_corrupt_replaced` (a write fault clears itself on success)."""
        self._replaced_fault = False

    # -- writing ----------------------------------------------------------------

    def put(
        self,
        kind: Kind,
        body: dict[str, Any] | str,
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
        data = body if isinstance(body, str) else encode_body(body)
        size = len(data.encode())
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
                    _set_meta(conn, "drops_total", self._drops_total + dropped)
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

        The rows are deleted by the next write transaction (see the module
        docstring); from now on no read returns them.
        """
        with self._lock:
            wanted = [s for s in set(seqs) if s not in self._pending_acks]
            conn = self._conn
            if conn is None or not wanted:
                return
            try:
                for chunk in _chunks(sorted(wanted), 500):
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
                _set_meta(conn, "last_seq", self._last_seq)
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
        Older boots are aged by a lower bound (module docstring). Returns the count.
        """
        if self.max_age_s is None:
            return 0
        with self._lock:
            conn = self._writable()
            try:
                rows = conn.execute(
                    "SELECT o.seq, o.size FROM outbox o JOIN "
                    "(SELECT boot_id, MAX(mono_s) AS last FROM outbox GROUP BY boot_id) b "
                    "ON o.boot_id = b.boot_id "
                    "WHERE (o.boot_id = :boot AND :now - o.mono_s > :age) "
                    "OR (o.boot_id != :boot AND b.last - o.mono_s + :now > :age)",
                    {"boot": boot_id, "now": mono_now_s, "age": self.max_age_s},
                ).fetchall()
                expired = {
                    seq: size
                    for seq, size in rows
                    if seq not in self._pending_acks and seq not in in_flight
                }
                if not expired:
                    return 0
                conn.execute("BEGIN IMMEDIATE")
                freed = self._delete_pending(conn)
                _delete_seqs(conn, expired)
                _set_meta(conn, "last_seq", self._last_seq)
                _set_meta(conn, "drops_total", self._drops_total + len(expired))
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
                    _set_meta(conn, "drops_reported", self._drops_reported)
                    conn.execute("COMMIT")
                except sqlite3.Error as exc:
                    # Worst case the same drops are reported again after a restart.
                    _rollback(conn)
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

    def _scan(
        self, clause: str, params: tuple[Any, ...], exclude: Collection[int]
    ) -> Generator[OutboxItem, None, None]:
        conn = self._conn
        if conn is None:
            return
        try:
            cursor = conn.execute(f"SELECT {_COLUMNS} FROM outbox {clause}", params)  # noqa: S608
            for seq, kind, boot_id, mono_s, ts, quality, size, body in cursor:
                if seq in exclude or seq in self._pending_acks:
                    continue
                yield OutboxItem(
                    seq, kind, boot_id, mono_s, ts, quality, body, size, self._seq_epoch
                )
        except sqlite3.Error as exc:
            raise self._read_failed(exc) from exc

    def _writable(self) -> sqlite3.Connection:
        if not self._opened:
            raise StorageError("outbox is not open")
        if self._conn is None:
            self._connect()  # degraded: try again, the disk may be back
        if self._conn is None:
            raise StorageError(f"outbox {self.path} unavailable: {self.fault}")
        return self._conn

    def _delete_pending(self, conn: sqlite3.Connection) -> int:
        """Delete the acked rows inside the caller's transaction; returns bytes freed."""
        if self._pending_acks:
            _delete_seqs(conn, self._pending_acks)
        return sum(self._pending_acks.values())

    def _drop_over_cap(
        self, conn: sqlite3.Connection, total: int, in_flight: Collection[int]
    ) -> tuple[int, int]:
        """Delete the oldest rows until `total` body bytes fit the cap, stopping at the
        first one in flight (drops stay "the oldest"); (count, bytes)."""
        if total <= self.max_bytes:
            return 0, 0
        victims: dict[int, int] = {}
        freed = 0
        for seq, size in conn.execute("SELECT seq, size FROM outbox ORDER BY seq"):
            if total - freed <= self.max_bytes or seq in in_flight:
                break
            victims[seq] = size
            freed += size
        _delete_seqs(conn, victims)
        log.warning(
            "outbox: cap of %d bytes reached, dropped %d oldest", self.max_bytes, len(victims)
        )
        return len(victims), freed

    def _write_failed(self, conn: sqlite3.Connection, exc: Exception) -> StorageError:
        _rollback(conn)
        fault = self._classify(exc)
        self._write_fault = fault
        if fault in (FAULT_CORRUPT, FAULT_READONLY):
            # The next put reopens: that replaces a corrupt file, and SQLite keeps a
            # file it could only open read-only so until it is opened again.
            self._disconnect()
        log.warning("outbox: write failed (%s): %s", fault, exc)
        return StorageError(f"outbox {self.path}: {fault}: {exc}")

    def _read_failed(self, exc: sqlite3.Error) -> StorageError:
        fault = self._classify(exc)
        if fault == FAULT_CORRUPT:
            self._write_fault = fault
            self._disconnect()
        return StorageError(f"outbox {self.path}: {fault}: {exc}")

    def _classify(self, exc: BaseException) -> str:
        fault: str | None = None
        if isinstance(exc, sqlite3.Error):
            code = (getattr(exc, "sqlite_errorcode", None) or 0) & 0xFF
            fault = _SQLITE_FAULTS.get(code)
        elif isinstance(exc, OSError) and exc.errno is not None:
            fault = _ERRNO_FAULTS.get(exc.errno)
        return fault or self._fs_fault()

    def _fs_fault(self) -> str:
        # SQLite reports a failed write() or open() as IOERR/CANTOPEN without the
        # errno: ask the file system what it is.
        try:
            fs = os.statvfs(self.path.parent)
        except OSError:
            return FAULT_IO
        if fs.f_flag & os.ST_RDONLY or not os.access(self.path.parent, os.W_OK):
            return FAULT_READONLY
        if fs.f_bavail == 0:
            return FAULT_FULL
        return FAULT_IO

    def _disconnect(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(sqlite3.Error):
                conn.close()

    def _connect(self) -> None:
        """Open, check and load the file; replace it when corrupt; on storage trouble
        leave `_conn` None with `fault` set."""
        self._disconnect()
        replaced = False
        for _attempt in range(2):
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                conn = self._open_checked()
            except _CorruptError as exc:
                if not self._set_aside(exc, replaced):
                    return
                replaced = True
                continue
            except (sqlite3.Error, OSError) as exc:
                self._write_fault = self._classify(exc)
                log.warning("outbox: cannot open %s (%s): %s", self.path, self._write_fault, exc)
                return
            try:
                self._load(conn, replaced=replaced)
            except _CorruptError as exc:  # it passed the quick check, but holds nonsense
                _rollback(conn)
                with contextlib.suppress(sqlite3.Error):
                    conn.close()
                if not self._set_aside(exc, replaced):
                    return
                replaced = True
                continue
            except (sqlite3.Error, OSError) as exc:
                _rollback(conn)
                with contextlib.suppress(sqlite3.Error):
                    conn.close()
                self._write_fault = self._classify(exc)
                log.warning("outbox: cannot start %s (%s): %s", self.path, self._write_fault, exc)
                return
            self._conn = conn
            if replaced:
                self._replaced_fault = True
            if not self._open_writes_due:
                self._write_fault = None  # opened and writable again
            return

    @property
    def seq_epoch(self) -> str:
        """This outbox's random id (16 hex digits), made with its file."""
        return self._seq_epoch

    def _set_aside(self, exc: _CorruptError, replaced: bool) -> bool:
        """Move an unusable file aside for a fresh one; False when that is not possible."""
        if replaced:  # a fresh file is corrupt too: the medium is failing
            self._write_fault = FAULT_IO
            return False
        log.error("outbox: %s is unusable (%s); moving it aside", self.path, exc)
        try:
            self.replaced_as = self._move_aside()
        except OSError as move_exc:
            self._write_fault = self._classify(move_exc)
            return False
        return True

    def _open_checked(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False, timeout=0.0
        )
        try:
            # page_size only takes effect on a new file; locking_mode before WAL keeps
            # the WAL index in memory (no -shm).
            conn.execute(f"PRAGMA page_size={PAGE_SIZE}")
            conn.execute("PRAGMA locking_mode=EXCLUSIVE")
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise sqlite3.OperationalError(f"journal_mode is {mode}, not wal")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute(f"PRAGMA wal_autocheckpoint={WAL_AUTOCHECKPOINT_PAGES}")
            conn.execute(f"PRAGMA journal_size_limit={JOURNAL_SIZE_LIMIT}")
            conn.execute("PRAGMA secure_delete=OFF")
            conn.execute("PRAGMA cache_size=-512")  # KiB; the working set is tiny
            check = [row[0] for row in conn.execute("PRAGMA quick_check")]
            if check != ["ok"]:
                raise _CorruptError("; ".join(str(c) for c in check[:3]))
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
            if version == 0 and tables:
                raise _CorruptError(f"not an outbox: tables {sorted(tables)}")
            if version not in (0, SCHEMA_VERSION):
                raise _CorruptError(f"unknown schema version {version}")
            if self.max_file_bytes is not None:
                conn.execute(f"PRAGMA max_page_count={max(8, self.max_file_bytes // PAGE_SIZE)}")
        except sqlite3.DatabaseError as exc:
            conn.close()
            code = (getattr(exc, "sqlite_errorcode", None) or 0) & 0xFF
            if code in (_SQLITE_CORRUPT, _SQLITE_NOTADB):
                raise _CorruptError(str(exc)) from exc
            raise
        except _CorruptError:
            conn.close()
            raise
        return conn

    def _load(self, conn: sqlite3.Connection, *, replaced: bool) -> None:
        conn.execute("BEGIN IMMEDIATE")
        if conn.execute("PRAGMA user_version").fetchone()[0] == 0:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        epoch = meta.get("seq_epoch")
        if not (isinstance(epoch, str) and _EPOCH.fullmatch(epoch)):
            if epoch is not None:
                raise _CorruptError(f"stored seq_epoch is {epoch!r}")
            # A new file, or one made before epochs existed: its epoch starts now.
            epoch = secrets.token_hex(8)
            _set_meta(conn, "seq_epoch", epoch)
        self._seq_epoch = epoch
        count, total, max_seq = conn.execute(
            "SELECT COUNT(*), COALESCE(SUM(size), 0), COALESCE(MAX(seq), 0) FROM outbox"
        ).fetchone()
        conn.execute("COMMIT")  # writes only for a new file (schema, epoch)
        db_last = max(_stored_int(meta.get("last_seq", 0), "last_seq"), _stored_int(max_seq, "seq"))
        floor = self._read_floor()
        # Without a boot id an unclean close may have been a power cut: assume it was.
        power_lost = meta.get("clean", 1) == 0 and (
            self._boot_id in ("", UNKNOWN_BOOT_ID) or meta.get("boot_id") != self._boot_id
        )
        # A file that never ran (deleted and made anew) cannot know the seqs issued.
        # Otherwise, on the same boot the file holds every commit (a process crash
        # loses nothing in the page cache), and a seq only in the floor file was never
        # committed, so never published: reusing it is safe, skipping it a false gap.
        fresh_file = "boot_id" not in meta
        last = db_last
        if floor is not None and (replaced or power_lost or (fresh_file and db_last < floor)):
            # The file may not hold the newest seq issued: jump past all of them.
            last = max(db_last, floor + SEQ_FLOOR_EVERY - 1)
            if last != db_last:
                log.warning("outbox: seq resumes at %d (was %d in the file)", last + 1, db_last)
        self._last_seq = last
        self._count = _stored_int(count, "count")
        self._bytes = _stored_int(total, "size")
        self._pending_acks.clear()
        self._drops_total = _stored_int(meta.get("drops_total", 0), "drops_total")
        self._drops_reported = _stored_int(meta.get("drops_reported", 0), "drops_reported")
        # On a full or read-only disk the backlog must still be readable and sent:
        # keep the connection and let the first `put` do these writes (or fail).
        self._open_writes_due = True
        try:
            self._write_floor(last)
            # The "in use" mark must be on the card before the first seq is published:
            # a power cut that lost it would make the next start trust the file's own
            # last seq and reuse one. synchronous=NORMAL does not fsync a WAL commit.
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("BEGIN IMMEDIATE")
            self._mark_running(conn)
            conn.execute("COMMIT")
            conn.execute("PRAGMA synchronous=NORMAL")
            self._open_writes_due = False
        except (sqlite3.Error, OSError) as exc:
            _rollback(conn)
            self._write_fault = self._classify(exc)
            log.warning("outbox: opened %s read-only for now (%s)", self.path, self._write_fault)

    def _mark_running(self, conn: sqlite3.Connection) -> None:
        """Inside a transaction: the file is in use by this boot, not closed cleanly.

        Every seq this run issues is below `last + SEQ_FLOOR_EVERY` until `put`
        moves the floor on, so the floor is written (durably) before this.
        """
        _set_meta(conn, "last_seq", self._last_seq)
        _set_meta(conn, "clean", 0)
        _set_meta(conn, "boot_id", self._boot_id or "")

    def _read_floor(self) -> int | None:
        try:
            return int(self._floor_path.read_text().strip())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.warning("outbox: ignoring unreadable %s: %s", self._floor_path, exc)
            return None

    def _write_floor(self, seq: int) -> None:
        """Atomically replace the sidecar floor with `seq`, durably (fsync file and dir)."""
        replace_atomically(self._floor_path, f"{seq}\n".encode(), durable=True, mode=0o644)

    def _move_aside(self) -> Path:
        """Rename the file (and its -wal/-shm/-journal) to `<name>.corrupt-<n>`."""
        prefix = f"{self.path.name}.corrupt-"
        taken = [
            int(p.name[len(prefix) :])
            for p in self.path.parent.glob(prefix + "*")
            if p.name[len(prefix) :].isdigit()
        ]
        n = max(taken, default=0) + 1
        target = self.path.with_name(f"{self.path.name}.corrupt-{n}")
        for suffix in ("", "-wal", "-shm", "-journal"):
            src = self.path.with_name(self.path.name + suffix)
            if src.exists():
                os.replace(src, target.with_name(target.name + suffix))
        for old in (t for t in taken if t <= n - KEEP_CORRUPT):
            for suffix in ("", "-wal", "-shm", "-journal"):
                victim = self.path.with_name(f"{self.path.name}.corrupt-{old}{suffix}")
                with contextlib.suppress(FileNotFoundError):
                    victim.unlink()
        return target


def _stored_int(value: Any, what: str) -> int:
    """`value` read from the file as a non-negative integer; _CorruptError when it is
    anything else: a file that passes SQLite's quick check can still hold nonsense, and
    that must end like a corrupt file (set aside, a fresh one, a fault), not in a crash."""
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise _CorruptError(f"stored {what} is {value!r}, not a count")
    return value


def _set_meta(conn: sqlite3.Connection, key: str, value: int | str) -> None:
    conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))


def _delete_seqs(conn: sqlite3.Connection, seqs: Collection[int]) -> None:
    for chunk in _chunks(sorted(seqs), 500):
        marks = ",".join("?" * len(chunk))
        conn.execute(f"DELETE FROM outbox WHERE seq IN ({marks})", chunk)  # noqa: S608


def _chunks(items: list[int], size: int) -> Iterator[list[int]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _rollback(conn: sqlite3.Connection) -> None:
    if conn.in_transaction:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
