"""Moves records from the outbox to the broker; a record leaves the outbox only on PUBACK.

Contract v1: live first: a record just recorded is published at once, on its
own, whatever backlog is waiting. The backlog drains oldest first in batches
(many telemetry records per message, up to `max_payload_bytes`) flagged
`historical`, with at most `max_inflight` messages awaiting their PUBACK, so a
day of backlog never floods the uplink nor holds up the main loop: each `pump()`
sends at most the free in-flight slots and returns; acks bring the next batch.

Contract v2 (`contract_v2.py`): the same records, but a record recorded while
the link is up waits (in the outbox, committed like any other) for its batch: the
batch goes when its oldest record is `batch_s` old, or at once with an urgent
event (tamper, a fault raised, …: `URGENT_EVENTS`), which takes the waiting
records along. A backlog (an outage, a restart) drains at once, in v2 batches
flagged `historical`, within `max_payload_bytes`.

Used from the main loop only (it is not thread-safe, nor needs to be).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection, Iterable, Sequence
from typing import Protocol

from bench_agent.errors import StorageError
from bench_agent.link import contract_v2, payloads
from bench_agent.link.outbox_records import OutboxItem

log = logging.getLogger(__name__)


class Link(Protocol):
    def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 1,
        retain: bool = False,
        content_type: str | None = None,
    ) -> int | None:
        """Returns the message id, or None when offline."""


class Store(Protocol):
    def oldest(
        self, limit: int, max_bytes: int, exclude: Collection[int]
    ) -> Sequence[OutboxItem]: ...
    def ack(self, seqs: Iterable[int]) -> None: ...


# Room in a PUBLISH packet for what is not the payload: fixed header, topic, packet
# id, properties. A batch is never cut below MIN_PAYLOAD_BYTES (one record fits).
PACKET_OVERHEAD_BYTES = 512
MIN_PAYLOAD_BYTES = 2048
REFUSAL_BACKOFF_MIN_S = 5.0
REFUSAL_BACKOFF_MAX_S = 600.0
# v2: records are gathered by their stored size (each deflated on its own, ~250
# bytes) up to this many times the payload limit: in a batch they deflate to less
# than half of that; a batch that still does not fit is halved until it does.
V2_GATHER_FACTOR = 2


class Publisher:
    def __init__(
        self,
        store: Store,
        link: Link,
        *,
        bench_id: str,
        topic: Callable[[str], str],
        max_payload_bytes: int,
        max_inflight: int = 4,
        batch_records: int = 500,
        now: Callable[[], float] = time.monotonic,
        contract: int = 1,
        batch_s: float = 0.0,
    ) -> None:
        self._store = store
        self._link = link
        self._bench_id = bench_id
        self._topic = topic
        self._configured_max_payload_bytes = max_payload_bytes
        self._max_payload_bytes = max_payload_bytes  # lowered to what the broker takes
        self._max_inflight = max_inflight
        self._batch_records = batch_records
        self._now = now  # the agent's monotonic seconds, for `last_ack_mono`
        self._generation: int | None = None  # the connection our in-flight ids belong to
        self._inflight: dict[int, tuple[int, ...]] = {}  # message id -> seqs it carries
        self._inflight_seqs: set[int] = set()
        self.messages_sent = 0
        self.records_acked = 0
        self.last_ack_mono: float | None = None
        self.backlog_exhausted = True
        # A broker refusing publishes: why, and when to try again (agent monotonic s).
        self.refused_reason: str | None = None
        self._retry_at: float | None = None
        self._refusal_backoff_s = REFUSAL_BACKOFF_MIN_S
        self.contract = contract
        self.batch_s = batch_s
        # v2: records recorded while connected, waiting for their batch: seq -> when.
        self._waiting: dict[int, float] = {}
        self._flush_now = False  # an urgent event is waiting: the batch goes at once
        # When the next batch goes: set by the first record that waits, then kept on a
        # cadence of `batch_s` while records keep coming, so a record recorded just
        # as a batch goes is in it, and the next batch is `batch_s` later, not one
        # record's interval more (one message per `batch_s`, each record waiting at
        # most `batch_s`).
        self._next_batch: float | None = None

    # -- link events --------------------------------------------------------

    def on_connected(self, generation: int, max_packet_size: int | None = None) -> None:
        """A new session. A broker that announces a Maximum Packet Size gets batches
        that fit in it (topic and headers included): a bigger one would be a protocol
        error, a disconnect, and the same batch again, for ever."""
        self._generation = generation
        self._max_payload_bytes = self._configured_max_payload_bytes
        if max_packet_size is not None:
            fits = max_packet_size - PACKET_OVERHEAD_BYTES
            if fits < self._max_payload_bytes:
                log.info("mqtt: the broker takes packets up to %d bytes", max_packet_size)
                self._max_payload_bytes = max(fits, MIN_PAYLOAD_BYTES)
        self._forget_inflight()
        self.backlog_exhausted = False

    def on_disconnected(self) -> None:
        # What was in flight stays in the outbox and goes again: at-least-once. What
        # was waiting for its batch is backlog now: it drains as soon as the link is up.
        self._generation = None
        self._forget_inflight()
        self._waiting.clear()
        self._flush_now = False
        self._next_batch = None

    def on_acked(self, generation: int, mid: int) -> None:
        if generation != self._generation:
            return  # an ack from a connection that is gone
        seqs = self._inflight.pop(mid, None)
        if seqs is None:
            return  # status/state/replies are not outbox records
        self._inflight_seqs.difference_update(seqs)
        try:
            self._store.ack(seqs)
        except StorageError as exc:
            # Not deleted means sent again later: a duplicate, never a loss.
            log.warning("outbox: could not delete acknowledged records: %s", exc)
        self.records_acked += len(seqs)
        self.last_ack_mono = self._now()
        # Delivered again: the refusal is over.
        self.refused_reason = None
        self._retry_at = None
        self._refusal_backoff_s = REFUSAL_BACKOFF_MIN_S

    def on_refused(self, generation: int, mid: int, reason: str) -> None:
        """The broker refused a message: its records leave the in-flight set (so the
        outbox's cap and age limit apply to them again) and wait in the outbox; nothing
        is sent for a backoff that doubles while refusals go on."""
        if generation != self._generation:
            return
        seqs = self._inflight.pop(mid, None)
        if seqs is None:
            return  # status/state/replies: the outbox does not hold them
        self._inflight_seqs.difference_update(seqs)
        if self._retry_at is None or self._now() >= self._retry_at:
            if self.refused_reason is not None:
                self._refusal_backoff_s = min(self._refusal_backoff_s * 2, REFUSAL_BACKOFF_MAX_S)
            self._retry_at = self._now() + self._refusal_backoff_s
        self.refused_reason = reason

    @property
    def holding_off(self) -> bool:
        """Refused by the broker and waiting for the backoff to end."""
        return self._retry_at is not None and self._now() < self._retry_at

    @property
    def inflight_messages(self) -> int:
        return len(self._inflight)

    @property
    def inflight_seqs(self) -> frozenset[int]:
        """Seqs published and waiting for their PUBACK (the outbox's cap spares them)."""
        return frozenset(self._inflight_seqs)

    # -- sending --------------------------------------------------------------

    def waiting(self) -> tuple[int, float | None]:
        """v2: (records waiting for their batch, the oldest one's age in seconds)."""
        if not self._waiting:
            return 0, None
        return len(self._waiting), self._now() - min(self._waiting.values())

    def send_live(self, item: OutboxItem) -> bool:
        """Publish a record just recorded, ahead of any backlog (v2: when its batch
        goes). False when offline or while the broker's refusals are backed off (it
        goes later, from the outbox)."""
        if self._generation is None or self.holding_off:
            return False
        if self.contract == 2:
            now = self._now()
            self._waiting[item.seq] = now
            if self._next_batch is None:
                self._next_batch = now + self.batch_s
            if self.batch_s <= 0 or payloads.is_urgent(item):
                # At the end of this turn of the loop (its `pump()`), so that what the
                # same sample recorded after it (a shed's output switches) goes along.
                self._flush_now = True
            return True
        if item.kind == "event":
            payload = payloads.event_message(self._bench_id, item, historical=False)
            topic = "event"
        else:
            payload = payloads.telemetry_message(self._bench_id, [item], historical=False)
            topic = "telemetry"
        return self._send(topic, payload, (item.seq,))

    def send_unstored(self, item: OutboxItem) -> bool:
        """Publish, once and untracked, a record the outbox refused (storage fault):
        without a seq and flagged `stored: false`. False when offline: then it is lost,
        which the storage fault already tells ops."""
        if self._generation is None:
            return False
        if self.contract == 2:
            payload = payloads.v2_batch(self._bench_id, [(item, False)], stored=False)
            topic = self._topic(contract_v2.LEAF)
            if self._link.publish(topic, payload, content_type=contract_v2.CONTENT_TYPE) is None:
                return False
            self.messages_sent += 1
            return True
        if item.kind == "event":
            payload = payloads.event_message(self._bench_id, item, historical=False, stored=False)
        else:
            payload = payloads.telemetry_message(
                self._bench_id, [item], historical=False, stored=False
            )
        if self._link.publish(self._topic(item.kind), payload, qos=1) is None:
            return False
        self.messages_sent += 1
        return True

    def flush(self) -> None:
        """v2: send what waits for its batch now, in one more message even when the
        in-flight slots are full (the agent stopping: the safe state's switches must
        reach ops before "offline"). A backlog, if any, goes first and the rest waits
        in the outbox for the next start."""
        if self.contract == 2 and not self.holding_off:
            self._flush_now = True
            self._pump_v2(slots=len(self._inflight) + 1)

    def pump(self) -> None:
        """Send backlog into the free in-flight slots (none while backing off)."""
        if self.holding_off:
            return
        # After a refusal, one message probes the broker; the rest wait for its answer.
        slots = 1 if self.refused_reason is not None else self._max_inflight
        if self.contract == 2:
            self._pump_v2(slots)
            return
        while self._generation is not None and len(self._inflight) < slots:
            items = self._store.oldest(
                limit=self._batch_records,
                max_bytes=self._max_payload_bytes,
                exclude=self._inflight_seqs,
            )
            if not items:
                self.backlog_exhausted = True
                return
            if not self._send_batch(items):
                return

    def _batch_due(self) -> bool:
        if self._flush_now:
            return True
        return self._next_batch is not None and self._now() >= self._next_batch

    def _pump_v2(self, slots: int) -> None:
        """The backlog at once; what waits for its batch only when the batch is due."""
        while self._generation is not None and len(self._inflight) < slots:
            due = self._batch_due()
            exclude = self._inflight_seqs if due else self._inflight_seqs | self._waiting.keys()
            # After a refusal one record probes the broker: a whole outbox in flight
            # would be spared by its cap while new records keep coming.
            probing = self.refused_reason is not None
            items = self._store.oldest(
                limit=1 if probing else self._batch_records,
                max_bytes=self._max_payload_bytes * V2_GATHER_FACTOR,
                exclude=exclude,
            )
            if not items:
                self.backlog_exhausted = True
                if due:
                    self._batch_sent()
                return
            if not self._send_v2(items):
                return

    def _batch_sent(self) -> None:
        """What waited has gone: the next batch is one interval after this one was due.
        A seq still marked waiting is no longer in the outbox (the cap or the age limit
        dropped it before its batch): it is forgotten, not reported as waiting."""
        self._waiting.clear()
        self._flush_now = False
        if self._next_batch is not None and self._now() >= self._next_batch:
            self._next_batch += self.batch_s
            if self._next_batch <= self._now():  # a long stall: start the cadence again
                self._next_batch = None

    def _send_v2(self, items: Sequence[OutboxItem]) -> bool:
        """One v2 message, halved until it fits the payload limit (one record always goes)."""
        while True:
            flagged = [(item, item.seq not in self._waiting) for item in items]
            payload = payloads.v2_batch(self._bench_id, flagged)
            if len(payload) <= self._max_payload_bytes or len(items) == 1:
                break
            items = items[: len(items) // 2]
        seqs = tuple(item.seq for item in items)
        if not self._send(contract_v2.LEAF, payload, seqs):
            return False
        for seq in seqs:
            self._waiting.pop(seq, None)
        return True

    def _send_batch(self, items: Sequence[OutboxItem]) -> bool:
        if items[0].kind == "event":
            payload = payloads.event_message(self._bench_id, items[0], historical=True)
            return self._send("event", payload, (items[0].seq,))
        # The store bounds the batch by stored body size; each record's envelope adds
        # ~120 bytes, so records are added while the exact message still fits (always
        # at least one). The stored JSON is spliced in, never decoded (see payloads).
        prefix, suffix = payloads.telemetry_frame(self._bench_id)
        budget = self._max_payload_bytes - len(prefix.encode()) - len(suffix)
        records: list[str] = []
        seqs: list[int] = []
        used = 0
        for item in items:
            if item.kind != "telemetry":
                break
            text = payloads.record_json(item, historical=True)
            size = len(text.encode()) + (1 if records else 0)  # the comma
            if records and used + size > budget:
                break
            records.append(text)
            seqs.append(item.seq)
            used += size
        payload = f"{prefix}{','.join(records)}{suffix}".encode()
        return self._send("telemetry", payload, tuple(seqs))

    def _send(self, leaf: str, payload: bytes, seqs: tuple[int, ...]) -> bool:
        # v2 batches say what they are (MQTT 5); v1 JSON keeps its bytes as they were.
        content_type = contract_v2.CONTENT_TYPE if leaf == contract_v2.LEAF else None
        mid = self._link.publish(self._topic(leaf), payload, qos=1, content_type=content_type)
        if mid is None:
            return False
        self._inflight[mid] = seqs
        self._inflight_seqs.update(seqs)
        self.messages_sent += 1
        return True

    def _forget_inflight(self) -> None:
        self._inflight.clear()
        self._inflight_seqs.clear()
