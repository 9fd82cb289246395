"""The agent as a real process, on the simulated bench, against a real mosquitto."""

from __future__ import annotations

import hashlib
import json
import signal
import time
from collections.abc import Callable, Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from tests.outbox_support import DurableBroker, DurableRecorder
from tests.support import (
    VEDIRECT_CAPTURES,
    AgentProcess,
    Broker,
    Recorder,
    sim_config,
    wait_until,
)

pytestmark = pytest.mark.integration

PUBLISH_REAL_S = 300 / 240  # sim-bench.toml: publish_interval_s / speed


def schema(name: str) -> dict[str, Any]:
    text = resources.files("bench_agent.schemas").joinpath(f"{name}.schema.json").read_text()
    return json.loads(text)


def validate(name: str, payload: Any) -> None:
    validator = jsonschema.Draft202012Validator(
        schema(name), format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    )
    validator.validate(payload)


def test_publishes_schema_valid_telemetry_and_retained_status(
    broker: Broker, recorder: Recorder, start_agent: Callable[..., AgentProcess]
) -> None:
    started = time.monotonic()
    agent = start_agent(broker.port)
    status = recorder.wait_for("status", lambda p: p["online"] is True)
    validate("status", status)
    assert status["bench"] == "sim-bench-01"
    assert [m.retain for m in recorder.on("status")] == [False]  # live delivery, retained flag off
    message = recorder.wait_for("telemetry", timeout_s=2 * PUBLISH_REAL_S + 5)
    validate("telemetry", message)
    assert time.monotonic() - started < 2 * PUBLISH_REAL_S + 5
    record = message["records"][0]
    assert record["seq"] >= 1 and record["time_quality"] == "synced"
    assert set(record["channels"]) == {"solar", "battery", "usb1", "usb2", "wifi"}
    battery = record["channels"]["battery"]
    # A LiFePO4 bank around 55 %: volts within the chemistry's plateau, from the real driver.
    assert 12.0 < battery["v"][1] < 14.6
    assert battery["n"] > 0 and battery["fault"] is None
    # Several records: seq strictly increases by one.
    wait_until(lambda: len(recorder.telemetry_records()) >= 3, 4 * PUBLISH_REAL_S + 5, "3 records")
    seqs = [r["seq"] for r in recorder.telemetry_records()]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    # The retained state: every output with its reason, schema-valid.
    state = recorder.wait_for("state")
    validate("state", state)
    assert set(state["outputs"]) == {"usb1", "usb2", "wifi"}
    assert all(o["reason"] for o in state["outputs"].values())
    assert agent.proc.poll() is None


def test_sigterm_publishes_offline_and_exits_zero(
    broker: Broker, recorder: Recorder, start_agent: Callable[..., AgentProcess]
) -> None:
    agent = start_agent(broker.port)
    recorder.wait_for("status", lambda p: p["online"] is True)
    t0 = time.monotonic()
    agent.signal(signal.SIGTERM)
    assert agent.wait(5) == 0
    assert time.monotonic() - t0 < 5
    offline = recorder.wait_for("status", lambda p: p["online"] is False, timeout_s=2)
    validate("status", offline)
    assert offline["reason"] == "shutdown"
    # Retained: a dashboard that connects now learns the bench is offline.
    late = Recorder(broker.port, "smartbench/sim-bench-01/status")
    try:
        retained = late.wait_for("status", timeout_s=5)
        assert retained["online"] is False
        assert late.on("status")[0].retain
    finally:
        late.close()


def test_kill_9_lets_the_broker_publish_the_last_will(
    broker: Broker, recorder: Recorder, start_agent: Callable[..., AgentProcess]
) -> None:
    agent = start_agent(broker.port)
    recorder.wait_for("status", lambda p: p["online"] is True)
    agent.kill()
    will = recorder.wait_for("status", lambda p: p["online"] is False, timeout_s=10)
    validate("status", will)
    assert will["reason"] == "connection_lost"
    config_hash = hashlib.sha256(agent.config.read_bytes()).hexdigest()[:12]
    assert will["config_hash"] == config_hash  # the Last Will says which config too


def test_starts_without_a_broker_and_connects_when_it_appears(
    tmp_path: Path, start_agent: Callable[..., AgentProcess]
) -> None:
    # Ops' session exists before the bench starts (as the bridge's does): the broker
    # keeps it across its stop and queues for it what the bench sends the moment it
    # connects (on contract 2 the whole backlog, in one batch, at once).
    broker = DurableBroker(tmp_path)
    broker.start()
    session = DurableRecorder(broker.port)  # the persistent session, subscribed
    session.close()
    broker.stop()  # nothing listening now
    agent = start_agent(broker.port)
    agent.wait_running()  # its start takes 1-2 s of the sleep below on a busy machine
    time.sleep(2 * PUBLISH_REAL_S)  # records are made (and stored) while offline
    assert agent.proc.poll() is None
    broker.start()
    try:
        recorder = DurableRecorder(broker.port, client_id=session.client_id)
        try:
            recorder.wait_for("status", lambda p: p["online"] is True, timeout_s=15)
            # What was recorded offline arrives too: every seq from 1 up to a live
            # record, the offline ones flagged historical.
            live = recorder.wait_for(
                "telemetry", lambda p: not p["records"][0].get("historical"), timeout_s=15
            )
            newest = live["records"][0]["seq"]
            wait_until(lambda: set(range(1, newest + 1)) <= recorder.all_seqs(), 15, "every seq")
            first = next(r for r in recorder.telemetry_records() if r.get("historical"))
            assert first["seq"] < newest
        finally:
            recorder.close()
    finally:
        agent.stop()
        broker.stop()


def test_a_failing_sensor_is_a_null_channel_and_a_fault_while_others_report(
    tmp_path: Path, broker: Broker, recorder: Recorder, start_agent: Callable[..., AgentProcess]
) -> None:
    scenario = tmp_path / "fail.toml"
    scenario.write_text(
        '[[event]]\nat = 600\naction = "sensor.fail"\nchannel = "usb1"\n'
        '[[event]]\nat = 1800\naction = "sensor.recover"\nchannel = "usb1"\n'
    )
    start_agent(broker.port, {"sim": {"scenario": str(scenario)}})
    raised = recorder.wait_for("event", lambda p: p["type"] == "fault_raised")
    validate("event", raised)
    assert raised["fault"] == "sensor.usb1" and raised["detail"] == "sensor_no_answer"
    # The first record after the fault may still hold samples from before it.
    failing = recorder.wait_for(
        "telemetry",
        lambda p: (
            p["records"][0]["channels"]["usb1"]["fault"] is not None
            and p["records"][0]["channels"]["usb1"]["n"] == 0
        ),
    )
    channels = failing["records"][0]["channels"]
    assert channels["usb1"]["v"] is None and channels["usb1"]["n"] == 0
    assert "sensor.usb1" in failing["records"][0]["faults"]
    for other in ("solar", "battery", "usb2", "wifi"):
        assert channels[other]["fault"] is None and channels[other]["n"] > 0
    cleared = recorder.wait_for("event", lambda p: p["type"] == "fault_cleared", timeout_s=15)
    validate("event", cleared)
    assert cleared["fault"] == "sensor.usb1"


def test_tells_systemd_ready_watchdog_status_and_stopping(
    tmp_path: Path, broker: Broker, start_agent: Callable[..., AgentProcess]
) -> None:
    import os
    import socket

    notify_path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(notify_path))
    sock.settimeout(0.2)
    messages: list[str] = []

    def received(what: str) -> bool:
        try:
            while True:
                messages.extend(sock.recv(4096).decode().splitlines())
        except TimeoutError:
            pass
        return any(m.startswith(what) for m in messages)

    try:
        agent = AgentProcess(
            sim_config(tmp_path, broker.port),
            tmp_path,
            # The agent checks WATCHDOG_PID against its own pid; without it the
            # interval applies to whoever reads it (as sd_watchdog_enabled does).
            {"NOTIFY_SOCKET": str(notify_path), "WATCHDOG_USEC": "2000000"},
        )
        try:
            wait_until(lambda: received("READY=1"), 20, "READY=1")
            wait_until(
                lambda: received("WATCHDOG=1") and messages.count("WATCHDOG=1") >= 3,
                10,
                "three watchdog pings",
            )
            wait_until(lambda: received("STATUS=broker up"), 10, "a STATUS line")
            agent.signal(signal.SIGTERM)
            assert agent.wait(5) == 0
            wait_until(lambda: received("STOPPING=1"), 5, "STOPPING=1")
        finally:
            agent.kill()
        assert os.path.exists(notify_path)
    finally:
        sock.close()


def test_charge_controller_fields_arrive_in_telemetry(
    broker: Broker, recorder: Recorder, start_agent: Callable[..., AgentProcess]
) -> None:
    """The simulated SmartSolar on a pty, read by the real pyserial reader."""
    start_agent(broker.port)
    message = recorder.wait_for(
        "telemetry", lambda p: p["records"][0]["charger"] is not None, timeout_s=20
    )
    validate("telemetry", message)
    charger = message["records"][0]["charger"]
    assert charger["model"] == "SmartSolar MPPT 100/20"
    assert 11.0 < charger["battery_volts"] < 15.0
    assert charger["charge_state"] in {"off", "bulk", "absorption", "float"}
    assert "charger" not in message["records"][0]["faults"]


def test_signed_remote_command_switches_a_port_and_bad_ones_change_nothing(
    tmp_path: Path, broker: Broker, recorder: Recorder, start_agent: Callable[..., AgentProcess]
) -> None:
    from datetime import UTC, datetime

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from bench_agent.ops.keys import keygen
    from bench_agent.remote.signing import new_command, sign_command

    private_path, _public = keygen(tmp_path / "keys", "ops-test")
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    key = load_pem_private_key(private_path.read_bytes(), password=None)
    assert isinstance(key, Ed25519PrivateKey)
    # The simulated clock runs 240x real time; left unsynced, the bench judges commands
    # by signature and replay only (ages are checked once its clock is synced).
    start_agent(
        broker.port,
        {
            "commands": {"trusted_keys": str(tmp_path / "keys")},
            "sim": {"clock_synced_at_start": False},
        },
    )
    recorder.wait_for("state", lambda p: p["outputs"]["usb2"]["on"] is True)
    now = datetime.now(UTC)
    bad = new_command("usb.set", {"port": "usb2", "state": "off"}, bench="sim-bench-01", now=now)
    good = sign_command(
        new_command("usb.set", {"port": "usb2", "state": "off"}, bench="sim-bench-01", now=now),
        key,
        "ops-test",
    )
    recorder.client.publish("smartbench/sim-bench-01/cmd", json.dumps(bad), qos=1)
    recorder.client.publish("smartbench/sim-bench-01/cmd", b"\xff not json", qos=1)
    refused = recorder.wait_for("cmd/reply", lambda p: p["id"] == bad["id"])
    assert refused["ok"] is False and refused["error"]["code"] == "unsigned"
    recorder.wait_for("cmd/reply", lambda p: p["id"] is None)
    recorder.client.publish("smartbench/sim-bench-01/cmd", json.dumps(good), qos=1)
    accepted = recorder.wait_for("cmd/reply", lambda p: p["id"] == good["id"])
    assert accepted["ok"] is True, accepted
    switched = recorder.wait_for(
        "event",
        lambda p: p["type"] == "output_switched" and p["output"] == "usb2" and p["to"] == "off",
    )
    assert switched["reason"] == "override_off"
    # The unsigned command before it switched nothing: the only usb2 "off" is this one.
    offs = [
        m.json()
        for m in recorder.on("event")
        if m.json()["type"] == "output_switched"
        and m.json()["output"] == "usb2"
        and m.json()["to"] == "off"
    ]
    assert len(offs) == 1
    command_events = [m.json() for m in recorder.on("event") if m.json()["type"] == "command"]
    assert [e["id"] for e in command_events] == [good["id"]]
    # The retained state says why usb2 is off, who said so, and until when.
    state = recorder.wait_for("state", lambda p: p["outputs"]["usb2"]["reason"] == "override_off")
    assert state["outputs"]["usb2"]["on"] is False
    assert state["outputs"]["usb2"]["override"]["state"] == "off"
    assert state["outputs"]["usb2"]["override"]["source"].endswith("ops-test")
    for message in recorder.on("state") + recorder.on("event"):
        validate("state" if message.topic.endswith("/state") else "event", message.json())


@pytest.fixture
def durable(tmp_path: Path) -> Iterator[tuple[DurableBroker, DurableRecorder]]:
    """A broker that keeps ops' session across its restart, and that session subscribed
    (as the bridge's is): what the bench sends the moment it is back is queued for ops
    whether the agent or the recorder reconnects first."""
    broker = DurableBroker(tmp_path)
    broker.start()
    try:
        recorder = DurableRecorder(broker.port)
        try:
            yield broker, recorder
        finally:
            recorder.close()
    finally:
        broker.stop()


def test_power_cycles_the_access_point_when_the_broker_stays_unreachable(
    durable: tuple[DurableBroker, DurableRecorder], start_agent: Callable[..., AgentProcess]
) -> None:
    # The recovery's events wait in the outbox and go, in one batch on contract 2, the
    # moment the agent reconnects: a session that did not outlive the broker's restart
    # (a plain Recorder) missed them whenever the agent's reconnect came first.
    broker, recorder = durable
    uplink = {
        "enabled": True,
        "output": "wifi",
        "offline_after_s": 600,  # 2.5 s real at 240x
        "power_off_s": 60,
        "backoff_initial_s": 3600,
        "max_attempts_per_day": 4,
    }
    agent = start_agent(broker.port, {"uplink": uplink})
    recorder.wait_for("status", lambda p: p["online"] is True)
    broker.stop()
    time.sleep(6)  # > offline_after_s + power_off_s in real seconds, < the backoff (15 s)
    broker.start()
    off = recorder.wait_for(
        "event", lambda p: p["type"] == "uplink_recovery" and p["action"] == "power_off", 30
    )
    on = recorder.wait_for(
        "event", lambda p: p["type"] == "uplink_recovery" and p["action"] == "power_on", 30
    )
    for event in (off, on):
        validate("event", event)
    assert off["reason"] == "broker_unreachable" and off["output"] == "wifi"
    assert off["attempt"] == 1 and off["hold_off_s"] == 60
    assert off["down_for_s"] >= 600
    assert on["seq"] > off["seq"]
    # The switch itself, with the reason the policy gives: held off by the recovery.
    switched = recorder.wait_for(
        "event",
        lambda p: p["type"] == "output_switched" and p["output"] == "wifi" and p["to"] == "off",
        30,
    )
    assert "uplink_recovery" in json.dumps(switched)
    assert off["seq"] < switched["seq"] < on["seq"]
    # Back on after the hold: a later switch of wifi to on.
    recorder.wait_for(
        "event",
        lambda p: (
            p["type"] == "output_switched"
            and p["output"] == "wifi"
            and p["to"] == "on"
            and p["seq"] > on["seq"]
        ),
        30,
    )
    # Exactly one attempt within the backoff.
    attempts = [
        m.json()
        for m in recorder.on("event")
        if m.json()["type"] == "uplink_recovery" and m.json()["action"] == "power_off"
    ]
    assert len(attempts) == 1
    assert agent.stop() == 0


def test_sighup_applies_policy_live_and_refuses_what_needs_a_restart(
    broker: Broker, recorder: Recorder, start_agent: Callable[..., AgentProcess], tmp_path: Path
) -> None:
    keys = tmp_path / "keys"
    keys.mkdir()
    agent = start_agent(broker.port, {"commands": {"trusted_keys": str(keys)}})
    recorder.wait_for("status", lambda p: p["online"] is True)
    config = tmp_path / "bench.toml"
    original = config.read_text()

    def events_of(kind: str) -> list[dict[str, Any]]:
        return [m.json() for m in recorder.on("event") if m.json()["type"] == kind]

    # A new schedule for the hotspot: applied without a restart.
    # (The simulated day starts at 05:00: a late-evening window turns the hotspot off.)
    schedule = {"policy": {"schedule": {"wifi": ["23:00-23:30"]}}}
    sim_config(tmp_path, broker.port, {"commands": {"trusted_keys": str(keys)}, **schedule})
    agent.signal(signal.SIGHUP)
    reloaded = recorder.wait_for("event", lambda p: p["type"] == "config_reloaded", 20)
    validate("event", reloaded)
    assert reloaded["tables"] == ["policy"]
    switched = recorder.wait_for(
        "event",
        lambda p: p["type"] == "output_switched" and p["output"] == "wifi" and p["to"] == "off",
        20,
    )
    assert switched["reason"] == "schedule_off" and switched["seq"] > reloaded["seq"]
    # The same process and the same MQTT session: no offline status, no reconnect.
    assert agent.proc.poll() is None
    assert [m.json()["online"] for m in recorder.on("status")] == [True]

    # A broken file changes nothing and says why.
    config.write_text(original + "\n[bench\n")
    agent.signal(signal.SIGHUP)
    refused = recorder.wait_for(
        "event", lambda p: p["type"] == "config_reload_refused" and p["reason"] == "invalid", 20
    )
    assert "bench.toml" in refused["detail"]

    # A new broker port needs a restart: refused, the agent goes on as it was.
    sim_config(tmp_path, broker.port + 1)
    agent.signal(signal.SIGHUP)
    refused = recorder.wait_for(
        "event",
        lambda p: p["type"] == "config_reload_refused" and p["reason"] == "needs_restart",
        20,
    )
    assert "mqtt" in refused["tables"]
    # A broken ops key file is skipped with a fault; the rest of the reload applies.
    sim_config(tmp_path, broker.port, {"commands": {"trusted_keys": str(keys)}, **schedule})
    (keys / "ops-bad.pub").write_text("not a key\n")
    agent.signal(signal.SIGHUP)
    fault = recorder.wait_for(
        "event", lambda p: p["type"] == "fault_raised" and p["fault"] == "ops_keys", 20
    )
    assert "ops-bad.pub" in fault["detail"]
    seq_before = max(recorder.all_seqs())
    wait_until(lambda: max(recorder.all_seqs()) > seq_before + 1, 20, "telemetry goes on")
    assert len(events_of("config_reloaded")) == 2
    # Removing the file clears the fault at the next reload.
    (keys / "ops-bad.pub").unlink()
    agent.signal(signal.SIGHUP)
    recorder.wait_for(
        "event", lambda p: p["type"] == "fault_cleared" and p["fault"] == "ops_keys", 20
    )
    assert agent.stop() == 0


def test_an_unrecoverable_start_failure_exits_non_zero_in_one_line(
    broker: Broker, start_agent: Callable[..., AgentProcess], tmp_path: Path
) -> None:
    # The storage directory cannot exist: a regular file sits where its parent should be.
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    agent = start_agent(broker.port, {"storage": {"dir": str(blocker / "state")}})
    code = agent.wait(30)
    assert code not in (0, 78), agent.log
    assert "Traceback" not in agent.log
    assert agent.log.strip().splitlines()[-1].startswith("bench-agent: ")


CAPTURES = VEDIRECT_CAPTURES


def test_a_bmv_battery_monitor_state_of_charge_outranks_the_estimate(
    broker: Broker, recorder: Recorder, start_agent: Callable[..., AgentProcess], tmp_path: Path
) -> None:
    from bench_agent.hardware.sim.vedirect_sim import SimulatedCharger

    # A real BMV-702 capture (SOC 83.7-83.9 %) replayed into a pty the agent reads.
    port = tmp_path / "ttyBMV"
    with SimulatedCharger(port) as monitor:
        monitor.replay(CAPTURES / "bvm702.dump", speed=1.0)  # ~60 s of blocks
        start_agent(broker.port, {"charger": {"port": str(port)}})
        message = recorder.wait_for(
            "telemetry", lambda p: p["records"][-1]["battery"]["source"] == "bmv", 30
        )
        validate("telemetry", message)
        record = message["records"][-1]
        assert 83.7 <= record["battery"]["soc_pct"] <= 83.9
        assert record["charger"]["state_of_charge_pct"] == record["battery"]["soc_pct"]


def test_a_reload_during_a_power_cycle_keeps_it_and_the_technicians_override(
    broker: Broker, recorder: Recorder, start_agent: Callable[..., AgentProcess], tmp_path: Path
) -> None:
    from bench_agent.local.control import ControlClient

    uplink = {"enabled": True, "offline_after_s": 600, "power_off_s": 2400}  # 2.5 s, 10 s real
    agent = start_agent(broker.port, {"uplink": uplink})
    client = ControlClient(tmp_path / "control.sock")
    wait_until(lambda: recorder.on("state"), 20, "the agent online")
    accepted = client.call("override.set", {"output": "wifi", "state": "on", "duration_s": 36000})
    assert accepted == {"accepted": True}

    def recovery(action: str) -> bool:
        events = client.call("events", {"limit": 50})["events"]
        return any(e["type"] == "uplink_recovery" and e["action"] == action for e in events)

    broker.stop()  # the uplink is gone; the local socket still answers
    wait_until(lambda: recovery("power_off"), 30, "the power-off")
    agent.signal(signal.SIGHUP)  # the same file: nothing to change, nothing to lose
    wait_until(lambda: recovery("power_on"), 30, "the power-on after the hold")
    wifi = client.call("status")["outputs"]["wifi"]
    assert wifi["on"] is True
    assert wifi["override"] is not None and wifi["override"]["source"].startswith("technician:uid=")
    broker.start()
    assert agent.stop() == 0


def test_a_control_socket_that_cannot_be_served_is_a_fault_not_a_crash(
    broker: Broker, recorder: Recorder, start_agent: Callable[..., AgentProcess], tmp_path: Path
) -> None:
    # Something that is not a socket sits at the path: the agent must not remove it.
    squatter = tmp_path / "control.sock"
    squatter.write_text("not a socket")
    agent = start_agent(broker.port)
    raised = recorder.wait_for(
        "event", lambda p: p["type"] == "fault_raised" and p["fault"] == "control_socket", 20
    )
    validate("event", raised)
    record = recorder.wait_for(
        "telemetry", lambda p: "control_socket" in p["records"][-1]["faults"], 20
    )
    validate("telemetry", record)
    assert squatter.read_text() == "not a socket"
    assert agent.proc.poll() is None
    assert agent.stop() == 0


def test_the_days_counters_survive_a_restart(
    broker: Broker, recorder: Recorder, start_agent: Callable[..., AgentProcess]
) -> None:
    # Late morning: the panel harvests from the first sample.
    changes = {"sim": {"start": "2026-11-27T10:00:00+07:00"}}
    agent = start_agent(broker.port, changes)
    first = recorder.wait_for(
        "telemetry", lambda p: p["records"][-1]["today"]["solar_wh"] > 40, 30
    )["records"][-1]["today"]
    assert agent.stop() == 0
    before = len(recorder.on("telemetry"))
    # The simulated clock starts again at 10:00 of the same day: the same day's counters.
    agent = start_agent(broker.port, changes)
    wait_until(lambda: len(recorder.on("telemetry")) > before, 30, "telemetry after restart")
    again = recorder.on("telemetry")[before].json()["records"][-1]["today"]
    assert again["date"] == first["date"]
    # Carried on, not started from zero: one record after a restart harvests ~7 Wh.
    assert again["solar_wh"] >= first["solar_wh"]
    assert agent.stop() == 0


def test_a_bad_ops_key_file_at_start_is_skipped_with_a_fault_not_exit_78(
    broker: Broker, recorder: Recorder, start_agent: Callable[..., AgentProcess], tmp_path: Path
) -> None:
    # A flawed key pushed to a fleet used to exit 78 at the next start: never restarted.
    keys = tmp_path / "keys"
    keys.mkdir()
    (keys / "ops-bad.pub").write_text("-----BEGIN PRIVATE KEY-----\nnope\n")
    agent = start_agent(broker.port, {"commands": {"trusted_keys": str(keys)}})
    recorder.wait_for("status", lambda p: p["online"] is True, 30)
    state = recorder.wait_for("state", lambda p: "ops_keys" in {f["name"] for f in p["faults"]})
    detail = {f["name"]: f["detail"] for f in state["faults"]}["ops_keys"]
    assert "ops-bad.pub" in detail and "PRIVATE key" in detail
    assert "nope" not in agent.log  # the file's content is never logged
    assert agent.proc.poll() is None
    assert agent.stop() == 0


def test_a_wiped_store_starts_a_new_seq_epoch_so_ops_never_merge_two_seq_1s(
    broker: Broker, recorder: Recorder, start_agent: Callable[..., AgentProcess], tmp_path: Path
) -> None:
    agent = start_agent(broker.port)
    first = recorder.wait_for("telemetry")["records"][0]
    validate("telemetry", {"v": 1, "bench": "sim-bench-01", "records": [first]})
    assert agent.stop() == 0
    # A replaced SD card: the state directory is gone.
    import shutil

    shutil.rmtree(tmp_path / "state")
    count = len(recorder.on("telemetry"))
    start_agent(broker.port)
    again = wait_until(
        lambda: [m.json()["records"][0] for m in recorder.on("telemetry")[count:]],
        30,
        "telemetry after the wipe",
    )[0]
    assert again["seq_epoch"] != first["seq_epoch"]
    # Seqs start over in the new epoch: (bench, seq_epoch, seq) stays unique.
    assert again["seq"] <= first["seq"] + 3
