"""Capture what ops receive from a simulated bench: every telemetry record and event
(contract v1 JSON, one per line), for the encoding benchmark (bench_encoding.py).

The demo's bench and scenario (tamper, a broker outage, clock trouble), with the
reference config's 60 s publish interval, sped up, against a private mosquitto.

Usage: .venv/bin/python bench/capture_records.py OUT.jsonl.gz HOURS [SEED]
"""

from __future__ import annotations

import gzip
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.support import AgentProcess, Broker, Recorder, sim_config  # noqa: E402

SPEED = 720.0


def main() -> int:
    out, hours = Path(sys.argv[1]), float(sys.argv[2])
    seed = int(sys.argv[3]) if len(sys.argv) > 3 else 7
    with tempfile.TemporaryDirectory(prefix="capture-") as tmp:
        workdir = Path(tmp)
        broker = Broker(workdir).start()
        try:
            capture(workdir, broker, out, hours, seed)
        finally:
            broker.stop()
    lines = gzip.decompress(out.read_bytes()).decode().splitlines()
    print(f"{out}: {len(lines)} records")
    return 0


def capture(workdir: Path, broker: Broker, out: Path, hours: float, seed: int) -> None:
    config = sim_config(
        workdir,
        broker.port,
        {
            "sampling": {"publish_interval_s": 60, "sample_interval_s": 10},
            "sim": {
                "speed": SPEED,
                "seed": seed,
                "scenario": str(REPO / "config/scenarios/demo.toml"),
            },
            "commands": {"trusted_keys": str(workdir / "keys")},
        },
    )
    recorder = Recorder(broker.port)
    agent = AgentProcess(config, workdir)
    try:
        time.sleep(hours * 3600 / SPEED)
    finally:
        agent.stop()
    with gzip.open(out, "wt") as f:
        for message in recorder.messages:
            leaf = message.topic.rsplit("/", 1)[-1]
            if leaf == "telemetry":
                for record in json.loads(message.payload)["records"]:
                    f.write(json.dumps({"kind": "telemetry", **record}) + "\n")
            elif leaf == "event":
                f.write(json.dumps({"kind": "event", **json.loads(message.payload)}) + "\n")


if __name__ == "__main__":
    sys.exit(main())
