"""A small physical model of one smart bench, for the simulated backend.

Sun over the bench -> solar panel -> MPPT charge controller -> battery <- loads (the Pi,
the Wi-Fi access point, two USB ports with phones plugged into them).

Time is always passed in (`advance(to_utc)`); the model never reads a clock, so the demo
can run a day in minutes and tests can run a day in well under a second. The model
integrates in steps of at most `BenchParams.step_s` of simulated time. Its random
processes (clouds, phones arriving and leaving) are drawn on a fixed one-minute grid
counted from the start, from generators seeded once, so the same seed gives the same
weather and the same phones whether a day is advanced in one call or in many.

Units are in the names: volts, amps, watts, W/m², seconds, °C, kWh, per cent.
Sign convention: battery current is positive when the battery charges.
"""

from __future__ import annotations

import bisect
import math
import random
from dataclasses import dataclass
from datetime import date, datetime, timedelta, tzinfo
from typing import Final, Literal
from zoneinfo import ZoneInfo

from astral import Observer
from astral.sun import elevation

from bench_agent.power.soc import AGM_12V, LIFEPO4_12V

Chemistry = Literal["lifepo4", "agm"]
ChargeState = Literal["off", "bulk", "absorption", "float"]
MpptMode = Literal["off", "mppt_active", "voltage_or_current_limited"]

CHANNELS: Final = ("solar", "battery", "usb1", "usb2", "wifi")
PORTS: Final = ("usb1", "usb2")
OUTPUTS: Final = ("usb1", "usb2", "wifi")

TICK_S: Final = 60.0  # grid of the random processes, seconds of simulated time
SOLAR_CONSTANT_W_M2: Final = 1353.0

# Phone arrivals per port per hour, by local hour 0..23: none in the small hours, a few
# commuters in the morning, busiest in the afternoon and early evening when people sit
# in the park. Multiplied by BenchParams.phone_traffic.
DEFAULT_ARRIVALS_PER_HOUR: Final = (
    (0.0,) * 5 + (0.1, 0.3, 0.5, 0.4, 0.4, 0.5, 0.6)  # 00-11
    + (0.7, 0.7, 0.8, 0.9, 1.0, 1.1, 1.2, 1.2, 1.0, 0.6, 0.3, 0.1)  # 12-23
)  # fmt: skip


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
# agent's estimator reads the voltage with (bench_agent/power/soc.py). Two charts that disagree
# by ten points in LiFePO4's plateau made every simulated run test the disagreement
# instead of the agent (a rest anchor "corrected" a true 30 % to 40 %); real batteries do
# differ from their chart, and `BenchParams.ocv_offset_volts` shifts the model's curve
# when a test wants exactly that, on purpose and by a known amount.
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
    phone_traffic: float = 1.0  # scales DEFAULT_ARRIVALS_PER_HOUR
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


@dataclass(frozen=True, slots=True)
class ChannelTruth:
    """What an ideal INA219 on one channel would read now."""

    bus_volts: float
    current_amps: float


@dataclass(frozen=True, slots=True)
class ChargerSnapshot:
    """What a VE.Direct MPPT reports (V, I, VPV, PPV, CS, MPPT, ERR, H19..H23)."""

    battery_volts: float
    battery_amps: float  # the controller's output current at its battery terminals
    panel_volts: float
    panel_watts: float
    charge_state: ChargeState
    mppt_mode: MpptMode
    error: str
    yield_today_kwh: float
    yield_yesterday_kwh: float
    yield_total_kwh: float
    max_power_today_w: float
    max_power_yesterday_w: float


@dataclass(slots=True)
class _Phone:
    capacity_wh: float
    soc: float  # 0..1
    cc_amps: float  # constant-current phase; tapers above 80 % charged
    leave_at_s: float  # model seconds; math.inf for a phone that stays until full

    def amps(self) -> float:
        if self.soc < 0.8:
            return self.cc_amps
        return max(0.05, self.cc_amps * (1.0 - self.soc) / 0.2)


class BenchModel:
    """The bench's physics. Not thread-safe: one owner calls it (the simulated backend)."""

    def __init__(self, params: BenchParams, start_utc: datetime, seed: int) -> None:
        if start_utc.tzinfo is None:
            raise ValueError("start_utc must be timezone-aware")
        self._p = params
        self._chem = CHEMISTRIES[params.battery_chemistry]
        self._tz: tzinfo = ZoneInfo(params.timezone)
        self._observer = Observer(latitude=params.latitude_deg, longitude=params.longitude_deg)
        self._start_utc = start_utc
        self._t_s = 0.0
        self._next_tick_s = TICK_S
        # Independent streams, each drawn a fixed number of times per tick, so that one
        # process (say a scripted phone) never shifts another (the weather).
        self._cloud_rng = random.Random(f"{seed}/clouds")
        self._port_rngs = {port: random.Random(f"{seed}/{port}") for port in PORTS}
        self._script_rng = random.Random(f"{seed}/script")

        capacity = params.battery_capacity_ah
        self._r_int = self._chem.resistance_ohm_ah / capacity
        self._ocv_soc = [s for s, _ in self._chem.ocv_curve]
        self._ocv_volts = [v + params.ocv_offset_volts for _, v in self._chem.ocv_curve]
        self._soc = params.initial_soc_pct

        self._cloud_latent = params.cloud_mean + params.cloud_sigma * self._cloud_rng.gauss()
        self._cloud_override: float | None = None

        self._outputs = dict.fromkeys(OUTPUTS, False)  # safe state: everything off
        self._shorted = dict.fromkeys(PORTS, False)
        self._phones: dict[str, _Phone | None] = dict.fromkeys(PORTS)

        self._charge_state: ChargeState = "off"
        self._mppt_mode: MpptMode = "off"
        self._absorption_s = 0.0
        self._below_rebulk_s = 0.0
        self._lvd_tripped = False
        self._bms_open = False

        self._day = self._local(start_utc).date()
        self._yield_today_kwh = 0.0
        self._yield_yesterday_kwh = 0.0
        self._yield_total_kwh = 0.0
        self._pmax_today_w = 0.0
        self._pmax_yesterday_w = 0.0

        # Last solved operating point; what the readings report.
        self._v_batt = self._ocv(self._soc)
        self._i_batt = 0.0
        self._i_charger = 0.0
        self._v_panel = 0.0
        self._p_panel = 0.0
        self._p_available = 0.0
        self._irradiance = 0.0
        self._sun_deg = 0.0
        self._port_amps = dict.fromkeys(PORTS, 0.0)
        self._port_volts = dict.fromkeys(PORTS, 0.0)
        self._ap_amps = 0.0
        self._ambient_c = self._ambient(self._local(start_utc))
        self._enclosure_c = self._ambient_c
        self._refresh()  # readings are valid before the first advance

    # ----------------------------------------------------------------- time

    @property
    def now_utc(self) -> datetime:
        return self._start_utc + timedelta(seconds=self._t_s)

    def advance(self, to_utc: datetime) -> None:
        """Integrate up to `to_utc`. A time at or before `now_utc` is a no-op: the bench's
        physics never runs backwards, whatever the Pi's clock does."""
        if to_utc.tzinfo is None:
            raise ValueError("to_utc must be timezone-aware")
        target = (to_utc - self._start_utc).total_seconds()
        step = self._p.step_s
        while target - self._t_s > 1e-6:
            end = min(self._t_s + step, target, self._next_tick_s)
            self._step(end - self._t_s)
            self._t_s = end
            if self._next_tick_s - end <= 1e-6:
                self._t_s = self._next_tick_s
                self._tick()
                self._next_tick_s += TICK_S
                self._refresh()  # a phone may have arrived or left

    # -------------------------------------------------------- outputs and hooks

    def set_output(self, name: str, on: bool) -> None:
        """Switch a load output ("usb1", "usb2", "wifi"); takes effect on the next step."""
        if name not in self._outputs:
            raise ValueError(f"unknown output {name!r}; expected one of {OUTPUTS}")
        self._outputs[name] = on
        self._refresh()

    def output(self, name: str) -> bool:
        if name not in self._outputs:
            raise ValueError(f"unknown output {name!r}; expected one of {OUTPUTS}")
        return self._outputs[name]

    def plug_phone(self, port: str, amps: float | None = None) -> None:
        """Plug a phone into `port` (replacing any phone there). `amps` is its
        constant-current draw (random 1.0-2.1 A when None). It stays until full."""
        self._check_port(port)
        if amps is not None and not 0 < amps <= 3.0:
            raise ValueError(f"phone amps must be in (0, 3], got {amps}")
        self._phones[port] = self._new_phone(self._script_rng, amps, math.inf)
        self._refresh()

    def unplug_phone(self, port: str) -> None:
        self._check_port(port)
        self._phones[port] = None
        self._refresh()

    def short_port(self, port: str, shorted: bool) -> None:
        """A damaged cable or a paper clip: the port draws `short_amps` while it is on."""
        self._check_port(port)
        self._shorted[port] = shorted
        self._refresh()

    def set_soc(self, pct: float) -> None:
        """Set the battery's true state of charge, per cent (clamped to 0..100)."""
        self._soc = min(100.0, max(0.0, pct))
        self._refresh()

    def set_cloud_cover(self, cover: float | None) -> None:
        """Pin cloud cover to 0..1, or None to return to the random weather."""
        if cover is not None and not 0.0 <= cover <= 1.0:
            raise ValueError(f"cloud cover must be in 0..1, got {cover}")
        self._cloud_override = cover
        self._refresh()

    # --------------------------------------------------------------- readings

    def channel(self, name: str) -> ChannelTruth:
        """The true bus volts and current of one INA219 channel. The USB and Wi-Fi
        sensors sit after their load switch, so a switched-off output reads 0 V."""
        if name == "solar":
            amps = self._p_panel / self._v_panel if self._v_panel > 0 else 0.0
            return ChannelTruth(self._v_panel, amps)
        if name == "battery":
            return ChannelTruth(self._v_batt, self._i_batt)
        if name in PORTS:
            return ChannelTruth(self._port_volts[name], self._port_amps[name])
        if name == "wifi":
            volts = self._v_batt if self._ap_amps > 0 else 0.0
            return ChannelTruth(volts, self._ap_amps)
        raise ValueError(f"unknown channel {name!r}; expected one of {CHANNELS}")

    def charger_snapshot(self) -> ChargerSnapshot:
        return ChargerSnapshot(
            battery_volts=self._v_batt,
            battery_amps=self._i_charger,
            panel_volts=self._v_panel,
            panel_watts=self._p_panel,
            charge_state=self._charge_state,
            mppt_mode=self._mppt_mode,
            error="no_error",
            yield_today_kwh=self._yield_today_kwh,
            yield_yesterday_kwh=self._yield_yesterday_kwh,
            yield_total_kwh=self._yield_total_kwh,
            max_power_today_w=self._pmax_today_w,
            max_power_yesterday_w=self._pmax_yesterday_w,
        )

    @property
    def true_soc_pct(self) -> float:
        return self._soc

    @property
    def battery_charge_ah(self) -> float:
        """Charge held now, Ah (state of charge × capacity)."""
        return self._soc / 100.0 * self._p.battery_capacity_ah

    @property
    def phones_plugged(self) -> int:
        return sum(phone is not None for phone in self._phones.values())

    def has_phone(self, port: str) -> bool:
        self._check_port(port)
        return self._phones[port] is not None

    @property
    def cpu_temp_c(self) -> float:
        return self._enclosure_c + self._p.cpu_over_enclosure_c

    @property
    def enclosure_temp_c(self) -> float:
        return self._enclosure_c

    @property
    def ambient_temp_c(self) -> float:
        return self._ambient_c

    @property
    def sun_elevation_deg(self) -> float:
        return self._sun_deg

    @property
    def irradiance_w_m2(self) -> float:
        """Global irradiance on the (horizontal) panel after clouds."""
        return self._irradiance

    @property
    def panel_available_w(self) -> float:
        """What the panel could give at its maximum power point now."""
        return self._p_available

    @property
    def cloud_cover(self) -> float:
        if self._cloud_override is not None:
            return self._cloud_override
        return min(1.0, max(0.0, self._cloud_latent))

    @property
    def lvd_tripped(self) -> bool:
        """The low-voltage disconnect has cut the USB ports and the access point."""
        return self._lvd_tripped

    # ------------------------------------------------------------- internals

    @staticmethod
    def _check_port(port: str) -> None:
        if port not in PORTS:
            raise ValueError(f"unknown port {port!r}; expected one of {PORTS}")

    def _local(self, utc: datetime) -> datetime:
        return utc.astimezone(self._tz)

    def _ambient(self, local: datetime) -> float:
        hour = local.hour + local.minute / 60.0
        # Coolest just before dawn, warmest mid-afternoon.
        return self._p.ambient_mean_c + self._p.ambient_swing_c * math.cos(
            2 * math.pi * (hour - 14.5) / 24.0
        )

    def _ocv(self, soc: float) -> float:
        xs, ys = self._ocv_soc, self._ocv_volts
        i = bisect.bisect_right(xs, soc)
        if i <= 0:
            return ys[0]
        if i >= len(xs):
            return ys[-1]
        x0, x1 = xs[i - 1], xs[i]
        return ys[i - 1] + (ys[i] - ys[i - 1]) * (soc - x0) / (x1 - x0)

    def _acceptance_amps(self, soc: float) -> float:
        """Largest current the battery takes at the absorption voltage."""
        chem = self._chem
        max_amps = chem.max_charge_c * self._p.battery_capacity_ah
        if soc <= chem.taper_knee_pct:
            return max_amps
        left = max(0.0, (100.0 - soc) / (100.0 - chem.taper_knee_pct))
        return max_amps * math.pow(left, chem.taper_exponent)

    def _charge_resistance(self, soc: float, ocv: float) -> float:
        """Apparent resistance while charging: the internal resistance plus the
        polarisation that makes a nearly full battery refuse current. Chosen so that
        ocv + acceptance × R_charge = absorption volts."""
        accept = self._acceptance_amps(soc)
        if accept <= 1e-9:
            return math.inf
        return max(self._r_int, (self._chem.absorption_volts - ocv) / accept)

    @staticmethod
    def _clear_sky_w_m2(sun_deg: float) -> float:
        """Global horizontal irradiance under a clear tropical sky: direct beam after the
        air mass (Kasten-Young 1989, Meinel 1976) plus ~10 % diffuse."""
        if sun_deg <= 0.0:
            return 0.0
        zenith = 90.0 - sun_deg
        air_mass = 1.0 / (
            math.cos(math.radians(zenith)) + 0.50572 * math.pow(96.07995 - zenith, -1.6364)
        )
        direct = SOLAR_CONSTANT_W_M2 * math.pow(0.7, math.pow(air_mass, 0.678))
        return 1.1 * direct * math.sin(math.radians(sun_deg))

    def _new_phone(self, rng: random.Random, amps: float | None, leave_at_s: float) -> _Phone:
        # Always four draws, so the stream stays aligned whatever is passed in.
        cc = 1.0 + 1.1 * rng.random()
        capacity = 10.0 + 9.0 * rng.random()  # 2 700-5 000 mAh at 3.85 V
        soc = 0.05 + 0.55 * rng.random()
        rng.random()
        return _Phone(capacity, soc, cc if amps is None else amps, leave_at_s)

    def _tick(self) -> None:
        """Once a minute: the weather moves on, people arrive and leave."""
        p = self._p
        phi = math.exp(-TICK_S / p.cloud_tau_s)
        noise = p.cloud_sigma * math.sqrt(1.0 - phi * phi) * self._cloud_rng.gauss()
        self._cloud_latent = p.cloud_mean + phi * (self._cloud_latent - p.cloud_mean) + noise

        hour = self._local(self.now_utc).hour
        rate_per_s = DEFAULT_ARRIVALS_PER_HOUR[hour] * p.phone_traffic / 3600.0
        arrival_p = 1.0 - math.exp(-rate_per_s * TICK_S)
        for port in PORTS:
            rng = self._port_rngs[port]
            arrives = rng.random() < arrival_p
            stay_s = max(300.0, rng.expovariate(1.0 / p.phone_mean_stay_s))
            candidate = self._new_phone(rng, None, self._t_s + stay_s)
            phone = self._phones[port]
            if phone is not None and self._t_s >= phone.leave_at_s:
                self._phones[port] = phone = None
            # Nobody plugs into a dead port: it must be switched on and not cut off.
            if phone is None and arrives and self._outputs[port] and not self._loads_cut():
                self._phones[port] = candidate

    def _refresh(self) -> None:
        """Re-solve the operating point at the present instant, so that readings follow
        a switched output or a scripted event at once rather than after the next step."""
        self._step(0.0)

    def _loads_cut(self) -> bool:
        return self._lvd_tripped or self._bms_open

    def _step(self, dt: float) -> None:
        """Solve the operating point over [t, t + dt] at its midpoint, then integrate."""
        mid = self._start_utc + timedelta(seconds=self._t_s + dt / 2.0)
        local = self._local(mid)
        if local.date() != self._day:
            self._roll_day(local.date())
        self._ambient_c = self._ambient(local)
        voc, vmp = self._solve_sun(mid)
        self._switch_charger(voc)
        pi_w, usb_w, load_w = self._solve_loads()
        i_out, i_out_max = self._solve_battery(load_w)
        panel_w = self._solve_panel(voc, vmp, i_out, i_out_max)
        if dt > 0:
            self._integrate(dt, panel_w)
        # Enclosure: sun on the box, the Pi and the converters' losses, a 20-minute lag.
        p = self._p
        heat_w = pi_w + usb_w * (1.0 / p.converter_efficiency - 1.0)
        heat_w += panel_w * (1.0 - p.charger_efficiency)
        target_c = self._ambient_c + 12.0 * self._irradiance / 1000.0 + 0.6 * heat_w
        self._enclosure_c += (target_c - self._enclosure_c) * (1.0 - math.exp(-dt / 1200.0))

    def _solve_sun(self, mid: datetime) -> tuple[float, float]:
        """Sun, clouds and panel: sets irradiance and available watts; returns the panel's
        open-circuit and maximum-power-point volts."""
        p = self._p
        self._sun_deg = elevation(self._observer, mid)
        # Kasten & Czeplak (1980): thin cloud barely matters, overcast leaves ~25 %.
        cloud_factor = 1.0 - 0.75 * math.pow(self.cloud_cover, 3.4)
        irradiance = self._clear_sky_w_m2(self._sun_deg) * cloud_factor
        self._irradiance = irradiance
        g = irradiance / 1000.0
        cell_c = self._ambient_c + 0.025 * irradiance  # ~NOCT: +20 °C at 800 W/m²
        temp_factor = 1.0 + p.panel_temp_coeff_per_c * (cell_c - 25.0)
        self._p_available = p.panel_wp * p.panel_efficiency * g * temp_factor
        # Open-circuit volts fall off logarithmically in dim light.
        light = max(0.0, 1.0 + 0.05 * math.log(g)) if g > 1e-4 else 0.0
        return p.panel_voc_volts * light * temp_factor, p.panel_vmp_volts * light * temp_factor

    def _switch_charger(self, voc: float) -> None:
        """As a Victron: starts when the panel is 5 V above the battery, stops below 1 V
        above it; every start is a new charge cycle in bulk."""
        if self._charge_state == "off":
            if voc > self._v_batt + 5.0 and self._p_available > 0.5:
                self._charge_state = "bulk"
                self._absorption_s = 0.0
        elif voc < self._v_batt + 1.0 or self._p_available < 0.2:
            self._charge_state = "off"
            self._below_rebulk_s = 0.0
        # The battery's BMS opens at 0 % and closes again once there is charge to give.
        self._bms_open = self._soc <= 0.0 and self._charge_state == "off"

    def _solve_loads(self) -> tuple[float, float, float]:
        """Port currents and volts from outputs, phones and shorts. Returns the Pi's
        watts, the USB ports' watts, and the total watts drawn from the battery bus."""
        p = self._p
        cut = self._loads_cut()
        usb_w = 0.0
        for port in PORTS:
            amps, volts = 0.0, 0.0
            if self._outputs[port] and not cut:
                phone = self._phones[port]
                if self._shorted[port]:
                    amps, volts = p.short_amps, p.short_volts
                else:
                    amps = phone.amps() if phone is not None else 0.0
                    volts = p.usb_volts - 0.05 * amps  # cable and switch drop
            self._port_amps[port], self._port_volts[port] = amps, volts
            usb_w += amps * volts
        ap_w = p.ap_watts if self._outputs["wifi"] and not cut else 0.0
        self._ap_amps = ap_w / self._v_batt
        pi_w = 0.0 if self._bms_open else p.pi_watts
        return pi_w, usb_w, (pi_w + usb_w) / p.converter_efficiency + ap_w

    def _solve_battery(self, load_w: float) -> tuple[float, float]:
        """The battery's volts and current, and the charger's output current: the loads
        draw constant power, so a few fixed-point passes from the last voltage converge
        to well under 1 mV. Returns (charger amps out, the most it could give)."""
        p, chem = self._p, self._chem
        ocv = self._ocv(self._soc)
        r_charge = self._charge_resistance(self._soc, ocv)
        accept = self._acceptance_amps(self._soc)
        v_batt = self._v_batt
        i_out = i_out_max = i_batt = 0.0
        for _ in range(3):
            i_load = load_w / v_batt
            if self._charge_state != "off":
                i_out_max = min(
                    self._p_available * p.charger_efficiency / v_batt, p.charger_max_amps
                )
                if self._charge_state == "bulk" and i_out_max - i_load > accept:
                    self._charge_state = "absorption"  # bulk would overshoot: regulate
                if self._charge_state == "bulk":
                    wanted = math.inf
                elif self._charge_state == "absorption":
                    wanted = accept  # exactly what holds the absorption voltage
                else:
                    wanted = max(0.0, (chem.float_volts - ocv) / r_charge)
                i_out = min(i_out_max, i_load + wanted)
            i_batt = i_out - i_load
            if self._bms_open:
                i_batt = max(0.0, i_batt)
            if i_batt > 0:
                v_batt = ocv + i_batt * r_charge if math.isfinite(r_charge) else ocv
            else:
                v_batt = ocv + i_batt * self._r_int
            v_batt = max(v_batt, 1.0)
        self._v_batt, self._i_batt, self._i_charger = v_batt, i_batt, i_out
        return i_out, i_out_max

    def _solve_panel(self, voc: float, vmp: float, i_out: float, i_out_max: float) -> float:
        """What the panel gives: all it has at its maximum power point, or less when the
        battery takes less, the controller then walking the panel up towards open
        circuit. Returns the panel's watts."""
        p = self._p
        if self._charge_state == "off":
            self._mppt_mode = "off"
            self._v_panel, self._p_panel = voc, 0.0
            return 0.0
        available = self._p_available
        panel_w = min(available, i_out * self._v_batt / p.charger_efficiency)
        limited = i_out < i_out_max - 1e-6 or i_out_max >= p.charger_max_amps
        self._mppt_mode = "voltage_or_current_limited" if limited else "mppt_active"
        share = panel_w / available if available > 0 else 0.0
        self._v_panel = vmp + (voc - vmp) * (1.0 - share)
        self._p_panel = panel_w
        return panel_w

    def _integrate(self, dt: float, panel_w: float) -> None:
        """Move the stored charges, counters and charge state on by dt seconds."""
        p, chem = self._p, self._chem
        stored_ah = self._i_batt * dt / 3600.0
        if stored_ah > 0:
            stored_ah *= chem.coulombic_efficiency
        soc = self._soc + 100.0 * stored_ah / p.battery_capacity_ah
        self._soc = min(100.0, max(0.0, soc))

        out_kwh = self._i_charger * self._v_batt * dt / 3.6e6
        self._yield_today_kwh += out_kwh
        self._yield_total_kwh += out_kwh
        self._pmax_today_w = max(self._pmax_today_w, panel_w)

        self._charge_phones(dt)
        self._advance_charge_state(dt)
        if self._lvd_tripped:
            self._lvd_tripped = self._v_batt < chem.reconnect_volts
        else:
            self._lvd_tripped = self._v_batt < chem.cutoff_volts

    def _charge_phones(self, dt: float) -> None:
        for port in PORTS:
            phone = self._phones[port]
            amps = self._port_amps[port]
            if phone is None or amps <= 0 or self._shorted[port]:
                continue
            # ~85 % of what the port gives ends up in the phone's battery.
            watts_in = 0.85 * amps * self._port_volts[port]
            phone.soc += watts_in * dt / (phone.capacity_wh * 3600.0)
            if phone.soc >= 1.0:
                self._phones[port] = None  # full: its owner takes it and goes

    def _advance_charge_state(self, dt: float) -> None:
        chem = self._chem
        if self._charge_state == "absorption":
            self._absorption_s += dt
            tail_amps = chem.tail_c * self._p.battery_capacity_ah
            done = self._acceptance_amps(self._soc) < tail_amps
            if done or self._absorption_s >= chem.absorption_max_s:
                self._charge_state = "float"
        elif self._charge_state == "float":
            # Victron's re-bulk: below float minus the offset for a whole minute.
            if self._v_batt < chem.float_volts - chem.rebulk_offset_volts:
                self._below_rebulk_s += dt
                if self._below_rebulk_s >= 60.0:
                    self._charge_state = "bulk"
                    self._absorption_s = self._below_rebulk_s = 0.0
            else:
                self._below_rebulk_s = 0.0

    def _roll_day(self, new_day: date) -> None:
        """Local midnight: today's counters become yesterday's (as the MPPT's history)."""
        self._day = new_day
        self._yield_yesterday_kwh = self._yield_today_kwh
        self._pmax_yesterday_w = self._pmax_today_w
        self._yield_today_kwh = 0.0
        self._pmax_today_w = 0.0
