"""The daemon's side of the control socket: the methods of control.py's protocol.

`LocalControl.handle` runs on the control server's thread. It checks the
parameters there, then hands the work to the agent's main loop (the one place
that acts, STYLE.md) and waits a bounded time for the answer, so a technician's
`usb 2 off` goes through exactly the path an ops command over MQTT takes:
`CommandProcessor.handle_local` → the same validation → the same controller.

Texts for people in self-test results are marked with ``N_`` and translated by
the CLI; what the check saw (`detail`) is mostly values and codes, which read
the same in every language.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Mapping
from datetime import timedelta
from typing import Any, Final, Protocol, TypeVar

from bench_agent import __version__
from bench_agent.clock import Clock, iso_utc
from bench_agent.config import Config
from bench_agent.config_loader import load_config
from bench_agent.errors import ConfigError
from bench_agent.eventlog import EventLog
from bench_agent.faults import Fault, FaultRegistry, overcurrent_fault
from bench_agent.hardware.bundle import Hardware
from bench_agent.link.health import Health
from bench_agent.link.mqtt import Link
from bench_agent.link.outbox import Outbox
from bench_agent.link.publisher import Publisher
from bench_agent.link.session import LinkSession
from bench_agent.local.control import ControlError, Peer
from bench_agent.local.i18n import N_
from bench_agent.power.charger_feed import ChargerFeed
from bench_agent.power.controller import Controller
from bench_agent.power.counter_keeper import CounterKeeper
from bench_agent.power.sampler import Sampler
from bench_agent.preflight import cleartext_password
from bench_agent.remote.commands import SOURCE_TECHNICIAN
from bench_agent.remote.processor import CommandProcessor
from bench_agent.vocabulary import WIFI

T = TypeVar("T")
CALL_TIMEOUT_S: Final = 3.0  # the server thread waits this long for the main loop
SELFTEST_TIMEOUT_S: Final = 10.0
MAX_EVENTS: Final = 1000
MIN_FREE_BYTES: Final = 16 * 1024 * 1024  # below this the SD card is "full" for the self-test
# Plausible readings for the self-test: a bus above its range or a current far over
# the shunt's rating is a wiring or calibration fault, not a measurement.
BUS_VOLTS_MARGIN: Final = 1.05
AMPS_MARGIN: Final = 1.5


class AgentView(Protocol):
    """What the socket's methods read of the running agent (`service.Agent` is one).

    Named here so that this module does not import the service (the service
    builds it), and so that everything the technician's view depends on is in
    one list. Read on the main loop only (`run_on_loop`).
    """

    cfg: Config
    clock: Clock
    link: Link
    sampler: Sampler
    outbox: Outbox
    publisher: Publisher
    hardware: Hardware
    controller: Controller
    commands: CommandProcessor
    events: EventLog
    faults: FaultRegistry
    charger: ChargerFeed | None
    counters: CounterKeeper
    tamper_open: bool | None
    started_mono: float
    session: LinkSession

    def run_on_loop(self, fn: Callable[[], T], timeout_s: float) -> T: ...

    def health(self, mono_s: float) -> Health: ...


class LocalControl:
    """`handle(method, params)` for `ControlServer`: each method runs on the agent's
    main loop through `AgentView.run_on_loop` (ControlError "busy" on timeout)."""

    def __init__(self, agent: AgentView) -> None:
        self._agent = agent
        self._run = agent.run_on_loop

    def handle(self, method: str, params: Mapping[str, Any], peer: Peer | None = None) -> Any:
        # The command event names the local user who sent it (the socket's SO_PEERCRED).
        source = SOURCE_TECHNICIAN if peer is None else f"{SOURCE_TECHNICIAN}:{peer.user()}"
        if method == "status":
            _no_params(params)
            return self._run(lambda: build_status(self._agent), CALL_TIMEOUT_S)
        if method == "override.set":
            request = _override_request(params)
            return self._run(lambda: self._override(request, source), CALL_TIMEOUT_S)
        if method == "fault.reset":
            name = _fault_name(params)
            return self._run(lambda: self._fault_reset(name, source), CALL_TIMEOUT_S)
        if method == "events":
            since_s, limit = _events_params(params)
            return self._run(lambda: self._events(since_s, limit), CALL_TIMEOUT_S)
        if method == "selftest":
            _no_params(params)
            return self._run(lambda: {"checks": selftest(self._agent)}, SELFTEST_TIMEOUT_S)
        raise ControlError("unknown_method", f"no method {method[:40]!r}")

    # -- on the main loop -----------------------------------------------------

    def _override(self, request: dict[str, Any], source: str) -> dict[str, Any]:
        output = request["output"]
        if output not in self._agent.hardware.outputs:
            return {"accepted": False, "reason": f"unknown_output: {output}"}
        args: dict[str, Any] = {"state": request["state"]}
        if "duration_s" in request:
            args["duration_s"] = request["duration_s"]
        if output == WIFI:
            action = "wifi.set"
        else:
            action, args["port"] = "usb.set", output
        reply = self._agent.commands.handle_local({"action": action, "args": args}, source)
        if reply["ok"]:
            return {"accepted": True}
        error = reply["error"]
        if error["code"] == "refused":
            return {"accepted": False, "reason": error["message"]}
        raise ControlError("bad_params", error["message"])

    def _fault_reset(self, name: str | None, source: str) -> dict[str, Any]:
        args = {} if name is None else {"name": name}
        reply = self._agent.commands.handle_local({"action": "fault.reset", "args": args}, source)
        if not reply["ok"]:
            raise ControlError("bad_params", reply["error"]["message"])
        return {"reset": reply["result"]["reset"]}

    def _events(self, since_s: float | None, limit: int) -> dict[str, Any]:
        agent = self._agent
        since = None if since_s is None else agent.clock.wall() - timedelta(seconds=since_s)
        return {"events": agent.events.recent(since=since, limit=limit)}


# -- parameters (checked on the server thread: a bad request never reaches the loop)


def _no_params(params: Mapping[str, Any]) -> None:
    if params:
        raise ControlError("bad_params", f"takes no parameters, got {sorted(params)[0]!r}")


def _override_request(params: Mapping[str, Any]) -> dict[str, Any]:
    extra = set(params) - {"output", "state", "duration_s"}
    if extra:
        raise ControlError("bad_params", f"unknown parameter {sorted(extra)[0]!r}")
    output, state = params.get("output"), params.get("state")
    if not isinstance(output, str) or not output:
        raise ControlError("bad_params", "output must be an output name, e.g. usb1 or wifi")
    if state not in ("on", "off", "auto"):
        raise ControlError("bad_params", "state must be on, off or auto")
    request: dict[str, Any] = {"output": output, "state": state}
    if "duration_s" in params:
        duration = params["duration_s"]
        if isinstance(duration, bool) or not isinstance(duration, int | float) or duration <= 0:
            raise ControlError("bad_params", "duration_s must be a number of seconds > 0")
        request["duration_s"] = duration
    return request


def _fault_name(params: Mapping[str, Any]) -> str | None:
    extra = set(params) - {"name"}
    if extra:
        raise ControlError("bad_params", f"unknown parameter {sorted(extra)[0]!r}")
    name = params.get("name")
    if name is None:
        return None
    if not isinstance(name, str):
        raise ControlError("bad_params", "name must be a string, e.g. usb1")
    # The technician names the port; the fault it latched is "overcurrent.<port>".
    return name if "." in name else overcurrent_fault(name)


def _events_params(params: Mapping[str, Any]) -> tuple[float | None, int]:
    extra = set(params) - {"since_s", "limit"}
    if extra:
        raise ControlError("bad_params", f"unknown parameter {sorted(extra)[0]!r}")
    since_s = params.get("since_s")
    if since_s is not None and (
        isinstance(since_s, bool) or not isinstance(since_s, int | float) or since_s < 0
    ):
        raise ControlError("bad_params", "since_s must be a number of seconds >= 0")
    limit = params.get("limit", MAX_EVENTS)
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_EVENTS:
        raise ControlError("bad_params", f"limit must be an integer in [1, {MAX_EVENTS}]")
    return since_s, limit


# -- the status object (schemas/control-status.schema.json) ----------------------


def build_status(agent: AgentView) -> dict[str, Any]:
    now = agent.clock.monotonic()
    health = agent.health(now)
    stats = agent.outbox.stats()
    state = agent.controller.snapshot(now)
    link: dict[str, Any] = {
        "connected": agent.link.connected,
        "last_publish_age_s": health.last_publish_age_s,
        "reconnects": agent.link.reconnects,
        "last_error": agent.link.last_error,
    }
    link_age = round(max(0.0, now - agent.session.changed_mono), 1)
    link["since_s" if agent.link.connected else "down_since_s"] = link_age
    link["contract"] = agent.publisher.contract
    if agent.publisher.contract == 2:
        # How long a record waits for its batch: the latency ops see.
        waiting, oldest_s = agent.publisher.waiting()
        link["batch_s"] = agent.publisher.batch_s
        link["batch_waiting"] = waiting
        link["batch_oldest_s"] = None if oldest_s is None else round(oldest_s, 1)
    latest = agent.sampler.latest()
    sensor_faults = agent.sampler.faults()
    channels = {
        name: {
            "volts": None if reading is None else round(reading.volts, 3),
            "amps": None if reading is None else round(reading.amps, 4),
            "watts": None if reading is None else round(reading.watts, 3),
            "fault": sensor_faults.get(name),
        }
        for name, reading in latest.items()
    }
    faults = dict(agent.faults)
    for name in state.latched_faults:
        faults.setdefault(name, "latched off until reset")
    return {
        "bench": agent.cfg.bench.id,
        "agent_version": __version__,
        "uptime_s": round(max(0.0, now - agent.started_mono), 1),
        "clock": {"synced": agent.clock.synced(), "wall": iso_utc(agent.clock.wall())},
        "link": link,
        "outbox": {
            "depth": stats.depth,
            "bytes": stats.bytes,
            "oldest_age_s": health.outbox_oldest_age_s,
            "drops": stats.drops_total,
            "fault": stats.fault,
        },
        "channels": channels,
        "battery": state.battery.payload(),
        "charger": _charger_status(agent),
        "outputs": {name: out.payload() for name, out in state.outputs.items()},
        "faults": [{"name": k, "detail": v} for k, v in sorted(faults.items())],
        "tamper_open": agent.tamper_open,
        "today": agent.counters.today(),
    }


def _charger_status(agent: AgentView) -> dict[str, Any] | None:
    if agent.charger is None:
        return None
    reading = agent.charger.reading()
    if reading is None:
        error = "stale" if agent.charger.stale() else "no_data"
        return {"state": None, "error": error, "panel_watts": None, "yield_today_kwh": None}
    return {
        "state": reading.charge_state,
        "error": None if reading.error == "no_error" else reading.error,
        "panel_watts": reading.panel_watts,
        "yield_today_kwh": reading.yield_today_kwh,
    }


# -- the self-test ---------------------------------------------------------------


def _check(name: str, ok: bool, detail: str, hint: str = "") -> dict[str, Any]:
    return {"name": name, "ok": ok, "detail": detail, "hint": "" if ok else hint}


def selftest(agent: AgentView) -> list[dict[str, Any]]:
    """One check per part: config, each sensor, charger, broker, clock, storage."""
    checks = [_config_check(agent)]
    checks += _bus_checks(agent)
    checks += _sensor_checks(agent)
    if agent.charger is not None:
        reading = agent.charger.reading()
        if reading is None:
            why = agent.charger.open_error
            checks.append(
                _check(
                    "charger",
                    False,
                    why or N_("no valid data from the charge controller"),
                    N_("check the VE.Direct cable and the serial port in [charger]"),
                )
            )
        else:
            error = reading.error
            detail = f"{reading.charge_state}, {reading.battery_volts} V"
            checks.append(
                _check(
                    "charger",
                    error in (None, "no_error"),
                    detail if error in (None, "no_error") else f"{detail}, error {error}",
                    N_("the charge controller reports an error: see its manual or VictronConnect"),
                )
            )
    mqtt = agent.cfg.mqtt
    if cleartext_password(mqtt) is not None:
        checks.append(
            _check(
                "broker_security",
                False,
                N_("the MQTT password is sent in clear text (no TLS)"),
                N_("configure TLS in [mqtt]: ca_file, cert_file, key_file"),
            )
        )
    where = f"{mqtt.host}:{mqtt.port}{' TLS' if mqtt.tls else ''}"
    if agent.link.connected:
        checks.append(_check("broker", True, where))
    else:
        checks.append(
            _check(
                "broker",
                False,
                f"{where}: {agent.link.last_error or 'not connected yet'}",
                N_("check the uplink (router, SIM), the broker address and the certificates"),
            )
        )
    synced = agent.clock.synced()
    checks.append(
        _check(
            "clock",
            synced,
            N_("synced") if synced else N_("not synced"),
            N_("check NTP: timedatectl timesync-status"),
        )
    )
    checks.append(_storage_check(agent))
    replay_store = agent.faults.get(Fault.REPLAY_STORE)
    if replay_store is not None:
        checks.append(
            _check(
                "commands",
                False,
                replay_store,
                N_("remote commands are refused until a restart; check [storage] dir"),
            )
        )
    return checks


def _config_check(agent: AgentView) -> dict[str, Any]:
    """The file on disk, read again: an edit since the start shows up here."""
    try:
        load_config(agent.cfg.source)
    except ConfigError as exc:
        return _check(
            "config", False, str(exc), N_("fix the file, then run: bench-agent config check")
        )
    return _check("config", True, str(agent.cfg.source))


def _bus_checks(agent: AgentView) -> list[dict[str, Any]]:
    """GPIO (outputs, tamper) and the I2C bus (sensors) on a real bench: there or why not."""
    if agent.cfg.hardware.backend != "pi":
        return []
    faults = agent.hardware.faults()
    hint = N_("fix what it says; the agent tries again by itself, no restart needed")
    return [
        _check(part, part not in faults, faults.get(part) or N_("available"), hint)
        for part in (Fault.GPIO, Fault.I2C)
    ]


def _sensor_checks(agent: AgentView) -> list[dict[str, Any]]:
    checks = []
    latest = agent.sampler.latest()
    faults = agent.sampler.faults()
    for sensor in agent.cfg.sensors:
        reading = latest.get(sensor.name)
        name = f"sensor.{sensor.name}"
        if reading is None:
            checks.append(
                _check(
                    name,
                    False,
                    faults.get(sensor.name) or "no reading",
                    N_("check the sensor's wiring and its I2C address (i2cdetect -y 1)"),
                )
            )
            continue
        detail = f"{reading.volts:.2f} V, {reading.amps:.3f} A"
        plausible = (
            0.0 <= reading.volts <= sensor.bus_range_volts * BUS_VOLTS_MARGIN
            and abs(reading.amps) <= sensor.max_amps * AMPS_MARGIN
        )
        checks.append(
            _check(
                name,
                plausible,
                detail,
                N_("implausible reading: check the shunt and the calibration in the config"),
            )
        )
    return checks


def _storage_check(agent: AgentView) -> dict[str, Any]:
    directory = agent.cfg.storage.dir
    fault = agent.outbox.fault
    try:
        free = shutil.disk_usage(directory).free
    except OSError as exc:
        return _check("storage", False, str(exc), N_("the storage directory is missing"))
    detail = f"{free // (1024 * 1024)} MiB free"
    if fault is not None:
        return _check(
            "storage",
            False,
            f"{fault}, {detail}",
            N_("free space on the SD card or replace it; the outbox lives in [storage] dir"),
        )
    return _check(
        "storage",
        free >= MIN_FREE_BYTES,
        detail,
        N_("free space on the SD card; the outbox lives in [storage] dir"),
    )
