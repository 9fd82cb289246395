"""`bench-ops bridge` as a service (its flags: `register`): the bridge started, its
summary logged (and given to systemd as STATUS=) and its status published every
`status_interval_s`, until SIGTERM or SIGINT (exit 0), a refusal by the broker (77) or
the end of paho's network thread (70); then the offline status and a clean disconnect
that keeps the session."""

from __future__ import annotations

import argparse
import logging
import os
import socket
import time
from collections.abc import Callable

from bench_agent.clock import next_due
from bench_agent.errors import UsageError
from bench_agent.logsetup import register_secret, setup_logging
from bench_agent.ops.bridge import Bridge, BridgeOptions
from bench_agent.ops.broker_access import (
    TOPIC_LEVEL,
    BrokerAccess,
    add_broker_options,
    check_prefix,
)
from bench_agent.ops.service import EXIT_FAILED, EXIT_OK, EXIT_REFUSED, stop_on_signals
from bench_agent.systemd import Notifier

log = logging.getLogger(__name__)


def run(bridge: Bridge, notifier: Notifier, *, install_signals: bool = True) -> int:
    if install_signals:
        stop_on_signals(bridge.stop_event)
    o = bridge.options
    log.info(
        "bridge %s: %s -> %s/+/{telemetry,event}, state and status mirrored",
        o.client_id, o.v2_filter, o.v1_prefix,
    )  # fmt: skip
    bridge.start()
    notifier.ready()
    interval = o.status_interval_s
    last = time.monotonic()
    due = last + interval
    previous = bridge.counters()
    code = EXIT_OK
    while not bridge.stop_event.wait(max(0.0, min(1.0, due - time.monotonic()))):
        if not bridge.network_thread_alive():
            log.error("paho's network thread ended: stopping (exit %d)", EXIT_FAILED)
            code = EXIT_FAILED
            break
        now = time.monotonic()
        if now < due:
            continue
        counters, line = bridge.summary(previous, now - last)
        log.info("%s", line)
        notifier.status(line)
        bridge.publish_status()
        previous, last, due = counters, now, next_due(due, now, interval)
    if bridge.fatal is not None:
        code = EXIT_REFUSED
    notifier.stopping()
    bridge.stop(reason="refused" if bridge.fatal else "shutdown")
    return code


def run_bridge(options: BridgeOptions, notifier_factory: Callable[[], Notifier] = Notifier) -> int:
    with notifier_factory() as notifier:
        return run(Bridge(options), notifier)


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    br = commands.add_parser("bridge", help="republish contract v2 batches as v1 JSON (a service)")
    add_broker_options(br)
    br.add_argument("--prefix", default="smartbench", help="the benches' topic prefix")
    br.add_argument(
        "--v1-prefix",
        default="smartbench-v1",
        help="where the v1 messages go (default: %(default)s)",
    )
    share = br.add_mutually_exclusive_group()
    share.add_argument(
        "--group",
        default="bench-ops-bridge",
        help="shared subscription group (default: %(default)s)",
    )
    share.add_argument(
        "--no-share",
        action="store_true",
        help="a plain subscription instead (one bridge only; kept over a mosquitto restart)",
    )
    br.add_argument(
        "--client-id",
        default=f"bench-ops-bridge-{socket.gethostname()}",
        help="stable per instance: its persistent session (default: bench-ops-bridge-HOSTNAME)",
    )
    br.add_argument(
        "--session-expiry", type=int, default=86_400, help="seconds the broker keeps the session"
    )
    br.add_argument(
        "--status-interval", type=float, default=60.0, help="seconds between summaries/status"
    )
    br.add_argument(
        "--max-message-bytes", type=int, default=65_536, help="largest v1 telemetry message"
    )
    br.add_argument("--debug", action="store_true", help="log at DEBUG")
    br.set_defaults(run=_run)


def _run(opts: argparse.Namespace) -> int:
    check_prefix("--prefix", opts.prefix)
    check_prefix("--v1-prefix", opts.v1_prefix)
    if opts.prefix == opts.v1_prefix:
        raise UsageError("--prefix and --v1-prefix must differ")
    for flag, word in (("--group", opts.group), ("--client-id", opts.client_id)):
        if not TOPIC_LEVEL.fullmatch(word):
            raise UsageError(f"{flag} {word!r}: one topic level, without + # or /")
    if opts.session_expiry < 0 or opts.status_interval <= 0 or opts.max_message_bytes < 1024:
        raise UsageError(
            "--session-expiry >= 0, --status-interval > 0, --max-message-bytes >= 1024"
        )
    for flag, path in (
        ("--tls-ca", opts.tls_ca),
        ("--tls-cert", opts.tls_cert),
        ("--tls-key", opts.tls_key),
    ):
        if path is not None and not os.access(path, os.R_OK):
            raise UsageError(f"{flag} {path}: cannot read it")
    access = BrokerAccess.from_options(opts)
    options = BridgeOptions(
        access=access,
        client_id=opts.client_id,
        prefix=opts.prefix,
        v1_prefix=opts.v1_prefix,
        group=None if opts.no_share else opts.group,
        session_expiry_s=opts.session_expiry,
        status_interval_s=opts.status_interval,
        max_message_bytes=opts.max_message_bytes,
    )
    setup_logging(opts.debug)
    if access.password:
        register_secret(access.password)
    return run_bridge(options)
