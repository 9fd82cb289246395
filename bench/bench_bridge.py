"""One `bench-ops bridge` against a local mosquitto: records/s decoded and republished,
and the latency it adds.

    .venv/bin/python bench/bench_bridge.py [--batches N] [--rounds R] [--samples S] [--json FILE]
    .venv/bin/python bench/bench_bridge.py --quick

The records are the agent's own (bench/data/records-day-a.jsonl.gz, a simulated day,
kind in each line), repeated with their seqs renumbered so that each is new, encoded
as contract-v2 batches of 5 (`contract_v2.encode`) before the clock starts. The bridge
is the real console script in its own process (`--no-share`, its defaults otherwise);
the publisher (a bench stand-in) and the v1 subscriber (a city consumer) are threads
of this process, on a private mosquitto on a free loopback port.

* throughput: the publisher keeps WINDOW records published and not yet at the
  subscriber (QoS 1: as fast as the bridge takes them, without overrunning the
  broker's queue); records/s = records / (first publish -> last record at the
  subscriber). The bridge's CPU (% of one core, /proc/PID/stat) and peak RSS are
  read over the same span. Median of R rounds, each with a fresh broker and bridge.
* latency: one batch at a time on an idle pipeline, publish -> its last record at the
  subscriber (CLOCK_MONOTONIC, one process); p50 and p95 of S batches. The same v1
  messages published straight to the broker (no bridge) give the path's own latency,
  so the bridge's share is the difference.

Exits 1 when a record is missing at the subscriber.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.machine import machine  # noqa: E402
from bench_agent.link import contract_v2  # noqa: E402
from bench_agent.ops.bridge_payloads import read_batch  # noqa: E402
from bench_agent.ops.bridge_payloads import v1_payloads as bridge_v1  # noqa: E402
from tests.support import Broker, wait_until  # noqa: E402

RECORDS = REPO / "bench" / "data" / "records-day-a.jsonl.gz"
BENCH_OPS = Path(sys.executable).parent / "bench-ops"
BENCH = "sim-bench-01"
BATCH = 5
WINDOW = 500  # records published and not yet at the subscriber
WARM_UP = 10  # batches sent before the latency is timed
CLK_TCK = os.sysconf("SC_CLK_TCK")


def day() -> list[tuple[contract_v2.RecordKind, dict[str, Any]]]:
    out = []
    for line in gzip.decompress(RECORDS.read_bytes()).decode().splitlines():
        record = json.loads(line)
        out.append((record.pop("kind"), record))
    return out


def v2_batches(count: int) -> list[bytes]:
    """`count` batches of 5 of the day's records, repeated, seqs 1, 2, … one epoch."""
    records = day()
    out = []
    seq = 0
    for n in range(count):
        batch = []
        for i in range(BATCH):
            kind, record = records[(n * BATCH + i) % len(records)]
            seq += 1
            batch.append((kind, {**record, "seq": seq}))
        out.append(contract_v2.encode(BENCH, batch))
    return out


class Subscriber:
    """The v1 consumer: when each seq arrived (monotonic), on its own paho thread."""

    def __init__(self, port: int) -> None:
        self.arrived: dict[int, float] = {}
        self.duplicates = 0
        self.cond = threading.Condition()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *_a: subscribed.set()
        self.client.on_connect = lambda c, *_a: c.subscribe(
            [("smartbench-v1/+/telemetry", 1), ("smartbench-v1/+/event", 1)]
        )
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        if not subscribed.wait(10):
            raise RuntimeError("subscriber could not subscribe")

    def _on_message(self, _c: Any, _u: Any, msg: paho.MQTTMessage) -> None:
        now = time.monotonic()
        body = json.loads(msg.payload)
        seqs = [r["seq"] for r in body["records"]] if "records" in body else [body["seq"]]
        with self.cond:
            for seq in seqs:
                if seq in self.arrived:
                    self.duplicates += 1
                else:
                    self.arrived[seq] = now
            self.cond.notify_all()

    def count(self) -> int:
        with self.cond:
            return len(self.arrived)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class Publisher:
    def __init__(self, port: int) -> None:
        self.client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
        self.client.max_inflight_messages_set(100)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def publish(self, topic: str, payload: bytes) -> paho.MQTTMessageInfo:
        return self.client.publish(topic, payload, qos=1)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class BridgeUnderTest:
    def __init__(self, port: int, workdir: Path) -> None:
        self.log = workdir / "bridge.log"
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [str(BENCH_OPS), "bridge", "--host", "127.0.0.1", "--port", str(port),
                 "--client-id", "bench-bridge", "--no-share", "--status-interval", "3600"],
                stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip

    def cpu_s(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime

    def peak_rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def wait_online(port: int) -> None:
    """Until the bridge's retained status says online (it has subscribed by then)."""
    seen = threading.Event()
    client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    client.on_connect = lambda c, *_a: c.subscribe("smartbench-v1/_bridge/bench-bridge", 1)
    client.on_message = lambda _c, _u, m: seen.set() if json.loads(m.payload)["online"] else None
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        if not seen.wait(20):
            raise RuntimeError("the bridge did not come online")
    finally:
        client.disconnect()
        client.loop_stop()


def throughput(batches: Sequence[bytes], workdir: Path) -> dict[str, Any]:
    broker = Broker(workdir).start()
    bridge = BridgeUnderTest(broker.port, workdir)
    try:
        wait_online(broker.port)
        subscriber, publisher = Subscriber(broker.port), Publisher(broker.port)
        total = len(batches) * BATCH
        cpu0 = bridge.cpu_s()
        started = time.monotonic()
        for n, payload in enumerate(batches):
            with subscriber.cond:
                subscriber.cond.wait_for(
                    lambda n=n: n * BATCH - len(subscriber.arrived) < WINDOW, 60
                )
            publisher.publish(f"smartbench/{BENCH}/v2", payload)
        wait_until(lambda: subscriber.count() >= total, 120, "every record at the subscriber")
        elapsed = max(subscriber.arrived.values()) - started
        cpu = bridge.cpu_s() - cpu0
        result = {
            "records": total,
            "seconds": round(elapsed, 3),
            "records_per_s": round(total / elapsed),
            "batches_per_s": round(len(batches) / elapsed),
            "bridge_cpu_pct_of_one_core": round(100 * cpu / elapsed, 1),
            "bridge_peak_rss_mb": round(bridge.peak_rss_mb(), 1),
            "missing": total - subscriber.count(),
            "duplicates": subscriber.duplicates,
        }
        publisher.close()
        subscriber.close()
        return result
    finally:
        bridge.stop()
        broker.stop()


def one_at_a_time(
    publisher: Publisher, subscriber: Subscriber, messages: Sequence[list[tuple[str, bytes]]]
) -> list[float]:
    """Each item's messages published at once; the time until its last record arrived.
    The first WARM_UP are not counted (the bridge loads the dictionary, TCP warms up)."""
    latencies = []
    for n, item in enumerate(messages):
        want = set(range(n * BATCH + 1, (n + 1) * BATCH + 1))
        started = time.monotonic()
        for topic, payload in item:
            publisher.publish(topic, payload)
        with subscriber.cond:
            if not subscriber.cond.wait_for(lambda w=want: w <= subscriber.arrived.keys(), 10):
                raise RuntimeError(f"batch {n} did not arrive")
            latencies.append(max(subscriber.arrived[s] for s in want) - started)
        time.sleep(0.005)
    return latencies[WARM_UP:]


def percentiles(values: Sequence[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "p50_ms": round(1000 * statistics.median(ordered), 2),
        "p95_ms": round(1000 * ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))], 2),
    }


def v1_payloads(batch: contract_v2.Batch) -> list[tuple[str, bytes, int]]:
    return bridge_v1(batch, 65_536)


def latency(samples: int, workdir: Path) -> dict[str, Any]:
    batches = v2_batches(samples + WARM_UP)
    v1 = [
        [(f"smartbench-v1/{BENCH}/{leaf}", payload) for leaf, payload, _ in v1_payloads(batch)]
        for batch in (read_batch(BENCH, b) for b in batches)
    ]
    out: dict[str, Any] = {"samples": samples}
    # The broker alone: the v1 messages published straight (no bridge).
    (workdir / "direct").mkdir()
    broker = Broker(workdir / "direct").start()
    try:
        subscriber, publisher = Subscriber(broker.port), Publisher(broker.port)
        out["direct"] = percentiles(one_at_a_time(publisher, subscriber, v1))
        publisher.close()
        subscriber.close()
    finally:
        broker.stop()
    (workdir / "bridged").mkdir()
    broker = Broker(workdir / "bridged").start()
    bridge = BridgeUnderTest(broker.port, workdir / "bridged")
    try:
        wait_online(broker.port)
        subscriber, publisher = Subscriber(broker.port), Publisher(broker.port)
        v2 = [[(f"smartbench/{BENCH}/v2", b)] for b in batches]
        out["bridged"] = percentiles(one_at_a_time(publisher, subscriber, v2))
        publisher.close()
        subscriber.close()
    finally:
        bridge.stop()
        broker.stop()
    out["added"] = {k: round(out["bridged"][k] - out["direct"][k], 2) for k in out["direct"]}
    return out


def run(batches: int, rounds: int, samples: int, directory: Path) -> dict[str, Any]:
    payloads = v2_batches(batches)
    runs = []
    for n in range(rounds):
        (directory / f"round-{n}").mkdir()
        runs.append(throughput(payloads, directory / f"round-{n}"))
    runs.sort(key=lambda r: r["records_per_s"])
    (directory / "latency").mkdir()
    return {
        "machine": machine(),
        "v2_bytes_per_record": round(sum(map(len, payloads)) / (batches * BATCH), 1),
        "throughput": {
            **runs[len(runs) // 2],
            "rounds_records_per_s": [r["records_per_s"] for r in runs],
        },
        "latency": latency(samples, directory / "latency"),
        "missing": sum(r["missing"] for r in runs),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=4000, help="batches of 5 per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--samples", type=int, default=300, help="batches timed one at a time")
    parser.add_argument("--quick", action="store_true", help="200 batches, 1 round, 30 samples")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    if args.quick:
        args.batches, args.rounds, args.samples = 200, 1, 30
    with tempfile.TemporaryDirectory(prefix="bench-bridge-") as tmp:
        result = run(args.batches, args.rounds, args.samples, Path(tmp))
    m, t, lat = result["machine"], result["throughput"], result["latency"]
    print(f"machine: {m['arch']}, {m['nproc']} cores ({m['cpu']}), Python {m['python']}, "
          f"paho-mqtt {m['paho_mqtt']}, mosquitto {m['mosquitto']}")  # fmt: skip
    print(f"v2: {result['v2_bytes_per_record']} bytes/record in batches of {BATCH}")
    print(f"throughput: {t['records_per_s']:,} records/s ({t['batches_per_s']:,} batches/s), "
          f"rounds {t['rounds_records_per_s']}; bridge CPU {t['bridge_cpu_pct_of_one_core']} % "
          f"of a core, peak RSS {t['bridge_peak_rss_mb']} MB; missing {result['missing']}, "
          f"duplicates {t['duplicates']}")  # fmt: skip
    print(f"latency, publish -> last record at the subscriber ({lat['samples']} batches): "
          f"bridged p50 {lat['bridged']['p50_ms']} ms / p95 {lat['bridged']['p95_ms']} ms; "
          f"direct p50 {lat['direct']['p50_ms']} / p95 {lat['direct']['p95_ms']} ms; "
          f"added p50 {lat['added']['p50_ms']} / p95 {lat['added']['p95_ms']} ms")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 1 if result["missing"] else 0


if __name__ == "__main__":
    sys.exit(main())
