"""A fleet comes back after a broker outage: how fast `bench-ops archive` takes it in,
on SQLite and on PostgreSQL, with one worker and with two side by side.

    .venv/bin/python bench/bench_fleet_archive.py [--benches 1000] [--hours 6] [--json FILE]
    .venv/bin/python bench/bench_fleet_archive.py --quick      # 50 benches, 1 hour

The fleet: `--benches` simulated benches, each with the backlog of a `--hours` broker
outage — a telemetry record a minute (the agent's own records of a simulated day,
bench/data/records-day-a.jsonl.gz, renumbered, historical) and its events — encoded
with the product's encoder (`contract_v2.encode`, dictionary 1) into batches within
the bench's 64 KiB payload limit, as the agent drains a backlog. Some benches are not
plain: 2 % come back with a new seq epoch (their state directory was wiped), 3 % dropped
the oldest 30 records of their backlog and say so (`outbox_dropped`), 5 % restarted
(a new boot_id) during the outage. The encoded fleet is cached in .cache/ (encoding
360,000 records takes a minute).

Each scenario: a fresh database (a SQLite file; a database on a PostgreSQL server
this script starts with initdb/pg_ctl, fsync and synchronous commit ON as in
production), a private mosquitto (max_queued_messages unlimited) on a free loopback
port, the archive's workers (the real console script, one shared group, `--max-rate 0`
so the machine's limit shows; the default 5,000 records/s is the pacing ops get),
subscribed before the benches come back; then every bench's backlog published at
once by 8 publisher connections (QoS 1). Measured: the time from the first publish to
the last record committed (polling the database's row count every 0.2 s), records/s
overall and per worker, the workers' CPU (% of one core, /proc/PID/stat) and peak RSS.
Then `bench-ops gaps --json` must report nothing lost and exactly the injected bench
drops, or the script exits 1.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import os
import pickle
import platform
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench_agent.link import contract_v2  # noqa: E402
from bench_agent.ops.archive_db import open_store  # noqa: E402
from tests.bridge_support import captured_records  # noqa: E402
from tests.pg_support import PostgresServer  # noqa: E402
from tests.support import Broker, free_port, wait_until  # noqa: E402

BENCH_OPS = Path(sys.executable).parent / "bench-ops"
CACHE = REPO / ".cache" / "bench-fleet-archive"
MAX_PAYLOAD = 60 * 1024  # under the agent's default max_payload_bytes (64 KiB)
PUBLISHERS = 8
DROPPED_EACH = 30
CLK_TCK = os.sysconf("SC_CLK_TCK")

Record = tuple[contract_v2.RecordKind, dict[str, Any]]


def _templates() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    day = captured_records()
    return [r for k, r in day if k == "telemetry"], [r for k, r in day if k == "event"]


def bench_backlog(index: int, hours: float) -> tuple[str, list[bytes], int]:
    """One bench's backlog as v2 messages (topic bench id, payloads, records dropped)."""
    telemetry, events = _templates()
    bench = f"bench-{index:04d}"
    kind_of = index % 100
    epoch = hashlib.sha256(f"{bench}-epoch".encode()).hexdigest()[:16]
    # A bench that was already running before the outage is at some seq; one whose
    # state directory was wiped starts a new epoch at seq 1.
    first_seq = 1 if kind_of < 2 else 10_000 + index
    if kind_of < 2:
        epoch = hashlib.sha256(f"{bench}-new".encode()).hexdigest()[:16]
    minutes = int(hours * 60)
    boot = f"boot-{bench}"
    records: list[Record] = []
    seq = first_seq
    start = time.mktime((2026, 11, 27, 0, 0, 0, 0, 0, 0)) - time.timezone
    for minute in range(minutes):
        if 5 <= kind_of < 10 and minute == minutes // 2:
            boot = f"boot-{bench}-2"  # a restart during the outage
        template = telemetry[(index + minute) % len(telemetry)]
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(start + minute * 60)) + ".000Z"
        envelope = {"seq": seq, "seq_epoch": epoch, "ts": ts, "time_quality": "synced",
                    "boot_id": boot, "historical": True}  # fmt: skip
        records.append(("telemetry", {**template, **envelope}))
        seq += 1
        if minute % 90 == 45:
            event = events[(index + minute) % len(events)]
            records.append(("event", {**event, **envelope, "seq": seq, "bench": bench}))
            seq += 1
    dropped = 0
    if 2 <= kind_of < 5:  # the outbox dropped its oldest and says so, after the backlog
        dropped = DROPPED_EACH
        records = records[dropped:]
        last = records[-1][1]
        report = {"v": 1, "bench": bench, "seq": seq, "seq_epoch": epoch, "ts": last["ts"],
                  "time_quality": "synced", "boot_id": boot, "uptime_s": 1.0,
                  "type": "outbox_dropped", "records": dropped, "total": dropped}  # fmt: skip
        records.append(("event", report))
    return bench, _batches(bench, records), dropped


def _batches(bench: str, records: list[Record]) -> list[bytes]:
    """As the agent drains a backlog: as many records as fit the payload limit."""
    out: list[bytes] = []
    start = 0
    size = len(records)
    while start < len(records):
        payload = contract_v2.encode(bench, records[start : start + size])
        if len(payload) > MAX_PAYLOAD and size > 1:
            size = max(1, size * MAX_PAYLOAD // len(payload) * 9 // 10)
            continue
        out.append(payload)
        start += size
    return out


def _one(args: tuple[int, float]) -> tuple[str, list[bytes], int]:
    return bench_backlog(*args)


def fleet(benches: int, hours: float) -> list[tuple[str, list[bytes], int]]:
    """Every bench's backlog, encoded once and cached."""
    source = Path(__file__).read_bytes()  # a change to the generator makes a new fleet
    key = hashlib.sha256(f"{benches}-{hours}-".encode() + source).hexdigest()[:16]
    path = CACHE / f"fleet-{key}.pickle"
    if path.exists():
        return pickle.loads(path.read_bytes())  # type: ignore[no-any-return]  # noqa: S301 - our own cache
    t0 = time.monotonic()
    with multiprocessing.Pool() as pool:
        made = pool.map(_one, [(i, hours) for i in range(benches)], chunksize=20)
    print(f"encoded {benches} backlogs in {time.monotonic() - t0:.1f} s", flush=True)
    CACHE.mkdir(parents=True, exist_ok=True)
    for old in CACHE.glob("fleet-*.pickle"):
        old.unlink()
    path.write_bytes(pickle.dumps(made))
    return made


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _publish_all(port: int, messages: list[tuple[str, bytes]]) -> None:
    """Every bench back at once: PUBLISHERS connections publishing in parallel."""

    def one(chunk: list[tuple[str, bytes]]) -> None:
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"pub-{uuid.uuid4().hex[:8]}",
                             protocol=paho.MQTTv5)  # fmt: skip
        client.max_inflight_messages_set(100)
        client.connect("127.0.0.1", port)
        client.loop_start()
        infos = [
            client.publish(f"smartbench/{bench}/v2", payload, qos=1) for bench, payload in chunk
        ]
        for info in infos:
            info.wait_for_publish(120)
        client.disconnect()
        client.loop_stop()

    threads = [
        threading.Thread(target=one, args=(messages[i::PUBLISHERS],)) for i in range(PUBLISHERS)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def scenario(
    made: list[tuple[str, list[bytes], int]], db: str, workers: int, workdir: Path
) -> dict[str, Any]:
    messages = [(bench, p) for bench, payloads, _ in made for p in payloads]
    expected = sum(len(contract_v2.decode(p).records) for _, p in messages)
    broker_dir = workdir / f"broker-{uuid.uuid4().hex[:6]}"
    broker_dir.mkdir()
    broker = Broker(broker_dir)
    broker.conf.write_text(
        f"listener {broker.port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
        "max_queued_messages 0\nmax_inflight_messages 0\n"
    )
    broker.start()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        open_store(db).close()  # the schema, before the workers race to make it
        for n in range(workers):
            log = (broker_dir / f"worker-{n}.log").open("wb")
            procs.append(subprocess.Popen(
                [str(BENCH_OPS), "archive", "--host", "127.0.0.1", "--port", str(broker.port),
                 "--client-id", f"worker-{n}", "--db", db, "--max-rate", "0",
                 "--status-interval", "5"],
                stdout=log, stderr=subprocess.STDOUT,
            ))  # fmt: skip
        for n in range(workers):
            log_path = broker_dir / f"worker-{n}.log"
            wait_until(lambda p=log_path: "subscribed:" in p.read_text(), 30, "a worker subscribed")
        cpu0 = [_cpu_s(p.pid) for p in procs]
        store = open_store(db)
        t0 = time.monotonic()
        publisher = threading.Thread(target=_publish_all, args=(broker.port, messages))
        publisher.start()
        while store.count() < expected:
            if time.monotonic() - t0 > 1800:
                raise RuntimeError(f"not absorbed in 30 min: {store.count()} of {expected}")
            time.sleep(0.2)
        elapsed = time.monotonic() - t0
        publisher.join()
        cpu = [(_cpu_s(p.pid) - c) / elapsed * 100 for p, c in zip(procs, cpu0, strict=True)]
        rss = [_rss_mb(p.pid) for p in procs]
        store.close()
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(30)
        broker.stop()
    done = subprocess.run([str(BENCH_OPS), "gaps", "--db", db, "--json"], capture_output=True,
                          text=True, check=True)  # fmt: skip
    totals = json.loads(done.stdout)["totals"]
    return {
        "workers": workers,
        "records": expected,
        "messages": len(messages),
        "seconds": round(elapsed, 1),
        "records_per_s": round(expected / elapsed),
        "records_per_s_per_worker": round(expected / elapsed / workers),
        "worker_cpu_pct": [round(c) for c in cpu],
        "worker_peak_rss_mb": [round(r, 1) for r in rss],
        "gaps": totals,
    }


def machine() -> dict[str, Any]:
    model = next(
        (line.partition(":")[2].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
         if line.startswith("model name")), "?",
    )  # fmt: skip
    mosquitto = subprocess.run(["mosquitto", "-h"], capture_output=True, text=True, check=False)
    return {
        "arch": platform.machine(), "nproc": os.cpu_count(), "cpu": model,
        "python": platform.python_version(),
        "mosquitto": (mosquitto.stdout.splitlines() or ["?"])[0].removeprefix("mosquitto version "),
    }  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--benches", type=int, default=1000)
    parser.add_argument("--hours", type=float, default=6.0)
    parser.add_argument("--quick", action="store_true", help="50 benches, 1 hour")
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--json", type=Path)
    opts = parser.parse_args(argv)
    benches, hours = (50, 1.0) if opts.quick else (opts.benches, opts.hours)
    made = fleet(benches, hours)
    injected_drops = sum(d for _, _, d in made)
    results: dict[str, Any] = {"machine": machine(), "benches": benches, "hours": hours,
                               "scenarios": []}  # fmt: skip
    ok = True
    with tempfile.TemporaryDirectory(prefix="bench-fleet-archive-", dir=REPO / ".cache") as tmp:
        workdir = Path(tmp)
        server = None
        try:
            for backend in opts.backends.split(","):
                if backend == "postgresql" and server is None:
                    server = PostgresServer(workdir, durable=True).start()
                for workers in (1, 2):
                    db = (
                        server.new_database() if backend == "postgresql" and server
                        else str(workdir / f"archive-{workers}-{free_port()}.sqlite")
                    )  # fmt: skip
                    result = {"backend": backend, **scenario(made, db, workers, workdir)}
                    results["scenarios"].append(result)
                    gaps = result["gaps"]
                    good = gaps["lost"] == 0 and gaps["dropped_by_bench"] == injected_drops
                    ok = ok and good and gaps["stored"] == result["records"]
                    print(
                        f"{backend:10} {workers} worker(s): {result['records']} records in"
                        f" {result['seconds']} s = {result['records_per_s']} records/s"
                        f" ({result['records_per_s_per_worker']}/s per worker), CPU"
                        f" {result['worker_cpu_pct']} %, RSS {result['worker_peak_rss_mb']} MB;"
                        f" gaps: lost {gaps['lost']}, dropped by benches"
                        f" {gaps['dropped_by_bench']} of {injected_drops} injected,"
                        f" {gaps['epochs']} epochs, {gaps['restarts']} restarts",
                        flush=True,
                    )
        finally:
            if server is not None:
                server.stop()
    if opts.json:
        opts.json.write_text(json.dumps(results, indent=1))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
