"""`bench-ops bridge` as a service: the bridge started, its summary logged (and given to
systemd as STATUS=) and its status published every `status_interval_s`, until SIGTERM or
SIGINT (exit 0), a refusal by the broker (77) or the end of paho's network thread (70);
then the offline status and a clean disconnect that keeps the session."""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Callable
from types import FrameType

from bench_agent.clock import next_due
from bench_agent.ops.bridge import EXIT_REFUSED, Bridge, BridgeOptions
from bench_agent.systemd import Notifier

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAILED = 70  # EX_SOFTWARE: paho's network thread ended


def run(bridge: Bridge, notifier: Notifier, *, install_signals: bool = True) -> int:
    def on_signal(_signum: int, _frame: FrameType | None) -> None:
        bridge.stop_event.set()

    if install_signals:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, on_signal)
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
