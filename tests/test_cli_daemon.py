"""The technician's CLI against a running daemon on the simulated bench, in English and
Indonesian: `bench-agent status|usb|wifi|fault reset|selftest|events` as real processes
talking to the real control socket of a real agent process."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from tests.support import REPO, AgentProcess, Broker, wait_until

STATUS_SCHEMA = json.loads(
    (REPO / "bench_agent" / "schemas" / "control-status.schema.json").read_text()
)
EN = {"LANG": "C.UTF-8", "LANGUAGE": "", "LC_ALL": "", "LC_MESSAGES": ""}
ID = {"LANG": "id_ID.UTF-8", "LANGUAGE": "", "LC_ALL": "", "LC_MESSAGES": ""}


# What the command event and the override record: the local user, from SO_PEERCRED.
TECHNICIAN = f"technician:uid={os.getuid()}({pwd.getpwuid(os.getuid()).pw_name})"


def cli(
    socket_path: Path, *args: str, lang: Mapping[str, str] = EN, user: int | None = None
) -> subprocess.CompletedProcess[str]:
    """`bench-agent --socket PATH ARGS…` as a technician would type it."""
    command = [sys.executable, "-m", "bench_agent", "--socket", str(socket_path), *args]
    if user is not None:
        # Drop root for the permission test: root ignores the socket's mode.
        command = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", *command]
    env = {**os.environ, **lang, "PYTHONPATH": str(REPO)}
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=60, check=False)


def status_json(socket_path: Path) -> dict[str, Any]:
    done = cli(socket_path, "status", "--json")
    assert done.returncode == 0, done.stderr
    status: dict[str, Any] = json.loads(done.stdout)
    jsonschema.validate(status, STATUS_SCHEMA)
    return status


def wait_ready(agent: AgentProcess, socket_path: Path) -> None:
    """The socket answers, the broker link is up, the charger has sent its first block."""
    wait_until(lambda: cli(socket_path, "status").returncode == 0, 30, f"socket\n{agent.log}")
    wait_until(lambda: status_json(socket_path)["link"]["connected"], 30, "broker link")
    wait_until(lambda: status_json(socket_path)["charger"]["state"] is not None, 20, "a block")


@pytest.fixture
def daemon(
    broker: Broker, start_agent: Callable[..., AgentProcess], tmp_path: Path
) -> Iterator[Path]:
    """A running agent with the broker up; yields its control socket."""
    agent = start_agent(broker.port)
    socket_path = tmp_path / "control.sock"
    wait_ready(agent, socket_path)
    yield socket_path
    assert agent.stop() == 0, agent.log


def write_scenario(tmp_path: Path, events: list[dict[str, Any]]) -> Path:
    lines = ['[scenario]\nname = "test"\n']
    for event in events:
        lines.append("[[event]]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in event.items()]
        lines.append("")
    path = tmp_path / "scenario.toml"
    path.write_text("\n".join(lines))
    return path


def test_status_human_and_json(daemon: Path) -> None:
    status = status_json(daemon)
    assert status["bench"] == "sim-bench-01"
    assert set(status["outputs"]) == {"usb1", "usb2", "wifi"}
    assert set(status["channels"]) == {"solar", "battery", "usb1", "usb2", "wifi"}
    assert status["clock"]["synced"] is True
    assert status["charger"] is not None
    human = cli(daemon, "status")
    assert human.returncode == 0
    lines = human.stdout.splitlines()
    assert all(len(line) <= 80 for line in lines), human.stdout
    assert "sim-bench-01" in human.stdout
    for name in ("usb1", "usb2", "wifi", "battery", "solar"):
        assert name in human.stdout or name.upper() in human.stdout.upper()


def test_override_with_expiry_then_auto(daemon: Path) -> None:
    done = cli(daemon, "usb", "1", "off", "--for", "30m")
    assert done.returncode == 0, done.stderr
    usb1 = status_json(daemon)["outputs"]["usb1"]
    assert usb1["override"]["state"] == "off"
    # The local user who sent it, from the socket's peer credentials (the tests run as root).
    assert usb1["override"]["source"] == TECHNICIAN
    assert 0 < usb1["override"]["expires_in_s"] <= 1800
    wait_until(lambda: status_json(daemon)["outputs"]["usb1"]["on"] is False, 20, "usb1 off")
    # 30 min of simulated time pass in 7.5 s: the override expires by itself.
    wait_until(lambda: status_json(daemon)["outputs"]["usb1"]["override"] is None, 30, "expiry")

    assert cli(daemon, "wifi", "off").returncode == 0
    wifi = status_json(daemon)["outputs"]["wifi"]
    assert wifi["override"] == {"state": "off", "expires_in_s": None, "source": TECHNICIAN}
    assert cli(daemon, "wifi", "auto").returncode == 0
    assert status_json(daemon)["outputs"]["wifi"]["override"] is None

    events = cli(daemon, "events", "--json")
    assert events.returncode == 0
    parsed = [json.loads(line) for line in events.stdout.splitlines()]
    commands = [e for e in parsed if e["type"] == "command"]
    assert [(c["action"], c["args"].get("state"), c["ok"]) for c in commands] == [
        ("usb.set", "off", True),
        ("wifi.set", "off", True),
        ("wifi.set", "auto", True),
    ]
    assert all(e["source"] == TECHNICIAN for e in commands)
    assert all(isinstance(e["seq"], int) for e in parsed)


def test_bad_arguments_are_one_line_and_change_nothing(daemon: Path) -> None:
    before = status_json(daemon)["outputs"]
    for args in (("usb", "9", "on"), ("usb", "1", "sideways"), ("usb", "1", "on", "--for", "x")):
        done = cli(daemon, *args)
        assert done.returncode != 0
        assert "Traceback" not in done.stderr
        assert len(done.stderr.strip().splitlines()) <= 3, done.stderr  # argparse: usage + error
    after = status_json(daemon)["outputs"]
    assert {k: v["override"] for k, v in after.items()} == {
        k: v["override"] for k, v in before.items()
    }


def test_selftest_passes_on_the_simulated_bench(daemon: Path) -> None:
    done = cli(daemon, "selftest")
    assert done.returncode == 0, done.stdout + done.stderr
    names = [line.split()[1].rstrip(":") for line in done.stdout.splitlines()[:-1]]
    assert names[:1] == ["config"]
    assert {"sensor.solar", "sensor.battery", "charger", "broker", "clock", "storage"} <= set(names)
    assert done.stdout.splitlines()[-1] == f"All {len(names)} checks passed."


def test_selftest_fails_with_a_useful_line_when_a_sensor_fails(
    broker: Broker, start_agent: Callable[..., AgentProcess], tmp_path: Path
) -> None:
    scenario = write_scenario(tmp_path, [{"at": 0, "action": "sensor.fail", "channel": "usb2"}])
    agent = start_agent(broker.port, {"sim": {"scenario": str(scenario)}})
    socket_path = tmp_path / "control.sock"
    wait_ready(agent, socket_path)
    wait_until(
        lambda: status_json(socket_path)["channels"]["usb2"]["fault"] is not None, 30, "fault"
    )
    done = cli(socket_path, "selftest")
    assert done.returncode == 1
    failing = [line for line in done.stdout.splitlines() if line.startswith("FAIL")]
    assert len(failing) == 1, done.stdout
    assert failing[0].startswith("FAIL  sensor.usb2: ")
    assert "i2cdetect" in failing[0]  # what to do about it
    indonesian = cli(socket_path, "selftest", lang=ID)
    assert indonesian.returncode == 1
    assert any(line.startswith("GAGAL  sensor.usb2: ") for line in indonesian.stdout.splitlines())
    assert "periksa" in indonesian.stdout.lower()
    assert agent.stop() == 0


def test_refused_override_says_why(
    broker: Broker, start_agent: Callable[..., AgentProcess], tmp_path: Path
) -> None:
    # A flat battery: battery protection keeps the USB ports off, whatever a person asks.
    scenario = write_scenario(tmp_path, [{"at": 0, "action": "battery.set", "soc_pct": 3}])
    agent = start_agent(broker.port, {"sim": {"scenario": str(scenario)}})
    socket_path = tmp_path / "control.sock"
    wait_ready(agent, socket_path)
    wait_until(
        lambda: status_json(socket_path)["outputs"]["usb1"]["reason"] == "battery_low",
        60,
        "battery protection",
    )
    done = cli(socket_path, "usb", "1", "on")
    assert done.returncode == 1
    assert done.stdout.startswith("USB port 1: refused: "), done.stdout
    assert status_json(socket_path)["outputs"]["usb1"]["override"] is None
    indonesian = cli(socket_path, "usb", "1", "on", lang=ID)
    assert indonesian.returncode == 1
    assert "ditolak" in indonesian.stdout
    assert agent.stop() == 0


def test_indonesian_output(daemon: Path) -> None:
    status = cli(daemon, "status", lang=ID)
    assert status.returncode == 0
    english = cli(daemon, "status")
    assert status.stdout != english.stdout
    done = cli(daemon, "usb", "2", "off", "--for", "3h", lang=ID)
    assert done.returncode == 0
    assert "Port USB 2" in done.stdout or "port USB 2" in done.stdout, done.stdout
    events = cli(daemon, "events", lang=ID)
    assert events.returncode == 0
    assert "usb.set" in events.stdout
    wifi_id, wifi_en = cli(daemon, "wifi", "auto", lang=ID), cli(daemon, "wifi", "auto")
    assert wifi_id.returncode == wifi_en.returncode == 0
    assert wifi_id.stdout != wifi_en.stdout  # the same answer, in Indonesian
    reset = cli(daemon, "fault", "reset", lang=ID)
    assert reset.returncode == 0
    assert reset.stdout.strip() != "No latched faults to reset."


def test_events_since_filters_by_time(daemon: Path) -> None:
    assert cli(daemon, "usb", "1", "off").returncode == 0
    recent = cli(daemon, "events", "--json", "--since", "1h")
    assert recent.returncode == 0
    assert any(json.loads(line)["type"] == "command" for line in recent.stdout.splitlines())
    # At 240x a CLI round trip is minutes of bench time: the command is older than 1 s.
    last_second = cli(daemon, "events", "--json", "--since", "1s")
    assert last_second.returncode == 0
    assert not any(
        json.loads(line)["type"] == "command" for line in last_second.stdout.splitlines()
    )


def test_daemon_not_running_is_one_line(tmp_path: Path) -> None:
    for lang, word in ((EN, "not running"), (ID, "tidak berjalan")):
        done = cli(tmp_path / "nothing.sock", "status", lang=lang)
        assert done.returncode == 69
        assert done.stdout == ""
        assert len(done.stderr.strip().splitlines()) == 1
        assert word in done.stderr


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root to drop to nobody"
)
def test_permission_denied_is_one_line(daemon: Path) -> None:
    nobody = 65534
    for lang, word in ((EN, "permission denied"), (ID, "ditolak")):
        done = cli(daemon, "status", lang=lang, user=nobody)
        assert done.returncode == 77, done.stderr
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr
        assert word in done.stderr.lower()


def test_status_watch_refreshes_until_ctrl_c(daemon: Path) -> None:
    command = [
        sys.executable,
        "-m",
        "bench_agent",
        "--socket",
        str(daemon),
        "status",
        "--watch",
        "0.5",
    ]
    env = {**os.environ, **ID, "PYTHONPATH": str(REPO)}
    watch = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True
    )
    lines: list[str] = []  # each refresh is flushed: read as they come
    reader = threading.Thread(target=lambda: lines.extend(watch.stdout or []), daemon=True)
    reader.start()
    try:
        # A few refreshes, counted from the first one rather than from the fork: the
        # CLI's start takes 0.2 s on a quiet machine, 1-2 s when every core is busy.
        wait_until(lambda: "".join(lines).count("sim-bench-01") >= 1, 30, "the first refresh")
        time.sleep(1.5)
        watch.send_signal(signal.SIGINT)
        watch.wait(timeout=10)
        reader.join(10)
        out, err = "".join(lines), (watch.stderr.read() if watch.stderr else "")
    finally:
        if watch.poll() is None:
            watch.kill()
            watch.wait()
    assert watch.returncode == 0, err
    assert "Traceback" not in err
    assert out.count("sim-bench-01") >= 2  # refreshed, not printed once
    assert "wifi" in out.lower() or "Wi-Fi" in out
