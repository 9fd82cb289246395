"""`bench-ops fleet` as a real process (the console script) against a real mosquitto,
three real agents (simulated benches, sped up) on contract 2 and `bench-ops bridge`:
every bench listed with its version, config hash and SoC; a bench stopped cleanly is
offline; a bench frozen with SIGSTOP (its connection, and so its retained `online`,
stay: the broker hears nothing wrong within its keepalive) is STALE; the worst first;
garbage retained payloads skipped; the live view redraws and exits 0 on Ctrl-C."""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from bench_agent import __version__
from tests.bridge_support import BENCH_OPS, PREFIX, V1_PREFIX, BridgeProcess
from tests.support import FAST_AGENT, AgentProcess, Broker, Recorder, sim_config, wait_until

pytestmark = pytest.mark.integration

BENCHES = ("sim-bench-01", "sim-bench-02", "sim-bench-03")
# In real seconds here: STALE after 0.8 s without a record (six batches of a live bench);
# --once listens for at least 1 s, so a bench that sends nothing is stale by then.
BATCH_S = "0.4"


class Fleet:
    def __init__(self, tmp_path: Path) -> None:
        self.broker = Broker(tmp_path).start()
        self.agents: dict[str, AgentProcess] = {}
        self.configs: dict[str, Path] = {}
        for index, bench in enumerate(BENCHES):
            workdir = tmp_path / bench
            workdir.mkdir()
            # A different configuration each: a different hash each.
            changes = {**FAST_AGENT, "bench": {"id": bench}}
            changes["sampling"] = {**FAST_AGENT["sampling"], "sample_interval_s": 20 + 5 * index}
            self.configs[bench] = sim_config(workdir, self.broker.port, changes)
            self.agents[bench] = AgentProcess(self.configs[bench], workdir)
        self.bridge = BridgeProcess(self.broker.port, tmp_path)
        self.frozen: set[str] = set()

    def run(self, *flags: str, timeout_s: float = 30) -> subprocess.CompletedProcess[str]:
        command = [str(BENCH_OPS), "fleet", "--host", "127.0.0.1", "--port", str(self.broker.port)]
        return subprocess.run(
            [*command, "--batch-s", BATCH_S, *flags],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )

    def rows(self) -> list[dict[str, Any]]:
        done = self.run("--once", "--json")
        assert done.returncode == 0, done.stderr
        rows: list[dict[str, Any]] = json.loads(done.stdout)
        return rows

    def close(self) -> None:
        for bench in self.frozen:
            self.agents[bench].signal(signal.SIGCONT)
        for agent in self.agents.values():
            agent.kill()
        self.bridge.kill()
        self.broker.stop()


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    made = Fleet(tmp_path)
    try:
        yield made
    finally:
        made.close()


def publish_retained(port: int, messages: dict[str, bytes]) -> None:
    client = paho.Client(callback_api_version=CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        for topic, payload in messages.items():
            client.publish(topic, payload, qos=1, retain=True).wait_for_publish(5)
    finally:
        client.disconnect()
        client.loop_stop()


def test_every_bench_listed_offline_stale_and_the_worst_first(fleet: Fleet) -> None:
    records = Recorder(fleet.broker.port, f"{V1_PREFIX}/+/telemetry")
    try:
        wait_until(
            lambda: {m.json()["bench"] for m in records.on("telemetry")} >= set(BENCHES),
            60,
            "v1 telemetry of every bench through the bridge",
        )
    finally:
        records.close()
    publish_retained(
        fleet.broker.port,
        {
            f"{PREFIX}/junk-1/status": b"\x00not json",
            f"{PREFIX}/junk-2/state": b"[" * 50_000,
            f"{PREFIX}/junk-3/status": b'{"v":1,"bench":"junk-3","online":"maybe"}',
            f"{PREFIX}/junk-4/status": b'{"v":1,"bench":"sim-bench-01","online":false}',
        },
    )

    rows = fleet.rows()
    assert sorted(r["bench"] for r in rows) == sorted(BENCHES)  # the junk is skipped
    for row in rows:
        config = fleet.configs[row["bench"]].read_bytes()
        assert row["online"] is True and row["problem"] == "ok", row
        assert row["agent_version"] == __version__
        assert row["config_hash"] == hashlib.sha256(config).hexdigest()[:12]
        assert isinstance(row["soc_pct"], float) and 0 <= row["soc_pct"] <= 100
        assert row["soc_source"] in {"coulomb", "voltage_anchor", "bmv"}
        assert row["record_age_s"] is not None and row["stale"] is False
        assert isinstance(row["outbox_depth"], int)
        assert isinstance(row["solar_wh_today"], float) and row["usb_sessions_today"] is not None
    assert len({r["config_hash"] for r in rows}) == len(BENCHES)

    # sim-bench-03 stops cleanly: offline (its retained "shutdown" status).
    assert fleet.agents["sim-bench-03"].stop() == 0
    # sim-bench-02 freezes: its connection stays, so its status stays online, but no
    # record comes: STALE.
    fleet.agents["sim-bench-02"].signal(signal.SIGSTOP)
    fleet.frozen.add("sim-bench-02")

    rows = fleet.rows()
    assert [r["bench"] for r in rows] == ["sim-bench-03", "sim-bench-02", "sim-bench-01"]
    off, stale, fine = rows
    assert (off["online"], off["problem"], off["reason"]) == (False, "offline", "shutdown")
    assert off["since"] is not None and off["soc_pct"] is not None  # the retained state's
    assert (stale["online"], stale["problem"], stale["stale"]) == (True, "stale", True)
    assert stale["record_age_s"] is None and stale["quiet_s"] >= 1.0
    assert fine["problem"] == "ok" and fine["stale"] is False

    table = fleet.run("--once")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].startswith("3 benches: 1 offline, 1 stale, 0 with faults"), table.stdout
    assert all(len(line) <= 80 for line in lines), table.stdout
    benches = [line.split()[0] for line in lines[2:] if not line.startswith(" ")]
    assert benches == ["sim-bench-03", "sim-bench-02", "sim-bench-01"]
    assert "OFF" in lines[2] and any("STALE" in line for line in lines)


def test_the_live_view_redraws_and_ctrl_c_exits_0(fleet: Fleet) -> None:
    command = [str(BENCH_OPS), "fleet", "--host", "127.0.0.1", "--port", str(fleet.broker.port)]
    proc = subprocess.Popen(
        [*command, "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        seen: set[str] = set()
        for _ in range(200):  # one document a line, redrawn as messages come
            line = proc.stdout.readline()
            seen |= {row["bench"] for row in json.loads(line)}
            if seen == set(BENCHES):
                break
        assert seen == set(BENCHES)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(10) == 0, proc.stderr.read() if proc.stderr else ""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
