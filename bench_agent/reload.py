"""What a SIGHUP may change in a running agent, and the reload itself.

Policy thresholds and schedules, ops' keys and command limits, and uplink
recovery apply live; anything else (hardware, outputs, MQTT, storage, …) is
built once at start, so a change there is refused and needs a restart. A broken
file changes nothing. Each outcome is an event, so ops see what a bench runs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields

from nacl.signing import VerifyKey

from bench_agent.config import Config
from bench_agent.config_loader import load_config
from bench_agent.errors import ConfigError
from bench_agent.json_value import Json
from bench_agent.remote.ops_keys import load_ops_keys
from bench_agent.vocabulary import EmitEvent, EventType

log = logging.getLogger(__name__)

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


ApplyLive = Callable[[Config, Mapping[str, VerifyKey], str | None], None]
"""Puts a new config into the running parts: (config, trusted ops keys, their fault)."""


def reload_config(running: Config, apply: ApplyLive, emit_event: EmitEvent) -> Config:
    """SIGHUP: read `running.source` again; the config the agent runs with afterwards.

    `apply` is called only when every live change can be made (the file is valid,
    nothing that needs a restart changed, the ops-key directory can be read).
    """

    def refuse(reason: str, **detail: Json) -> Config:
        emit_event(EventType.CONFIG_RELOAD_REFUSED, {"reason": reason, **detail})
        return running

    try:
        new = load_config(running.source)
    except ConfigError as exc:
        log.error("configuration not reloaded: %s", exc)
        return refuse("invalid", detail=str(exc))
    plan = reload_plan(running, new)
    if not plan.live:
        log.error(
            "configuration not reloaded: [%s] changed, which needs a restart "
            "(systemctl restart bench-agent)",
            "], [".join(plan.needs_restart),
        )
        return refuse("needs_restart", tables=list(plan.needs_restart))
    try:
        trusted_keys, key_problems = load_ops_keys(new.commands.trusted_keys)
    except OSError as exc:  # the directory itself cannot be read
        log.error("configuration not reloaded: %s", exc)
        return refuse("invalid", detail=str(exc))
    apply(new, trusted_keys, key_problems)
    log.info("configuration reloaded: %s", ", ".join(plan.changed) or "ops keys only")
    emit_event(EventType.CONFIG_RELOADED, {"tables": list(plan.changed)})
    return new
