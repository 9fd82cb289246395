"""The power-management policy: what each output (USB ports, Wi-Fi) should be, and why.

A pure function. ``decide(cfg, inputs, state)`` reads no clock, does no I/O and
starts no thread: the time, the readings, the overrides and the previous state are
all arguments, and the new state and one :class:`Decision` per output come back.
The controller owns the GPIO outputs, calls ``decide`` once per sample and acts.

Outputs are named: every key of ``PolicyConfig.ports`` is a USB port ("usb1",
"usb2", ...) and ``"wifi"`` is the hotspot. For the battery, every output belongs to
one load class (``LoadClass`` in ``PolicyConfig.battery.loads``: a name, the outputs
it covers, its levels); the policy knows no class by name. The agent's config makes
two, in shed order: "wifi" (the hotspot) and "usb" (every USB port).

Priority, highest first; the first layer that has an opinion decides:

1. **Safety** (only ever switches OFF).
   - Per-port over-current: a port trips after ``trip_samples`` consecutive samples
     above ``trip_amps``, or at once on one sample above ``hard_trip_amps``
     (a shorted cable must not wait for N samples). A tripped port stays off for
     ``cooldown_s`` and is then retried. The ``latch_after_trips``-th trip latches
     it off until :func:`reset_fault`; trips are forgotten after the port has gone
     ``trip_forget_s`` without a trip, so a phone that trips once a month never
     latches a port. Reasons ``overcurrent_trip`` (the tick it trips),
     ``cooldown``, ``overcurrent_latched``.
   - Over-temperature sheds every load (USB and Wi-Fi) when the enclosure is above
     ``shed_above_c`` or the CPU above ``cpu_shed_above_c``, and resumes only when
     every known temperature is below its resume level (hysteresis). Reason
     ``over_temperature``.
2. **Battery protection** with hysteresis (only ever switches OFF), per load class
   (all of a class's outputs together), two rules:
   - State of charge: a class goes off when the state of charge falls below its
     ``off_below_pct`` and comes back only above its ``on_above_pct`` (in the config
     file ``wifi_off_below_pct``, ``usb_on_above_pct``, ...). The classes are shed in
     their order, each at a higher level than the next: Wi-Fi first
     (``usb_off_below_pct < wifi_off_below_pct``) because phone charging is the
     service people rely on in an emergency. Reason ``battery_low``.
   - Voltage, the safety net under the estimate: the state of charge is an estimate
     and can be badly wrong (a battery that lost capacity, a count that drifted), so,
     like the low-voltage disconnect of every solar charge controller, the battery's
     own voltage sheds loads whatever the estimate says. The voltage is corrected for
     the load (V − I·R, ``internal_resistance_ohm``: a phone plugged in must not read
     as an empty battery). Below a class's ``off_below_volts`` for ``voltage_delay_s``
     the class goes off: Wi-Fi below ``wifi_off_below_volts``, the USB ports below the
     lower ``usb_off_below_volts`` (the delay, as in a BatteryProtect, lets a passing
     sag go by; only a voltage back more than 50 mV above the level restarts it, so
     sensor noise cannot postpone a shed). A class shed by voltage comes back only
     when the voltage has stayed at or above ``restore_above_volts`` (one level for
     all) for ``voltage_delay_s`` AND the state of charge is above that class's
     ``on_above_pct`` (a voltage shed is evidence the charge is low; the sun lifts
     the voltage long before it has put the charge back). Reason
     ``battery_voltage_low`` when the state of charge did not shed the load itself:
     that reason tells ops the estimate is wrong; when both hold the reason stays
     ``battery_low`` and the detail gives both. All voltage levels None: the rule is
     off (no battery channel).
   Either rule shedding or restoring a class is a ``battery_shed`` /
   ``battery_restored`` event per output it covers; a class already shed by one
   rule is not shed again.
3. **Manual overrides** (on or off, optionally expiring, from the CLI or city ops).
   They never beat layers 1-2. An expired override is ignored and reported once as
   an ``override_expired`` event; the controller, which owns the override store,
   removes it. Reasons ``override_on``, ``override_off``.
4. **Schedules** per output, in the bench's local time; a window may cross
   midnight; an empty window list means always. Reasons ``schedule_on``,
   ``schedule_off``.
5. **Default** per output (``True`` when not configured: the bench exists to
   serve). Reason ``default``.

Unknown readings (``None`` or NaN, e.g. a sensor that stopped answering):
- unknown state of charge keeps the previous battery-protection flags: a load that
  was shed stays shed and one that was on stays on. Switching everything off on a
  flaky battery sensor would punish the public for a sensor fault; switching shed
  loads back on could flatten a battery we already know was low.
- an unknown battery voltage likewise neither sheds nor restores (the sensor fault
  is reported as its own fault), and neither starts nor resets the voltage delay; an
  unknown current is taken as 0 A (no correction, which under a discharge reads
  low: the safe side).
- an unknown port current neither counts towards nor resets the consecutive-sample
  count (a missed sample does not prove the fault has gone).
- unknown temperatures keep the previous over-temperature flag; with one sensor
  known, that one decides.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import replace

from bench_agent.power.policy_config import (
    VOLTS_NOISE,
    BatteryThresholds,
    LoadClass,
    PolicyConfig,
    PortLimits,
    TemperatureLimits,
)
from bench_agent.power.policy_state import (
    CALM,
    NO_FAULT,
    Decision,
    Override,
    PolicyEvent,
    PolicyInputs,
    PolicyState,
    PortFault,
    VoltageWatch,
)
from bench_agent.vocabulary import EventType, Reason

# Reason codes and event kinds are published in MQTT `event` / `state` payloads:
# their one definition, never renamed, is bench_agent/vocabulary.py.


def _known(value: float | None) -> float | None:
    """A sensor value, or None when it is missing or not a finite number."""
    if value is None or not math.isfinite(value):
        return None
    return value


# --------------------------------------------------------------------------- policy


def _update_temperature(
    limits: TemperatureLimits, enclosure_c: float | None, cpu_c: float | None, was_hot: bool
) -> tuple[bool, str]:
    """The new over-temperature flag and the readings as text."""
    readings = [
        (name, value, shed, resume)
        for name, value, shed, resume in (
            ("enclosure", enclosure_c, limits.shed_above_c, limits.resume_below_c),
            ("cpu", cpu_c, limits.cpu_shed_above_c, limits.cpu_resume_below_c),
        )
        if value is not None
    ]
    if not readings:
        return was_hot, "temperature unknown"
    too_hot = [f"{n} {v:.1f} °C > {s:.1f} °C" for n, v, s, _ in readings if v > s]
    if too_hot:
        return True, "; ".join(too_hot)
    if was_hot:
        still_warm = [
            f"{n} {v:.1f} °C, resume below {r:.1f} °C" for n, v, _, r in readings if v >= r
        ]
        if still_warm:
            return True, "; ".join(still_warm)
        return False, "; ".join(f"{n} {v:.1f} °C" for n, v, _, _ in readings)
    return False, "; ".join(f"{n} {v:.1f} °C" for n, v, _, _ in readings)


def _update_battery(
    soc: float | None, off_below: float, on_above: float, was_shed: bool
) -> tuple[bool, str]:
    """The new battery-protection flag for one class of load and why."""
    if soc is None:
        verb = "kept off" if was_shed else "kept on"
        return was_shed, f"battery unknown; {verb} (off below {off_below:.1f}%)"
    if soc < off_below:
        return True, f"battery {soc:.1f}% < {off_below:.1f}%"
    if was_shed and soc <= on_above:
        return True, f"battery {soc:.1f}%, back on above {on_above:.1f}%"
    return False, f"battery {soc:.1f}%"


def _open_circuit_volts(b: BatteryThresholds, inputs: PolicyInputs) -> tuple[float, str] | None:
    """The battery's voltage corrected for its current, and how it was read; None unknown."""
    volts = _known(inputs.battery_volts)
    if volts is None:
        return None
    amps = _known(inputs.battery_amps)
    if not amps or b.internal_resistance_ohm == 0.0:
        return volts, f"battery {volts:.2f} V"
    # amps < 0 while discharging: the battery's own voltage is above its terminals'.
    corrected = volts - amps * b.internal_resistance_ohm
    return corrected, f"battery {corrected:.2f} V ({volts:.2f} V at {amps:+.2f} A)"


def _update_voltage(
    b: BatteryThresholds,
    *,
    off_below: float | None,
    reading: tuple[float, str] | None,
    soc_allows: bool,
    on_above_pct: float,
    mono_s: float,
    watch: VoltageWatch,
) -> tuple[VoltageWatch, str]:
    """The voltage safety net of one class of load: its new state and why."""
    restore = b.restore_above_volts
    if off_below is None or restore is None:
        return CALM, ""
    if reading is None:
        verb = "kept off" if watch.shed else "kept on"
        return watch, f"battery voltage unknown; {verb} (off below {off_below:.2f} V)"
    volts, text = reading
    delay = b.voltage_delay_s
    if volts < off_below:
        since = mono_s if watch.low_since_mono_s is None else watch.low_since_mono_s
        shed = watch.shed or mono_s - since >= delay
        held = f" for {mono_s - since:.0f} s" if shed else ""
        return VoltageWatch(shed, since, None), f"{text} < {off_below:.2f} V{held}"
    if not watch.shed:
        # Shedding is the safe side: noise around the level must not keep restarting
        # the delay, so only a clear recovery does (restoring, below, is strict).
        noise = volts <= off_below + VOLTS_NOISE
        return (watch if noise else CALM), text
    high_since = None
    if volts >= restore:
        high_since = mono_s if watch.high_since_mono_s is None else watch.high_since_mono_s
        if mono_s - high_since >= delay and soc_allows:
            return CALM, f"{text} ≥ {restore:.2f} V for {mono_s - high_since:.0f} s"
    back_on = f"back on at {restore:.2f} V and above {on_above_pct:.1f}%"
    return VoltageWatch(True, None, high_since), f"{text}, {back_on}"


def _protect_load(
    b: BatteryThresholds,
    state: PolicyState,
    load: LoadClass,
    *,
    soc: float | None,
    reading: tuple[float, str] | None,
    mono_s: float,
) -> tuple[bool, VoltageWatch, Decision | None, list[PolicyEvent]]:
    """Battery protection of one load class.

    Returns the state-of-charge flag, the voltage watch, the decision while the load
    is held off for the battery (None: not held), and the shed/restored events.
    """
    soc_shed, soc_detail = _update_battery(
        soc, load.off_below_pct, load.on_above_pct, state.battery_shed.get(load.name, False)
    )
    voltage, volt_detail = _update_voltage(
        b,
        off_below=load.off_below_volts,
        reading=reading,
        soc_allows=soc is not None and soc > load.on_above_pct,
        on_above_pct=load.on_above_pct,
        mono_s=mono_s,
        watch=state.watch(load.name),
    )
    # battery_voltage_low only where the estimate did not see it coming: that reason
    # then tells ops the state of charge is wrong (an ageing battery, a drifted count).
    both = "; ".join(d for d in (soc_detail, volt_detail) if d)
    off = None
    if soc_shed:
        off = Decision(False, Reason.BATTERY_LOW, both)
    elif voltage.shed:
        off = Decision(False, Reason.BATTERY_VOLTAGE_LOW, volt_detail)
    detail = off.detail if off else both
    events = _transition_events(
        state.shed(load.name),
        off is not None,
        shed=EventType.BATTERY_SHED,
        restored=EventType.BATTERY_RESTORED,
        outputs=load.outputs,
        detail=detail,
    )
    return soc_shed, voltage, off, events


def _held_off(
    name: str, limits: PortLimits, mono_s: float, fault: PortFault
) -> tuple[PortFault, Decision | None]:
    """A latched or cooling-down port stays off; otherwise the fault with stale parts aged out."""
    if fault.latched:
        detail = f"{name} latched off after {fault.trips} over-current trips; reset the fault"
        return replace(fault, consecutive_over=0), Decision(
            False, Reason.OVERCURRENT_LATCHED, detail
        )
    if fault.cooldown_until_mono_s is not None:
        if mono_s < fault.cooldown_until_mono_s:
            left = math.ceil(fault.cooldown_until_mono_s - mono_s)
            detail = (
                f"{name} over-current trip {fault.trips} of {limits.latch_after_trips}; "
                f"retry in {left} s"
            )
            return replace(fault, consecutive_over=0), Decision(False, Reason.COOLDOWN, detail)
        fault = replace(fault, cooldown_until_mono_s=None)
    if (
        fault.trips
        and fault.last_trip_mono_s is not None
        and mono_s - fault.last_trip_mono_s >= limits.trip_forget_s
    ):
        fault = replace(fault, trips=0, last_trip_mono_s=None)
    return fault, None


def _update_port(
    name: str, limits: PortLimits, amps: float | None, mono_s: float, fault: PortFault
) -> tuple[PortFault, Decision | None, list[PolicyEvent]]:
    """Advance one port's over-current state; a Decision when safety forces it off."""
    fault, held = _held_off(name, limits, mono_s, fault)
    if held is not None or amps is None:
        return fault, held, []
    if amps > limits.hard_trip_amps:
        why = f"{name} {amps:.2f} A > hard limit {limits.hard_trip_amps:.2f} A"
    elif amps > limits.trip_amps and fault.consecutive_over + 1 >= limits.trip_samples:
        over = fault.consecutive_over + 1
        why = f"{name} {amps:.2f} A > {limits.trip_amps:.2f} A for {over} samples"
    else:
        over = fault.consecutive_over + 1 if amps > limits.trip_amps else 0
        # Unchanged is the common case (a port below its limit): no new object for it.
        if over == fault.consecutive_over:
            return fault, None, []
        return replace(fault, consecutive_over=over), None, []

    trips = fault.trips + 1
    events = [
        PolicyEvent(
            EventType.OVERCURRENT_TRIP, name, f"{why}; trip {trips} of {limits.latch_after_trips}"
        )
    ]
    if trips >= limits.latch_after_trips:
        detail = f"{why}; latched off after {trips} trips, reset the fault"
        events.append(PolicyEvent(EventType.OVERCURRENT_LATCHED, name, detail))
        new = PortFault(trips=trips, last_trip_mono_s=mono_s, latched=True)
        return new, Decision(False, Reason.OVERCURRENT_LATCHED, detail), events
    new = PortFault(
        trips=trips, last_trip_mono_s=mono_s, cooldown_until_mono_s=mono_s + limits.cooldown_s
    )
    detail = f"{why}; off for {limits.cooldown_s:g} s"
    return new, Decision(False, Reason.OVERCURRENT_TRIP, detail), events


def _transition_events(
    was: bool, now: bool, *, shed: str, restored: str, outputs: Iterable[str | None], detail: str
) -> list[PolicyEvent]:
    """One event per output when a shed flag changes, none when it does not."""
    if was == now:
        return []
    return [PolicyEvent(shed if now else restored, output, detail) for output in outputs]


def _live_overrides(
    overrides: Mapping[str, Override], outputs: Iterable[str], mono_s: float
) -> tuple[dict[str, Override], list[PolicyEvent]]:
    live: dict[str, Override] = {}
    events: list[PolicyEvent] = []
    known = set(outputs)
    for output, override in overrides.items():
        if output not in known or override.state is None:
            continue
        if override.expired(mono_s):
            state = "on" if override.state else "off"
            detail = f"override {state} by {override.source} expired"
            events.append(PolicyEvent(EventType.OVERRIDE_EXPIRED, output, detail))
            continue
        live[output] = override
    return live, events


def decide(
    cfg: PolicyConfig, inputs: PolicyInputs, state: PolicyState
) -> tuple[PolicyState, dict[str, Decision]]:
    """Decide every output. Pure: same arguments, same answer.

    Returns the new state (its ``events`` are this call's events: trips, latches,
    expired overrides, load shed/restored) and a Decision for each of
    ``cfg.outputs``.
    """
    events: list[PolicyEvent] = []

    hot, temp_detail = _update_temperature(
        cfg.temperature, _known(inputs.enclosure_c), _known(inputs.cpu_c), state.over_temperature
    )
    events += _transition_events(
        state.over_temperature,
        hot,
        shed=EventType.OVER_TEMPERATURE,
        restored=EventType.TEMPERATURE_RESTORED,
        outputs=[None],
        detail=temp_detail,
    )

    soc = _known(inputs.soc_pct)
    reading = _open_circuit_volts(cfg.battery, inputs)
    battery_shed: dict[str, bool] = {}
    voltage: dict[str, VoltageWatch] = {}
    battery_off: dict[str, Decision] = {}  # output -> held off for the battery
    for load in cfg.battery.loads:  # in shed order: the events come in that order
        soc_shed, watch, off, load_events = _protect_load(
            cfg.battery, state, load, soc=soc, reading=reading, mono_s=inputs.mono_s
        )
        battery_shed[load.name], voltage[load.name] = soc_shed, watch
        if off is not None:
            battery_off.update(dict.fromkeys(load.outputs, off))
        events += load_events

    # Layer 1 decisions, per output; layer 2 only switches off, so store it the same way.
    forced: dict[str, Decision] = {}
    faults: dict[str, PortFault] = {}
    for port, limits in cfg.ports.items():
        amps = _known(inputs.port_amps.get(port))
        fault, held, port_events = _update_port(port, limits, amps, inputs.mono_s, state.port(port))
        if fault != NO_FAULT:
            faults[port] = fault
        if held is not None:
            forced[port] = held
        events += port_events
    for output in cfg.outputs:
        if output in forced:
            continue
        if hot:
            forced[output] = Decision(False, Reason.OVER_TEMPERATURE, temp_detail)
        elif (off := battery_off.get(output)) is not None:
            forced[output] = off

    overrides, expired = _live_overrides(inputs.overrides, cfg.outputs, inputs.mono_s)
    events += expired

    decisions = {
        output: forced.get(output) or _wanted(cfg, inputs, overrides, output)
        for output in cfg.outputs
    }
    new_state = PolicyState(
        ports=faults,
        battery_shed=battery_shed,
        over_temperature=hot,
        voltage=voltage,
        outputs={o: d.on for o, d in decisions.items()},
        events=tuple(events),
    )
    return new_state, decisions


def _wanted(
    cfg: PolicyConfig, inputs: PolicyInputs, overrides: Mapping[str, Override], output: str
) -> Decision:
    """Layers 3-5: what people asked for, when nothing forces the output off."""
    override = overrides.get(output)
    if override is not None:
        return _override_decision(override, inputs.mono_s)
    schedule = cfg.schedules.get(output)
    if schedule is not None:
        if schedule.is_active(inputs.now_local):
            return Decision(True, Reason.SCHEDULE_ON, f"inside schedule {schedule.describe()}")
        return Decision(False, Reason.SCHEDULE_OFF, f"outside schedule {schedule.describe()}")
    on = cfg.defaults.get(output, True)
    return Decision(on, Reason.DEFAULT, f"default {'on' if on else 'off'}")


def _override_decision(override: Override, mono_s: float) -> Decision:
    assert override.state is not None  # _live_overrides drops "auto"
    detail = f"set by {override.source}"
    if override.expires_mono_s is not None:
        detail += f", {math.ceil(override.expires_mono_s - mono_s)} s left"
    return Decision(
        override.state, Reason.OVERRIDE_ON if override.state else Reason.OVERRIDE_OFF, detail
    )


def check_override(
    cfg: PolicyConfig,
    state: PolicyState,
    inputs: PolicyInputs,
    output: str,
    desired: bool | None,
) -> str | None:
    """Why an override of ``output`` to ``desired`` would not take effect now; None if it would.

    ``desired`` None is "auto" and always accepted. The answer is "reason: detail",
    e.g. "battery_low: battery 18.0% < 20.0%", for the CLI or the ops reply.
    """
    if output not in cfg.outputs:
        return f"unknown_output: {output!r} is not one of {', '.join(cfg.outputs)}"
    if desired is None:
        return None
    trial = dict(inputs.overrides)
    trial[output] = Override(desired, None, "check")
    # Asking the real policy keeps this answer and decide() from ever disagreeing.
    _, decisions = decide(cfg, replace(inputs, overrides=trial), state)
    decision = decisions[output]
    if decision.on == desired:
        return None
    return f"{decision.reason}: {decision.detail}"


def reset_fault(state: PolicyState, port: str | None) -> PolicyState:
    """Clear the over-current state (latch, trips, cooldown) of ``port``, or of all if None.

    The returned state's ``events`` hold one ``fault_reset`` event per port that had
    a fault; a port with nothing to clear is left as it was.
    """
    targets = list(state.ports) if port is None else [port]
    ports = dict(state.ports)
    events: list[PolicyEvent] = []
    for name in targets:
        fault = ports.pop(name, None)
        if fault is None or fault == NO_FAULT:
            continue
        was = "latched" if fault.latched else f"{fault.trips} trip(s)"
        events.append(PolicyEvent(EventType.FAULT_RESET, name, f"{name} fault reset (was {was})"))
    return replace(state, ports=ports, events=tuple(events))
