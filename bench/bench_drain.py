"""Draining a backlog after an outage: our outbox + publisher vs plain paho, same run.

    .venv/bin/python bench/bench_drain.py [--records N] [--live-ms MS] [--dir DIR] [--json FILE]
    .venv/bin/python bench/bench_drain.py --quick

N telemetry records (default 20,000, shaped like `Agent._record_telemetry`'s:
5 channels x [min, avg, max] of V/A/W, Wh, outputs, battery, health; ~1 kB a
message) wait in an outbox when a private mosquitto on a free loopback port
appears. Each approach gets its own broker and a subscriber in its own process
(as ops' would be) that counts every seq.

* outbox: `Outbox` + `Publisher` + `MqttLink`, driven the way the agent's main
  loop drives them (link events through a queue -> on_acked / on_connected /
  on_disconnected, then `pump()`), with the agent's defaults (64 KiB messages,
  4 in flight). Every ack deletes from SQLite, as in the agent.
* paho: plain paho-mqtt 2.x, one QoS-1 message per record, default
  `max_inflight_messages` (20), the whole backlog handed to `publish()` at once
  (paho's queue is in memory). Favoured: the records are read from the outbox
  before the clock starts and nothing is deleted on PUBACK.

While the backlog drains, a live record is recorded every MS ms (default 100):
ours goes through `outbox.put` and `publisher.send_live` as the agent does;
the naive agent publishes it on the same client, behind what is queued. Its
latency is from recording to the subscriber receiving it (CLOCK_MONOTONIC is
shared by the processes). The figures:

* records/s: N / (connected -> last backlog record PUBACKed); also to the moment
  the subscriber holds every seq.
* bytes per record: MQTT payload bytes (at the subscriber) and the TCP payload
  bytes of the publisher's connection, both directions (kernel counters, `ss`).
* live latency mid-drain: p95 and max. Targets: ours >= 2x paho's records/s;
  live within 2 s mid-drain.

Exits 1 when a subscriber misses a seq (duplicates are counted, not failures).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import queue
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt import __version__ as PAHO_VERSION
from paho.mqtt.enums import CallbackAPIVersion

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench import tcp_counters  # noqa: E402
from bench_agent.clock import iso_utc, read_boot_id  # noqa: E402
from bench_agent.config import MqttConfig  # noqa: E402
from bench_agent.link import payloads  # noqa: E402
from bench_agent.link.mqtt import Acked, Connected, Disconnected, LinkEvent, MqttLink, Will  # noqa: E402
from bench_agent.link.outbox import Outbox, OutboxItem  # noqa: E402
from bench_agent.link.publisher import Publisher  # noqa: E402
from tests.support import Broker  # noqa: E402

BENCH_ID = "bench-drain-01"
PREFIX = "smartbench"
TELEMETRY_TOPIC = f"{PREFIX}/{BENCH_ID}/telemetry"
MAX_PAYLOAD_BYTES = 64 * 1024  # the agent's default [storage] max_payload_bytes
OUTAGE_BOOT = "0b5e3c1a-7d2f-4e8b-9a6c-1f2e3d4c5b6a"  # the boot that recorded the backlog
CHANNELS = {  # name: (volts, max amps) on the reference bench
    "solar": (18.6, 5.5),
    "battery": (13.2, 4.0),
    "usb1": (5.1, 2.1),
    "usb2": (5.1, 2.1),
    "wifi": (13.2, 0.6),
}
PAHO_MAX_MIDS = 60_000  # paho's message ids wrap at 65,535; we tell acks apart by id
LIVE_TARGET_S = 2.0
RATIO_TARGET = 2.0


# -- records -------------------------------------------------------------------


def telemetry_body(rng: random.Random, minute: int, depth: int) -> dict[str, Any]:
    """One 60 s record as `Agent._record_telemetry` builds it (no charge controller,
    as on the reference bench), at `minute` of a simulated day."""
    hour = (minute / 60) % 24
    sun = max(0.0, math.sin(math.pi * (hour - 6) / 12)) * rng.uniform(0.6, 1.0)

    def triple(centre: float, spread: float, digits: int) -> list[float]:
        low, high = centre - rng.uniform(0, spread), centre + rng.uniform(0, spread)
        return [round(max(low, 0.0), digits), round(centre, digits), round(high, digits)]

    channels = {}
    for name, (volts, max_amps) in CHANNELS.items():
        share = sun if name == "solar" else rng.uniform(0.0, 1.0) if name != "wifi" else 0.75
        amps = max_amps * share
        channels[name] = {
            "v": triple(volts * (0.9 + 0.1 * share), 0.05, 3),
            "a": triple(amps, amps * 0.1, 4),
            "w": triple(volts * amps, volts * amps * 0.1, 3),
            "wh": round(volts * amps / 60, 4),
            "n": 60,
            "fault": None,
        }
    return {
        "interval_s": 60.0,
        "channels": channels,
        "outputs": {"usb1": True, "usb2": rng.random() < 0.8, "wifi": True},
        "battery": {
            "soc_pct": round(rng.uniform(35, 95), 1),
            "source": "coulomb",
            "confidence": round(rng.uniform(0.5, 1.0), 2),
        },
        "tamper_open": False,
        "cpu_temp_c": round(rng.uniform(38, 61), 1),
        "charger": None,
        "faults": [],
        "health": {
            "reconnects": 3,
            "sensor_errors": 0,
            "storage_errors": 0,
            "outbox_depth": depth,
            "outbox_drops": 0,
        },
    }


def fill_outbox(outbox: Outbox, records: int) -> None:
    """The backlog of an outage: `records` minutes of telemetry, ending now."""
    rng = random.Random(20)
    start_epoch = time.time() - 60.0 * records
    for n in range(records):
        outbox.put(
            "telemetry",
            telemetry_body(rng, n, depth=n),
            boot_id=OUTAGE_BOOT,
            mono_s=600.0 + 60.0 * n,
            ts=iso_utc(start_epoch + 60.0 * n),
            time_quality="synced",
        )


# -- the subscriber (its own process) --------------------------------------------


@dataclass
class Tally:
    """What ops' subscriber received: every seq counted, live receipts timed."""

    last_seq: int  # seqs 1..last_seq are expected
    counts: dict[int, int] = field(default_factory=dict)
    live_received: dict[int, float] = field(default_factory=dict)  # seq -> first receipt, mono s
    messages: int = 0
    payload_bytes: int = 0
    unexpected: int = 0  # records with a seq outside 1..last_seq
    complete_mono: float | None = None  # when the last missing seq arrived

    def add(self, received_mono: float, payload: bytes) -> None:
        self.messages += 1
        self.payload_bytes += len(payload)
        for record in json.loads(payload)["records"]:
            seq = int(record["seq"])
            if not 1 <= seq <= self.last_seq:
                self.unexpected += 1
                continue
            self.counts[seq] = self.counts.get(seq, 0) + 1
            if not record.get("historical") and seq not in self.live_received:
                self.live_received[seq] = received_mono
        if self.complete_mono is None and self.complete:
            self.complete_mono = received_mono

    @property
    def complete(self) -> bool:
        return len(self.counts) == self.last_seq

    def summary(self) -> dict[str, Any]:
        missing = [s for s in range(1, self.last_seq + 1) if s not in self.counts]
        return {
            "messages": self.messages,
            "payload_bytes": self.payload_bytes,
            "records_received": sum(self.counts.values()),
            "distinct": len(self.counts),
            "missing": len(missing),
            "missing_first": missing[:10],
            "duplicates": sum(c - 1 for c in self.counts.values()),
            "unexpected": self.unexpected,
            "complete_mono": self.complete_mono,
            "live_received": {str(k): v for k, v in self.live_received.items()},
        }


def subscriber_main(port: int, timeout_s: float) -> int:
    """Subscribe, say "ready", read "expect LAST" on stdin, count until every seq of
    1..LAST is in (or `timeout_s`), then for a quiet spell (late duplicates); print JSON."""
    received: list[tuple[float, bytes]] = []
    subscribed = threading.Event()
    client = paho.Client(callback_api_version=CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    client.on_connect = lambda c, *_a: c.subscribe(TELEMETRY_TOPIC, qos=1)
    client.on_subscribe = lambda *_a: subscribed.set()
    # The callback only stores: parsing waits for the main thread, off the hot path.
    client.on_message = lambda _c, _u, m: received.append((time.monotonic(), bytes(m.payload)))
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        if not subscribed.wait(10):
            print("subscriber: no SUBACK", file=sys.stderr)
            return 2
        print("ready", flush=True)
        words = sys.stdin.readline().split()
        tally = Tally(last_seq=int(words[1]))
        done = 0
        deadline = time.monotonic() + timeout_s
        quiet_since = time.monotonic()
        while time.monotonic() < deadline:
            now_count = len(received)
            for received_mono, payload in received[done:now_count]:
                tally.add(received_mono, payload)
            if now_count != done:
                quiet_since = time.monotonic()
            done = now_count
            if tally.complete and time.monotonic() - quiet_since > 0.3:
                break
            time.sleep(0.02)
        print(json.dumps(tally.summary()), flush=True)
    finally:
        client.loop_stop()
        client.disconnect()
    return 0


class Subscriber:
    """The counting subscriber as a child process of this script."""

    def __init__(self, port: int, timeout_s: float) -> None:
        argv = [sys.executable, str(Path(__file__).resolve()), "--subscriber", str(port)]
        self.proc = subprocess.Popen(
            [*argv, "--subscriber-timeout", str(timeout_s)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        if line != "ready":
            self.close()
            raise RuntimeError(f"subscriber did not start (said {line!r})")

    def result(self, last_seq: int) -> dict[str, Any]:
        """Tell it the last seq; its `Tally.summary()` once every seq is in (or it gave up)."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(f"expect {last_seq}\n")
        self.proc.stdin.close()
        summary: dict[str, Any] = json.loads(self.proc.stdout.readline())
        self.proc.wait(10)
        return summary

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                stream.close()


# -- measuring -------------------------------------------------------------------


@dataclass
class Run:
    """One approach's drain, as measured by the publisher's side."""

    started_mono: float  # connected
    drained_mono: float  # the last backlog record PUBACKed
    messages: int
    live_recorded: dict[int, float]  # seq -> recorded at, mono s
    tcp_sent: int | None  # TCP payload bytes of the publisher's connection
    tcp_received: int | None


def tcp_bytes(port: int) -> tuple[int, int] | None:
    """(sent, received) by this process's connections to `port`, from the kernel."""
    return tcp_counters.tcp_bytes(port, os.getpid())


def mqtt_config(port: int) -> MqttConfig:
    return MqttConfig(
        host="127.0.0.1",
        port=port,
        topic_prefix=PREFIX,
        keepalive_s=60,
        protocol="5",
        client_id=f"bench-agent-{BENCH_ID}",
        ca_file=None,
        cert_file=None,
        key_file=None,
        tls=False,
        username=None,
        password=None,
        reconnect_min_s=0.2,
        reconnect_max_s=1.0,
    )


class BacklogWatch:
    """The outbox as the publisher sees it; notes when the last backlog seq is acked."""

    def __init__(self, outbox: Outbox, backlog_last_seq: int) -> None:
        self._outbox = outbox
        self._last = backlog_last_seq
        self._acked: set[int] = set()
        self.drained_mono: float | None = None

    def oldest(self, limit: int, max_bytes: int, exclude: Collection[int]) -> list[OutboxItem]:
        return self._outbox.oldest(limit, max_bytes, exclude)

    def ack(self, seqs: Collection[int]) -> None:
        self._outbox.ack(seqs)
        self._acked.update(s for s in seqs if s <= self._last)
        if self.drained_mono is None and len(self._acked) == self._last:
            self.drained_mono = time.monotonic()


def next_tick(due: float, now: float, every: float) -> float:
    """The next live tick after `due`, skipping missed ones as the agent's loop does
    (a stalled loop must not catch up with a burst)."""
    return due + every * max(1, int((now - due) // every) + 1)


def record_live(outbox: Outbox, rng: random.Random, minute: int) -> OutboxItem:
    """Record one live telemetry record as `Agent._record` does: outbox first."""
    body = telemetry_body(rng, minute, depth=0)
    boot, mono, ts = read_boot_id(), time.monotonic(), iso_utc(time.time())
    seq = outbox.put("telemetry", body, boot_id=boot, mono_s=mono, ts=ts, time_quality="synced")
    return OutboxItem.of(
        seq, "telemetry", body, boot_id=boot, mono_s=mono, ts=ts, time_quality="synced"
    )


def drain_with_outbox(outbox: Outbox, port: int, live_every_s: float, timeout_s: float) -> Run:
    """Our way: the agent's main loop, reduced to the link, the publisher and live records."""
    backlog = outbox.stats().last_seq
    store = BacklogWatch(outbox, backlog)
    inbox: queue.Queue[LinkEvent] = queue.Queue()
    cfg = mqtt_config(port)
    link = MqttLink(
        cfg,
        will=Will(f"{PREFIX}/{BENCH_ID}/status", b'{"online":false}'),
        subscriptions=[],
        on_event=inbox.put,
    )
    publisher = Publisher(
        store,
        link,
        bench_id=BENCH_ID,
        topic=lambda leaf: f"{PREFIX}/{BENCH_ID}/{leaf}",
        max_payload_bytes=MAX_PAYLOAD_BYTES,
    )
    rng = random.Random(21)
    live: dict[int, float] = {}
    started: float | None = None
    deadline = time.monotonic() + timeout_s
    link.start()
    try:
        next_live = math.inf
        while True:
            now = time.monotonic()
            if now > deadline:
                raise TimeoutError(f"outbox drain not done in {timeout_s} s")
            if store.drained_mono is None and now >= next_live:
                item = record_live(outbox, rng, len(live))
                live[item.seq] = item.mono_s
                publisher.send_live(item)
                next_live = next_tick(next_live, now, live_every_s)
            wait_s = 0.5 if store.drained_mono is not None else min(next_live - now, 0.5)
            try:
                event: LinkEvent | None = inbox.get(timeout=max(0.0, wait_s))
            except queue.Empty:
                event = None
            while event is not None:
                match event:
                    case Acked(generation, mid):
                        publisher.on_acked(generation, mid)
                    case Connected(generation):
                        publisher.on_connected(generation)
                        if started is None:
                            started = time.monotonic()
                            next_live = started + live_every_s
                    case Disconnected():
                        publisher.on_disconnected()
                try:
                    event = inbox.get_nowait()
                except queue.Empty:
                    event = None
            publisher.pump()
            if store.drained_mono is not None and publisher.inflight_messages == 0:
                break
        counters = tcp_bytes(port)
    finally:
        link.close()
    assert started is not None
    return Run(
        started_mono=started,
        drained_mono=store.drained_mono,
        messages=publisher.messages_sent,
        live_recorded=live,
        tcp_sent=counters[0] if counters else None,
        tcp_received=counters[1] if counters else None,
    )


def drain_with_paho(
    items: Sequence[OutboxItem], port: int, live_every_s: float, timeout_s: float
) -> Run:
    """The naive way: one QoS-1 message per record, everything queued in paho at once."""
    if len(items) > PAHO_MAX_MIDS:
        raise ValueError(f"the paho run tells acks apart by message id: at most {PAHO_MAX_MIDS}")
    acks: list[tuple[int, float]] = []  # (mid, PUBACK at), appended by paho's thread
    ack_arrived = threading.Event()
    connected = threading.Event()

    def on_publish(_c: paho.Client, _u: Any, mid: int, _rc: Any, _p: Any) -> None:
        acks.append((mid, time.monotonic()))
        ack_arrived.set()

    client = paho.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=f"naive-{BENCH_ID}",
        protocol=paho.MQTTv5,
    )
    client.on_publish = on_publish
    client.on_connect = lambda *_a: connected.set()
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        if not connected.wait(10):
            raise TimeoutError("paho did not connect")
        started = time.monotonic()
        deadline = started + timeout_s
        rng = random.Random(21)
        next_seq = items[-1].seq + 1
        backlog_mids: set[int] = set()
        live: dict[int, float] = {}
        live_mids: set[int] = set()
        next_live = started + live_every_s
        backlog_acked = 0
        drained: float | None = None
        seen = 0

        def live_tick() -> None:
            nonlocal next_live, next_seq
            body = telemetry_body(rng, len(live), depth=0)
            mono, ts = time.monotonic(), iso_utc(time.time())
            item = OutboxItem.of(
                next_seq,
                "telemetry",
                body,
                boot_id=read_boot_id(),
                mono_s=mono,
                ts=ts,
                time_quality="synced",
            )
            payload = payloads.telemetry_message(BENCH_ID, [item], historical=False)
            live_mids.add(client.publish(TELEMETRY_TOPIC, payload, qos=1).mid)
            live[next_seq] = mono
            next_seq += 1
            next_live = next_tick(next_live, mono, live_every_s)

        for item in items:
            payload = payloads.telemetry_message(BENCH_ID, [item], historical=True)
            backlog_mids.add(client.publish(TELEMETRY_TOPIC, payload, qos=1).mid)
            if time.monotonic() >= next_live:
                live_tick()
        while True:
            ack_arrived.clear()  # before reading: a later ack sets it again
            # Acks are read here, after publish() returned each mid, so every acked
            # mid is already known as backlog or live.
            arrived = len(acks)  # paho's thread may append while we read
            for mid, at in acks[seen:arrived]:
                if mid in backlog_mids:
                    backlog_acked += 1
                    if backlog_acked == len(items):
                        drained = at
            seen = arrived
            if drained is not None and seen == len(backlog_mids) + len(live_mids):
                break
            now = time.monotonic()
            if now > deadline:
                raise TimeoutError(
                    f"paho drain not done in {timeout_s} s: {len(acks)} of "
                    f"{len(backlog_mids) + len(live_mids)} messages acknowledged"
                )
            if drained is None and now >= next_live:
                live_tick()
                continue
            ack_arrived.wait(0.5 if drained is not None else max(0.0, min(next_live - now, 0.5)))
        counters = tcp_bytes(port)
    finally:
        client.disconnect()
        client.loop_stop()
    return Run(
        started_mono=started,
        drained_mono=drained,
        messages=len(backlog_mids) + len(live_mids),
        live_recorded=live,
        tcp_sent=counters[0] if counters else None,
        tcp_received=counters[1] if counters else None,
    )


@contextmanager
def broker_and_subscriber(workdir: Path, timeout_s: float) -> Iterator[tuple[Broker, Subscriber]]:
    workdir.mkdir(parents=True, exist_ok=True)
    broker = Broker(workdir)
    # Unbounded queues towards the subscriber: the broker must not drop what the
    # naive run pours in faster than the subscriber reads (default: 1000 queued).
    broker.conf.write_text(broker.conf.read_text() + "max_queued_messages 0\n")
    broker.start()
    subscriber: Subscriber | None = None
    try:
        subscriber = Subscriber(broker.port, timeout_s)
        yield broker, subscriber
    finally:
        if subscriber is not None:
            subscriber.close()
        broker.stop()


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def live_figures(recorded: int, latencies: Sequence[float]) -> dict[str, Any]:
    return {
        "recorded": recorded,
        "received": len(latencies),
        "p95_s": round(percentile(latencies, 0.95), 4) if latencies else None,
        "max_s": round(max(latencies), 4) if latencies else None,
        "latencies_s": [round(x, 4) for x in latencies],
    }


def combine(rounds: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The median round by records/s; live latency, losses and duplicates over every round."""
    ordered = sorted(rounds, key=lambda f: float(f["records_per_s"]))
    result = dict(ordered[(len(ordered) - 1) // 2])
    result["rounds_records_per_s"] = [f["records_per_s"] for f in rounds]
    result["live"] = live_figures(
        sum(f["live"]["recorded"] for f in rounds),
        [x for f in rounds for x in f["live"]["latencies_s"]],
    )
    for key in ("expected_records", "distinct_received", "missing", "duplicates", "unexpected"):
        result[key] = sum(f[key] for f in rounds)
    result["missing_first"] = next((f["missing_first"] for f in rounds if f["missing"]), [])
    if "left_in_outbox" in result:
        result["left_in_outbox"] = sum(f["left_in_outbox"] for f in rounds)
    return result


def figures(run: Run, summary: dict[str, Any], backlog: int) -> dict[str, Any]:
    """One approach's figures from the publisher's `run` and the subscriber's `summary`."""
    total_records = backlog + len(run.live_recorded)
    drain_s = run.drained_mono - run.started_mono
    received = summary["live_received"]  # str(seq) -> first receipt, mono s
    latencies = [
        received[str(seq)] - at for seq, at in run.live_recorded.items() if str(seq) in received
    ]
    result: dict[str, Any] = {
        "drain_s": round(drain_s, 3),
        "records_per_s": round(backlog / drain_s),
        "to_subscriber_s": None,
        "to_subscriber_records_per_s": None,
        "messages": run.messages,
        "payload_bytes_per_record": round(
            summary["payload_bytes"] / max(1, summary["records_received"])
        ),
        "tcp_sent_per_record": None,
        "tcp_received_per_record": None,
        "live": live_figures(len(run.live_recorded), latencies),
        "expected_records": total_records,
        "distinct_received": summary["distinct"],
        "missing": summary["missing"],
        "missing_first": summary["missing_first"],
        "duplicates": summary["duplicates"],
        "unexpected": summary["unexpected"],
    }
    if summary["complete_mono"] is not None:
        to_subscriber = summary["complete_mono"] - run.started_mono
        result["to_subscriber_s"] = round(to_subscriber, 3)
        result["to_subscriber_records_per_s"] = round(backlog / to_subscriber)
    if run.tcp_sent is not None and run.tcp_received is not None:
        result["tcp_sent_per_record"] = round(run.tcp_sent / total_records)
        result["tcp_received_per_record"] = round(run.tcp_received / total_records, 1)
    return result


def machine() -> dict[str, Any]:
    try:
        first = subprocess.run(["mosquitto", "-h"], capture_output=True, text=True, check=False)
        mosquitto = first.stdout.splitlines()[0].removeprefix("mosquitto version ")
    except (OSError, IndexError):
        mosquitto = "?"
    return {
        "arch": platform.machine(),
        "nproc": os.cpu_count(),
        "python": platform.python_version(),
        "paho_mqtt": PAHO_VERSION,
        "mosquitto": mosquitto,
    }


def run_round(
    records: int, live_every_s: float, directory: Path, *, ours_first: bool
) -> tuple[dict[str, Any], dict[str, Any], int]:
    """Both approaches on the same fresh backlog: (ours, paho, bytes of a one-record message)."""
    timeout_s = 30.0 + records / 200
    outbox_path = directory / "outbox.sqlite3"
    with Outbox(outbox_path, max_bytes=max(64 * 1024 * 1024, 4096 * records)) as outbox:
        fill_outbox(outbox, records)
        items = outbox.oldest(limit=records, max_bytes=sys.maxsize)
        record_bytes = len(payloads.telemetry_message(BENCH_ID, items[:1], historical=True))

        def naive_round() -> dict[str, Any]:
            with broker_and_subscriber(directory / "paho", timeout_s) as (broker, subscriber):
                naive = drain_with_paho(items, broker.port, live_every_s, timeout_s)
                summary = subscriber.result(records + len(naive.live_recorded))
            return figures(naive, summary, records)

        naive_figures = {} if ours_first else naive_round()
        with broker_and_subscriber(directory / "ours", timeout_s) as (broker, subscriber):
            ours = drain_with_outbox(outbox, broker.port, live_every_s, timeout_s)
            summary = subscriber.result(outbox.stats().last_seq)
        ours_figures = figures(ours, summary, records)
        ours_figures["left_in_outbox"] = outbox.stats().depth
    if ours_first:
        naive_figures = naive_round()
    return ours_figures, naive_figures, record_bytes


def run_benchmark(
    records: int, live_every_s: float, directory: Path, rounds: int = 1
) -> dict[str, Any]:
    """`rounds` rounds, alternating which approach goes first (the machine warms up,
    neighbours come and go); the figures of each approach's median round."""
    ours_rounds, naive_rounds = [], []
    record_bytes = 0
    for n in range(rounds):
        round_dir = directory / f"round-{n}"
        round_dir.mkdir()
        ours, naive, record_bytes = run_round(
            records, live_every_s, round_dir, ours_first=n % 2 == 0
        )
        ours_rounds.append(ours)
        naive_rounds.append(naive)
    ours_figures, naive_figures = combine(ours_rounds), combine(naive_rounds)
    return {
        "machine": machine(),
        "records": records,
        "rounds": rounds,
        "live_every_ms": round(live_every_s * 1000),
        "single_record_message_bytes": record_bytes,
        "outbox": ours_figures,
        "paho": naive_figures,
        "ratio_records_per_s": round(
            ours_figures["records_per_s"] / naive_figures["records_per_s"], 2
        ),
    }


# -- report ----------------------------------------------------------------------


def _fmt(value: Any, unit: str = "", digits: int = 0) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float) and digits:
        return f"{value:,.{digits}f}{unit}"
    return f"{value:,}{unit}"


def print_table(result: dict[str, Any]) -> None:
    m, ours, naive = result["machine"], result["outbox"], result["paho"]
    print(
        f"drain of {result['records']:,} telemetry records "
        f"({result['single_record_message_bytes']:,} B as a message of one), "
        f"a live record every {result['live_every_ms']} ms; "
        f"{result['rounds']} round(s), each approach's median round shown"
    )
    print(
        f"machine: {m['arch']}, {m['nproc']} cores, Python {m['python']}, "
        f"paho-mqtt {m['paho_mqtt']}, mosquitto {m['mosquitto']}"
    )
    rows: list[tuple[str, Callable[[dict[str, Any]], str]]] = [
        ("drain: connected -> last PUBACK", lambda r: _fmt(r["drain_s"], " s", 2)),
        ("records/s", lambda r: _fmt(r["records_per_s"])),
        (
            "records/s, every round",
            lambda r: ", ".join(f"{x:,}" for x in r["rounds_records_per_s"]),
        ),
        ("every seq at the subscriber", lambda r: _fmt(r["to_subscriber_s"], " s", 2)),
        ("records/s, end to end", lambda r: _fmt(r["to_subscriber_records_per_s"])),
        ("messages", lambda r: _fmt(r["messages"])),
        ("MQTT payload bytes/record", lambda r: _fmt(r["payload_bytes_per_record"])),
        ("TCP bytes/record sent", lambda r: _fmt(r["tcp_sent_per_record"])),
        ("TCP bytes/record received", lambda r: _fmt(r["tcp_received_per_record"], "", 1)),
        (
            "live records mid-drain (all rounds)",
            lambda r: f"{r['live']['received']}/{r['live']['recorded']}",
        ),
        ("live latency p95", lambda r: _fmt(r["live"]["p95_s"], " s", 3)),
        ("live latency max", lambda r: _fmt(r["live"]["max_s"], " s", 3)),
        ("missing / duplicates", lambda r: f"{r['missing']} / {r['duplicates']}"),
    ]
    print(f"\n{'':36}{'outbox+publisher':>22}{'plain paho':>22}")
    for label, cell in rows:
        print(f"{label:36}{cell(ours):>22}{cell(naive):>22}")
    ratio = result["ratio_records_per_s"]
    live_max = ours["live"]["max_s"]
    print(
        f"\nrecords/s, ours / paho: {ratio:.2f}x (target >= {RATIO_TARGET:.0f}x: "
        f"{'met' if ratio >= RATIO_TARGET else 'NOT met'})"
    )
    if live_max is None:
        print("live latency: no live record was recorded mid-drain (use a smaller --live-ms)")
    else:
        met = "met" if live_max <= LIVE_TARGET_S else "NOT met"
        print(
            f"live max mid-drain, ours: {live_max:.3f} s (target <= {LIVE_TARGET_S:.0f} s: {met})"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--records", type=int, default=20_000, help="backlog size (20000)")
    parser.add_argument(
        "--live-ms", type=float, default=100.0, help="a live record every MS ms (100)"
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds, median reported (3)")
    parser.add_argument(
        "--quick", action="store_true", help="one round of 3,000 records, live every 2 ms"
    )
    parser.add_argument("--dir", type=Path, default=None, help="outbox directory (/var/tmp)")
    parser.add_argument("--json", type=Path, default=None, help="write the result here")
    parser.add_argument("--subscriber", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--subscriber-timeout", type=float, default=60.0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.subscriber is not None:
        return subscriber_main(args.subscriber, args.subscriber_timeout)
    records, live_ms, rounds = (
        (3000, 2.0, 1) if args.quick else (args.records, args.live_ms, args.rounds)
    )
    if records < 1 or live_ms <= 0 or rounds < 1:
        parser.error("--records and --rounds must be >= 1 and --live-ms > 0")
    directory = Path(tempfile.mkdtemp(prefix="bench-drain-", dir=args.dir or Path("/var/tmp")))
    try:
        result = run_benchmark(records, live_ms / 1000, directory, rounds)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    print_table(result)
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    lost = [name for name in ("outbox", "paho") if result[name]["missing"]]
    if lost or result["outbox"]["left_in_outbox"]:
        print(f"LOST RECORDS: {lost or 'left in the outbox'}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    # The link's own "disconnected (stopped)" at the end of each run is not news here.
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    logging.getLogger("bench_agent.link.mqtt").setLevel(logging.ERROR)
    sys.exit(main())
