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
from datetime import datetime
from pathlib import Path
from typing import Any

from bench_agent.config import Config
from bench_agent.config_loader import load_config
from bench_agent.hardware.bundle import Hardware
from bench_agent.hardware.sim.bench import build_simulated_hardware
from bench_agent.inbox import ReloadRequested, TamperChanged
from bench_agent.link import contract_v2
from bench_agent.service import Agent
from tests.link_clock import ManualClock
from tests.link_support import LoopbackLink, Sent
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

    def settle(self) -> None:
        """One more turn without moving the clock: the acks of what the last turn
        sent (the in-memory broker answers at once, on the inbox) are taken."""
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
    # Each record at once (contract 2, no batching) unless a test asks for batches: what
    # is tested here is the wiring; the batches have their own tests below.
    defaults = {
        "commands": {"trusted_keys": str(tmp_path / "ops-keys")},
        "mqtt": {"telemetry_batch_s": 0},
    }
    config_path = sim_config(tmp_path, 1, {"charger": None, **defaults, **(changes or {})})
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
        links[0].now = lambda: clock.wall().timestamp()
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
        rig.settle()
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
        rig.settle()
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


# -- contract 2: batches ------------------------------------------------------------

BATCHED = {"mqtt": {"telemetry_batch_s": 300}, "sampling": {"publish_interval_s": 60}}


def v2_wire(rig: Rig) -> list[Sent]:
    return [s for s in rig.link.wire if s.leaf == "v2"]


def test_records_wait_for_their_batch_but_never_longer_than_the_batch_interval(
    tmp_path: Path,
) -> None:
    with agent_rig(tmp_path, BATCHED) as rig:
        rig.link.wire.clear()
        rig.run_for(290)  # four records, the oldest 230 s old: nothing goes yet
        assert v2_wire(rig) == []
        assert rig.agent.publisher.waiting()[0] == 4
        assert rig.agent.outbox.stats().depth >= 4  # committed, not held back
        rig.run_for(3600)
        batches = [contract_v2.decode(s.payload) for s in v2_wire(rig)]
        assert len(batches) == 12  # one message per 300 s, not per record
        seqs = [r["seq"] for b in batches for _, r in b.records]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
        assert all(len(b.records) == 5 for b in batches[1:])
        # Latency: no record waited more than the batch interval (+ one sample's step).
        for sent, batch in zip(v2_wire(rig), batches, strict=True):
            assert sent.at is not None
            for _, record in batch.records:
                waited = sent.at - datetime.fromisoformat(record["ts"]).timestamp()
                assert waited <= 300 + SAMPLE_S, (record["seq"], waited)
        assert not any(r.get("historical") for b in batches for _, r in b.records)
        assert rig.agent.outbox.stats().depth <= 5  # only the batch being gathered


def test_an_urgent_event_goes_at_once_and_takes_the_waiting_records_along(
    tmp_path: Path,
) -> None:
    with agent_rig(tmp_path, BATCHED) as rig:
        rig.run_for(450)  # the first batch went at 360 s; one record waits since 420 s
        before = len(v2_wire(rig))
        waiting = rig.agent.publisher.waiting()[0]
        assert waiting >= 1
        rig.agent.inbox.put(TamperChanged(True))
        rig.agent.turn(wait=False)
        sent = v2_wire(rig)[before:]
        assert len(sent) == 1
        kinds = [kind for kind, _ in contract_v2.decode(sent[0].payload).records]
        assert kinds == ["telemetry"] * waiting + ["event"]
        assert rig.agent.publisher.waiting() == (0, None)


def test_an_event_that_can_wait_rides_with_the_next_batch(tmp_path: Path) -> None:
    with agent_rig(tmp_path, BATCHED) as rig:
        rig.run_for(300)
        before = len(v2_wire(rig))
        rig.agent.emit_event("config_reloaded", {"tables": ["policy"]})
        rig.agent.turn(wait=False)
        assert len(v2_wire(rig)) == before
        rig.run_for(300)
        kinds = [k for s in v2_wire(rig)[before:] for k, _ in contract_v2.decode(s.payload).records]
        assert "event" in kinds


def test_a_backlog_drains_at_once_in_batches_within_the_payload_limit(tmp_path: Path) -> None:
    limit = {"storage": {"max_payload_bytes": 4096}}
    with agent_rig(tmp_path, {**BATCHED, **limit}) as rig:
        rig.link.down()
        rig.run_for(6 * 3600, step_s=60)  # 360 records while the link is down
        assert rig.agent.outbox.stats().depth >= 360
        rig.link.wire.clear()
        rig.link.up()
        for _ in range(200):  # each turn acks (in-memory) and sends the next batches
            rig.agent.turn(wait=False)
        sent = v2_wire(rig)
        rig.settle()
        assert rig.agent.outbox.stats().depth == 0
        assert all(len(s.payload) <= 4096 for s in sent)
        records = [r for s in sent for _, r in contract_v2.decode(s.payload).records]
        assert len(records) >= 360 and all(r.get("historical") for r in records[:-1])
        assert len(sent) < len(records) / 10  # batches, not one message per record


def test_contract_1_still_sends_each_record_as_json_at_once(tmp_path: Path) -> None:
    with agent_rig(tmp_path, {"mqtt": {"contract": 1}}) as rig:
        rig.run_for(PUBLISH_S)
        leaves = {s.leaf for s in rig.link.wire}
        assert "v2" not in leaves and {"telemetry", "event", "state", "status"} <= leaves
        assert len(rig.telemetry()) == 1
