"""Benches' command side for `bench-ops send` tests: the real CommandProcessor behind a
paho client that takes `<prefix>/<bench>/cmd` and answers on `cmd/reply`, with the
bench's retained status (made by the agent's own `status_message`) so a glob finds it."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from bench_agent.clock import iso_utc
from bench_agent.link.payloads import status_message
from bench_agent.remote.processor import CommandProcessor
from bench_agent.remote.signing import load_trusted_keys


class FakeControl:
    """The agent's side of a command: records what it was asked, changes nothing."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def state(self) -> dict[str, Any]:
        return {"v": 1}

    def set_override(
        self, output: str, state: bool | None, duration_s: float | None, source: str
    ) -> str | None:
        self.calls.append(("set_override", output, state, duration_s, source))
        return None

    def reset_fault(self, name: str | None) -> list[str]:
        return []

    def rebirth(self) -> None:
        self.calls.append(("rebirth",))

    def outputs(self) -> list[str]:
        return ["usb1", "usb2", "wifi"]


def processor_for(
    bench: str,
    trusted: Path,
    workdir: Path,
    control: FakeControl,
    on_event: Callable[[dict[str, Any]], None] | None = None,
) -> CommandProcessor:
    """The real CommandProcessor of bench `bench`, trusting the key file(s) `trusted`."""
    return CommandProcessor(
        control,
        bench_id=bench,
        trusted_keys=load_trusted_keys(trusted),
        allow_unsigned=False,
        replay_store_path=workdir / f"replay-{bench}.jsonl",
        clock_synced=lambda: True,
        wall_now=lambda: datetime.now(UTC),
        on_event=on_event,
    )


def status_payload(bench: str, online: bool) -> bytes:
    """The bench's retained status, as the agent makes it."""
    now = iso_utc(datetime.now(UTC))
    return status_message(bench, online=online, boot_id="b", ts=now, version="test")


@dataclass
class CommandLog:
    """When each command came in and each reply went out, at every responder (one clock)."""

    entries: list[tuple[float, str, str]] = field(default_factory=list)  # (t, in|out, bench)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, kind: str, bench: str) -> None:
        with self.lock:
            self.entries.append((time.monotonic(), kind, bench))

    def most_at_once(self) -> int:
        """The most commands a bench had received and not yet answered, all benches summed."""
        busy = peak = 0
        for _t, kind, _bench in sorted(self.entries):
            busy += 1 if kind == "in" else -1
            peak = max(peak, busy)
        return peak


class Responder:
    """A bench's command side in miniature: retained status, cmd in, CommandProcessor,
    cmd/reply out (`delay_s` later, as a slow link would). `client`: one made by the
    caller (TLS, a certificate), not yet connected; else a plain one to 127.0.0.1."""

    def __init__(
        self,
        port: int,
        processor: CommandProcessor,
        *,
        prefix: str = "smartbench",
        delay_s: float = 0.0,
        log: CommandLog | None = None,
        status: bool | None = True,
        client: paho.Client | None = None,
    ) -> None:
        self.processor = processor
        self.bench = processor.bench_id
        self.topic = f"{prefix}/{self.bench}/cmd"
        self.status_topic = f"{prefix}/{self.bench}/status"
        self.delay_s = delay_s
        self.log = log
        self.received: list[bytes] = []
        self.client = client or paho.Client(callback_api_version=CallbackAPIVersion.VERSION2)
        subscribed = threading.Event()
        self.client.on_connect = lambda c, *_a: c.subscribe(self.topic, qos=1)
        self.client.on_subscribe = lambda *_a: subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        if not subscribed.wait(10):
            raise AssertionError(f"responder {self.bench} could not subscribe")
        self.status = status
        if status is not None:
            self.client.publish(
                self.status_topic, status_payload(self.bench, status), qos=1, retain=True
            ).wait_for_publish(10)

    def _on_message(self, client: paho.Client, _u: Any, msg: paho.MQTTMessage) -> None:
        if self.log is not None:
            self.log.add("in", self.bench)
        self.received.append(bytes(msg.payload))
        reply = self.processor.handle_mqtt(bytes(msg.payload), retained=bool(msg.retain))
        if reply is None:
            return

        def answer() -> None:
            if self.log is not None:
                self.log.add("out", self.bench)
            client.publish(self.topic + "/reply", reply, qos=1)

        if self.delay_s:
            threading.Timer(self.delay_s, answer).start()
        else:
            answer()

    def close(self) -> None:
        if self.status is not None:  # the broker may outlive the test: clear what we left
            self.client.publish(self.status_topic, b"", qos=1, retain=True).wait_for_publish(5)
        self.client.disconnect()
        self.client.loop_stop()
