"""A small physical model of one smart bench, for the simulated backend.

Sun over the bench -> solar panel -> MPPT charge controller -> battery <- loads (the Pi,
the Wi-Fi access point, two USB ports with phones plugged into them).

Time is always passed in (`advance(to_utc)`); the model never reads a clock, so the demo
can run a day in minutes and tests can run a day in well under a second. The model
integrates in steps of at most `BenchParams.step_s` of simulated time. Its random
processes (clouds, phones arriving and leaving) are drawn on a fixed one-minute grid
counted from the start, from generators seeded once, so the same seed gives the same
weather and the same phones whether a day is advanced in one call or in many.

This module runs the bench: time, the sun and the weather, the loads and the phones,
the temperatures, and the readings. The battery with its charge controller is
charging.py; what one bench is made of (`BenchParams`, the chemistries) is params.py.

Units are in the names: volts, amps, watts, W/m², seconds, °C, kWh, per cent.
Sign convention: battery current is positive when the battery charges.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from datetime import datetime, timedelta, tzinfo
from typing import Final
from zoneinfo import ZoneInfo

from astral import Observer
from astral.sun import elevation

from bench_agent.hardware.sim.charging import ChargerSnapshot, ChargingSystem
from bench_agent.hardware.sim.params import CHANNELS, OUTPUTS, PORTS, TICK_S, BenchParams

SOLAR_CONSTANT_W_M2: Final = 1353.0

# Phone arrivals per port per hour, by local hour 0..23: none in the small hours, a few
# commuters in the morning, busiest in the afternoon and early evening when people sit
# in the park. Multiplied by BenchParams.phone_traffic.
DEFAULT_ARRIVALS_PER_HOUR: Final = (
    (0.0,) * 5 + (0.1, 0.3, 0.5, 0.4, 0.4, 0.5, 0.6)  # 00-11
    + (0.7, 0.7, 0.8, 0.9, 1.0, 1.1, 1.2, 1.2, 1.0, 0.6, 0.3, 0.1)  # 12-23
)  # fmt: skip


def clear_sky_w_m2(sun_deg: float) -> float:
    """Global horizontal irradiance under a clear tropical sky at a sun elevation
    (degrees): direct beam after the air mass (Kasten-Young 1989, Meinel 1976) plus ~10 %
    diffuse. The planner's clear sky too (ops/planner/sun.py)."""
    if sun_deg <= 0.0:
        return 0.0
    zenith = 90.0 - sun_deg
    air_mass = 1.0 / (
        math.cos(math.radians(zenith)) + 0.50572 * math.pow(96.07995 - zenith, -1.6364)
    )
    direct = SOLAR_CONSTANT_W_M2 * math.pow(0.7, math.pow(air_mass, 0.678))
    return 1.1 * direct * math.sin(math.radians(sun_deg))


@dataclass(frozen=True, slots=True)
class ChannelTruth:
    """What an ideal INA219 on one channel would read now."""

    bus_volts: float
    current_amps: float


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

        self._charging = ChargingSystem(params, self._local(start_utc).date())

        self._cloud_latent = params.cloud_mean + params.cloud_sigma * self._cloud_rng.gauss()
        self._cloud_override: float | None = None

        self._outputs = dict.fromkeys(OUTPUTS, False)  # safe state: everything off
        self._shorted = dict.fromkeys(PORTS, False)
        self._phones: dict[str, _Phone | None] = dict.fromkeys(PORTS)

        # Last solved operating point; what the readings report (with the charging
        # system's battery and panel).
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
        self._charging.soc = min(100.0, max(0.0, pct))
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
        charging = self._charging
        if name == "solar":
            amps = charging.p_panel / charging.v_panel if charging.v_panel > 0 else 0.0
            return ChannelTruth(charging.v_panel, amps)
        if name == "battery":
            return ChannelTruth(charging.v_batt, charging.i_batt)
        if name in PORTS:
            return ChannelTruth(self._port_volts[name], self._port_amps[name])
        if name == "wifi":
            volts = charging.v_batt if self._ap_amps > 0 else 0.0
            return ChannelTruth(volts, self._ap_amps)
        raise ValueError(f"unknown channel {name!r}; expected one of {CHANNELS}")

    def charger_snapshot(self) -> ChargerSnapshot:
        return self._charging.snapshot()

    @property
    def true_soc_pct(self) -> float:
        return self._charging.soc

    @property
    def battery_charge_ah(self) -> float:
        """Charge held now, Ah (state of charge × capacity)."""
        return self._charging.soc / 100.0 * self._p.battery_capacity_ah

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
        return self._charging.lvd_tripped

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
            if phone is None and arrives and self._outputs[port] and not self._charging.loads_cut:
                self._phones[port] = candidate

    def _refresh(self) -> None:
        """Re-solve the operating point at the present instant, so that readings follow
        a switched output or a scripted event at once rather than after the next step."""
        self._step(0.0)

    def _step(self, dt: float) -> None:
        """Solve the operating point over [t, t + dt] at its midpoint, then integrate."""
        mid = self._start_utc + timedelta(seconds=self._t_s + dt / 2.0)
        local = self._local(mid)
        charging = self._charging
        if local.date() != charging.day:
            charging.roll_day(local.date())
        self._ambient_c = self._ambient(local)
        voc, vmp = self._solve_sun(mid)
        charging.switch(voc, self._p_available)
        pi_w, usb_w, load_w = self._solve_loads()
        i_out, i_out_max = charging.solve_battery(load_w, self._p_available)
        panel_w = charging.solve_panel(voc, vmp, i_out, i_out_max, self._p_available)
        if dt > 0:
            charging.integrate(dt, panel_w)
            self._charge_phones(dt)
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
        irradiance = clear_sky_w_m2(self._sun_deg) * cloud_factor
        self._irradiance = irradiance
        g = irradiance / 1000.0
        cell_c = self._ambient_c + 0.025 * irradiance  # ~NOCT: +20 °C at 800 W/m²
        temp_factor = 1.0 + p.panel_temp_coeff_per_c * (cell_c - 25.0)
        self._p_available = p.panel_wp * p.panel_efficiency * g * temp_factor
        # Open-circuit volts fall off logarithmically in dim light.
        light = max(0.0, 1.0 + 0.05 * math.log(g)) if g > 1e-4 else 0.0
        return p.panel_voc_volts * light * temp_factor, p.panel_vmp_volts * light * temp_factor

    def _solve_loads(self) -> tuple[float, float, float]:
        """Port currents and volts from outputs, phones and shorts. Returns the Pi's
        watts, the USB ports' watts, and the total watts drawn from the battery bus."""
        p = self._p
        cut = self._charging.loads_cut
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
        self._ap_amps = ap_w / self._charging.v_batt
        pi_w = 0.0 if self._charging.bms_open else p.pi_watts
        return pi_w, usb_w, (pi_w + usb_w) / p.converter_efficiency + ap_w

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
