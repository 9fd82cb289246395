"""The outbox's storage faults: their names, and which one an SQLite or OS error is.

Apart from the outbox (outbox.py) because it is a mapping with no state of its own:
the one place that knows SQLite's result codes and the errno values behind them, and
the names that `fault` reports (the `storage` fault in telemetry, the technician's
`status`).

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

import errno
import os
import sqlite3
from pathlib import Path
from typing import Final

FAULT_FULL: Final = "storage_full"
FAULT_READONLY: Final = "storage_readonly"
FAULT_LOCKED: Final = "storage_locked"
FAULT_IO: Final = "storage_io_error"
FAULT_CORRUPT: Final = "storage_corrupt"
FAULT_CORRUPT_REPLACED: Final = "storage_corrupt_replaced"

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


def classify(exc: BaseException, directory: Path) -> str:
    """The fault an error means; when the error does not say, the file system holding
    the outbox (`directory`) is asked."""
    fault: str | None = None
    if isinstance(exc, sqlite3.Error):
        code = (getattr(exc, "sqlite_errorcode", None) or 0) & 0xFF
        fault = _SQLITE_FAULTS.get(code)
    elif isinstance(exc, OSError) and exc.errno is not None:
        fault = _ERRNO_FAULTS.get(exc.errno)
    return fault or fs_fault(directory)


def fs_fault(directory: Path) -> str:
    """What is wrong with the file system at `directory`: read-only, full, or (when
    neither) an I/O error."""
    # SQLite reports a failed write() or open() as IOERR/CANTOPEN without the
    # errno: ask the file system what it is.
    try:
        fs = os.statvfs(directory)
    except OSError:
        return FAULT_IO
    if fs.f_flag & os.ST_RDONLY or not os.access(directory, os.W_OK):
        return FAULT_READONLY
    if fs.f_bavail == 0:
        return FAULT_FULL
    return FAULT_IO


def is_corrupt(exc: sqlite3.DatabaseError) -> bool:
    """Whether SQLite says the file is damaged or not a database at all."""
    code = (getattr(exc, "sqlite_errorcode", None) or 0) & 0xFF
    return code in (_SQLITE_CORRUPT, _SQLITE_NOTADB)
