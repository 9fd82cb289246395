"""Opening the archive: SQLite or PostgreSQL, chosen by the URL, in one place.

open_store("bench-archive.sqlite")                      a SQLite file
open_store("sqlite:///var/lib/bench-ops/archive.sqlite")
open_store("postgresql://bench_ops@db.example/archive")  PostgreSQL (psycopg 3)
"""

from __future__ import annotations

from pathlib import Path

from bench_agent.ops.archive_store import ArchiveError, ArchiveStore, SqliteStore


def open_store(url: str | Path, *, create: bool = True) -> ArchiveStore:
    """The archive at `url`: `postgresql://…` (or `postgres://…`) for PostgreSQL, else a
    SQLite file (a path, or `sqlite:///path`). The schema is made when missing unless
    `create` is false. ArchiveError when it cannot be opened."""
    text = str(url)
    if text.startswith(("postgresql://", "postgres://")):
        from bench_agent.ops.archive_postgres import PostgresStore  # noqa: PLC0415 - psycopg only when asked

        store: ArchiveStore = PostgresStore(text)
    else:
        path = Path(text.removeprefix("sqlite://")) if text.startswith("sqlite://") else Path(text)
        if not create and not path.exists():
            raise ArchiveError(f"{path}: no archive there")
        store = SqliteStore(text, path)
    if create:
        try:
            store.create_schema()
        except BaseException:
            store.close()
            raise
    return store
