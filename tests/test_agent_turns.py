"""The whole agent, turn by turn: a simulated bench, an in-memory link, a clock the
test moves. What the composition root wires (the order of a sample, routing the
inbox, the reload, the stop) is tested here without a broker or a thread of its
own; the same agent against a real mosquitto is in test_agent_integration.py."""

from __future__ import annotations

import json
import tomllib
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from bench_agent.config import Config
from bench_agent.config_loader import load_config
from bench_agent.hardware.bundle import Hardware
from bench_agent.hardware.sim.bench import build_simulated_hardware
from bench_agent.inbox import ReloadRequested, TamperChanged
from bench_agent.service import Agent
from tests.link_clock import ManualClock
from tests.link_support import LoopbackLink
from tests.support import dump_toml, sim_config

SAMPLE_S = 10.0  # config/sim-bench.toml
PUBLISH_S = 300.0


@dataclass
class Rig:
    agent: Agent
    clock: ManualClock
    link: LoopbackLink
    config_path: Path

    def run_for(self, seconds: float, step_s: float = SAMPLE_S) -> None:
        """Move the clock `step_s` at a time, one turn of the loop each."""
        for _ in range(round(seconds / step_s)):
            self.clock.advance(step_s)
            self.agent.turn(wait=False)

    def telemetry(self) -> list[dict[str, Any]]:
        return [r for s in self.link.sent if s.leaf == "telemetry" for r in s.records()]

    def events(self, event_type: str) -> list[dict[str, Any]]:
        return [
            json.loads(s.payload)
            for s in self.link.sent
            if s.leaf == "event" and json.loads(s.payload).get("type") == event_type
        ]

    def retained(self, leaf: str) -> dict[str, Any]:
        topic = self.agent.cfg.topic(leaf)
        return dict(json.loads(self.link.retained[topic]))


@contextmanager
def agent_rig(tmp_path: Path, changes: dict[str, Any] | None = None) -> Iterator[Rig]:
    keys = {"commands": {"trusted_keys": str(tmp_path / "ops-keys")}}
    config_path = sim_config(tmp_path, 1, {"charger": None, **keys, **(changes or {})})
    clock = ManualClock()
    links: list[LoopbackLink] = []

    def hardware(cfg: Config, on_tamper: Any) -> Hardware:
        # The simulated bench, on the test's clock: the agent's intervals are the test's.
        return replace(build_simulated_hardware(cfg, on_tamper), clock=clock)

    def link(*args: Any, **kwargs: Any) -> LoopbackLink:
        links.append(LoopbackLink(*args, **kwargs))
        return links[-1]

    agent = Agent(load_config(config_path), hardware_factory=hardware, link_factory=link)
    with ExitStack() as stack:
        agent.start(stack)
        agent.turn(wait=False)  # the first sample, and the connection's events
        yield Rig(agent, clock, links[0], config_path)


def test_every_sample_lands_in_one_telemetry_record_in_seq_order(tmp_path: Path) -> None:
    with agent_rig(tmp_path) as rig:
        rig.run_for(3 * PUBLISH_S)
        records = rig.telemetry()
        assert [r["seq"] for r in records] == sorted(r["seq"] for r in records)
        assert len(records) == 3
        assert all(r["interval_s"] == PUBLISH_S for r in records)
        # 91 samples (t = 0, 10, …, 900 s), each in exactly one interval's summary.
        battery = [r["channels"]["battery"]["n"] for r in records]
        assert sum(battery) == 91, battery
        assert set(records[-1]["outputs"]) == {"usb1", "usb2", "wifi"}
        assert rig.agent.outbox.stats().depth == 0  # every record acknowledged
        assert rig.retained("status")["online"] is True
        assert rig.retained("state")["outputs"].keys() == {"usb1", "usb2", "wifi"}


def test_records_made_while_the_link_is_down_arrive_after_it_in_order(tmp_path: Path) -> None:
    with agent_rig(tmp_path) as rig:
        rig.run_for(PUBLISH_S)
        rig.link.down()
        rig.run_for(3 * PUBLISH_S)
        delivered = [r["seq"] for r in rig.telemetry()]
        assert len(delivered) == 1
        assert rig.agent.outbox.stats().depth >= 3  # kept, not lost
        rig.link.up()
        rig.run_for(PUBLISH_S)
        seqs = [r["seq"] for r in rig.telemetry()]
        assert len(seqs) == 5 and seqs == sorted(seqs)
        assert rig.agent.outbox.stats().depth == 0
        assert rig.telemetry()[-1]["health"]["reconnects"] == 1


def test_the_stop_switches_to_the_safe_state_then_says_offline(tmp_path: Path) -> None:
    with agent_rig(tmp_path) as rig:
        rig.run_for(PUBLISH_S)
        link, cfg = rig.link, rig.agent.cfg
    leaves = [s.leaf for s in link.sent]
    assert leaves[-1] == "status" and link.closed
    offline = json.loads(link.sent[-1].payload)
    assert offline["online"] is False and offline["reason"] == "shutdown"
    safe = [o.name for o in cfg.outputs if not o.safe_state_on]
    state = json.loads(link.retained[cfg.topic("state")])
    assert [name for name in safe if state["outputs"][name]["on"] is False] == safe
    assert all(state["outputs"][name]["reason"] == "safe_state" for name in safe)


def test_tamper_is_an_event_and_the_state_at_once(tmp_path: Path) -> None:
    with agent_rig(tmp_path) as rig:
        rig.agent.inbox.put(TamperChanged(True))
        rig.agent.turn(wait=False)
        assert [e["open"] for e in rig.events("tamper")] == [True]
        assert rig.retained("state")["tamper_open"] is True
        rig.agent.inbox.put(TamperChanged(True))  # no change: no second event
        rig.agent.turn(wait=False)
        assert len(rig.events("tamper")) == 1


def test_a_dead_thread_is_a_fault_ops_see(tmp_path: Path) -> None:
    with agent_rig(tmp_path) as rig:
        rig.link.thread_alive = False
        rig.run_for(SAMPLE_S)
        assert "thread.mqtt" in rig.agent.faults
        assert [f["name"] for f in rig.retained("state")["faults"]] == ["thread.mqtt"]
        assert [e["fault"] for e in rig.events("fault_raised")] == ["thread.mqtt"]


def test_sighup_applies_the_policy_live_and_refuses_what_needs_a_restart(
    tmp_path: Path,
) -> None:
    with agent_rig(tmp_path) as rig:
        data = load_toml(rig.config_path)
        data.setdefault("policy", {}).setdefault("battery", {})["usb_off_below_pct"] = 12
        rig.config_path.write_text(dump_toml(data))
        rig.agent.inbox.put(ReloadRequested())
        rig.agent.turn(wait=False)
        assert [e["tables"] for e in rig.events("config_reloaded")] == [["policy"]]
        assert rig.agent.controller.policy == rig.agent.cfg.policy
        data["mqtt"]["port"] = 2
        rig.config_path.write_text(dump_toml(data))
        rig.agent.inbox.put(ReloadRequested())
        rig.agent.turn(wait=False)
        refused = rig.events("config_reload_refused")
        assert [(e["reason"], e["tables"]) for e in refused] == [("needs_restart", ["mqtt"])]
        assert rig.agent.cfg.mqtt.port == 1


def load_toml(path: Path) -> dict[str, Any]:
    return tomllib.loads(path.read_text())
