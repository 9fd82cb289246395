"""sd_notify: what systemd would receive, at what cadence, and that a broken socket never hurts.

The receiving end is a real AF_UNIX datagram socket bound where systemd's would
be (a path in tmp_path, or an abstract name), so the bytes asserted here are
the bytes PID 1 would parse.
"""

from __future__ import annotations

import logging
import os
import socket
import struct
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench_agent.systemd import (
    MAX_STATUS_CHARS,
    Notifier,
    WatchdogGate,
    progress_is_recent,
)

REPO = Path(__file__).resolve().parent.parent


class Receiver:
    """The systemd side of NOTIFY_SOCKET: a bound datagram socket we read from."""

    def __init__(self, sock: socket.socket, env_value: str) -> None:
        self.sock = sock
        self.env_value = env_value

    def env(self, **more: str) -> dict[str, str]:
        return {"NOTIFY_SOCKET": self.env_value, **more}

    def recv(self, timeout_s: float = 2.0) -> str:
        self.sock.settimeout(timeout_s)
        return self.sock.recv(4096).decode()

    def drain(self) -> list[str]:
        """Every datagram waiting now, without blocking."""
        out: list[str] = []
        self.sock.setblocking(False)
        try:
            while True:
                out.append(self.sock.recv(4096).decode())
        except BlockingIOError:
            return out
        finally:
            self.sock.setblocking(True)


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[Receiver]:
    path = tmp_path / "notify.sock"
    assert len(str(path)) < 100, "sun_path is 108 bytes"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    try:
        yield Receiver(sock, str(path))
    finally:
        sock.close()


@pytest.fixture
def abstract_receiver() -> Iterator[Receiver]:
    name = f"bench-agent-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    try:
        yield Receiver(sock, "@" + name)
    finally:
        sock.close()


# -- messages -------------------------------------------------------------------


def test_ready_status_watchdog_stopping_arrive_as_systemd_expects(receiver: Receiver) -> None:
    with Notifier(receiver.env()) as notifier:
        assert notifier.enabled
        assert notifier.ready()
        assert notifier.status("sampling 4 channels, broker connected")
        assert notifier.watchdog()
        assert notifier.stopping()
        assert notifier.extend_timeout(2.5)
    assert receiver.drain() == [
        "READY=1",
        "STATUS=sampling 4 channels, broker connected",
        "WATCHDOG=1",
        "STOPPING=1",
        "EXTEND_TIMEOUT_USEC=2500000",
    ]


def test_status_is_sent_only_when_it_changes(receiver: Receiver) -> None:
    with Notifier(receiver.env()) as notifier:
        assert notifier.status("broker offline")
        assert not notifier.status("broker offline")
        assert not notifier.status("  broker   offline ")  # same line once normalised
        assert notifier.status("broker connected")
        assert notifier.status("broker offline")
    assert receiver.drain() == [
        "STATUS=broker offline",
        "STATUS=broker connected",
        "STATUS=broker offline",
    ]


def test_status_cannot_inject_other_assignments(receiver: Receiver) -> None:
    with Notifier(receiver.env()) as notifier:
        notifier.status("fault on usb1\nREADY=1\r\nWATCHDOG=1\tend")
    [datagram] = receiver.drain()
    assert "\n" not in datagram
    assert datagram == "STATUS=fault on usb1 READY=1 WATCHDOG=1 end"


def test_long_status_is_truncated_to_one_sane_line(receiver: Receiver) -> None:
    with Notifier(receiver.env()) as notifier:
        notifier.status("x" * 5000)
    [datagram] = receiver.drain()
    text = datagram.removeprefix("STATUS=")
    assert len(text) == MAX_STATUS_CHARS
    assert text.endswith("…")


def test_abstract_namespace_socket(abstract_receiver: Receiver) -> None:
    with Notifier(abstract_receiver.env()) as notifier:
        assert notifier.ready()
        assert notifier.watchdog()
    assert abstract_receiver.drain() == ["READY=1", "WATCHDOG=1"]


def test_closed_notifier_sends_nothing(receiver: Receiver) -> None:
    notifier = Notifier(receiver.env())
    notifier.close()
    notifier.close()  # idempotent
    assert not notifier.ready()
    assert receiver.drain() == []


# -- a missing or broken socket ------------------------------------------------------


def test_without_notify_socket_everything_is_a_quiet_no_op() -> None:
    notifier = Notifier({})
    assert not notifier.enabled
    assert not notifier.ready()
    assert not notifier.status("x")
    assert not notifier.watchdog()
    assert not notifier.stopping()
    assert notifier.watchdog_interval_s() is None


def _stale_socket(tmp_path: Path) -> str:
    """A socket file whose owner is gone (what a crashed systemd --user leaves)."""
    path = tmp_path / "stale.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.close()
    return str(path)


@pytest.mark.parametrize(
    "make_value",
    [
        pytest.param(lambda tmp: str(tmp / "no" / "such.sock"), id="missing-path"),
        pytest.param(_stale_socket, id="stale-socket"),
        pytest.param(str, id="a-directory"),
        pytest.param(lambda tmp: f"@bench-agent-nobody-{uuid.uuid4().hex}", id="abstract-unbound"),
        pytest.param(lambda tmp: "@", id="bare-at"),
        pytest.param(lambda tmp: "relative/notify.sock", id="relative-path"),
        pytest.param(lambda tmp: "vsock:2:1234", id="vsock"),
        pytest.param(lambda tmp: "/" + "x" * 200, id="path-too-long"),
    ],
)
def test_a_broken_notify_socket_never_raises(
    tmp_path: Path, make_value: Callable[[Path], str], caplog: pytest.LogCaptureFixture
) -> None:
    with Notifier({"NOTIFY_SOCKET": make_value(tmp_path)}) as notifier:
        for _ in range(3):
            assert not notifier.ready()
            assert not notifier.watchdog()
            assert not notifier.status("still here")
            assert not notifier.stopping()
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) <= 1, "one warning per kind of failure, not one per ping"


def unix_dgram_queue_length() -> int:
    """net.unix.max_dgram_qlen: 10 by the kernel's default, 512 where systemd booted the machine."""
    return int(Path("/proc/sys/net/unix/max_dgram_qlen").read_text())


def test_a_receiver_that_stops_reading_never_blocks_the_sender(receiver: Receiver) -> None:
    # libsystemd's sd_notify blocks for ever here once the receiver's queue
    # (net.unix.max_dgram_qlen datagrams, or its receive buffer) is full. Twice
    # the tunable's worth of pings fills it whatever this machine's value is.
    pings = 2 * unix_dgram_queue_length() + 10
    with Notifier(receiver.env()) as notifier:
        started = time.monotonic()
        results = [notifier.watchdog() for _ in range(pings)]
        elapsed = time.monotonic() - started
        assert elapsed < 1.0
        assert results[0]
        assert not all(results), "the queue should have filled up"
        queued = receiver.drain()
        assert queued == ["WATCHDOG=1"] * results.count(True)
        assert notifier.watchdog(), "works again once the receiver reads"
        assert receiver.drain() == ["WATCHDOG=1"]


# -- the watchdog interval ------------------------------------------------------


@pytest.mark.parametrize(
    ("environ", "expected_s"),
    [
        ({}, None),
        ({"WATCHDOG_USEC": "30000000"}, 30.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "{pid}"}, 30.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "{other}"}, None),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "garbage"}, None),
        ({"WATCHDOG_USEC": "500"}, 0.0005),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "-5"}, None),
        ({"WATCHDOG_USEC": "30s"}, None),
        ({"WATCHDOG_USEC": str(2**64 - 1)}, None),
    ],
)
def test_watchdog_interval_follows_sd_watchdog_enabled(
    environ: dict[str, str], expected_s: float | None
) -> None:
    pid = os.getpid()
    env = {k: v.format(pid=pid, other=pid + 1) for k, v in environ.items()}
    assert Notifier(env).watchdog_interval_s() == expected_s


def test_watchdog_pid_mismatch_disables_the_gate(receiver: Receiver) -> None:
    env = receiver.env(WATCHDOG_USEC="2000000", WATCHDOG_PID=str(os.getpid() + 1))
    with Notifier(env) as notifier:
        gate = WatchdogGate(notifier, notifier.watchdog_interval_s())
        assert gate.seconds_until_due(0.0) is None
        assert not any(gate.tick(float(t), healthy=True) for t in range(10))
    assert receiver.drain() == []


# -- the gate's cadence, with a fake clock ------------------------------------------


def test_gate_pings_every_half_interval_while_healthy(receiver: Receiver) -> None:
    with Notifier(receiver.env()) as notifier:
        gate = WatchdogGate(notifier, interval_s=30.0)
        ping_times = [t / 2 for t in range(201) if gate.tick(t / 2, healthy=True)]  # 0..100 s
    assert ping_times == [0.0, 15.0, 30.0, 45.0, 60.0, 75.0, 90.0]
    assert receiver.drain() == ["WATCHDOG=1"] * 7
    assert gate.pings == 7


def test_gate_withholds_pings_while_unhealthy_and_resumes_at_once(
    receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="bench_agent.systemd")
    with Notifier(receiver.env()) as notifier:
        gate = WatchdogGate(notifier, interval_s=20.0)
        ping_times = [float(t) for t in range(100) if gate.tick(float(t), healthy=not 25 <= t < 70)]
    assert ping_times == [0.0, 10.0, 20.0, 70.0, 80.0, 90.0]
    assert len(receiver.drain()) == 6
    messages = [r.getMessage() for r in caplog.records]
    assert sum("withheld" in m for m in messages) == 1, "one warning per transition"
    assert sum("resumed" in m for m in messages) == 1


def test_a_wedged_loop_stops_the_pings(receiver: Receiver) -> None:
    with Notifier(receiver.env()) as notifier:
        gate = WatchdogGate(notifier, interval_s=10.0)
        for t in range(12):
            gate.tick(float(t), healthy=True)
        assert receiver.drain() == ["WATCHDOG=1"] * 3  # at 0, 5, 10
        # The loop hangs in a read: nobody calls tick, so nothing is sent; the
        # next tick, whenever it comes, pings at once (it is overdue).
        assert receiver.drain() == []
        assert gate.seconds_until_due(60.0) == 0.0
        assert gate.tick(60.0, healthy=True)


def test_an_undelivered_ping_is_retried_on_the_next_tick() -> None:
    class Flaky:
        def __init__(self) -> None:
            self.calls: list[bool] = []

        def watchdog(self) -> bool:
            ok = len(self.calls) != 1  # the second ping fails (e.g. EAGAIN)
            self.calls.append(ok)
            return ok

    sink = Flaky()
    gate = WatchdogGate(sink, interval_s=10.0)
    sent = [t for t in range(12) if gate.tick(float(t), healthy=True)]
    assert sent == [0, 6, 11]  # 5 failed, so 6 (not 10) is the next ping
    assert sink.calls == [True, False, True, True]


def test_seconds_until_due_bounds_the_loop_sleep() -> None:
    gate = WatchdogGate(Notifier({}), interval_s=30.0)
    assert gate.seconds_until_due(100.0) == 0.0  # never pinged: due now
    gate._last_ping = 100.0  # Notifier({}) cannot deliver a ping, so set the state
    assert gate.seconds_until_due(104.0) == 11.0
    assert gate.seconds_until_due(200.0) == 0.0


def test_gate_rejects_a_nonsense_interval() -> None:
    with pytest.raises(ValueError, match="interval"):
        WatchdogGate(Notifier({}), interval_s=0.0)


class CountingSink:
    def __init__(self) -> None:
        self.count = 0

    def watchdog(self) -> bool:
        self.count += 1
        return True


@settings(max_examples=200, deadline=None)
@given(
    interval_s=st.floats(min_value=0.5, max_value=120.0),
    steps=st.lists(
        st.tuples(st.floats(min_value=0.0, max_value=10.0), st.booleans()), max_size=200
    ),
)
def test_gate_cadence_invariants(interval_s: float, steps: list[tuple[float, bool]]) -> None:
    """Pings are never closer than interval/2, never unhealthy, never late when ticked healthily."""
    sink = CountingSink()
    gate = WatchdogGate(sink, interval_s)
    now = 0.0
    last_ping: float | None = None
    for step, healthy in steps:
        now += step
        due = last_ping is None or now - last_ping >= interval_s / 2
        pinged = gate.tick(now, healthy)
        assert pinged == (healthy and due)
        if pinged:
            last_ping = now
    assert sink.count == gate.pings


@pytest.mark.parametrize(
    ("now_s", "last_s", "healthy"),
    [(10.0, 10.0, True), (13.0, 10.0, True), (13.01, 10.0, False), (100.0, 0.0, False)],
)
def test_progress_is_recent(now_s: float, last_s: float, healthy: bool) -> None:
    assert progress_is_recent(now_s, last_s, every_s=1.0) is healthy


# -- end to end: another process, as systemd sees it ---------------------------------

CHILD = textwrap.dedent(
    """
    import sys
    from bench_agent.systemd import Notifier, WatchdogGate
    with Notifier() as notifier:
        interval = notifier.watchdog_interval_s()
        print(interval, flush=True)
        notifier.ready()
        notifier.status("sampling")
        gate = WatchdogGate(notifier, interval)
        for t in range(int(sys.argv[1])):
            gate.tick(float(t), healthy=True)
        notifier.stopping()
    """
)


def _run_child(env_extra: dict[str, str], ticks: int) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC")}
    env.update(env_extra)
    env["PYTHONPATH"] = str(REPO)
    return subprocess.run(
        [sys.executable, "-c", CHILD, str(ticks)],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )


def _recv_with_sender(sock: socket.socket) -> tuple[str, int]:
    """A datagram and the sender's pid, as PID 1 checks it for NotifyAccess=main."""
    sock.settimeout(5.0)
    data, ancdata, _flags, _addr = sock.recvmsg(4096, socket.CMSG_SPACE(12))
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
            pid, _uid, _gid = struct.unpack("iII", payload[:12])
            return data.decode(), pid
    raise AssertionError("no credentials")


def test_a_child_process_notifies_the_socket_in_its_environment(receiver: Receiver) -> None:
    receiver.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    # WatchdogSec=4s: ticks at fake seconds 0..4 ping at 0 and 2 and 4.
    done = _run_child(receiver.env(WATCHDOG_USEC="4000000"), ticks=5)
    assert done.stdout.strip() == "4.0"
    received = [_recv_with_sender(receiver.sock) for _ in range(6)]
    assert [msg for msg, _ in received] == [
        "READY=1",
        "STATUS=sampling",
        "WATCHDOG=1",
        "WATCHDOG=1",
        "WATCHDOG=1",
        "STOPPING=1",
    ]
    assert {pid for _, pid in received} != {os.getpid()}
    assert len({pid for _, pid in received}) == 1, "all from the child's own pid"
    assert receiver.drain() == []


def test_a_child_ignores_a_watchdog_meant_for_its_parent(receiver: Receiver) -> None:
    env = receiver.env(WATCHDOG_USEC="4000000", WATCHDOG_PID=str(os.getpid()))
    done = _run_child(env, ticks=5)
    assert done.stdout.strip() == "None"
    assert receiver.drain() == ["READY=1", "STATUS=sampling", "STOPPING=1"]


def test_a_child_with_an_unread_socket_finishes_quickly(receiver: Receiver) -> None:
    # 2000 pings into a socket nobody reads: the child must exit, not hang.
    started = time.monotonic()
    done = _run_child(receiver.env(WATCHDOG_USEC="2000000"), ticks=2000)
    assert done.returncode == 0
    assert time.monotonic() - started < 15
    assert len(receiver.drain()) >= 1


def test_a_child_with_a_missing_socket_exits_cleanly(tmp_path: Path) -> None:
    done = _run_child({"NOTIFY_SOCKET": str(tmp_path / "gone.sock")}, ticks=3)
    assert done.returncode == 0
    assert "Traceback" not in done.stderr
