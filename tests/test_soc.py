"""State-of-charge estimation against a simulated battery whose true charge is known."""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass, replace
from typing import Any

import pytest

from bench_agent.power.chemistry import AGM_12V, LIFEPO4_12V, Chemistry
from bench_agent.power.soc import SocEstimator

CAPACITY_AH = 100.0
# The simulated batteries are a little less efficient than the estimator assumes.
TRUE_EFFICIENCY = {"lifepo4": 0.97, "agm": 0.85}


@dataclass
class SimBattery:
    """A simple battery: true charge integrated from the current, voltage = OCV + I·R.

    Near full the charger holds its absorption voltage and the current tapers to zero
    at 100 %, as a real CV charge does. Its efficiency differs from the estimator's
    default on purpose, so the estimator is not just replaying our own arithmetic.
    """

    chemistry: Chemistry
    soc_pct: float
    capacity_ah: float = CAPACITY_AH
    r_ohm: float = 0.02
    efficiency: float = 0.97  # tests pass TRUE_EFFICIENCY for the chemistry
    absorption_v: float = 14.3
    taper_from_pct: float = 98.0

    def step(self, available_amps: float, dt_s: float) -> tuple[float, float]:
        """Apply ``available_amps`` (+ charge) for dt_s; return (battery amps, terminal volts)."""
        amps = available_amps
        volts = self.chemistry_ocv() + amps * self.r_ohm
        if amps > 0 and self.soc_pct >= self.taper_from_pct:
            amps *= (100.0 - self.soc_pct) / (100.0 - self.taper_from_pct)
            volts = self.absorption_v
        ah = amps * dt_s / 3600.0
        stored = ah * self.efficiency if ah > 0 else ah
        self.soc_pct = min(100.0, max(0.0, self.soc_pct + 100.0 * stored / self.capacity_ah))
        return amps, volts

    def chemistry_ocv(self) -> float:
        """Invert the chemistry's OCV curve: rested volts at the true state of charge."""
        curve = self.chemistry.ocv_curve
        for (v0, p0), (v1, p1) in itertools.pairwise(curve):
            if self.soc_pct <= p1:
                return v0 + (self.soc_pct - p0) * (v1 - v0) / (p1 - p0)
        return curve[-1][0]


def bench_current(t_s: float) -> float:
    """Net battery current (A, + = charging) of a bench over a day, t_s from midnight."""
    hour = (t_s / 3600.0) % 24.0
    load = 0.75  # Pi and access point, all day: below C/100, so the night is "rest"
    if 18.0 <= hour < 23.0:
        load += 2.5  # phones on the USB ports in the evening
    if 10.0 <= hour < 11.0:
        load += 1.5  # a few daytime chargers
    solar = 0.0
    if 6.0 <= hour < 18.0:
        solar = 9.0 * math.sin(math.pi * (hour - 6.0) / 12.0)
        if 13.0 <= hour < 14.0:
            solar *= 0.3  # a cloud
    return solar - load


def simulate(
    battery: SimBattery,
    est: SocEstimator,
    seconds: float,
    *,
    dt_s: float = 10.0,
    start_s: float = 0.0,
    gain: float = 1.01,
    offset_a: float = 0.02,
) -> list[float]:
    """Run the bench; the estimator sees a current sensor with gain and offset error.

    Returns |estimate - truth| after every step.
    """
    errors = []
    t = start_s
    while t < start_s + seconds:
        amps, volts = battery.step(bench_current(t), dt_s)
        est.update(amps * gain + offset_a, volts, dt_s)
        assert est.soc_pct is not None
        errors.append(abs(est.soc_pct - battery.soc_pct))
        t += dt_s
    return errors


# --------------------------------------------------------------------------- curves


@pytest.mark.parametrize(
    ("chemistry", "volts", "pct"),
    [
        (LIFEPO4_12V, 13.60, 100.0),
        (LIFEPO4_12V, 14.40, 100.0),  # above the curve: clamped
        (LIFEPO4_12V, 13.025, 45.0),  # halfway between 13.00 (40 %) and 13.05 (50 %)
        (LIFEPO4_12V, 12.80, 20.0),
        (LIFEPO4_12V, 10.00, 0.0),
        (LIFEPO4_12V, 8.00, 0.0),
        (AGM_12V, 12.85, 100.0),
        (AGM_12V, 12.30, 50.0),
        (AGM_12V, 12.36, 55.0),
        (AGM_12V, 11.60, 0.0),
        (AGM_12V, 11.00, 0.0),
    ],
)
def test_ocv_curve_interpolation(chemistry: Chemistry, volts: float, pct: float) -> None:
    assert chemistry.pct_at(volts) == pytest.approx(pct, abs=1e-9)


def test_lifepo4_plateau_is_flatter_than_agm() -> None:
    assert LIFEPO4_12V.volts_per_pct(13.02) < AGM_12V.volts_per_pct(12.30) / 2


@pytest.mark.parametrize(
    "change",
    [
        {"ocv_curve": ((12.0, 0.0),)},
        {"ocv_curve": ((12.0, 0.0), (11.0, 100.0))},
        {"ocv_curve": ((12.0, 0.0), (13.0, 50.0), (13.5, 50.0), (14.0, 100.0))},
        {"ocv_curve": ((12.0, 10.0), (13.0, 100.0))},
        {"ocv_curve": ((12.0, 0.0), (math.nan, 100.0))},
        {"charge_efficiency": 1.2},
        {"tail_current_c": 0.0},
        {"rest_s": 0.0},
    ],
)
def test_bad_chemistry_is_refused(change: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        replace(AGM_12V, **change)


# --------------------------------------------------------------------------- counting


@pytest.mark.parametrize(
    ("start", "amps", "hours", "expected"),
    [
        (50.0, 10.0, 1.0, 50.0 + 10.0 * 0.88),  # charge loses the efficiency
        (50.0, -10.0, 1.0, 40.0),  # discharge does not
        (95.0, 10.0, 2.0, 100.0),  # clamped at full
        (5.0, -10.0, 2.0, 0.0),  # clamped at empty
    ],
)
def test_coulomb_counting(start: float, amps: float, hours: float, expected: float) -> None:
    est = SocEstimator(CAPACITY_AH, "agm", start, charged_detect_s=1e9)
    for _ in range(int(hours * 60)):
        est.update(amps, 12.3, 60.0)  # a mid-curve voltage that anchors nothing
    assert est.soc_pct == pytest.approx(expected, abs=1e-6)
    assert est.source == "coulomb"
    assert est.ah_since_anchor == pytest.approx(abs(amps) * hours)


@pytest.mark.parametrize(
    ("amps", "volts", "dt_s"),
    [(math.nan, 12.0, 1.0), (1.0, math.inf, 1.0), (1.0, 12.0, -1.0), (1.0, 12.0, math.nan)],
)
def test_bad_samples_are_refused_and_change_nothing(amps: float, volts: float, dt_s: float) -> None:
    est = SocEstimator(CAPACITY_AH, "lifepo4", 50.0)
    with pytest.raises(ValueError):
        est.update(amps, volts, dt_s)
    assert est.soc_pct == 50.0


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [
        ((0.0, "agm"), {}),
        ((100.0, "nicd"), {}),
        ((100.0, "agm", 101.0), {}),
        ((100.0, "agm", math.nan), {}),
        ((100.0, "agm"), {"rest_s": 0.0}),
        ((100.0, "agm"), {"drift_fraction": -0.1}),
    ],
)
def test_bad_estimator_arguments(args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        SocEstimator(*args, **kwargs)


# --------------------------------------------------------------------------- against the truth


@pytest.mark.parametrize("chemistry", [LIFEPO4_12V, AGM_12V], ids=lambda c: c.name)
@pytest.mark.parametrize("start_pct", [35.0, 70.0])
def test_tracks_the_truth_over_two_synthetic_days(chemistry: Chemistry, start_pct: float) -> None:
    battery = SimBattery(chemistry, start_pct, efficiency=TRUE_EFFICIENCY[chemistry.name])
    est = SocEstimator(CAPACITY_AH, chemistry, start_pct)
    errors = simulate(battery, est, seconds=2 * 86400)
    assert max(errors) < 3.0
    assert errors[-1] < 2.0


@pytest.mark.parametrize("chemistry", [LIFEPO4_12V, AGM_12V], ids=lambda c: c.name)
def test_counting_alone_would_drift_where_anchors_do_not(chemistry: Chemistry) -> None:
    """Three days with a 3 % current-sensor gain error: the anchors keep the error bounded."""
    eff = TRUE_EFFICIENCY[chemistry.name]
    truth_a, truth_b = (
        SimBattery(chemistry, 35.0, efficiency=eff),
        SimBattery(chemistry, 35.0, efficiency=eff),
    )
    anchored = SocEstimator(CAPACITY_AH, chemistry, 35.0)
    counting = SocEstimator(CAPACITY_AH, chemistry, 35.0, rest_s=1e12, charged_detect_s=1e12)
    err_anchored = simulate(truth_a, anchored, 3 * 86400, gain=1.03)
    err_counting = simulate(truth_b, counting, 3 * 86400, gain=1.03)
    # 3.5, was 3.0: the night anchors now correct the voltage for the 0.75 A night load
    # (I·R) and land on the truth, where they used to read ~1 % low; that low reading
    # happened to offset the +3 % gain error's daytime drift, so the afternoon peak is
    # now ~3.1 %, all of it counted since the morning (AGM has no anchor by day).
    assert max(err_anchored) < 3.5
    assert max(err_counting) > 4.0
    assert max(err_counting) > 1.5 * max(err_anchored)


@pytest.mark.parametrize("chemistry", [LIFEPO4_12V, AGM_12V], ids=lambda c: c.name)
@pytest.mark.parametrize(("truth", "guess"), [(40.0, 80.0), (75.0, 30.0), (20.0, 60.0)])
def test_rest_anchor_corrects_a_wrong_initial_guess(
    chemistry: Chemistry, truth: float, guess: float
) -> None:
    battery = SimBattery(chemistry, truth, efficiency=TRUE_EFFICIENCY[chemistry.name])
    est = SocEstimator(CAPACITY_AH, chemistry, guess)
    rest_steps = int(chemistry.rest_s // 60)
    for _ in range(rest_steps - 1):
        amps, volts = battery.step(-0.5, 60.0)  # night: the Pi only
        est.update(amps, volts, 60.0)
    assert est.soc_pct is not None
    assert abs(est.soc_pct - battery.soc_pct) > 9.0  # not yet rested long enough
    amps, volts = battery.step(-0.5, 60.0)
    est.update(amps, volts, 60.0)
    # The I·R drop of the 0.5 A rest load reads low; on LiFePO4's flat plateau that is
    # worth a few %, which is also why a plateau anchor is weighed lightly.
    tolerance = 4.0 if chemistry is LIFEPO4_12V else 2.0
    assert est.soc_pct == pytest.approx(battery.soc_pct, abs=tolerance)
    assert est.source == "voltage_anchor"
    assert est.ah_since_anchor == 0.0


def test_a_load_resets_the_rest_timer() -> None:
    est = SocEstimator(CAPACITY_AH, AGM_12V, 80.0, rest_s=600.0)
    for i in range(20):
        amps = -5.0 if i == 5 else -0.5  # one sample under load in the middle
        est.update(amps, 12.17, 60.0)  # 40 % on the curve
    assert est.soc_pct is not None
    assert est.soc_pct == pytest.approx(40.0, abs=3.0)  # anchored, but only once rested
    est2 = SocEstimator(CAPACITY_AH, AGM_12V, 80.0, rest_s=600.0)
    for i in range(12):
        est2.update(-5.0 if i == 5 else -0.5, 12.17, 60.0)
    assert est2.soc_pct is not None
    assert est2.soc_pct > 70.0  # 6 quiet minutes after the load: not yet


@pytest.mark.parametrize("chemistry", [LIFEPO4_12V, AGM_12V], ids=lambda c: c.name)
def test_full_charge_anchor(chemistry: Chemistry) -> None:
    battery = SimBattery(chemistry, 90.0)
    est = SocEstimator(CAPACITY_AH, chemistry, 60.0)  # badly wrong
    for _ in range(3 * 360):  # three hours of strong sun at 10 s steps
        amps, volts = battery.step(8.0, 10.0)
        est.update(amps, volts, 10.0)
    assert est.soc_pct == 100.0
    assert battery.soc_pct > 99.0
    assert est.source == "voltage_anchor"
    assert est.confidence > 0.95


def test_no_full_anchor_while_current_is_still_high() -> None:
    est = SocEstimator(CAPACITY_AH, LIFEPO4_12V, 80.0)
    for _ in range(60):
        est.update(10.0, 14.2, 10.0)  # bulk charge: high voltage but 10 A > 4 % C
    assert est.soc_pct is not None
    assert est.soc_pct < 85.0


def test_confidence_falls_with_amp_hours_counted() -> None:
    est = SocEstimator(CAPACITY_AH, "agm")
    est.from_bmv(90.0)
    confidences = [est.confidence]
    for _ in range(8):
        for _ in range(60):
            est.update(-10.0, 12.3, 60.0)  # 10 Ah per hour
        confidences.append(est.confidence)
    assert confidences[0] > 0.95
    assert all(b < a for a, b in itertools.pairwise(confidences))
    assert confidences[-1] < 0.9


def test_unknown_start_is_seeded_from_voltage_with_low_confidence() -> None:
    est = SocEstimator(CAPACITY_AH, "agm")
    assert est.soc_pct is None
    assert est.confidence == 0.0
    est.update(-0.2, 12.30, 1.0)
    assert est.soc_pct == pytest.approx(50.0, abs=0.1)
    assert est.confidence < 0.2


@pytest.mark.parametrize("value", [-1.0, 100.5, math.nan])
def test_bmv_override_and_its_bounds(value: float) -> None:
    est = SocEstimator(CAPACITY_AH, "lifepo4", 30.0)
    est.from_bmv(64.5)
    assert (est.soc_pct, est.source) == (64.5, "bmv")
    with pytest.raises(ValueError):
        est.from_bmv(value)
    assert est.soc_pct == 64.5


# --------------------------------------------------------------------------- persistence


@pytest.mark.parametrize("chemistry", [LIFEPO4_12V, AGM_12V], ids=lambda c: c.name)
def test_persistence_round_trip(chemistry: Chemistry) -> None:
    battery = SimBattery(chemistry, 55.0)
    est = SocEstimator(CAPACITY_AH, chemistry, 50.0, rest_s=900.0)
    simulate(battery, est, seconds=8 * 3600, start_s=12 * 3600)
    restored = SocEstimator.from_dict(json.loads(json.dumps(est.to_dict())))
    for attr in ("soc_pct", "uncertainty_pct", "confidence", "source", "ah_since_anchor"):
        assert getattr(restored, attr) == getattr(est, attr), attr
    assert restored.chemistry == chemistry
    assert restored.rest_s == 900.0
    # And both go on identically while counting. (Above C/20: a lighter load would be
    # a rest, and rest timers deliberately start over after a restart.)
    for _ in range(30):
        est.update(-6.0, 12.5, 60.0)
        restored.update(-6.0, 12.5, 60.0)
    assert restored.to_dict() == est.to_dict()


def test_unknown_soc_round_trips() -> None:
    restored = SocEstimator.from_dict(SocEstimator(CAPACITY_AH, "agm").to_dict())
    assert restored.soc_pct is None


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d.update(v=2),
        lambda d: d.pop("soc_pct"),
        lambda d: d.update(soc_pct=140.0),
        lambda d: d.update(anchor="guess"),
        lambda d: d.update(uncertainty_pct=-1.0),
        lambda d: d["chemistry"].pop("ocv_curve"),
        lambda d: d["chemistry"].update(ocv_curve=[[13.0, 0.0], [12.0, 100.0]]),
        lambda d: d.update(capacity_ah="lots"),
    ],
)
def test_bad_persisted_state_is_refused(mutate: Any) -> None:
    data = SocEstimator(CAPACITY_AH, "agm", 50.0).to_dict()
    mutate(data)
    with pytest.raises(ValueError):
        SocEstimator.from_dict(data)


# --------------------------------------------------------------------------- light steady loads


def night(
    battery: SimBattery, est: SocEstimator, minutes: int, amps: float | list[float]
) -> list[float]:
    """`minutes` of a discharge (one sample a minute); the estimate after each."""
    out = []
    for i in range(minutes):
        load = amps[i] if isinstance(amps, list) else amps
        got, volts = battery.step(load, 60.0)
        est.update(got, volts, 60.0)
        assert est.soc_pct is not None
        out.append(est.soc_pct)
    return out


@pytest.mark.parametrize(
    ("rest_current_c", "anchored"),
    [
        (0.05, True),  # the default, C/20: the bench's own night load is a rest
        (0.01, False),  # true rest only, as before: the estimate never meets the voltage
    ],
)
def test_the_benchs_own_night_load_re_anchors_a_count_gone_wrong(
    rest_current_c: float, anchored: bool
) -> None:
    """issue 4: a 50 Ah battery holding 18 % while the count says 55 % (ageing, or a
    drifted count), the Pi and the hotspot drawing 0.68 A, above C/100."""
    battery = SimBattery(LIFEPO4_12V, 18.0, capacity_ah=50.0, r_ohm=0.02)
    est = SocEstimator(50.0, LIFEPO4_12V, 55.0, rest_current_c=rest_current_c)
    assert night(battery, est, 29, -0.68)[-1] > 50.0  # not settled for rest_s (30 min) yet
    night(battery, est, 1, -0.68)
    assert est.soc_pct is not None
    if anchored:
        assert est.soc_pct == pytest.approx(battery.soc_pct, abs=1.0)
        assert est.source == "voltage_anchor"
        night(battery, est, 6 * 60, -0.68)  # and stays with the truth all night
        assert est.soc_pct == pytest.approx(battery.soc_pct, abs=1.0)
    else:
        night(battery, est, 6 * 60, -0.68)
        assert est.soc_pct > 45.0
        assert est.source == "coulomb"


def test_the_anchor_corrects_the_voltage_for_the_load() -> None:
    """On the steep part of the curve a 2 A load's I·R drop (40 mV) is worth 0.5 %; the
    correction puts the reading on the truth, none reads low by the drop."""
    results = {}
    for r_ohm in (0.02, 0.0):
        battery = SimBattery(LIFEPO4_12V, 15.0, capacity_ah=50.0, r_ohm=0.04)
        est = SocEstimator(50.0, LIFEPO4_12V, 25.0, resistance_ohm=r_ohm)  # a guess
        night(battery, est, 30, -2.0)
        assert est.source == "voltage_anchor"
        assert est.soc_pct is not None
        results[r_ohm] = est.soc_pct - battery.soc_pct
    # 0.04 Ω in truth: corrected by half, half the error; uncorrected, all of it
    assert abs(results[0.02]) < 0.5 * abs(results[0.0])
    assert results[0.0] < -0.5


@pytest.mark.parametrize(
    ("case", "loads", "anchored"),
    [
        ("steady hotspot and Pi", [-0.68] * 35, True),
        # one phone plugged in (+0.67 A at 12 V) is within C/40 (1.25 A): same rest
        ("a phone comes", [-0.68] * 15 + [-1.35] * 20, True),
        # the hotspot and two phones (+1.6 A): the voltage must settle again
        ("two phones come", [-0.68] * 15 + [-2.3] * 20, False),
        ("two phones, then settled", [-0.68] * 15 + [-2.3] * 31, True),
        # above C/20 (2.5 A) is a load, not a rest
        ("a heavy load", [-2.6] * 60, False),
        # a light charge never counts: charging reads high (polarisation)
        ("the sun rises", [-0.68] * 10 + [0.3 + 0.02 * i for i in range(30)], False),
        ("a light charge", [0.6] * 60, False),
        ("true rest", [-0.2] * 31, True),
    ],
)
def test_what_counts_as_rest(case: str, loads: list[float], anchored: bool) -> None:
    battery = SimBattery(LIFEPO4_12V, 15.0, capacity_ah=50.0)
    est = SocEstimator(50.0, LIFEPO4_12V, 40.0)
    night(battery, est, len(loads), loads)
    assert (est.source == "voltage_anchor") is anchored, case
    assert est.soc_pct is not None
    assert (abs(est.soc_pct - battery.soc_pct) < 3.0) is anchored, case


def test_readings_within_one_rest_replace_each_other_instead_of_piling_up() -> None:
    """A whole night on LiFePO4's plateau with a voltage that reads 30 mV high (a chart
    or a sensor off by that much): sixteen anchors must not count as sixteen pieces of
    evidence, or the estimate ends wherever the biased reading says."""
    battery = SimBattery(LIFEPO4_12V, 55.0, capacity_ah=50.0)
    est = SocEstimator(50.0, LIFEPO4_12V, 55.0)
    est.from_bmv(55.0)  # a good estimate (±1 %)

    def biased_night(minutes: int) -> None:
        for _ in range(minutes):
            amps, volts = battery.step(-0.68, 60.0)
            est.update(amps, volts + 0.03, 60.0)

    biased_night(30)
    assert est.soc_pct is not None
    first_pull = est.soc_pct - battery.soc_pct
    assert 0.0 < first_pull < 5.0  # pulled up by a reading of ~+10 %, but only a little
    biased_night(8 * 60)
    assert est.soc_pct - battery.soc_pct == pytest.approx(first_pull, abs=1.0)


@pytest.mark.parametrize(
    ("truth", "count", "max_error"),
    [
        (30.0, 70.0, 5.0),  # 40 points off on the plateau: the gap itself says so
        (15.0, 55.0, 1.0),  # on the steep knee the reading decides outright
        (52.0, 55.0, 3.5),  # within the noise: the count keeps most of its weight
    ],
)
def test_a_count_far_from_the_voltage_follows_the_voltage(
    truth: float, count: float, max_error: float
) -> None:
    battery = SimBattery(LIFEPO4_12V, truth, capacity_ah=50.0)
    est = SocEstimator(50.0, LIFEPO4_12V)
    est.from_bmv(count)  # confident (±1 %), and wrong
    night(battery, est, 30, -0.68)
    assert est.soc_pct is not None
    assert abs(est.soc_pct - battery.soc_pct) < max_error
    if truth == 52.0:
        assert est.soc_pct > battery.soc_pct + 1.0  # barely moved by one plateau reading


@pytest.mark.parametrize("chemistry", [LIFEPO4_12V, AGM_12V], ids=lambda c: c.name)
def test_volts_at_inverts_the_curve(chemistry: Chemistry) -> None:
    for pct in (0.0, 5.0, 18.0, 45.0, 99.5, 100.0):
        assert chemistry.pct_at(chemistry.volts_at(pct)) == pytest.approx(pct, abs=1e-9)
    assert chemistry.volts_at(-5.0) == chemistry.volts_at(0.0)
    assert chemistry.volts_at(105.0) == chemistry.volts_at(100.0)


def test_a_saved_state_from_before_the_light_load_anchor_loads_with_todays_curve() -> None:
    """Curves are code: a bench that saved an older LiFePO4 chart gets today's."""
    data = SocEstimator(CAPACITY_AH, "lifepo4", 42.0).to_dict()
    for key in ("rest_current_c", "resistance_ohm"):
        del data[key]
    del data["chemistry"]["resistance_ohm_ah"]
    data["chemistry"]["ocv_curve"] = [[10.0, 0.0], [12.5, 10.0], [13.0, 30.0], [13.6, 100.0]]
    restored = SocEstimator.from_dict(json.loads(json.dumps(data)))
    assert restored.chemistry is LIFEPO4_12V
    assert restored.rest_current_c == 0.05
    assert restored.resistance_ohm == pytest.approx(LIFEPO4_12V.resistance_ohm_ah / CAPACITY_AH)
    assert restored.soc_pct == 42.0
    custom = replace(LIFEPO4_12V, name="lfp-custom", resistance_ohm_ah=2.0)
    data = SocEstimator(CAPACITY_AH, custom, 42.0, rest_current_c=0.1).to_dict()
    again = SocEstimator.from_dict(data)
    assert again.chemistry == custom and again.rest_current_c == 0.1


@pytest.mark.parametrize(
    "kwargs",
    [
        {"rest_current_c": 0.005},
        {"rest_current_c": 0.3},
        {"rest_current_c": math.nan},
        {"resistance_ohm": -0.01},
        {"resistance_ohm": 2.0},
    ],
)
def test_bad_light_load_arguments(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="^" + next(iter(kwargs))):
        SocEstimator(CAPACITY_AH, "lifepo4", 50.0, **kwargs)
