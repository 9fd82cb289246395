"""Real parts for the outbox tests: a mosquitto that keeps sessions across restarts,
a recorder whose session survives them, a link that swallows what the agent sends,
and schema checks of what the recorder received."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import uuid
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from tests.support import Broker, Message, Recorder

# Topic leaves whose payloads have a schema of the same name.
SCHEMA_LEAVES = ("telemetry", "event", "status", "state")


class DurableBroker(Broker):
    """A private mosquitto that saves its sessions and queued messages when stopped and
    loads them when started again, like a production broker with persistence.

    Without it a broker restart loses what was published before the recorder's
    reconnect, which would look like the agent losing data.
    """

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        store = workdir / "mosquitto-db"
        store.mkdir(exist_ok=True)
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\n"
            "allow_anonymous true\n"
            # As root mosquitto would switch to its own user, which cannot write here.
            "user root\n"
            "persistence true\n"
            f"persistence_location {store}/\n"
            # Unlimited: a recorder offline during a drain must not lose messages.
            "max_queued_messages 0\n"
        )


class DurableRecorder(Recorder):
    """A `Recorder` with a persistent session (MQTT 3.1.1, clean_session false): what
    is published while it is away (broker restarting) is queued for it by the broker."""

    def __init__(self, port: int, topic: str = "#", client_id: str | None = None) -> None:
        """`client_id`: the session to take up again (a new one by default)."""
        self.messages: list[Message] = []
        self.wire: list[Message] = []
        self._lock = threading.Lock()
        self.client_id = client_id or f"recorder-{uuid.uuid4().hex[:12]}"
        self.client = paho.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=paho.MQTTv311,
            clean_session=False,
        )
        self.client.reconnect_delay_set(min_delay=1, max_delay=1)
        self.client.on_message = self._on_message
        self._subscribed = threading.Event()
        self.client.on_subscribe = lambda *_args: self._subscribed.set()
        self.client.on_connect = lambda c, *_a: c.subscribe(topic, qos=1)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        if not self._subscribed.wait(10):
            raise AssertionError("recorder could not subscribe")


@cache
def _validator(name: str) -> jsonschema.Draft202012Validator:
    text = resources.files("bench_agent.schemas").joinpath(f"{name}.schema.json").read_text()
    return jsonschema.Draft202012Validator(
        json.loads(text), format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    )


def validate(schema: str, payload: Any) -> None:
    _validator(schema).validate(payload)


def validate_all(recorder: Recorder) -> int:
    """Validate every message received on a leaf that has a schema; returns how many."""
    checked = 0
    with recorder._lock:
        messages = list(recorder.messages)
    for message in messages:
        leaf = message.topic.rsplit("/", 1)[-1]
        if leaf in SCHEMA_LEAVES:
            validate(leaf, message.json())
            checked += 1
    return checked


class BlackHoleProxy:
    """A TCP forwarder in front of the broker that can swallow what the agent sends.

    While `swallow` is set, bytes from the agent are read and dropped: its PUBLISHes
    never reach the broker and no PUBACK comes back, yet its connection looks alive
    (a hung broker, a link that blackholes). `cut()` then closes every connection.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.swallow = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)  # so that close() is seen
        self.port = int(self._listener.getsockname()[1])
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._closing.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return  # closed
            client.settimeout(None)
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._sockets += [client, upstream]
            for src, dst, may_swallow in ((client, upstream, True), (upstream, client, False)):
                threading.Thread(
                    target=self._forward, args=(src, dst, may_swallow), daemon=True
                ).start()

    def _forward(self, src: socket.socket, dst: socket.socket, may_swallow: bool) -> None:
        try:
            while data := src.recv(65536):
                if not (may_swallow and self.swallow.is_set()):
                    dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        """Close every connection through the proxy (new ones are still accepted)."""
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def close(self) -> None:
        self._closing.set()
        self._thread.join(5)
        self._listener.close()
        self.cut()
