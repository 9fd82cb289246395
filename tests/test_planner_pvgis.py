"""PVGIS's off-grid balance (planner/pvgis.py), checked by hand on a small case."""

from __future__ import annotations

import pytest

from bench_agent.ops.planner.pvgis import off_grid

NIGHT = [0.0] * 6


def test_a_hand_checked_three_days() -> None:
    # 1 000 Wh battery, cut-off 20 % (200 Wh), start full; 10 Wh every hour (240 Wh/day).
    load = [10.0] * 24
    sunny = NIGHT + [100.0] * 6 + NIGHT * 2  # 600 Wh between 06:00 and 12:00
    dark = [0.0] * 24
    days = [sunny, dark, dark, dark, sunny]
    result = off_grid(days, load, battery_wh=1000.0, cutoff_pct=20.0)
    # Day 1: full at start; 6 h at -10 -> 940; +90 each hour is over 1000 from hour 7:
    #   940+90 = 1030 -> 30 lost, then 60+... hours 7-11: 90 lost each -> 30 + 5*90 = 480
    #   lost; then 12 h at -10 -> 880 at midnight. Full.
    # Days 2-4 dark: 880 - 240 = 640, 400, 160 -> the floor (200) is reached on day 4
    #   after 20 h (400 - 200 = 200 Wh = 20 h); 4 h missing -> 40 Wh missing.
    # Day 5: 200 - 60 = 140 -> floor again at the first hour: 6 h of 10 Wh missing -> 60;
    #   +90 x 6 = 740, -120 -> 620 at midnight. Not full; empty.
    assert result.d_total == 5
    assert result.f_f_pct == pytest.approx(20.0)
    assert result.e_lost_wh_day == pytest.approx(480.0 / 5)
    assert result.empty_days == (False, False, False, True, True)
    assert result.f_e_pct == pytest.approx(40.0)
    assert result.e_miss_wh_day == pytest.approx((40.0 + 60.0) / 5)


def test_bad_shapes_and_levels_are_refused() -> None:
    with pytest.raises(ValueError, match="24 hourly"):
        off_grid([[1.0] * 23], [1.0] * 24, battery_wh=100.0, cutoff_pct=10.0)
    with pytest.raises(ValueError, match="battery_wh"):
        off_grid([[1.0] * 24], [1.0] * 24, battery_wh=0.0, cutoff_pct=10.0)
