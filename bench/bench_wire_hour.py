"""Bytes an hour on the bench's link, contract 1 and contract 2 side by side, in real time.

    .venv/bin/python bench/bench_wire_hour.py [MINUTES]   (default 35; at least 30 for the README)

Two agents on the simulated bench at real speed (speed 1) and the reference
cadence (a telemetry record every 60 s), one on contract 1, one on contract 2
(a batch every 300 s), each through its own counting TCP proxy
(bench/byte_proxy.py) to one private mosquitto; a subscriber counts what arrives
by topic. Per agent: TCP payload bytes each way per hour (what MQTT and, on a
bench, TLS carry; the link's IP/TCP headers added from the kernel's segment
counts), and a breakdown: the connection's first seconds (CONNECT, CONNACK,
SUBSCRIBE, the retained status and state), the records' messages (their
payloads as the subscriber got them), and the rest (MQTT framing, PUBACKs,
keepalive pings, state updates). Plain TCP here: TLS 1.3 adds ~22 bytes to
every packet each way and its handshake to every connection
(bench/bench_link_cost.py measures those).
"""

from __future__ import annotations

import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.byte_proxy import ByteProxy  # noqa: E402
from tests.support import AgentProcess, Broker, Recorder, sim_config  # noqa: E402

CONNECT_WINDOW_S = 5.0  # the connection's first seconds: connect, subscribe, retained


def start(workdir: Path, broker: Broker, contract: int) -> tuple[ByteProxy, AgentProcess]:
    proxy = ByteProxy(broker.port)
    workdir.mkdir()
    config = sim_config(
        workdir,
        proxy.port,
        {
            "bench": {"id": f"wire-contract-{contract}"},
            "sim": {"speed": 1, "seed": 7 + contract},
            "sampling": {"sample_interval_s": 5, "publish_interval_s": 60},
            # The reference config's link: keepalive 540 s (README, "The link's own cost").
            "mqtt": {"contract": contract, "telemetry_batch_s": 300, "keepalive_s": 540},
            "commands": {"trusted_keys": str(workdir / "keys")},
        },
    )
    return proxy, AgentProcess(config, workdir)


def main() -> int:
    minutes = float(sys.argv[1]) if len(sys.argv) > 1 else 35.0
    with tempfile.TemporaryDirectory(prefix="wire-hour-") as tmp:
        work = Path(tmp)
        broker = Broker(work).start()
        recorder = Recorder(broker.port)
        runs = {c: start(work / f"contract-{c}", broker, c) for c in (1, 2)}
        started = time.monotonic()
        first: dict[int, tuple[int, int]] = {}
        try:
            time.sleep(CONNECT_WINDOW_S)
            for contract, (proxy, _) in runs.items():
                flow = proxy.flows()[0]
                first[contract] = (flow.up, flow.down)
            time.sleep(max(0.0, minutes * 60 - (time.monotonic() - started)))
            flows = {c: proxy.flows() for c, (proxy, _) in runs.items()}
        finally:
            for proxy, agent in runs.values():
                agent.stop()
                proxy.close()
            recorder.close()
            broker.stop()
        hours = (time.monotonic() - started) / 3600
        print(f"{platform.machine()}, {minutes:g} min of real time per agent, plain TCP")
        for contract, flow_list in flows.items():
            up = sum(f.up for f in flow_list)
            down = sum(f.down for f in flow_list)
            wire = sum(f.wire for f in flow_list)
            prefix = f"smartbench/wire-contract-{contract}/"
            leaves = ("telemetry", "event") if contract == 1 else ("v2",)
            wires = [m for m in recorder.wire if m.topic.startswith(prefix)]
            records_msgs = [m for m in wires if m.topic.rsplit("/", 1)[-1] in leaves]
            payload = sum(len(m.payload) for m in records_msgs)
            connect = sum(first[contract])
            print(
                f"contract {contract}: {(up + down) / hours / 1000:.1f} kB/h TCP payload "
                f"(up {up / hours / 1000:.1f}, down {down / hours / 1000:.1f}); "
                f"{wire / hours / 1000:.1f} kB/h with IP/TCP headers; "
                f"{len(flow_list)} connection(s)"
            )
            rest = (up + down - payload) / hours / 1000
            each = payload / max(1, len(records_msgs))
            print(
                f"  records: {len(records_msgs) / hours:.0f} messages/h, payloads "
                f"{payload / hours / 1000:.1f} kB/h ({each:.0f} B each); everything else "
                f"(framing, PUBACKs, pings, state, the connect) {rest:.1f} kB/h; the "
                f"connection's first {CONNECT_WINDOW_S:g} s: {connect} B"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
