"""The model against a real bench: the planner run on the days a bench reported
(history.py), on the same bench configuration, and compared month by month; and,
when asked, the planner's inputs scaled until it matches.

**The check.** For each month in the history, the model runs that month's dates (a
week of warm-up before, as every plan) for each seed; the bench's mean daily solar
energy and energy per load over its full days stand next to the model's over the same
dates, with the ratio model / bench. The bench's `solar` channel is the panel's side of
the charge controller: the model's harvest is divided by the controller's efficiency
(hardware/sim/params.py) to compare the same thing. Load energies are compared on all
full days, and again on the days nothing was shed (`no_shed`) — on a shed day a load
drew less than people asked, whatever the demand.

**Calibration** scales what the planner takes as inputs, never the policy or physics:
- the climate's clearness of each calendar month in the history (its all-sky
  irradiation, or its assumed clear-sky index), so the model's mean daily solar
  energy matches the bench's; months not in the history are left as they were;
- the usage profile's demand per load, so the model's mean daily energy on days with
  no shedding matches the bench's: USB by the phones' arrival rates (every hour alike),
  Wi-Fi by the hotspot's watts.
Neither is linear (a full battery curtails the harvest, a busy port turns phones away),
so each factor is searched for (see `_Search`): run, move the factors, run again,
until every ratio is within `TOLERANCE` or after `MAX_RUNS` runs; the loads first,
as they set how much of the sun a full battery takes. What is left is shown (the
check after calibration). A month's clear-sky index cannot pass 1.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import date, datetime, timedelta
from typing import Final
from zoneinfo import ZoneInfo

from bench_agent.hardware.sim.params import BenchParams
from bench_agent.json_value import Json, JsonObject
from bench_agent.ops.planner.climate import MONTHS, Climate
from bench_agent.ops.planner.history import USB, History, HistoryDay
from bench_agent.ops.planner.model import Bench
from bench_agent.ops.planner.run import simulate
from bench_agent.ops.planner.weather import WeatherDraw
from bench_agent.ops.planner.workers import map_jobs
from bench_agent.vocabulary import WIFI

TOLERANCE: Final = 0.01  # |model / bench - 1| that counts as matched
MAX_RUNS: Final = 8
DEMAND_FIRST: Final = 0.05  # the loads within this before the clearness moves
FACTOR_RANGE: Final = (0.05, 20.0)
LOADS: Final = (USB, WIFI)
# The planner's harvest is on the 12 V bus; the bench measures the panel's side.
_CHARGER_EFFICIENCY: Final = BenchParams().charger_efficiency
_INPUTS: Final = {USB: "phones.arrivals_per_port_per_hour", WIFI: "loads.hotspot_watts"}

# One modelled day: date, solar Wh at the panel, delivered Wh per load, shed or not.
ModelDay = tuple[date, float, dict[str, float], bool]


@dataclass(frozen=True, slots=True)
class Factors:
    clearness: Mapping[int, float]  # calendar month 1..12 -> factor
    demand: Mapping[str, float]  # "usb", "wifi" -> factor


def scaled_climate(climate: Climate, clearness: Mapping[int, float]) -> Climate:
    """The climate with each month's clearness multiplied by its factor (1: unchanged)."""
    if climate.assumed_index is not None:
        index = tuple(
            min(1.0, max(0.03, v * clearness.get(m, 1.0)))
            for m, v in enumerate(climate.assumed_index, start=1)
        )
        return replace(climate, assumed_index=index)
    assert climate.ghi_kwh_m2_day is not None
    ghi = tuple(v * clearness.get(m, 1.0) for m, v in enumerate(climate.ghi_kwh_m2_day, start=1))
    return replace(climate, ghi_kwh_m2_day=ghi)


def scaled_bench(bench: Bench, demand: Mapping[str, float]) -> Bench:
    """The bench with its usage profile's demand per load multiplied by its factor."""
    usage = bench.usage
    usb, wifi = demand.get(USB, 1.0), demand.get(WIFI, 1.0)
    arrivals = tuple(min(60.0, a * usb) for a in usage.arrivals_per_port_per_hour)
    usage = replace(
        usage,
        arrivals_per_port_per_hour=arrivals,
        hotspot_watts=min(200.0, usage.hotspot_watts * wifi),
    )
    return replace(bench, usage=usage)


def _run_month(args: tuple[Bench, Climate, int, date, date, frozenset[date]]) -> list[ModelDay]:
    bench, climate, seed, start, end, wanted = args
    out: list[ModelDay] = []
    for r in simulate(bench, climate, seed, start, end):
        if r.day in wanted:
            delivered = {k: r.delivered_wh.get(k, 0.0) for k in LOADS}
            shed = r.cutoff or any(r.lost_min.values())
            out.append((r.day, r.harvested_wh / _CHARGER_EFFICIENCY, delivered, shed))
    return out


def model_days(
    bench: Bench, climate: Climate, history: History, seeds: Sequence[int]
) -> list[ModelDay]:
    """The model on the history's full days, every seed (one worker job a month and seed)."""
    jobs = []
    for year, month in history.months():
        dates = frozenset(d.day for d in history.days if (d.day.year, d.day.month) == (year, month))
        for seed in seeds:
            jobs.append((bench, climate, seed, min(dates), max(dates) + timedelta(days=1), dates))
    return [day for result in map_jobs(_run_month, jobs) for day in result]


def _mean(values: Sequence[float]) -> float | None:
    return statistics.fmean(values) if values else None


def _pair(bench: float | None, model: float | None) -> JsonObject:
    ratio = model / bench if bench and model is not None else None
    return {
        "bench": None if bench is None else round(bench, 1),
        "model": None if model is None else round(model, 1),
        "model_over_bench": None if ratio is None else round(ratio, 3),
    }


def compare(history: History, modelled: Sequence[ModelDay]) -> JsonObject:
    """Per month in the history, and on the days with no shedding: bench and model."""
    months: list[Json] = []
    for year, month in history.months():
        days = [d for d in history.days if (d.day.year, d.day.month) == (year, month)]
        model = [m for m in modelled if (m[0].year, m[0].month) == (year, month)]
        solar = [d.solar_wh for d in days if d.solar_wh is not None]
        months.append({
            "month": f"{year}-{month:02d}", "days": len(days),
            "shed_days": sum(d.shed for d in days),
            "solar_wh_per_day": _pair(_mean(solar), _mean([m[1] for m in model])),
            "delivered_wh_per_day": {
                load: _pair(
                    _mean([d.delivered_wh[load] for d in days if load in d.delivered_wh]),
                    _mean([m[2][load] for m in model]),
                )
                for load in LOADS
            },
        })  # fmt: skip
    calm = [d for d in history.days if not d.shed]
    calm_model = [m for m in modelled if not m[3]]
    no_shed: JsonObject = {"days": len(calm), "model_days": len(calm_model)}
    for load in LOADS:
        no_shed[load] = _pair(
            _mean([d.delivered_wh[load] for d in calm if load in d.delivered_wh]),
            _mean([m[2][load] for m in calm_model]),
        )
    return {"months": months, "no_shed": no_shed}


Knob = tuple[str, int | str]  # ("clearness", month 1..12) or ("demand", "usb" | "wifi")


def _pairs(history: History, modelled: Sequence[ModelDay]) -> dict[Knob, tuple[float, float]]:
    """(bench, model) for each knob: the mean daily solar Wh of each calendar month, and
    each load's mean daily Wh on days with no shedding. A figure that cannot be compared
    (not measured, no such day, a zero) is left out: its knob stays as it is."""
    pairs: dict[Knob, tuple[float, float]] = {}
    for month in sorted({d.day.month for d in history.days}):
        bench = _mean(
            [d.solar_wh for d in history.days if d.day.month == month and d.solar_wh is not None]
        )
        model = _mean([m[1] for m in modelled if m[0].month == month])
        if bench and model:
            pairs["clearness", month] = (bench, model)
    bench_calm, model_calm = _calm_days(history, modelled)
    for load in LOADS:
        bench = _mean([d.delivered_wh[load] for d in bench_calm if load in d.delivered_wh])
        model = _mean([m[2][load] for m in model_calm])
        if bench and model:
            pairs["demand", load] = (bench, model)
    return pairs


def _calm_days(
    history: History, modelled: Sequence[ModelDay]
) -> tuple[list[HistoryDay], list[ModelDay]]:
    """The days with no shedding on the bench and in the model (a seed at least): which
    days are shed moves with every knob, and a calm day of a sunny spell is not one of
    a wet spell; on the same dates the demand is compared, not the weather."""
    model_dates = {m[0] for m in modelled if not m[3]}
    bench = [d for d in history.days if not d.shed and d.day in model_dates]
    dates = {d.day for d in bench}
    return bench, [m for m in modelled if not m[3] and m[0] in dates]


@dataclass(slots=True)
class _Search:
    """One knob's search for model == bench, the model taken as increasing in the knob
    (more sun, more harvest; more phones or watts, more energy) but not linear: a full
    battery curtails the harvest, a busy port turns phones away. Until the target is
    bracketed the knob moves by bench / model, squared on the next run, and so on (at
    most ×2 or ÷2 a run); then by regula falsi inside the bracket (Illinois: the end
    kept twice is weighed down)."""

    below: tuple[float, float] | None = None  # (factor, model) with model < target
    above: tuple[float, float] | None = None
    kept: str = ""
    strides: int = 0

    def next(self, factor: float, target: float, now: float) -> float:
        side = "below" if now < target else "above"
        if side == "below":
            self.below = (factor, now)
        else:
            self.above = (factor, now)
        if self.below is None or self.above is None:
            # Each run on the same side doubles the stride (a flat stretch is crossed).
            self.strides += 1
            step = factor * float((target / now) ** (2 ** (self.strides - 1)))
            return min(FACTOR_RANGE[1], max(FACTOR_RANGE[0], factor / 2, min(step, factor * 2)))
        (f0, m0), (f1, m1) = self.below, self.above
        if self.kept == side:  # the other end did not move last time: weigh it down
            if side == "below":
                m1 = target + (m1 - target) / 2
            else:
                m0 = target - (target - m0) / 2
        self.kept = "above" if side == "below" else "below"
        if m1 <= m0:
            return (f0 + f1) / 2
        return f0 + (target - m0) * (f1 - f0) / (m1 - m0)


def calibrate(
    bench: Bench, climate: Climate, history: History, seeds: Sequence[int]
) -> tuple[Factors, JsonObject, JsonObject, int]:
    """The factors that make the model match the history; the check before and after
    (compare()'s JSON) and how many runs it took."""
    factors: dict[Knob, float] = {}
    searches: dict[Knob, _Search] = {}
    before: JsonObject | None = None
    runs = 0
    while True:
        found = Factors(
            {int(k): f for (kind, k), f in factors.items() if kind == "clearness"},
            {str(k): f for (kind, k), f in factors.items() if kind == "demand"},
        )
        modelled = model_days(
            scaled_bench(bench, found.demand), scaled_climate(climate, found.clearness),
            history, seeds,
        )  # fmt: skip
        runs += 1
        check = compare(history, modelled)
        before = before if before is not None else check
        pairs = _pairs(history, modelled)
        matched = all(abs(model / bench - 1.0) <= TOLERANCE for bench, model in pairs.values())
        if runs >= MAX_RUNS or matched:
            return found, before, check, runs
        # Demand first: how full the battery runs (so how much of the sun it takes)
        # depends on the loads; the clearness moves once the loads are about right.
        demand_near = all(
            abs(model / bench - 1.0) <= DEMAND_FIRST
            for (kind, _), (bench, model) in pairs.items()
            if kind == "demand"
        )
        for knob, (target, now) in pairs.items():
            if knob[0] == "clearness" and not demand_near:
                continue
            factor = factors.get(knob, 1.0)
            factors[knob] = searches.setdefault(knob, _Search()).next(factor, target, now)


def describe(factors: Factors, climate: Climate, bench: Bench, history: History) -> JsonObject:
    """What calibration changed, in the inputs' own terms."""
    tz = ZoneInfo(bench.timezone)
    first = history.days[0].day
    offset = datetime(first.year, first.month, first.day, tzinfo=tz).utcoffset()
    offset_h = offset.total_seconds() / 3600.0 if offset is not None else 0.0
    old = WeatherDraw(climate, 0, offset_h)
    new = WeatherDraw(scaled_climate(climate, factors.clearness), 0, offset_h)
    year = {d.day.month: d.day.year for d in history.days}
    clearness: list[Json] = [
        {
            "month": MONTHS[m - 1], "factor": round(f, 3),
            "clear_sky_index": [round(old.month_mean_index(year[m], m), 3),
                                round(new.month_mean_index(year[m], m), 3)],
        }
        for m, f in sorted(factors.clearness.items())
    ]  # fmt: skip
    usage, scaled = bench.usage, scaled_bench(bench, factors.demand).usage
    values = {
        USB: ("arrivals_per_port_per_day",
              sum(usage.arrivals_per_port_per_hour), sum(scaled.arrivals_per_port_per_hour)),
        WIFI: ("watts", usage.hotspot_watts, scaled.hotspot_watts),
    }  # fmt: skip
    demand: JsonObject = {}
    for load, f in sorted(factors.demand.items()):
        name, was, now = values[load]
        demand[load] = {"input": _INPUTS[load], "factor": round(f, 3),
                        name: [round(was, 2), round(now, 2)]}  # fmt: skip
    return {"clearness": clearness, "demand": demand}
