"""What remote and local commands may do to the agent (`commands.AgentControl`),
and the command processor built on it.

Every command, from ops over MQTT or from a technician over the socket, acts
through these five methods, so both take exactly the same path: the
controller decides, the retained state tells ops at once.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from bench_agent.clock import Clock, TimeFloor
from bench_agent.config import Config
from bench_agent.faults import overcurrent_fault
from bench_agent.json_value import JsonObject
from bench_agent.link.state import StatePublisher
from bench_agent.power.controller import Controller
from bench_agent.remote.ops_keys import load_ops_keys
from bench_agent.remote.processor import CommandProcessor
from bench_agent.vocabulary import EmitEvent


class AgentCommands:
    def __init__(
        self,
        controller: Controller,
        state: StatePublisher,
        outputs: Mapping[str, object],
        monotonic: Callable[[], float],
    ) -> None:
        self._controller = controller
        self._state = state
        self._outputs = outputs
        self._monotonic = monotonic

    def state(self) -> JsonObject:
        return self._state.body()

    def set_override(
        self, output: str, state: bool | None, duration_s: float | None, source: str
    ) -> str | None:
        refusal = self._controller.set_override(
            output, state, duration_s, source, self._monotonic()
        )
        if refusal is None:
            self._state.publish(force=True)
        return refusal

    def reset_fault(self, name: str | None) -> list[str]:
        port = None if name is None else name.removeprefix(overcurrent_fault(""))
        reset = self._controller.reset_fault(port)
        self._state.publish(force=True)
        return [overcurrent_fault(p) for p in reset]

    def rebirth(self) -> None:
        self._state.publish_online()
        self._state.publish(force=True)

    def outputs(self) -> list[str]:
        return list(self._outputs)


def build_command_processor(
    cfg: Config,
    commands: AgentCommands,
    *,
    clock: Clock,
    time_floor: TimeFloor,
    emit_event: EmitEvent,
) -> tuple[CommandProcessor, str | None]:
    """The processor with ops' keys loaded; and the key files that could not be
    used (the `ops_keys` fault's detail), or None."""
    trusted_keys, key_problems = load_ops_keys(cfg.commands.trusted_keys)
    processor = CommandProcessor(
        commands,
        bench_id=cfg.bench.id,
        trusted_keys=trusted_keys,
        allow_unsigned=cfg.commands.allow_unsigned,
        replay_store_path=cfg.storage.dir / "commands-seen.jsonl",
        clock_synced=clock.synced,
        wall_now=clock.wall,
        on_event=lambda event: emit_event(event.pop("type"), event),
        max_age_s=cfg.commands.max_age_s,
        time_floor=time_floor,
    )
    return processor, key_problems
