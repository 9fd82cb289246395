"""Real parts for the bridge's tests: `bench-ops bridge` as a process (the installed
console script), a publisher of v2 batches, and a v1 consumer whose session survives
a broker restart."""

from __future__ import annotations

import gzip
import json
import sys
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from functools import cache
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from bench_agent.link import contract_v2
from tests.outbox_support import DurableRecorder, validate
from tests.support import REPO, LoggedProcess, wait_until

BENCH_OPS = Path(sys.executable).parent / "bench-ops"  # the console script, as installed
RECORDS = REPO / "bench" / "data" / "records-day-a.jsonl.gz"  # a simulated day, kind in each
PREFIX, V1_PREFIX = "smartbench", "smartbench-v1"
BENCH = "sim-bench-01"

Record = tuple[contract_v2.RecordKind, dict[str, Any]]
Key = tuple[str, str, int]


@cache
def _captured() -> tuple[str, ...]:
    return tuple(gzip.decompress(RECORDS.read_bytes()).decode().splitlines())


def captured_records() -> list[Record]:
    """The agent's own records of a simulated day (fresh copies), seq 1, 2, … in order."""
    out: list[Record] = []
    for line in _captured():
        record = json.loads(line)
        out.append((record.pop("kind"), record))
    return out


def batches(records: Sequence[Record], bench: str = BENCH, size: int = 5) -> list[bytes]:
    return [contract_v2.encode(bench, records[i : i + size]) for i in range(0, len(records), size)]


class BridgeProcess(LoggedProcess):
    """`bench-ops bridge` as a real process."""

    name = "bridge"

    def __init__(
        self,
        port: int,
        workdir: Path,
        client_id: str = "bridge-a",
        extra: Sequence[str] = (),
        argv: Sequence[str] | None = None,
    ) -> None:
        self.client_id = client_id
        command = list(argv) if argv is not None else [
            str(BENCH_OPS), "bridge", "--host", "127.0.0.1", "--port", str(port),
            "--client-id", client_id, "--status-interval", "1", *extra,
        ]  # fmt: skip
        super().__init__(command, workdir / f"{client_id}.log")


class V1Consumer(DurableRecorder):
    """A city consumer of the v1 prefix (Node-RED, Telegraf): a persistent session."""

    def __init__(self, port: int) -> None:
        super().__init__(port, f"{V1_PREFIX}/#")

    def bench_messages(self) -> list[tuple[str, dict[str, Any]]]:
        """(leaf, payload) of every message under a bench (not the bridges' own status)."""
        with self._lock:
            messages = list(self.messages)
        out = []
        for message in messages:
            _, bench, leaf = message.topic.split("/")
            if bench != "_bridge" and message.payload:
                out.append((leaf, message.json()))
        return out

    def arrivals(self) -> Counter[Key]:
        """How often each record (bench, seq_epoch, seq) arrived, telemetry and events."""
        found: Counter[Key] = Counter()
        for leaf, payload in self.bench_messages():
            if leaf == "telemetry":
                for record in payload["records"]:
                    found[(payload["bench"], record["seq_epoch"], record["seq"])] += 1
            elif leaf == "event":
                found[(payload["bench"], payload["seq_epoch"], payload["seq"])] += 1
        return found

    def seqs(self) -> set[int]:
        return {seq for _, _, seq in self.arrivals()}

    def validate_all(self) -> int:
        """Every bench message against its schema (telemetry, event, state, status)."""
        checked = 0
        for leaf, payload in self.bench_messages():
            validate(leaf, payload)
            checked += 1
        return checked

    def statuses(self, client_id: str) -> list[dict[str, Any]]:
        with self._lock:
            messages = list(self.messages)
        topic = f"{V1_PREFIX}/_bridge/{client_id}"
        return [m.json() for m in messages if m.topic == topic and m.payload]

    def wait_status(
        self,
        client_id: str,
        predicate: Callable[[dict[str, Any]], bool] = lambda s: bool(s["online"]),
        timeout_s: float = 20,
        after: int = 0,
    ) -> dict[str, Any]:
        """The first status of `client_id` (among those after index `after`) that matches."""

        def found() -> dict[str, Any] | None:
            return next((s for s in self.statuses(client_id)[after:] if predicate(s)), None)

        return dict(wait_until(found, timeout_s, f"a status of {client_id}"))

    def counters(self, client_id: str) -> dict[str, Any]:
        """The latest counters the bridge published."""
        status = self.statuses(client_id)[-1]
        return dict(status["counters"])


class Publisher:
    """A bench stand-in: v2 batches on `<prefix>/<bench>/v2`, QoS 1, each acknowledged."""

    def __init__(self, port: int) -> None:
        self.client = paho.Client(
            callback_api_version=CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5
        )
        self._connected = threading.Event()
        self.client.on_connect = lambda *_a: self._connected.set()
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        if not self._connected.wait(10):
            raise AssertionError("publisher could not connect")

    def publish(self, payload: bytes, bench: str = BENCH, leaf: str = "v2") -> None:
        info = self.client.publish(f"{PREFIX}/{bench}/{leaf}", payload, qos=1)
        info.wait_for_publish(10)
        assert info.is_published()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
