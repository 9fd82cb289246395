"""One run: a period, minute by minute, through the simulated bench's battery and
charge controller and the agent's REAL controller.

Each minute: the sky gives the panel its watts (weather.py), the loads draw what the
outputs and the phones ask, the simulated charging system (hardware/sim/charging.py,
the same battery and MPPT the simulated backend runs) solves the battery and moves
its charge on by 60 s; then the readings go to `power.controller.Controller.step`,
which runs the state-of-charge estimator and `power.policy.decide` exactly as the
agent does, and switches the outputs for the next minute. Nothing of the policy is
copied here: what the planner counts is what the controller decided.

What the bench does not model: sensor noise, temperatures (the over-temperature rule
never fires: the inputs are "unknown"), over-current (phones draw within limits),
the agent's 1 s sampling (the controller sees one sample a minute: the policy's
voltage delay of 90 s takes two).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Final
from zoneinfo import ZoneInfo

from bench_agent.hardware.sim.charging import ChargingSystem
from bench_agent.hardware.sim.params import BenchParams
from bench_agent.model import PowerReading
from bench_agent.ops.planner.climate import Climate
from bench_agent.ops.planner.model import Bench
from bench_agent.ops.planner.weather import WeatherDraw
from bench_agent.power.chemistry import CHEMISTRIES
from bench_agent.power.controller import Controller
from bench_agent.power.policy_config import Schedule
from bench_agent.power.soc import SocEstimator
from bench_agent.vocabulary import WIFI

STEP_S: Final = 60.0
_PARAMS: Final = BenchParams()  # the simulated bench's panel, charger and converter
_USB_VOLTS: Final = _PARAMS.usb_volts


@dataclass(slots=True)
class DayRecord:
    """What one day was like. Energies in Wh, minutes of the local day."""

    day: date
    clear_sky_index: float
    available_wh: float = 0.0  # what the panel could have given
    available_wh_by_hour: list[float] = field(default_factory=lambda: [0.0] * 24)
    harvested_wh: float = 0.0  # what the charge controller put on the 12 V bus
    wasted_wh: float = 0.0  # not taken because the battery was full (absorption/float)
    delivered_wh: dict[str, float] = field(default_factory=dict)  # "usb", "wifi", "pi"
    lost_min: dict[str, int] = field(default_factory=dict)  # by load class
    wanted_min: dict[str, int] = field(default_factory=dict)
    dark_from_min: dict[str, int] = field(default_factory=dict)  # evening went dark at
    soc_min: float = 100.0  # the battery's true state of charge, %
    soc_max: float = 0.0
    est_min: float = 100.0  # the agent's estimate, %
    est_max: float = 0.0
    cutoff: bool = False  # the low-voltage disconnect or the BMS cut the loads
    full: bool = False  # the battery was full (≥ 99.5 %)
    phones: int = 0  # phones that came to a live port


class _Switch:
    """A load switch as the controller drives it (the Switch protocol), in memory."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.safe_state_on = False
        self.on = False

    def set(self, on: bool) -> None:
        self.on = on

    @property
    def is_on(self) -> bool:
        return self.on

    def close(self) -> None:
        self.on = False


@dataclass(slots=True)
class _Phone:
    amps: float
    capacity_wh: float
    soc: float
    leave_at_min: int


def _ignore(kind: str, data: object) -> None:
    """The controller's events: the planner reads its decisions instead."""


def simulate(
    bench: Bench,
    climate: Climate,
    seed: int,
    start: date,
    end: date,
    *,
    evening: tuple[int, int] = (18 * 60, 22 * 60),
    warmup_days: int = 7,
    progress: Callable[[date], None] | None = None,
) -> list[DayRecord]:
    """Days ``start`` .. ``end`` (exclusive), after ``warmup_days`` not recorded."""
    tz = ZoneInfo(bench.timezone)
    first = start - timedelta(days=warmup_days)
    offset_h = datetime(first.year, first.month, first.day, tzinfo=tz).utcoffset()
    assert offset_h is not None
    weather = WeatherDraw(climate, seed, offset_h.total_seconds() / 3600.0)
    params = BenchParams(
        panel_wp=bench.panel_watts_peak,
        battery_chemistry="agm" if bench.chemistry == "agm" else "lifepo4",
        battery_capacity_ah=bench.capacity_ah,
        initial_soc_pct=70.0,
    )
    charging = ChargingSystem(params, first)
    switches = {o: _Switch(o) for o in bench.policy.outputs}
    controller = Controller(
        bench.policy,
        switches,
        SocEstimator(
            bench.capacity_ah,
            CHEMISTRIES[bench.chemistry],
            rest_current_c=bench.rest_current_c,
            resistance_ohm=bench.resistance_ohm,
        ),
        emit_event=_ignore,
    )
    state = _LoopState(bench, evening)
    records: list[DayRecord] = []
    day = first
    minute_abs = 0
    while day < end:
        k, irradiance = weather.day(day)
        record = DayRecord(day, k)
        state.run_day(day, tz, irradiance, charging, controller, switches, record, minute_abs, seed)
        minute_abs += 1440
        if day >= start:
            records.append(record)
            if progress is not None:
                progress(day)
        day += timedelta(days=1)
    return records


class _LoopState:
    """The minute loop and what it carries from one day to the next."""

    def __init__(self, bench: Bench, evening: tuple[int, int]) -> None:
        self.bench = bench
        self.usage = bench.usage
        self.evening = evening
        self.ports = bench.ports
        self.phones: dict[str, _Phone | None] = dict.fromkeys(self.ports)
        self.classes = [(load.name, load.outputs) for load in bench.policy.battery.loads]
        self.lost_since: dict[str, int | None] = {name: None for name, _ in self.classes}
        p = _PARAMS
        hour = [(m / 60.0 - 14.5) for m in range(1440)]
        self.ambient = [
            p.ambient_mean_c + p.ambient_swing_c * math.cos(2 * math.pi * h / 24.0) for h in hour
        ]

    def run_day(  # noqa: PLR0915, PLR0917 - the minute loop, kept flat for speed
        self,
        day: date,
        tz: ZoneInfo,
        irradiance: list[float],
        charging: ChargingSystem,
        controller: Controller,
        switches: dict[str, _Switch],
        rec: DayRecord,
        minute_abs: int,
        seed: int,
    ) -> None:
        p, usage, bench = _PARAMS, self.usage, self.bench
        policy = bench.policy
        ports, phones = self.ports, self.phones
        rngs = {port: random.Random(f"{seed}/{port}/{day.isoformat()}") for port in ports}
        if day != charging.day:
            charging.roll_day(day)
        midnight = datetime(day.year, day.month, day.day, tzinfo=tz)
        wanted_of = {
            o: (policy.schedules.get(o), policy.defaults.get(o, True)) for o in policy.outputs
        }
        delivered = {"usb": 0.0, WIFI: 0.0, "pi": 0.0}
        lost = {name: 0 for name, _ in self.classes}
        wanted_min = {name: 0 for name, _ in self.classes}
        ev_start, ev_end = self.evening
        wp, eff, coeff = bench.panel_watts_peak, p.panel_efficiency, p.panel_temp_coeff_per_c
        conv, ap_w_on, pi_w_on = p.converter_efficiency, usage.hotspot_watts, usage.pi_watts
        stay_s, lo_a, hi_a = usage.mean_stay_s, usage.phone_min_amps, usage.phone_max_amps
        by_hour = rec.available_wh_by_hour
        for minute in range(1440):
            now = midnight + timedelta(minutes=minute)
            mono = (minute_abs + minute) * STEP_S
            g = irradiance[minute]
            # The panel, as the simulated bench's physics has it.
            cell_c = self.ambient[minute] + 0.025 * g
            temp_factor = 1.0 + coeff * (cell_c - 25.0)
            p_avail = wp * eff * (g / 1000.0) * temp_factor
            light = max(0.0, 1.0 + 0.05 * math.log(g / 1000.0)) if g > 0.1 else 0.0
            voc = p.panel_voc_volts * light * temp_factor
            vmp = p.panel_vmp_volts * light * temp_factor
            charging.switch(voc, p_avail)
            cut = charging.loads_cut
            usb_w = 0.0
            port_amps: dict[str, float] = {}
            for port in ports:
                phone = phones[port]
                amps = 0.0
                if phone is not None and switches[port].on and not cut:
                    amps = (
                        phone.amps
                        if phone.soc < 0.8
                        else max(0.05, phone.amps * (1.0 - phone.soc) / 0.2)
                    )
                port_amps[port] = amps
                usb_w += amps * (_USB_VOLTS - 0.05 * amps)
            ap_w = ap_w_on if switches[WIFI].on and not cut else 0.0
            pi_w = 0.0 if charging.bms_open else pi_w_on
            load_w = (pi_w + usb_w) / conv + ap_w
            i_out, i_max = charging.solve_battery(load_w, p_avail)
            panel_w = charging.solve_panel(voc, vmp, i_out, i_max, p_avail)
            charging.integrate(STEP_S, panel_w)
            hours = STEP_S / 3600.0
            rec.available_wh += p_avail * hours
            by_hour[minute // 60] += p_avail * hours
            rec.harvested_wh += panel_w * p.charger_efficiency * hours
            if charging.charge_state in ("absorption", "float"):
                rec.wasted_wh += (p_avail - panel_w) * hours
            delivered["usb"] += usb_w * hours
            delivered[WIFI] += ap_w * hours
            delivered["pi"] += pi_w * hours
            # Phones charge, leave, arrive (a fixed number of draws per minute and port).
            hour_rate = usage.arrivals_per_port_per_hour[minute // 60] / 60.0
            for port in ports:
                rng = rngs[port]
                arrives = rng.random() < 1.0 - math.exp(-hour_rate)
                stay = max(5, round(rng.expovariate(60.0 / stay_s)))
                cc, capacity, soc0 = rng.random(), rng.random(), rng.random()
                phone = phones[port]
                amps = port_amps[port]
                if phone is not None:
                    phone.soc += 0.85 * amps * _USB_VOLTS * hours / phone.capacity_wh
                    if phone.soc >= 1.0 or minute_abs + minute >= phone.leave_at_min:
                        phones[port] = phone = None
                if phone is None and arrives and switches[port].on and not cut:
                    phones[port] = _Phone(
                        lo_a + (hi_a - lo_a) * cc, 10.0 + 9.0 * capacity,
                        0.05 + 0.55 * soc0, minute_abs + minute + stay,
                    )  # fmt: skip
                    rec.phones += 1
            readings: dict[str, PowerReading | None] = {
                port: PowerReading(_USB_VOLTS, a, _USB_VOLTS * a) for port, a in port_amps.items()
            }
            v, i = charging.v_batt, charging.i_batt
            readings["battery"] = PowerReading(v, i, abs(v * i))
            controller.step(now, mono, readings, None, None)
            self._account(now, minute, minute_abs, switches, charging, wanted_of, lost,
                          wanted_min, rec, ev_start, ev_end)  # fmt: skip
            soc, est = charging.soc, controller.soc.soc_pct
            rec.soc_min, rec.soc_max = min(rec.soc_min, soc), max(rec.soc_max, soc)
            if est is not None:
                rec.est_min, rec.est_max = min(rec.est_min, est), max(rec.est_max, est)
            rec.cutoff = rec.cutoff or charging.loads_cut
            rec.full = rec.full or soc >= 99.5
        rec.delivered_wh, rec.lost_min, rec.wanted_min = delivered, lost, wanted_min

    def _account(  # noqa: PLR0917
        self,
        now: datetime,
        minute: int,
        minute_abs: int,
        switches: dict[str, _Switch],
        charging: ChargingSystem,
        wanted_of: dict[str, tuple[Schedule | None, bool]],
        lost: dict[str, int],
        wanted_min: dict[str, int],
        rec: DayRecord,
        ev_start: int,
        ev_end: int,
    ) -> None:
        """A class's minute is lost when one of its outputs is wanted (its schedule,
        or its default) but not serving: held off by the policy or cut by the LVD."""
        cut = charging.loads_cut
        for name, outputs in self.classes:
            wanted = dark = False
            for o in outputs:
                schedule, default = wanted_of[o]
                w = schedule.is_active(now) if schedule is not None else default
                if w:
                    wanted = True
                    if cut or not switches[o].on:
                        dark = True
            if not wanted:
                self.lost_since[name] = None
                continue
            wanted_min[name] += 1
            if not dark:
                self.lost_since[name] = None
                continue
            lost[name] += 1
            since = self.lost_since[name]
            if since is None:
                self.lost_since[name] = since = minute_abs + minute
            if ev_start <= minute < ev_end and name not in rec.dark_from_min:
                rec.dark_from_min[name] = max(since - minute_abs, 0)
