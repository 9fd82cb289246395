"""The replay store: the ids of commands already run, kept across restarts, so a
captured command cannot be run twice. See `commands.py`."""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path

from bench_agent.errors import StorageError
from bench_agent.remote.commands import DEFAULT_REPLAY_CAPACITY
from bench_agent.statefile import replace_atomically

log = logging.getLogger(__name__)
# ---------------------------------------------------------------------------
# The replay store
# ---------------------------------------------------------------------------


class ReplayStore:
    """Executed command ids, on disk (JSON lines, fsync'ed) and bounded.

    Lines are ``{"id": id, "t": issued_at_epoch_s}``; a compacted file starts with
    ``{"floor": epoch_s}``. A line torn by a power cut (the last one) is dropped:
    the command it was recording had not run yet. Garbage elsewhere raises the
    floor to the newest time in the file, so no lost id can run again.
    The file is rewritten (atomically) when it holds twice `capacity` lines.
    """

    def __init__(self, path: Path, *, capacity: int = DEFAULT_REPLAY_CAPACITY) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.path = path
        self.capacity = capacity
        self.floor: float | None = None  # epoch s; commands issued at or before it are refused
        self._ids: dict[str, float] = {}  # insertion order = execution order
        self._lines = 0
        self.dropped_lines = 0
        self._load()

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, command_id: object) -> bool:
        return command_id in self._ids

    def below_floor(self, issued_at_s: float) -> bool:
        return self.floor is not None and issued_at_s <= self.floor

    def _raise_floor(self, t: float) -> None:
        self.floor = t if self.floor is None else max(self.floor, t)

    def _load(self) -> None:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return
        except OSError as exc:
            raise StorageError(f"{self.path}: {exc.strerror or exc}") from None
        lines = data.split(b"\n")
        torn_tail = lines.pop()  # b"" when the file ends with a newline
        if torn_tail:
            self.dropped_lines += 1
        newest: float | None = None
        corrupt = False
        for line in lines:
            entry = _parse_store_line(line)
            if entry is None:
                corrupt = True
                self.dropped_lines += 1
                continue
            key, t = entry
            newest = t if newest is None else max(newest, t)
            if key is None:
                self._raise_floor(t)
            else:
                self._ids.pop(key, None)
                self._ids[key] = t
        self._lines = len(lines)
        if corrupt and newest is not None:
            log.warning(
                "replay store %s: %d bad lines; floor raised", self.path, self.dropped_lines
            )
            self._raise_floor(newest)
        self._evict(None)

    def add(self, command_id: str, issued_at_s: float, forget_before_s: float | None) -> None:
        """Record `command_id` durably (fsync) before it runs. Raises `StorageError`.

        `forget_before_s` (epoch s, only when the clock is synced): ids issued before
        it may be forgotten, since they would be refused as stale anyway.
        """
        line = json.dumps({"id": command_id, "t": issued_at_s}, separators=(",", ":")) + "\n"
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, line.encode("utf-8"))
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            raise StorageError(f"{self.path}: {exc.strerror or exc}") from None
        self._ids[command_id] = issued_at_s
        self._lines += 1
        self._evict(forget_before_s)
        if self._lines >= 2 * self.capacity:
            self._compact()

    def _evict(self, forget_before_s: float | None) -> None:
        while len(self._ids) > self.capacity:
            self._raise_floor(self._ids.pop(next(iter(self._ids))))
        if forget_before_s is not None:
            while self._ids:
                oldest = next(iter(self._ids))
                if self._ids[oldest] >= forget_before_s:
                    break
                self._raise_floor(self._ids.pop(oldest))

    def _compact(self) -> None:
        lines = []
        if self.floor is not None:
            lines.append(json.dumps({"floor": self.floor}) + "\n")
        lines += [
            json.dumps({"id": k, "t": t}, separators=(",", ":")) + "\n"
            for k, t in self._ids.items()
        ]
        try:
            replace_atomically(self.path, "".join(lines).encode("utf-8"), durable=True)
        except OSError as exc:
            # The old file is still whole; compaction is retried on the next add.
            log.warning("replay store %s: compaction failed: %s", self.path, exc)
            return
        self._lines = len(lines)


def _parse_store_line(line: bytes) -> tuple[str | None, float] | None:
    """(id, t) for an id line, (None, floor) for a floor line, None for garbage."""
    try:
        entry = json.loads(line)
    except ValueError:
        return None
    if not isinstance(entry, dict):
        return None
    t = entry.get("floor", entry.get("t"))
    if not (isinstance(t, int | float) and not isinstance(t, bool) and math.isfinite(t)):
        return None
    if "floor" in entry:
        return None, float(t)
    key = entry.get("id")
    return (key, float(t)) if isinstance(key, str) else None
