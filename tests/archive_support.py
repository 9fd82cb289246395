"""Real parts for the archive's tests: `bench-ops archive` as a process (the installed
console script), what the benches put on the wire (decoded by the product's own v2
decoder) and a lossy relay that removes chosen records on their way."""

from __future__ import annotations

import json
import subprocess
import threading
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from bench_agent.link import contract_v2
from tests.bridge_support import BENCH_OPS
from tests.support import LoggedProcess, wait_until

Key = tuple[str, str, int]  # (bench, seq_epoch, seq)


class ArchiveProcess(LoggedProcess):
    """`bench-ops archive` as a real process."""

    name = "archive"

    def __init__(
        self,
        port: int,
        workdir: Path,
        db: str,
        client_id: str = "archive-a",
        extra: Sequence[str] = (),
        *,
        argv: Sequence[str] | None = None,
    ) -> None:
        """`argv`: a whole command line instead (a unit's ExecStart)."""
        self.client_id = client_id
        log_path = workdir / f"{client_id}.log"
        self.starts = log_path.read_text().count("subscribed:") if log_path.exists() else 0
        command = list(argv) if argv is not None else [
            str(BENCH_OPS), "archive", "--host", "127.0.0.1", "--port", str(port),
            "--client-id", client_id, "--db", db, "--status-interval", "1", *extra,
        ]  # fmt: skip
        super().__init__(command, log_path)

    def wait_subscribed(self, timeout_s: float = 20) -> None:
        wait_until(
            lambda: self.log.count("subscribed:") > self.starts or self.proc.poll() is not None,
            timeout_s,
            f"{self.client_id} subscribed",
        )
        assert self.proc.poll() is None, self.log


def batch_keys(bench: str, payload: bytes) -> list[Key]:
    batch = contract_v2.decode(payload)
    return [(bench, r["seq_epoch"], r["seq"]) for _, r in batch.records if "seq" in r]


class _Client:
    """A paho MQTT 5 client connected to the test's broker (persistent when named)."""

    def __init__(self, port: int, on_message: Callable[[paho.MQTTMessage], None]) -> None:
        self.client = paho.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=f"test-{uuid.uuid4().hex[:10]}",
            protocol=paho.MQTTv5,
        )
        self._subscribed = threading.Event()
        self.client.on_subscribe = lambda *_a: self._subscribed.set()
        self.client.on_message = lambda _c, _u, msg: on_message(msg)
        self.port = port

    def start(self, topic: str) -> None:
        self.client.on_connect = lambda c, *_a: c.subscribe(topic, qos=1)
        self.client.connect("127.0.0.1", self.port)
        self.client.loop_start()
        if not self._subscribed.wait(10):
            raise AssertionError(f"could not subscribe to {topic}")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class Wire(_Client):
    """Every record the benches put on `<prefix>/+/v2`, by key."""

    def __init__(self, port: int, prefix: str = "smartbench") -> None:
        super().__init__(port, self._on)
        self._lock = threading.Lock()
        self._keys: set[Key] = set()
        self.start(f"{prefix}/+/v2")

    def _on(self, msg: paho.MQTTMessage) -> None:
        bench = msg.topic.split("/")[-2]
        with self._lock:
            self._keys.update(batch_keys(bench, bytes(msg.payload)))

    def keys(self) -> set[Key]:
        with self._lock:
            return set(self._keys)


class LossyRelay(_Client):
    """Between the benches (`raw/<bench>/v2`) and the archive (`smartbench/<bench>/v2`):
    each batch decoded, the records `drop(bench, record)` picks removed, the rest
    encoded again with the product's encoder and passed on. `seen` and `dropped` are
    the keys of what came and of what it removed."""

    def __init__(self, port: int, drop: Callable[[str, dict[str, Any]], bool]) -> None:
        super().__init__(port, self._on)
        self.drop = drop
        self._lock = threading.Lock()
        self.seen: set[Key] = set()
        self.dropped: set[Key] = set()
        self.start("raw/+/v2")

    def _on(self, msg: paho.MQTTMessage) -> None:
        bench = msg.topic.split("/")[1]
        batch = contract_v2.decode(bytes(msg.payload))
        kept = []
        with self._lock:
            for kind, record in batch.records:
                key = (bench, str(record["seq_epoch"]), int(record["seq"]))  # type: ignore[call-overload]
                self.seen.add(key)
                if self.drop(bench, record):
                    self.dropped.add(key)
                else:
                    kept.append((kind, record))
        if kept:
            payload = contract_v2.encode(bench, kept, batch.dictionary_id)
            self.client.publish(f"smartbench/{bench}/v2", payload, qos=1)

    def keys(self) -> tuple[set[Key], set[Key]]:
        with self._lock:
            return set(self.seen), set(self.dropped)


def gaps_json(db: str, *extra: str) -> dict[str, Any]:
    done = subprocess.run(
        [str(BENCH_OPS), "gaps", "--db", db, "--json", *extra],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    report: dict[str, Any] = json.loads(done.stdout)
    return report
