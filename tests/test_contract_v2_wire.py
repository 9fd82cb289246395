"""Contract 2 on a real broker: the agent's own batches say what they are (MQTT 5
content type), decode to valid v1 records, and encode back to the same bytes."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from bench_agent.link import contract_v2
from tests.outbox_support import validate
from tests.support import AgentProcess, Broker, sim_config, wait_until

pytestmark = pytest.mark.integration


class V2Subscriber:
    def __init__(self, port: int) -> None:
        self.got: list[tuple[bytes, str | None]] = []
        self._lock = threading.Lock()
        self.client = paho.Client(
            callback_api_version=CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5
        )
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *_a: subscribed.set()
        self.client.on_connect = lambda c, *_a: c.subscribe("smartbench/+/v2", qos=1)
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert subscribed.wait(10)

    def _on_message(self, _c: Any, _u: Any, msg: paho.MQTTMessage) -> None:
        content_type = getattr(msg.properties, "ContentType", None)
        with self._lock:
            self.got.append((bytes(msg.payload), content_type))

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def test_the_agents_batches_carry_their_content_type_and_round_trip_exactly(
    tmp_path: Path,
) -> None:
    broker = Broker(tmp_path).start()
    subscriber = V2Subscriber(broker.port)
    config = sim_config(
        tmp_path,
        broker.port,
        {
            "mqtt": {"telemetry_batch_s": 120},  # agent seconds: a batch every 0.5 s
            "sampling": {"publish_interval_s": 30},
            "commands": {"trusted_keys": str(tmp_path / "keys")},
        },
    )
    agent = AgentProcess(config, tmp_path)
    try:
        wait_until(lambda: len(subscriber.got) >= 5, 30, "five v2 batches")
        assert agent.stop() == 0
    finally:
        agent.kill()
        subscriber.close()
        broker.stop()
    records = 0
    for payload, content_type in subscriber.got:
        assert content_type == contract_v2.CONTENT_TYPE
        batch = contract_v2.decode(payload)
        assert batch.bench == "sim-bench-01"
        # Lossless: the decoded records make the very same bytes again.
        assert contract_v2.encode(batch.bench, batch.records, batch.dictionary_id) == payload
        for leaf, message in contract_v2.v1_messages(batch):
            validate(leaf, message)
        records += len(batch.records)
    assert records > len(subscriber.got)  # batches, not one record each
