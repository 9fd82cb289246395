"""The simulated bench's physics: sun, charger, battery, loads, determinism and speed."""

from __future__ import annotations

import dataclasses
import itertools
import math
import time
import tomllib
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Literal
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench_agent.config_loader import load_config
from bench_agent.hardware.sim.params import CHEMISTRIES, OUTPUTS, PORTS, BenchParams
from bench_agent.hardware.sim.physics import BenchModel
from bench_agent.power.chemistry import CHEMISTRIES as CHARTS  # the estimator's
from bench_agent.power.policy import decide
from bench_agent.power.policy_config import PolicyConfig
from bench_agent.power.policy_state import PolicyInputs, PolicyState
from bench_agent.power.soc import SocEstimator
from tests.support import dump_toml

JAKARTA = ZoneInfo("Asia/Jakarta")
QUIET = BenchParams(phone_traffic=0.0)  # no random phones: loads are what the test sets
SIM_CONFIG = Path(__file__).resolve().parent.parent / "config" / "sim-bench.toml"


def local_midnight(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=JAKARTA)


def make(params: BenchParams = QUIET, day: date = date(2024, 3, 20), seed: int = 7) -> BenchModel:
    return BenchModel(params, local_midnight(day).astimezone(UTC), seed)


def minutes(model: BenchModel, count: int, every_s: float = 60.0) -> Iterator[datetime]:
    """Advance `count` times by `every_s`, yielding the local time after each."""
    for _ in range(count):
        model.advance(model.now_utc + timedelta(seconds=every_s))
        yield model.now_utc.astimezone(JAKARTA)


# ------------------------------------------------------------------- sun and panel


@pytest.mark.parametrize(
    ("day", "peak_share"),
    # A flat panel at 8° south: the noon sun stands near the zenith in March and December
    # but only 58° high at the June solstice.
    [(date(2024, 3, 20), 0.8), (date(2024, 6, 21), 0.7), (date(2024, 12, 21), 0.8)],
)
def test_clear_day_produces_only_in_daylight_with_a_noon_peak_near_rating(
    day: date, peak_share: float
) -> None:
    params = dataclasses.replace(QUIET, battery_capacity_ah=400.0, initial_soc_pct=20.0)
    model = make(params, day)
    model.set_cloud_cover(0.0)
    producing: list[tuple[datetime, float]] = []
    for now in minutes(model, 24 * 60):
        watts = model.charger_snapshot().panel_watts
        if watts > 0.0:
            producing.append((now, watts))
    first, last = producing[0][0].time(), producing[-1][0].time()
    assert "05:15" <= first.strftime("%H:%M") <= "06:30"
    assert "17:00" <= last.strftime("%H:%M") <= "18:00"
    peak_at, peak_w = max(producing, key=lambda item: item[1])
    assert peak_share * params.panel_wp <= peak_w <= params.panel_wp
    assert "10:30" <= peak_at.strftime("%H:%M") <= "12:45"  # solar noon here is ~11:30


def test_night_is_dark_and_the_charger_off() -> None:
    model = make()
    model.advance(local_midnight(date(2024, 3, 20)).replace(hour=2).astimezone(UTC))
    snap = model.charger_snapshot()
    assert model.sun_elevation_deg < 0
    assert (snap.charge_state, snap.mppt_mode, snap.panel_watts) == ("off", "off", 0.0)
    assert model.channel("solar").current_amps == 0.0
    assert model.channel("battery").current_amps < 0  # the Pi still draws


def test_clouds_cut_the_panel_power() -> None:
    clear, overcast = make(), make()
    clear.set_cloud_cover(0.0)
    overcast.set_cloud_cover(1.0)
    noon = local_midnight(date(2024, 3, 20)).replace(hour=11, minute=30)
    clear.advance(noon)
    overcast.advance(noon)
    assert overcast.irradiance_w_m2 < 0.3 * clear.irradiance_w_m2
    assert overcast.charger_snapshot().panel_watts < 0.3 * clear.charger_snapshot().panel_watts


def test_random_clouds_vary_slowly_within_bounds() -> None:
    model = make(seed=3)
    covers = [model.cloud_cover for _ in minutes(model, 3 * 24 * 60)]
    assert all(0.0 <= c <= 1.0 for c in covers)
    assert max(covers) - min(covers) > 0.5  # it does change over days...
    assert max(abs(a - b) for a, b in itertools.pairwise(covers)) < 0.25  # ...slowly


# ------------------------------------------------------------- charger and battery


def test_charge_states_go_bulk_absorption_float_and_hold_absorption_volts() -> None:
    model = make(dataclasses.replace(QUIET, initial_soc_pct=80.0))
    model.set_cloud_cover(0.0)
    states: list[str] = []
    absorption_volts: list[float] = []
    for _ in minutes(model, 24 * 60):
        snap = model.charger_snapshot()
        if not states or states[-1] != snap.charge_state:
            states.append(snap.charge_state)
        if snap.charge_state == "absorption" and snap.mppt_mode == "voltage_or_current_limited":
            absorption_volts.append(snap.battery_volts)
        if snap.charge_state == "float":
            assert snap.mppt_mode == "voltage_or_current_limited" or snap.panel_watts < 10
            assert snap.panel_watts <= model.panel_available_w + 1e-9
    assert states[:4] == ["off", "bulk", "absorption", "float"]
    assert states[-1] == "off"
    chem = CHEMISTRIES["lifepo4"]
    assert absorption_volts
    assert all(abs(v - chem.absorption_volts) < 0.02 for v in absorption_volts)
    assert model.true_soc_pct > 95.0


def test_a_full_battery_makes_the_controller_hold_the_panel_back() -> None:
    model = make(dataclasses.replace(QUIET, initial_soc_pct=100.0))
    model.set_cloud_cover(0.0)
    model.advance(local_midnight(date(2024, 3, 20)).replace(hour=12))
    snap = model.charger_snapshot()
    assert snap.charge_state in {"absorption", "float"}
    assert snap.panel_watts < 0.3 * model.panel_available_w
    assert snap.panel_volts > 16.5  # walked from Vmp towards Voc


def test_kirchhoff_charger_out_equals_battery_plus_loads() -> None:
    params = dataclasses.replace(QUIET, initial_soc_pct=40.0)
    model = make(params)
    for output in OUTPUTS:
        model.set_output(output, True)
    model.plug_phone("usb1", amps=1.5)
    model.advance(local_midnight(date(2024, 3, 20)).replace(hour=10))
    snap = model.charger_snapshot()
    volts = model.channel("battery").bus_volts
    usb_w = sum(model.channel(p).bus_volts * model.channel(p).current_amps for p in PORTS)
    loads_a = (params.pi_watts + usb_w) / params.converter_efficiency / volts
    loads_a += model.channel("wifi").current_amps
    assert snap.battery_amps > 0
    assert snap.battery_amps == pytest.approx(model.channel("battery").current_amps + loads_a)


def test_energy_balance_charge_change_equals_integrated_current() -> None:
    params = BenchParams(battery_capacity_ah=200.0, initial_soc_pct=50.0, phone_traffic=2.0)
    model = make(params, seed=11)
    for output in OUTPUTS:
        model.set_output(output, True)
    efficiency = CHEMISTRIES["lifepo4"].coulombic_efficiency
    start_ah = model.battery_charge_ah
    integrated_ah = throughput_ah = 0.0
    for _ in minutes(model, 24 * 360, every_s=10.0):
        amps = model.channel("battery").current_amps
        integrated_ah += (amps * efficiency if amps > 0 else amps) * 10.0 / 3600.0
        throughput_ah += abs(amps) * 10.0 / 3600.0
    change_ah = model.battery_charge_ah - start_ah
    assert throughput_ah > 20.0  # a real day went through the battery
    # Tight enough to notice a lost coulombic efficiency (~1 % of the charge put in).
    assert change_ah == pytest.approx(integrated_ah, abs=0.002 * throughput_ah)


def test_soc_is_bounded_and_the_low_voltage_disconnect_cuts_the_loads() -> None:
    model = make(dataclasses.replace(QUIET, battery_capacity_ah=2.0, initial_soc_pct=30.0))
    model.set_soc(150.0)
    assert model.true_soc_pct == 100.0
    model.set_soc(-5.0)
    assert model.true_soc_pct == 0.0
    model.set_soc(30.0)
    model.set_cloud_cover(1.0)
    for output in OUTPUTS:
        model.set_output(output, True)
    model.short_port("usb1", shorted=True)
    tripped = False
    for _ in minutes(model, 6 * 60):  # night, no sun: the loads drain 2 Ah in minutes
        assert 0.0 <= model.true_soc_pct <= 100.0
        if model.lvd_tripped:
            tripped = True
            assert model.channel("wifi").current_amps == 0.0
            assert model.channel("usb1").current_amps == 0.0
    assert tripped
    assert model.true_soc_pct >= 0.0


def test_soc_never_exceeds_100_with_a_huge_panel() -> None:
    params = dataclasses.replace(QUIET, panel_wp=2000.0, battery_capacity_ah=5.0)
    model = make(params)
    model.set_cloud_cover(0.0)
    socs = [model.true_soc_pct for _ in minutes(model, 24 * 60)]
    assert max(socs) <= 100.0
    assert max(socs) > 99.0


def test_agm_uses_its_own_curve_and_voltages() -> None:
    agm = make(dataclasses.replace(QUIET, battery_chemistry="agm", initial_soc_pct=50.0))
    lfp = make(dataclasses.replace(QUIET, initial_soc_pct=50.0))
    assert agm.channel("battery").bus_volts < lfp.channel("battery").bus_volts - 0.5


# ------------------------------------------------------------------------- loads


def test_switching_the_access_point_off_lowers_the_drain() -> None:
    on, off = make(), make()
    on.set_output("wifi", True)
    ten_pm = local_midnight(date(2024, 3, 20)).replace(hour=22)
    on.advance(ten_pm)
    off.advance(ten_pm)
    extra_a = off.channel("battery").current_amps - on.channel("battery").current_amps
    assert extra_a == pytest.approx(QUIET.ap_watts / on.channel("battery").bus_volts, rel=0.02)
    assert on.channel("wifi").current_amps > 0.4
    assert off.channel("wifi") == dataclasses.replace(off.channel("wifi"), bus_volts=0.0)
    assert off.channel("wifi").current_amps == 0.0
    assert on.true_soc_pct < off.true_soc_pct
    on.set_output("wifi", False)  # takes effect at once, not on the next step
    assert on.channel("wifi").current_amps == 0.0


def test_phones_arrive_only_on_ports_that_are_on_and_only_then_draw() -> None:
    model = make(dataclasses.replace(QUIET, phone_traffic=20.0))
    model.set_output("usb1", True)
    model.advance(local_midnight(date(2024, 3, 20)).replace(hour=12))
    seen: list[float] = []
    for _ in minutes(model, 6 * 60):
        assert not model.has_phone("usb2")
        assert model.channel("usb2").current_amps == 0.0
        if model.has_phone("usb1"):
            seen.append(model.channel("usb1").current_amps)
    assert len(seen) > 60
    assert max(seen) <= 2.1
    assert max(seen) >= 1.0


def test_phone_arrivals_follow_the_time_of_day() -> None:
    model = make(dataclasses.replace(QUIET, phone_traffic=2.0), seed=5)
    for port in PORTS:
        model.set_output(port, True)
    arrivals_by_hour = [0] * 24
    plugged = dict.fromkeys(PORTS, False)
    for now in minutes(model, 7 * 24 * 60):
        for port in PORTS:
            if model.has_phone(port) and not plugged[port]:
                arrivals_by_hour[now.hour] += 1
            plugged[port] = model.has_phone(port)
    assert sum(arrivals_by_hour[1:5]) == 0  # nobody at 3 am
    afternoon, morning = sum(arrivals_by_hour[15:20]), sum(arrivals_by_hour[7:12])
    assert afternoon > 1.5 * morning > 0  # busy afternoons and evenings


def test_a_phone_charges_at_constant_current_then_tapers_and_leaves_when_full() -> None:
    model = make()
    model.set_output("usb2", True)
    model.plug_phone("usb2", amps=2.0)
    assert model.channel("usb2").current_amps == 2.0
    assert model.channel("usb2").bus_volts == pytest.approx(5.0, abs=0.1)
    currents = []
    for _ in minutes(model, 6 * 60):
        if not model.has_phone("usb2"):
            break
        currents.append(model.channel("usb2").current_amps)
    else:
        pytest.fail("the phone never filled")
    assert currents[0] == 2.0
    assert min(currents) < 0.5  # tapered near full
    assert all(a >= b - 1e-9 for a, b in itertools.pairwise(currents))
    assert model.channel("usb2").current_amps == 0.0


def test_a_port_switched_off_draws_nothing_even_with_a_phone() -> None:
    model = make()
    model.plug_phone("usb1", amps=1.2)
    assert model.channel("usb1").current_amps == 0.0
    assert model.channel("usb1").bus_volts == 0.0
    model.set_output("usb1", True)
    assert model.channel("usb1").current_amps == pytest.approx(1.2)
    model.unplug_phone("usb1")
    assert model.channel("usb1").current_amps == 0.0


def test_a_shorted_port_draws_a_large_current_only_while_on() -> None:
    model = make()
    model.set_output("usb1", True)
    drain_before = model.channel("battery").current_amps
    model.short_port("usb1", shorted=True)
    assert model.channel("usb1").current_amps == QUIET.short_amps
    assert model.channel("usb1").bus_volts < 1.0
    assert model.channel("battery").current_amps < drain_before
    model.set_output("usb1", False)
    assert model.channel("usb1").current_amps == 0.0
    model.set_output("usb1", True)
    model.short_port("usb1", shorted=False)
    assert model.channel("usb1").current_amps == 0.0


def test_temperatures_follow_the_day_and_the_cpu_runs_hotter() -> None:
    model = make()
    model.set_cloud_cover(0.0)
    model.advance(local_midnight(date(2024, 3, 20)).replace(hour=5))
    dawn = model.enclosure_temp_c
    model.advance(local_midnight(date(2024, 3, 20)).replace(hour=14))
    afternoon = model.enclosure_temp_c
    assert 20.0 < dawn < 28.0
    assert afternoon > dawn + 8.0
    assert model.cpu_temp_c > model.enclosure_temp_c


# ------------------------------------------------------------ counters and time


def test_yields_roll_over_at_local_midnight() -> None:
    model = make()
    model.set_cloud_cover(0.0)
    first_midnight = local_midnight(date(2024, 3, 21))
    model.advance(first_midnight - timedelta(minutes=1))
    day_one = model.charger_snapshot()
    assert day_one.yield_today_kwh > 0.2
    assert day_one.max_power_today_w > 50.0
    model.advance(first_midnight + timedelta(minutes=1))
    after = model.charger_snapshot()
    assert after.yield_today_kwh == 0.0
    assert after.max_power_today_w == 0.0
    assert after.yield_yesterday_kwh == pytest.approx(day_one.yield_today_kwh)
    assert after.max_power_yesterday_w == day_one.max_power_today_w
    assert after.yield_total_kwh == pytest.approx(day_one.yield_total_kwh)
    assert after.error == "no_error"


def test_the_same_seed_gives_the_same_bench_and_another_seed_another() -> None:
    def run(seed: int) -> list[tuple[float, ...]]:
        model = make(BenchParams(), seed=seed)
        for output in OUTPUTS:
            model.set_output(output, True)
        trace = []
        for _ in minutes(model, 24 * 12, every_s=300.0):
            snap = model.charger_snapshot()
            usb = [model.channel(p).current_amps for p in PORTS]
            trace.append((model.cloud_cover, snap.panel_watts, model.true_soc_pct, *usb))
        return trace

    assert run(1) == run(1)
    assert run(1) != run(2)


def test_a_whole_day_in_one_call_is_fast_and_matches_many_small_steps() -> None:
    params = BenchParams(initial_soc_pct=40.0)
    big, small = make(params, seed=9), make(params, seed=9)
    for model in (big, small):
        for output in OUTPUTS:
            model.set_output(output, True)
    end = local_midnight(date(2024, 3, 21))
    began = time.perf_counter()
    big.advance(end)
    elapsed = time.perf_counter() - began
    while small.now_utc < end:
        small.advance(min(end, small.now_utc + timedelta(seconds=7)))
    assert elapsed < 1.0
    assert big.now_utc == small.now_utc
    assert big.true_soc_pct == pytest.approx(small.true_soc_pct, abs=0.5)
    big_yield = big.charger_snapshot().yield_yesterday_kwh
    assert big_yield == pytest.approx(small.charger_snapshot().yield_yesterday_kwh, rel=0.02)
    assert big_yield > 0.1


def test_time_never_runs_backwards_and_naive_times_are_refused() -> None:
    model = make()
    noon = local_midnight(date(2024, 3, 20)).replace(hour=12)
    model.advance(noon)
    soc = model.true_soc_pct
    model.advance(noon - timedelta(hours=3))
    assert model.now_utc == noon
    assert model.true_soc_pct == soc
    with pytest.raises(ValueError, match="aware"):
        model.advance(datetime(2024, 3, 20, 13))
    with pytest.raises(ValueError, match="aware"):
        BenchModel(QUIET, datetime(2024, 3, 20), 1)


@pytest.mark.parametrize(
    ("call", "args"),
    [
        ("set_output", ("usb3", True)),
        ("channel", ("usb9",)),
        ("plug_phone", ("wifi",)),
        ("plug_phone", ("usb1", 9.0)),
        ("short_port", ("solar", True)),
        ("set_cloud_cover", (1.5,)),
    ],
)
def test_bad_names_and_values_are_refused(call: str, args: tuple[object, ...]) -> None:
    with pytest.raises(ValueError):
        getattr(make(), call)(*args)


@pytest.mark.parametrize(
    "change",
    [
        {"panel_wp": 0.0},
        {"battery_capacity_ah": -1.0},
        {"charger_efficiency": 1.2},
        {"panel_voc_volts": 10.0},
        {"battery_chemistry": "nicad"},
        {"initial_soc_pct": 101.0},
        {"step_s": 120.0},
        {"timezone": "Mars/Olympus"},
    ],
)
def test_bad_params_are_refused(change: dict[str, object]) -> None:
    with pytest.raises((ValueError, KeyError)):
        dataclasses.replace(QUIET, **change)  # type: ignore[arg-type]


_ops = st.one_of(
    st.tuples(st.just("output"), st.sampled_from(OUTPUTS), st.booleans()),
    st.tuples(st.just("short"), st.sampled_from(PORTS), st.booleans()),
    st.tuples(st.just("plug"), st.sampled_from(PORTS), st.floats(0.1, 3.0)),
    st.tuples(st.just("soc"), st.floats(-10.0, 110.0)),
    st.tuples(st.just("advance"), st.floats(1.0, 6 * 3600.0)),
)


@settings(max_examples=30, deadline=None)
@given(st.lists(_ops, max_size=12), st.integers(0, 2**32))
def test_invariants_hold_whatever_the_script(ops: list[tuple[object, ...]], seed: int) -> None:
    model = make(BenchParams(battery_capacity_ah=10.0), seed=seed)
    for op in ops:
        kind = op[0]
        if kind == "output":
            model.set_output(str(op[1]), bool(op[2]))
        elif kind == "short":
            model.short_port(str(op[1]), bool(op[2]))
        elif kind == "plug":
            model.plug_phone(str(op[1]), float(op[2]))  # type: ignore[arg-type]
        elif kind == "soc":
            model.set_soc(float(op[1]))  # type: ignore[arg-type]
        else:
            model.advance(model.now_utc + timedelta(seconds=float(op[1])))  # type: ignore[arg-type]
        assert 0.0 <= model.true_soc_pct <= 100.0
        for port in PORTS:
            amps = model.channel(port).current_amps
            assert amps >= 0.0
            if not model.output(port):
                assert amps == 0.0
        values = [model.channel(name).bus_volts for name in ("solar", "battery", "wifi")]
        assert all(math.isfinite(v) and v >= 0 for v in values)


# -------------------------------------------- the battery the agent's estimator reads


@pytest.mark.parametrize("chemistry", ["lifepo4", "agm"])
@pytest.mark.parametrize("soc_pct", [3.0, 15.0, 18.0, 30.0, 45.0, 70.0, 95.0])
def test_the_model_battery_follows_the_estimators_chart(chemistry: str, soc_pct: float) -> None:
    """One chart for both: a rested model battery reads, through the agent's own curve
    and after the I·R of the Pi's small load, exactly its true state of charge."""
    chem: Literal["lifepo4", "agm"] = "agm" if chemistry == "agm" else "lifepo4"
    params = dataclasses.replace(QUIET, battery_chemistry=chem, initial_soc_pct=soc_pct)
    model = make(params)
    model.advance(model.now_utc + timedelta(minutes=1))  # midnight: no sun, the Pi only
    battery = model.channel("battery")
    r_ohm = CHEMISTRIES[chemistry].resistance_ohm_ah / params.battery_capacity_ah
    ocv = battery.bus_volts - battery.current_amps * r_ohm
    assert battery.current_amps < 0
    assert CHARTS[chemistry].pct_at(ocv) == pytest.approx(model.true_soc_pct, abs=0.01)


def test_an_ocv_offset_shifts_the_battery_by_exactly_that() -> None:
    plain = make(dataclasses.replace(QUIET, initial_soc_pct=50.0))
    shifted = make(dataclasses.replace(QUIET, initial_soc_pct=50.0, ocv_offset_volts=0.03))
    volts = [m.channel("battery").bus_volts for m in (plain, shifted)]
    # (the constant-power loads draw a hair less at the higher voltage)
    assert volts[1] - volts[0] == pytest.approx(0.03, abs=1e-4)
    for bad in (0.6, -0.51, math.nan):
        with pytest.raises(ValueError, match="ocv_offset_volts"):
            dataclasses.replace(QUIET, ocv_offset_volts=bad)


@dataclasses.dataclass
class Night:
    """The model, the agent's estimator and its policy, one sample a minute."""

    model: BenchModel
    est: SocEstimator
    policy: PolicyConfig
    state: PolicyState = dataclasses.field(default_factory=PolicyState)
    switched: list[tuple[datetime, str, bool, str, float]] = dataclasses.field(
        default_factory=list
    )  # (local time, output, on, reason, true state of charge)
    lvd_at: datetime | None = None

    def run(self, minutes: int, every_hour: Callable[[BenchModel], None] | None = None) -> None:
        for _ in range(minutes):
            self.model.advance(self.model.now_utc + timedelta(seconds=60))
            local = self.model.now_utc.astimezone(JAKARTA)
            if every_hour is not None and local.minute == 0:
                every_hour(self.model)
            battery = self.model.channel("battery")
            self.est.update(battery.current_amps, battery.bus_volts, 60.0)
            inputs = PolicyInputs(
                now_local=local,
                mono_s=self.model.now_utc.timestamp(),
                soc_pct=self.est.soc_pct,
                battery_volts=battery.bus_volts,
                battery_amps=battery.current_amps,
                port_amps={p: self.model.channel(p).current_amps for p in PORTS},
                enclosure_c=None,
                cpu_c=None,
            )
            self.state, decisions = decide(self.policy, inputs, self.state)
            for output, decision in decisions.items():
                if self.model.output(output) != decision.on:
                    self.model.set_output(output, decision.on)
                    self.switched.append(
                        (local, output, decision.on, decision.reason, self.model.true_soc_pct)
                    )
            if self.model.lvd_tripped:
                # The charge controller's disconnect may come, once the Pi alone has
                # drained what was left; it must never be what cut a load the agent
                # still had on.
                assert not any(self.model.output(o) for o in OUTPUTS), (local, self.switched)
                self.lvd_at = self.lvd_at or local

    def first_off(self, output: str) -> tuple[datetime, str, bool, str, float]:
        return next(s for s in self.switched if s[1] == output and not s[2])


def evening(chemistry: str, seed: int = 7) -> BenchModel:
    chem: Literal["lifepo4", "agm"] = "agm" if chemistry == "agm" else "lifepo4"
    params = dataclasses.replace(BenchParams(), battery_chemistry=chem, initial_soc_pct=55.0)
    model = BenchModel(params, datetime(2026, 11, 27, 19, tzinfo=JAKARTA), seed)
    for output in OUTPUTS:
        model.set_output(output, True)
    return model


def agent_policy(tmp_path: Path, chemistry: str) -> PolicyConfig:
    """The policy the shipped simulated bench gets, with the [policy.battery] defaults."""
    data = tomllib.loads(SIM_CONFIG.read_text())
    data["battery"]["chemistry"] = chemistry
    data["sim"]["scenario"] = str(SIM_CONFIG.parent / data["sim"]["scenario"])
    (tmp_path / "bench.toml").write_text(dump_toml(data))
    return load_config(tmp_path / "bench.toml").policy


def test_a_battery_holding_far_less_than_counted_is_found_by_the_night_load(
    tmp_path: Path,
) -> None:
    """issue 4, on the physics alone: demo.toml's ageing battery (the charge falls to
    18 % at 19:10 while the count says 55 %). The hotspot and the Pi are a rest now, so
    the estimate meets the voltage within the half hour and sheds the hotspot itself."""
    model = evening("lifepo4")
    night = Night(model, SocEstimator(50.0, "lifepo4", 55.0), agent_policy(tmp_path, "lifepo4"))
    night.run(10)
    model.set_soc(18.0)
    night.run(10 * 60)
    when, _, _, reason, true_soc = night.first_off("wifi")
    assert reason == "battery_low"
    assert when.hour == 19 and 15.0 < true_soc < 18.0
    assert night.est.soc_pct is not None
    assert night.est.soc_pct == pytest.approx(model.true_soc_pct, abs=1.5)


def plug_two_phones(model: BenchModel) -> None:
    for port in PORTS:
        if model.output(port) and not model.has_phone(port):
            model.plug_phone(port, amps=2.0)


@pytest.mark.parametrize("chemistry", ["lifepo4", "agm"])
def test_the_voltage_net_sheds_before_the_low_voltage_disconnect_when_the_count_is_wrong(
    tmp_path: Path, chemistry: str
) -> None:
    """An estimate that never meets the voltage (here: no rest is ever long enough) and
    says 55 % all night, phones on both ports every hour: the battery's own voltage
    sheds the hotspot, then the ports, above the charge controller's low-voltage
    disconnect (which would cut the Pi too); each once, no flapping."""
    model = evening(chemistry)
    blind = SocEstimator(50.0, chemistry, 55.0, rest_s=1e12)
    policy = agent_policy(tmp_path, chemistry)
    night = Night(model, blind, policy)
    model.set_soc(25.0)
    night.run(11 * 60, every_hour=plug_two_phones)  # 19:00 to 06:00
    assert blind.soc_pct is not None and blind.soc_pct > 30.0  # the estimate never shed
    wifi, usb1, usb2 = (night.first_off(o) for o in ("wifi", "usb1", "usb2"))
    assert wifi[3] == usb1[3] == usb2[3] == "battery_voltage_low"
    assert wifi[0] <= usb1[0] == usb2[0]
    chart = CHARTS[chemistry]
    wifi_off_below_volts, usb_off_below_volts = (v.off_below_volts for v in policy.battery.loads)
    assert wifi_off_below_volts is not None and usb_off_below_volts is not None
    # shed near where the levels say (the true charge, on the shared chart; the 90 s
    # delay and the I·R left uncorrected under two phones are worth a point or two)
    assert wifi[4] == pytest.approx(chart.pct_at(wifi_off_below_volts), abs=3.0)
    assert usb1[4] == pytest.approx(chart.pct_at(usb_off_below_volts), abs=3.0)
    # each output switched exactly once (off), and never back on during the night
    assert sorted((o, on) for _, o, on, _, _ in night.switched) == [
        ("usb1", False),
        ("usb2", False),
        ("wifi", False),
    ]
    if night.lvd_at is not None:
        assert night.lvd_at > usb1[0] + timedelta(hours=1)
