"""What a SIGHUP may change in a running agent, decided apart from applying it.

Policy thresholds and schedules, ops' keys and command limits, and uplink
recovery apply live; anything else (hardware, outputs, MQTT, storage, …) is
built once at start, so a change there is refused and needs a restart.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from bench_agent.config import Config

LIVE_RELOADABLE = frozenset({"policy", "commands", "uplink"})


@dataclass(frozen=True, slots=True)
class ReloadPlan:
    changed: tuple[str, ...]  # the config's tables that differ, sorted
    needs_restart: tuple[str, ...]  # those of them that cannot change live

    @property
    def live(self) -> bool:
        return not self.needs_restart


def reload_plan(running: Config, new: Config) -> ReloadPlan:
    changed = tuple(
        sorted(
            f.name
            for f in fields(Config)
            if f.name != "source" and getattr(new, f.name) != getattr(running, f.name)
        )
    )
    return ReloadPlan(changed, tuple(name for name in changed if name not in LIVE_RELOADABLE))
