"""Each side builds its own parts (link/assembly.py, power/assembly.py): what they
need of each other is wired there, and what they keep is saved by the caller's stack."""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path
from typing import Any

from gpiozero.pins.mock import MockFactory

from bench_agent.clock import TimeFloor
from bench_agent.config_loader import load_config
from bench_agent.faults import FaultRegistry
from bench_agent.hardware.parts import build_outputs
from bench_agent.link.assembly import build_link_parts
from bench_agent.link.outbox import Outbox
from bench_agent.power.assembly import build_power_parts, open_charger_feed
from bench_agent.power.sampler import Sampler
from tests.link_clock import ManualClock
from tests.link_support import LoopbackLink
from tests.support import sim_config


def test_the_power_parts_save_their_state_files_when_the_stack_closes(tmp_path: Path) -> None:
    cfg = load_config(sim_config(tmp_path, 1883, {"charger": None}))
    clock, events = ManualClock(), []
    with ExitStack() as stack:
        outputs = build_outputs(cfg, MockFactory())
        parts = build_power_parts(
            cfg,
            stack,
            outputs=outputs,
            wifi_clients=lambda: 3,
            clock=clock,
            emit_event=lambda kind, data: events.append(kind),
        )
        no_charger = open_charger_feed(
            cfg, stack, on_sample=print, faults=faults(), controller=parts.controller
        )
        assert no_charger is None  # no [charger] table
        saved = sorted(p.name for p in cfg.storage.dir.glob("*.json"))
    assert saved == []  # nothing written while running without a reason
    assert sorted(p.name for p in cfg.storage.dir.glob("*.json")) == [
        "controller-state.json",
        "daily-counters.json",
        "uplink-recovery.json",
    ]


def test_the_link_parts_share_one_outbox_and_one_link_and_leave_the_link_to_the_caller(
    tmp_path: Path,
) -> None:
    cfg = load_config(sim_config(tmp_path, 1883, {"charger": None}))
    clock = ManualClock()
    made: list[LoopbackLink] = []

    def link(*args: Any, **kwargs: Any) -> LoopbackLink:
        made.append(LoopbackLink(*args, **kwargs))
        return made[-1]

    with ExitStack() as stack:
        parts = build_link_parts(
            cfg,
            stack,
            clock=clock,
            boot_id="boot-test",
            faults=faults(),
            time_floor=TimeFloor(tmp_path / "floor.json", monotonic=clock.monotonic),
            sampler=Sampler({}, cfg.sampling.sample_interval_s),
            link_factory=link,
            on_link_event=lambda event: None,
        )
        assert [parts.link] == made and not made[0].connected  # built, not started
        assert made[0].will.topic == cfg.topic("status")
        assert b'"reason":"connection_lost"' in made[0].will.payload
        assert made[0].subscriptions == (cfg.topic("cmd"),)
        _, stored = parts.recorder.record("telemetry", {"interval_s": 1.0}, clock.mono)
        assert stored and parts.outbox.stats().depth == 1  # the recorder's outbox is the one
    reopened = Outbox(cfg.storage.dir / "outbox.sqlite3", max_bytes=cfg.storage.outbox_max_bytes)
    with reopened:  # closed by the stack
        assert reopened.stats().depth == 1


def faults() -> FaultRegistry:
    return FaultRegistry(lambda kind, data: None)
