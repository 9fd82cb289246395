"""The hotspot switch as installed: real systemd, D-Bus and polkitd, the shipped unit and rule.

The agent may switch its Wi-Fi hotspot only by starting `bench-hotspot@up` or
`bench-hotspot@down`, root-owned units that switch the one profile named in
the root-owned config. These tests install the product with `install.sh`
into a systemd sandbox, start the system bus (polkitd is activated by it, as
on a bench), and check from the service user's side what polkit allows and
refuses, then run the agent under its own hardened unit and watch it switch
the hotspot through the unit.

NetworkManager itself cannot run here (it would take the sandbox's network
and needs a radio), so `nmcli` is a stand-in at /usr/local/bin: `show`
answers from a file, `up`/`down` print their argv, which lands in the
journal of the unit that ran them. That journal is the evidence of who ran
what.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator

import pytest

from tests.deploy_support import (
    NEEDS_SANDBOX,
    UNIT,
    InstalledBench,
    installed_not_started,
)
from tests.systemd_sandbox import SystemdSandbox

pytestmark = [
    *NEEDS_SANDBOX,
    # The tests share the module's one installed bench (`bench`, module scope) with
    # its system bus and polkitd. Under pytest-xdist the module stays on one worker
    # (`--dist loadgroup`) so the installer runs once, not once per worker.
    pytest.mark.xdist_group("sandbox-hotspot"),
]

PROFILE = "Bench Hotspot"  # a space: nothing goes through a shell
NM_STATE = "/etc/bench-sandbox/nm-state"
UP, DOWN = "bench-hotspot@up.service", "bench-hotspot@down.service"

STANDIN_NMCLI = f"""#!/bin/sh
# Stand-in for nmcli 1.42: `show` from {NM_STATE}; up/down print what they were asked.
case "$*" in
  "-t -f GENERAL.STATE,GENERAL.DEVICES connection show id {PROFILE}")
    state=$(cat {NM_STATE})
    if [ "$state" = activated ]; then
      echo "GENERAL.STATE:activated"; echo "GENERAL.DEVICES:wlan0"
    fi ;;
  "--wait 8 connection up id {PROFILE}"|"--wait 8 connection down id {PROFILE}")
    echo "nmcli-standin uid=$(id -u): $*" ;;
  *)
    echo "nmcli-standin: not understood: $*" >&2; exit 2 ;;
esac
"""


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InstalledBench]:
    with installed_not_started(tmp_path_factory.mktemp("hotspot-unit")) as installed:
        box = installed.box
        # The real backend (no GPIO or I2C here: those are faults) with the
        # hotspot on NetworkManager, as a bench with the Pi's own radio has it.
        installed.write_config(
            {
                "hardware": {"backend": "pi"},
                "outputs": {"wifi": {"backend": "nmcli", "nmcli_connection": PROFILE}},
            }
        )
        nmcli = box.path("/usr/local/bin/nmcli")
        nmcli.parent.mkdir(parents=True, exist_ok=True)
        nmcli.write_text(STANDIN_NMCLI)
        nmcli.chmod(0o755)
        set_nm_state(box, "deactivated")
        # The system bus, as on every bench; polkitd is activated through it.
        box.systemctl("start", "dbus.socket", "dbus.service")
        yield installed


def set_nm_state(box: SystemdSandbox, state: str) -> None:
    path = box.path(NM_STATE)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(state + "\n")


def as_user(box: SystemdSandbox, user: str, *argv: str) -> subprocess.CompletedProcess[str]:
    """A command as `user` with its groups, outside any session (as a service runs)."""
    gid = box.run(["id", "-g", user]).stdout.strip()
    return box.run(
        ["setpriv", f"--reuid={user}", f"--regid={gid}", "--init-groups", *argv], check=False
    )


def unit_journal(box: SystemdSandbox, unit: str) -> str:
    return box.run(["journalctl", "-u", unit, "--no-pager", "-o", "cat"], check=False).stdout


def switched(box: SystemdSandbox, verb: str) -> int:
    """How many times root's nmcli switched the profile `verb`, by the switch unit's journal."""
    line = f"nmcli-standin uid=0: --wait 8 connection {verb} id {PROFILE}"
    return unit_journal(box, f"bench-hotspot@{verb}.service").count(line)


def wait_for_switch(box: SystemdSandbox, verb: str, more_than: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while switched(box, verb) <= more_than:
        if time.monotonic() > deadline:
            unit = f"bench-hotspot@{verb}.service"
            raise AssertionError(f"no new {verb} in {timeout_s} s:\n{unit_journal(box, unit)}")
        time.sleep(0.2)


def test_the_service_user_may_start_the_two_switches_and_they_switch_the_configured_profile(
    bench: InstalledBench,
) -> None:
    box = bench.box
    for unit, verb in ((UP, "up"), (DOWN, "down")):
        before = switched(box, verb)
        r = as_user(box, "bench-agent", "systemctl", "--no-ask-password", "start", unit)
        assert r.returncode == 0, r.stderr
        # A oneshot: `start` returned after nmcli did, so the journal has it now.
        wait_for_switch(box, verb, before, timeout_s=10)


@pytest.mark.parametrize(
    ("user", "argv"),
    [
        # The uplink by another instance name: polkit refuses before the switch would.
        ("bench-agent", ["start", "bench-hotspot@uplink.service"]),
        ("bench-agent", ["stop", UP]),
        ("bench-agent", ["restart", DOWN]),
        ("bench-agent", ["stop", UNIT]),
        ("bench-agent", ["start", "systemd-journald.service"]),
        ("bench-agent", ["daemon-reload"]),
        ("nobody", ["start", UP]),
    ],
)
def test_everything_else_is_refused_by_polkit(
    bench: InstalledBench, user: str, argv: list[str]
) -> None:
    before = unit_journal(bench.box, "bench-hotspot@uplink.service")
    r = as_user(bench.box, user, "systemctl", "--no-ask-password", *argv)
    assert r.returncode != 0
    assert "Interactive authentication required" in r.stderr
    assert unit_journal(bench.box, "bench-hotspot@uplink.service") == before


def test_the_agent_under_its_unit_switches_the_hotspot_through_the_switch_unit(
    bench: InstalledBench,
) -> None:
    box = bench.box
    # NetworkManager has the hotspot up; the agent's safe state at start is off.
    set_nm_state(box, "activated")
    before = switched(box, "down")
    mark = bench.recorder.mark()
    box.systemctl("start", UNIT)
    try:
        bench.wait_for_state("active", "running", 60)
        wait_for_switch(box, "down", before, timeout_s=60)
        # What ops see is what NetworkManager did: off, by the agent's decision.
        state = bench.recorder.wait_for(
            "state", lambda p: p["outputs"]["wifi"]["on"] is False, 60, after=mark
        )
        assert "wifi" not in str(state.get("faults", {}))
        agent = bench.journal_text()
        assert "not_authorized" not in agent and "Interactive authentication" not in agent
    finally:
        box.systemctl("stop", UNIT, check=False)
