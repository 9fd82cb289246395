"""The weather draw: each day's irradiance, minute by minute, from a climate and a seed.

A day's clear-sky index k (its irradiation / a clear day's) is the month's mean plus
an anomaly that persists from day to day (an AR(1) with the climate's
``persistence``: rainy days come in spells), spread by ``daily_sd`` and clipped to
[0.03, 1]. Within the day, clouds come and go as a one-hour AR(1) on the clear-sky
curve, stronger the cloudier the day (a clear day is smooth), and the day's curve
is scaled so its irradiation is exactly k times the clear day's: over many draws the
months' means are the climate file's.

Every day's random numbers come from a stream seeded by (seed, date): the same seed
gives the same weather on the same date whatever period a run covers, and a bench of
any size sees the same sky (what the sizing sweep and the monotonicity test rely on).
"""

from __future__ import annotations

import math
import random
from datetime import date
from typing import Final

from bench_agent.ops.planner.climate import Climate
from bench_agent.ops.planner.sun import clear_sky_day, clear_sky_month_kwh

_INTRADAY_PHI: Final = math.exp(-60.0 / 3600.0)  # one-hour cloud situations, per minute
_INTRADAY_SD: Final = 0.6  # × (1 − k): the spread of minute-to-minute cloudiness


class WeatherDraw:
    """Days of irradiance for one place and seed, asked for in date order."""

    def __init__(self, climate: Climate, seed: int, utc_offset_h: float) -> None:
        self._climate = climate
        self._seed = seed
        self._utc_offset_h = utc_offset_h
        self._anomaly = 0.0
        self._month_index: dict[tuple[int, int], float] = {}

    def month_mean_index(self, year: int, month: int) -> float:
        key = (year, month)
        if key not in self._month_index:
            c = self._climate
            model = clear_sky_month_kwh(
                year, month, c.latitude_deg, c.longitude_deg, self._utc_offset_h
            )
            self._month_index[key] = c.clear_sky_index(month, model)
        return self._month_index[key]

    def day(self, day: date) -> tuple[float, list[float]]:
        """The day's clear-sky index and its irradiance, W/m², per local minute."""
        c = self._climate
        rng = random.Random(f"{self._seed}/weather/{day.isoformat()}")
        rho = c.persistence
        self._anomaly = rho * self._anomaly + math.sqrt(1.0 - rho * rho) * rng.gauss()
        k = min(
            1.0, max(0.03, self.month_mean_index(day.year, day.month) + c.daily_sd * self._anomaly)
        )
        clear = clear_sky_day(day, c.latitude_deg, c.longitude_deg, self._utc_offset_h)
        sd = _INTRADAY_SD * (1.0 - k)
        noise_scale = sd * math.sqrt(1.0 - _INTRADAY_PHI**2)
        x = sd * rng.gauss()
        shaped = []
        for g in clear:
            x = _INTRADAY_PHI * x + noise_scale * rng.gauss()
            shaped.append(g * max(0.05, 1.0 + x))
        total = sum(shaped)
        scale = k * sum(clear) / total if total > 0 else 0.0
        return k, [g * scale for g in shaped]
