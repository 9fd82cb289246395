"""Power management on the simulated bench, end to end: pins, physics and what ops receive.

Each test writes a scenario, runs the agent sped up (a night passes in seconds) and
asserts two things that do not come from the agent's own account of itself:

- the pins: gpiozero's `MockFactory` keeps, for every pin, each level it was driven
  to (`MockPin.states`), so a flap between two polls cannot hide;
- the events and records a real mosquitto delivered to a subscriber.

The agent runs in this process, because the pins are only reachable here: on a thread
(signal handlers are skipped off the main thread), or on the main thread for the test
that sends the process a real SIGTERM. Nothing sleeps for a fixed time: every wait is
`wait_until` a pin, a message or the simulated clock reaches a condition, with a
generous timeout that only matters when the test fails.

The battery's state of charge is persisted before the start, equal to the model's true
charge, as a bench restarting after a day of service has it. Without that the estimate
is seeded from the first voltage read (a guess that can be ten points off on the flat
LiFePO4 curve), and the scenario action `battery.set` changes only the model's true
charge, which counting alone does not see (the last test: the voltage anchor and the
voltage safety net catch it). Elsewhere the thresholds are crossed by the real discharge
and recharge of the model, counted through the real INA219 driver.
"""

from __future__ import annotations

import json
import os
import re
import signal
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from bench_agent.config_loader import load_config
from bench_agent.inbox import Call
from bench_agent.power.policy_state import PolicyState
from bench_agent.power.soc import SocEstimator
from bench_agent.service import Agent
from tests.support import Broker, Recorder, sim_config, wait_until

pytestmark = pytest.mark.integration

# Battery protection, per cent state of charge (written into every config below).
WIFI_OFF_BELOW = 30.0
WIFI_ON_ABOVE = 40.0
USB_OFF_BELOW = 15.0
USB_ON_ABOVE = 25.0
# How far past a threshold a decision may land: at thousands of times real time one
# sample apart is a few minutes, and on a loaded machine the loop skips sample ticks
# (it never bursts to catch up), so the next sample may be a quarter of an hour later.
OVERSHOOT_PCT = 3.0

COOLDOWN_S = 60.0
LATCH_AFTER_TRIPS = 3
PORTS = ("usb1", "usb2")
OUTPUTS = (*PORTS, "wifi")
BENCH = "sim-bench-01"


# --------------------------------------------------------------------------- helpers


@dataclass
class Run:
    """A running (or stopped) in-process agent and the mock pins of its outputs."""

    agent: Agent
    pins: dict[str, Any]  # output name -> gpiozero MockPin (kept after the factory closes)
    errors: list[BaseException]  # what run() raised, if it did
    thread: threading.Thread | None = None

    @property
    def bench(self) -> Any:
        """The SimulatedBench: the model, its clock, the scenario player."""
        return self.agent.hardware.simulation

    def local_now(self) -> datetime:
        """The simulated true time, in the bench's zone."""
        now: datetime = self.bench.clock.true_wall()
        return now.astimezone(self.agent.cfg.tz)

    def levels(self, output: str) -> list[bool]:
        """Every level the output's pin was driven to, from its creation on."""
        return [bool(state.state) for state in list(self.pins[output].states)]

    def changed_at(self, output: str) -> list[float]:
        """Real seconds from the pin's creation to each entry of `levels`. The pins are
        made together at the start, so these order changes across pins that are more
        than a few milliseconds apart."""
        elapsed, times = 0.0, []
        for state in list(self.pins[output].states):
            elapsed += state.timestamp
            times.append(elapsed)
        return times

    def run_sim_for(self, seconds: float, timeout_s: float = 30) -> None:
        """Wait until `seconds` of simulated time have passed from now."""
        end = self.local_now() + timedelta(seconds=seconds)
        wait_until(lambda: self.local_now() >= end, timeout_s, f"{seconds} simulated seconds")


def output_pins(agent: Agent) -> dict[str, Any]:
    factory = agent.hardware.simulation.pin_factory
    return {out.name: factory.pin(out.pin) for out in agent.cfg.outputs}


@contextmanager
def agent_on_a_thread(config: Path) -> Iterator[Run]:
    """`Agent(cfg).run()` on a thread; stopped (and joined) on the way out, whatever happens."""
    agent = Agent(load_config(config))
    ready = threading.Event()
    errors: list[BaseException] = []

    def main() -> None:
        try:
            agent.run(ready=ready.set)
        except BaseException as exc:  # handed to the test, which asserts on it
            errors.append(exc)

    thread = threading.Thread(target=main, name="bench-agent", daemon=True)
    thread.start()
    try:
        wait_until(lambda: ready.is_set() or not thread.is_alive(), 30, "the agent to start")
        if not ready.is_set():
            raise AssertionError(f"the agent did not start: {errors!r}")
        yield Run(agent, output_pins(agent), errors, thread)
    finally:
        agent.request_stop()
        thread.join(20)
        if thread.is_alive():
            raise AssertionError("the agent did not stop within 20 s of a stop request")


def persist_state_of_charge(
    workdir: Path, config: Path, capacity_ah: float, soc_pct: float
) -> None:
    """What the agent saves across restarts (controller-state.json), with `soc_pct`."""
    state_dir = workdir / "state"
    state_dir.mkdir(exist_ok=True)
    saved = {
        "policy": PolicyState().to_dict(load_config(config).policy),
        "soc": SocEstimator(capacity_ah, "lifepo4", soc_pct).to_dict(),
    }
    (state_dir / "controller-state.json").write_text(json.dumps(saved))


def bench_config(
    workdir: Path,
    broker_port: int,
    *,
    start: str,
    speed: float,
    sample_s: float,
    publish_s: float,
    scenario: str,
    battery_ah: float,
    soc_pct: float,
    changes: Mapping[str, Any] | None = None,
) -> Path:
    """The simulated bench, sped up, playing `scenario` (TOML text), with a battery of
    `battery_ah` whose true charge and the agent's persisted estimate are both `soc_pct`."""
    scenario_path = workdir / "scenario.toml"
    scenario_path.write_text(scenario)
    settings: dict[str, Any] = {
        "sim": {
            "speed": speed,
            "start": start,
            "scenario": str(scenario_path),
            "battery_ah": battery_ah,
            "battery_chemistry": "lifepo4",
            "initial_soc_pct": soc_pct,
            "charger": False,  # no VE.Direct pty: not what these tests are about
        },
        "charger": None,
        "battery": {"capacity_ah": battery_ah, "chemistry": "lifepo4"},
        "sampling": {"sample_interval_s": sample_s, "publish_interval_s": publish_s},
        "policy": {
            "battery": {
                "wifi_off_below_pct": WIFI_OFF_BELOW,
                "wifi_on_above_pct": WIFI_ON_ABOVE,
                "usb_off_below_pct": USB_OFF_BELOW,
                "usb_on_above_pct": USB_ON_ABOVE,
            },
            "ports": {
                "trip_amps": 2.4,
                "hard_trip_amps": 3.0,
                "trip_samples": 3,
                "cooldown_s": COOLDOWN_S,
                "latch_after_trips": LATCH_AFTER_TRIPS,
            },
        },
    }
    config = sim_config(workdir, broker_port, merged(settings, changes or {}))
    persist_state_of_charge(workdir, config, battery_ah, soc_pct)
    return config


def merged(base: dict[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    """`base` with `changes` merged in, table by table."""
    out = dict(base)
    for key, value in changes.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = value
    return out


def validate(name: str, payload: Any) -> None:
    text = resources.files("bench_agent.schemas").joinpath(f"{name}.schema.json").read_text()
    jsonschema.Draft202012Validator(
        json.loads(text), format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    ).validate(payload)


def events(recorder: Recorder, kind: str, output: str | None = None) -> list[dict[str, Any]]:
    """Events of `kind` (for `output`) a subscriber received, in the agent's order."""
    found = [m.json() for m in recorder.on("event")]
    found = [e for e in found if e["type"] == kind and output in (None, e.get("output"))]
    return sorted(found, key=lambda e: e["seq"])


def switches(recorder: Recorder, output: str) -> list[tuple[str, str, str]]:
    """(from, to, reason) of every `output_switched` event of `output` received so far."""
    return moves(events(recorder, "output_switched", output))


def moves(switched: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    return [(e["from"], e["to"], e["reason"]) for e in switched]


def switched_so_far(recorder: Recorder) -> dict[str, list[dict[str, Any]]]:
    """Each output's `output_switched` events, taken while the agent still runs: what the
    policy decided (the pins also show the stop, which is not a policy decision)."""
    return {output: events(recorder, "output_switched", output) for output in OUTPUTS}


def records(recorder: Recorder) -> list[dict[str, Any]]:
    return sorted(recorder.telemetry_records(), key=lambda r: r["seq"])


def percent(detail: str) -> float:
    """The state of charge a battery-protection detail gives ("battery 29.8% < 30.0%")."""
    match = re.search(r"battery (\d+(?:\.\d+)?)%", detail)
    assert match is not None, detail
    return float(match[1])


def ts(event: Mapping[str, Any]) -> datetime:
    return datetime.fromisoformat(event["ts"])


# (from, to, reason) of the output_switched events of a load shed for the battery.
ON = ("off", "on", "default")  # the first decision
OFF_AT_THRESHOLD = ("on", "off", "battery_low")
BACK_ON = ("off", "on", "default")


# --------------------------------------------------------------------------- battery


NIGHT = """
# A clear sky, so the morning recharge is the same every run.
[[event]]
at = 0
action = "clouds.set"
cover = 0.0

# Phones in the small hours, after the hotspot is shed, take the battery down to the
# USB threshold: the Pi alone would take until sunrise.
[[event]]
at = "02:00"
action = "phone.plug"
port = "usb1"
amps = 2.0
[[event]]
at = "02:00"
action = "phone.plug"
port = "usb2"
amps = 2.0
[[event]]
at = "03:00"
action = "phone.plug"
port = "usb1"
amps = 2.0
[[event]]
at = "03:00"
action = "phone.plug"
port = "usb2"
amps = 2.0
[[event]]
at = "04:00"
action = "phone.plug"
port = "usb1"
amps = 2.0
[[event]]
at = "04:00"
action = "phone.plug"
port = "usb2"
amps = 2.0
"""


def test_a_falling_battery_sheds_wifi_then_usb_and_restores_them_above_the_higher_levels(
    tmp_path: Path, broker: Broker, recorder: Recorder
) -> None:
    # 15 Ah at 31 % after midnight: the hotspot (6 W) and the Pi take it below 30 % in
    # a quarter of an hour; phones take it below 15 % before dawn; the sun brings it back.
    config = bench_config(
        tmp_path,
        broker.port,
        start="2026-11-27T00:30:00+07:00",
        speed=7200,
        sample_s=60,
        publish_s=600,
        scenario=NIGHT,
        battery_ah=15,
        soc_pct=31,
    )
    with agent_on_a_thread(config) as run:
        wait_until(
            lambda: all(len(run.levels(o)) >= 4 for o in OUTPUTS),
            60,
            "every output shed and restored",
        )
        run.run_sim_for(1800)  # and nothing more happens in the half hour after
        wait_until(lambda: len(switches(recorder, "wifi")) >= 3, 10, "the events")
        switched = switched_so_far(recorder)

    # Each pin: off until the first decision, on, shed once, restored once (and off when
    # the agent stops, its safe state). No flapping.
    for output in OUTPUTS:
        assert run.levels(output) == [False, True, False, True, False], output
        assert moves(switched[output]) == [ON, OFF_AT_THRESHOLD, BACK_ON], output
        for event in switched[output]:
            validate("event", event)

    # The hotspot goes first, the ports later; both on the pins and in the events.
    wifi_low = run.changed_at("wifi")[2]
    assert all(wifi_low < run.changed_at(port)[2] for port in PORTS)
    assert all(switched["wifi"][1]["seq"] < switched[port][1]["seq"] for port in PORTS)

    # Each at its own threshold: off just below the lower level, on only above the higher.
    shed = {e["output"]: percent(e["detail"]) for e in events(recorder, "battery_shed")}
    restored = {e["output"]: percent(e["detail"]) for e in events(recorder, "battery_restored")}
    assert set(shed) == set(restored) == set(OUTPUTS)
    assert WIFI_OFF_BELOW - OVERSHOOT_PCT <= shed["wifi"] <= WIFI_OFF_BELOW
    assert WIFI_ON_ABOVE <= restored["wifi"] <= WIFI_ON_ABOVE + 2 * OVERSHOOT_PCT
    for port in PORTS:
        assert USB_OFF_BELOW - OVERSHOOT_PCT <= shed[port] <= USB_OFF_BELOW
        assert USB_ON_ABOVE <= restored[port] <= USB_ON_ABOVE + 2 * OVERSHOOT_PCT

    # What ops see every interval agrees with the levels (the record's outputs and state
    # of charge are taken together, after the same sample) ...
    telemetry = records(recorder)
    for record in telemetry:
        soc, outputs = record["battery"]["soc_pct"], record["outputs"]
        if soc <= WIFI_OFF_BELOW - 0.1:
            assert not outputs["wifi"], record
        if soc >= WIFI_ON_ABOVE + 0.1:
            assert outputs["wifi"], record
        for port in PORTS:
            if soc <= USB_OFF_BELOW - 0.1:
                assert not outputs[port], record
            if soc >= USB_ON_ABOVE + 0.1:
                assert outputs[port], record
    # ... and shows the hysteresis: recharging well past the level that shed a load does
    # not bring it back; only the higher level does.
    for output, off_below in (("wifi", WIFI_OFF_BELOW), ("usb1", USB_OFF_BELOW)):
        off_seq, on_seq = (event["seq"] for event in switched[output][1:])
        while_off = [r for r in telemetry if off_seq < r["seq"] < on_seq]
        assert not any(r["outputs"][output] for r in while_off)
        assert max(r["battery"]["soc_pct"] for r in while_off) >= off_below + 5, output


def test_a_slow_ramp_around_the_wifi_threshold_switches_it_once_each_way(
    tmp_path: Path, broker: Broker, recorder: Recorder
) -> None:
    """Dawn at 31 %: with the hotspot on, the battery still discharges and falls below
    30 %. Once the hotspot is shed the rising sun soon outpaces the Pi alone, and the
    charge climbs back over 30 % while the sun is still too weak to carry the hotspot
    too. Without hysteresis that is the classic flap: on at 30 %, discharging, off,
    charging, on ... until the sun is strong enough."""
    config = bench_config(
        tmp_path,
        broker.port,
        start="2026-11-27T05:10:00+07:00",
        speed=3600,
        sample_s=30,
        publish_s=120,
        scenario='[[event]]\nat = 0\naction = "clouds.set"\ncover = 0.8\n',
        battery_ah=10,
        soc_pct=30.8,
    )
    with agent_on_a_thread(config) as run:
        wait_until(lambda: len(run.levels("wifi")) >= 4, 60, "the hotspot shed and restored")
        run.run_sim_for(900)
        wait_until(lambda: len(switches(recorder, "wifi")) >= 3, 10, "the events")
        switched = switched_so_far(recorder)

    # Once each way (the last level is the safe state the agent stops in).
    assert run.levels("wifi") == [False, True, False, True, False]
    assert moves(switched["wifi"]) == [ON, OFF_AT_THRESHOLD, BACK_ON]
    for port in PORTS:  # far above their own levels: on until the agent stops
        assert run.levels(port) == [False, True, False]
        assert moves(switched[port]) == [ON]
    shed, back_on = switched["wifi"][1:]
    assert WIFI_OFF_BELOW - OVERSHOOT_PCT <= percent(shed["detail"]) <= WIFI_OFF_BELOW
    telemetry = records(recorder)
    before = [r for r in telemetry if r["seq"] < shed["seq"]]
    while_off = [r for r in telemetry if shed["seq"] < r["seq"] < back_on["seq"]]
    assert before and while_off
    assert not any(r["outputs"]["wifi"] for r in while_off)
    # Discharging with the hotspot on, at the threshold.
    assert all(r["channels"]["battery"]["a"][1] < 0 for r in before)
    ap_amps = max(r["channels"]["wifi"]["a"][1] for r in before)
    assert ap_amps > 0.3
    # Back over the threshold that shed it, the pin still low, and charging by less than
    # the hotspot draws: switched on here, it would have discharged the battery again.
    back_over = [r for r in while_off if r["battery"]["soc_pct"] > WIFI_OFF_BELOW]
    assert back_over, "the charge never came back over the threshold while shed"
    assert 0 < back_over[0]["channels"]["battery"]["a"][1] < ap_amps
    assert max(r["battery"]["soc_pct"] for r in while_off) > WIFI_OFF_BELOW + 5


def test_shedding_the_access_point_lowers_the_battery_drain(
    tmp_path: Path, broker: Broker, recorder: Recorder
) -> None:
    """The model's loads follow the pins: the 6 W access point off is ~0.46 A less drain."""
    # After midnight: no sun and, in the model, nobody plugging phones in.
    config = bench_config(
        tmp_path,
        broker.port,
        start="2026-11-27T00:30:00+07:00",
        speed=3600,
        sample_s=30,
        publish_s=300,
        scenario="",
        battery_ah=15,
        soc_pct=31.5,
    )
    with agent_on_a_thread(config) as run:
        wait_until(lambda: len(run.levels("wifi")) >= 3, 60, "the hotspot shed")

        def off_all_interval() -> list[dict[str, Any]]:
            return [r for r in records(recorder) if r["channels"]["wifi"]["a"][2] == 0.0]

        wait_until(lambda: len(off_all_interval()) >= 3, 30, "three records with the AP off")
        switched = switched_so_far(recorder)
    assert run.levels("wifi") == [False, True, False]
    assert moves(switched["wifi"]) == [ON, OFF_AT_THRESHOLD]
    shed = switched["wifi"][1]
    telemetry = records(recorder)
    # Whole intervals only: the access point drawing throughout, or not at all.
    on = [r for r in telemetry if r["seq"] < shed["seq"] and r["channels"]["wifi"]["a"][0] > 0.3]
    off = [r for r in telemetry if r["seq"] > shed["seq"] and r["channels"]["wifi"]["a"][2] == 0]
    assert len(on) >= 1 and len(off) >= 3
    assert all(r["outputs"]["wifi"] for r in on) and not any(r["outputs"]["wifi"] for r in off)

    def mean_amps(rows: list[dict[str, Any]], channel: str) -> float:
        return float(sum(r["channels"][channel]["a"][1] for r in rows)) / len(rows)

    drain_with_ap, drain_without = mean_amps(on, "battery"), mean_amps(off, "battery")
    ap_amps = mean_amps(on, "wifi")
    assert drain_with_ap < drain_without < 0  # discharging (no sun), but less
    # The battery gives exactly what the access point took (within 10 %), no more.
    assert abs((drain_without - drain_with_ap) - ap_amps) <= 0.1 * ap_amps
    assert 0.3 < ap_amps < 0.6  # 6 W at 12.6-13.3 V


# --------------------------------------------------------------------------- over-current


SHORT_ON_USB2 = """
[[event]]
at = 0
action = "phone.plug"
port = "usb1"
amps = 1.0
note = "a phone that charges on usb1 the whole time"

[[event]]
at = 120
action = "port.short"
port = "usb2"
note = "a crushed cable"

[[event]]
at = 420
action = "port.unshort"
port = "usb2"
note = "the cable is pulled out"
"""


def test_a_short_trips_retries_and_latches_usb2_while_usb1_charges_until_reset(
    tmp_path: Path, broker: Broker, recorder: Recorder
) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    from bench_agent.ops.keys import keygen
    from bench_agent.remote.signing import new_command, sign_command

    private_path, _ = keygen(tmp_path / "keys", "ops-test")
    key = load_pem_private_key(private_path.read_bytes(), password=None)
    assert isinstance(key, Ed25519PrivateKey)
    config = bench_config(
        tmp_path,
        broker.port,
        start="2026-11-27T10:00:00+07:00",
        speed=600,
        sample_s=10,
        publish_s=60,
        scenario=SHORT_ON_USB2,
        battery_ah=50,
        soc_pct=70,
        changes={
            "commands": {"trusted_keys": str(tmp_path / "keys")},
            # The simulated date is not today: judge commands by signature and replay
            # only, as a bench does before NTP (ages are checked once synced).
            "sim": {"clock_synced_at_start": False},
        },
    )
    with agent_on_a_thread(config) as run:
        wait_until(lambda: len(run.levels("usb2")) >= 7, 30, "usb2 to latch off")
        # The short is gone and more than two cool-downs pass: a latched port stays off.
        wait_until(lambda: run.bench.player.pending == 0, 30, "the cable pulled out")
        run.run_sim_for(2.5 * COOLDOWN_S)
        latched_levels = run.levels("usb2")

        command = sign_command(
            new_command(
                "fault.reset",
                {"name": "overcurrent.usb2"},
                bench=BENCH,
                now=datetime.now(UTC),
            ),
            key,
            "ops-test",
        )
        recorder.client.publish(f"smartbench/{BENCH}/cmd", json.dumps(command), qos=1)
        reply = recorder.wait_for("cmd/reply", lambda p: p["id"] == command["id"])
        wait_until(lambda: len(run.levels("usb2")) >= 8, 30, "usb2 back on")
        run.run_sim_for(2 * COOLDOWN_S)  # and it stays on: nothing draws too much now
        wait_until(lambda: len(switches(recorder, "usb2")) >= 7, 10, "the events")
        switched = switched_so_far(recorder)

    assert reply["ok"] is True and reply["result"] == {"reset": ["overcurrent.usb2"]}, reply
    # usb2: on, then three times tripped by the short: off, retried after the cool-down,
    # off again; the third trip latches it, until the reset.
    assert latched_levels == [False, True, False, True, False, True, False]
    assert run.levels("usb2") == [*latched_levels, True, False]  # on; off at the stop
    trip = ("on", "off", "overcurrent_trip")
    retry = ("off", "on", "default")
    assert moves(switched["usb2"]) == [
        ON,
        trip,
        retry,
        trip,
        retry,
        ("on", "off", "overcurrent_latched"),
        retry,
    ]
    usb2 = switched["usb2"]
    for event in usb2:
        validate("event", event)
    for tripped, retried in ((usb2[1], usb2[2]), (usb2[3], usb2[4])):
        # Not at the next sample (10 s) but after the cool-down (less what it takes,
        # at 600x, to record the events in between).
        assert (ts(retried) - ts(tripped)).total_seconds() >= COOLDOWN_S - 15
    trips = [e["detail"] for e in events(recorder, "overcurrent_trip", "usb2")]
    assert len(trips) == LATCH_AFTER_TRIPS
    for n, detail in enumerate(trips, start=1):
        assert f"trip {n} of {LATCH_AFTER_TRIPS}" in detail, detail
    assert len(events(recorder, "overcurrent_latched", "usb2")) == 1
    assert len(events(recorder, "fault_reset", "usb2")) == 1
    assert usb2[-1]["seq"] > events(recorder, "fault_reset", "usb2")[0]["seq"]
    # The retained state said why usb2 was off in between: cooling down, then latched.
    reasons = [m.json()["outputs"]["usb2"]["reason"] for m in recorder.on("state")]
    assert "cooldown" in reasons and "overcurrent_latched" in reasons

    # usb1 charged its phone throughout: never switched until the agent stopped, drawing
    # its 1 A in every interval.
    assert run.levels("usb1") == [False, True, False]
    assert moves(switched["usb1"]) == [ON]
    until_reset = [r for r in records(recorder) if r["seq"] < usb2[-1]["seq"]]
    assert len(until_reset) >= 5
    assert all(r["channels"]["usb1"]["a"][0] >= 0.9 for r in until_reset[1:])


# --------------------------------------------------------------------------- stopping


def safe_state_config(workdir: Path, broker_port: int) -> Path:
    """A sunny morning; the hotspot's safe state is ON (and the policy wants it off), the
    ports' is OFF (and the policy wants them on): every output must move on the way out."""
    return bench_config(
        workdir,
        broker_port,
        start="2026-11-27T10:00:00+07:00",
        speed=240,
        sample_s=10,
        publish_s=300,
        scenario="",
        battery_ah=50,
        soc_pct=70,
        changes={
            "outputs": {"wifi": {"safe_state_on": True}},
            "policy": {"defaults": {"wifi": False}},
        },
    )


def decided(run_levels: Mapping[str, list[bool]]) -> bool:
    """The first decision is applied: ports on, hotspot off."""
    return all(run_levels[p][-1:] == [True] for p in PORTS) and run_levels["wifi"] == [
        False,
        True,
        False,
    ]


def assert_in_safe_state_and_released(pins: Mapping[str, Any]) -> None:
    for port in PORTS:
        levels = [bool(s.state) for s in pins[port].states]
        assert levels == [False, True, False], port  # on while running, off on the way out
    wifi = [bool(s.state) for s in pins["wifi"].states]
    assert wifi == [False, True, False, True]  # safe (on) when built, off, safe again
    for name, pin in pins.items():
        # Released, as after the process exits: the hardware pull-down (ports) decides.
        assert pin.function == "input", name


def test_sigterm_puts_every_output_in_its_safe_state(
    tmp_path: Path, broker: Broker, recorder: Recorder
) -> None:
    """The agent on the main thread, so it installs its handlers; a real SIGTERM."""
    agent = Agent(load_config(safe_state_config(tmp_path, broker.port)))
    built: list[dict[str, Any]] = []  # the pins, handed over once the hardware is up
    stop_fallback: list[str] = []
    finished = threading.Event()

    def operator() -> None:
        """Sends SIGTERM once the outputs are decided; stops the agent anyway if that
        does not work, so a failure cannot hang the test run."""
        try:
            wait_until(lambda: built and decided(levels_of(built[0])), 30, "the first decision")
            os.kill(os.getpid(), signal.SIGTERM)
            if not finished.wait(20):
                stop_fallback.append("run() did not return within 20 s of SIGTERM")
        except AssertionError as exc:
            stop_fallback.append(str(exc))
        if stop_fallback:
            agent.request_stop()

    # A SIGTERM reaching this process outside run() must not kill the test session.
    stray: list[int] = []
    previous = signal.signal(signal.SIGTERM, lambda signum, _frame: stray.append(signum))
    helper = threading.Thread(target=operator, name="operator", daemon=True)
    try:
        helper.start()
        code = agent.run(ready=lambda: built.append(output_pins(agent)))
        finished.set()
        helper.join(10)
    finally:
        finished.set()
        signal.signal(signal.SIGTERM, previous)

    assert stop_fallback == [] and stray == []
    assert code == 0
    assert_in_safe_state_and_released(built[0])
    offline = recorder.wait_for("status", lambda p: p["online"] is False, timeout_s=5)
    assert offline["reason"] == "shutdown"


def levels_of(pins: Mapping[str, Any]) -> dict[str, list[bool]]:
    return {name: [bool(s.state) for s in list(pin.states)] for name, pin in pins.items()}


def test_an_error_escaping_the_loop_still_puts_every_output_in_its_safe_state(
    tmp_path: Path, broker: Broker, recorder: Recorder
) -> None:
    """The one ExitStack is what makes every exit path safe, an exception included. The
    loop hands every Exception a call raises back to its caller, so what escapes is a
    BaseException: here a SystemExit raised on the loop, standing for any of them."""

    def exit_from_the_loop() -> None:
        raise SystemExit("raised on the agent's loop")

    with agent_on_a_thread(safe_state_config(tmp_path, broker.port)) as run:
        wait_until(lambda: decided(levels_of(run.pins)), 30, "the first decision")
        run.agent.inbox.put(Call(exit_from_the_loop))
        assert run.thread is not None
        run.thread.join(20)
        assert not run.thread.is_alive()

    assert len(run.errors) == 1 and isinstance(run.errors[0], SystemExit)
    assert_in_safe_state_and_released(run.pins)
    offline = recorder.wait_for("status", lambda p: p["online"] is False, timeout_s=5)
    assert offline["reason"] == "shutdown"


def test_the_switch_to_the_safe_state_on_stop_is_reported(
    tmp_path: Path, broker: Broker, recorder: Recorder
) -> None:
    with agent_on_a_thread(safe_state_config(tmp_path, broker.port)) as run:
        wait_until(lambda: decided(levels_of(run.pins)), 30, "the first decision")
        recorder.wait_for("state", lambda p: p["outputs"]["usb1"]["on"] is True)
    recorder.wait_for("status", lambda p: p["online"] is False, timeout_s=5)
    assert run.levels("usb1")[-1] is False  # the pin did go off
    # "Every change of an output is an event ... and updates the retained state."
    assert switches(recorder, "usb1")[-1] == ("on", "off", "safe_state")
    late = Recorder(broker.port, f"smartbench/{BENCH}/state")
    try:
        retained = late.wait_for("state", timeout_s=5)
    finally:
        late.close()
    assert retained["outputs"]["usb1"]["on"] is False


# --------------------------------------------------------------------------- a wrong estimate


def test_a_sharp_fall_of_the_true_charge_sheds_wifi_before_the_low_voltage_disconnect(
    tmp_path: Path, broker: Broker, recorder: Recorder
) -> None:
    """demo.toml's evening: 'an ageing battery: the charge drops sharply; load shedding
    should begin' (battery.set 18 % at 19:00). A battery with less capacity than its
    label (or a count that drifted) is the same thing, more slowly."""
    config = bench_config(
        tmp_path,
        broker.port,
        start="2026-11-27T19:00:00+07:00",
        speed=12000,
        sample_s=60,
        publish_s=3600,
        scenario='[[event]]\nat = 600\naction = "battery.set"\nsoc_pct = 18\n',
        battery_ah=50,
        soc_pct=55,
    )
    with agent_on_a_thread(config) as run:
        model = run.bench.model
        wait_until(
            lambda: (
                (len(run.levels("wifi")) > 2 and not run.levels("wifi")[-1]) or model.lvd_tripped
            ),
            30,
            "the hotspot shed or the low-voltage disconnect",
        )
        tripped_first = model.lvd_tripped
        true_soc = model.true_soc_pct
    assert not tripped_first, f"loads cut by the LVD at a true {true_soc:.1f} %, nothing shed"
    assert switches(recorder, "wifi")[1] == OFF_AT_THRESHOLD
