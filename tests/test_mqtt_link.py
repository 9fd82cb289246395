"""The MQTT link against a real mosquitto on a free loopback port: the session's
events, QoS 1 acks, commands in, the broker going away and coming back, the Will.
"""

from __future__ import annotations

import queue
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from bench_agent.config import MqttConfig
from bench_agent.config_loader import load_config
from bench_agent.link.mqtt import (
    Acked,
    Connected,
    Disconnected,
    LinkEvent,
    MessageIn,
    MqttLink,
    SetupFailed,
    Will,
)
from tests.support import Broker, Recorder, sim_config, wait_until

pytestmark = pytest.mark.integration


def mqtt_config(tmp_path: Path, port: int, **changes: object) -> MqttConfig:
    cfg = load_config(sim_config(tmp_path, port)).mqtt
    return replace(cfg, reconnect_min_s=0.1, reconnect_max_s=0.5, **changes)  # type: ignore[arg-type]


class Events:
    def __init__(self) -> None:
        self.queue: queue.SimpleQueue[LinkEvent] = queue.SimpleQueue()

    def next(self, kind: type, timeout_s: float = 10.0) -> LinkEvent:
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            try:
                event = self.queue.get(timeout=left)
            except queue.Empty:
                break
            if isinstance(event, kind):
                return event
        raise AssertionError(f"no {kind.__name__} in {timeout_s} s")


@pytest.fixture
def link_parts(tmp_path: Path, broker: Broker) -> Iterator[tuple[MqttLink, Events, MqttConfig]]:
    cfg = mqtt_config(tmp_path, broker.port)
    events = Events()
    link = MqttLink(
        cfg,
        will=Will("smartbench/t/status", b'{"online":false}'),
        subscriptions=["smartbench/t/cmd"],
        on_event=events.queue.put,
    )
    link.start()
    try:
        yield link, events, cfg
    finally:
        link.close()


def test_connects_publishes_with_acks_and_receives_commands(
    link_parts: tuple[MqttLink, Events, MqttConfig], broker: Broker
) -> None:
    link, events, _ = link_parts
    connected = events.next(Connected)
    assert isinstance(connected, Connected) and connected.generation == 1
    assert link.connected and link.alive()
    recorder = Recorder(broker.port, "smartbench/t/#")
    try:
        mid = link.publish("smartbench/t/event", b'{"type":"tamper"}')
        assert mid is not None
        acked = events.next(Acked)
        assert isinstance(acked, Acked) and (acked.generation, acked.mid) == (1, mid)
        recorder.wait_for("event", lambda p: p == {"type": "tamper"})
        recorder.client.publish("smartbench/t/cmd", b'{"id":"x"}', qos=1)
        incoming = events.next(MessageIn)
        assert isinstance(incoming, MessageIn)
        assert (incoming.topic, incoming.payload) == ("smartbench/t/cmd", b'{"id":"x"}')
    finally:
        recorder.client.disconnect()
        recorder.client.loop_stop()


def test_the_broker_going_away_and_coming_back(
    link_parts: tuple[MqttLink, Events, MqttConfig], broker: Broker
) -> None:
    link, events, _ = link_parts
    events.next(Connected)
    broker.stop()
    gone = events.next(Disconnected)
    assert isinstance(gone, Disconnected) and gone.generation == 1
    assert link.publish("smartbench/t/event", b"{}") is None  # refused while down
    wait_until(lambda: link.last_error is not None, 10, "the connect error")
    broker.start()
    back = events.next(Connected, 20)
    assert isinstance(back, Connected) and back.generation == 2
    assert link.reconnects == 1 and link.last_error is None


def test_the_will_is_published_when_the_bench_vanishes(tmp_path: Path, broker: Broker) -> None:
    """A separate process holds the link, so it can be killed like a bench losing power."""
    recorder = Recorder(broker.port, "smartbench/t/#")
    script = f"""
import time
from dataclasses import replace
from bench_agent.config_loader import load_config
from bench_agent.link.mqtt import MqttLink, Will
cfg = load_config({str(sim_config(tmp_path, broker.port))!r}).mqtt
cfg = replace(cfg, keepalive_s=5)
link = MqttLink(cfg, will=Will("smartbench/t/status", b'{{"online":false}}'),
                subscriptions=[], on_event=lambda e: print(type(e).__name__, flush=True))
link.start()
time.sleep(60)
"""
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "Connected"
        proc.kill()
        proc.wait(10)
        # No DISCONNECT came: mosquitto sends the Will (at once here, the socket closed;
        # after 1.5 keepalives when a bench loses power and the socket just goes quiet).
        recorder.wait_for("status", lambda p: p == {"online": False}, 20)
    finally:
        proc.kill()
        proc.wait()
        recorder.client.disconnect()
        recorder.client.loop_stop()


def test_only_the_network_thread_writes_the_socket(
    link_parts: tuple[MqttLink, Events, MqttConfig],
) -> None:
    """publish() from the agent's thread only queues: two threads writing one TLS
    connection corrupt its records and the broker drops the bench."""
    link, events, _ = link_parts
    events.next(Connected)
    client = link._client
    assert client is not None
    writers: list[str] = []
    loop_write = client.loop_write

    def recorded_loop_write() -> Any:
        writers.append(threading.current_thread().name)
        return loop_write()

    client.loop_write = recorded_loop_write  # type: ignore[method-assign]
    mids = {link.publish("smartbench/t/telemetry", b"x" * 200) for _ in range(30)}
    assert None not in mids
    acked: set[int | None] = set()
    while acked != mids:
        event = events.next(Acked)
        assert isinstance(event, Acked)
        acked.add(event.mid)
    assert writers and set(writers) == {"mqtt"}, set(writers)


def test_close_says_goodbye_so_the_will_is_not_sent(
    link_parts: tuple[MqttLink, Events, MqttConfig], broker: Broker
) -> None:
    link, events, _ = link_parts
    events.next(Connected)
    recorder = Recorder(broker.port, "smartbench/t/#")
    try:
        link.close()
        assert not link.alive() or link._thread is None
        time.sleep(1.5)  # mosquitto sends a Will at once when a socket closes unannounced
        assert recorder.on("status") == []
    finally:
        recorder.close()


def test_a_missing_tls_file_is_the_benchs_own_setup_fault(tmp_path: Path, broker: Broker) -> None:
    cfg = mqtt_config(tmp_path, broker.port, tls=True, ca_file=tmp_path / "missing-ca.crt")
    events = Events()
    link = MqttLink(
        cfg, will=Will("smartbench/t/status", b"{}"), subscriptions=[], on_event=events.queue.put
    )
    link.start()
    try:
        failed = events.next(SetupFailed)
        assert isinstance(failed, SetupFailed) and failed.detail is not None
        assert "missing-ca.crt" in failed.detail
        assert link.alive()  # the thread keeps trying; it never dies of it
    finally:
        link.close()
