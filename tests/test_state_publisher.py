"""The retained state and status, and what commands do through AgentCommands.

The real controller and policy on gpiozero's MockFactory, a link that records
(and checks every payload against the contract's schemas).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from gpiozero.pins.mock import MockFactory

from bench_agent.config_loader import load_config
from bench_agent.faults import FaultRegistry, overcurrent_fault
from bench_agent.hardware.gpio import GpioSwitch
from bench_agent.link.state import StatePublisher, config_hash, status_message
from bench_agent.power.controller import Controller
from bench_agent.power.soc import SocEstimator
from bench_agent.remote.agent_control import AgentCommands
from tests.link_clock import ManualClock
from tests.link_support import RecordingLink
from tests.outbox_support import validate
from tests.support import REPO

BENCH = "bench-test-01"


class Rig:
    def __init__(self) -> None:
        cfg = load_config(REPO / "config" / "sim-bench.toml")
        self.clock = ManualClock()
        self.link = RecordingLink(allow_retain=True)
        self.link.connect()
        self.events: list[tuple[str, dict[str, Any]]] = []
        switches = {
            o.name: GpioSwitch(o.name, o.pin or 0, o.safe_state_on, MockFactory())
            for o in cfg.outputs
        }
        self.controller = Controller(
            cfg.policy,
            switches,
            SocEstimator(cfg.battery.capacity_ah, cfg.battery.chemistry, initial_pct=80),
            emit_event=lambda kind, data: self.events.append((kind, data)),
        )
        self.faults = FaultRegistry(lambda kind, data: self.events.append((kind, data)))
        self.tamper: bool | None = False
        self.state = StatePublisher(
            bench_id=BENCH,
            topic=lambda leaf: f"smartbench/{BENCH}/{leaf}",
            link=self.link,
            controller=self.controller,
            faults=self.faults,
            clock=self.clock,
            boot_id="boot-test",
            tamper_open=lambda: self.tamper,
        )
        self.commands = AgentCommands(
            self.controller, self.state, switches, monotonic=self.clock.monotonic
        )

    def states(self) -> list[dict[str, Any]]:
        return [json.loads(s.payload) for s in self.link.sent if s.leaf == "state"]


def test_state_is_sent_when_it_changes_or_when_forced_and_is_retained() -> None:
    rig = Rig()
    rig.state.publish()
    rig.state.publish()  # nothing changed: not again
    assert len(rig.states()) == 1
    rig.faults.raise_("storage", "disk full")
    rig.state.publish(force=True)
    latest = rig.states()[-1]
    assert latest["faults"] == [{"name": "storage", "detail": "disk full"}]
    assert latest["tamper_open"] is False and latest["bench"] == BENCH
    assert json.loads(rig.link.retained[f"smartbench/{BENCH}/state"]) == latest


def test_state_get_is_the_state_without_its_envelope() -> None:
    rig = Rig()
    rig.state.publish(force=True)
    body = rig.commands.state()
    sent = rig.states()[-1]
    assert {k: v for k, v in sent.items() if k not in ("v", "bench", "ts")} == body


def test_an_accepted_override_is_published_at_once_a_refused_one_is_not() -> None:
    rig = Rig()
    rig.state.publish(force=True)
    before = len(rig.states())
    assert rig.commands.set_override("usb1", False, 600, "technician") is None
    assert len(rig.states()) == before + 1
    assert rig.states()[-1]["outputs"]["usb1"]["override"]["source"] == "technician"
    refusal = rig.commands.set_override("usb9", True, None, "technician")
    assert refusal is not None and "usb9" in refusal
    assert len(rig.states()) == before + 1


def test_fault_reset_names_what_it_reset_and_rebirth_resends_status_and_state() -> None:
    rig = Rig()
    assert rig.commands.reset_fault(overcurrent_fault("usb1")) == []  # nothing latched
    rig.commands.rebirth()
    leaves = [s.leaf for s in rig.link.sent]
    assert leaves[-2:] == ["status", "state"]
    status = json.loads(rig.link.retained[f"smartbench/{BENCH}/status"])
    assert status["online"] is True and status["boot_id"] == "boot-test"
    assert rig.commands.outputs() == ["usb1", "usb2", "wifi"]


def test_saying_offline_is_retained_and_waits_for_its_ack_only_when_sent() -> None:
    rig = Rig()
    waited: list[int] = []
    rig.state.say_offline(waited.append)
    offline = json.loads(rig.link.retained[f"smartbench/{BENCH}/status"])
    assert offline["online"] is False and offline["reason"] == "shutdown"
    assert waited == [rig.link.sent[-1].mid]
    rig.link.disconnect()
    rig.state.say_offline(waited.append)  # nothing sent: nothing to wait for
    assert len(waited) == 1


def test_status_and_the_last_will_carry_the_config_hash(tmp_path: Path) -> None:
    config = tmp_path / "bench.toml"
    config.write_bytes(b"[bench]\nid = 'x'\n")
    digest = hashlib.sha256(config.read_bytes()).hexdigest()[:12]
    assert config_hash(config) == digest
    assert config_hash(tmp_path / "gone.toml") is None  # unreadable: left out, no crash
    will = json.loads(
        status_message(
            BENCH, "boot-test", ManualClock(), False, "connection_lost", config_hash=digest
        )
    )
    validate("status", will)
    assert will["config_hash"] == digest and will["reason"] == "connection_lost"
    rig = Rig()
    rig.state = StatePublisher(
        bench_id=BENCH,
        topic=lambda leaf: f"smartbench/{BENCH}/{leaf}",
        link=rig.link,
        controller=rig.controller,
        faults=rig.faults,
        clock=rig.clock,
        boot_id="boot-test",
        tamper_open=lambda: None,
        config_hash=digest,
    )
    rig.state.publish_online()
    online = json.loads(rig.link.retained[f"smartbench/{BENCH}/status"])
    assert online["config_hash"] == digest and online["online"] is True
    old = json.loads(status_message(BENCH, "boot-test", ManualClock(), True))
    assert "config_hash" not in old  # an old bench's status: still valid
    validate("status", old)
