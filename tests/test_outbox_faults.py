"""Which storage fault an error is (link/outbox_faults.py): SQLite's result codes, the
errno behind an OSError, and the file system asked when neither says."""

from __future__ import annotations

import errno
import sqlite3
from pathlib import Path

import pytest

from bench_agent.link.outbox_faults import (
    FAULT_CORRUPT,
    FAULT_FULL,
    FAULT_IO,
    FAULT_LOCKED,
    FAULT_READONLY,
    classify,
    is_corrupt,
)


def sqlite_error(code: int) -> sqlite3.OperationalError:
    exc = sqlite3.OperationalError("simulated")
    exc.sqlite_errorcode = code
    return exc


@pytest.mark.parametrize(
    ("code", "fault"),
    [
        (13, FAULT_FULL),  # SQLITE_FULL
        (8, FAULT_READONLY),  # SQLITE_READONLY
        (8 | (4 << 8), FAULT_READONLY),  # SQLITE_READONLY_DBMOVED: extended, same low byte
        (3, FAULT_READONLY),  # SQLITE_PERM
        (5, FAULT_LOCKED),  # SQLITE_BUSY: another agent holds the exclusive lock
        (6, FAULT_LOCKED),  # SQLITE_LOCKED
        (11, FAULT_CORRUPT),  # SQLITE_CORRUPT
        (26, FAULT_CORRUPT),  # SQLITE_NOTADB
    ],
)
def test_sqlite_result_codes(code: int, fault: str, tmp_path: Path) -> None:
    assert classify(sqlite_error(code), tmp_path) == fault


@pytest.mark.parametrize(
    ("number", "fault"),
    [
        (errno.ENOSPC, FAULT_FULL),
        (errno.EDQUOT, FAULT_FULL),
        (errno.EROFS, FAULT_READONLY),
        (errno.EACCES, FAULT_READONLY),
        (errno.EPERM, FAULT_READONLY),
    ],
)
def test_errno_values(number: int, fault: str, tmp_path: Path) -> None:
    assert classify(OSError(number, "simulated"), tmp_path) == fault


def test_an_error_that_does_not_say_asks_the_file_system(tmp_path: Path) -> None:
    # SQLITE_IOERR without an errno, on a healthy writable directory: an I/O error
    assert classify(sqlite_error(10), tmp_path) == FAULT_IO
    assert classify(OSError(errno.EIO, "simulated"), tmp_path) == FAULT_IO
    assert classify(sqlite_error(10), tmp_path / "gone") == FAULT_IO  # cannot even ask


def test_a_file_that_is_not_a_database_is_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    path.write_bytes(b"not a database" * 512)
    conn = sqlite3.connect(path)
    with pytest.raises(sqlite3.DatabaseError) as caught:
        conn.execute("PRAGMA quick_check").fetchall()
    conn.close()
    assert is_corrupt(caught.value)
    assert not is_corrupt(sqlite_error(5))
