"""`deploy/install.sh` and `deploy/uninstall.sh` for real, as root, on a fresh machine.

They run without `--root` inside a systemd sandbox (tests/systemd_sandbox.py)
over a throw-away overlay of this machine's `/`, where no bench-agent user,
venv, config or unit exists: the state of a fresh Raspberry Pi OS as far as the
product is concerned. The host is untouched.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.deploy_support import (
    INSTALLED_CONFIG,
    NEEDS_SANDBOX,
    UNIT,
    InstalledBench,
    run_installer,
    wheelhouse_missing,
)
from tests.support import REPO, wait_until
from tests.systemd_sandbox import SystemdSandbox

pytestmark = NEEDS_SANDBOX

# What the installer owns on the machine; a re-run must leave every bit of it as it was.
INSTALLED_PATHS = (
    "/opt/bench-agent",
    "/etc/bench-agent",
    "/etc/systemd/system",
    "/etc/polkit-1/rules.d",
)


@pytest.fixture
def fresh(tmp_path: Path) -> Iterator[InstalledBench]:
    missing = wheelhouse_missing()
    if missing:
        pytest.fail(missing)
    with SystemdSandbox(tmp_path) as box:
        machine = InstalledBench(box, tmp_path)
        try:
            machine.start_broker()
            yield machine
        finally:
            machine.close()


def snapshot(box: SystemdSandbox) -> str:
    """Every installed file and directory with its mode, owner, size, mtime and content hash."""
    listing = box.sh(
        "find " + " ".join(INSTALLED_PATHS) + " -printf '%p %M %u %g %s %T@\\n' | sort;"
        " find " + " ".join(INSTALLED_PATHS) + " -type f -print0 | sort -z | xargs -0 sha256sum;"
        " getent passwd bench-agent; getent group bench-agent gpio i2c dialout;"
        " stat -c '%n %A %U %G' /var/lib/bench-agent"
    )
    return listing.stdout


def _faults(bench: InstalledBench) -> dict[str, str]:
    """The faults `bench-agent status --json` shows (empty until the socket answers)."""
    done = bench.cli(f"status --json -c {INSTALLED_CONFIG}")
    if done.returncode != 0:
        return {}
    faults = {f["name"]: f["detail"] for f in json.loads(done.stdout)["faults"]}
    return faults if {"gpio", "i2c", "mqtt_setup"} <= faults.keys() else {}


def stat(box: SystemdSandbox, path: str) -> str:
    return box.run(["stat", "-c", "%a %U %G", path]).stdout.strip()


def test_install_on_a_fresh_machine_then_again_then_uninstall(fresh: InstalledBench) -> None:
    box = fresh.box
    assert box.run(["getent", "passwd", "bench-agent"], check=False).returncode == 2

    # 1. A fresh install, exactly as the README says. The reference config names
    #    a broker, TLS files and Pi hardware this machine does not have: the
    #    agent starts anyway and says what is missing (see test_degraded_bench).
    # A build/ left in the checkout by an earlier release's build (written in the
    # sandbox's overlay, never on the host): its modules must not reach the venv.
    stale = box.path(str(REPO / "build" / "lib" / "bench_agent" / "policy_of_an_old_release.py"))
    stale.parent.mkdir(parents=True, exist_ok=True)
    stale.write_text("raise ImportError('a module of an old build')\n")
    first = run_installer(box)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "wrote /etc/bench-agent/bench-agent.toml" in first.stdout
    listing = (
        "import bench_agent, pathlib; p = pathlib.Path(bench_agent.__file__).parent;"
        " print(*sorted(str(x.relative_to(p)) for x in p.rglob('*.py')), sep='\\n')"
    )
    installed = box.run(["/opt/bench-agent/venv/bin/python", "-c", listing]).stdout.split()
    checkout = sorted(
        str(x.relative_to(REPO / "bench_agent"))
        for x in (REPO / "bench_agent").rglob("*.py")
        if "__pycache__" not in x.parts
    )
    assert installed == checkout  # exactly the package's modules, nothing stale
    groups = box.run(["id", "-nG", "bench-agent"]).stdout.split()
    assert {"bench-agent", "gpio", "i2c", "dialout"} <= set(groups)
    shell = box.run(["getent", "passwd", "bench-agent"]).stdout.strip().split(":")[-1]
    assert shell == "/usr/sbin/nologin"
    # The venv is built from the system Python at the unit's own path (a Python
    # under /home or /root would be hidden by ProtectHome=).
    pyvenv = box.path("/opt/bench-agent/venv/pyvenv.cfg").read_text()
    assert "home = /usr/bin" in pyvenv
    version = box.run(["/opt/bench-agent/venv/bin/bench-agent", "--version"]).stdout
    assert version.startswith("bench-agent ")
    imported = box.run(
        ["/opt/bench-agent/venv/bin/python", "-c", "import lgpio, systemd.daemon, bench_agent"]
    )
    assert imported.returncode == 0
    installed_config = box.path(INSTALLED_CONFIG).read_bytes()
    assert installed_config == (REPO / "config" / "bench-agent.toml").read_bytes()
    assert stat(box, INSTALLED_CONFIG) == "640 root bench-agent"
    assert stat(box, "/etc/bench-agent/secrets") == "700 bench-agent bench-agent"
    assert stat(box, "/var/lib/bench-agent") == "750 bench-agent bench-agent"
    assert (
        box.path(f"/etc/systemd/system/{UNIT}").read_bytes()
        == (REPO / "deploy" / "bench-agent.service").read_bytes()
    )
    assert (
        box.path("/etc/systemd/system/bench-hotspot@.service").read_bytes()
        == (REPO / "deploy" / "bench-hotspot@.service").read_bytes()
    )
    assert box.path("/etc/polkit-1/rules.d/50-bench-agent-hotspot.rules").is_file()
    assert box.systemctl("is-enabled", UNIT).stdout.strip() == "enabled"
    fresh.wait_for_state("active", "running", 30)
    # The technician's view of the fresh bench: what is missing, and why.
    faults = wait_until(lambda: _faults(fresh), 30, "the fresh bench's faults")
    assert "/dev/gpiochip0 missing" in faults["gpio"]
    assert "enable I2C" in faults["i2c"]
    assert "mqtt.ca_file" in faults["mqtt_setup"] and "no such file" in faults["mqtt_setup"]
    assert stat(box, "/etc/bench-agent/ops-keys") == "750 root bench-agent"
    # The technician's next step, as the installer says: `config check` names the
    # bench's TLS files that are not there yet, one line each, and exits 78.
    checked = box.run(
        ["/opt/bench-agent/venv/bin/bench-agent", "config", "check", "-c", INSTALLED_CONFIG],
        check=False,
    )
    assert checked.returncode == 78, checked.stdout + checked.stderr
    missing = [line for line in checked.stderr.splitlines() if "no such file" in line]
    assert [line.split(": ")[3] for line in missing] == [
        "mqtt.ca_file",
        "mqtt.cert_file",
        "mqtt.key_file",
    ], checked.stderr

    # 2. The technician sets the bench up (here: the simulated bench and the
    #    broker), restarts it as the README says, and runs the installer again.
    fresh.write_config()
    fresh.write_password()
    configured = box.path(INSTALLED_CONFIG).read_text()
    mark = fresh.recorder.mark()
    box.systemctl("restart", UNIT)
    second = run_installer(box)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "keeping existing /etc/bench-agent/bench-agent.toml" in second.stdout
    fresh.wait_for_state("active", "running", 30)
    fresh.recorder.wait_for("status", lambda p: p["online"] is True, 30, after=mark)
    fresh.recorder.wait_for("telemetry", lambda p: bool(p["records"]), 60, after=mark)

    # 3. A third run changes nothing: not a file, not a mode, not an mtime,
    #    and the agent is not restarted.
    before = snapshot(box)
    running = fresh.show("MainPID", "NRestarts")
    third = run_installer(box)
    assert third.returncode == 0, third.stdout + third.stderr
    assert snapshot(box) == before
    assert fresh.show("MainPID", "NRestarts") == running

    # 4. Uninstall: the agent stops (offline published), what the installer
    #    added goes, the configuration and the stored telemetry stay.
    mark = fresh.recorder.mark()
    removed = box.run([str(REPO / "deploy" / "uninstall.sh")], check=False)
    assert removed.returncode == 0, removed.stdout + removed.stderr
    fresh.recorder.wait_for("status", lambda p: p["online"] is False, 10, after=mark)
    for gone in (
        "/opt/bench-agent",
        f"/etc/systemd/system/{UNIT}",
        f"/etc/systemd/system/multi-user.target.wants/{UNIT}",
        "/etc/systemd/system/bench-hotspot@.service",
        "/etc/polkit-1/rules.d/50-bench-agent-hotspot.rules",
    ):
        assert not box.path(gone).exists(), gone
    assert box.systemctl("is-active", UNIT, check=False).stdout.strip() == "inactive"
    assert box.path(INSTALLED_CONFIG).read_text() == configured
    assert box.path("/etc/bench-agent/secrets/mqtt-password").is_file()
    stored = [p.name for p in box.path("/var/lib/bench-agent").iterdir()]
    assert any(name.startswith("outbox") for name in stored), stored

    # 5. --purge removes the configuration, the data and the user too.
    purged = box.run([str(REPO / "deploy" / "uninstall.sh"), "--purge"], check=False)
    assert purged.returncode == 0, purged.stdout + purged.stderr
    assert not box.path("/etc/bench-agent").exists()
    assert not box.path("/var/lib/bench-agent").exists()
    assert box.run(["getent", "passwd", "bench-agent"], check=False).returncode == 2
    # The shared system groups stay.
    assert box.run(["getent", "group", "dialout"], check=False).returncode == 0
