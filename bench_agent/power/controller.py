"""The one owner of the outputs: runs the pure policy each sample and acts on it.

Called from the main loop only. It keeps the policy state, the overrides and the
state-of-charge estimator, switches the outputs the policy says to switch, and
reports every change as an event (output, from, to, reason) and through the
retained `state` payload.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path

from bench_agent import statefile
from bench_agent.faults import overcurrent_fault
from bench_agent.hardware.ports import Switch
from bench_agent.json_value import JsonObject
from bench_agent.model import PowerReading
from bench_agent.power.policy import check_override, decide, reset_fault
from bench_agent.power.policy_config import PolicyConfig
from bench_agent.power.policy_state import Decision, Override, PolicyInputs, PolicyState
from bench_agent.power.snapshot import (
    BatteryState,
    OutputState,
    OverrideView,
    PowerState,
    Protections,
)
from bench_agent.power.soc import SocEstimator
from bench_agent.vocabulary import EmitEvent, EventType, Reason

log = logging.getLogger(__name__)

SAFE_STATE = Reason.SAFE_STATE  # before the first decision, and on stop

PERSIST_EVERY_S = 900.0  # agent seconds between saves of SoC and latches (SD-card wear)


class Controller:
    def __init__(
        self,
        policy: PolicyConfig,
        outputs: Mapping[str, Switch],
        soc: SocEstimator,
        *,
        emit_event: EmitEvent,
        state_file: Path | None = None,
        battery_channel: str = "battery",
    ) -> None:
        self.policy = policy
        self.outputs = dict(outputs)
        self.soc = soc
        self._emit = emit_event
        self._state_file = state_file
        self._battery_channel = battery_channel
        self.state = PolicyState()
        self.overrides: dict[str, Override] = {}
        self.decisions: dict[str, Decision] = {}
        self.state_version = 0  # bumps whenever the retained `state` payload changes
        self._last_mono_s: float | None = None
        self._last_saved_mono_s: float | None = None
        self._last_inputs: PolicyInputs | None = None
        self._output_errors: dict[str, str] = {}  # output -> the error of its failure streak

    # -- persistence ----------------------------------------------------------

    def load(self, mono_s: float) -> None:
        """Restore SoC and over-current latches saved by an earlier run, if any."""
        if self._state_file is None or not self._state_file.exists():
            return
        try:
            data = json.loads(self._state_file.read_text())
            self.state = PolicyState.from_dict(data["policy"], self.policy, mono_s)
            saved = SocEstimator.from_dict(data["soc"])
            if saved.soc_pct is not None and not self.soc.adopt_estimate(saved):
                log.warning("controller: saved state of charge is for another battery: ignored")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("controller: ignoring unreadable saved state %s: %s", self._state_file, exc)

    def save(self) -> None:
        if self._state_file is None:
            return
        statefile.write_json(
            self._state_file, {"policy": self.state.to_dict(self.policy), "soc": self.soc.to_dict()}
        )

    # -- the decision, once per sample -------------------------------------

    def step(
        self,
        now_local: datetime,
        mono_s: float,
        readings: Mapping[str, PowerReading | None],
        cpu_c: float | None,
        enclosure_c: float | None = None,
    ) -> None:
        battery = readings.get(self._battery_channel)
        if battery is not None and self._last_mono_s is not None:
            try:
                self.soc.update(battery.amps, battery.volts, max(mono_s - self._last_mono_s, 0.0))
            except ValueError as exc:
                log.debug("soc: sample skipped: %s", exc)
        self._last_mono_s = mono_s
        inputs = PolicyInputs(
            now_local=now_local,
            mono_s=mono_s,
            soc_pct=self.soc.soc_pct,
            # The voltage safety net reads the battery itself, not the estimate.
            battery_volts=battery.volts if battery is not None else None,
            battery_amps=battery.amps if battery is not None else None,
            port_amps={p: (r.amps if (r := readings.get(p)) else None) for p in self.policy.ports},
            enclosure_c=enclosure_c,
            cpu_c=cpu_c,
            overrides=dict(self.overrides),
        )
        self._last_inputs = inputs
        self.state, decisions = decide(self.policy, inputs, self.state)
        self._publish_policy_events()
        self._apply(decisions)
        if self._last_saved_mono_s is None or mono_s - self._last_saved_mono_s >= PERSIST_EVERY_S:
            self._last_saved_mono_s = mono_s
            self.save()

    def _publish_policy_events(self) -> None:
        for event in self.state.events:
            if event.kind == "override_expired" and event.output is not None:
                self.overrides.pop(event.output, None)
                self.state_version += 1
            data: JsonObject = {"detail": event.detail}
            if event.output is not None:
                data["output"] = event.output
            self._emit(event.kind, data)

    def _apply(self, decisions: Mapping[str, Decision]) -> None:
        changed = False
        for name, decision in decisions.items():
            switch = self.outputs.get(name)
            if switch is None:
                continue
            previous = self.decisions.get(name)
            was_on = switch.is_on
            if was_on != decision.on:
                try:
                    switch.set(decision.on)
                except OSError as exc:
                    # Retried every sample: tell it once per kind of failure, not 86 400
                    # times a day. A backend may give a stable code (NmcliError.fault).
                    kind = str(getattr(exc, "fault", None) or exc)
                    if self._output_errors.get(name) != kind:
                        log.error("output %s: could not switch: %s", name, exc)
                        self._emit(EventType.OUTPUT_ERROR, {"output": name, "detail": str(exc)})
                    self._output_errors[name] = kind
                    continue
                self._output_errors.pop(name, None)
                self._emit(
                    EventType.OUTPUT_SWITCHED,
                    {
                        "output": name,
                        "from": "unknown" if was_on is None else ("on" if was_on else "off"),
                        "to": "on" if decision.on else "off",
                        "reason": decision.reason,
                        "detail": decision.detail,
                    },
                )
            if previous is None or (previous.on, previous.reason) != (decision.on, decision.reason):
                changed = True
        self.decisions = dict(decisions)
        if changed:
            self.state_version += 1

    # -- requests from the technician and from ops --------------------------

    def set_override(
        self, output: str, state: bool | None, duration_s: float | None, source: str, mono_s: float
    ) -> str | None:
        """Set (or with state None, clear) an override. Returns why it is refused, or None."""
        if output not in self.outputs:
            return f"unknown_output: {output}"
        if state is None:
            self.overrides.pop(output, None)
            self.state_version += 1
            return None
        if self._last_inputs is not None:
            refusal = check_override(self.policy, self.state, self._last_inputs, output, state)
            if refusal is not None:
                return refusal
        expires = None if duration_s is None else mono_s + duration_s
        self.overrides[output] = Override(state=state, expires_mono_s=expires, source=source)
        self.state_version += 1
        return None

    def reset_fault(self, port: str | None) -> list[str]:
        before = {name for name, fault in self.state.ports.items() if fault.latched or fault.trips}
        self.state = reset_fault(self.state, port)
        self._publish_policy_events()
        self.state_version += 1
        return sorted(before if port is None else before & {port})

    # -- what ops and the technician see -------------------------------------

    def snapshot(self, mono_s: float) -> PowerState:
        """Every output and why, the battery, the protections: a frozen value."""
        outputs = {}
        for name, switch in self.outputs.items():
            decision = self.decisions.get(name)
            override = self.overrides.get(name)
            view = None
            if override is not None:
                expires = override.expires_mono_s
                view = OverrideView(
                    on=bool(override.state),
                    expires_in_s=None if expires is None else round(max(expires - mono_s, 0.0), 1),
                    source=override.source,
                )
            outputs[name] = OutputState(
                on=switch.is_on,
                reason=decision.reason if decision else SAFE_STATE,
                detail=decision.detail if decision else "before the first decision",
                override=view,
            )
        latched = sorted(name for name, fault in self.state.ports.items() if fault.latched)
        soc = self.soc.soc_pct
        return PowerState(
            outputs=outputs,
            latched_faults=tuple(overcurrent_fault(name) for name in latched),
            battery=BatteryState(
                soc_pct=None if soc is None else round(soc, 1),
                source=self.soc.source,
                confidence=round(self.soc.confidence, 2),
            ),
            protections=Protections(
                shed={load.name: self.state.shed(load.name) for load in self.policy.battery.loads},
                over_temperature=self.state.over_temperature,
            ),
        )

    def state_payload(self, mono_s: float) -> JsonObject:
        """`snapshot` as the retained state's JSON."""
        return self.snapshot(mono_s).payload()

    def enter_safe_state(self, detail: str) -> None:
        """Every output to its configured safe state, as decisions: each switch is an
        `output_switched` event (reason `safe_state`) and the state changes, so ops see
        it before the agent stops."""
        self._apply(
            {
                name: Decision(switch.safe_state_on, SAFE_STATE, detail)
                for name, switch in self.outputs.items()
            }
        )
