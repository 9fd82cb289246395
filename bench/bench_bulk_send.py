"""`bench-ops send` to a whole simulated fleet by glob: how long until every bench answered.

    .venv/bin/python bench/bench_bulk_send.py [--benches 200] [--json FILE]
    .venv/bin/python bench/bench_bulk_send.py --quick

N simulated benches (tests/ops_support.py: each its own MQTT connection, its retained
status, the real CommandProcessor with its replay store — a signature check and an
fsync per command) answer on a private mosquitto on a free loopback port. The tool is
the real console script, run as ops would (`--bench 'sim-*' --json ping`), once per
scenario: each bench answers at once, or after a delay standing for a cellular round
trip, at several `--concurrency`. Reported per scenario: the process's wall time
(start-up included), the tool's own `elapsed_s` and `discovery_s` (the wait for the
retained statuses the glob needs: 1 s of quiet, as `fleet --once`), and the round trip
per bench (publish -> reply, p50/p95). Exits 1 when a bench did not answer.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.machine import machine  # noqa: E402
from bench_agent.ops.opsctl import main as bench_ops  # noqa: E402
from tests.ops_support import FakeControl, Responder, processor_for  # noqa: E402
from tests.support import Broker  # noqa: E402

BENCH_OPS = Path(sys.executable).parent / "bench-ops"
# (reply delay in s, concurrency): instant replies at the default, then a link's delay.
SCENARIOS = ((0.0, 20), (0.3, 20), (0.3, 100))


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def one_run(port: int, keys: Path, concurrency: int, timeout_s: float) -> dict[str, Any]:
    argv = [str(BENCH_OPS), "send", "--host", "127.0.0.1", "--port", str(port)]
    argv += ["--key", str(keys / "ops-bench.key"), "--key-id", "ops-bench"]
    argv += ["--bench", "sim-*", "--concurrency", str(concurrency)]
    argv += ["--timeout", str(timeout_s), "--json", "ping"]
    began = time.monotonic()
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    wall_s = time.monotonic() - began
    if done.returncode not in (0, 1, 2):
        raise RuntimeError(f"bench-ops exited {done.returncode}: {done.stderr.strip()}")
    doc = json.loads(done.stdout)
    trips = [b["round_trip_ms"] for b in doc["benches"] if b["round_trip_ms"] is not None]
    return {
        "concurrency": concurrency,
        "exit": done.returncode,
        "wall_s": round(wall_s, 2),
        "elapsed_s": doc["elapsed_s"],
        "discovery_s": doc["discovery_s"],
        "sending_s": round(doc["elapsed_s"] - doc["discovery_s"], 2),
        "counts": doc["counts"],
        "round_trip_ms_p50": round(statistics.median(trips), 1) if trips else None,
        "round_trip_ms_p95": round(percentile(trips, 0.95), 1) if trips else None,
    }


def run(benches: int, scenarios: Sequence[tuple[float, int]], directory: Path) -> dict[str, Any]:
    broker = Broker(directory).start()
    keys = directory / "keys"
    assert bench_ops(["keygen", "--out", str(keys), "--key-id", "ops-bench"]) == 0
    results = []
    try:
        for delay_s, concurrency in scenarios:
            responders = []
            try:
                for n in range(benches):
                    name = f"sim-{n + 1:04d}"
                    processor = processor_for(
                        name, keys / "ops-bench.pub", directory, FakeControl()
                    )
                    responders.append(Responder(broker.port, processor, delay_s=delay_s))
                result = one_run(broker.port, keys, concurrency, timeout_s=10)
                results.append({"reply_delay_s": delay_s, **result})
            finally:
                for responder in responders:
                    responder.close()
    finally:
        broker.stop()
    return {"machine": machine(), "benches": benches, "scenarios": results}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--benches", type=int, default=200)
    parser.add_argument("--quick", action="store_true", help="10 benches, instant replies")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    scenarios: Sequence[tuple[float, int]] = SCENARIOS
    if args.quick:
        args.benches, scenarios = 10, ((0.0, 5),)
    # Inside the checkout, not the host's /tmp (as the tests).
    parent = REPO / ".cache"
    parent.mkdir(exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="bench-bulk-send-", dir=parent))
    try:
        result = run(args.benches, scenarios, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    m = result["machine"]
    print(f"machine: {m['arch']}, {m['nproc']} cores ({m['cpu']}), Python {m['python']}, "
          f"paho-mqtt {m['paho_mqtt']}, mosquitto {m['mosquitto']}")  # fmt: skip
    silent = 0
    for s in result["scenarios"]:
        c = s["counts"]
        silent += c["no_answer"]
        print(f"{result['benches']} benches, replies after {s['reply_delay_s'] * 1000:.0f} ms, "
              f"concurrency {s['concurrency']}: {c['ok']} ok, {c['no_answer']} no answer; "
              f"{s['wall_s']} s in all (bench-ops start-up included), of which "
              f"{s['discovery_s']} s for the retained statuses and {s['sending_s']} s "
              f"sending; round trip p50 {s['round_trip_ms_p50']} ms, "
              f"p95 {s['round_trip_ms_p95']} ms")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 1 if silent else 0


if __name__ == "__main__":
    sys.exit(main())
