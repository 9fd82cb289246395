"""The MQTT session: paho-mqtt 2.x behind one module; no paho type leaks out.

One network thread owns the paho client. It connects (and reconnects with
jittered exponential backoff), drives paho's loop, and reports everything that
happens as small frozen events through `on_event`, which must only enqueue:
the agent's main loop is the one place that acts on them.

A fresh paho client is made for every connection. The on-disk outbox, not
paho's in-memory queue, is what guarantees delivery, so nothing is lost by
dropping paho's queue on a reconnect; and a new client means an acknowledgement
from an old connection can never be mistaken for one of the current one.

Bytes cost money on a bench (README, "The link's own cost"): a reconnect resumes the
last TLS session (`ResumingContext`), a topic's name goes once per connection, then its
MQTT 5 alias (`TopicAliases`), and the broker's Server Keep Alive is obeyed (by paho).
"""

from __future__ import annotations

import contextlib
import logging
import random
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from bench_agent.config import MqttConfig
from bench_agent.link.mqtt_savings import (
    HANDSHAKE_CUT,
    ResumingContext,
    TopicAliases,
    file_id,
    publish_properties,
)
from bench_agent.preflight import tls_problems

log = logging.getLogger(__name__)

# paho's loop wakes at least this often to run keepalive checks; a publish from
# another thread wakes it at once through paho's own socket pair.
_LOOP_TIMEOUT_S = 1.0
_FLUSH_S = 2.0  # after close(): at most this long to write what is queued (DISCONNECT)


@dataclass(frozen=True, slots=True)
class Connected:
    generation: int  # increases with every connection; acks carry it
    # The broker's Maximum Packet Size (MQTT 5 CONNACK), when it announces one.
    max_packet_size: int | None = None


@dataclass(frozen=True, slots=True)
class Disconnected:
    generation: int
    reason: str


@dataclass(frozen=True, slots=True)
class Acked:
    generation: int
    mid: int  # the message id `publish()` returned


@dataclass(frozen=True, slots=True)
class Refused:
    """The broker answered a QoS 1 publish with a failure reason (MQTT 5 PUBACK >= 0x80:
    not authorized, quota exceeded, payload format…): not delivered."""

    generation: int
    mid: int
    reason: str  # e.g. "Not authorized (0x87)"


@dataclass(frozen=True, slots=True)
class MessageIn:
    topic: str
    payload: bytes
    retained: bool


@dataclass(frozen=True, slots=True)
class SetupFailed:
    """The bench's own side of the link cannot be set up (a TLS file missing or bad):
    not the broker's fault, so it is a bench fault. `detail` None: it works again."""

    detail: str | None


LinkEvent = Connected | Disconnected | Acked | Refused | MessageIn | SetupFailed


@dataclass(frozen=True, slots=True)
class Will:
    topic: str
    payload: bytes


class Link(Protocol):
    """What the agent's parts use of the MQTT session: `MqttLink` on a bench, an
    in-memory link in the unit tests of the whole agent (tests/link_support.py)."""

    reconnects: int
    last_error: str | None

    @property
    def connected(self) -> bool: ...

    def start(self) -> None: ...

    def close(self, timeout_s: float = 3.0) -> None: ...

    def alive(self) -> bool: ...

    def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 1,
        retain: bool = False,
        content_type: str | None = None,
    ) -> int | None: ...


class LinkFactory(Protocol):
    """How the agent makes its link (`MqttLink` is one): events go to `on_event`."""

    def __call__(
        self,
        cfg: MqttConfig,
        *,
        will: Will,
        subscriptions: Sequence[str],
        on_event: Callable[[LinkEvent], None],
    ) -> Link: ...


def _write_is_the_loops_job(_client: paho.Client, _userdata: Any, _sock: object) -> None:
    """paho's "this client wants to write" hook: nothing to do, the network thread's
    `loop()` selects for writing whenever paho has something queued."""


class MqttLink:
    """A self-healing MQTT session. Build, then `start()`; `close()` is idempotent.
    `reuse_tls_sessions=False`: every connection a full TLS handshake (bench/'s "before")."""

    def __init__(
        self,
        cfg: MqttConfig,
        *,
        will: Will,
        subscriptions: Sequence[str],
        on_event: Callable[[LinkEvent], None],
        reuse_tls_sessions: bool = True,
    ) -> None:
        self._cfg = cfg
        self._reuse_tls = reuse_tls_sessions
        self._tls: tuple[ResumingContext, object] | None = None  # (context, files it read)
        self._aliases: TopicAliases | None = None  # this connection's; None: no aliases
        self._publish_lock = threading.Lock()  # one publish at a time: aliases in order
        self._will = will
        self._subscriptions = tuple(subscriptions)
        self._on_event = on_event
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # One log line a minute at most for a broker refusing every publish.
        self._refusal_logged: tuple[str | None, float] = (None, 0.0)
        self._setup_problem: str | None = None  # what stops the bench's side of the link
        self._lock = threading.Lock()
        self._client: paho.Client | None = None
        self._closing = False  # close() was called: the session ends after its DISCONNECT
        self._generation = 0
        self._connected = False
        self.reconnects = 0  # connections after the first
        self.last_error: str | None = None

    # -- lifecycle ------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="mqtt", daemon=True)
        self._thread.start()

    def close(self, timeout_s: float = 3.0) -> None:
        """Disconnect cleanly (no Last Will) and stop the network thread: DISCONNECT is
        queued here and written by the network thread, which then ends."""
        with self._lock:
            self._closing = True
            client = self._client
        if client is not None:
            client.disconnect()
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None

    def __enter__(self) -> MqttLink:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- use ------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def generation(self) -> int:
        return self._generation

    @property
    def keepalive_s(self) -> int | None:
        """This connection's keepalive (the broker's Server Keep Alive, if it sent one)."""
        with self._lock:
            client = self._client if self._connected else None
        return None if client is None else client.keepalive

    def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 1,
        retain: bool = False,
        content_type: str | None = None,
    ) -> int | None:
        """Hand one message to the broker; returns its message id, or None when offline.
        `content_type` goes as the MQTT 5 property (MQTT 3.1.1 has none).

        The caller learns of delivery from an `Acked` event with this id (QoS 1: the
        broker's PUBACK). Nothing is queued while offline: the outbox is the queue.
        """
        with self._publish_lock:
            with self._lock:
                client = self._client if self._connected else None
                aliases = self._aliases
            if client is None:
                return None
            if aliases is not None:
                wire, properties, learn = aliases.wire(topic, content_type)
            elif self._cfg.protocol == "5":
                wire, properties, learn = topic, publish_properties(content_type), None
            else:
                wire, properties, learn = topic, None, None
            info = client.publish(wire, payload, qos=qos, retain=retain, properties=properties)
            if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                return None  # not taken: the broker never learns this alias, nor do we
            if aliases is not None and learn is not None:
                aliases.learn(topic, learn)
            return int(info.mid)

    # -- the network thread -------------------------------------------------

    def _run(self) -> None:
        """The network thread: never ends before close(), whatever goes wrong."""
        attempt = 0
        while not self._stop.is_set():
            try:
                attempt = self._session(attempt)
            except Exception as exc:  # a bug or a paho surprise must not end the uplink
                log.exception("mqtt: unexpected error in the network thread")
                self._note_failure(f"unexpected error: {type(exc).__name__}: {exc}")
            if self._stop.is_set() or self._closing:
                break
            delay = self._backoff_s(attempt)
            attempt += 1
            log.debug("mqtt: next connection attempt in %.1f s", delay)
            self._stop.wait(delay)

    def alive(self) -> bool:
        """The network thread runs (or was never started)."""
        return self._thread is None or self._thread.is_alive()

    def _session(self, attempt: int) -> int:
        """One connection attempt and, if it comes up, the session; the next attempt number."""
        problems = tls_problems(self._cfg)
        if problems:
            detail = "; ".join(str(p) for p in problems)
            self._setup_failed(detail)
            return attempt
        try:
            client = self._make_client()
        except (OSError, ssl.SSLError, ValueError) as exc:
            self._setup_failed(f"TLS set-up: {exc}")
            return attempt
        self._setup_failed(None)
        try:
            client.connect(self._cfg.host, self._cfg.port, keepalive=self._cfg.keepalive_s)
        except (OSError, ssl.SSLError, ValueError) as exc:
            self._note_failure(f"connect: {exc}")
            if self._tls and isinstance(exc, ssl.SSLError) and not isinstance(exc, HANDSHAKE_CUT):
                self._tls[0].offered = None  # refused, not cut: the next handshake is full
            return attempt
        with self._lock:
            self._client = client
            closing = self._closing
        if closing:  # close() came while connecting: say goodbye, or the Will goes out
            client.disconnect()
        flush_until: float | None = None
        while True:
            if self._stop.is_set():
                # Stopped: on until what is queued (the DISCONNECT) is written, briefly.
                flush_until = flush_until or time.monotonic() + _FLUSH_S
                if not client.want_write() or time.monotonic() > flush_until:
                    break
            rc = client.loop(timeout=_LOOP_TIMEOUT_S)
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                break
        if self._connected:
            attempt = 0  # a session that came up resets the backoff
        self._lost(client, "stopped" if self._closing else "connection lost")
        return attempt

    def _setup_failed(self, detail: str | None) -> None:
        if detail is not None:
            self._note_failure(detail)
        if detail != self._setup_problem:
            self._setup_problem = detail
            self._on_event(SetupFailed(detail))

    def _backoff_s(self, attempt: int) -> float:
        """Exponential backoff with "equal jitter": half fixed, half random.

        The jitter keeps a city's benches from reconnecting in lockstep after the
        central broker restarts.
        """
        ceiling = min(
            self._cfg.reconnect_max_s, self._cfg.reconnect_min_s * 2.0 ** min(attempt, 30)
        )
        return ceiling / 2 + random.uniform(0, ceiling / 2)

    def _note_failure(self, message: str) -> None:
        if message != self.last_error:
            log.warning("mqtt: %s", message)
        self.last_error = message

    def _lost(self, client: paho.Client, reason: str) -> None:
        with self._lock:
            was_connected = self._connected
            self._connected = False
            self._client = None
            self._aliases = None
        if not self._closing:  # on close(), DISCONNECT was already queued and sent
            with contextlib.suppress(OSError, ValueError):
                client.disconnect()
        if was_connected:
            log.warning("mqtt: disconnected (%s)", reason)
            self._on_event(Disconnected(self._generation, reason))

    def _make_client(self) -> paho.Client:
        cfg = self._cfg
        protocol = paho.MQTTv5 if cfg.protocol == "5" else paho.MQTTv311
        client = paho.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=cfg.client_id,
            protocol=protocol,
            clean_session=True if protocol == paho.MQTTv311 else None,
        )
        client.enable_logger(logging.getLogger("bench_agent.paho"))
        if cfg.tls:
            client.tls_set_context(self._tls_context())
        if cfg.username is not None:
            client.username_pw_set(cfg.username, cfg.password)
        client.will_set(self._will.topic, self._will.payload, qos=1, retain=True)
        # Bounded: the outbox paces us, and a stalled link must not grow paho's queue.
        client.max_inflight_messages_set(20)
        client.max_queued_messages_set(50)
        client.on_connect = self._on_connect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        # Only the network thread touches the socket. Without an external-loop hook (or
        # paho's own loop_start thread), paho's publish() and disconnect() write the
        # socket from the calling thread while `loop()` reads and writes it here: two
        # threads on one TLS connection corrupt its records ("bad record mac") and the
        # broker drops the bench. With the hook they only queue and wake `loop()`'s
        # select (its socket pair), which writes whatever `want_write()` says is due.
        client.on_socket_register_write = _write_is_the_loops_job
        return client

    def _tls_context(self) -> ResumingContext:
        """The link's TLS context, kept across connections (a session resumes only in the
        context that made it), made again when a TLS file changed on disk. What paho's
        `tls_set` would make: TLS 1.2 or newer, the broker's certificate and name checked."""
        cfg = self._cfg
        files = tuple(file_id(p) for p in (cfg.ca_file, cfg.cert_file, cfg.key_file))
        if self._tls is None or self._tls[1] != files:
            context = ResumingContext(ssl.PROTOCOL_TLS_CLIENT)
            if cfg.cert_file is not None:
                context.load_cert_chain(cfg.cert_file, cfg.key_file)
            if cfg.ca_file is not None:
                context.load_verify_locations(cfg.ca_file)
            else:
                context.load_default_certs()
            self._tls = (context, files)
        return self._tls[0]

    def _connection_costs(self, client: paho.Client, properties: Any) -> str:
        """After CONNACK: keep this connection's TLS session for the next one (TLS 1.3
        tickets came before CONNACK), set up its topic aliases; what to log."""
        notes = []
        sock = client.socket()
        if self._tls is not None and isinstance(sock, ssl.SSLSocket):
            notes.append(f"{sock.version()}, {'resumed' if sock.session_reused else 'full'}")
            self._tls[0].offered = sock.session if self._reuse_tls else None
        if getattr(properties, "ServerKeepAlive", None) is not None:
            # paho 2.x's CONNACK handler already set it (tests/test_link_cost.py checks)
            notes.append(f"keepalive {client.keepalive} s, the broker's")
        maximum = getattr(properties, "TopicAliasMaximum", 0)
        if self._cfg.protocol == "5" and isinstance(maximum, int) and maximum > 0:
            with self._lock:
                self._aliases = TopicAliases(maximum)
            notes.append(f"{maximum} topic aliases")
        return f" ({'; '.join(notes)})" if notes else ""

    # -- paho callbacks (network thread) ------------------------------------

    def _on_connect(
        self,
        client: paho.Client,
        _userdata: Any,
        _flags: Any,
        reason_code: ReasonCode,
        properties: Any,
    ) -> None:
        if reason_code.is_failure:
            # e.g. "Not authorized": paho closes the socket and the loop returns.
            self._note_failure(f"broker refused the connection: {reason_code}")
            return
        costs = self._connection_costs(client, properties)
        for topic in self._subscriptions:
            if self._cfg.protocol == "5":
                # Without retainAsPublished the broker clears the retain flag when it
                # forwards a retained message live, and a retained command published
                # while we are online would look like a fresh one. MQTT 3.1.1 has no
                # such option (README: retained commands there are caught only at
                # subscribe time; signatures and the replay store still hold).
                client.subscribe(topic, options=SubscribeOptions(qos=1, retainAsPublished=True))
            else:
                client.subscribe(topic, qos=1)
        with self._lock:
            self._generation += 1
            self.reconnects = self._generation - 1
            self._connected = True
            generation = self._generation
        self.last_error = None
        log.info("mqtt: connected to %s:%d%s", self._cfg.host, self._cfg.port, costs)
        limit = getattr(properties, "MaximumPacketSize", None)
        self._on_event(Connected(generation, limit if isinstance(limit, int) else None))

    def _on_publish(
        self, _client: paho.Client, _userdata: Any, mid: int, reason_code: ReasonCode, _props: Any
    ) -> None:
        # A PUBACK with a failure reason (MQTT 5, e.g. "Not authorized") is not a
        # delivery: the record stays in the outbox, and the agent backs off.
        if reason_code.is_failure:
            reason = f"{reason_code} (0x{reason_code.value:02X})"
            now = time.monotonic()
            if reason != self._refusal_logged[0] or now - self._refusal_logged[1] >= 60:
                log.warning("mqtt: the broker refuses publishes: %s", reason)
                self._refusal_logged = (reason, now)
            self._on_event(Refused(self._generation, mid, reason))
            return
        self._on_event(Acked(self._generation, mid))

    def _on_message(self, _client: paho.Client, _userdata: Any, message: paho.MQTTMessage) -> None:
        self._on_event(MessageIn(message.topic, bytes(message.payload), bool(message.retain)))
