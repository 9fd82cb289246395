"""Footprint of the agent on the simulated bench: memory, CPU, wake-ups, start-up, wire bytes.

Two runs against a private mosquitto on a free loopback port:

1. Real time (speed 1), `sample_interval_s = 1`, for DURATION seconds (default 60):
   peak RSS (VmHWM), CPU % of one core, wake-ups per second (context switches of
   every thread of the agent), and the time from exec to the retained
   `status` online at a subscriber.
2. Accelerated (speed 60: one 60 s publish interval per real second) for the
   wire: TCP bytes the agent sent and received per telemetry record (from the
   kernel's `ss -ti` counters), extrapolated to one hour at the default 60 s
   publish interval. At that interval every keepalive (60 s) is covered by a
   publish, so no PINGREQ is sent.

Usage: .venv/bin/python bench/footprint.py [DURATION]
"""

from __future__ import annotations

import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench import tcp_counters  # noqa: E402
from tests.support import AgentProcess, Broker, Recorder, sim_config, wait_until  # noqa: E402


def proc_status(pid: int) -> dict[str, str]:
    text = Path(f"/proc/{pid}/status").read_text()
    return dict(line.split(":\t", 1) for line in text.splitlines() if ":\t" in line)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks  # utime + stime


def context_switches(pid: int) -> int:
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            status = dict(
                line.split(":\t", 1)
                for line in (task / "status").read_text().splitlines()
                if ":\t" in line
            )
        except OSError:
            continue
        total += int(status["voluntary_ctxt_switches"]) + int(status["nonvoluntary_ctxt_switches"])
    return total


def agent_tcp_bytes(port: int, pid: int) -> tuple[int, int]:
    counted = tcp_counters.tcp_bytes(port, pid)
    if counted is None:
        raise SystemExit("footprint: `ss` (iproute2) is needed to count bytes on the wire")
    return counted


def real_time_run(workdir: Path, duration_s: float) -> dict[str, float]:
    broker = Broker(workdir).start()
    recorder = Recorder(broker.port, "smartbench/+/status")
    try:
        cfg = sim_config(
            workdir,
            broker.port,
            {"sim": {"speed": 1.0}, "sampling": {"sample_interval_s": 1, "publish_interval_s": 60}},
        )
        t0 = time.monotonic()
        agent = AgentProcess(cfg, workdir)
        wait_until(lambda: any(m.json()["online"] for m in recorder.on("status")), 20, "online")
        online_s = next(m.received_mono for m in recorder.on("status") if m.json()["online"]) - t0
        time.sleep(3)  # settle: imports and the first samples are start-up, not steady state
        cpu0, ctx0, w0 = (
            cpu_seconds(agent.proc.pid),
            context_switches(agent.proc.pid),
            time.monotonic(),
        )
        time.sleep(duration_s)
        cpu1, ctx1, w1 = (
            cpu_seconds(agent.proc.pid),
            context_switches(agent.proc.pid),
            time.monotonic(),
        )
        status = proc_status(agent.proc.pid)
        agent.stop()
        return {
            "exec_to_online_s": round(online_s, 3),
            "peak_rss_mb": round(int(status["VmHWM"].split()[0]) / 1024, 1),
            "cpu_pct_of_one_core": round(100 * (cpu1 - cpu0) / (w1 - w0), 2),
            "wakeups_per_s": round((ctx1 - ctx0) / (w1 - w0), 2),
            "threads": int(status["Threads"]),
        }
    finally:
        recorder.close()
        broker.stop()


def wire_run(workdir: Path, records: int) -> dict[str, float]:
    broker = Broker(workdir).start()
    recorder = Recorder(broker.port)
    try:
        cfg = sim_config(
            workdir,
            broker.port,
            {
                "sim": {"speed": 60.0},
                "sampling": {"sample_interval_s": 1, "publish_interval_s": 60},
            },
        )
        agent = AgentProcess(cfg, workdir)
        wait_until(lambda: len(recorder.telemetry_records()) >= 2, 30, "first records")
        sent0, recv0 = agent_tcp_bytes(broker.port, agent.proc.pid)
        n0 = len(recorder.telemetry_records())
        wait_until(
            lambda: len(recorder.telemetry_records()) >= n0 + records, 60 + records, "records"
        )
        sent1, recv1 = agent_tcp_bytes(broker.port, agent.proc.pid)
        n1 = len(recorder.telemetry_records())
        payloads = [len(m.payload) for m in recorder.on("telemetry")]
        agent.stop()
        # Only the agent's own connection: the recorder's, to the same port, carries
        # every record a second time.
        per_record_sent = (sent1 - sent0) / (n1 - n0)
        per_record_recv = (recv1 - recv0) / (n1 - n0)
        return {
            "telemetry_payload_bytes": round(sum(payloads) / len(payloads)),
            "tcp_bytes_per_record_both_ways": round(per_record_sent + per_record_recv),
            "bytes_per_hour_at_60s": round(60 * (per_record_sent + per_record_recv)),
        }
    finally:
        recorder.close()
        broker.stop()


def main() -> int:
    duration = float(sys.argv[1]) if len(sys.argv) > 1 else 60.0
    with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b:
        result = {
            "machine": (
                f"{platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}"
            ),
            **real_time_run(Path(a), duration),
            **wire_run(Path(b), 20),
        }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
