"""The simulated bench: the physical model wired to the same seams the Pi uses.

- INA219 channels: the real `adafruit_ina219` driver over `SimulatedI2CBus`, each
  chip fed by the model's true volts and amps.
- Outputs and tamper switch: gpiozero devices on gpiozero's own `MockFactory`;
  the model's loads follow the output pins.
- Time: a `SimulatedClock`, sped up so a day passes in minutes.
- A scenario file scripts faults on the simulated timeline.

`tick()` is called by the agent's main loop before each sample: it applies due
scenario events, advances the model to the simulated now, and refreshes the chips.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable
from contextlib import ExitStack
from datetime import timedelta
from typing import Any

from bench_agent.clock import SimulatedClock
from bench_agent.config import Config
from bench_agent.hardware.bundle import Hardware, closing
from bench_agent.hardware.gpio import TamperSwitch
from bench_agent.hardware.parts import build_outputs, ina219_opener
from bench_agent.hardware.sim.i2c_bus import SimulatedI2CBus
from bench_agent.hardware.sim.ina219_chip import SimulatedINA219
from bench_agent.hardware.sim.params import CHANNELS, BenchParams
from bench_agent.hardware.sim.physics import BenchModel
from bench_agent.hardware.sim.scenario import (
    Action,
    ScenarioEvent,
    ScenarioPlayer,
    apply_to_model,
    load_scenario,
)
from bench_agent.hardware.sim.vedirect_sim import ChargerSnapshot, SimulatedCharger

log = logging.getLogger(__name__)


class SimulatedBench:
    """Owns the model, the chips and the mock pins; `tick()` keeps them in step."""

    def __init__(self, cfg: Config, on_tamper: Callable[[bool], None]) -> None:
        from gpiozero.pins.mock import MockFactory  # noqa: PLC0415

        sim = cfg.sim
        assert sim is not None
        self.cfg = cfg
        self.clock = SimulatedClock(sim.start, sim.speed, synced=sim.clock_synced_at_start)
        self.model = BenchModel(
            BenchParams(
                timezone=cfg.bench.timezone,
                panel_wp=sim.panel_watts_peak,
                battery_chemistry=sim.battery_chemistry,
                battery_capacity_ah=sim.battery_ah,
                initial_soc_pct=sim.initial_soc_pct,
            ),
            sim.start,
            sim.seed,
        )
        # The model is read by the simulated charger's thread too.
        self.model_lock = threading.Lock()
        self.pin_factory: Any = MockFactory()
        self.bus = SimulatedI2CBus()
        self.chips: dict[str, SimulatedINA219] = {}
        for sensor in cfg.sensors:
            chip = SimulatedINA219(sensor.shunt_ohms)
            self.chips[sensor.name] = chip
            self.bus.attach(sensor.address, chip)
        self.player = (
            ScenarioPlayer(load_scenario(sim.scenario), sim.start.astimezone(cfg.tz))
            if sim.scenario is not None
            else None
        )
        self.outputs = build_outputs(cfg, self.pin_factory)
        self.tamper: TamperSwitch | None = None
        if cfg.tamper is not None:
            self.tamper = TamperSwitch(
                cfg.tamper.pin,
                cfg.tamper.pull_up,
                cfg.tamper.open_when_active,
                self.pin_factory,
                on_change=on_tamper,
            )
            # After the device exists: setting its pull resets a mock pin's level.
            self._drive_tamper(is_open=False)  # the box starts closed
        self.charger: SimulatedCharger | None = None
        # A configured port that already exists is a real device, or a recording
        # replayed into a pty: read that instead of simulating a controller.
        if sim.charger and cfg.charger is not None and not cfg.charger.port.exists():
            self.charger = SimulatedCharger(cfg.charger.port, self.charger_snapshot, seed=sim.seed)
            self.charger.start()
        self._refresh_chips()

    def charger_snapshot(self) -> ChargerSnapshot:
        """What the simulated SmartSolar reports now (called on the charger's thread)."""
        with self.model_lock:
            truth = self.model.charger_snapshot()
        return ChargerSnapshot(
            battery_volts=truth.battery_volts,
            battery_amps=truth.battery_amps,
            panel_volts=truth.panel_volts,
            panel_watts=truth.panel_watts,
            load_amps=0.0,
            load_on=False,
            charge_state=truth.charge_state,
            mppt_mode=truth.mppt_mode,
            error=truth.error,
            yield_today_kwh=truth.yield_today_kwh,
            yield_yesterday_kwh=truth.yield_yesterday_kwh,
            yield_total_kwh=truth.yield_total_kwh,
            max_power_today_w=truth.max_power_today_w,
            max_power_yesterday_w=truth.max_power_yesterday_w,
        )

    # -- the model's heartbeat ------------------------------------------------

    def tick(self) -> None:
        now = self.clock.true_wall()
        if self.player is not None:
            for event in self.player.due(now):
                self.apply(event)
        with self.model_lock:
            for name, switch in self.outputs.items():
                self.model.set_output(name, bool(switch.is_on))
            self.model.advance(now)
        self._refresh_chips()

    def _refresh_chips(self) -> None:
        with self.model_lock:
            for name, chip in self.chips.items():
                if name in CHANNELS:
                    truth = self.model.channel(name)
                    chip.set_conditions(truth.bus_volts, truth.current_amps)

    def cpu_temperature(self) -> float | None:
        with self.model_lock:
            return round(self.model.cpu_temp_c, 1)

    # -- scenario events ------------------------------------------------------

    def apply(self, event: ScenarioEvent) -> None:
        log.info("scenario: %s %s", event.action.value, event.note or "")
        with self.model_lock:
            if apply_to_model(event, self.model):
                return
        match event.action:
            case Action.SENSOR_FAIL | Action.SENSOR_RECOVER:
                chip = self.chips.get(event.channel or "")
                if chip is not None:
                    chip.fail_reads(event.action is Action.SENSOR_FAIL)
            case Action.TAMPER_OPEN | Action.TAMPER_CLOSE:
                self._drive_tamper(is_open=event.action is Action.TAMPER_OPEN)
            case Action.CLOCK_JUMP:
                self.clock.set_wall_error(timedelta(seconds=event.by_s or 0.0), synced=False)
            case Action.CLOCK_SYNC:
                self.clock.set_wall_error(timedelta(0), synced=True)
            case Action.CHARGER_GARBAGE if self.charger is not None:
                self.charger.inject_garbage(event.byte_count or 0)
            case Action.CHARGER_CORRUPT if self.charger is not None:
                self.charger.corrupt_checksums(event.blocks or 0)
            case Action.CHARGER_UNPLUG if self.charger is not None:
                # for_s is simulated time; the controller's cable lives in real time.
                self.charger.unplug(self.clock.to_real_s(event.for_s or 0.0))
            case _:
                log.info("scenario: %s has no simulated part to act on", event.action.value)

    def _drive_tamper(self, *, is_open: bool) -> None:
        tamper = self.cfg.tamper
        assert tamper is not None
        # The input is "active" when it reads the level opposite its pull; the box is
        # open when active == open_when_active.
        active = is_open == tamper.open_when_active
        level_high = active != tamper.pull_up
        pin = self.pin_factory.pin(tamper.pin)
        if level_high:
            pin.drive_high()
        else:
            pin.drive_low()

    def close(self) -> None:
        if self.charger is not None:
            self.charger.close()
        for switch in self.outputs.values():
            switch.close()
        if self.tamper is not None:
            self.tamper.close()
        self.bus.deinit()
        self.pin_factory.close()


def build_simulated_hardware(cfg: Config, on_tamper: Callable[[bool], None]) -> Hardware:
    bench = SimulatedBench(cfg, on_tamper)
    with ExitStack() as stack:
        closing(stack, bench.close, "the simulated bench")
        return Hardware(
            clock=bench.clock,
            channels={s.name: ina219_opener(lambda: bench.bus, s) for s in cfg.sensors},
            outputs=bench.outputs,
            tamper=bench.tamper,
            read_cpu_temperature=bench.cpu_temperature,
            tick=bench.tick,
            simulation=bench,
            boot_id=f"sim-{uuid.uuid4()}",
            resources=stack.pop_all(),
        )
