"""The archive's database: every record and event the benches sent, once per contract
key `(bench, seq_epoch, seq)`, on SQLite (one file, nothing to set up: the default) or
PostgreSQL (`postgresql://…`, psycopg 3, for a city-scale fleet and several archive
workers on several machines). Same schema, same SQL, same tests on both.

`bench-ops archive` writes it (`insert`); `bench-ops gaps` and `bench-ops report` read
it through the typed readers below (`records`, `events`, `benches`, and the gap
queries in `archive_gaps`). Open one with `archive_db.open_store(url)`.

The table (schema version 1, `bench_archive_meta.schema_version`):

    bench_records
      bench         TEXT     the bench id
      seq_epoch     TEXT     the bench store's random id (a new one after a wiped SD card)
      seq           BIGINT   one counter per (bench, seq_epoch), shared by records and events
      kind          TEXT     'telemetry' | 'event'
      type          TEXT     the event's type (output_switched, outbox_dropped, …); NULL
                             for telemetry
      ts            TEXT     the bench's ISO 8601 UTC time, as sent (2026-11-27T06:00:11.963Z):
                             sorts as time; only as good as `time_quality`
      time_quality  TEXT     synced | unsynced | corrected
      boot_id       TEXT     the bench's boot (a change within an epoch is a restart)
      historical    BOOLEAN  sent late, from the bench's backlog
      received_at   TEXT     when the archive committed it (ISO 8601 UTC)
      body          TEXT     the whole v1 JSON: a telemetry record as in a v1 `telemetry`
                             message's `records`, an event as the v1 `event` message
      PRIMARY KEY (bench, seq_epoch, seq)

Indexes: (bench, ts) for a bench's period, (ts) for the fleet's, (type, ts) of events,
(received_at) for retention. `ts` is text in the bench's own fixed format rather than a
timestamp type so that both databases hold the same bytes the bench sent and compare
them the same way; it is always `YYYY-MM-DDTHH:MM:SS.mmmZ` (bench_agent.clock.iso_utc).

Writes are `INSERT … ON CONFLICT DO NOTHING` in one transaction per call: a record
delivered twice (a redelivery after a crash, two workers, a bench resending its
backlog) is stored once, and `insert` returns only after the commit, so a caller that
acknowledges after it never acknowledges what a crash could lose. SQLite runs in WAL
mode with `synchronous=FULL` (a commit survives a power cut, not only a crash) and waits
up to 30 s for another worker's write lock.
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Final, Literal, Protocol

from bench_agent.clock import iso_utc
from bench_agent.errors import BenchAgentError
from bench_agent.json_value import Json, JsonObject

SCHEMA_VERSION: Final = 1
TABLE: Final = "bench_records"
META: Final = "bench_archive_meta"
SQLITE_BUSY_TIMEOUT_S: Final = 30.0
STREAM_CHUNK: Final = 2_000  # rows fetched at a time by the readers

Kind = Literal["telemetry", "event"]
KINDS: Final = ("telemetry", "event")
TIME_QUALITIES: Final = frozenset({"synced", "unsynced", "corrected"})
# The bench's timestamps (clock.iso_utc): fixed width, so text order is time order.
TS_FORMAT: Final = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")

_DDL: Final = (
    f"CREATE TABLE IF NOT EXISTS {META} (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    f"""CREATE TABLE IF NOT EXISTS {TABLE} (
        bench TEXT NOT NULL,
        seq_epoch TEXT NOT NULL,
        seq BIGINT NOT NULL,
        kind TEXT NOT NULL CHECK (kind IN ('telemetry', 'event')),
        type TEXT,
        ts TEXT NOT NULL,
        time_quality TEXT NOT NULL,
        boot_id TEXT NOT NULL,
        historical BOOLEAN NOT NULL,
        received_at TEXT NOT NULL,
        body TEXT NOT NULL,
        PRIMARY KEY (bench, seq_epoch, seq)
    )""",
    f"CREATE INDEX IF NOT EXISTS {TABLE}_bench_ts ON {TABLE} (bench, ts)",
    f"CREATE INDEX IF NOT EXISTS {TABLE}_ts ON {TABLE} (ts)",
    f"CREATE INDEX IF NOT EXISTS {TABLE}_type_ts ON {TABLE} (type, ts) WHERE type IS NOT NULL",
    f"CREATE INDEX IF NOT EXISTS {TABLE}_received_at ON {TABLE} (received_at)",
)
_COLUMNS: Final = (
    "bench, seq_epoch, seq, kind, type, ts, time_quality, boot_id, historical, received_at, body"
)
_INSERT: Final = (
    f"INSERT INTO {TABLE} ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (bench, seq_epoch, seq) DO NOTHING"
)


class ArchiveError(BenchAgentError, OSError):
    """The database cannot be opened, read or written (unreachable, locked, wrong schema)."""


class BadRecord(BenchAgentError, ValueError):
    """A record that cannot be archived as it is (a field missing or of the wrong type)."""


@dataclass(frozen=True, slots=True)
class Row:
    """One record or event to store: its key, the columns, and its v1 JSON text."""

    bench: str
    seq_epoch: str
    seq: int
    kind: Kind
    type: str | None
    ts: str
    time_quality: str
    boot_id: str
    historical: bool
    body: str

    @classmethod
    def of(cls, bench: str, kind: Kind, record: Mapping[str, Json]) -> Row | None:
        """The row of a v1 record (a telemetry record, or an event message) of `bench`;
        None for one without a seq (the bench could not store it: it has no key, it was
        sent once, live). BadRecord for what the contract does not allow."""
        seq = record.get("seq")
        if seq is None and record.get("stored") is False:
            return None
        epoch, ts, quality = record.get("seq_epoch"), record.get("ts"), record.get("time_quality")
        boot_id, event_type = record.get("boot_id", ""), record.get("type")
        if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
            raise BadRecord(f"seq {seq!r}")
        if not isinstance(epoch, str) or not epoch:
            raise BadRecord(f"seq_epoch {epoch!r}")
        if not isinstance(ts, str) or not TS_FORMAT.fullmatch(ts):
            raise BadRecord(f"ts {ts!r}")
        if quality not in TIME_QUALITIES:
            raise BadRecord(f"time_quality {quality!r}")
        if not isinstance(boot_id, str):
            raise BadRecord(f"boot_id {boot_id!r}")
        if kind == "event" and not isinstance(event_type, str):
            raise BadRecord(f"event type {event_type!r}")
        try:
            body = json.dumps(record, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        except ValueError as exc:  # NaN or infinity from a hostile payload
            raise BadRecord(f"not JSON: {exc}") from None
        return cls(
            bench=bench, seq_epoch=epoch, seq=seq, kind=kind,
            type=event_type if kind == "event" else None,  # type: ignore[arg-type]  # checked
            ts=ts, time_quality=str(quality), boot_id=boot_id,
            historical=record.get("historical") is True, body=body,
        )  # fmt: skip

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.bench, self.seq_epoch, self.seq)


@dataclass(frozen=True, slots=True)
class StoredRecord:
    """One record or event read back from the archive."""

    bench: str
    seq_epoch: str
    seq: int
    kind: Kind
    type: str | None  # events only
    ts: str  # the bench's ISO 8601 UTC time
    time_quality: str
    boot_id: str
    historical: bool
    received_at: str
    body: JsonObject  # the v1 JSON, parsed

    @property
    def when(self) -> datetime:
        """`ts` as an aware datetime (UTC)."""
        return datetime.fromisoformat(self.ts)

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> StoredRecord:
        bench, epoch, seq, kind, event_type, ts, quality, boot_id, historical, received, body = row
        return cls(
            bench=bench, seq_epoch=epoch, seq=int(seq), kind=kind, type=event_type, ts=ts,
            time_quality=quality, boot_id=boot_id, historical=bool(historical),
            received_at=received, body=json.loads(body),
        )  # fmt: skip


Moment = datetime | str | None


def as_ts(moment: Moment) -> str | None:
    """A bound of a period in the archive's text form (an aware datetime, or ISO text)."""
    if moment is None or isinstance(moment, str):
        return moment
    if moment.tzinfo is None:
        raise ValueError("a naive datetime: give the time zone (UTC)")
    return iso_utc(moment)


class _Connection(Protocol):
    """What both drivers' connections offer (sqlite3, psycopg 3)."""

    def commit(self) -> None: ...
    def rollback(self) -> None: ...
    def close(self) -> None: ...


class ArchiveStore:
    """An open archive. Not thread-safe: one per thread (each worker has its own)."""

    dialect: str = ""
    placeholder: str = "?"

    def __init__(self, url: str) -> None:
        self.url = url

    # -- the driver's seam --------------------------------------------------------------

    def _execute(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        raise NotImplementedError

    def _executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> int:
        raise NotImplementedError

    def _stream(self, sql: str, params: Sequence[Any]) -> Iterator[tuple[Any, ...]]:
        """The rows of a SELECT a chunk at a time (a month of a fleet does not fit in
        memory at once); the read transaction ends when it is exhausted or closed."""
        raise NotImplementedError

    def _commit(self) -> None:
        raise NotImplementedError

    def _rollback(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def seconds_between(self, earlier: str, later: str) -> str:
        """SQL for the seconds from text timestamp column `earlier` to `later`."""
        raise NotImplementedError

    def __enter__(self) -> ArchiveStore:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def sql(self, text: str) -> str:
        return text if self.placeholder == "?" else text.replace("?", self.placeholder)

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Rows of a read-only SELECT written with `?` placeholders (for archive_gaps)."""
        try:
            return self._execute(self.sql(sql), params)
        finally:
            self._rollback()  # end the read transaction (PostgreSQL opens one per query)

    # -- schema ---------------------------------------------------------------------------

    def create_schema(self) -> None:
        """The tables and indexes (idempotent); ArchiveError for another schema version."""
        for statement in _DDL:
            self._execute(statement)
        found = self._execute(self.sql(f"SELECT value FROM {META} WHERE key = ?"), ["schema"])
        if not found:
            self._execute(
                self.sql(f"INSERT INTO {META} (key, value) VALUES (?, ?) ON CONFLICT DO NOTHING"),
                ["schema", str(SCHEMA_VERSION)],
            )
        elif found[0][0] != str(SCHEMA_VERSION):
            self._rollback()
            raise ArchiveError(
                f"{self.url}: archive schema version {found[0][0]}, this version of bench-ops"
                f" reads {SCHEMA_VERSION}"
            )
        self._commit()

    # -- writing --------------------------------------------------------------------------

    def insert(self, rows: Sequence[Row], received_at: str) -> int:
        """Store `rows` in one transaction, each key once; returns how many were new.
        Committed when it returns: acknowledge what they came in only after this."""
        if not rows:
            return 0
        values = [
            (r.bench, r.seq_epoch, r.seq, r.kind, r.type, r.ts, r.time_quality, r.boot_id,
             r.historical, received_at, r.body)
            for r in rows
        ]  # fmt: skip
        try:
            added = self._executemany(self.sql(_INSERT), values)
            self._commit()
        except BaseException:
            self._rollback()
            raise
        return added

    def delete_received_before(self, cutoff: Moment, limit: int = 10_000) -> int:
        """Delete up to `limit` rows the archive received before `cutoff` (retention, in
        chunks so that a worker never holds the write lock long); how many went."""
        sql = (
            f"DELETE FROM {TABLE} WHERE (bench, seq_epoch, seq) IN"
            f" (SELECT bench, seq_epoch, seq FROM {TABLE} WHERE received_at < ? LIMIT ?)"
        )
        try:
            rows = self._execute(self.sql(sql + " RETURNING seq"), [as_ts(cutoff), limit])
            self._commit()
        except BaseException:
            self._rollback()
            raise
        return len(rows)

    # -- reading --------------------------------------------------------------------------

    def records(
        self,
        *,
        since: Moment = None,
        until: Moment = None,
        bench: str | None = None,
        kind: Kind | None = None,
    ) -> Iterator[StoredRecord]:
        """Records and events with `since <= ts < until` (either bound may be left out),
        of one bench or all, ordered by bench, then ts, then seq_epoch and seq."""
        where, params = _period(since, until)
        if bench is not None:
            where.append("bench = ?")
            params.append(bench)
        if kind is not None:
            where.append("kind = ?")
            params.append(kind)
        yield from self._select(where, params, "bench, ts, seq_epoch, seq")

    def events(
        self,
        types: Collection[str] | None = None,
        *,
        since: Moment = None,
        until: Moment = None,
        bench: str | None = None,
    ) -> Iterator[StoredRecord]:
        """Events (of these types, or all) in a period, of one bench or all, ordered by
        ts, then bench, seq_epoch and seq."""
        where, params = _period(since, until)
        where.append("kind = 'event'")
        if types is not None:
            if not types:
                return
            where.append(f"type IN ({', '.join('?' for _ in types)})")
            params.extend(types)
        if bench is not None:
            where.append("bench = ?")
            params.append(bench)
        yield from self._select(where, params, "ts, bench, seq_epoch, seq")

    def benches(self) -> list[str]:
        """Every bench with something in the archive, sorted."""
        return [row[0] for row in self.query(f"SELECT DISTINCT bench FROM {TABLE} ORDER BY bench")]

    def count(self, bench: str | None = None) -> int:
        sql, params = f"SELECT COUNT(*) FROM {TABLE}", []
        if bench is not None:
            sql, params = sql + " WHERE bench = ?", [bench]
        return int(self.query(sql, params)[0][0])

    def stored_keys(self, bench: str | None = None) -> list[tuple[str, str, int]]:
        """Every stored key, sorted (for tests and checks; the whole table)."""
        sql, params = f"SELECT bench, seq_epoch, seq FROM {TABLE}", []
        if bench is not None:
            sql, params = sql + " WHERE bench = ?", [bench]
        rows = self.query(sql + " ORDER BY bench, seq_epoch, seq", params)
        return [(b, e, int(s)) for b, e, s in rows]

    def _select(self, where: list[str], params: list[Any], order: str) -> Iterator[StoredRecord]:
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        sql = self.sql(f"SELECT {_COLUMNS} FROM {TABLE}{clause} ORDER BY {order}")
        for row in self._stream(sql, params):
            yield StoredRecord.from_row(row)


def _period(since: Moment, until: Moment) -> tuple[list[str], list[Any]]:
    where: list[str] = []
    params: list[Any] = []
    if since is not None:
        where.append("ts >= ?")
        params.append(as_ts(since))
    if until is not None:
        where.append("ts < ?")
        params.append(as_ts(until))
    return where, params


class SqliteStore(ArchiveStore):
    dialect = "sqlite"

    def __init__(self, url: str, path: Path) -> None:
        super().__init__(url)
        self.path = path
        try:
            self._conn = sqlite3.connect(path, timeout=SQLITE_BUSY_TIMEOUT_S)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=FULL")
        except sqlite3.Error as exc:
            raise ArchiveError(f"{path}: {exc}") from None

    def _execute(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        try:
            return self._conn.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise ArchiveError(f"{self.path}: {exc}") from None

    def _executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> int:
        try:
            return int(self._conn.executemany(sql, rows).rowcount)
        except sqlite3.Error as exc:
            raise ArchiveError(f"{self.path}: {exc}") from None

    def _stream(self, sql: str, params: Sequence[Any]) -> Iterator[tuple[Any, ...]]:
        try:
            cursor = self._conn.execute(sql, params)
            while rows := cursor.fetchmany(STREAM_CHUNK):
                yield from rows
        except sqlite3.Error as exc:
            raise ArchiveError(f"{self.path}: {exc}") from None

    def _commit(self) -> None:
        try:
            self._conn.commit()
        except sqlite3.Error as exc:
            raise ArchiveError(f"{self.path}: {exc}") from None

    def _rollback(self) -> None:
        self._conn.rollback()

    def close(self) -> None:
        self._conn.close()

    def seconds_between(self, earlier: str, later: str) -> str:
        return f"((julianday({later}) - julianday({earlier})) * 86400.0)"
