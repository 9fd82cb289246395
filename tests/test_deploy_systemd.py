"""The shipped unit under a real systemd, installed by the shipped installer.

A systemd sandbox (tests/systemd_sandbox.py) is booted once for this module;
`deploy/install.sh` installs the product into it as on a bench, the installed
config is switched to the simulated bench, and every test drives the unit with
`systemctl` as an operator would. The unit file is the one in `deploy/`, byte
for byte, hardening included.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.deploy_support import (
    INSTALLED_CONFIG,
    NEEDS_SANDBOX,
    SECRET_PASSWORD,
    UNIT,
    InstalledBench,
    installed_not_started,
    run_installer,
)
from tests.support import REPO

pytestmark = [
    *NEEDS_SANDBOX,
    # Every test here drives the one installed bench of the `bench` fixture (module
    # scope). Under pytest-xdist the module stays on one worker (`--dist loadgroup`):
    # split, each worker would boot its own sandbox and run the installer again
    # (a venv, systemd-python built with gcc: ~5 s of CPU per copy on 2 cores).
    pytest.mark.xdist_group("sandbox-systemd-unit"),
]

RESTART_SEC = 10  # the unit's RestartSec=
WATCHDOG_SEC = 30  # the unit's WatchdogSec=
TIMEOUT_STOP_SEC = 20  # the unit's TimeoutStopSec=


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InstalledBench]:
    with installed_not_started(tmp_path_factory.mktemp("systemd-unit")) as installed:
        # Switch the installed config to the simulated bench, then the installer's
        # own `enable --now`.
        installed.write_config()
        second = run_installer(installed.box)
        assert second.returncode == 0, second.stdout + second.stderr
        yield installed


@pytest.fixture
def running(bench: InstalledBench) -> InstalledBench:
    """Each test starts from a running agent on the good config, whatever the last one did."""
    bench.write_config()
    bench.box.systemctl("reset-failed", UNIT, check=False)
    if bench.show("ActiveState")["ActiveState"] != "active":
        bench.box.systemctl("start", UNIT)
    bench.wait_for_state("active", "running", 30)
    return bench


def test_start_reaches_running_through_notify_and_publishes_online(running: InstalledBench) -> None:
    running.box.systemctl("stop", UNIT)
    mark = running.recorder.mark()
    started = time.monotonic()
    running.box.systemctl("start", UNIT)  # Type=notify: returns once READY=1 arrived
    ready_s = time.monotonic() - started
    status = running.recorder.wait_for("status", lambda p: p["online"] is True, 30, after=mark)
    state = running.show("ActiveState", "SubState", "Type", "StatusText", "NotifyAccess")
    assert (state["ActiveState"], state["SubState"], state["Type"]) == (
        "active",
        "running",
        "notify",
    )
    assert state["NotifyAccess"] == "main"
    # STATUS= from the agent's own sd_notify (sent after READY=1): systemd hears the agent.
    deadline = time.monotonic() + 15
    while "outbox" not in running.show("StatusText")["StatusText"]:
        assert time.monotonic() < deadline, running.show("StatusText")
        time.sleep(0.2)
    assert status["bench"] == "sim-bench-01"
    assert ready_s < 30, ready_s


def test_the_installed_unit_is_the_shipped_file_and_its_hardening_holds(
    running: InstalledBench,
) -> None:
    box = running.box
    shipped = (REPO / "deploy" / "bench-agent.service").read_bytes()
    assert box.path(f"/etc/systemd/system/{UNIT}").read_bytes() == shipped
    # The running process really is confined: its own user, no capabilities,
    # no new privileges, a seccomp filter.
    pid = running.main_pid()
    proc_status = box.run(["cat", f"/proc/{pid}/status"]).stdout
    fields = dict(re.findall(r"^(\w+):\s*(.*)$", proc_status, re.MULTILINE))
    user = box.run(["id", "-u", "bench-agent"]).stdout.strip()
    assert fields["Uid"].split()[0] == user
    assert int(fields["CapEff"], 16) == 0 and int(fields["CapBnd"], 16) == 0
    assert fields["NoNewPrivs"] == "1"
    assert fields["Seccomp"] == "2"  # filter mode
    # The exposure score, of the unit as loaded by this systemd.
    security = box.run(["systemd-analyze", "security", UNIT, "--no-pager"]).stdout
    score = float(re.search(r"Overall exposure level for \S+: ([\d.]+)", security).group(1))
    assert score <= 1.5, security
    # …and the agent works under it: telemetry flows, the technician's CLI
    # reaches it, and nothing it does is refused by the sandbox.
    mark = running.recorder.mark()
    running.recorder.wait_for("telemetry", lambda p: bool(p["records"]), 60, after=mark)
    status = running.cli(f"status --json -c {INSTALLED_CONFIG}")
    assert status.returncode == 0, status.stderr
    assert '"bench"' in status.stdout
    journal = running.journal_text()
    for refused in ("Operation not permitted", "Permission denied", "Bad system call"):
        assert refused not in journal, journal


def test_reload_applies_a_changed_policy_without_a_restart(running: InstalledBench) -> None:
    pid = running.main_pid()
    mark = running.recorder.mark()
    # The simulated day starts at 05:00: a late-evening window turns the hotspot off.
    running.write_config({"policy": {"schedule": {"wifi": ["23:00-23:30"]}}})
    running.box.systemctl("reload", UNIT)
    reloaded = running.recorder.wait_for(
        "event", lambda p: p["type"] == "config_reloaded", 30, after=mark
    )
    assert reloaded["tables"] == ["policy"]
    switched = running.recorder.wait_for(
        "event",
        lambda p: p["type"] == "output_switched" and p["output"] == "wifi" and p["to"] == "off",
        30,
        after=mark,
    )
    assert switched["reason"] == "schedule_off"
    assert running.main_pid() == pid


def test_stop_puts_outputs_in_their_safe_state_and_publishes_offline(
    running: InstalledBench,
) -> None:
    mark = running.recorder.mark()
    started = time.monotonic()
    running.box.systemctl("stop", UNIT)
    stop_s = time.monotonic() - started
    offline = running.recorder.wait_for("status", lambda p: p["online"] is False, 5, after=mark)
    assert offline["bench"] == "sim-bench-01"
    safe = [
        p
        for p in running.recorder.payloads("event", after=mark)
        if p["type"] == "output_switched" and p["reason"] == "safe_state"
    ]
    assert safe, "no output switched to its safe state on stop"
    state = running.show("ActiveState", "Result", "ExecMainStatus")
    assert (state["ActiveState"], state["Result"], state["ExecMainStatus"]) == (
        "inactive",
        "success",
        "0",
    )
    assert stop_s < TIMEOUT_STOP_SEC, stop_s


def test_kill_9_of_the_main_process_is_restarted(running: InstalledBench) -> None:
    before = running.show("MainPID", "NRestarts")
    mark = running.recorder.mark()
    running.box.run(["kill", "-9", before["MainPID"]])
    after = running.wait_for_state(
        "active", "running", RESTART_SEC + 30, new_pid_than=int(before["MainPID"])
    )
    assert int(after["NRestarts"]) == int(before["NRestarts"]) + 1
    running.recorder.wait_for("status", lambda p: p["online"] is True, 30, after=mark)


def test_a_hung_main_loop_is_killed_by_the_watchdog_and_restarted(
    running: InstalledBench,
) -> None:
    before = running.show("MainPID", "NRestarts")
    running.box.run(["kill", "-STOP", before["MainPID"]])
    after = running.wait_for_state(
        "active",
        "running",
        WATCHDOG_SEC + RESTART_SEC + 40,
        new_pid_than=int(before["MainPID"]),
    )
    assert int(after["NRestarts"]) == int(before["NRestarts"]) + 1
    assert "Watchdog timeout" in running.journal_text(), running.journal_text()


def test_a_config_error_exits_78_and_is_not_restarted(running: InstalledBench) -> None:
    restarts = int(running.show("NRestarts")["NRestarts"])
    running.write_config({"sampling": {"sample_interval_s": 0.0}})
    failed = running.box.systemctl("restart", UNIT, check=False)
    assert failed.returncode != 0
    state = running.show("ActiveState", "ExecMainStatus", "Result")
    assert (state["ActiveState"], state["ExecMainStatus"]) == ("failed", "78"), state
    # Longer than RestartSec: no restart is even scheduled.
    time.sleep(RESTART_SEC + 2)
    state = running.show("ActiveState", "NRestarts")
    assert state["ActiveState"] == "failed"
    assert int(state["NRestarts"]) == restarts
    assert "sampling.sample_interval_s" in running.journal_text("-n", "20")


def test_the_journal_has_structured_fields_and_no_secret(running: InstalledBench) -> None:
    # A technician's override: an event, a log line with the output's field.
    done = running.cli(f"usb 2 off --for 1m -c {INSTALLED_CONFIG}")
    assert done.returncode == 0, done.stderr
    entries = running.journal_json()
    ours = [e for e in entries if e.get("SYSLOG_IDENTIFIER") == "bench-agent" and "LOGGER" in e]
    assert ours, entries[-5:]
    assert all(e["LOGGER"].startswith("bench_agent") for e in ours)
    assert {"CODE_FILE", "CODE_FUNC", "PRIORITY"} <= set(ours[0])
    assert any(e["MESSAGE"].startswith("mqtt: connected") for e in ours)
    everything = "\n".join(str(e) for e in entries)
    assert SECRET_PASSWORD not in everything
    # The password was in use: the agent read it from the installer's secrets directory.
    assert running.box.path("/etc/bench-agent/secrets/mqtt-password").read_text().strip() == (
        SECRET_PASSWORD
    )


def test_what_the_sandbox_writes_stays_in_the_sandbox(running: InstalledBench) -> None:
    marker = f"bench-sandbox-{time.monotonic_ns()}"
    running.box.run(["touch", f"/tmp/{marker}", f"/etc/{marker}", f"/var/lib/bench-agent/{marker}"])
    assert running.box.path(f"/etc/{marker}").exists()
    for host_path in (
        Path("/tmp", marker),
        Path("/etc", marker),
        Path("/var/lib/bench-agent", marker),
    ):
        assert not host_path.exists()


def test_the_units_device_rules_let_the_charger_cable_in_under_any_number(
    running: InstalledBench,
) -> None:
    # The shipped unit's own device directives, applied by this systemd to a probe
    # running as the agent's user: a ttyUSB that is not number 0 (a USB modem took
    # the first ones) opens past the device cgroup; another serial device does not.
    box = running.box
    unit = (REPO / "deploy" / "bench-agent.service").read_text()
    rules = [
        line
        for line in unit.splitlines()
        if line.startswith(("DevicePolicy=", "DeviceAllow=", "User=", "SupplementaryGroups="))
    ]
    box.sh(
        "mknod -m 0660 /dev/ttyUSB5 c 188 5 && chgrp dialout /dev/ttyUSB5 &&"
        " mknod -m 0660 /dev/ttyS0 c 4 64 && chgrp dialout /dev/ttyS0"
    )
    try:
        seen = {}
        for name, node in (("usb5", "/dev/ttyUSB5"), ("ttys0", "/dev/ttyS0")):
            out = f"/run/probe-{name}.out"  # opened by systemd, before it drops root
            box.run(
                ["systemd-run", f"--unit=device-probe-{name}"]
                + [arg for rule in rules for arg in ("-p", rule)]
                + ["-p", f"StandardOutput=file:{out}", "-p", "StandardError=inherit"]
                + ["sh", "-c", f"(exec 3<>{node}) 2>&1; echo probed"]
            )
            path = box.path(out)
            deadline = time.monotonic() + 10
            while not (path.exists() and "probed" in path.read_text()):
                assert time.monotonic() < deadline, f"the probe for {node} did not run"
                time.sleep(0.05)
            seen[name] = path.read_text()
        # ttyUSB5 has no driver here, so the open fails past the cgroup (ENXIO/ENODEV).
        assert "No such device" in seen["usb5"], seen
        assert "Operation not permitted" in seen["ttys0"], seen
    finally:
        box.run(["rm", "-f", "/dev/ttyUSB5", "/dev/ttyS0"], check=False)
