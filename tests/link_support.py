"""Stand-ins for the MQTT link where no broker is needed (publisher, recorder, state).

`RecordingLink` stands in for `MqttLink`: it hands out message ids like a paho
client (a new connection is a new client, so ids start again at 1), keeps
every publish, and checks every payload against the contract's JSON Schemas.
The real link with a real broker is in the integration tests.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from tests.outbox_support import validate


@dataclass(frozen=True)
class Sent:
    topic: str
    payload: bytes
    mid: int

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
        self.sent: list[Sent] = []
        self.retained: dict[str, bytes] = {}
        self.allow_retain = allow_retain
        self.online = False
        self._next_mid = 1

    def connect(self) -> None:
        self.online = True
        self._next_mid = 1  # a new paho client numbers its messages from 1 again

    def disconnect(self) -> None:
        self.online = False

    def publish(
        self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False
    ) -> int | None:
        assert qos == 1 and (self.allow_retain or not retain)
        if not self.online:
            return None
        validate(topic.rsplit("/", 1)[-1], json.loads(payload))
        if retain:
            self.retained[topic] = payload
        mid = self._next_mid
        self._next_mid += 1
        self.sent.append(Sent(topic, payload, mid))
        return mid
