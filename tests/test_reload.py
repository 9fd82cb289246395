"""What a SIGHUP may change live, and the reload that reads the file again
(test_agent_turns.py reloads a whole agent; test_agent_integration.py sends a real SIGHUP)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from bench_agent.config_loader import load_config
from bench_agent.inbox import Call
from bench_agent.reload import LIVE_RELOADABLE, reload_config, reload_plan
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
    assert ok.done.is_set() and ok.outcome == [42] and ok.failure == []

    def boom() -> None:
        raise ValueError("bad")

    failed = Call(boom)
    failed.run()
    assert failed.done.is_set() and failed.outcome == []
    assert [type(exc) for exc in failed.failure] == [ValueError]


def reload_rig(tmp_path: Path) -> tuple[Path, list[tuple[str, dict[str, object]]], list[object]]:
    path = sim_config(tmp_path, 1883, {"commands": {"trusted_keys": str(tmp_path / "keys")}})
    return path, [], []


def test_reload_applies_a_live_change_and_says_which_tables(tmp_path: Path) -> None:
    path, events, applied = reload_rig(tmp_path)
    running = load_config(path)
    path.write_text(path.read_text() + "\n[policy.battery]\nusb_off_below_pct = 12\n")
    new = reload_config(
        running, lambda cfg, keys, problems: applied.append((cfg, keys, problems)), record(events)
    )
    usb = next(load for load in new.policy.battery.loads if load.name == "usb")
    assert usb.off_below_pct == 12 and new is not running
    assert applied == [(new, {}, None)]
    assert events == [("config_reloaded", {"tables": ["policy"]})]


def test_a_broken_file_or_a_restart_only_change_changes_nothing(tmp_path: Path) -> None:
    path, events, applied = reload_rig(tmp_path)
    running = load_config(path)
    text = path.read_text()
    path.write_text(text + "\n[policy.battery\n")
    assert reload_config(running, lambda *a: applied.append(a), record(events)) is running
    path.write_text(text.replace("port = 1883", "port = 8883"))
    assert reload_config(running, lambda *a: applied.append(a), record(events)) is running
    assert applied == []
    assert [(kind, data["reason"]) for kind, data in events] == [
        ("config_reload_refused", "invalid"),
        ("config_reload_refused", "needs_restart"),
    ]
    assert events[1][1]["tables"] == ["mqtt"]


def record(events: list[tuple[str, dict[str, object]]]) -> Callable[[str, dict[str, Any]], None]:
    return lambda kind, data: events.append((kind, data))
