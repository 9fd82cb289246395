"""Uplink recovery: power-cycle a hung router or access point that cut the bench off.

A bench whose router hangs stays offline until someone drives out to it. When the
broker has been unreachable for ``offline_after_s`` while the router's output is
on, :class:`UplinkRecovery` asks for that output to be switched off for
``power_off_s`` and then back on. Attempts are spaced by a backoff that doubles
from ``backoff_initial_s`` up to ``backoff_max_s`` (measured from the power-on,
so the router has time to boot and reconnect), at most ``max_attempts_per_day``
per local day; once the limit stops an attempt that would otherwise be due it
says so once (``gave_up``) and waits for the next day. The backoff starts over
once the broker has stayed connected for ``backoff_reset_after_s``.

Pure and clock-free, like the policy: the monotonic agent time, the local date,
whether the broker is connected and whether the output is on are arguments of
:meth:`UplinkRecovery.step`; it returns what to do, with a reason, and the caller
acts (the controller owns the outputs).

It never power-cycles an output that is off for another reason (battery
protection, a schedule, an override): the broker cannot be reached through a
router that is switched off, and switching it on is not ours to decide. The
"offline" time only counts while the output is on, so a router that has just been
switched back on gets the full ``offline_after_s`` to boot and reconnect.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from typing import Final, Literal

from bench_agent.checks import is_finite_number, require
from bench_agent.json_value import JsonObject
from bench_agent.vocabulary import EventType

OVERRIDE_SOURCE: Final = "uplink_recovery"
"""The override source the integrator uses to hold the output off during a cycle."""

EVENT_TYPE: Final = EventType.UPLINK_RECOVERY
"""The MQTT event type of every action (``action`` says which)."""

# Stable reason codes (published in MQTT events: never rename).
BROKER_UNREACHABLE: Final = "broker_unreachable"
POWER_OFF_DONE: Final = "power_off_done"
DAILY_LIMIT: Final = "daily_limit"

ActionKind = Literal["power_off", "power_on", "gave_up"]


def _positive(name: str, value: object) -> None:
    require(is_finite_number(value) and value > 0, name, "must be a finite number > 0", value)


@dataclass(frozen=True, slots=True)
class UplinkConfig:
    """The ``[uplink]`` table. Durations in agent seconds."""

    enabled: bool = False
    output: str = "wifi"  # the output that powers the router / access point
    offline_after_s: float = 1800.0  # broker unreachable this long, output on: cycle
    power_off_s: float = 30.0  # how long the output is held off
    backoff_initial_s: float = 3600.0  # wait after the first attempt's power-on
    backoff_max_s: float = 21600.0  # the doubling wait stops growing here
    max_attempts_per_day: int = 4  # per local day
    backoff_reset_after_s: float = 3600.0  # connected this long: the backoff starts over

    def __post_init__(self) -> None:
        require(isinstance(self.enabled, bool), "enabled", "must be true or false", self.enabled)
        require(
            isinstance(self.output, str) and bool(self.output),
            "output",
            "must be named",
            self.output,
        )
        for name in (
            "offline_after_s",
            "power_off_s",
            "backoff_initial_s",
            "backoff_max_s",
            "backoff_reset_after_s",
        ):
            _positive(name, getattr(self, name))
        require(
            self.backoff_max_s >= self.backoff_initial_s,
            "backoff_max_s",
            f"must be at least backoff_initial_s ({self.backoff_initial_s})",
            self.backoff_max_s,
        )
        attempts = self.max_attempts_per_day
        require(
            isinstance(attempts, int) and not isinstance(attempts, bool) and attempts >= 1,
            "max_attempts_per_day",
            "must be an integer >= 1",
            attempts,
        )


@dataclass(frozen=True, slots=True)
class UplinkAction:
    """What the caller must do now, and why.

    ``power_off``: switch ``output`` off and hold it off for ``hold_off_s`` (an
    override off with source :data:`OVERRIDE_SOURCE` for that long does both: an
    override off is never refused, and it explains the state of the output).
    ``power_on``: the hold is over; give the output back to the policy (which may
    keep it off, e.g. for battery protection). ``gave_up``: the daily limit stops
    further attempts until the local day changes; nothing to switch.
    """

    kind: ActionKind
    output: str
    reason: str  # stable code: broker_unreachable, power_off_done, daily_limit
    detail: str  # for people, in English
    attempt: int  # this attempt's number today (power_off/power_on); attempts made (gave_up)
    attempts_max: int
    down_for_s: float  # how long the broker has been unreachable; 0 if it is connected
    hold_off_s: float = 0.0  # power_off only: how long to keep the output off

    def event(self) -> JsonObject:
        """The fields of the MQTT event (type :data:`EVENT_TYPE`)."""
        fields: JsonObject = {
            "action": self.kind,
            "output": self.output,
            "reason": self.reason,
            "detail": self.detail,
            "attempt": self.attempt,
            "attempts_max": self.attempts_max,
            "down_for_s": round(self.down_for_s),
        }
        if self.kind == "power_off":
            fields["hold_off_s"] = self.hold_off_s
        return fields


class UplinkRecovery:
    """The state machine; call :meth:`step` once per sample from the main loop."""

    def __init__(self, cfg: UplinkConfig) -> None:
        self.cfg = cfg
        self.day: date | None = None
        self.attempts_today = 0
        self.gave_up_today = False  # the "gave up" indication was given for `day`
        self.backoff_s = cfg.backoff_initial_s  # the wait after the next power-on
        self.next_attempt_mono_s: float | None = None  # no attempt before this
        self.off_until_mono_s: float | None = None  # holding the output off until then
        self._cycle_attempt = 0  # the number of the attempt in its off window
        self._down_since_mono_s: float | None = None  # broker unreachable since
        self._offline_since_mono_s: float | None = None  # unreachable AND output on since
        self._connected_since_mono_s: float | None = None

    @property
    def holding_off(self) -> bool:
        """Whether an attempt is in its off window (the output must stay off)."""
        return self.off_until_mono_s is not None

    def step(
        self, now_mono_s: float, today: date, broker_connected: bool, output_on: bool
    ) -> UplinkAction | None:
        """Advance to ``now_mono_s`` (agent monotonic s); the action to take now, or None.

        ``today`` is the bench's local date (the daily limit starts over when it
        changes); ``output_on`` is the actual state of ``cfg.output``.
        """
        if not self.cfg.enabled:
            return None
        require(math.isfinite(now_mono_s), "now_mono_s", "must be finite", now_mono_s)
        if today != self.day:
            self.day = today
            self.attempts_today = 0
            self.gave_up_today = False
        self._track_link(now_mono_s, broker_connected)
        # An off window always ends with the output given back, connected or not.
        if self.off_until_mono_s is not None:
            return self._power_on(now_mono_s) if now_mono_s >= self.off_until_mono_s else None
        if not self._attempt_due(now_mono_s, broker_connected, output_on):
            return None
        if self.attempts_today >= self.cfg.max_attempts_per_day:
            return self._give_up(now_mono_s)
        return self._power_off(now_mono_s)

    def _track_link(self, now_mono_s: float, broker_connected: bool) -> None:
        if broker_connected:
            self._down_since_mono_s = None
            self._offline_since_mono_s = None
            if self._connected_since_mono_s is None:
                self._connected_since_mono_s = now_mono_s
            elif now_mono_s - self._connected_since_mono_s >= self.cfg.backoff_reset_after_s:
                self.backoff_s = self.cfg.backoff_initial_s
                self.next_attempt_mono_s = None
        else:
            self._connected_since_mono_s = None
            if self._down_since_mono_s is None:
                self._down_since_mono_s = now_mono_s

    def _attempt_due(self, now_mono_s: float, broker_connected: bool, output_on: bool) -> bool:
        if broker_connected:
            return False
        if not output_on:
            # Off for another reason: not ours to switch, and a router that is not
            # running says nothing by being unreachable.
            self._offline_since_mono_s = None
            return False
        if self._offline_since_mono_s is None:
            self._offline_since_mono_s = now_mono_s
        offline_long_enough = now_mono_s - self._offline_since_mono_s >= self.cfg.offline_after_s
        waited = self.next_attempt_mono_s is None or now_mono_s >= self.next_attempt_mono_s
        return offline_long_enough and waited

    def _power_off(self, now_mono_s: float) -> UplinkAction:
        self.attempts_today += 1
        self._cycle_attempt = self.attempts_today
        self.off_until_mono_s = now_mono_s + self.cfg.power_off_s
        return self._action(
            "power_off",
            now_mono_s,
            reason=BROKER_UNREACHABLE,
            detail=(
                f"broker unreachable for {self._down_for(now_mono_s):.0f} s with "
                f"{self.cfg.output} on; power-cycling it (off {self.cfg.power_off_s:g} s), "
                f"attempt {self.attempts_today} of {self.cfg.max_attempts_per_day} today"
            ),
            hold_off_s=self.cfg.power_off_s,
        )

    def _power_on(self, now_mono_s: float) -> UplinkAction:
        self.off_until_mono_s = None
        wait_s = self._start_backoff(now_mono_s)
        # The router is booting: it gets the full offline_after_s again.
        self._offline_since_mono_s = None
        return self._action(
            "power_on",
            now_mono_s,
            reason=POWER_OFF_DONE,
            attempt=self._cycle_attempt,  # even if local midnight fell inside the window
            detail=(
                f"{self.cfg.output} back on after {self.cfg.power_off_s:g} s off; next attempt "
                f"no sooner than {wait_s:.0f} s from now"
            ),
        )

    def _give_up(self, now_mono_s: float) -> UplinkAction | None:
        if self.gave_up_today:
            return None
        self.gave_up_today = True
        return self._action(
            "gave_up",
            now_mono_s,
            reason=DAILY_LIMIT,
            detail=(
                f"broker still unreachable after {self.attempts_today} power cycles of "
                f"{self.cfg.output} today; no more until tomorrow"
            ),
        )

    def _start_backoff(self, now_mono_s: float) -> float:
        wait_s = self.backoff_s
        self.next_attempt_mono_s = now_mono_s + wait_s
        self.backoff_s = min(self.backoff_s * 2, self.cfg.backoff_max_s)
        return wait_s

    def _down_for(self, now_mono_s: float) -> float:
        if self._down_since_mono_s is None:
            return 0.0
        return max(now_mono_s - self._down_since_mono_s, 0.0)

    def _action(
        self,
        kind: ActionKind,
        now_mono_s: float,
        *,
        reason: str,
        detail: str,
        attempt: int | None = None,
        hold_off_s: float = 0.0,
    ) -> UplinkAction:
        return UplinkAction(
            kind=kind,
            output=self.cfg.output,
            reason=reason,
            detail=detail,
            attempt=self.attempts_today if attempt is None else attempt,
            attempts_max=self.cfg.max_attempts_per_day,
            down_for_s=self._down_for(now_mono_s),
            hold_off_s=hold_off_s,
        )

    # -- what the technician and ops see --------------------------------------

    def status(self, now_mono_s: float) -> JsonObject:
        """JSON-ready summary for `status`/`state`."""
        next_in = (
            None
            if self.next_attempt_mono_s is None
            else round(max(self.next_attempt_mono_s - now_mono_s, 0.0))
        )
        return {
            "enabled": self.cfg.enabled,
            "output": self.cfg.output,
            "attempts_today": self.attempts_today,
            "attempts_max": self.cfg.max_attempts_per_day,
            "holding_off": self.holding_off,
            "next_attempt_in_s": next_in,
            "gave_up_today": self.gave_up_today,
        }

    # -- persistence ------------------------------------------------------------

    def to_dict(self, now_mono_s: float) -> JsonObject:
        """JSON-able form, so a restart neither forgets today's attempts nor the backoff.

        Monotonic times mean nothing after a reboot: the wait before the next attempt
        is stored as seconds left. A cycle cut short by the restart (the hold is not
        persisted, so the output comes back with the agent) counts as finished.
        """
        next_in = None
        if self.next_attempt_mono_s is not None:
            next_in = max(self.next_attempt_mono_s - now_mono_s, 0.0)
        return {
            "v": 1,
            "day": None if self.day is None else self.day.isoformat(),
            "attempts_today": self.attempts_today,
            "gave_up_today": self.gave_up_today,
            "backoff_s": self.backoff_s,
            "next_attempt_in_s": next_in,
            "holding_off": self.holding_off,
        }

    @classmethod
    def from_dict(cls, cfg: UplinkConfig, data: object, now_mono_s: float) -> UplinkRecovery:
        """Restore :meth:`to_dict`'s output at agent time ``now_mono_s``.

        Raises ValueError (only) on anything that is not what ``to_dict`` writes.
        """
        require(isinstance(data, Mapping) and data.get("v") == 1, "v", "unknown version", data)
        assert isinstance(data, Mapping)
        recovery = cls(cfg)
        day = data.get("day")
        require(day is None or isinstance(day, str), "day", "must be a date or null", day)
        recovery.day = None if day is None else date.fromisoformat(day)
        attempts = data.get("attempts_today")
        require(
            isinstance(attempts, int) and not isinstance(attempts, bool) and attempts >= 0,
            "attempts_today",
            "must be an integer >= 0",
            attempts,
        )
        assert isinstance(attempts, int)
        recovery.attempts_today = attempts
        gave_up, holding = data.get("gave_up_today"), data.get("holding_off")
        require(isinstance(gave_up, bool), "gave_up_today", "must be true or false", gave_up)
        require(isinstance(holding, bool), "holding_off", "must be true or false", holding)
        recovery.gave_up_today = bool(gave_up)
        backoff = data.get("backoff_s")
        _positive("backoff_s", backoff)
        assert isinstance(backoff, int | float)
        # The config may have changed since: keep the saved step inside today's bounds.
        recovery.backoff_s = min(max(float(backoff), cfg.backoff_initial_s), cfg.backoff_max_s)
        next_in = data.get("next_attempt_in_s")
        require(
            next_in is None or (is_finite_number(next_in) and next_in >= 0),
            "next_attempt_in_s",
            "must be a number >= 0 or null",
            next_in,
        )
        if next_in is not None:
            assert isinstance(next_in, int | float)
            recovery.next_attempt_mono_s = now_mono_s + min(float(next_in), cfg.backoff_max_s)
        if holding:
            recovery._start_backoff(now_mono_s)
        return recovery

    @classmethod
    def restore(
        cls, cfg: UplinkConfig, saved: str | bytes | None, now_mono_s: float
    ) -> tuple[UplinkRecovery, str | None]:
        """The state machine from a saved file's content (None: no file). Never raises.

        A missing or garbled file starts afresh (no attempts counted today) and says
        why, for the log: the backoff still keeps attempts apart.
        """
        if saved is None:
            return cls(cfg), None
        try:
            return cls.from_dict(cfg, json.loads(saved), now_mono_s), None
        except (ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError
            return cls(cfg), f"saved uplink recovery state ignored: {exc}"


__all__ = [
    "BROKER_UNREACHABLE",
    "DAILY_LIMIT",
    "EVENT_TYPE",
    "OVERRIDE_SOURCE",
    "POWER_OFF_DONE",
    "UplinkAction",
    "UplinkConfig",
    "UplinkRecovery",
]
