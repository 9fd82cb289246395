"""`bench-ops archive`: every record and event the benches send, stored once per contract
key in the archive's database (`archive_store`: SQLite or PostgreSQL).

    <prefix>/+/v2, <prefix>/+/telemetry, <prefix>/+/event   ->  bench_records

Delivery, as the bridge's: an MQTT 5 shared subscription (`$share/<group>/…`, QoS 1)
so several workers, on several machines, split the load; a persistent session (a
stable client id, clean start off, a session expiry of a week) so what arrives while a
worker is away waits for it at the broker; manual acknowledgements, sent only once the
rows a message carried are committed (`ArchiveStore.insert` returns after the commit),
in the order the messages came, on the connection they came on (`bridge_acks.AckBook`).
A worker killed at any point (kill -9, a power cut, a database outage) loses nothing:
the broker delivers again what was not acknowledged, and the database's key makes a
second copy a no-op.

Backlogs: after an outage every bench sends its backlog at once. The broker holds the
burst, not the worker's memory: it sends at most `RECEIVE_MAXIMUM` unacknowledged
messages at a time (MQTT 5 Receive Maximum), the worker stores them in transactions of
up to `batch_records` rows, and paces its inserts to `max_rate` records per second so
that the database stays responsive for the report and the dashboards; it acknowledges
as it commits, and the broker then sends more.

Threads: paho's network thread only queues what comes in (and counts connections); the
worker's own thread (`run`) decodes, inserts, acknowledges, runs retention and logs the
summary. The acknowledgement book is shared under one lock.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter
from dataclasses import dataclass, field, replace

import paho.mqtt.client as paho
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from bench_agent.clock import iso_utc
from bench_agent.ops.archive_payloads import LEAVES, Rows, rows_of
from bench_agent.ops.archive_store import ArchiveStore, Row
from bench_agent.ops.bridge_acks import AckBook, Incoming
from bench_agent.ops.bridge_ledger import LOG_EVERY_S
from bench_agent.ops.bridge_payloads import INTERNAL_ERROR, Unreadable, parse_topic
from bench_agent.ops.broker_access import (
    BrokerAccess,
    connect_persistent,
    network_thread_alive,
    persistent_client,
    refusals,
)

log = logging.getLogger(__name__)

RECEIVE_MAXIMUM = 200  # unacknowledged messages the broker may send at once
RETENTION_CHUNK = 5_000  # rows deleted per transaction
RETENTION_BUDGET_S = 2.0  # time spent deleting per turn; the rest waits for the next


@dataclass(frozen=True)
class ArchiveOptions:
    access: BrokerAccess
    client_id: str
    prefix: str = "smartbench"
    group: str | None = "bench-ops-archive"  # None: a plain subscription (one worker)
    session_expiry_s: int = 7 * 86_400  # a worker away for a long weekend loses nothing
    batch_records: int = 1_000  # rows per transaction, at most (a message is never split)
    max_rate: float = 5_000.0  # records per second stored, at most; 0: no limit
    retention_s: float | None = None  # rows received longer ago are deleted; None: kept
    retention_every_s: float = 3_600.0
    status_interval_s: float = 60.0
    keepalive_s: int = 30

    def filters(self) -> list[str]:
        plain = [f"{self.prefix}/+/{leaf}" for leaf in LEAVES]
        return plain if self.group is None else [f"$share/{self.group}/{f}" for f in plain]


@dataclass
class ArchiveCounters:
    """Since the worker started."""

    messages: int = 0  # messages decoded
    records: int = 0  # records in them
    stored: int = 0  # rows new to the archive
    duplicates: int = 0  # rows the archive had already
    transactions: int = 0
    unkeyed: int = 0  # records without a seq (the bench could not store them): not kept
    deleted: int = 0  # rows removed by retention
    undecodable: Counter[str] = field(default_factory=Counter)


@dataclass(frozen=True, slots=True)
class _Message:
    incoming: Incoming
    topic: str
    payload: bytes


class Archive:
    """One archive worker: its MQTT client, its database, the acks it owes."""

    def __init__(self, options: ArchiveOptions, store: ArchiveStore) -> None:
        self.options = options
        self.store = store
        self.counters = ArchiveCounters()
        self.stop_event = threading.Event()
        self.fatal: str | None = None
        self._lock = threading.Lock()
        self._acks = AckBook()
        self._inbox: queue.SimpleQueue[_Message] = queue.SimpleQueue()
        self._logged: dict[str, float] = {}
        self._next_insert = 0.0  # monotonic: the rate limit's next slot
        self.client = self._make_client()

    def _make_client(self) -> paho.Client:
        client = persistent_client(self.options.access, self.options.client_id, RECEIVE_MAXIMUM)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        return client

    def start(self) -> None:
        """Connect in paho's network thread (retried until the broker answers)."""
        connect_persistent(
            self.client,
            self.options.access,
            session_expiry_s=self.options.session_expiry_s,
            receive_maximum=RECEIVE_MAXIMUM,
            keepalive_s=self.options.keepalive_s,
        )

    # -- paho's thread ---------------------------------------------------------------------

    def _on_connect(
        self,
        client: paho.Client,
        _userdata: object,
        flags: paho.ConnectFlags,
        reason: ReasonCode,
        _properties: Properties | None,
    ) -> None:
        if reason.is_failure:
            log.warning("the broker refused the connection: %s", reason)
            return
        with self._lock:
            self._acks.connected()  # what came on an earlier connection is redelivered
        log.info(
            "connected to %s:%d as %s (session present: %s)",
            self.options.access.host, self.options.access.port, self.options.client_id,
            flags.session_present,
        )  # fmt: skip
        client.subscribe([(f, SubscribeOptions(qos=1)) for f in self.options.filters()])

    def _on_disconnect(
        self,
        _client: paho.Client,
        _userdata: object,
        _flags: paho.DisconnectFlags,
        reason: ReasonCode,
        _properties: Properties | None,
    ) -> None:
        with self._lock:
            self._acks.connected()  # nothing that came on the lost connection is acked now
        if not self.stop_event.is_set():
            log.warning("disconnected from the broker (%s); reconnecting", reason)

    def _on_subscribe(
        self,
        _client: paho.Client,
        _userdata: object,
        _mid: int,
        reasons: list[ReasonCode],
        _properties: Properties | None,
    ) -> None:
        refused = refusals(reasons)
        if refused:
            self.fail(f"the broker refused a subscription ({', '.join(refused)})")
        else:
            log.info("subscribed: %s", ", ".join(self.options.filters()))

    def _on_message(self, _client: paho.Client, _userdata: object, msg: paho.MQTTMessage) -> None:
        with self._lock:
            incoming = self._acks.incoming(msg.mid, msg.qos)
        self._inbox.put(_Message(incoming, msg.topic, bytes(msg.payload)))

    def fail(self, why: str) -> None:
        if self.fatal is None:
            self.fatal = why
            log.error("%s: stopping; nothing is acknowledged that is not stored", why)
        self.stop_event.set()

    # -- the worker's thread -----------------------------------------------------------------

    def take(self, timeout_s: float) -> list[_Message]:
        """The next messages to store together: waits up to `timeout_s` for the first,
        then takes what is already queued, up to `batch_records` records' worth."""
        try:
            first = self._inbox.get(timeout=timeout_s)
        except queue.Empty:
            return []
        taken = [first]
        budget = self.options.batch_records - _rough_records(first)
        while budget > 0:
            try:
                message = self._inbox.get_nowait()
            except queue.Empty:
                break
            taken.append(message)
            budget -= _rough_records(message)
        return taken

    def store_messages(self, messages: list[_Message]) -> None:
        """Decode, insert in one transaction (ArchiveError goes up: nothing acknowledged),
        then acknowledge every message, in order."""
        rows: list[Row] = []
        counters = self.counters
        for message in messages:
            decoded = self._decode(message)
            if decoded is not None:
                rows.extend(decoded.rows)
                counters.messages += 1
                counters.records += len(decoded.rows) + decoded.unkeyed
                counters.unkeyed += decoded.unkeyed
        if rows:
            self._pace(len(rows))
            added = self.store.insert(rows, iso_utc(time.time()))
            counters.transactions += 1
            counters.stored += added
            counters.duplicates += len(rows) - added
        # Under the lock, so that a connection lost meanwhile (`_on_disconnect`) either
        # comes before (these are then never acknowledged: delivered again) or after
        # (the acks are queued on the old connection, which paho drops): never an old
        # packet id acknowledged on a new connection. paho's ack() takes no lock.
        with self._lock:
            for ack in [a for m in messages for a in self._acks.done(m.incoming)]:
                self.client.ack(ack.mid, ack.qos)

    def _decode(self, message: _Message) -> Rows | None:
        topic = parse_topic(message.topic, self.options.prefix)
        if topic is None:
            return None  # not ours (a subscription an older version left in the session)
        try:
            return rows_of(topic.bench, topic.leaf, message.payload)
        except Unreadable as exc:
            self._unreadable(topic.bench, exc.problem, str(exc))
        except Exception as exc:  # a bug of ours on one payload: counted, never a crash
            self._unreadable(topic.bench, INTERNAL_ERROR, repr(exc))
        return None

    def _unreadable(self, bench: str, problem: str, detail: str) -> None:
        self.counters.undecodable[problem] += 1
        now = time.monotonic()
        if now - self._logged.get(bench, -LOG_EVERY_S) >= LOG_EVERY_S:
            if len(self._logged) > 10_000:
                self._logged.clear()
            self._logged[bench] = now
            log.warning(
                "%s/%s: not archived (%s); counted, acknowledged"
                " (logged once a minute per bench at most)",
                self.options.prefix, bench, detail,
            )  # fmt: skip

    def _pace(self, rows: int) -> None:
        """Wait for this insert's slot under `max_rate` (a stop cuts the wait short)."""
        rate = self.options.max_rate
        if rate <= 0:
            return
        now = time.monotonic()
        if self._next_insert > now:
            self.stop_event.wait(self._next_insert - now)
            now = time.monotonic()
        self._next_insert = max(now, self._next_insert) + rows / rate

    def apply_retention(self) -> int:
        """Delete rows received longer than `retention_s` ago, for a few seconds at most."""
        if self.options.retention_s is None:
            return 0
        cutoff = iso_utc(time.time() - self.options.retention_s)
        deadline = time.monotonic() + RETENTION_BUDGET_S
        deleted = 0
        while time.monotonic() < deadline and not self.stop_event.is_set():
            went = self.store.delete_received_before(cutoff, RETENTION_CHUNK)
            deleted += went
            if went < RETENTION_CHUNK:
                break
        self.counters.deleted += deleted
        if deleted:
            log.info("retention: %d rows received before %s deleted", deleted, cutoff)
        return deleted

    def snapshot(self) -> ArchiveCounters:
        return replace(self.counters, undecodable=Counter(self.counters.undecodable))

    def queued(self) -> int:
        return self._inbox.qsize()

    def stop(self) -> None:
        """A clean disconnect that keeps the session: what is not acknowledged is
        delivered again when a worker with this client id comes back."""
        self.stop_event.set()
        self.client.disconnect()
        self.client.loop_stop()

    def network_thread_alive(self) -> bool:
        return network_thread_alive(self.client)


def _rough_records(message: _Message) -> int:
    """A guess at a message's records before decoding it (a v2 record is ~100 bytes
    deflated, a v1 one ~1,500): enough to size a transaction."""
    per_record = 100 if message.topic.endswith("/v2") else 1_500
    return max(1, len(message.payload) // per_record)


def summary_line(
    now: ArchiveCounters, before: ArchiveCounters, interval_s: float, queued: int
) -> str:
    rate = (now.stored - before.stored) / interval_s if interval_s > 0 else 0.0
    undecodable = ", ".join(f"{p} {n}" for p, n in sorted(now.undecodable.items())) or "none"
    return (
        f"archive: {rate:.1f} records/s stored, {queued} messages queued; since start:"
        f" {now.stored} stored, {now.duplicates} duplicates, {now.transactions} transactions,"
        f" {now.unkeyed} without seq, {now.deleted} deleted by retention,"
        f" undecodable: {undecodable}"
    )
