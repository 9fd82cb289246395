"""`bench-ops fleet` on the network: one MQTT client subscribed to what `fleet.Fleet`
reads, feeding it from paho's thread; `--once` prints once the retained messages have
come (no new bench for `SETTLE_S`, at most `ONCE_MAX_S` after the subscription), else
the table is drawn again on every change (and every second, for the ages) until Ctrl-C."""

from __future__ import annotations

import argparse
import logging
import math
import ssl
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import NoReturn, TextIO

import paho.mqtt.client as paho
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from bench_agent.errors import UsageError
from bench_agent.ops.broker_access import BrokerAccess, add_broker_options, check_prefix, refusals
from bench_agent.ops.fleet import Fleet
from bench_agent.ops.fleet_view import render_json, render_table

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_NO_CONNECTION = 3
SETTLE_S = 1.0  # --once: no new bench for this long, and the table is complete
ONCE_MAX_S = 5.0  # --once: at most this long after the subscription
CONNECT_TIMEOUT_S = 10.0
CLEAR = "\x1b[H\x1b[2J"  # cursor home, clear the screen (as demo.py)


@dataclass(frozen=True)
class FleetOptions:
    access: BrokerAccess
    prefix: str = "smartbench"
    v1_prefix: str = "smartbench-v1"
    batch_s: float = 300.0
    once: bool = False
    as_json: bool = False


class FleetWatch:
    """The client and the fleet it feeds; every read of the fleet holds the lock."""

    def __init__(self, options: FleetOptions, now: Callable[[], float] = time.monotonic) -> None:
        self.options = options
        self.now = now
        self.fleet = Fleet(options.prefix, options.v1_prefix, options.batch_s, now())
        self.lock = threading.Lock()
        self.changed = threading.Event()
        self.subscribed = threading.Event()
        self.failure: str | None = None
        self.last_new_bench = now()

    def client(self) -> paho.Client:
        client = self.options.access.client(f"bench-ops-fleet-{uuid.uuid4().hex[:12]}")
        client.suppress_exceptions = True  # a bug on one message must not end the thread
        client.on_connect = self._on_connect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        return client

    def _on_connect(
        self,
        client: paho.Client,
        _userdata: object,
        _flags: paho.ConnectFlags,
        reason: ReasonCode,
        _properties: Properties | None,
    ) -> None:
        if reason.is_failure:
            self.failure = f"the broker refused the connection: {reason}"
            self.subscribed.set()
            return
        client.subscribe([(topic, 1) for topic in self.fleet.topics()])

    def _on_subscribe(
        self,
        _client: paho.Client,
        _userdata: object,
        _mid: int,
        reasons: list[ReasonCode],
        _properties: Properties | None,
    ) -> None:
        refused = refusals(reasons)
        if refused:
            log.warning("the broker refused a subscription: %s", ", ".join(refused))
        with self.lock:
            if not self.subscribed.is_set():
                self.fleet.started_at = self.last_new_bench = self.now()
        self.subscribed.set()

    def _on_message(self, _client: paho.Client, _userdata: object, msg: paho.MQTTMessage) -> None:
        with self.lock:
            known = len(self.fleet.benches)
            if not self.fleet.feed(msg.topic, bytes(msg.payload), self.now()):
                log.debug("skipped a message on %s", msg.topic)
            if len(self.fleet.benches) > known:
                self.last_new_bench = self.now()
        self.changed.set()

    def settled(self) -> bool:
        """--once: no new bench for SETTLE_S, or ONCE_MAX_S since the subscription."""
        with self.lock:
            now = self.now()
            return (
                now - self.last_new_bench >= SETTLE_S or now - self.fleet.started_at >= ONCE_MAX_S
            )

    def render(self) -> str:
        with self.lock:
            rows = self.fleet.rows(self.now())
        if self.options.as_json:
            return render_json(rows, indent=None if not self.options.once else 2)
        return render_table(rows, datetime.now(UTC))


def run_fleet(options: FleetOptions, out: TextIO = sys.stdout) -> int:
    """Connect, subscribe, print (once, or on every change until Ctrl-C)."""
    watch = FleetWatch(options)
    client = watch.client()
    host, port = options.access.host, options.access.port
    try:
        client.connect(host, port, keepalive=30)
    except (OSError, ssl.SSLError, ValueError) as exc:
        print(f"bench-ops: cannot connect to {host}:{port}: {exc}", file=sys.stderr)
        return EXIT_NO_CONNECTION
    client.loop_start()
    try:
        if not watch.subscribed.wait(CONNECT_TIMEOUT_S) or watch.failure:
            failure = watch.failure or f"no subscription within {CONNECT_TIMEOUT_S:g} s"
            print(f"bench-ops: {failure}", file=sys.stderr)
            return EXIT_NO_CONNECTION
        if options.once:
            while not watch.settled():
                time.sleep(0.05)
            print(watch.render(), file=out, flush=True)
            return EXIT_OK
        return _live(watch, out)
    except KeyboardInterrupt:  # Ctrl-C, wherever it lands
        return EXIT_OK
    finally:
        client.disconnect()
        client.loop_stop()


def _live(watch: FleetWatch, out: TextIO) -> NoReturn:
    """Redraw on every change (at most 5 a second) and every second, until Ctrl-C."""
    while True:
        watch.changed.wait(1.0)
        watch.changed.clear()
        screen = watch.render()
        if watch.options.as_json:
            print(screen, file=out, flush=True)  # one document a line
        else:
            out.write(CLEAR + screen + "\n")
            out.flush()
        time.sleep(0.2)


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    fl = commands.add_parser("fleet", help="every bench at a glance, the worst first")
    add_broker_options(fl)
    fl.add_argument("--prefix", default="smartbench", help="the benches' topic prefix")
    fl.add_argument("--v1-prefix", default="smartbench-v1", help="the bridge's v1 prefix")
    fl.add_argument(
        "--batch-s",
        type=float,
        default=300.0,
        help="the benches' batch interval: STALE after two without a record (default: 300)",
    )
    fl.add_argument("--once", action="store_true", help="print once and exit")
    fl.add_argument("--json", action="store_true", help="one JSON document (a list of benches)")
    fl.set_defaults(run=_run)


def _run(opts: argparse.Namespace) -> int:
    check_prefix("--prefix", opts.prefix)
    check_prefix("--v1-prefix", opts.v1_prefix)
    if not (opts.batch_s > 0 and math.isfinite(opts.batch_s)):
        raise UsageError("--batch-s must be a positive number of seconds")
    options = FleetOptions(
        access=BrokerAccess.from_options(opts),
        prefix=opts.prefix,
        v1_prefix=opts.v1_prefix,
        batch_s=opts.batch_s,
        once=opts.once,
        as_json=opts.json,
    )
    return run_fleet(options)
