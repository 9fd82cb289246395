"""What a run means to a bench owner, as JSON-able numbers: per month and per load
class, the evenings it went dark (and from what hour), the hours of service lost,
the energy harvested, delivered and wasted, the state-of-charge envelope, and
PVGIS's f_e / f_f for comparison. Several seeds give a spread: the mean and the
range over the seeds."""

from __future__ import annotations

import statistics
from collections.abc import Sequence

from bench_agent.json_value import Json, JsonObject
from bench_agent.ops.planner.run import DayRecord

_MONTH_NAMES = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def _r(x: float, n: int = 1) -> float:
    return round(x, n)


def month_keys(records: Sequence[DayRecord]) -> list[tuple[int, int]]:
    keys: list[tuple[int, int]] = []
    for r in records:
        key = (r.day.year, r.day.month)
        if not keys or keys[-1] != key:
            keys.append(key)
    return keys


def summarize_run(records: Sequence[DayRecord], classes: Sequence[str]) -> JsonObject:
    """One seed's run: totals and months."""
    months: list[Json] = []
    for year, month in month_keys(records):
        days = [r for r in records if (r.day.year, r.day.month) == (year, month)]
        months.append({"month": f"{year}-{month:02d}", **_period(days, classes)})
    return {"days": len(records), "total": _period(records, classes), "months": months}


def _period(days: Sequence[DayRecord], classes: Sequence[str]) -> JsonObject:
    n = len(days)
    loads: JsonObject = {}
    for name in classes:
        dark = [r for r in days if name in r.dark_from_min]
        hours = [0] * 24
        for r in dark:
            hours[r.dark_from_min[name] // 60] += 1
        loads[name] = {
            "dark_evenings": len(dark),
            "dark_from_hour": hours,  # evenings by the local hour it went dark
            "hours_lost": _r(sum(r.lost_min.get(name, 0) for r in days) / 60.0),
            "hours_wanted": _r(sum(r.wanted_min.get(name, 0) for r in days) / 60.0),
        }
    return {
        "loads": loads,
        "energy_wh": {
            "available": _r(sum(r.available_wh for r in days), 0),
            "harvested": _r(sum(r.harvested_wh for r in days), 0),
            "wasted_battery_full": _r(sum(r.wasted_wh for r in days), 0),
            "delivered": {
                k: _r(sum(r.delivered_wh.get(k, 0.0) for r in days), 0)
                for k in ("usb", "wifi", "pi")
            },
        },
        "soc_pct": {
            "min": _r(min((r.soc_min for r in days), default=0.0)),
            "mean_daily_min": _r(statistics.fmean(r.soc_min for r in days) if n else 0.0),
            "mean_daily_max": _r(statistics.fmean(r.soc_max for r in days) if n else 0.0),
            "max": _r(max((r.soc_max for r in days), default=0.0)),
            "estimate_min": _r(min((r.est_min for r in days), default=0.0)),
        },
        "f_e_pct": _r(100.0 * sum(r.cutoff for r in days) / n if n else 0.0),
        "f_f_pct": _r(100.0 * sum(r.full for r in days) / n if n else 0.0),
        "phones": sum(r.phones for r in days),
        "mean_clear_sky_index": _r(statistics.fmean(r.clear_sky_index for r in days), 3)
        if n
        else 0.0,
    }


def _dark(records: Sequence[DayRecord], name: str) -> int:
    return sum(name in r.dark_from_min for r in records)


def spread(runs: Sequence[Sequence[DayRecord]], classes: Sequence[str]) -> JsonObject:
    """Dark evenings and hours lost over seeds: mean, min, max; per month too."""
    out: JsonObject = {}
    keys = month_keys(runs[0])
    for name in classes:
        totals = [_dark(run, name) for run in runs]
        lost = [_r(sum(r.lost_min.get(name, 0) for r in run) / 60.0) for run in runs]
        per_month: list[Json] = []
        for year, month in keys:
            values = [
                _dark([r for r in run if (r.day.year, r.day.month) == (year, month)], name)
                for run in runs
            ]
            per_month.append({
                "month": f"{year}-{month:02d}", "mean": _r(statistics.fmean(values), 2),
                "min": min(values), "max": max(values),
            })  # fmt: skip
        out[name] = {
            "dark_evenings": {
                "mean": _r(statistics.fmean(totals), 2), "min": min(totals), "max": max(totals),
            },
            "hours_lost": {
                "mean": _r(statistics.fmean(lost), 1), "min": min(lost), "max": max(lost),
            },
            "months": per_month,
        }  # fmt: skip
    return out


def month_label(key: str) -> str:
    """ "2027-11" -> "Nov 2027"."""
    year, month = key.split("-")
    return f"{_MONTH_NAMES[int(month) - 1]} {year}"
