"""The cross-check: PVGIS's off-grid method, run on the planner's own sky and bench.

What PVGIS documents of its off-grid tool (JRC, "Off-grid PV systems",
https://joint-research-centre.ec.europa.eu/pvgis-online-tool/pvgis-tools/grid-pv-systems_en):
the inputs are the PV system's nominal power, the battery's size (Wh), its discharge
cut-off limit (%) and the consumption per day (Wh) with its variation over the day; the
tool "simulates the flow of energy to the users and into and out of the battery" over
the whole hourly radiation series, and reports d_total (days), f_f (% of days with the
battery fully charged), E_lost (energy not captured because the battery was full), f_e
(% of days the battery became fully discharged, i.e. reached the cut-off) and E_miss
(energy missing). The page gives no equations; what is implemented here is the plain
hourly energy balance that description names, and nothing more:

    each hour: E += PV_h − load_h
    E > capacity:           the excess is lost (E_lost), E = capacity, the day is "full"
    E < cut-off × capacity: the shortfall is missing (E_miss), E = cut-off × capacity,
                            the day is "empty" (counts towards f_e)

No charge or discharge efficiency, no voltage, no reconnect hysteresis: none is named on
that page. E_lost and E_miss are given per day (Wh/day, the mean over d_total days).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import date

from bench_agent.hardware.sim.params import CHEMISTRIES as SIM_CHEMISTRIES
from bench_agent.hardware.sim.params import BenchParams
from bench_agent.json_value import JsonObject
from bench_agent.ops.planner.climate import Climate
from bench_agent.ops.planner.model import Bench
from bench_agent.ops.planner.run import simulate
from bench_agent.power.chemistry import CHEMISTRIES


@dataclass(frozen=True, slots=True)
class OffGrid:
    """PVGIS's off-grid figures for one series."""

    d_total: int
    f_f_pct: float
    e_lost_wh_day: float
    f_e_pct: float
    e_miss_wh_day: float
    empty_days: tuple[bool, ...]  # per day: reached the cut-off


def off_grid(
    pv_wh: Sequence[Sequence[float]],
    load_wh: Sequence[float],
    *,
    battery_wh: float,
    cutoff_pct: float,
    start_pct: float = 100.0,
) -> OffGrid:
    """The hourly balance over ``pv_wh`` (one 24-hour list per day, Wh into the battery
    bus each hour) with ``load_wh`` (24 values, the same every day)."""
    if len(load_wh) != 24 or any(len(day) != 24 for day in pv_wh):
        raise ValueError("24 hourly values a day")
    if battery_wh <= 0 or not 0 <= cutoff_pct < 100 or not cutoff_pct <= start_pct <= 100:
        raise ValueError("battery_wh > 0, 0 <= cutoff_pct < 100, cutoff <= start <= 100")
    floor = battery_wh * cutoff_pct / 100.0
    energy = battery_wh * start_pct / 100.0
    lost = missing = 0.0
    full_days = 0
    empty: list[bool] = []
    for day in pv_wh:
        full = low = False
        for pv, load in zip(day, load_wh, strict=True):
            energy += pv - load
            if energy > battery_wh:
                lost += energy - battery_wh
                energy, full = battery_wh, True
            elif energy < floor:
                missing += floor - energy
                energy, low = floor, True
        full_days += full
        empty.append(low)
    n = len(empty)
    return OffGrid(
        d_total=n,
        f_f_pct=100.0 * full_days / n if n else 0.0,
        e_lost_wh_day=lost / n if n else 0.0,
        f_e_pct=100.0 * sum(empty) / n if n else 0.0,
        e_miss_wh_day=missing / n if n else 0.0,
        empty_days=tuple(empty),
    )


def one_load_case(bench: Bench) -> Bench:
    """PVGIS's case on the planner: one load (the hotspot, all day, every day), no
    policy tiers (it is never shed for the battery: only the charge controller's
    low-voltage disconnect cuts it), no USB port and no Pi drawing beside it."""
    policy = bench.policy
    wifi = next(load for load in policy.battery.loads if load.name == "wifi")
    only = replace(wifi, off_below_pct=0.0, on_above_pct=1.0, off_below_volts=None)
    battery = replace(policy.battery, loads=(only,), restore_above_volts=None)
    policy = replace(policy, ports={}, battery=battery, schedules={}, defaults={"wifi": True})
    return replace(bench, policy=policy, usage=replace(bench.usage, pi_watts=0.0))


def cross_check(bench: Bench, climate: Climate, seed: int, start: date, end: date) -> JsonObject:
    """The planner and PVGIS's balance on the same sky, bench and one-load case.

    PVGIS's inputs from the planner's bench: PV energy each hour = what the panel could
    give (the planner's own panel model, temperature included) × the charge
    controller's efficiency; the load = the hotspot's watts, all day; the battery's Wh =
    its Ah × its open-circuit voltage at 50 %; the cut-off = the state of charge at which
    the battery's open-circuit voltage is the controller's disconnect voltage. Both
    start at 70 %, with no warm-up."""
    case = one_load_case(bench)
    records = simulate(case, climate, seed, start, end, warmup_days=0)
    params = BenchParams()
    chem = CHEMISTRIES[case.chemistry]
    sim_chem = SIM_CHEMISTRIES["agm" if case.chemistry == "agm" else "lifepo4"]
    cutoff_pct = chem.pct_at(sim_chem.cutoff_volts)
    battery_wh = case.capacity_ah * chem.volts_at(50.0)
    pv = [[w * params.charger_efficiency for w in r.available_wh_by_hour] for r in records]
    load_w = case.usage.hotspot_watts
    pvgis = off_grid(
        pv, [load_w] * 24, battery_wh=battery_wh, cutoff_pct=cutoff_pct, start_pct=70.0
    )
    n = len(records)
    wanted = load_w * 24.0 * n
    served = sum(r.delivered_wh.get("wifi", 0.0) for r in records)
    both = sum(r.cutoff and e for r, e in zip(records, pvgis.empty_days, strict=True))
    return {
        "days": n,
        "battery_wh": round(battery_wh),
        "cutoff_pct": round(cutoff_pct, 1),
        "load_wh_day": round(load_w * 24.0, 1),
        "pv_wh_day": round(sum(map(sum, pv)) / n, 1) if n else 0.0,
        "planner": {
            "f_e_pct": round(100.0 * sum(r.cutoff for r in records) / n, 1),
            "not_served_wh_day": round((wanted - served) / n, 1),
            "f_f_pct": round(100.0 * sum(r.full for r in records) / n, 1),
        },
        "pvgis": {
            "f_e_pct": round(pvgis.f_e_pct, 1),
            "not_served_wh_day": round(pvgis.e_miss_wh_day, 1),
            "f_f_pct": round(pvgis.f_f_pct, 1),
            "e_lost_wh_day": round(pvgis.e_lost_wh_day, 1),
        },
        "cutoff_days_in_both": both,
    }
