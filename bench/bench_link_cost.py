"""The MQTT link's own cost in bytes: connects, reconnects, keepalives, topics.

    .venv/bin/python bench/bench_link_cost.py [--scale S] [--intervals N] [--json FILE]
    .venv/bin/python bench/bench_link_cost.py --quick

A real mosquitto runs the shipped deploy/broker/mosquitto.conf with a PKI made by
deploy/broker/make-pki.sh (EC P-256, a CA and the broker's certificate: the
project's real chain), on a free loopback port; the bench's `MqttLink` reaches it
through bench/byte_proxy.py, which counts the TCP payload bytes each way per
connection and, from TCP_INFO, the segments (a metered link also bills their
IPv4 + TCP headers, 52 bytes each: "wire" below). The link runs as on a bench:
bench id `tgk-alun-alun-01`, MQTT 5, its Last Will, its `cmd` subscription.

Measured:
* a TLS handshake alone, full and resumed (plain `ssl`, the link's context);
* connect: TCP + TLS + CONNECT/CONNACK + SUBSCRIBE/SUBACK, the first connection;
* reconnect: the proxy cuts the connection, the link comes back; with the TLS
  session offered again (the default) and without (`reuse_tls_sessions=False`,
  what every reconnect cost before); median of 3;
* one keepalive exchange (PINGREQ + PINGRESP over TLS, and the bare ACK): an idle
  link with a 2 s keepalive, divided by the PINGREQs it sent (paho's own log);
* per hour idle at keepalive 60 / 300 / 540 / 600 s: 3,600 / keepalive exchanges;
* what a telemetry message every 300 s does to the pings: time scaled by S
  (default 30: keepalive 2 / 10 / 20 s, a message every 10 s) for N intervals
  (default 12: one scaled hour); the PINGREQs the link sent in that hour.
  (paho 2.2.0 pings every keepalive however much it sends: eclipse-paho/
  paho.mqtt.python#813; its `_packet_write` returns before it notes the time);
* a silent bench (the proxy frozen: no packet, no FIN) at keepalive 10 s: the
  seconds from its last packet until mosquitto closes the connection (that is when
  it publishes the Last Will);
* one telemetry message (bench/telemetry_body.json as one record, ~1.6 kB), QoS 1
  PUBLISH + PUBACK: the first on a connection (its topic and alias), the next
  ones (the alias only), and against a broker with `max_topic_alias 0`.

--quick skips the scaled keepalive run (for tests/test_link_cost.py).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import platform
import queue
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.byte_proxy import HEADER_BYTES, ByteProxy, Flow  # noqa: E402
from bench_agent.config import MqttConfig  # noqa: E402
from bench_agent.link.mqtt import Acked, Connected, LinkEvent, MqttLink, Will  # noqa: E402
from tests.tls_broker import TlsBroker, make_pki  # noqa: E402

BENCH_ID = "tgk-alun-alun-01"
TOPIC = f"smartbench/{BENCH_ID}/telemetry"
WILL = Will(
    f"smartbench/{BENCH_ID}/status",
    json.dumps(
        {
            "v": 1,
            "bench": BENCH_ID,
            "online": False,
            "reason": "connection_lost",
            "boot_id": "5f0c2a7e9b8d4c1f",
            "agent_version": "0.9.0",
        },
        separators=(",", ":"),
    ).encode(),
)
TELEMETRY = json.dumps(
    {
        "v": 1,
        "bench": BENCH_ID,
        "records": [json.loads((REPO / "bench/telemetry_body.json").read_text())],
    },
    separators=(",", ":"),
).encode()


@dataclass(frozen=True)
class Cost:
    up: int
    down: int
    wire: int  # both ways, with IPv4 + TCP headers of every segment

    @classmethod
    def of(cls, flow: Flow, divide: float = 1) -> Cost:
        return cls(round(flow.up / divide), round(flow.down / divide), round(flow.wire / divide))

    @property
    def total(self) -> int:
        return self.up + self.down

    def row(self) -> str:
        return f"{self.total:,} B ({self.up:,} up, {self.down:,} down) | {self.wire:,} B"


class Link:
    """An `MqttLink` as a bench runs it, with its events in a queue."""

    def __init__(self, cfg: MqttConfig, *, reuse_tls_sessions: bool = True) -> None:
        self.events: queue.SimpleQueue[LinkEvent] = queue.SimpleQueue()
        self.link = MqttLink(
            cfg,
            will=WILL,
            subscriptions=[f"smartbench/{BENCH_ID}/cmd"],
            on_event=self.events.put,
            reuse_tls_sessions=reuse_tls_sessions,
        )
        self.link.start()

    def next(self, kind: type, timeout_s: float = 15.0) -> Any:
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            try:
                event = self.events.get(timeout=left)
            except queue.Empty:
                break
            if isinstance(event, kind):
                return event
        raise AssertionError(f"no {kind.__name__} in {timeout_s} s")

    def publish_acked(self, topic: str, payload: bytes) -> None:
        mid = self.link.publish(topic, payload)
        if mid is None:
            raise AssertionError("the link refused a publish while connected")
        while self.next(Acked).mid != mid:
            pass

    def close(self) -> None:
        self.link.close()


class Pings(logging.Handler):
    """When the link sent each PINGREQ (paho logs every packet it sends at DEBUG)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.times: list[float] = []

    @contextmanager
    def recording(self) -> Iterator[None]:
        paho_log = logging.getLogger("bench_agent.paho")
        saved = paho_log.level, paho_log.propagate
        paho_log.setLevel(logging.DEBUG)
        paho_log.propagate = False  # every packet: not for the console
        paho_log.addHandler(self)
        try:
            yield
        finally:
            paho_log.removeHandler(self)
            paho_log.setLevel(saved[0])
            paho_log.propagate = saved[1]

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("Sending PINGREQ"):
            self.times.append(time.monotonic())

    def between(self, start: float, end: float) -> int:
        return sum(start <= t < end for t in self.times)


PINGS = Pings()


@contextmanager
def running(workdir: Path, pki: Path, extra: str = "") -> Iterator[tuple[TlsBroker, ByteProxy]]:
    workdir.mkdir()
    broker = TlsBroker(workdir, pki, extra).start()
    try:
        with ByteProxy(broker.port) as proxy:
            yield broker, proxy
    finally:
        broker.stop()


def tls_handshake(proxy: ByteProxy, context: ssl.SSLContext, session: Any) -> tuple[Cost, Any]:
    """One TLS handshake alone through the proxy, with the tickets that follow it."""
    with socket.create_connection(("127.0.0.1", proxy.port)) as raw:
        tls = context.wrap_socket(raw, server_hostname="localhost", session=session)
        tls.settimeout(0.3)
        with contextlib.suppress(TimeoutError, ssl.SSLError):
            tls.recv(1)  # TLS 1.3 tickets come after the handshake: read them
        flow = proxy.wait_quiet(0.2)[-1]
        resumed, new_session = tls.session_reused, tls.session
        tls.close()
    if resumed != (session is not None):
        raise AssertionError(f"resumed {resumed}, offered a session: {session is not None}")
    return Cost.of(flow), new_session


def connection_costs(broker: TlsBroker, proxy: ByteProxy, reuse: bool) -> tuple[Cost, Cost]:
    """(the first connection, the median reconnect) of one link."""
    link = Link(broker.link_config(BENCH_ID, proxy.port), reuse_tls_sessions=reuse)
    try:
        flows = []
        for generation in range(1, 5):
            if link.next(Connected).generation != generation:
                raise AssertionError("a connection was lost on its own")
            flows.append(proxy.wait_quiet(0.3)[-1])
            proxy.cut()
        return Cost.of(flows[0]), median([Cost.of(f) for f in flows[1:]])
    finally:
        link.close()


def keepalive_exchange(broker: TlsBroker, proxy: ByteProxy) -> tuple[Cost, int]:
    """One PINGREQ/PINGRESP exchange on an idle link (2 s keepalive), and how many."""
    link = Link(broker.link_config(BENCH_ID, proxy.port, keepalive_s=2))
    try:
        link.next(Connected)
        before = proxy.wait_quiet(0.3)[-1]
        start = time.monotonic()
        time.sleep(8.5)
        after = proxy.wait_quiet(0.3)[-1]
        pings = PINGS.between(start, time.monotonic())
        return Cost.of(after.minus(before), pings), pings
    finally:
        link.close()


def pings_with_telemetry(
    broker: TlsBroker, proxy: ByteProxy, scale: int, intervals: int
) -> dict[int, float]:
    """PINGREQs per hour at keepalive 60/300/600 s with a telemetry message every 300 s,
    time scaled down by `scale`: counted over `intervals` intervals from half an interval
    after connecting (no ping falls on the window's edges)."""
    per_hour = {}
    for keepalive in (60, 300, 600):
        link = Link(broker.link_config(BENCH_ID, proxy.port, keepalive_s=keepalive // scale))
        try:
            link.next(Connected)
            period = 300 / scale
            start = time.monotonic()
            for n in range(1, intervals + 2):
                time.sleep(max(0.0, start + n * period - time.monotonic()))
                link.publish_acked(TOPIC, TELEMETRY)
            window = start + period / 2
            pings = PINGS.between(window, window + intervals * period)
            per_hour[keepalive] = pings * 12 / intervals
        finally:
            link.close()
    return per_hour


def silent_bench(broker: TlsBroker) -> float:
    """Seconds from a frozen link's last packet to mosquitto's keepalive disconnect
    (which publishes the Last Will), at keepalive 10 s."""
    with ByteProxy(broker.port) as proxy:
        link = Link(broker.link_config(BENCH_ID, proxy.port, keepalive_s=10))
        try:
            link.next(Connected)
            proxy.wait_quiet(0.3)
            proxy.freeze()
            deadline = time.monotonic() + 30
            while (flow := proxy.last()).server_ended is None:
                if time.monotonic() > deadline:
                    raise AssertionError("mosquitto never dropped the silent bench")
                time.sleep(0.02)
            return flow.server_ended - flow.last_up
        finally:
            link.close()


def message_costs(broker: TlsBroker, proxy: ByteProxy, count: int = 5) -> list[Cost]:
    """PUBLISH + PUBACK of the same telemetry message `count` times on one connection."""
    link = Link(broker.link_config(BENCH_ID, proxy.port))
    try:
        link.next(Connected)
        costs = []
        for _ in range(count):
            before = proxy.wait_quiet(0.3)[-1]
            link.publish_acked(TOPIC, TELEMETRY)
            costs.append(Cost.of(proxy.wait_quiet(0.3)[-1].minus(before)))
        return costs
    finally:
        link.close()


def machine() -> str:
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or "?",
    )
    mosquitto = subprocess.run(["mosquitto", "-h"], capture_output=True, text=True, check=False)
    version = mosquitto.stdout.splitlines()[0].removeprefix("mosquitto version ")
    return (
        f"{platform.machine()}, {os.cpu_count()} cores ({model}), Python "
        f"{platform.python_version()}, paho-mqtt {package_version('paho-mqtt')}, "
        f"mosquitto {version}, {ssl.OPENSSL_VERSION}"
    )


def measure(scale: int, intervals: int, quick: bool) -> dict[str, Any]:
    results: dict[str, Any] = {"machine": machine()}
    with tempfile.TemporaryDirectory(prefix="link-cost-") as tmp, PINGS.recording():
        base = Path(tmp)
        pki = make_pki(base / "pki", BENCH_ID)
        with running(base / "shipped", pki) as (broker, proxy):
            for version, key in ((None, "tls"), (ssl.TLSVersion.TLSv1_2, "tls12")):
                context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
                context.load_cert_chain(pki / f"{BENCH_ID}.crt", pki / f"{BENCH_ID}.key")
                context.load_verify_locations(pki / "ca.crt")
                if version is not None:
                    context.maximum_version = version
                results[f"{key}_full"], session = tls_handshake(proxy, context, None)
                results[f"{key}_resumed"], _ = tls_handshake(proxy, context, session)
            results["connect"], results["reconnect_resumed"] = connection_costs(broker, proxy, True)
            _, results["reconnect_full"] = connection_costs(broker, proxy, False)
            results["keepalive"], results["keepalive_pings"] = keepalive_exchange(broker, proxy)
            exchange: Cost = results["keepalive"]
            results["idle_per_hour"] = {
                k: Cost(
                    exchange.up * 3600 // k, exchange.down * 3600 // k, exchange.wire * 3600 // k
                )
                for k in (60, 300, 540, 600)  # 540: config/bench-agent.toml
            }
            results["messages_alias"] = message_costs(broker, proxy)
            if not quick:
                results["pings_per_hour_with_telemetry"] = pings_with_telemetry(
                    broker, proxy, scale, intervals
                )
                results["silent_bench_dropped_after_s"] = silent_bench(broker)
        with running(base / "no-alias", pki, "max_topic_alias 0") as (broker, proxy):
            results["messages_no_alias"] = message_costs(broker, proxy)
    return results


def median(costs: list[Cost]) -> Cost:
    return sorted(costs, key=lambda c: c.total)[len(costs) // 2]


def report(r: dict[str, Any]) -> str:
    lines = [
        f"Machine: {r['machine']}",
        f"Bytes: TCP payload both ways (up: bench -> broker) | wire: + {HEADER_BYTES} B of "
        "IPv4/TCP headers per segment (loopback segments: a 1,500-byte MTU cuts a "
        "handshake's flights into more)",
        "",
        "| what | TCP payload | wire |",
        "|---|---|---|",
        f"| TLS 1.3 handshake alone, full (+ the tickets after it) | {r['tls_full'].row()} |",
        f"| TLS 1.3 handshake alone, resumed (+ its new ticket) | {r['tls_resumed'].row()} |",
        f"| TLS 1.2 handshake alone (client capped), full | {r['tls12_full'].row()} |",
        f"| TLS 1.2 handshake alone (client capped), resumed | {r['tls12_resumed'].row()} |",
        f"| connect: TLS + CONNECT/CONNACK + SUBSCRIBE/SUBACK | {r['connect'].row()} |",
        f"| reconnect, full handshake (before) | {r['reconnect_full'].row()} |",
        f"| reconnect, TLS session resumed (now) | {r['reconnect_resumed'].row()} |",
        f"| one keepalive exchange (PINGREQ + PINGRESP; mean of {r['keepalive_pings']}) "
        f"| {r['keepalive'].row()} |",
    ]
    for k, cost in r["idle_per_hour"].items():
        lines.append(
            f"| per hour idle, keepalive {k} s ({3600 / k:.3g} exchanges) | {cost.row()} |"
        )
    alias, plain = r["messages_alias"], r["messages_no_alias"]
    later, plain_mid = median(alias[1:]), median(plain)
    lines += [
        f"| telemetry message ({len(TELEMETRY):,} B payload), no alias (`max_topic_alias 0`) "
        f"| {plain_mid.row()} |",
        f"| the same, first on a connection (topic + alias) | {alias[0].row()} |",
        f"| the same, later (alias only, topic `{TOPIC}`) | {later.row()} |",
    ]
    if "pings_per_hour_with_telemetry" in r:
        exchange = r["keepalive"]
        for k, pings in r["pings_per_hour_with_telemetry"].items():
            lines.append(
                f"| per hour, keepalive {k} s, a telemetry message every 300 s: "
                f"{pings:g} exchanges (time scaled) | {round(exchange.total * pings):,} B "
                f"| {round(exchange.wire * pings):,} B |"
            )
        lines.append(
            "| a silent bench at keepalive 10 s: last packet to mosquitto's disconnect "
            f"(Last Will) | {r['silent_bench_dropped_after_s']:.1f} s (1.5 x 10 = 15) | |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--scale", type=int, default=30, help="time scale of the keepalive run")
    parser.add_argument(
        "--intervals", type=int, default=12, help="telemetry intervals per keepalive"
    )
    parser.add_argument("--quick", action="store_true", help="skip the scaled keepalive run")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("bench_agent.link").setLevel(logging.CRITICAL)  # cut links log errors
    results = measure(args.scale, args.intervals, args.quick)
    print(report(results))
    if args.json:
        plain = {
            k: asdict(v)
            if isinstance(v, Cost)
            else [asdict(c) for c in v]
            if isinstance(v, list)
            else v
            for k, v in results.items()
        }
        plain["idle_per_hour"] = {k: asdict(c) for k, c in results["idle_per_hour"].items()}
        args.json.write_text(json.dumps(plain, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
