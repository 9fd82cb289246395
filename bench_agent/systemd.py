"""Talking to systemd: readiness, status line, stopping, and the watchdog (sd_notify(3)).

The unit is `Type=notify` with `WatchdogSec=`: systemd waits for READY=1 before
the start counts as done, shows our STATUS= in `systemctl status`, and kills and
restarts the agent when WATCHDOG=1 stops arriving. So the watchdog is only as
honest as the code that pings it: `WatchdogGate` pings from the main loop, and
only while the loop reports itself healthy.

Everything here is a no-op off systemd (no NOTIFY_SOCKET), and nothing here ever
raises or blocks because of the notification socket: a missing, stale or full
socket costs one failed `sendto` and a log line, never the bench.

Why not `systemd.daemon.notify` (systemd-python 235 over libsystemd 252)? It is
correct when PID 1 reads the socket, but measured here:
- with a receiver that stops reading, the 11th message blocks `notify()` for
  ever (libsystemd sends on a blocking socket; `net.unix.max_dgram_qlen` is
  10), which would wedge the main loop inside the very call meant to prove it
  is alive;
- a path that does not exist raises FileNotFoundError, a relative path OSError.
The protocol is one datagram of `KEY=VALUE` lines to an AF_UNIX SOCK_DGRAM
address (a path, or `@name` for the abstract namespace), so we send it
ourselves on a non-blocking socket.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import threading
from collections.abc import Mapping
from types import TracebackType
from typing import Protocol

log = logging.getLogger(__name__)

MAX_STATUS_CHARS = 160  # one line of `systemctl status`; longer text is cut with "…"
USEC_PER_S = 1_000_000
# sd_watchdog_enabled(3) rejects USEC_INFINITY (2^64 - 1) and anything above.
_USEC_INFINITY = 2**64 - 1


def _parse_address(raw: str | None) -> bytes | None:
    """NOTIFY_SOCKET -> a sockaddr_un path (bytes), or None if absent or unusable.

    As sd_notify(3): an absolute path, or `@name` for the abstract namespace
    (leading NUL). Anything else (relative paths, `vsock:` addresses from newer
    systemd) is not something this agent can reach, so it is ignored.
    """
    if not raw:
        return None
    if raw.startswith("@") and len(raw) > 1:
        return b"\0" + os.fsencode(raw[1:])
    if raw.startswith("/"):
        return os.fsencode(raw)
    return None


def _parse_watchdog_usec(environ: Mapping[str, str], pid: int) -> int | None:
    """WATCHDOG_USEC in µs if the watchdog is meant for `pid`, as sd_watchdog_enabled(3).

    WATCHDOG_PID, when set, must be our pid: a child that inherited the
    environment (or a process started by the agent) must not think the watchdog
    is its own.
    """
    raw_usec = environ.get("WATCHDOG_USEC")
    if raw_usec is None:
        return None
    raw_pid = environ.get("WATCHDOG_PID")
    if raw_pid is not None:
        try:
            if int(raw_pid) != pid:
                return None
        except ValueError:
            return None
    try:
        usec = int(raw_usec)
    except ValueError:
        return None
    if usec <= 0 or usec >= _USEC_INFINITY:
        return None
    return usec


def _one_line(text: str) -> str:
    """Sanitise STATUS= text: a newline would start a new assignment (e.g. `READY=1`)."""
    flat = " ".join("".join(c if c.isprintable() else " " for c in text).split())
    if len(flat) > MAX_STATUS_CHARS:
        flat = flat[: MAX_STATUS_CHARS - 1] + "…"
    return flat


class Notifier:
    """The sd_notify(3) client of this process. Thread-safe; never raises for socket trouble.

    `environ` and `pid` are read once, at construction (defaults: `os.environ`,
    `os.getpid()`), so a test can point it at its own socket.
    """

    def __init__(self, environ: Mapping[str, str] | None = None, *, pid: int | None = None) -> None:
        env = os.environ if environ is None else environ
        self._address = _parse_address(env.get("NOTIFY_SOCKET"))
        self._watchdog_usec = _parse_watchdog_usec(env, os.getpid() if pid is None else pid)
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._last_status: str | None = None
        self._reported_errors: set[int] = set()
        self._closed = False
        raw = env.get("NOTIFY_SOCKET")
        if raw and self._address is None:
            log.warning(
                "NOTIFY_SOCKET=%r is not a path or @name; systemd will not hear from us", raw
            )

    @property
    def enabled(self) -> bool:
        """True when there is a notification socket to talk to (we run under systemd)."""
        return self._address is not None

    def watchdog_interval_s(self) -> float | None:
        """The unit's WatchdogSec= in seconds, or None when no watchdog is meant for us.

        Ping at half of it (as sd_watchdog_enabled(3) advises): `WatchdogGate` does.
        """
        if self._watchdog_usec is None:
            return None
        return self._watchdog_usec / USEC_PER_S

    def ready(self) -> bool:
        """Start-up finished (config, storage, hardware up): systemd marks the unit active."""
        return self.send("READY=1")

    def stopping(self) -> bool:
        """Shutdown began: systemd shows `deactivating` instead of a dead main loop."""
        return self.send("STOPPING=1")

    def status(self, text: str) -> bool:
        """Set the one-line status of `systemctl status`; sent only when it changed.

        Returns True when a datagram went out. A failed send is retried on the
        next call with the same text.
        """
        line = _one_line(text)
        with self._lock:
            if line == self._last_status:
                return False
        sent = self.send(f"STATUS={line}")
        if sent:
            with self._lock:
                self._last_status = line
        return sent

    def watchdog(self) -> bool:
        """One keep-alive ping (WATCHDOG=1). `WatchdogGate.tick` paces and gates it."""
        return self.send("WATCHDOG=1")

    def extend_timeout(self, seconds: float) -> bool:
        """Ask for `seconds` more before a start or stop times out (EXTEND_TIMEOUT_USEC=)."""
        return self.send(f"EXTEND_TIMEOUT_USEC={max(0, round(seconds * USEC_PER_S))}")

    def send(self, message: str) -> bool:
        """Send raw `KEY=VALUE` lines; True if the datagram was accepted by the kernel."""
        address = self._address
        if address is None:
            return False
        data = message.encode("utf-8", "replace")
        with self._lock:
            if self._closed:
                return False
            try:
                if self._sock is None:
                    # Non-blocking: a receiver that stops reading (full queue) must
                    # cost us EAGAIN, not a wedged main loop. Close-on-exec by
                    # default in Python, so children never inherit it.
                    self._sock = socket.socket(
                        socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK
                    )
                self._sock.sendto(data, address)
            except OSError as exc:
                self._report(exc)
                return False
        return True

    def _report(self, exc: OSError) -> None:
        """Warn once per kind of failure: a watchdog ping every 15 s must not flood the journal."""
        code = exc.errno if exc.errno is not None else -1
        if code in self._reported_errors:
            log.debug("sd_notify failed again: %s", exc)
            return
        self._reported_errors.add(code)
        why = "receiver not reading" if code in (errno.EAGAIN, errno.EWOULDBLOCK) else str(exc)
        log.warning("cannot notify systemd (%s); carrying on", why)

    def close(self) -> None:
        """Release the socket. Idempotent; later calls send nothing."""
        with self._lock:
            self._closed = True
            if self._sock is not None:
                self._sock.close()
                self._sock = None

    def __enter__(self) -> Notifier:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class WatchdogSink(Protocol):
    """Whatever delivers one WATCHDOG=1 (a `Notifier`); True when it went out."""

    def watchdog(self) -> bool: ...


class WatchdogGate:
    """Paces watchdog pings and withholds them while the main loop is unhealthy.

    The main loop calls `tick(time.monotonic(), healthy)` every iteration. A
    wedged loop never calls it, so pings stop; an unhealthy loop (e.g. no
    completed sample for 3 sample intervals, see `progress_is_recent`) calls it
    with `healthy=False`, so pings stop too. Either way systemd kills and
    restarts the agent after WatchdogSec.

    Times are REAL monotonic seconds (`time.monotonic()`), never the simulated
    agent clock: systemd's watchdog runs in real time.
    """

    def __init__(self, sink: WatchdogSink, interval_s: float | None) -> None:
        """`interval_s`: WatchdogSec in seconds (`Notifier.watchdog_interval_s()`); None = off."""
        if interval_s is not None and interval_s <= 0:
            raise ValueError(f"watchdog interval must be > 0 s, got {interval_s}")
        self._sink = sink
        self.period_s: float | None = None if interval_s is None else interval_s / 2
        self._last_ping: float | None = None
        self._healthy = True
        self.pings = 0  # delivered pings, for the health report and tests

    def tick(self, now_mono: float, healthy: bool) -> bool:
        """Ping if due and healthy; True when a ping went out. `now_mono` in seconds."""
        if self.period_s is None:
            return False
        if healthy != self._healthy:
            self._healthy = healthy
            if healthy:
                log.info("main loop healthy again: watchdog pings resumed")
            else:
                log.warning(
                    "main loop unhealthy: watchdog pings withheld; systemd restarts the agent "
                    "in at most %.0f s unless it recovers",
                    2 * self.period_s,
                )
        if not healthy or not self._due(now_mono):
            return False
        if not self._sink.watchdog():
            return False  # not delivered: try again on the next tick, not a period later
        self._last_ping = now_mono
        self.pings += 1
        return True

    def seconds_until_due(self, now_mono: float) -> float | None:
        """How long the loop may sleep before the next ping is due; None when there is no watchdog.

        The main loop bounds its wait by this, so a long sample interval cannot
        starve the watchdog.
        """
        if self.period_s is None:
            return None
        if self._last_ping is None:
            return 0.0
        return max(0.0, self._last_ping + self.period_s - now_mono)

    def _due(self, now_mono: float) -> bool:
        assert self.period_s is not None
        if self._last_ping is None or now_mono < self._last_ping:
            return True  # first ping, or a clock that went backwards: never wait longer
        return now_mono - self._last_ping >= self.period_s


def progress_is_recent(
    now_s: float, last_progress_s: float, every_s: float, missed: int = 3
) -> bool:
    """True unless more than `missed` intervals of `every_s` seconds passed without progress.

    Before the first completed sample, pass the time the loop started as
    `last_progress_s`, so a loop that never samples at all is caught too. Both
    times in seconds of the same clock.
    """
    return now_s - last_progress_s <= missed * every_s
