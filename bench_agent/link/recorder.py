"""Every record the bench makes goes through here: stored first, then sent.

`record(kind, body)` commits the record to the outbox (its seq comes from the
commit) and hands it to the publisher to go out live, ahead of any backlog.
When the disk refuses, the record still goes out live, once, without a seq
(`stored: false`), and the `storage` fault is raised; the next stored
telemetry record clears it. An event is also kept in the bench's own history
(`bench-agent events`). Drops the full outbox made are reported once per
outage, when the broker is back (an event stored while offline would itself
be dropped).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from dataclasses import replace
from typing import Final

from bench_agent.clock import Clock, iso_utc
from bench_agent.errors import StorageError
from bench_agent.eventlog import EventLog
from bench_agent.faults import Fault, FaultRegistry
from bench_agent.json_value import JsonObject
from bench_agent.link import payloads
from bench_agent.link.outbox import Kind, Outbox, OutboxItem
from bench_agent.link.publisher import Publisher
from bench_agent.vocabulary import EventType

log = logging.getLogger(__name__)

MAX_PENDING_REPLIES: Final = 256


class Recorder:
    def __init__(
        self,
        outbox: Outbox,
        publisher: Publisher,
        *,
        events: EventLog,
        faults: FaultRegistry,
        clock: Clock,
        boot_id: str,
        link_connected: Callable[[], bool],
    ) -> None:
        self.outbox = outbox
        self._publisher = publisher
        self._events = events
        self._faults = faults
        self._clock = clock
        self.boot_id = boot_id
        self._link_connected = link_connected
        self.storage_errors = 0

    def record(self, kind: Kind, body: JsonObject, mono_s: float) -> tuple[OutboxItem, bool]:
        """Store, then publish live; returns the record and whether it was stored."""
        quality = "synced" if self._clock.synced() else "unsynced"
        # Encoded once, for the store and the wire; the seq comes from the commit.
        item = OutboxItem.of(
            0,
            kind,
            body,
            boot_id=self.boot_id,
            mono_s=mono_s,
            ts=iso_utc(self._clock.wall()),
            time_quality=quality,
        )
        try:
            seq = self.outbox.put(
                kind,
                item.body_json,
                boot_id=item.boot_id,
                mono_s=mono_s,
                ts=item.ts,
                time_quality=quality,
                in_flight=self._publisher.inflight_seqs,
            )
        except StorageError as exc:
            self._publisher.send_unstored(item)
            self.storage_failed(exc)
            return item, False
        item = replace(item, seq=seq, seq_epoch=self.outbox.seq_epoch)
        self._publisher.send_live(item)
        if kind == "telemetry":
            self._faults.clear(Fault.STORAGE)
        self.report_drops()
        return item, True

    def emit_event(self, event_type: str, data: JsonObject) -> None:
        """Record an event (committed at once), publish it ahead of any backlog, and
        keep it in the bench's own history for `bench-agent events`."""
        item, stored = self.record(
            "event", {"type": str(event_type), **data}, self._clock.monotonic()
        )
        self._events.append(payloads.record(item, historical=False, stored=stored))

    def report_drops(self) -> None:
        """One `outbox_dropped` event per outage, sent once the broker is back."""
        if not self._link_connected():
            return
        if dropped := self.outbox.take_new_drops():
            # The drops are already counted (health.outbox_drops); this says when,
            # and `total` makes the latest event authoritative on its own.
            total = self.outbox.stats().drops_total
            self.emit_event(EventType.OUTBOX_DROPPED, {"records": dropped, "total": total})

    def purge_expired(self, mono_s: float) -> None:
        """Records past the outbox's age limit go (never one in flight)."""
        try:
            self.outbox.purge_expired(self.boot_id, mono_s, in_flight=self._publisher.inflight_seqs)
        except StorageError as exc:
            self.storage_failed(exc)

    def storage_failed(self, exc: StorageError) -> None:
        self.storage_errors += 1
        self._faults.raise_(Fault.STORAGE, self.outbox.fault or str(exc))


class ReplyQueue:
    """Command replies waiting for room in paho's bounded queue (a burst of commands
    on a slow link) or for the link; sent in order, ahead of the backlog. Bounded:
    a flood of commands cannot grow memory; the oldest reply goes first."""

    def __init__(self, publish: Callable[[bytes], int | None]) -> None:
        """`publish(reply)` returns None when the reply could not be queued."""
        self._publish = publish
        self._pending: deque[bytes] = deque(maxlen=MAX_PENDING_REPLIES)
        self.dropped = 0

    def put(self, reply: bytes) -> None:
        if len(self._pending) == MAX_PENDING_REPLIES:
            self.dropped += 1
            if self.dropped % 100 == 1:  # a flood: say so, but not per reply
                log.warning("command replies dropped: %d so far", self.dropped)
        self._pending.append(reply)
        self.send()

    def send(self) -> None:
        while self._pending:
            if self._publish(self._pending[0]) is None:
                return
            self._pending.popleft()
