"""The sun over the bench, minute by minute, and the irradiance of a clear sky.

Fast on purpose: a year is 525,600 minutes. The sun's declination and the equation
of time are taken once a day (Spencer 1971, good to ~0.1° and ~30 s: plenty for a
horizontal panel), the elevation once a minute. The clear sky is the simulated
bench's own function (hardware/sim/physics.py `clear_sky_w_m2`): the direct beam
after the air mass (Kasten-Young 1989, Meinel 1976) plus ~10 % diffuse.
"""

from __future__ import annotations

import math
from datetime import date, timedelta
from typing import Final

from bench_agent.hardware.sim.physics import clear_sky_w_m2

MINUTES_PER_DAY: Final = 1440


def _declination_and_eot(day: date) -> tuple[float, float]:
    """Declination (rad) and the equation of time (minutes) on ``day`` (Spencer 1971)."""
    g = 2.0 * math.pi * (day.timetuple().tm_yday - 1) / 365.0
    decl = (
        0.006918
        - 0.399912 * math.cos(g)
        + 0.070257 * math.sin(g)
        - 0.006758 * math.cos(2 * g)
        + 0.000907 * math.sin(2 * g)
        - 0.002697 * math.cos(3 * g)
        + 0.00148 * math.sin(3 * g)
    )
    eot = 229.18 * (
        0.000075
        + 0.001868 * math.cos(g)
        - 0.032077 * math.sin(g)
        - 0.014615 * math.cos(2 * g)
        - 0.040849 * math.sin(2 * g)
    )
    return decl, eot


def clear_sky_day(
    day: date, latitude_deg: float, longitude_deg: float, utc_offset_h: float
) -> list[float]:
    """Clear-sky W/m² for each local minute of ``day`` (minute 0 = local midnight)."""
    decl, eot = _declination_and_eot(day)
    lat = math.radians(latitude_deg)
    a, b = math.sin(lat) * math.sin(decl), math.cos(lat) * math.cos(decl)
    # local clock minute -> true solar time: clock - zone + longitude + equation of time
    shift = 4.0 * longitude_deg - 60.0 * utc_offset_h + eot
    out = []
    for minute in range(MINUTES_PER_DAY):
        hour_angle = math.radians((minute + 0.5 + shift) / 4.0 - 180.0)
        s = a + b * math.cos(hour_angle)
        out.append(clear_sky_w_m2(math.degrees(math.asin(s))) if s > 0 else 0.0)
    return out


def clear_sky_month_kwh(
    year: int, month: int, latitude_deg: float, longitude_deg: float, utc_offset_h: float
) -> float:
    """The model's mean clear-sky irradiation per day in ``month``, kWh/m²/day."""
    day = date(year, month, 1)
    total, days = 0.0, 0
    while day.month == month:
        total += sum(clear_sky_day(day, latitude_deg, longitude_deg, utc_offset_h)) / 60.0
        days += 1
        day += timedelta(days=1)
    return total / days / 1000.0
