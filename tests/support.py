"""Real parts for the integration tests: a private mosquitto, an MQTT recorder, the agent."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from bench_agent.link import contract_v2

REPO = Path(__file__).resolve().parent.parent
SIM_CONFIG = REPO / "config" / "sim-bench.toml"
# Real Victron serial captures (MIT, see the LICENSE beside them): test data of the checkout.
VEDIRECT_CAPTURES = REPO / "tests" / "data" / "vedirect"


# The smallest valid configuration: what config tests add their one table to.
MINIMAL_CONFIG = """
[bench]
id = "b1"
[hardware]
backend = "pi"
[sampling]
[mqtt]
host = "broker"
[storage]
dir = "/tmp/x"
[control]
"""


def free_port() -> int:
    """A loopback port nobody listens on now (the kernel picks it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def small_tmpfs(where: Path, size: str) -> Iterator[Path]:
    """A real tmpfs of `size` (e.g. "2m") mounted at `where` for a full-disk test; the
    test is skipped where one cannot be mounted (not root, no mount permission)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    where.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(where)],
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {done.stderr.decode().strip()}")
    try:
        yield where
    finally:
        if subprocess.run(["umount", str(where)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(where)], check=False)


def wait_until(predicate: Callable[[], Any], timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.02)


class Broker:
    """A private mosquitto on a free loopback port; stop/start keep the port."""

    def __init__(self, workdir: Path) -> None:
        if shutil.which("mosquitto") is None:
            raise RuntimeError("mosquitto is not installed (make test installs it)")
        self.port = free_port()
        self.conf = workdir / "mosquitto.conf"
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
        )
        self.log = workdir / "mosquitto.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Broker:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                ["mosquitto", "-c", str(self.conf)], stdout=log, stderr=subprocess.STDOUT
            )
        wait_until(self._listening, 10, f"mosquitto on port {self.port}")
        return self

    def _listening(self) -> bool:
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
        except OSError:
            return False
        return True

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


@dataclass(frozen=True)
class Message:
    topic: str
    payload: bytes
    retain: bool
    received_mono: float
    # A v1 message decoded from a contract-v2 batch: the batch as it came on the wire.
    wire: Message | None = None

    def json(self) -> Any:
        return json.loads(self.payload)


def as_v1(message: Message) -> list[Message]:
    """What a v1 consumer sees of `message`: a v2 batch becomes the v1 telemetry and
    event messages `bench-ops bridge` would republish (same topic prefix); anything
    else is itself. The product's own decoder, so a test of the agent on contract 2
    reads what ops read."""
    prefix, _, leaf = message.topic.rpartition("/")
    if leaf != contract_v2.LEAF:
        return [message]
    batch = contract_v2.decode(message.payload)
    return [
        Message(
            f"{prefix}/{v1_leaf}",
            json.dumps(payload, separators=(",", ":")).encode(),
            message.retain,
            message.received_mono,
            wire=message,
        )
        for v1_leaf, payload in contract_v2.v1_messages(batch)
    ]


class Recorder:
    """Subscribes to everything under a prefix and keeps every message (ops' view)."""

    def __init__(self, port: int, topic: str = "#") -> None:
        self.messages: list[Message] = []  # as a v1 consumer sees them (see as_v1)
        self.wire: list[Message] = []  # as they came
        self._lock = threading.Lock()
        self.client = paho.Client(
            callback_api_version=CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5
        )
        self.client.on_message = self._on_message
        self._subscribed = threading.Event()
        self.client.on_subscribe = lambda *_args: self._subscribed.set()
        self.client.on_connect = lambda c, *_a: c.subscribe(topic, qos=1)
        # Back within 0.2 s of a broker restart, before the agent (its backoff starts at
        # 0.5 s): a test that flaps the broker must not miss what the agent sends next.
        self.client.reconnect_delay_set(min_delay=0.05, max_delay=0.2)  # type: ignore[arg-type]  # paho sleeps for a float; its annotation says int
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        if not self._subscribed.wait(10):
            raise AssertionError("recorder could not subscribe")

    def _on_message(self, _client: Any, _userdata: Any, msg: paho.MQTTMessage) -> None:
        received = Message(msg.topic, bytes(msg.payload), bool(msg.retain), time.monotonic())
        with self._lock:
            self.wire.append(received)
            self.messages.extend(as_v1(received))

    def on(self, leaf: str) -> list[Message]:
        with self._lock:
            return [m for m in self.messages if m.topic.endswith("/" + leaf)]

    def wait_for(
        self, leaf: str, predicate: Callable[[Any], bool] = lambda _p: True, timeout_s: float = 20
    ) -> Any:
        def found() -> Any:
            for message in self.on(leaf):
                payload = message.json()
                if predicate(payload):
                    return payload
            return None

        return wait_until(found, timeout_s, f"a {leaf} message")

    def telemetry_records(self) -> list[dict[str, Any]]:
        return [r for m in self.on("telemetry") for r in m.json()["records"]]

    def all_seqs(self) -> set[int]:
        """Every seq received, telemetry records and events together."""
        seqs = {r["seq"] for r in self.telemetry_records()}
        return seqs | {m.json()["seq"] for m in self.on("event")}

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(type(value))


def dump_toml(data: Mapping[str, Any], prefix: str = "") -> str:
    """Enough TOML writing for test configs (tables of scalars, nested tables)."""
    lines: list[str] = []
    scalars = {k: v for k, v in data.items() if not isinstance(v, dict)}
    tables = {k: v for k, v in data.items() if isinstance(v, dict)}
    if prefix and scalars:
        lines.append(f"[{prefix}]")
    lines += [f"{k} = {_toml_value(v)}" for k, v in scalars.items()]
    for key, table in tables.items():
        lines.append(dump_toml(table, f"{prefix}.{key}" if prefix else key))
    return "\n".join(lines) + "\n"


def _merge(base: dict[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    for key, value in changes.items():
        if value is None:
            base.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value
    return base


def sim_config(workdir: Path, broker_port: int, changes: Mapping[str, Any] | None = None) -> Path:
    """The demo's simulated bench, pointed at `broker_port` and `workdir`; `changes` merged in
    (a None value removes a key)."""
    data = tomllib.loads(SIM_CONFIG.read_text())
    data["mqtt"]["port"] = broker_port
    data["storage"]["dir"] = str(workdir / "state")
    data["control"]["socket"] = str(workdir / "control.sock")
    data["charger"]["port"] = str(workdir / "ttyVE")
    # Tests are about the agent, not the demo's script of the day; and a test that
    # stops the broker should not see the access point power-cycled unless it asks.
    data["sim"].pop("scenario", None)
    data.pop("uplink", None)
    _merge(data, changes or {})
    path = workdir / "bench.toml"
    path.write_text(dump_toml(data))
    return path


# The simulated bench sped up: a telemetry record every 25 ms of real time, a v2 batch
# every 300 simulated s (125 ms), quick reconnects.
FAST_AGENT: dict[str, Any] = {
    "sim": {"speed": 2400},
    "sampling": {"sample_interval_s": 30, "publish_interval_s": 60},
    "mqtt": {"reconnect_min_s": 0.2, "reconnect_max_s": 1.0, "telemetry_batch_s": 300},
}


class LoggedProcess:
    """A real process, its stdout and stderr appended to `log_path`; `kill()` is kill -9;
    always reaped by `stop()`/`kill()`. `name` says which in a failed stop."""

    name = "process"

    def __init__(
        self, command: Sequence[str], log_path: Path, extra_env: Mapping[str, str] | None = None
    ) -> None:
        self.log_path = log_path
        # Where this process's lines start: a test's agents append to one log.
        self._log_start = self.log_path.stat().st_size if self.log_path.exists() else 0
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **(extra_env or {})}
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                list(command), stdout=log, stderr=subprocess.STDOUT, env=env
            )

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()

    def stop(self, timeout_s: float = 10) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()
                raise AssertionError(f"{self.name} did not stop on SIGTERM:\n{self.log}") from None
        return int(self.proc.returncode)


class AgentProcess(LoggedProcess):
    """`bench-agent run` as a real process."""

    name = "agent"

    def __init__(
        self, config: Path, workdir: Path, extra_env: Mapping[str, str] | None = None
    ) -> None:
        self.config = config
        command = [sys.executable, "-m", "bench_agent", "-c", str(config), "run"]
        super().__init__(command, workdir / "agent.log", extra_env)

    def running(self) -> bool:
        """Whether it said it runs (config read, outbox open, its loop next). Its start
        (interpreter, imports) takes 0.2 s on a quiet machine and 1-2 s when every core
        is busy: a test that lets it work for a while counts from here, not from the fork."""
        with self.log_path.open("rb") as log:
            log.seek(self._log_start)
            return b" running (" in log.read()

    def wait_running(self, timeout_s: float = 30) -> None:
        wait_until(self.running, timeout_s, "the agent running")

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout_s: float) -> int:
        return self.proc.wait(timeout_s)


def technician_status(socket_path: Path) -> dict[str, Any] | None:
    """`bench-agent --socket PATH status --json`, as a technician runs it; None until
    the daemon answers."""
    command = ["-m", "bench_agent", "--socket", str(socket_path), "status", "--json"]
    done = subprocess.run(
        [sys.executable, *command], capture_output=True, text=True, check=False, timeout=60
    )
    if done.returncode != 0:
        return None
    status: dict[str, Any] = json.loads(done.stdout)
    return status
