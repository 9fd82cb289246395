"""What a SIGHUP may change live, decided apart from applying it (service.py applies it;
test_agent_integration.py sends a real SIGHUP)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from bench_agent.config_loader import load_config
from bench_agent.inbox import Call
from bench_agent.reload import LIVE_RELOADABLE, reload_plan
from tests.support import sim_config


def test_policy_commands_and_uplink_change_live_anything_else_needs_a_restart(
    tmp_path: Path,
) -> None:
    running = load_config(sim_config(tmp_path, 1883))
    assert reload_plan(running, running).changed == ()
    schedule = replace(running.policy, defaults={**running.policy.defaults, "usb1": False})
    live = reload_plan(running, replace(running, policy=schedule))
    assert live.live and live.changed == ("policy",)
    moved = replace(running, mqtt=replace(running.mqtt, port=8883), policy=schedule)
    refused = reload_plan(running, moved)
    assert not refused.live
    assert refused.changed == ("mqtt", "policy") and refused.needs_restart == ("mqtt",)
    assert {"policy", "commands", "uplink"} == LIVE_RELOADABLE
    # The file's own path is not a table: a config read from elsewhere is the same config.
    assert reload_plan(running, replace(running, source=tmp_path / "other.toml")).changed == ()


def test_a_call_hands_back_its_result_or_its_exception_and_never_raises() -> None:
    ok = Call(lambda: 42)
    ok.run()
    assert ok.done.is_set() and ok.outcome == [("ok", 42)]

    def boom() -> None:
        raise ValueError("bad")

    failed = Call(boom)
    failed.run()
    assert failed.done.is_set()
    kind, exc = failed.outcome[0]
    assert kind == "error" and isinstance(exc, ValueError)
