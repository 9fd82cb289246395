"""The bench's own history of events, for `bench-agent events` with the uplink down.

The outbox forgets an event once the broker acknowledges it, so the technician's
history is kept apart: one JSON line per event (as published, seq included) in
`<storage.dir>/events.jsonl`, the newest `keep` of them.

Why a plain file: events are rare (a few an hour), appended whole and read
rarely, so a line per event is the cheapest thing for the SD card and readable
with `tail` when the agent itself is broken. When the file holds twice `keep`
lines it is rewritten with the newest `keep` (write to a temporary file, then
rename, so a crash leaves the old or the new file, never half of one). Writes
are not fsynced: the outbox already made the event durable; losing the last
line of the history in a power cut is acceptable.

A line that does not parse (a torn last line after a crash) is skipped.
"""

from __future__ import annotations

import json
import logging
from collections import deque
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from bench_agent.statefile import replace_atomically

log = logging.getLogger(__name__)

DEFAULT_KEEP = 1000


class EventLog:
    """The newest `keep` events, in memory and in `path`. Never raises for disk trouble."""

    def __init__(self, path: Path, keep: int = DEFAULT_KEEP) -> None:
        if keep < 1:
            raise ValueError("keep must be at least 1")
        self.path = Path(path)
        self.keep = keep
        self._events: deque[dict[str, Any]] = deque(maxlen=keep)
        self._lines_in_file = 0
        self._write_failed = False
        self._load()

    def _load(self) -> None:
        torn = False
        try:
            with self.path.open(encoding="utf-8", errors="replace") as lines:
                for line in lines:
                    self._lines_in_file += 1
                    torn = not line.endswith("\n")
                    try:
                        event = json.loads(line)
                    except ValueError:
                        continue
                    if isinstance(event, dict):
                        self._events.append(event)
        except FileNotFoundError:
            return
        except OSError as exc:
            log.warning("event history %s unreadable: %s", self.path, exc)
            return
        if torn:
            # A crash mid-append: the next line would be glued to the torn one.
            try:
                self._rewrite()
            except OSError as exc:
                log.warning("event history %s not repaired: %s", self.path, exc)

    def append(self, event: Mapping[str, Any]) -> None:
        """Add one event (the published form: seq, ts, time_quality, type, …)."""
        record = dict(event)
        self._events.append(record)
        line = _line(record)
        try:
            if self._lines_in_file + 1 > 2 * self.keep:
                self._rewrite()
            else:
                with self.path.open("a", encoding="utf-8") as out:
                    out.write(line)
                self._lines_in_file += 1
        except OSError as exc:
            if not self._write_failed:  # once per streak: a full disk is reported elsewhere
                log.warning("event history %s not written: %s", self.path, exc)
            self._write_failed = True
            return
        self._write_failed = False

    def _rewrite(self) -> None:
        text = "".join(_line(event) for event in self._events)
        replace_atomically(self.path, text.encode("utf-8"), durable=False)
        self._lines_in_file = len(self._events)

    def recent(
        self, *, since: datetime | None = None, limit: int | None = None
    ) -> list[dict[str, Any]]:
        """Oldest first: the events at or after `since` (by their `ts`), the last `limit`."""
        events = list(self._events)
        if since is not None:
            events = [e for e in events if _after(e.get("ts"), since)]
        if limit is not None:
            events = events[-limit:] if limit > 0 else []
        return events


def _line(event: Mapping[str, Any]) -> str:
    return json.dumps(event, ensure_ascii=False, separators=(",", ":")) + "\n"


def _after(ts: Any, since: datetime) -> bool:
    """True when `ts` (ISO 8601) is at or after `since`; an unreadable ts is kept."""
    if not isinstance(ts, str):
        return True
    try:
        when = datetime.fromisoformat(ts)
    except ValueError:
        return True
    return when >= since
