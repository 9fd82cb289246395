"""Stand-ins for the MQTT link where no broker is needed (publisher, recorder, state).

`RecordingLink` stands in for `MqttLink`: it hands out message ids like a paho
client (a new connection is a new client, so ids start again at 1), keeps
every publish, and checks every payload against the contract's JSON Schemas.
`LoopbackLink` is one the whole agent can be built with: it reports the
connection and the acknowledgements as events, as the real link does.
The real link with a real broker is in the integration tests.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from bench_agent.link import contract_v2
from bench_agent.link.mqtt import Acked, Connected, Disconnected, MessageIn
from tests.outbox_support import validate


@dataclass(frozen=True)
class Sent:
    topic: str
    payload: bytes
    mid: int
    at: float | None = None  # when, on the test's clock (LoopbackLink.now), if it has one

    @property
    def leaf(self) -> str:
        return self.topic.rsplit("/", 1)[-1]

    def records(self) -> list[dict[str, Any]]:
        """Telemetry records, or the one event, as ops receive them."""
        message = json.loads(self.payload)
        return list(message["records"]) if self.leaf == "telemetry" else [message]

    def seqs(self) -> list[int]:
        return [r["seq"] for r in self.records()]


class RecordingLink:
    """Keeps every publish; offline it refuses, as `MqttLink.publish` returns None.

    Records are never retained (the publisher must not ask); the `state` and
    `status` messages are, with `allow_retain`.
    """

    def __init__(self, *, allow_retain: bool = False) -> None:
        self.sent: list[Sent] = []  # as a v1 consumer gets them (a v2 batch decoded)
        self.wire: list[Sent] = []  # as they were published
        self.retained: dict[str, bytes] = {}
        self.allow_retain = allow_retain
        self.now: Callable[[], float] | None = None
        self.online = False
        self._next_mid = 1

    def connect(self) -> None:
        self.online = True
        self._next_mid = 1  # a new paho client numbers its messages from 1 again

    def disconnect(self) -> None:
        self.online = False

    def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 1,
        retain: bool = False,
        content_type: str | None = None,
    ) -> int | None:
        assert qos == 1 and (self.allow_retain or not retain)
        # A v2 batch says so (its MQTT 5 content type); v1 JSON carries none.
        assert content_type == (contract_v2.CONTENT_TYPE if topic.endswith("/v2") else None)
        if not self.online:
            return None
        mid = self._next_mid
        self._next_mid += 1
        self.wire.append(Sent(topic, payload, mid, None if self.now is None else self.now()))
        prefix, _, leaf = topic.rpartition("/")
        if leaf == contract_v2.LEAF:  # a v2 batch: kept as the v1 messages ops get from it
            for v1_leaf, message in contract_v2.v1_messages(contract_v2.decode(payload)):
                validate(v1_leaf, message)
                self.sent.append(Sent(f"{prefix}/{v1_leaf}", json.dumps(message).encode(), mid))
            return mid
        validate(leaf, json.loads(payload))
        if retain:
            self.retained[topic] = payload
        self.sent.append(Sent(topic, payload, mid))
        return mid


class LoopbackLink(RecordingLink):
    """An in-memory broker session for the whole agent (`Agent(link_factory=...)`).

    Built like `MqttLink` and tells the agent what a broker would: `Connected` on
    start, an `Acked` for every publish, `Disconnected` when the test takes the
    link down, `Connected` with a new generation when it brings it back.
    """

    def __init__(
        self,
        cfg: object,
        *,
        will: Any,
        subscriptions: Sequence[str],
        on_event: Callable[[Any], None],
    ) -> None:
        super().__init__(allow_retain=True)
        self.will = will
        self.subscriptions = tuple(subscriptions)
        self._on_event = on_event
        self.generation = 0
        self.reconnects = 0
        self.last_error: str | None = None
        self.thread_alive = True
        self.closed = False

    @property
    def connected(self) -> bool:
        return self.online

    def start(self) -> None:
        self.up()

    def up(self) -> None:
        self.reconnects += self.generation > 0
        self.generation += 1
        self.connect()
        self._on_event(Connected(self.generation, None))

    def down(self) -> None:
        self.disconnect()
        self._on_event(Disconnected(self.generation, "test took the link down"))

    def close(self, timeout_s: float = 3.0) -> None:
        self.closed = True
        self.disconnect()

    def alive(self) -> bool:
        return self.thread_alive

    def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 1,
        retain: bool = False,
        content_type: str | None = None,
    ) -> int | None:
        mid = super().publish(topic, payload, qos=qos, retain=retain, content_type=content_type)
        if mid is not None:
            self._on_event(Acked(self.generation, mid))
        return mid

    def deliver(self, topic: str, payload: bytes) -> None:
        """A message from ops, as paho's thread would hand it over."""
        self._on_event(MessageIn(topic, payload, False))
