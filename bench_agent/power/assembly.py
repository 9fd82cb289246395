"""The power side's parts, built together: the controller (the one owner of the
outputs, with its state-of-charge estimator), the daily counters and the uplink
supervisor, each with its state file in `[storage] dir` and saved by the
caller's ExitStack on the way out; and the charge controller's feed."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import ExitStack
from dataclasses import dataclass

from bench_agent.clock import Clock
from bench_agent.config import Config
from bench_agent.faults import FaultRegistry
from bench_agent.hardware.ports import Switch
from bench_agent.hardware.vedirect.reader import ChargerSample, VEDirectReader
from bench_agent.power.charger_feed import ChargerFeed
from bench_agent.power.chemistry import CHEMISTRIES
from bench_agent.power.controller import Controller
from bench_agent.power.counter_keeper import CounterKeeper
from bench_agent.power.soc import SocEstimator
from bench_agent.power.uplink_supervisor import UplinkSupervisor
from bench_agent.vocabulary import EmitEvent


@dataclass(frozen=True, slots=True)
class PowerParts:
    controller: Controller
    counters: CounterKeeper
    uplink: UplinkSupervisor


def build_power_parts(
    cfg: Config,
    stack: ExitStack,
    *,
    outputs: Mapping[str, Switch],
    wifi_clients: Callable[[], int | None],
    clock: Clock,
    emit_event: EmitEvent,
) -> PowerParts:
    battery = cfg.battery
    cfg.storage.dir.mkdir(parents=True, exist_ok=True)
    controller = Controller(
        cfg.policy,
        outputs,
        SocEstimator(
            battery.capacity_ah,
            CHEMISTRIES[battery.chemistry],
            rest_current_c=battery.rest_current_c,
            resistance_ohm=battery.internal_resistance_ohm,
        ),
        emit_event=emit_event,
        state_file=cfg.storage.dir / "controller-state.json",
        battery_channel=battery.channel,
    )
    controller.load(clock.monotonic())
    stack.callback(controller.save)
    counters = CounterKeeper(
        cfg.counters,
        cfg.storage.dir / "daily-counters.json",
        clock.wall().astimezone(cfg.tz).date(),
        cfg.sampling.sample_interval_s,
        wifi_clients,
    )
    stack.callback(counters.save)
    uplink = UplinkSupervisor(
        cfg.uplink,
        controller,
        cfg.storage.dir / "uplink-recovery.json",
        emit_event,
        clock.monotonic(),
    )
    stack.callback(lambda: uplink.save(clock.monotonic()))
    return PowerParts(controller=controller, counters=counters, uplink=uplink)


def open_charger_feed(
    cfg: Config,
    stack: ExitStack,
    *,
    on_sample: Callable[[ChargerSample], None],
    faults: FaultRegistry,
    controller: Controller,
) -> ChargerFeed | None:
    """The charge controller's reader (its thread starts now, `stack` stops it) and
    the feed that keeps its latest sample; None without a `[charger]`."""
    if cfg.charger is None:
        return None
    reader = stack.enter_context(
        VEDirectReader(str(cfg.charger.port), on_sample, baudrate=cfg.charger.baudrate)
    )
    return ChargerFeed(reader, cfg.charger.stale_after_s, faults, controller.soc.from_bmv)
