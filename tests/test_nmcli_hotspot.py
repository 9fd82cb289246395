"""The nmcli hotspot backend against stand-in `nmcli`, `iw` and `systemctl` first on PATH.

There is no NetworkManager here, so the test writes small programs named
`nmcli` and `iw` into tmp_path. Each records its argv (one JSON line per call)
and answers like the real tool from a state file the test controls: a
profile's state, exit codes, a hang, garbage on stdout. The backend runs them
exactly as it would run the real ones (PATH lookup, no shell).

The switch goes through `systemctl start bench-hotspot@up|down.service`; the
stand-in `systemctl` runs the ExecStart line of the shipped unit file (its
python and config path pointed at this test's) as systemd would, keeps its
exit status as the unit's ExecMainStatus, and can answer as systemd does when
polkit refuses or the unit is not installed. The real systemd, D-Bus and
polkit with the installed unit and rule are in `test_deploy_hotspot.py`.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from gpiozero.pins.mock import MockFactory

from bench_agent.config import Config
from bench_agent.config_loader import load_config
from bench_agent.hardware.hotspot import NmcliError, NmcliHotspot
from bench_agent.hardware.parts import build_outputs
from bench_agent.hardware.pi import build_pi_hardware
from bench_agent.power.controller import Controller
from bench_agent.power.soc import SocEstimator

REPO = Path(__file__).resolve().parent.parent
PROFILE = "Bench Hotspot"  # a space: proves nothing goes through a shell
SHOW = ["-t", "-f", "GENERAL.STATE,GENERAL.DEVICES", "connection", "show", "id", PROFILE]
UP = ["--wait", "8", "connection", "up", "id", PROFILE]
DOWN = ["--wait", "8", "connection", "down", "id", PROFILE]
HOTSPOT_UNIT = REPO / "deploy" / "bench-hotspot@.service"
START_UP = ["--no-ask-password", "start", "bench-hotspot@up.service"]
START_DOWN = ["--no-ask-password", "start", "bench-hotspot@down.service"]
EXEC_MAIN_STATUS_DOWN = [
    "show",
    "--property=ExecMainStatus",
    "--value",
    "bench-hotspot@down.service",
]
MACS = ["02:00:5e:10:00:01", "02:00:5e:10:00:02", "02:00:5e:10:00:03"]

# Answers like nmcli 1.42 (Bookworm) for the forms the backend uses; anything
# else exits 2, as nmcli does for arguments it does not understand.
STANDIN_NMCLI = """
import json, os, subprocess, sys
here = os.path.dirname(os.path.abspath(__file__))
argv = sys.argv[1:]
with open(os.path.join(here, "calls.jsonl"), "a") as log:
    log.write(json.dumps({
        "prog": "nmcli", "argv": argv, "lc_all": os.environ.get("LC_ALL"),
        "stdin": os.path.realpath("/proc/self/fd/0"), "unit": os.environ.get("STANDIN_UNIT"),
    }) + "\\n")
state_path = os.path.join(here, "nm.json")
with open(state_path) as f:
    nm = json.load(f)

def profile_matches(args):
    return args == ["id", nm["profile"]] and nm["exists"]

if argv[:5] == ["-t", "-f", "GENERAL.STATE,GENERAL.DEVICES", "connection", "show"]:
    verb = "show"
elif len(argv) == 6 and argv[0] == "--wait" and argv[2:4] in (["connection", "up"],
                                                              ["connection", "down"]):
    verb = argv[3]
else:
    sys.stderr.write("Error: argument not understood.\\n")
    sys.exit(2)

if verb in nm["hang"]:
    # A child holding our stdout, as a wrapper script would: only killing the
    # whole process group ends the wait for EOF.
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    with open(os.path.join(here, "hung.pid"), "w") as f:
        f.write(str(child.pid))
    child.wait()
if verb in nm["garbage"]:
    sys.stdout.buffer.write(bytes.fromhex(nm["garbage"][verb]))
    sys.exit(0)
if verb in nm["after"]:
    nm["state"] = nm["after"][verb]  # NetworkManager carries on whatever nmcli reports
    with open(state_path, "w") as f:
        json.dump(nm, f)
if verb in nm["exit"]:
    sys.stderr.write("Error: Connection activation failed: (7) Secrets were required.\\n")
    sys.exit(nm["exit"][verb])

target = argv[-2:] if verb != "show" else argv[5:]
if verb == "show":
    if not profile_matches(target):
        sys.stderr.write("Error: %s - no such connection profile.\\n" % target[-1])
        sys.exit(10)
    if nm["state"] != "deactivated":
        print("GENERAL.STATE:%s" % nm["state"])
        print("GENERAL.DEVICES:%s" % nm["device"])
elif verb == "up":
    if not profile_matches(target):
        sys.stderr.write("Error: unknown connection '%s'.\\n" % target[-1])
        sys.exit(10)
    nm["state"] = "activated"
    print("Connection successfully activated (D-Bus active path: /org/freedesktop/"
          "NetworkManager/ActiveConnection/7)")
else:
    if not profile_matches(target) or nm["state"] == "deactivated":
        sys.stderr.write("Error: '%s' is not an active connection.\\n" % target[-1])
        sys.stderr.write("Error: no active connection provided.\\n")
        sys.exit(10)
    nm["state"] = "deactivated"
    print("Connection '%s' successfully deactivated (D-Bus active path: /org/freedesktop/"
          "NetworkManager/ActiveConnection/7)" % target[-1])
with open(state_path, "w") as f:
    json.dump(nm, f)
"""

STANDIN_IW = """
import json, os, sys
here = os.path.dirname(os.path.abspath(__file__))
argv = sys.argv[1:]
with open(os.path.join(here, "calls.jsonl"), "a") as log:
    log.write(json.dumps({"prog": "iw", "argv": argv}) + "\\n")
with open(os.path.join(here, "nm.json")) as f:
    nm = json.load(f)
if nm["iw_exit"]:
    sys.stderr.write("command failed: Operation not permitted (-1)\\n")
    sys.exit(nm["iw_exit"])
if argv != ["dev", nm["device"], "station", "dump"]:
    sys.stderr.write("command failed: No such device (-19)\\n")
    sys.exit(237)
for mac in nm["stations"]:
    print("Station %s (on %s)" % (mac, nm["device"]))
    print("\\tinactive time:\\t1200 ms\\n\\trx bytes:\\t51234\\n\\tsignal:  \\t-52 dBm")
"""

# systemctl 252 for the forms the backend uses. `start` runs the unit's
# ExecStart (given as JSON argv with %i still in it) and fails as systemd
# does; `show --property=ExecMainStatus --value` reads what the last run left.
STANDIN_SYSTEMCTL = """
import json, os, subprocess, sys
here = os.path.dirname(os.path.abspath(__file__))
argv = sys.argv[1:]
with open(os.path.join(here, "calls.jsonl"), "a") as log:
    log.write(json.dumps({"prog": "systemctl", "argv": argv}) + "\\n")
state_path = os.path.join(here, "nm.json")
with open(state_path) as f:
    nm = json.load(f)
words = [a for a in argv if not a.startswith("--")]
if words[:1] == ["show"] and "--property=ExecMainStatus" in argv and "--value" in argv:
    print(nm["exec_main_status"].get(words[1], 0))
    sys.exit(0)
if len(words) != 2 or words[0] != "start":
    sys.stderr.write("Unknown command verb %s.\\n" % words[:1])
    sys.exit(1)
unit = words[1]
if nm["systemctl"] == "denied":
    sys.stderr.write("Failed to start %s: Interactive authentication required.\\n" % unit)
    sys.stderr.write("See system logs and 'systemctl status %s' for details.\\n" % unit)
    sys.exit(1)
prefix, sep, instance = unit.removesuffix(".service").partition("@")
if nm["systemctl"] == "no_unit" or prefix != "bench-hotspot" or not sep:
    sys.stderr.write("Failed to start %s: Unit %s not found.\\n" % (unit, unit))
    sys.exit(5)
with open(os.path.join(here, "exec_start.json")) as f:
    exec_start = [word.replace("%i", instance) for word in json.load(f)]
status = subprocess.call(exec_start, stdin=subprocess.DEVNULL,
                         env={**os.environ, "STANDIN_UNIT": unit})
nm["exec_main_status"][unit] = status
with open(state_path) as f:
    latest = json.load(f)  # nmcli changed the profile's state meanwhile
latest["exec_main_status"] = nm["exec_main_status"]
with open(state_path, "w") as f:
    json.dump(latest, f)
if status != 0:
    sys.stderr.write("Job for %s failed because the control process exited with error code.\\n"
                     % unit)
    sys.exit(1)
"""


def shipped_exec_start(config: Path) -> list[str]:
    """The hotspot unit's ExecStart, with this test's python and config for the installed ones."""
    lines = [
        line.partition("=")[2]
        for line in HOTSPOT_UNIT.read_text().splitlines()
        if line.startswith("ExecStart=")
    ]
    assert len(lines) == 1, lines
    argv = shlex.split(lines[0])
    assert argv[0] == "/opt/bench-agent/venv/bin/python"
    assert argv[-1] == "/etc/bench-agent/bench-agent.toml"
    return [sys.executable, *argv[1:-1], str(config)]


class FakeNetworkManager:
    """The stand-in tools' directory, their shared state file and their call log."""

    def __init__(self, bin_dir: Path) -> None:
        self.bin_dir = bin_dir
        self.state_path = bin_dir / "nm.json"
        self.calls_path = bin_dir / "calls.jsonl"
        for name, body in (
            ("nmcli", STANDIN_NMCLI),
            ("iw", STANDIN_IW),
            ("systemctl", STANDIN_SYSTEMCTL),
        ):
            path = bin_dir / name
            path.write_text(f"#!{sys.executable}\n{body}")
            path.chmod(0o755)
        # What the root-owned config says: the only profile the switch ever touches.
        config = bin_dir / "bench-agent.toml"
        config.write_text(f'[outputs.wifi]\nbackend = "nmcli"\nnmcli_connection = "{PROFILE}"\n')
        (bin_dir / "exec_start.json").write_text(json.dumps(shipped_exec_start(config)))
        self.state: dict[str, Any] = {
            "profile": PROFILE,
            "exists": True,
            "state": "deactivated",
            "device": "wlan0",
            "exit": {},
            "hang": [],
            "garbage": {},
            "after": {},
            "stations": [],
            "iw_exit": 0,
            "systemctl": "ok",  # or "denied" (polkit said no), "no_unit" (not installed)
            "exec_main_status": {},
        }
        self.save()

    def save(self) -> None:
        self.state_path.write_text(json.dumps(self.state))

    def set(self, **changes: Any) -> None:
        self.state = {**json.loads(self.state_path.read_text()), **changes}
        self.save()

    def nm_state(self) -> str:
        return str(json.loads(self.state_path.read_text())["state"])

    def records(self) -> list[dict[str, Any]]:
        if not self.calls_path.exists():
            return []
        return [json.loads(line) for line in self.calls_path.read_text().splitlines()]

    def calls(self, prog: str = "nmcli") -> list[list[str]]:
        return [r["argv"] for r in self.records() if r["prog"] == prog]

    def forget_calls(self) -> None:
        self.calls_path.unlink(missing_ok=True)


class FakeClock:
    """Monotonic seconds the test moves by hand, for backoff and re-reads."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def nm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeNetworkManager:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    return FakeNetworkManager(bin_dir)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def hotspots() -> Iterator[list[NmcliHotspot]]:
    made: list[NmcliHotspot] = []
    yield made
    for hotspot in made:
        hotspot.close()


def make(
    made: list[NmcliHotspot], clock: FakeClock, safe_state_on: bool = False, **kwargs: Any
) -> NmcliHotspot:
    hotspot = NmcliHotspot("wifi", PROFILE, safe_state_on, monotonic=clock, **kwargs)
    made.append(hotspot)
    return hotspot


def is_on(hotspot: NmcliHotspot) -> bool:
    """Read through a call, so mypy does not narrow the attribute between reads."""
    return hotspot.is_on


def fault_of(hotspot: NmcliHotspot) -> str | None:
    return hotspot.fault


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.name == "bench_agent.hardware.hotspot" and r.levelno >= logging.WARNING
    ]


# -- start: learn the real state ----------------------------------------------


def test_start_asks_networkmanager_and_leaves_an_inactive_hotspot_alone(
    nm: FakeNetworkManager, clock: FakeClock, hotspots: list[NmcliHotspot]
) -> None:
    hotspot = make(hotspots, clock)
    assert nm.calls() == [SHOW]
    assert is_on(hotspot) is False
    assert fault_of(hotspot) is None
    record = nm.records()[0]
    assert record["lc_all"] == "C"  # untranslated states and messages
    assert record["stdin"] == "/dev/null"  # nmcli can never sit at a prompt


def test_start_switches_an_active_hotspot_to_its_safe_state(
    nm: FakeNetworkManager, clock: FakeClock, hotspots: list[NmcliHotspot]
) -> None:
    nm.set(state="activated")
    hotspot = make(hotspots, clock)
    assert nm.calls() == [SHOW, DOWN]
    assert is_on(hotspot) is False
    assert nm.nm_state() == "deactivated"


def test_start_with_safe_state_on_keeps_an_active_hotspot_without_restarting_it(
    nm: FakeNetworkManager, clock: FakeClock, hotspots: list[NmcliHotspot]
) -> None:
    nm.set(state="activated")
    hotspot = make(hotspots, clock, safe_state_on=True)
    assert nm.calls() == [SHOW]  # an `up` now would drop every phone on the hotspot
    assert is_on(hotspot) is True


def test_start_while_activating_is_not_on_and_still_reaches_the_safe_state(
    nm: FakeNetworkManager, clock: FakeClock, hotspots: list[NmcliHotspot]
) -> None:
    nm.set(state="activating")
    hotspot = make(hotspots, clock)
    assert nm.calls() == [SHOW, SHOW, DOWN]
    assert is_on(hotspot) is False
    assert nm.nm_state() == "deactivated"


# -- switching ----------------------------------------------------------------


def test_on_and_off_use_the_exact_invocations_once_each(
    nm: FakeNetworkManager, clock: FakeClock, hotspots: list[NmcliHotspot]
) -> None:
    hotspot = make(hotspots, clock)
    hotspot.set(True)
    assert is_on(hotspot) is True
    assert nm.nm_state() == "activated"
    hotspot.set(True)  # already on: no second `up`
    hotspot.set(False)
    assert is_on(hotspot) is False
    hotspot.set(False)
    assert nm.calls() == [SHOW, UP, DOWN]
    assert fault_of(hotspot) is None


def test_down_of_a_profile_networkmanager_already_dropped_counts_as_off(
    nm: FakeNetworkManager, clock: FakeClock, hotspots: list[NmcliHotspot]
) -> None:
    nm.set(state="activated")
    hotspot = make(hotspots, clock, safe_state_on=True)
    nm.set(state="deactivated")  # behind our back; nmcli down will exit 10
    hotspot.set(False)
    assert is_on(hotspot) is False
    assert fault_of(hotspot) is None
    assert nm.calls() == [SHOW, DOWN]


def test_is_on_reads_networkmanager_again_after_confirm_every_s(
    nm: FakeNetworkManager, clock: FakeClock, hotspots: list[NmcliHotspot]
) -> None:
    nm.set(state="activated")
    hotspot = make(hotspots, clock, safe_state_on=True, confirm_every_s=60.0)
    nm.set(state="deactivated")  # the radio went away without us
    clock.now += 59.0
    assert is_on(hotspot) is True  # not due yet: the last answer stands
    assert nm.calls() == [SHOW]
    clock.now += 1.0
    assert is_on(hotspot) is False
    assert nm.calls() == [SHOW, SHOW]


def test_the_agent_switches_only_through_the_units_and_they_name_no_profile(
    nm: FakeNetworkManager, clock: FakeClock, hotspots: list[NmcliHotspot]
) -> None:
    hotspot = make(hotspots, clock)
    hotspot.set(True)
    hotspot.set(False)
    assert nm.calls("systemctl") == [START_UP, START_DOWN]
    switches = [r for r in nm.records() if r["prog"] == "nmcli" and r["argv"] != SHOW]
    assert [r["argv"] for r in switches] == [UP, DOWN]
    # Every up/down ran inside the root-owned unit, in the C locale, without a terminal.
    assert [r["unit"] for r in switches] == [
        "bench-hotspot@up.service",
        "bench-hotspot@down.service",
    ]
    assert all(r["lc_all"] == "C" and r["stdin"] == "/dev/null" for r in switches)
    # The profile comes from the root-owned config, never from the agent's command line.
    assert not any(PROFILE in word for call in nm.calls("systemctl") for word in call)


def test_refused_by_polkit_is_a_fault_that_names_the_rule(
    nm: FakeNetworkManager, clock: FakeClock, hotspots: list[NmcliHotspot]
) -> None:
    hotspot = make(hotspots, clock)
    nm.set(systemctl="denied")
    with pytest.raises(NmcliError) as raised:
        hotspot.set(True)
    assert raised.value.fault == "not_authorized"
    assert "polkit rule" in str(raised.value)
    assert nm.calls() == [SHOW]  # nmcli never ran
    assert nm.nm_state() == "deactivated"
    assert is_on(hotspot) is False


def test_a_missing_switch_unit_is_a_fault_that_says_to_install(
    nm: FakeNetworkManager, clock: FakeClock, hotspots: list[NmcliHotspot]
) -> None:
    hotspot = make(hotspots, clock)
    nm.set(systemctl="no_unit")
    with pytest.raises(NmcliError) as raised:
        hotspot.set(True)
    assert raised.value.fault == "switch_unit_missing"
    assert "install.sh" in str(raised.value)
    assert nm.calls() == [SHOW]


def test_a_config_without_an_nmcli_hotspot_switches_nothing_and_says_so(
    nm: FakeNetworkManager, clock: FakeClock, hotspots: list[NmcliHotspot]
) -> None:
    hotspot = make(hotspots, clock)
    (nm.bin_dir / "bench-agent.toml").write_text('[outputs.wifi]\nbackend = "gpio"\npin = 22\n')
    with pytest.raises(NmcliError) as raised:
        hotspot.set(True)
    assert raised.value.fault == "switch_config"
    assert nm.calls() == [SHOW]


def run_switch(*args: str) -> subprocess.CompletedProcess[str]:
    """The switch as the unit runs it (python -I -m), with this test's PATH."""
    return subprocess.run(
        [sys.executable, "-I", "-m", "bench_agent.hardware.hotspot_switch", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    "instance",
    ["uplink", "Up", "up ", "", "down;nmcli", "connection", "reload", "../up"],
)
def test_the_switch_refuses_any_instance_but_up_and_down(
    nm: FakeNetworkManager, instance: str
) -> None:
    r = run_switch(instance, str(nm.bin_dir / "bench-agent.toml"))
    assert r.returncode == 64, r.stdout + r.stderr
    assert nm.records() == []  # nmcli never ran


@pytest.mark.parametrize(
    "config",
    [
        None,  # missing
        "[outputs.wifi\n",  # not TOML
        '[outputs.wifi]\nbackend = "gpio"\npin = 22\n',
        '[outputs.wifi]\nbackend = "nmcli"\n',
        '[outputs.wifi]\nbackend = "nmcli"\nnmcli_connection = ""\n',
        '[outputs.wifi]\nbackend = "nmcli"\nnmcli_connection = 7\n',
        '[outputs.usb1]\nbackend = "nmcli"\nnmcli_connection = "uplink"\n',  # not the wifi
        '[outputs]\nwifi = "uplink"\n',
    ],
)
def test_the_switch_runs_nmcli_only_for_the_configured_hotspot(
    nm: FakeNetworkManager, tmp_path: Path, config: str | None
) -> None:
    path = tmp_path / "bench-agent.toml"
    if config is not None:
        path.write_text(config)
    r = run_switch("up", str(path))
    assert r.returncode == 78, r.stdout + r.stderr
    assert nm.records() == []


def test_a_bench_without_networkmanager_is_the_nmcli_missing_fault_through_the_unit(
    nm: FakeNetworkManager, clock: FakeClock, hotspots: list[NmcliHotspot]
) -> None:
    nm.set(state="activated")
    hotspot = make(hotspots, clock, safe_state_on=True)  # read while nmcli was there
    (nm.bin_dir / "nmcli").unlink()  # NetworkManager removed (nmcli is not on PATH)
    r = run_switch("up", str(nm.bin_dir / "bench-agent.toml"))
    assert r.returncode == 127 and "nmcli cannot run" in r.stdout
    assert "Traceback" not in r.stdout + r.stderr
    with pytest.raises(NmcliError) as raised:
        hotspot.set(False)
    assert raised.value.fault == "nmcli_missing"
    assert "exit status 127" in str(raised.value)


def test_the_switch_passes_nmcli_status_through_and_a_down_of_an_inactive_profile_is_done(
    nm: FakeNetworkManager,
) -> None:
    config = str(nm.bin_dir / "bench-agent.toml")
    nm.set(exit={"up": 4})
    assert run_switch("up", config).returncode == 4
    nm.set(exit={})
    assert run_switch("down", config).returncode == 0  # nmcli said 10: it was not active
    nm.set(exists=False)
    assert run_switch("up", config).returncode == 10  # profile_missing, for the agent
    assert nm.calls() == [UP, DOWN, UP]


# -- failures -----------------------------------------------------------------


def test_activation_failure_exit_4_raises_keeps_the_state_and_logs_once(
    nm: FakeNetworkManager,
    clock: FakeClock,
    hotspots: list[NmcliHotspot],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="bench_agent.hardware.hotspot")
    hotspot = make(hotspots, clock, retry_min_s=10.0, retry_max_s=25.0)
    nm.set(exit={"up": 4})
    with pytest.raises(NmcliError) as raised:
        hotspot.set(True)
    assert isinstance(raised.value, OSError)  # what the controller catches
    assert raised.value.fault == "activation_failed"
    # nmcli's own words went to the unit's journal; the error says where.
    assert "exit status 4" in str(raised.value)
    assert "journalctl -u bench-hotspot@up.service" in str(raised.value)
    assert fault_of(hotspot) == "activation_failed"
    assert is_on(hotspot) is False
    assert nm.calls() == [SHOW, UP]

    # Within the backoff: refused at once, nmcli not run again.
    clock.now += 9.0
    with pytest.raises(NmcliError, match="next try in 1 s"):
        hotspot.set(True)
    assert is_on(hotspot) is False
    assert nm.calls() == [SHOW, UP]

    # After it: ask first (the state is unknown), then try again; the backoff doubles.
    clock.now += 1.0
    with pytest.raises(NmcliError):
        hotspot.set(True)
    assert nm.calls() == [SHOW, UP, SHOW, UP]
    clock.now += 10.0
    with pytest.raises(NmcliError, match="next try in 10 s"):
        hotspot.set(True)
    clock.now += 10.0
    with pytest.raises(NmcliError):
        hotspot.set(True)
    clock.now += 24.0  # capped at retry_max_s = 25
    with pytest.raises(NmcliError, match="next try in 1 s"):
        hotspot.set(True)

    warnings = warnings_of(caplog)
    assert len(warnings) == 1  # once per streak
    assert warnings[0].exc_info is None  # no traceback
    assert "retrying in 10 s" in warnings[0].getMessage()

    nm.set(exit={})
    clock.now += 1.0
    hotspot.set(True)
    assert is_on(hotspot) is True
    assert fault_of(hotspot) is None
    assert any("works again" in r.getMessage() for r in caplog.records)

    # A new streak is logged again, and starts over at retry_min_s.
    nm.set(exit={"down": 5})
    with pytest.raises(NmcliError) as raised:
        hotspot.set(False)
    assert raised.value.fault == "deactivation_failed"
    assert is_on(hotspot) is True  # still on: that is the truth
    assert len(warnings_of(caplog)) == 2
    assert "retrying in 10 s" in warnings_of(caplog)[1].getMessage()


def test_wait_expired_then_the_next_read_learns_that_networkmanager_finished(
    nm: FakeNetworkManager, clock: FakeClock, hotspots: list[NmcliHotspot]
) -> None:
    hotspot = make(hotspots, clock, retry_min_s=5.0)
    nm.set(exit={"up": 3}, after={"up": "activated"})
    with pytest.raises(NmcliError) as raised:
        hotspot.set(True)
    assert raised.value.fault == "nmcli_wait_expired"
    assert is_on(hotspot) is False  # not confirmed: never report a wish
    clock.now += 5.0
    nm.set(exit={}, after={})
    assert is_on(hotspot) is True  # asked NetworkManager, no second `up`
    hotspot.set(True)
    assert nm.calls() == [SHOW, UP, SHOW]
    assert fault_of(hotspot) is None


def test_missing_profile_is_a_fault_not_a_crash(
    nm: FakeNetworkManager, clock: FakeClock, hotspots: list[NmcliHotspot]
) -> None:
    nm.set(exists=False)
    hotspot = make(hotspots, clock, retry_min_s=5.0)
    assert fault_of(hotspot) == "profile_missing"
    assert is_on(hotspot) is False
    clock.now += 5.0
    with pytest.raises(NmcliError) as raised:
        hotspot.set(True)
    assert raised.value.fault == "profile_missing"
    assert "no such connection profile" in str(raised.value)
    assert nm.calls() == [SHOW, SHOW]  # never an `up` of a profile that is not there


def test_nmcli_missing_from_path(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    clock: FakeClock,
    hotspots: list[NmcliHotspot],
    caplog: pytest.LogCaptureFixture,
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    hotspot = make(hotspots, clock, retry_min_s=5.0)
    assert fault_of(hotspot) == "nmcli_missing"
    assert is_on(hotspot) is False
    clock.now += 5.0
    with pytest.raises(NmcliError) as raised:
        hotspot.set(True)
    assert raised.value.fault == "nmcli_missing"
    hotspot.close()  # does not raise either
    assert len(warnings_of(caplog)) == 2  # the streak, then the failed return to safe state
    assert all(r.exc_info is None for r in warnings_of(caplog))


def test_a_hung_nmcli_is_killed_after_the_timeout(
    nm: FakeNetworkManager, clock: FakeClock, hotspots: list[NmcliHotspot]
) -> None:
    nm.set(hang=["show", "up"])
    started = time.monotonic()
    # 3 s: short, yet ample for the stand-in's answers that do not hang on a loaded machine.
    hotspot = make(hotspots, clock, timeout_s=3.0, retry_min_s=5.0)
    # The stand-in would hang for 30 s; the timeout is what ends the call.
    assert time.monotonic() - started < 20.0
    assert fault_of(hotspot) == "nmcli_timeout"
    assert is_on(hotspot) is False
    assert_gone(int((nm.bin_dir / "hung.pid").read_text()))

    nm.set(hang=["up"])
    clock.now += 5.0
    started = time.monotonic()
    with pytest.raises(NmcliError) as raised:
        hotspot.set(True)
    assert time.monotonic() - started < 20.0
    assert raised.value.fault == "systemctl_timeout"  # the switch's unit did not finish in time
    assert is_on(hotspot) is False
    assert nm.calls() == [SHOW, SHOW, UP]


def assert_gone(pid: int) -> None:
    """The process is dead (gone, or a zombie waiting for a reaper that is not us)."""
    deadline = time.monotonic() + 10.0
    while time.monotonic() < deadline:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except FileNotFoundError:
            return
        if stat.rsplit(")", 1)[1].split()[0] in ("Z", "X"):
            return
        time.sleep(0.05)
    raise AssertionError(f"process {pid} outlived the timeout")


@pytest.mark.parametrize(
    "stdout",
    [
        "ff fe 00 c3 28 0a",  # not UTF-8 at all
        b"GENERAL.STATE:exploded\n".hex(),  # a state nmcli does not have
        b"Warning: nmcli (1.46) and NetworkManager (1.42) versions don't match\n".hex(),
        b"GENERAL.DEVICES:wlan0\n".hex(),  # a device but no state
    ],
)
def test_unreadable_output_is_a_fault_and_not_a_state(
    nm: FakeNetworkManager, clock: FakeClock, hotspots: list[NmcliHotspot], stdout: str
) -> None:
    nm.set(state="activated", garbage={"show": stdout})
    hotspot = make(hotspots, clock, safe_state_on=True)
    assert fault_of(hotspot) == "nmcli_unreadable"
    assert is_on(hotspot) is False  # last known, never guessed
    assert nm.calls() == [SHOW]


# -- stop ---------------------------------------------------------------------


def test_close_switches_off_once_even_during_a_backoff(
    nm: FakeNetworkManager, clock: FakeClock, hotspots: list[NmcliHotspot]
) -> None:
    hotspot = make(hotspots, clock, retry_min_s=60.0)
    hotspot.set(True)
    nm.set(exit={"down": 5})
    with pytest.raises(NmcliError):
        hotspot.set(False)
    nm.set(exit={})
    hotspot.close()  # backoff running; the agent is leaving, so it tries anyway
    hotspot.close()
    assert nm.calls() == [SHOW, UP, DOWN, DOWN]
    assert nm.calls("systemctl")[-2:] == [EXEC_MAIN_STATUS_DOWN, START_DOWN]
    assert is_on(hotspot) is False
    assert nm.nm_state() == "deactivated"
    with pytest.raises(NmcliError, match="closed"):
        hotspot.set(True)
    assert nm.calls() == [SHOW, UP, DOWN, DOWN]


def test_close_with_safe_state_on_brings_it_up_only_when_not_known_on(
    nm: FakeNetworkManager, clock: FakeClock, hotspots: list[NmcliHotspot]
) -> None:
    hotspot = make(hotspots, clock, safe_state_on=True)
    assert nm.calls() == [SHOW, UP]
    hotspot.set(False)
    hotspot.close()
    assert nm.calls() == [SHOW, UP, DOWN, UP]
    assert is_on(hotspot) is True


# -- client count -------------------------------------------------------------


def test_client_count_counts_stations_and_keeps_no_mac(
    nm: FakeNetworkManager,
    clock: FakeClock,
    hotspots: list[NmcliHotspot],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    nm.set(stations=MACS)
    hotspot = make(hotspots, clock)
    assert hotspot.client_count() == 0  # known off: no hotspot, no clients
    assert nm.calls("iw") == []
    hotspot.set(True)
    assert hotspot.client_count() == 3
    # The interface came from NetworkManager (one `show` after the `up`).
    assert nm.calls() == [SHOW, UP, SHOW]
    assert nm.calls("iw") == [["dev", "wlan0", "station", "dump"]]
    nm.set(stations=MACS[:1])
    assert hotspot.client_count() == 1
    assert nm.calls() == [SHOW, UP, SHOW]

    nm.set(iw_exit=1)
    assert hotspot.client_count() is None
    assert hotspot.client_count() is None
    assert len(warnings_of(caplog)) == 1
    assert fault_of(hotspot) is None  # counting is not switching

    kept = repr(vars(hotspot)) + caplog.text
    assert not any(mac in kept for mac in MACS)


def test_client_count_is_unknown_when_nmcli_fails(
    nm: FakeNetworkManager, clock: FakeClock, hotspots: list[NmcliHotspot]
) -> None:
    nm.set(exit={"show": 8})
    hotspot = make(hotspots, clock)
    assert fault_of(hotspot) == "networkmanager_not_running"
    assert hotspot.client_count() is None
    assert nm.calls("iw") == []


# -- wiring ---------------------------------------------------------------------


def nmcli_reference_config(tmp_path: Path) -> Config:
    """config/bench-agent.toml with the hotspot on the nmcli backend."""
    text = (REPO / "config/bench-agent.toml").read_text()
    wifi = '[outputs.wifi]\nbackend = "gpio"\npin = 22\n'
    assert wifi in text
    text = text.replace(
        wifi, f'[outputs.wifi]\nbackend = "nmcli"\nnmcli_connection = "{PROFILE}"\n'
    )
    path = tmp_path / "bench.toml"
    path.write_text(text)
    return load_config(path)


def test_the_reference_config_with_the_nmcli_backend_builds_this_hotspot(
    nm: FakeNetworkManager, tmp_path: Path, hotspots: list[NmcliHotspot]
) -> None:
    outputs = build_outputs(nmcli_reference_config(tmp_path), MockFactory())
    try:
        wifi_output = outputs["wifi"]
        assert isinstance(wifi_output, NmcliHotspot)
        hotspots.append(wifi_output)
        assert nm.calls() == [SHOW]
        wifi_output.set(True)
        assert nm.calls() == [SHOW, UP]  # the production --wait
    finally:
        for name, output in outputs.items():
            if name != "wifi":
                output.close()


def test_the_controller_sees_a_failing_hotspot_and_retries_it_on_the_backoff(
    nm: FakeNetworkManager,
    tmp_path: Path,
    clock: FakeClock,
    hotspots: list[NmcliHotspot],
    caplog: pytest.LogCaptureFixture,
) -> None:
    cfg = nmcli_reference_config(tmp_path)
    hotspot = make(hotspots, clock, retry_min_s=10.0)
    events: list[tuple[str, dict[str, Any]]] = []
    controller = Controller(
        cfg.policy,
        {"wifi": hotspot},
        SocEstimator(cfg.battery.capacity_ah, cfg.battery.chemistry),
        emit_event=lambda kind, data: events.append((kind, data)),
    )
    noon = datetime(2024, 6, 1, 12, 0, tzinfo=cfg.tz)
    nm.set(exit={"up": 4})

    def run_until(t: float) -> None:
        # One sample a second, as the main loop does; the hotspot's clock moves with it.
        while clock.now - 1000.0 <= t:
            mono = clock.now - 1000.0
            controller.step(noon + timedelta(seconds=mono), mono, {}, cpu_c=45.0)
            clock.now += 1.0

    run_until(35.0)
    # Tries at 0 s, then after 10 s and 20 s of backoff; each retry asks first.
    assert nm.calls() == [SHOW, UP, SHOW, UP, SHOW, UP]
    # One event for the whole streak, though the controller retries every sample.
    assert [kind for kind, _ in events] == ["output_error"]
    assert all(data["output"] == "wifi" for _, data in events)
    assert is_on(hotspot) is False
    assert fault_of(hotspot) == "activation_failed"
    assert len(warnings_of(caplog)) == 1

    nm.set(exit={})
    events.clear()
    run_until(71.0)  # the next try is due 40 s after the one at 30 s
    assert nm.calls()[6:] == [SHOW, UP]
    assert ("output_switched", "on") in [(kind, data.get("to")) for kind, data in events]
    assert is_on(hotspot) is True
    assert fault_of(hotspot) is None


def test_the_pi_bench_counts_wifi_clients_through_its_nmcli_hotspot(
    nm: FakeNetworkManager, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("bench_agent.hardware.pi.open_lgpio_factory", MockFactory)
    nm.set(state="activated", stations=MACS[:2])
    cfg = nmcli_reference_config(tmp_path)
    cfg = replace(
        cfg, outputs=tuple(replace(o, safe_state_on=o.name == "wifi") for o in cfg.outputs)
    )
    with build_pi_hardware(cfg, on_tamper=lambda _open: None) as hardware:
        assert hardware.hotspot is hardware.outputs["wifi"]
        assert hardware.wifi_clients() == 2
    assert nm.calls("iw") == [["dev", "wlan0", "station", "dump"]]
