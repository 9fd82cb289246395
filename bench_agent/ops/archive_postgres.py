"""The archive on PostgreSQL (psycopg 3, the `ops` extra): the driver's seam of
`archive_store.ArchiveStore`. Imported only when `--db postgresql://…` asks for it, so
a SQLite archive needs no driver."""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterator, Sequence
from typing import Any

import psycopg

from bench_agent.ops.archive_store import STREAM_CHUNK, ArchiveError, ArchiveStore


def _redacted(url: str) -> str:
    """The URL without a password, for error messages and logs."""
    try:
        info = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.Error:
        return "postgresql://…"
    host, db = info.get("host", ""), info.get("dbname", "")
    return f"postgresql://{info.get('user', '')}@{host}/{db}"


class PostgresStore(ArchiveStore):
    dialect = "postgresql"
    placeholder = "%s"

    def __init__(self, url: str) -> None:
        super().__init__(_redacted(url))
        self._cursors = itertools.count()
        try:
            self._conn = psycopg.connect(url, connect_timeout=10, application_name="bench-ops")
        except psycopg.Error as exc:
            raise ArchiveError(f"{self.url}: {exc}".strip()) from None

    def _execute(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        try:
            with self._conn.cursor() as cur:
                cur.execute(sql, params)  # our own SQL, built in code
                return list(cur.fetchall()) if cur.description is not None else []
        except psycopg.Error as exc:
            self._rollback()
            raise ArchiveError(f"{self.url}: {exc}".strip()) from None

    def _executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> int:
        try:
            with self._conn.cursor() as cur:
                cur.executemany(sql, rows)  # pipelined by psycopg 3
                return int(cur.rowcount)
        except psycopg.Error as exc:
            self._rollback()
            raise ArchiveError(f"{self.url}: {exc}".strip()) from None

    def _stream(self, sql: str, params: Sequence[Any]) -> Iterator[tuple[Any, ...]]:
        # A server-side cursor WITH HOLD, committed at once: the server keeps the result
        # and we fetch it a chunk at a time, while other queries on this connection
        # (whose transactions end) may run between two chunks.
        try:
            name = f"bench_ops_read_{next(self._cursors)}"
            with self._conn.cursor(name=name, withhold=True) as cur:
                cur.itersize = STREAM_CHUNK
                cur.execute(sql, params)
                self._conn.commit()
                yield from cur
        except psycopg.Error as exc:
            self._rollback()
            raise ArchiveError(f"{self.url}: {exc}".strip()) from None

    def _commit(self) -> None:
        try:
            self._conn.commit()
        except psycopg.Error as exc:
            raise ArchiveError(f"{self.url}: {exc}".strip()) from None

    def _rollback(self) -> None:
        if not self._conn.closed:
            with contextlib.suppress(psycopg.Error):  # the connection is gone: nothing to undo
                self._conn.rollback()

    def close(self) -> None:
        self._conn.close()

    def seconds_between(self, earlier: str, later: str) -> str:
        return (
            f"(EXTRACT(EPOCH FROM CAST({later} AS timestamptz))"
            f" - EXTRACT(EPOCH FROM CAST({earlier} AS timestamptz)))"
        )
