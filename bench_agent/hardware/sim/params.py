"""What makes one simulated bench differ from another: `BenchParams` (place, panel,
charger, battery, loads, weather, the integration step), the battery chemistries'
constants the model charges and discharges with, and the bench's channel and output
names.

Data, apart from the model that runs it (physics.py): a scenario, the simulated
backend and the tests build and check parameters without running a bench, and the
chemistries' rested-voltage curves are taken from the agent's own charts
(bench_agent/power/chemistry.py) here, in one place.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal
from zoneinfo import ZoneInfo

from bench_agent.power.chemistry import AGM_12V, LIFEPO4_12V

Chemistry = Literal["lifepo4", "agm"]

CHANNELS: Final = ("solar", "battery", "usb1", "usb2", "wifi")
PORTS: Final = ("usb1", "usb2")
OUTPUTS: Final = ("usb1", "usb2", "wifi")

TICK_S: Final = 60.0  # grid of the random processes, seconds of simulated time


@dataclass(frozen=True, slots=True)
class BatteryChemistry:
    """Constants of a 12 V battery chemistry; the charge voltages are Victron's presets."""

    ocv_curve: tuple[tuple[float, float], ...]  # (state of charge %, open-circuit volts)
    resistance_ohm_ah: float  # internal resistance × capacity; R = this / capacity_ah
    absorption_volts: float
    float_volts: float
    rebulk_offset_volts: float  # back to bulk when below float minus this for a minute
    max_charge_c: float  # largest charge current the battery takes, × capacity (1/h)
    taper_knee_pct: float  # above this state of charge the acceptance current tapers
    taper_exponent: float
    tail_c: float  # absorption ends when acceptance falls below this × capacity
    absorption_max_s: float
    coulombic_efficiency: float  # fraction of charging Ah that is stored
    cutoff_volts: float  # low-voltage disconnect of the loads
    reconnect_volts: float


# (state of charge %, open-circuit volts) of a 12 V battery at rest: the very curves the
# agent's estimator reads the voltage with (bench_agent/power/chemistry.py). Two charts
# that disagree by ten points in LiFePO4's plateau made every simulated run test the
# disagreement instead of the agent (a rest anchor "corrected" a true 30 % to 40 %); real
# batteries do differ from their chart, and `BenchParams.ocv_offset_volts` shifts the
# model's curve when a test wants exactly that, on purpose and by a known amount.
_LIFEPO4_OCV: Final = tuple((pct, volts) for volts, pct in LIFEPO4_12V.ocv_curve)
_AGM_OCV: Final = tuple((pct, volts) for volts, pct in AGM_12V.ocv_curve)

CHEMISTRIES: Final[dict[str, BatteryChemistry]] = {
    # LiFePO4 takes nearly full current until nearly full.
    "lifepo4": BatteryChemistry(
        ocv_curve=_LIFEPO4_OCV,
        resistance_ohm_ah=1.0,
        absorption_volts=14.2,
        float_volts=13.5,
        rebulk_offset_volts=0.1,
        max_charge_c=0.5,
        taper_knee_pct=95.0,
        taper_exponent=1.0,
        tail_c=0.02,
        absorption_max_s=2 * 3600.0,
        coulombic_efficiency=0.99,
        cutoff_volts=12.0,
        reconnect_volts=13.0,
    ),
    # Lead-acid AGM stops taking full current well before it is full.
    "agm": BatteryChemistry(
        ocv_curve=_AGM_OCV,
        resistance_ohm_ah=1.5,
        absorption_volts=14.4,
        float_volts=13.8,
        rebulk_offset_volts=0.1,
        max_charge_c=0.25,
        taper_knee_pct=80.0,
        taper_exponent=1.5,
        tail_c=0.02,
        absorption_max_s=4 * 3600.0,
        coulombic_efficiency=0.92,
        cutoff_volts=11.8,
        reconnect_volts=12.6,
    ),
}


@dataclass(frozen=True, slots=True)
class BenchParams:
    """Everything that makes one bench differ from another. Defaults: a 100 Wp panel,
    a 12.8 V 50 Ah LiFePO4 battery, a SmartSolar 75/15, a 6 W access point."""

    latitude_deg: float = -8.05  # Trenggalek
    longitude_deg: float = 111.7
    timezone: str = "Asia/Jakarta"
    panel_wp: float = 100.0  # nameplate watts at 1000 W/m², 25 °C
    panel_efficiency: float = 0.95  # fraction of nameplate that reaches the controller
    panel_vmp_volts: float = 18.0
    panel_voc_volts: float = 22.0
    panel_temp_coeff_per_c: float = -0.0037  # power and voltage change per °C of cell
    charger_max_amps: float = 15.0
    charger_efficiency: float = 0.97
    battery_chemistry: Chemistry = "lifepo4"
    battery_capacity_ah: float = 50.0
    initial_soc_pct: float = 60.0
    ocv_offset_volts: float = 0.0  # this battery's rested voltage minus its chemistry's chart
    pi_watts: float = 2.5  # at the Pi's 5 V input
    ap_watts: float = 6.0  # access point, straight off the battery bus when switched on
    usb_volts: float = 5.1
    converter_efficiency: float = 0.9  # 12 V -> 5 V for the Pi and the USB ports
    short_amps: float = 4.0  # current limit of a port's switch into a short
    short_volts: float = 0.5  # the port's bus voltage sags to this into a short
    phone_traffic: float = 1.0  # scales physics.DEFAULT_ARRIVALS_PER_HOUR
    phone_mean_stay_s: float = 45 * 60.0
    cloud_mean: float = 0.35  # long-run mean cloud cover, 0..1
    cloud_sigma: float = 0.3  # spread of the cloud process before clipping to 0..1
    cloud_tau_s: float = 60 * 60.0  # how long a cloud situation lasts
    ambient_mean_c: float = 27.0
    ambient_swing_c: float = 4.5  # half the day-night difference
    cpu_over_enclosure_c: float = 12.0
    step_s: float = 10.0  # largest integration step, seconds of simulated time

    def __post_init__(self) -> None:
        positive = {
            "panel_wp": self.panel_wp,
            "panel_vmp_volts": self.panel_vmp_volts,
            "charger_max_amps": self.charger_max_amps,
            "battery_capacity_ah": self.battery_capacity_ah,
            "usb_volts": self.usb_volts,
            "step_s": self.step_s,
            "cloud_tau_s": self.cloud_tau_s,
            "phone_mean_stay_s": self.phone_mean_stay_s,
        }
        for name, value in positive.items():
            if not value > 0:
                raise ValueError(f"{name} must be > 0, got {value}")
        fractions = {
            "panel_efficiency": self.panel_efficiency,
            "charger_efficiency": self.charger_efficiency,
            "converter_efficiency": self.converter_efficiency,
        }
        for name, value in fractions.items():
            if not 0 < value <= 1:
                raise ValueError(f"{name} must be in (0, 1], got {value}")
        if self.panel_voc_volts <= self.panel_vmp_volts:
            raise ValueError("panel_voc_volts must exceed panel_vmp_volts")
        if self.battery_chemistry not in CHEMISTRIES:
            raise ValueError(f"battery_chemistry must be one of {sorted(CHEMISTRIES)}")
        if not 0 <= self.initial_soc_pct <= 100:
            raise ValueError("initial_soc_pct must be in 0..100")
        if not abs(self.ocv_offset_volts) <= 0.5:
            raise ValueError(f"ocv_offset_volts must be within ±0.5, got {self.ocv_offset_volts}")
        if min(self.pi_watts, self.ap_watts, self.short_amps, self.phone_traffic) < 0:
            raise ValueError("loads and phone_traffic must be >= 0")
        if self.step_s > TICK_S:
            raise ValueError(f"step_s must be <= {TICK_S}")
        ZoneInfo(self.timezone)  # raises on an unknown zone
