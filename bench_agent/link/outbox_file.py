"""The outbox's SQLite file, kept open and trustworthy: the schema, the pragmas chosen
for an SD card, the check at open, the counters and the seq loaded from the file and
its sidecar floor, a corrupt file moved aside for a fresh one, the fault a failed read
or write leaves; and the two row helpers every operation shares (the scan, the lazy
delete of acked rows).

Apart from the records' operations (outbox.py: put, ack, the reads, the purge) because
this is what runs at open and when something went wrong, where the outbox's
crash-safety lives (the seq rule in outbox.py's docstring is applied in `_load`); the
record operations only ever see a connection that passed through here. `OutboxFile`
is the base of `Outbox` and holds the state both share. Its methods take no lock:
the private ones are called by `Outbox` methods holding it.

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
      the primary key, `secure_delete=OFF`, bodies deflated (outbox_records.py:
      the records waiting for a contract-2 batch share one page).
    Measured (bench/bench_outbox_disk.py, ext4, the agent's 1.5 kB records): SQLite
    writes 2.1 kB per delivered record (8.4 kB per record while offline). The kernel
    writes whole 4 KiB pages, so when each record is written back on its own (60 s
    apart, the default 30 s writeback) the card sees ~6.5 kB per delivered record;
    ~2.4 kB when writeback merges records (a longer `vm.dirty_expire_centisecs`).
    The 1 kB target is below the record's own size: see the README.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
import sqlite3
from collections.abc import Collection, Generator, Iterator
from pathlib import Path
from typing import Final

from bench_agent.clock import UNKNOWN_BOOT_ID
from bench_agent.errors import StorageError
from bench_agent.link.outbox_faults import (
    FAULT_CORRUPT,
    FAULT_CORRUPT_REPLACED,
    FAULT_IO,
    FAULT_READONLY,
    classify,
    is_corrupt,
)
from bench_agent.link.outbox_records import OutboxItem, unpack_body
from bench_agent.statefile import replace_atomically

# outbox.py's logger: the outbox's lines keep one name, whichever module writes them.
log = logging.getLogger("bench_agent.link.outbox")

SCHEMA_VERSION: Final = 1
PAGE_SIZE: Final = 2048  # bytes; one WAL frame per page changed
WAL_AUTOCHECKPOINT_PAGES: Final = 128
JOURNAL_SIZE_LIMIT: Final = 256 * 1024  # bytes the WAL is truncated to after a checkpoint
SEQ_FLOOR_EVERY: Final = 64  # seqs between two writes of the sidecar floor (~1 h at 60 s)
_EPOCH = re.compile(r"[0-9a-f]{16}")
KEEP_CORRUPT: Final = 3  # corrupt copies kept for forensics; older ones are deleted

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    boot_id TEXT NOT NULL,
    mono_s REAL NOT NULL,
    ts TEXT NOT NULL,
    time_quality TEXT NOT NULL,
    size INTEGER NOT NULL,
    body BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID;
"""
_COLUMNS: Final = "seq, kind, boot_id, mono_s, ts, time_quality, size, body"


class CorruptError(Exception):
    """The file is not a usable outbox (corrupt, not SQLite, or not our schema)."""


class OutboxFile:
    """The file under an `Outbox`: opened, checked, loaded, replaced when corrupt.

    `max_file_bytes`: hard ceiling on the database file, bytes (None: none).
    `boot_id`: this boot's kernel boot id (None: read from /proc at open).
    """

    def __init__(self, path: Path, *, max_file_bytes: int | None, boot_id: str | None) -> None:
        self.path = Path(path)
        self.max_file_bytes = max_file_bytes
        self._boot_id = boot_id
        self._floor_path = self.path.with_name(self.path.name + ".seqfloor")
        self._conn: sqlite3.Connection | None = None
        self._opened = False  # between `Outbox.open` and `close`, connected or degraded
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

    # -- the file's state ------------------------------------------------------

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

    @property
    def seq_epoch(self) -> str:
        """This outbox's random id (16 hex digits), made with its file."""
        return self._seq_epoch

    # -- faults -----------------------------------------------------------------

    def _write_failed(self, conn: sqlite3.Connection, exc: Exception) -> StorageError:
        rollback(conn)
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
        return classify(exc, self.path.parent)

    # -- rows -------------------------------------------------------------------

    def _scan(
        self, clause: str, params: tuple[int | float | str, ...], exclude: Collection[int]
    ) -> Generator[OutboxItem, None, None]:
        conn = self._conn
        if conn is None:
            return
        try:
            cursor = conn.execute(f"SELECT {_COLUMNS} FROM outbox {clause}", params)  # noqa: S608
            for seq, kind, boot_id, mono_s, ts, quality, size, body in cursor:
                if seq in exclude or seq in self._pending_acks:
                    continue
                try:
                    text = unpack_body(body)
                except ValueError as exc:
                    raise self._corrupt_row(seq, exc) from exc
                yield OutboxItem(
                    seq, kind, boot_id, mono_s, ts, quality, text, size, self._seq_epoch
                )
        except sqlite3.Error as exc:
            raise self._read_failed(exc) from exc

    def _corrupt_row(self, seq: int, exc: ValueError) -> StorageError:
        """A row SQLite reads but whose body does not inflate: the card returned what
        was never written (SQLite keeps no checksums), so the file is not trusted."""
        self._write_fault = FAULT_CORRUPT
        self._disconnect()
        return StorageError(f"outbox {self.path}: {FAULT_CORRUPT}: seq {seq}: {exc}")

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
            delete_seqs(conn, self._pending_acks)
        return sum(self._pending_acks.values())

    # -- opening ----------------------------------------------------------------

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
            except CorruptError as exc:
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
            except CorruptError as exc:  # it passed the quick check, but holds nonsense
                rollback(conn)
                with contextlib.suppress(sqlite3.Error):
                    conn.close()
                if not self._set_aside(exc, replaced):
                    return
                replaced = True
                continue
            except (sqlite3.Error, OSError) as exc:
                rollback(conn)
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

    def _set_aside(self, exc: CorruptError, replaced: bool) -> bool:
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
                raise CorruptError("; ".join(str(c) for c in check[:3]))
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
            if version == 0 and tables:
                raise CorruptError(f"not an outbox: tables {sorted(tables)}")
            if version not in (0, SCHEMA_VERSION):
                raise CorruptError(f"unknown schema version {version}")
            if self.max_file_bytes is not None:
                conn.execute(f"PRAGMA max_page_count={max(8, self.max_file_bytes // PAGE_SIZE)}")
        except sqlite3.DatabaseError as exc:
            conn.close()
            if is_corrupt(exc):
                raise CorruptError(str(exc)) from exc
            raise
        except CorruptError:
            conn.close()
            raise
        return conn

    def _load(self, conn: sqlite3.Connection, *, replaced: bool) -> None:
        conn.execute("BEGIN IMMEDIATE")
        if conn.execute("PRAGMA user_version").fetchone()[0] == 0:
            create_schema(conn)
        meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        epoch = meta.get("seq_epoch")
        if not (isinstance(epoch, str) and _EPOCH.fullmatch(epoch)):
            if epoch is not None:
                raise CorruptError(f"stored seq_epoch is {epoch!r}")
            # A new file, or one made before epochs existed: its epoch starts now.
            epoch = secrets.token_hex(8)
            set_meta(conn, "seq_epoch", epoch)
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
            rollback(conn)
            self._write_fault = self._classify(exc)
            log.warning("outbox: opened %s read-only for now (%s)", self.path, self._write_fault)

    def _mark_running(self, conn: sqlite3.Connection) -> None:
        """Inside a transaction: the file is in use by this boot, not closed cleanly.

        Every seq this run issues is below `last + SEQ_FLOOR_EVERY` until `put`
        moves the floor on, so the floor is written (durably) before this.
        """
        set_meta(conn, "last_seq", self._last_seq)
        set_meta(conn, "clean", 0)
        set_meta(conn, "boot_id", self._boot_id or "")

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


def create_schema(conn: sqlite3.Connection) -> None:
    """Inside a transaction: the tables of a new file, and its schema version."""
    for statement in _SCHEMA.split(";"):
        if statement.strip():
            conn.execute(statement)
    conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")


def _stored_int(value: object, what: str) -> int:
    """`value` read from the file as a non-negative integer; CorruptError when it is
    anything else: a file that passes SQLite's quick check can still hold nonsense, and
    that must end like a corrupt file (set aside, a fresh one, a fault), not in a crash."""
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise CorruptError(f"stored {what} is {value!r}, not a count")
    return value


def set_meta(conn: sqlite3.Connection, key: str, value: int | str) -> None:
    conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))


def delete_seqs(conn: sqlite3.Connection, seqs: Collection[int]) -> None:
    for chunk in chunks(sorted(seqs), 500):
        marks = ",".join("?" * len(chunk))
        conn.execute(f"DELETE FROM outbox WHERE seq IN ({marks})", chunk)  # noqa: S608


def chunks(items: list[int], size: int) -> Iterator[list[int]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def rollback(conn: sqlite3.Connection) -> None:
    if conn.in_transaction:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
