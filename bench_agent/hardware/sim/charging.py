"""The simulated bench's charging system: the battery (its open-circuit voltage, its
internal resistance, how a nearly full battery refuses current), the MPPT charge
controller between the panel and it (Victron's off/bulk/absorption/float states, the
panel's operating point, the yield history VE.Direct reports), and the two cut-offs
that protect the battery (the load output's low-voltage disconnect, the BMS at 0 %).

Apart from the model (physics.py), which runs the bench around it (time, sun and
weather, loads and phones, temperatures): given the watts the panel could give and the
watts the loads draw, this solves the battery's volts and currents and moves its charge
on. It is the one part with a state machine of its own (the charge states), and the one
the agent's decisions act on, through the battery.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from datetime import date
from typing import Literal

from bench_agent.hardware.sim.params import CHEMISTRIES, BenchParams

ChargeState = Literal["off", "bulk", "absorption", "float"]
MpptMode = Literal["off", "mppt_active", "voltage_or_current_limited"]


@dataclass(frozen=True, slots=True)
class ChargerSnapshot:
    """What a VE.Direct MPPT reports (V, I, VPV, PPV, CS, MPPT, ERR, H19..H23)."""

    battery_volts: float
    battery_amps: float  # the controller's output current at its battery terminals
    panel_volts: float
    panel_watts: float
    charge_state: ChargeState
    mppt_mode: MpptMode
    error: str
    yield_today_kwh: float
    yield_yesterday_kwh: float
    yield_total_kwh: float
    max_power_today_w: float
    max_power_yesterday_w: float


class ChargingSystem:
    """Battery, charge controller and cut-offs of one bench. Not thread-safe: the bench
    model owns it and calls it in its step's order (`switch`, `solve_battery`,
    `solve_panel`, `integrate`). Its attributes are the last solved operating point."""

    def __init__(self, params: BenchParams, day: date) -> None:
        self._p = params
        self._chem = CHEMISTRIES[params.battery_chemistry]
        capacity = params.battery_capacity_ah
        self._r_int = self._chem.resistance_ohm_ah / capacity
        self._ocv_soc = [s for s, _ in self._chem.ocv_curve]
        self._ocv_volts = [v + params.ocv_offset_volts for _, v in self._chem.ocv_curve]
        self.soc = params.initial_soc_pct  # true state of charge, per cent

        self.charge_state: ChargeState = "off"
        self.mppt_mode: MpptMode = "off"
        self._absorption_s = 0.0
        self._below_rebulk_s = 0.0
        self.lvd_tripped = False  # the low-voltage disconnect has cut the loads
        self.bms_open = False  # the battery's BMS has cut everything, the Pi included

        self.day = day  # the local day the yield counters count
        self._yield_today_kwh = 0.0
        self._yield_yesterday_kwh = 0.0
        self._yield_total_kwh = 0.0
        self._pmax_today_w = 0.0
        self._pmax_yesterday_w = 0.0

        self.v_batt = self._ocv(self.soc)
        self.i_batt = 0.0  # + when the battery charges
        self.i_charger = 0.0  # the controller's output current
        self.v_panel = 0.0
        self.p_panel = 0.0

    @property
    def loads_cut(self) -> bool:
        return self.lvd_tripped or self.bms_open

    def snapshot(self) -> ChargerSnapshot:
        return ChargerSnapshot(
            battery_volts=self.v_batt,
            battery_amps=self.i_charger,
            panel_volts=self.v_panel,
            panel_watts=self.p_panel,
            charge_state=self.charge_state,
            mppt_mode=self.mppt_mode,
            error="no_error",
            yield_today_kwh=self._yield_today_kwh,
            yield_yesterday_kwh=self._yield_yesterday_kwh,
            yield_total_kwh=self._yield_total_kwh,
            max_power_today_w=self._pmax_today_w,
            max_power_yesterday_w=self._pmax_yesterday_w,
        )

    def switch(self, voc: float, p_available: float) -> None:
        """As a Victron: starts when the panel is 5 V above the battery, stops below 1 V
        above it; every start is a new charge cycle in bulk."""
        if self.charge_state == "off":
            if voc > self.v_batt + 5.0 and p_available > 0.5:
                self.charge_state = "bulk"
                self._absorption_s = 0.0
        elif voc < self.v_batt + 1.0 or p_available < 0.2:
            self.charge_state = "off"
            self._below_rebulk_s = 0.0
        # The battery's BMS opens at 0 % and closes again once there is charge to give.
        self.bms_open = self.soc <= 0.0 and self.charge_state == "off"

    def solve_battery(self, load_w: float, p_available: float) -> tuple[float, float]:
        """The battery's volts and current, and the charger's output current: the loads
        draw constant power, so a few fixed-point passes from the last voltage converge
        to well under 1 mV. Returns (charger amps out, the most it could give)."""
        p, chem = self._p, self._chem
        ocv = self._ocv(self.soc)
        r_charge = self._charge_resistance(self.soc, ocv)
        accept = self._acceptance_amps(self.soc)
        v_batt = self.v_batt
        i_out = i_out_max = i_batt = 0.0
        for _ in range(3):
            i_load = load_w / v_batt
            if self.charge_state != "off":
                i_out_max = min(p_available * p.charger_efficiency / v_batt, p.charger_max_amps)
                if self.charge_state == "bulk" and i_out_max - i_load > accept:
                    self.charge_state = "absorption"  # bulk would overshoot: regulate
                if self.charge_state == "bulk":
                    wanted = math.inf
                elif self.charge_state == "absorption":
                    wanted = accept  # exactly what holds the absorption voltage
                else:
                    wanted = max(0.0, (chem.float_volts - ocv) / r_charge)
                i_out = min(i_out_max, i_load + wanted)
            i_batt = i_out - i_load
            if self.bms_open:
                i_batt = max(0.0, i_batt)
            if i_batt > 0:
                v_batt = ocv + i_batt * r_charge if math.isfinite(r_charge) else ocv
            else:
                v_batt = ocv + i_batt * self._r_int
            v_batt = max(v_batt, 1.0)
        self.v_batt, self.i_batt, self.i_charger = v_batt, i_batt, i_out
        return i_out, i_out_max

    def solve_panel(
        self, voc: float, vmp: float, i_out: float, i_out_max: float, p_available: float
    ) -> float:
        """What the panel gives: all it has at its maximum power point, or less when the
        battery takes less, the controller then walking the panel up towards open
        circuit. Returns the panel's watts."""
        p = self._p
        if self.charge_state == "off":
            self.mppt_mode = "off"
            self.v_panel, self.p_panel = voc, 0.0
            return 0.0
        available = p_available
        panel_w = min(available, i_out * self.v_batt / p.charger_efficiency)
        limited = i_out < i_out_max - 1e-6 or i_out_max >= p.charger_max_amps
        self.mppt_mode = "voltage_or_current_limited" if limited else "mppt_active"
        share = panel_w / available if available > 0 else 0.0
        self.v_panel = vmp + (voc - vmp) * (1.0 - share)
        self.p_panel = panel_w
        return panel_w

    def integrate(self, dt: float, panel_w: float) -> None:
        """Move the stored charge, the yield counters, the charge state and the
        low-voltage disconnect on by dt seconds."""
        p, chem = self._p, self._chem
        stored_ah = self.i_batt * dt / 3600.0
        if stored_ah > 0:
            stored_ah *= chem.coulombic_efficiency
        soc = self.soc + 100.0 * stored_ah / p.battery_capacity_ah
        self.soc = min(100.0, max(0.0, soc))

        out_kwh = self.i_charger * self.v_batt * dt / 3.6e6
        self._yield_today_kwh += out_kwh
        self._yield_total_kwh += out_kwh
        self._pmax_today_w = max(self._pmax_today_w, panel_w)

        self._advance_charge_state(dt)
        if self.lvd_tripped:
            self.lvd_tripped = self.v_batt < chem.reconnect_volts
        else:
            self.lvd_tripped = self.v_batt < chem.cutoff_volts

    def roll_day(self, new_day: date) -> None:
        """Local midnight: today's counters become yesterday's (as the MPPT's history)."""
        self.day = new_day
        self._yield_yesterday_kwh = self._yield_today_kwh
        self._pmax_yesterday_w = self._pmax_today_w
        self._yield_today_kwh = 0.0
        self._pmax_today_w = 0.0

    def _advance_charge_state(self, dt: float) -> None:
        chem = self._chem
        if self.charge_state == "absorption":
            self._absorption_s += dt
            tail_amps = chem.tail_c * self._p.battery_capacity_ah
            done = self._acceptance_amps(self.soc) < tail_amps
            if done or self._absorption_s >= chem.absorption_max_s:
                self.charge_state = "float"
        elif self.charge_state == "float":
            # Victron's re-bulk: below float minus the offset for a whole minute.
            if self.v_batt < chem.float_volts - chem.rebulk_offset_volts:
                self._below_rebulk_s += dt
                if self._below_rebulk_s >= 60.0:
                    self.charge_state = "bulk"
                    self._absorption_s = self._below_rebulk_s = 0.0
            else:
                self._below_rebulk_s = 0.0

    def _ocv(self, soc: float) -> float:
        xs, ys = self._ocv_soc, self._ocv_volts
        i = bisect.bisect_right(xs, soc)
        if i <= 0:
            return ys[0]
        if i >= len(xs):
            return ys[-1]
        x0, x1 = xs[i - 1], xs[i]
        return ys[i - 1] + (ys[i] - ys[i - 1]) * (soc - x0) / (x1 - x0)

    def _acceptance_amps(self, soc: float) -> float:
        """Largest current the battery takes at the absorption voltage."""
        chem = self._chem
        max_amps = chem.max_charge_c * self._p.battery_capacity_ah
        if soc <= chem.taper_knee_pct:
            return max_amps
        left = max(0.0, (100.0 - soc) / (100.0 - chem.taper_knee_pct))
        return max_amps * math.pow(left, chem.taper_exponent)

    def _charge_resistance(self, soc: float, ocv: float) -> float:
        """Apparent resistance while charging: the internal resistance plus the
        polarisation that makes a nearly full battery refuse current. Chosen so that
        ocv + acceptance × R_charge = absorption volts."""
        accept = self._acceptance_amps(soc)
        if accept <= 1e-9:
            return math.inf
        return max(self._r_int, (self._chem.absorption_volts - ocv) / accept)
