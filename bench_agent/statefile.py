"""Small files the agent replaces whole in `[storage] dir` (daily counters, uplink
recovery, the controller's state, the outbox's seq floor, the replay store, the
event history): read forgivingly, replaced atomically (a temporary file, then a
rename), so a crash or a power cut leaves the old file or the new one, never
half of one."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from bench_agent.json_value import Json

log = logging.getLogger(__name__)


def read_text(path: Path) -> str | None:
    """The file's content, or None when it is missing or unreadable (logged)."""
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return None
    except OSError as exc:
        log.warning("ignoring unreadable state file %s: %s", path, exc)
        return None


def replace_atomically(path: Path, data: bytes, *, durable: bool, mode: int = 0o600) -> None:
    """Replace `path` with `data`. `durable`: fsync the file and its directory before
    returning (what must survive a power cut: the seq floor, the replay store);
    otherwise the kernel writes it back in its own time (SD-card friendly).
    Raises OSError; the old file is then still whole."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        # A nearly full disk takes what fits and says how much (no error); only the
        # next write raises ENOSPC. Never rename a file that holds part of `data`.
        rest = memoryview(data)
        while rest:
            rest = rest[os.write(fd, rest) :]
        if durable:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    if durable:
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def write_json(path: Path, data: Json) -> bool:
    """Replace `path` with `data` as compact JSON; False (logged) when the disk refuses."""
    try:
        replace_atomically(path, json.dumps(data, separators=(",", ":")).encode(), durable=False)
    except OSError as exc:
        log.warning("could not save state file %s: %s", path, exc)
        return False
    return True
