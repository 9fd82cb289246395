"""`bench-ops bridge`: every bench's contract-v2 batches republished as the v1 JSON the
city's consumers read, and every bench's retained `state` and `status` mirrored, under
one v1 prefix.

    <prefix>/<bench>/v2                 ->  <v1-prefix>/<bench>/telemetry, event  (QoS 1)
    <prefix>/<bench>/state, status      ->  <v1-prefix>/<bench>/state, status     (retained)
                                            <v1-prefix>/_bridge/<client id>       (its own)

Delivery: the batches come through an MQTT 5 shared subscription
(`$share/<group>/<prefix>/+/v2`, QoS 1), so several bridges in one group split the
load, on a persistent session (a stable client id, clean start off, a session expiry
that rides over a restart). `--no-share` makes it a plain subscription, for one bridge
on a broker that does not keep shared subscriptions over its own restart (mosquitto
2.0.11 does not: README, "The bridge"). A batch is acknowledged to the broker only once the broker
has acknowledged every message republished from it (paho's manual acks), so a bridge
killed at any point loses nothing: the broker delivers what was not acknowledged to the
same session when it comes back. Records come out at least once: the bridge drops a
record it has already passed on (the contract's key, `bridge_ledger`), within this
instance.

A payload that is not a batch it can pass on (not v2, an unknown dictionary, corrupt,
a deflate bomb, another bench's) is counted by problem, logged once per bench per
minute at most, and acknowledged: never redelivered for ever, never a crash. A
republish the broker refuses (its ACL) is not acknowledged and stops the bridge (exit
77): the batch stays with the broker until the ACL is fixed.

Threads: paho's network thread runs every callback; the main thread
(`bridge_service`) logs the summary, publishes the status and waits for a signal. They
share the state under one lock, and the main thread never holds it while it calls paho
(paho calls `on_publish` holding its own lock).
"""

from __future__ import annotations

import logging
import threading
import time
from copy import deepcopy
from dataclasses import dataclass

import paho.mqtt.client as paho
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from bench_agent import __version__
from bench_agent.clock import iso_utc
from bench_agent.json_value import JsonObject
from bench_agent.link import contract_v2
from bench_agent.ops.bridge_acks import AckBook, Delivery, Incoming
from bench_agent.ops.bridge_ledger import Counters, Key, Ledger
from bench_agent.ops.bridge_payloads import (
    INTERNAL_ERROR,
    MIRRORED_LEAVES,
    Unreadable,
    counters_json,
    key_of,
    parse_topic,
    read_batch,
    status_payload,
    status_topic,
    summary_line,
    v1_payloads,
)
from bench_agent.ops.broker_access import (
    BrokerAccess,
    connect_persistent,
    network_thread_alive,
    persistent_client,
    refusals,
)
from bench_agent.ops.service import EXIT_REFUSED

log = logging.getLogger(__name__)

# Room left in the broker's Maximum Packet Size for the topic, properties and header.
PACKET_HEADROOM = 1024
RECEIVE_MAXIMUM = 100  # messages in flight at once, each way


@dataclass(frozen=True)
class BridgeOptions:
    access: BrokerAccess
    client_id: str
    prefix: str = "smartbench"
    v1_prefix: str = "smartbench-v1"
    group: str | None = "bench-ops-bridge"  # None: a plain subscription (one bridge only)
    session_expiry_s: int = 86_400  # rides over a restart, a reboot, a broker upgrade
    status_interval_s: float = 60.0  # the summary line and the retained status
    max_message_bytes: int = 65_536  # a v1 telemetry message (the bench's own default)
    keepalive_s: int = 30

    @property
    def v2_filter(self) -> str:
        plain = f"{self.prefix}/+/{contract_v2.LEAF}"
        return plain if self.group is None else f"$share/{self.group}/{plain}"


class Bridge:
    """One bridge instance: its MQTT client, its ledger, the acks it owes."""

    def __init__(self, options: BridgeOptions) -> None:
        self.options = options
        self.ledger = Ledger()
        self.stop_event = threading.Event()
        self.fatal: str | None = None
        self._lock = threading.RLock()
        self._acks = AckBook()
        self._connected = False
        self._max_bytes = options.max_message_bytes
        self._status_topic = status_topic(options.v1_prefix, options.client_id)
        self.client = self._make_client()

    # -- the client ------------------------------------------------------------------

    def _make_client(self) -> paho.Client:
        o = self.options
        client = persistent_client(o.access, o.client_id, RECEIVE_MAXIMUM)
        offline = status_payload(
            o.client_id, online=False, ts=iso_utc(time.time()), version=__version__,
            reason="connection_lost",
        )  # fmt: skip
        client.will_set(self._status_topic, offline, qos=1, retain=True)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        client.on_publish = self._on_publish
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

    def _on_connect(
        self,
        client: paho.Client,
        _userdata: object,
        flags: paho.ConnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason.is_failure:
            log.warning("the broker refused the connection: %s", reason)
            return
        with self._lock:
            self._acks.connected()
            self._connected = True
            limit = getattr(properties, "MaximumPacketSize", None)
            if isinstance(limit, int) and limit > 0:
                self._max_bytes = min(self.options.max_message_bytes, limit - PACKET_HEADROOM)
        log.info(
            "connected to %s:%d as %s (session present: %s)",
            self.options.access.host, self.options.access.port, self.options.client_id,
            flags.session_present,
        )  # fmt: skip
        # Retained state and status: every bridge mirrors them (not shared), so the mirror
        # always ends on the newest whichever bridge publishes last; no-local, so a v1
        # prefix that a bench prefix filter also matched could never loop.
        mirror = SubscribeOptions(qos=1, noLocal=True)
        client.subscribe(
            [
                (self.options.v2_filter, SubscribeOptions(qos=1)),
                *((f"{self.options.prefix}/+/{leaf}", mirror) for leaf in MIRRORED_LEAVES),
            ]
        )
        client.publish(self._status_topic, self._status(online=True), qos=1, retain=True)

    def _on_disconnect(
        self,
        _client: paho.Client,
        _userdata: object,
        _flags: paho.DisconnectFlags,
        reason: ReasonCode,
        _properties: Properties | None,
    ) -> None:
        with self._lock:
            was_connected, self._connected = self._connected, False
        if was_connected and not self.stop_event.is_set():
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
            self._fail(f"the broker refused a subscription ({', '.join(refused)})")

    # -- what comes in -----------------------------------------------------------------

    def _on_message(self, _client: paho.Client, _userdata: object, msg: paho.MQTTMessage) -> None:
        with self._lock:
            incoming = self._acks.incoming(msg.mid, msg.qos)
            try:
                self._handle(msg, incoming)
            except Exception as exc:  # a bug of ours on one payload: counted, never a crash
                self.ledger.counters.undecodable[INTERNAL_ERROR] += 1
                if self.ledger.should_log(INTERNAL_ERROR, time.monotonic()):
                    log.exception("cannot handle a message on %s: %s", msg.topic, exc)
                if incoming.waiting == 0 and not incoming.ready:
                    self._ack(self._acks.done(incoming))

    def _handle(self, msg: paho.MQTTMessage, incoming: Incoming) -> None:
        topic = parse_topic(msg.topic, self.options.prefix)
        if topic is not None and topic.leaf == contract_v2.LEAF:
            self._batch(topic.bench, bytes(msg.payload), incoming)
        elif topic is not None and topic.leaf in MIRRORED_LEAVES:
            delivery = Delivery(retained=1)
            path = f"{topic.bench}/{topic.leaf}"
            self._republish(delivery, path, bytes(msg.payload), retain=True)
            self._ack(self._acks.wait_for(incoming, [delivery]))
        else:  # not ours (a subscription an older version left in the session)
            self._ack(self._acks.done(incoming))

    def _batch(self, bench: str, payload: bytes, incoming: Incoming) -> None:
        counters = self.ledger.counters
        try:
            batch = read_batch(bench, payload)
            kept, new_keys, waits, duplicates = self._select(bench, batch)
            messages = (
                v1_payloads(
                    contract_v2.Batch(bench, batch.dictionary_id, tuple(kept)), self._max_bytes
                )
                if kept
                else []
            )
        except Unreadable as exc:
            self._unreadable(bench, exc, incoming)
            return
        counters.batches += 1
        counters.records_in += len(batch.records)
        counters.duplicates += duplicates
        for key in new_keys:
            self.ledger.admit(key)
        if messages:
            delivery = Delivery(keys=new_keys, records=len(kept))
            for leaf, body, _records in messages:
                self._republish(delivery, f"{bench}/{leaf}", body, retain=False)
            counters.messages_out += len(messages)
            waits.append(delivery)
        self._ack(self._acks.wait_for(incoming, waits))

    def _select(
        self, bench: str, batch: contract_v2.Batch
    ) -> tuple[list[tuple[contract_v2.RecordKind, JsonObject]], list[Key], list[Delivery], int]:
        """The records to pass on (not passed on before, not in flight from another
        message), their keys, the deliveries in flight this message waits for instead,
        and how many records were duplicates. Changes nothing."""
        kept: list[tuple[contract_v2.RecordKind, JsonObject]] = []
        new_keys: list[Key] = []
        waits: list[Delivery] = []
        in_batch: set[Key] = set()
        duplicates = 0
        for kind, record in batch.records:
            key = key_of(bench, record)
            if key is None:
                kept.append((kind, record))
                continue
            flying = self._acks.in_flight(key)
            if flying is not None:
                if flying not in waits:
                    waits.append(flying)
                duplicates += 1
            elif key in in_batch or self.ledger.seen(key):
                duplicates += 1
            else:
                in_batch.add(key)
                new_keys.append(key)
                kept.append((kind, record))
        return kept, new_keys, waits, duplicates

    def _unreadable(self, bench: str, exc: Unreadable, incoming: Incoming) -> None:
        self.ledger.counters.undecodable[exc.problem] += 1
        if self.ledger.should_log(bench, time.monotonic()):
            log.warning(
                "%s/%s/%s: not passed on (%s); counted, acknowledged"
                " (logged once a minute per bench at most)",
                self.options.prefix, bench, contract_v2.LEAF, exc,
            )  # fmt: skip
        self._ack(self._acks.done(incoming))

    # -- what goes out, and the acks it owes ---------------------------------------------

    def _republish(self, delivery: Delivery, path: str, body: bytes, *, retain: bool) -> None:
        topic = f"{self.options.v1_prefix}/{path}"
        info = self.client.publish(topic, body, qos=1, retain=retain)
        self._acks.published(delivery, info.mid)

    def _on_publish(
        self,
        _client: paho.Client,
        _userdata: object,
        mid: int,
        reason: ReasonCode,
        _properties: Properties | None,
    ) -> None:
        with self._lock:
            delivery = self._acks.pop(mid)
            if delivery is None:
                return  # our own status
            if reason.is_failure:
                self.ledger.counters.refused[str(reason)] += 1
                self._fail(f"the broker refused a republished message ({reason})")
                return  # its batch is never acknowledged: the broker keeps it
            ready = self._acks.acknowledged(delivery, mid)
            if not delivery.pending:
                self.ledger.counters.records_out += delivery.records
                self.ledger.counters.retained_mirrored += delivery.retained
            self._ack(ready)

    def _ack(self, incoming: list[Incoming]) -> None:
        for message in incoming:
            self.client.ack(message.mid, message.qos)

    def _fail(self, why: str) -> None:
        if self.fatal is None:
            self.fatal = why
            log.error(
                "%s: stopping (exit %d); nothing is acknowledged that was not passed on",
                why,
                EXIT_REFUSED,
            )
        self.stop_event.set()

    # -- status and summary ------------------------------------------------------------------

    def _status(self, *, online: bool, reason: str | None = None) -> bytes:
        with self._lock:
            counters = counters_json(self.ledger.counters, self.ledger.gaps())
        return status_payload(
            self.options.client_id, online=online, ts=iso_utc(time.time()), version=__version__,
            counters=counters, reason=reason,
        )  # fmt: skip

    def counters(self) -> Counters:
        with self._lock:
            return deepcopy(self.ledger.counters)

    def summary(self, previous: Counters, interval_s: float) -> tuple[Counters, str]:
        """The counters now, and the summary line since `previous` (`interval_s` ago)."""
        with self._lock:
            counters = deepcopy(self.ledger.counters)
            return counters, summary_line(counters, previous, self.ledger.gaps(), interval_s)

    def publish_status(self) -> None:
        """The retained status, online, with the counters (skipped while disconnected)."""
        with self._lock:
            connected = self._connected
        if connected:  # never while holding the lock: paho calls on_publish holding its own
            self.client.publish(self._status_topic, self._status(online=True), qos=1, retain=True)

    def stop(self, reason: str = "shutdown", timeout_s: float = 3.0) -> None:
        """The retained status offline (acknowledged if the broker is there), then a clean
        disconnect that keeps the session (what is not acknowledged is redelivered)."""
        with self._lock:
            connected = self._connected
        if connected:
            info = self.client.publish(
                self._status_topic, self._status(online=False, reason=reason), qos=1, retain=True
            )
            try:
                info.wait_for_publish(timeout_s)
            except (RuntimeError, ValueError) as exc:  # the connection went meanwhile
                log.warning("the offline status did not go out: %s", exc)
        self.client.disconnect()
        self.client.loop_stop()

    def network_thread_alive(self) -> bool:
        return network_thread_alive(self.client)
