"""The controller: the one owner of the outputs, running the policy each sample.

The real policy and gpiozero's MockFactory pins (the reference outputs are GPIO
load switches); a switch that cannot be driven is a gpiozero pin that raises.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from gpiozero.pins.mock import MockFactory

from bench_agent.config_loader import load_config
from bench_agent.hardware.gpio import GpioSwitch
from bench_agent.power.controller import Controller
from bench_agent.power.soc import SocEstimator
from tests.support import REPO

CFG = load_config(REPO / "config" / "sim-bench.toml")
TZ = ZoneInfo(CFG.bench.timezone)
NOON = datetime(2026, 12, 4, 12, 0, tzinfo=TZ)


class Rig:
    def __init__(self, tmp_path: Path, soc_pct: float = 80.0) -> None:
        self.factory = MockFactory()
        self.switches = {
            o.name: GpioSwitch(o.name, o.pin or 0, o.safe_state_on, self.factory)
            for o in CFG.outputs
        }
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.state_file = tmp_path / "controller-state.json"
        self.controller = self.make(soc_pct)

    def make(self, soc_pct: float) -> Controller:
        return Controller(
            CFG.policy,
            self.switches,
            SocEstimator(CFG.battery.capacity_ah, CFG.battery.chemistry, initial_pct=soc_pct),
            emit_event=lambda kind, data: self.events.append((kind, data)),
            state_file=self.state_file,
        )

    def switched(self) -> list[tuple[str, str, str]]:
        return [
            (d["output"], d["to"], d["reason"]) for k, d in self.events if k == "output_switched"
        ]


def test_a_sample_decides_and_switches_each_output_once_with_its_reason(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    version = rig.controller.state_version
    rig.controller.step(NOON, 0.0, {}, cpu_c=45.0)
    assert sorted(rig.switched()) == [
        ("usb1", "on", "default"),
        ("usb2", "on", "default"),
        ("wifi", "on", "default"),
    ]
    assert all(switch.is_on for switch in rig.switches.values())
    assert rig.controller.state_version == version + 1
    rig.controller.step(NOON + timedelta(seconds=1), 1.0, {}, cpu_c=45.0)
    assert len(rig.switched()) == 3  # nothing changed: nothing switched, same version
    assert rig.controller.state_version == version + 1


def test_a_switch_that_cannot_be_driven_is_one_event_per_streak(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    pin = rig.factory.pin(next(o.pin for o in CFG.outputs if o.name == "usb2") or 0)

    def broken(_value: object) -> None:
        raise OSError(5, "Input/output error")

    pin._set_state = broken  # type: ignore[method-assign]
    for t in range(5):
        rig.controller.step(NOON + timedelta(seconds=t), float(t), {}, cpu_c=45.0)
    errors = [d for k, d in rig.events if k == "output_error"]
    assert [e["output"] for e in errors] == ["usb2"]
    assert "Input/output error" in errors[0]["detail"]
    assert ("usb1", "on", "default") in rig.switched()  # the others are not held up


def test_an_override_switches_at_once_and_the_stop_reaches_the_safe_state(
    tmp_path: Path,
) -> None:
    rig = Rig(tmp_path)
    rig.controller.step(NOON, 0.0, {}, cpu_c=45.0)
    assert rig.controller.set_override("usb1", False, None, "technician", 0.0) is None
    rig.controller.step(NOON + timedelta(seconds=1), 1.0, {}, cpu_c=45.0)
    assert ("usb1", "off", "override_off") in rig.switched()
    rig.controller.save()  # latches and the state of charge, for the next run
    assert rig.state_file.exists()

    rig.events.clear()
    rig.controller.enter_safe_state("agent stopping")
    assert all(not switch.is_on for switch in rig.switches.values())
    assert {reason for _, _, reason in rig.switched()} == {"safe_state"}
    payload = rig.controller.state_payload(2.0)
    assert {name: out["on"] for name, out in payload["outputs"].items()} == {
        "usb1": False,
        "usb2": False,
        "wifi": False,
    }


def test_a_garbled_state_file_is_ignored_not_fatal(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    rig.state_file.write_text("{garbage")
    rig.controller.load(0.0)  # logged; starts from a clean state
    rig.controller.step(NOON, 0.0, {}, cpu_c=45.0)
    assert len(rig.switched()) == 3


def test_the_state_is_a_frozen_snapshot_and_its_payload_is_the_contracts(
    tmp_path: Path,
) -> None:
    rig = Rig(tmp_path)
    rig.controller.step(NOON, 0.0, {}, cpu_c=45.0)
    assert rig.controller.set_override("usb2", False, 600, "ops", 0.0) is None
    snapshot = rig.controller.snapshot(100.0)
    usb2 = snapshot.outputs["usb2"]
    assert usb2.override is not None and usb2.override.expires_in_s == 500.0
    assert snapshot.battery.soc_pct == 80.0 and snapshot.latched_faults == ()
    with pytest.raises(dataclasses.FrozenInstanceError):
        snapshot.battery = snapshot.battery  # type: ignore[misc]
    with pytest.raises(TypeError):
        snapshot.outputs["usb3"] = usb2  # type: ignore[index]
    payload = rig.controller.state_payload(100.0)
    assert payload == snapshot.payload()
    assert payload["outputs"]["usb2"]["override"] == {
        "state": "off",
        "expires_in_s": 500.0,
        "source": "ops",
    }
    assert set(payload) == {"outputs", "latched_faults", "battery", "battery_protection"}
    validate_state_body(payload)


def validate_state_body(body: dict[str, Any]) -> None:
    """The body inside the retained `state` message, checked against its schema."""
    from tests.outbox_support import validate

    message = {
        "v": 1,
        "bench": "bench-test-01",
        "ts": "2026-12-04T05:00:00.000Z",
        "tamper_open": False,
        "faults": [],
        **body,
    }
    validate("state", message)
