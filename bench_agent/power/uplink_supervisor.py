"""Carries out `uplink.UplinkRecovery`'s decisions on the bench.

`UplinkRecovery` (pure) says when the access point/router output is to be
power-cycled; this part does it, through the one owner of the outputs: the
hold is an override (source `uplink_recovery`) that the policy applies in the
same sample; a technician's override on that output is kept aside and comes
back after the cycle unless someone chose anew meanwhile; settings reloaded
during a hold wait for its end (rebuilding the recovery from its saved form
would end the cycle without its power_on); and the recovery's state is saved
after each action, so a restart keeps the day's attempts and the backoff.
"""

from __future__ import annotations

import logging
from datetime import date
from pathlib import Path

from bench_agent import statefile
from bench_agent.power.controller import Controller
from bench_agent.power.policy_state import Override
from bench_agent.power.uplink import EVENT_TYPE, OVERRIDE_SOURCE, UplinkConfig, UplinkRecovery
from bench_agent.vocabulary import EmitEvent

log = logging.getLogger(__name__)


class UplinkSupervisor:
    def __init__(
        self,
        cfg: UplinkConfig,
        controller: Controller,
        state_path: Path,
        emit_event: EmitEvent,
        now_mono_s: float,
    ) -> None:
        self._cfg = cfg
        self._controller = controller
        self._state_path = state_path
        self._emit = emit_event
        saved = statefile.read_text(state_path)
        self.recovery, problem = UplinkRecovery.restore(cfg, saved, now_mono_s)
        if problem is not None:
            log.warning("uplink recovery: %s", problem)
        self._override_before_cycle: Override | None = None
        self._pending_cfg: UplinkConfig | None = None

    def step(self, mono_s: float, today: date, connected: bool) -> bool:
        """One sample, before the policy runs (so a hold applies now). True when it acted."""
        cfg = self._cfg
        switch = self._controller.outputs.get(cfg.output)
        if not cfg.enabled or switch is None:
            return False
        action = self.recovery.step(mono_s, today, connected, bool(switch.is_on))
        if action is None:
            return False
        self._emit(EVENT_TYPE, action.event())
        overrides = self._controller.overrides
        if action.kind == "power_off":
            # A technician's override on that output comes back after the cycle.
            self._override_before_cycle = overrides.get(action.output)
            self._controller.set_override(
                action.output, False, action.hold_off_s, OVERRIDE_SOURCE, mono_s
            )
        elif action.kind == "power_on":
            held = overrides.get(action.output)
            if held is not None and held.source == OVERRIDE_SOURCE:
                self._controller.set_override(action.output, None, None, held.source, mono_s)
                self._restore_override(action.output, mono_s)
            else:
                # Someone chose anew during the hold (an override, or auto): theirs stands.
                self._override_before_cycle = None
            self._apply_pending_cfg(mono_s)
        self.save(mono_s)
        return True

    def reconfigure(self, cfg: UplinkConfig, now_mono_s: float) -> None:
        """New settings (a reload): at once, or at the end of a hold in progress."""
        self._pending_cfg = cfg
        if not self.recovery.holding_off:
            self._apply_pending_cfg(now_mono_s)

    def save(self, now_mono_s: float) -> None:
        statefile.write_json(self._state_path, self.recovery.to_dict(now_mono_s))

    def _apply_pending_cfg(self, now_mono_s: float) -> None:
        pending, self._pending_cfg = self._pending_cfg, None
        if pending is not None:
            self._cfg = pending
            self.recovery = UplinkRecovery.from_dict(
                pending, self.recovery.to_dict(now_mono_s), now_mono_s
            )

    def _restore_override(self, output: str, mono_s: float) -> None:
        before, self._override_before_cycle = self._override_before_cycle, None
        if before is None or before.state is None:
            return
        remaining = None if before.expires_mono_s is None else before.expires_mono_s - mono_s
        if remaining is None or remaining > 0:
            self._controller.set_override(output, before.state, remaining, before.source, mono_s)
