"""The simulated charging system on its own (hardware/sim/charging.py): when the MPPT
controller starts and stops, its charge states, the battery's cut-offs and the yield
history, each against the rule it follows (Victron's, for the controller)."""

from __future__ import annotations

from datetime import date

import pytest

from bench_agent.hardware.sim.charging import ChargingSystem
from bench_agent.hardware.sim.params import CHEMISTRIES, BenchParams

DAY = date(2024, 3, 20)
LFP = CHEMISTRIES["lifepo4"]


def charging(**params: object) -> ChargingSystem:
    return ChargingSystem(BenchParams(**params), DAY)  # type: ignore[arg-type]


def state(system: ChargingSystem) -> str:
    """The charge state, read afresh (a type checker would keep the last one seen)."""
    return system.charge_state


def test_the_controller_starts_5_volts_above_the_battery_and_stops_below_1() -> None:
    system = charging()
    v = system.v_batt
    system.switch(v + 4.9, p_available=50.0)
    assert state(system) == "off"
    system.switch(v + 5.1, p_available=0.4)  # the panel's voltage but no power yet
    assert state(system) == "off"
    system.switch(v + 5.1, p_available=0.6)
    assert state(system) == "bulk"
    system.switch(v + 1.1, p_available=0.3)  # dusk: it keeps going down to 1 V and 0.2 W
    assert state(system) == "bulk"
    system.switch(v + 0.9, p_available=50.0)
    assert state(system) == "off"
    system.switch(v + 5.1, p_available=0.6)
    system.switch(v + 6.0, p_available=0.1)
    assert state(system) == "off"


def test_the_bms_opens_at_empty_and_closes_once_there_is_charge_to_give() -> None:
    system = charging(initial_soc_pct=0.0)
    system.switch(0.0, p_available=0.0)
    assert system.bms_open and system.loads_cut
    system.switch(system.v_batt + 6.0, p_available=10.0)
    assert state(system) == "bulk" and not system.bms_open


def test_the_low_voltage_disconnect_has_hysteresis() -> None:
    system = charging()
    for volts, tripped in [(12.1, False), (11.9, True), (12.9, True), (13.0, False)]:
        system.v_batt = volts
        system.integrate(1.0, panel_w=0.0)
        assert system.lvd_tripped is tripped, volts
        assert system.loads_cut is tripped


def test_float_goes_back_to_bulk_after_a_whole_minute_below_float_less_the_offset() -> None:
    system = charging()
    system.charge_state = "float"
    below = LFP.float_volts - LFP.rebulk_offset_volts - 0.01
    system.v_batt = below
    system.integrate(40.0, panel_w=0.0)
    system.v_batt = LFP.float_volts  # back up: the minute starts again
    system.integrate(1.0, panel_w=0.0)
    system.v_batt = below
    system.integrate(40.0, panel_w=0.0)
    assert state(system) == "float"
    system.integrate(20.0, panel_w=0.0)
    assert state(system) == "bulk"


@pytest.mark.parametrize(
    ("soc", "seconds", "expected"),
    [
        (50.0, LFP.absorption_max_s - 1.0, "absorption"),  # still taking current
        (50.0, LFP.absorption_max_s, "float"),  # the time limit
        (99.99, 1.0, "float"),  # the current has tapered below the tail
    ],
)
def test_absorption_ends_on_the_tail_current_or_the_time_limit(
    soc: float, seconds: float, expected: str
) -> None:
    system = charging(initial_soc_pct=soc)
    system.charge_state = "absorption"
    system.v_batt = LFP.absorption_volts  # above the disconnect
    system.integrate(seconds, panel_w=0.0)
    assert state(system) == expected


def test_bulk_hands_over_to_absorption_when_it_would_overshoot() -> None:
    system = charging(initial_soc_pct=99.0)
    system.switch(system.v_batt + 6.0, p_available=200.0)
    i_out, i_out_max = system.solve_battery(load_w=3.0, p_available=200.0)
    assert state(system) == "absorption"
    assert system.v_batt == pytest.approx(LFP.absorption_volts, abs=0.01)
    assert i_out < i_out_max
    system.solve_panel(22.0, 18.0, i_out, i_out_max, p_available=200.0)
    assert system.mppt_mode == "voltage_or_current_limited"
    assert 18.0 < system.v_panel < 22.0  # walked up from the maximum power point


def test_the_yields_roll_over_to_yesterday() -> None:
    system = charging()
    system.i_charger, system.v_batt = 5.0, 13.5
    system.integrate(3600.0, panel_w=80.0)
    today = system.snapshot()
    assert today.yield_today_kwh == pytest.approx(5.0 * 13.5 / 1000, rel=1e-9)
    assert today.max_power_today_w == 80.0
    system.roll_day(date(2024, 3, 21))
    rolled = system.snapshot()
    assert system.day == date(2024, 3, 21)
    assert (rolled.yield_today_kwh, rolled.max_power_today_w) == (0.0, 0.0)
    assert rolled.yield_yesterday_kwh == today.yield_today_kwh
    assert rolled.max_power_yesterday_w == 80.0
    assert rolled.yield_total_kwh == today.yield_total_kwh
