"""No part of the bench takes the agent down, and none fails in silence.

The real backend runs on this machine, which has no GPIO and no I2C bus: the
real code paths (the explicit lgpio factory, /dev/i2c-1, the INA219 driver)
meet what a Pi with lgpio missing, I2C disabled or the wrong groups would
show, and the agent must start, connect, publish its faults and say in the
self-test what to fix. Then the files a config names: `config check` finds a
missing or mismatched TLS file, and at run time the same problem is a fault
that is retried until the files are right. Last, a thread that dies is a
fault and stops the watchdog pings.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from bench_agent.config_loader import load_config
from bench_agent.hardware.pins import GpioUnavailable, PinSupply, open_lgpio_factory
from bench_agent.service import Agent
from tests.support import (
    REPO,
    AgentProcess,
    Broker,
    Recorder,
    dump_toml,
    free_port,
    sim_config,
    technician_status,
    wait_until,
)

REFERENCE = REPO / "config" / "bench-agent.toml"
PKI_SCRIPT = REPO / "deploy" / "broker" / "make-pki.sh"
ID = {"LANG": "id_ID.UTF-8", "LANGUAGE": "id"}
EN = {"LANG": "C.UTF-8", "LANGUAGE": ""}
NOBODY = 65534


def schema(name: str) -> dict[str, Any]:
    text = resources.files("bench_agent.schemas").joinpath(f"{name}.schema.json").read_text()
    loaded: dict[str, Any] = json.loads(text)
    return loaded


def reference_config(workdir: Path, port: int, **mqtt: Any) -> Path:
    """The reference bench (real backend) with this test's broker, state and socket."""
    data = tomllib.loads(REFERENCE.read_text())
    # Contract 2 as shipped, with batches every 5 s instead of 5 min (real time here).
    data["mqtt"] = {
        "host": "127.0.0.1",
        "port": port,
        "reconnect_min_s": 0.2,
        "telemetry_batch_s": 5,
        **mqtt,
    }
    data["mqtt"]["reconnect_max_s"] = 1
    data["sampling"]["publish_interval_s"] = 5  # telemetry soon, not in a minute
    data["storage"]["dir"] = str(workdir / "state")
    data["control"]["socket"] = str(workdir / "control.sock")
    data["commands"] = {"trusted_keys": str(workdir / "ops-keys")}
    (workdir / "ops-keys").mkdir(exist_ok=True)
    path = workdir / "bench.toml"
    path.write_text(dump_toml(data))
    return path


def cli(workdir: Path, *args: str, lang: dict[str, str] = EN) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **lang, "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "bench_agent", "-c", str(workdir / "bench.toml"), *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=60, check=False)


def status(workdir: Path) -> dict[str, Any]:
    done = cli(workdir, "status", "--json")
    assert done.returncode == 0, done.stderr
    parsed: dict[str, Any] = json.loads(done.stdout)
    return parsed


# -- the real backend without its hardware ------------------------------------------


@pytest.mark.integration
@pytest.mark.skipif(
    any(Path("/dev").glob("gpiochip*")) or Path("/dev/i2c-1").exists(),
    reason="this machine has GPIO or I2C: the degraded start needs a machine without",
)
def test_the_real_backend_without_gpio_or_i2c_starts_connects_and_reports(
    broker: Broker, recorder: Recorder, tmp_path: Path
) -> None:
    agent = AgentProcess(reference_config(tmp_path, broker.port), tmp_path)
    try:
        online = recorder.wait_for("status", lambda p: p["online"] is True, 30)
        assert online["bench"] == "tgk-alun-alun-01"
        state = recorder.wait_for(
            "state", lambda p: {"gpio", "i2c"} <= {f["name"] for f in p["faults"]}, 30
        )
        jsonschema.validate(state, schema("state"))
        faults = {f["name"]: f["detail"] for f in state["faults"]}
        assert "/dev/gpiochip0 missing" in faults["gpio"]
        assert faults["i2c"] == (
            "/dev/i2c-1 missing — enable I2C (sudo raspi-config nonint do_i2c 0, then reboot)"
        )
        assert {"sensor.solar", "sensor.battery", "sensor.usb1", "sensor.usb2"} <= faults.keys()
        # Outputs it cannot drive are unknown, not "off".
        assert {name: out["on"] for name, out in state["outputs"].items()} == {
            "usb1": None,
            "usb2": None,
            "wifi": None,
        }

        # The events come right after the state that shows them (contract 2: at the end
        # of the turn that raised them, in one batch).
        def raised() -> set[str]:
            events = (m.json() for m in recorder.on("event"))
            return {e["fault"] for e in events if e["type"] == "fault_raised"}

        wait_until(lambda: {"gpio", "i2c"} <= raised(), 10, "both faults raised as events")
        telemetry = recorder.wait_for("telemetry", timeout_s=90)
        jsonschema.validate(telemetry, schema("telemetry"))
        record = telemetry["records"][-1]
        assert set(record["outputs"].values()) == {None}

        # The technician's self-test names each part and the fix, in both languages.
        english = cli(tmp_path, "selftest")
        assert english.returncode != 0
        lines = english.stdout.splitlines()
        gpio = next(line for line in lines if line.split()[1].startswith("gpio"))
        assert gpio.startswith("FAIL") and "/dev/gpiochip0 missing" in gpio
        assert "the agent tries again by itself" in gpio
        i2c = next(line for line in lines if line.split()[1].startswith("i2c"))
        assert "enable I2C" in i2c
        indonesian = cli(tmp_path, "selftest", lang=ID)
        gpio_id = next(line for line in indonesian.stdout.splitlines() if " gpio" in line)
        assert "agen mencoba lagi sendiri" in gpio_id, indonesian.stdout

        # gpiozero's fallback chain is never run: no warnings, no BadPinFactory.
        assert "PinFactoryFallback" not in agent.log
        assert "BadPinFactory" not in agent.log
        assert agent.proc.poll() is None, agent.log
        assert agent.stop() == 0
    finally:
        agent.kill()


def test_gpio_failures_say_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(GpioUnavailable, match="gpiochip0 missing") as missing:
        open_lgpio_factory(tmp_path)
    assert missing.value.fault == "gpio_missing"
    # Not ours to open: checked as an unprivileged user (root ignores file modes), in
    # a directory that user can reach (pytest's own is private to root).
    with tempfile.TemporaryDirectory() as reachable:
        dev = Path(reachable)
        dev.chmod(0o755)
        chip = dev / "gpiochip0"
        chip.write_text("")
        chip.chmod(0o600)
        probe = (
            "import sys; from pathlib import Path\n"
            "from bench_agent.hardware.pins import GpioUnavailable, open_lgpio_factory\n"
            "try: open_lgpio_factory(Path(sys.argv[1]))\n"
            "except GpioUnavailable as exc: print(exc.fault, exc)\n"
        )
        unprivileged = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
        done = subprocess.run(
            [*unprivileged, sys.executable, "-c", probe, str(dev)],
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            check=False,
        )
    assert done.stdout.startswith("gpio_permission "), done.stderr
    assert "is bench-agent in group gpio?" in done.stdout


def test_the_pin_supply_backs_off_and_recovers() -> None:
    now = [0.0]
    attempts: list[float] = []
    working = [False]
    factory = object()

    def open_factory() -> object:
        attempts.append(now[0])
        if not working[0]:
            raise GpioUnavailable("gpio_missing", "no chip")
        return factory

    supply = PinSupply(open_factory, now=lambda: now[0], retry_initial_s=5, retry_max_s=20)
    for t in range(0, 60):
        now[0] = float(t)
        with pytest.raises(GpioUnavailable):
            supply.get()
    # Not retried on every call: at 0, 5, then doubling up to the cap (15, 35, 55).
    assert attempts == [0.0, 5.0, 15.0, 35.0, 55.0]
    assert supply.error is not None and supply.error.fault == "gpio_missing"
    working[0] = True
    now[0] = 80.0
    assert supply.get() is factory
    assert supply.error is None


# -- the files a configuration names -------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("pki")
    for args in (("ca",), ("broker", "127.0.0.1", "localhost"), ("client", "tgk-alun-alun-01")):
        subprocess.run([str(PKI_SCRIPT), str(directory), *args], check=True, capture_output=True)
    other = directory / "other"
    subprocess.run([str(PKI_SCRIPT), str(other), "ca"], check=True, capture_output=True)
    subprocess.run(
        [str(PKI_SCRIPT), str(other), "client", "tgk-alun-alun-01"], check=True, capture_output=True
    )
    return directory


def tls_settings(pki: Path, **changes: str) -> dict[str, str]:
    files = {
        "ca_file": str(pki / "ca.crt"),
        "cert_file": str(pki / "tgk-alun-alun-01.crt"),
        "key_file": str(pki / "tgk-alun-alun-01.key"),
    }
    return {**files, **changes}


def config_check(tmp_path: Path, pki: Path, **changes: str) -> subprocess.CompletedProcess[str]:
    reference_config(tmp_path, 8883, **tls_settings(pki, **changes))
    return cli(tmp_path, "config", "check")


def test_config_check_passes_good_tls_files(tmp_path: Path, pki: Path) -> None:
    done = config_check(tmp_path, pki)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0].endswith("ok (bench tgk-alun-alun-01, pi backend)")


@pytest.mark.parametrize(
    ("change", "key", "says"),
    [
        ({"ca_file": "/nonexistent/ca.crt"}, "mqtt.ca_file", "/nonexistent/ca.crt: no such file"),
        ({"cert_file": "/nonexistent/b.crt"}, "mqtt.cert_file", "no such file"),
        ({"key_file": "OTHER/tgk-alun-alun-01.key"}, "mqtt.key_file", "does not match"),
        ({"ca_file": "PKI/tgk-alun-alun-01.key"}, "mqtt.ca_file", "not a CA certificate"),
    ],
)
def test_config_check_names_each_bad_tls_file_in_one_line(
    tmp_path: Path, pki: Path, change: dict[str, str], key: str, says: str
) -> None:
    resolved = {
        k: v.replace("OTHER", str(pki / "other")).replace("PKI", str(pki))
        for k, v in change.items()
    }
    done = config_check(tmp_path, pki, **resolved)
    assert done.returncode == 78, done.stdout
    errors = [line for line in done.stderr.splitlines() if "config error" in line]
    assert len(errors) == 1, done.stderr
    assert f"{key}: " in errors[0] and says in errors[0], errors[0]
    assert "Traceback" not in done.stderr


def test_config_check_warns_of_a_missing_trusted_keys_directory(tmp_path: Path, pki: Path) -> None:
    reference_config(tmp_path, 8883, **tls_settings(pki))
    shutil.rmtree(tmp_path / "ops-keys")
    done = cli(tmp_path, "config", "check")
    assert done.returncode == 0
    assert "warning" in done.stderr and "commands.trusted_keys" in done.stderr


@pytest.fixture
def tls_broker(tmp_path: Path, pki: Path) -> Iterator[int]:
    port = free_port()
    conf = tmp_path / "mosquitto-tls.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\n"
        f"cafile {pki / 'ca.crt'}\ncertfile {pki / 'broker.crt'}\nkeyfile {pki / 'broker.key'}\n"
        "require_certificate true\nallow_anonymous true\npersistence false\n"
        # Started as root, mosquitto drops to user "mosquitto", who cannot read the
        # test's private directory: stay the user running the tests.
        f"user {getpass.getuser()}\n"
    )
    log = tmp_path / "mosquitto-tls.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(["mosquitto", "-c", str(conf)], stdout=out, stderr=out)

    def listening() -> bool:
        assert proc.poll() is None, log.read_text()
        with contextlib.suppress(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return True
        return False

    try:
        wait_until(listening, 10, "the TLS broker")
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.mark.integration
def test_a_missing_tls_file_at_run_time_is_a_fault_retried_until_it_is_there(
    tmp_path: Path, pki: Path, tls_broker: int
) -> None:
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    shutil.copy(pki / "ca.crt", secrets / "ca.crt")
    shutil.copy(pki / "tgk-alun-alun-01.key", secrets / "bench.key")
    config = sim_config(
        tmp_path,
        tls_broker,
        {
            "mqtt": {
                "host": "localhost",
                "reconnect_min_s": 0.2,
                "reconnect_max_s": 0.5,
                **tls_settings(
                    secrets,
                    ca_file=str(secrets / "ca.crt"),
                    cert_file=str(secrets / "bench.crt"),  # not there yet
                    key_file=str(secrets / "bench.key"),
                ),
            }
        },
    )
    agent = AgentProcess(config, tmp_path)
    try:
        socket_path = tmp_path / "control.sock"

        def faults() -> dict[str, str]:
            status = technician_status(socket_path)
            return {} if status is None else {f["name"]: f["detail"] for f in status["faults"]}

        detail = wait_until(lambda: faults().get("mqtt_setup"), 30, f"the fault\n{agent.log}")
        assert "mqtt.cert_file" in detail and "bench.crt: no such file" in detail
        assert agent.proc.poll() is None
        # The technician copies the certificate in: the agent connects by itself.
        shutil.copy(pki / "tgk-alun-alun-01.crt", secrets / "bench.crt")
        wait_until(lambda: "mqtt_setup" not in faults(), 30, f"the fault cleared\n{agent.log}")
        wait_until(lambda: "mqtt: connected" in agent.log, 30, f"connected\n{agent.log}")
        assert agent.stop() == 0
    finally:
        agent.kill()


# -- a thread that dies --------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_thread_killed_by_an_exception_is_a_fault_and_stops_the_watchdog(
    broker: Broker, recorder: Recorder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # systemd's side of sd_notify: a datagram socket, with a 2 s WatchdogSec.
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify.sock"))
    notify.settimeout(0.1)
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify.sock"))
    monkeypatch.setenv("WATCHDOG_USEC", "2000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)

    def pings_within(seconds: float) -> int:
        deadline, count = time.monotonic() + seconds, 0
        while time.monotonic() < deadline:
            with contextlib.suppress(TimeoutError):
                count += notify.recv(4096).count(b"WATCHDOG=1")
        return count

    agent = Agent(load_config(sim_config(tmp_path, broker.port)))
    errors: list[BaseException] = []

    def run() -> None:
        try:
            agent.run()
        except BaseException as exc:  # reported by the assertion below
            errors.append(exc)

    thread = threading.Thread(target=run, name="agent-under-test")
    thread.start()
    try:
        recorder.wait_for("status", lambda p: p["online"] is True, 30)
        assert pings_within(3) >= 2, "the watchdog is pinged while all is well"

        # The MQTT network thread meets an exception its loop does not catch.
        def die(_attempt: int) -> int:
            raise SystemExit("killed by the test")

        agent.link._session = die  # type: ignore[method-assign]
        agent.link._client.disconnect()  # type: ignore[union-attr]  # its next turn dies
        wait_until(lambda: "thread.mqtt" in agent.faults, 20, "the thread's fault")
        assert "restart" in agent.faults["thread.mqtt"]
        pings_within(1.5)  # one already on its way
        assert pings_within(3) == 0, "pings withheld: systemd will restart the agent"
    finally:
        agent.request_stop()
        thread.join(30)
        notify.close()
    assert not thread.is_alive()
    assert not errors, errors


@pytest.mark.integration
def test_a_dead_control_socket_thread_is_a_fault_and_is_served_again(
    broker: Broker, recorder: Recorder, tmp_path: Path
) -> None:
    agent = Agent(load_config(sim_config(tmp_path, broker.port)))
    thread = threading.Thread(target=agent.run, name="agent-under-test")
    thread.start()
    socket_path = tmp_path / "control.sock"

    def technician_status() -> int:
        command = [sys.executable, "-m", "bench_agent", "--socket", str(socket_path), "status"]
        return subprocess.run(command, capture_output=True, check=False, timeout=30).returncode

    try:
        recorder.wait_for("status", lambda p: p["online"] is True, 30)
        wait_until(lambda: technician_status() == 0, 30, "the control socket")
        first = agent.control.server
        assert first is not None
        # The server loop fails (its selector is gone) and its thread ends.
        first._selector.close()
        first._wake_w.send(b"x")  # type: ignore[union-attr]
        raised = recorder.wait_for(
            "event",
            lambda p: p["type"] == "fault_raised" and p["fault"] == "thread.control_socket",
            30,
        )
        assert "restart" in raised["detail"]
        recorder.wait_for(
            "event",
            lambda p: p["type"] == "fault_cleared" and p["fault"] == "thread.control_socket",
            30,
        )
        assert agent.control.server is not first
        assert technician_status() == 0
    finally:
        agent.request_stop()
        thread.join(30)
    assert not thread.is_alive()


def test_config_check_loads_the_ops_keys_and_names_a_bad_one(tmp_path: Path, pki: Path) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    reference_config(tmp_path, 8883, **tls_settings(pki))
    public = Ed25519PrivateKey.generate().public_key()
    (tmp_path / "ops-keys" / "ops-1.pub").write_bytes(
        public.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    )
    good = cli(tmp_path, "config", "check")
    assert good.returncode == 0, good.stderr
    assert f"trusted ops keys in {tmp_path / 'ops-keys'}: ops-1" in good.stdout
    (tmp_path / "ops-keys" / "ops-2.pub").write_text("not a key\n")
    bad = cli(tmp_path, "config", "check")
    assert bad.returncode == 78
    assert "commands.trusted_keys" in bad.stderr and "ops-2.pub" in bad.stderr
    assert "neither PEM nor base64" in bad.stderr


@pytest.mark.integration
def test_a_password_without_tls_is_a_loud_warning_everywhere(
    broker: Broker, recorder: Recorder, tmp_path: Path
) -> None:
    password = tmp_path / "mqtt-password"
    password.write_text("hunter2-hunter2\n")
    config = sim_config(
        tmp_path,
        broker.port,
        {"mqtt": {"username": "bench", "password_file": str(password)}},
    )
    checked = cli(tmp_path, "config", "check")
    assert checked.returncode == 0
    assert "warning" in checked.stderr and "clear text" in checked.stderr
    agent = AgentProcess(config, tmp_path)
    try:
        recorder.wait_for("status", lambda p: p["online"] is True, 30)
        wait_until(lambda: "SECURITY:" in agent.log, 10, "the warning at start")
        socket_path = str(tmp_path / "control.sock")
        for lang, words in ((EN, "clear text"), (ID, "tanpa enkripsi")):
            selftest = subprocess.run(
                [sys.executable, "-m", "bench_agent", "--socket", socket_path, "selftest"],
                capture_output=True,
                text=True,
                env={**os.environ, **lang, "PYTHONPATH": str(REPO)},
                check=False,
            )
            line = next(x for x in selftest.stdout.splitlines() if "broker_security" in x)
            assert words in line, selftest.stdout
        assert "hunter2" not in agent.log
        assert agent.stop() == 0
    finally:
        agent.kill()


def test_outputs_and_tamper_come_back_when_gpio_does() -> None:
    """A board gpiozero cannot place (PinUnknownPi on a pin, after the factory opened):
    outputs unknown, tamper unknown, a fault; once pins can be made, both recover
    without a restart, and the tamper input reports its state."""
    from gpiozero.pins.mock import MockFactory

    from bench_agent.hardware.gpio import GpioSwitch, TamperSwitch

    class NoPins(MockFactory):  # type: ignore[misc]
        def pin(self, spec: Any, **kwargs: Any) -> Any:
            raise OSError("unable to locate Pi revision")

    now = [0.0]
    working = MockFactory()
    factories = iter([NoPins(), working])
    supply = PinSupply(lambda: next(factories), now=lambda: now[0], retry_initial_s=5)
    reported: list[bool] = []
    switch = GpioSwitch("usb1", 17, False, supply)
    tamper = TamperSwitch(5, True, False, supply, on_change=reported.append)
    assert switch.is_on is None and tamper.is_open is None
    assert supply.error is not None and "unable to locate Pi revision" in str(supply.error)
    with pytest.raises(GpioUnavailable):
        switch.set(True)  # within the backoff: refused at once, nothing tried
    now[0] = 6.0  # the backoff is over: the next factory makes pins
    switch.set(True)
    assert switch.is_on is True and working.pin(17).state is True
    assert supply.error is None
    tamper.poll()
    assert tamper.is_open is not None and reported == [tamper.is_open]
    switch.close()
    tamper.close()
    assert working.pin(17).state is False  # the safe state on close


@pytest.mark.integration
def test_an_unusable_replay_store_is_a_fault_ops_and_the_selftest_see(
    broker: Broker, recorder: Recorder, tmp_path: Path
) -> None:
    """The command processor refuses remote commands without its replay store; that
    used to be a log line only, never in `state.faults` or the self-test."""
    config = sim_config(tmp_path, broker.port)
    (tmp_path / "state" / "commands-seen.jsonl").mkdir(parents=True)  # not a file
    agent = AgentProcess(config, tmp_path)
    try:
        state = recorder.wait_for(
            "state", lambda p: "replay_store" in {f["name"] for f in p["faults"]}, 30
        )
        jsonschema.validate(state, schema("state"))
        detail = {f["name"]: f["detail"] for f in state["faults"]}["replay_store"]
        assert "replay store unusable" in detail
        # Raised before the first connection: the event is in the backlog, which drains
        # right after the state that a connection publishes first.
        recorder.wait_for(
            "event", lambda e: e["type"] == "fault_raised" and e["fault"] == "replay_store", 10
        )
        english = cli(tmp_path, "selftest")
        line = next(x for x in english.stdout.splitlines() if x.split()[1] == "commands:")
        assert line.startswith("FAIL") and "refused until a restart" in line, english.stdout
        indonesian = cli(tmp_path, "selftest", lang=ID)
        assert "ditolak sampai agen dimulai ulang" in indonesian.stdout
        assert agent.stop() == 0
    finally:
        agent.kill()
