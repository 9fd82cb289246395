"""`load_config(path)`: the TOML file read once, every table parsed into the frozen
types of `config.py`; any problem is ONE line naming file, key and problem."""

from __future__ import annotations

import tomllib
import zoneinfo
from collections.abc import Callable
from datetime import datetime, time
from functools import partial
from pathlib import Path
from typing import Any, Literal, TypeVar, cast

from bench_agent.config import (
    BENCH_ID_PATTERN,
    CHANNEL_NAME_PATTERN,
    MAX_PAYLOAD_BYTES,
    TOPIC_PREFIX_PATTERN,
    BatteryConfig,
    BenchConfig,
    ChargerConfig,
    CommandsConfig,
    Config,
    ControlConfig,
    HardwareConfig,
    Ina219Config,
    MqttConfig,
    OutputConfig,
    SamplingConfig,
    SimConfig,
    StorageConfig,
    TamperConfig,
)
from bench_agent.errors import ConfigError
from bench_agent.power.counters import CountersConfig
from bench_agent.power.policy_config import (
    BatteryThresholds,
    LoadClass,
    PolicyConfig,
    PortLimits,
    Schedule,
    TemperatureLimits,
)
from bench_agent.power.soc import DEFAULT_REST_CURRENT_C
from bench_agent.power.uplink import UplinkConfig
from bench_agent.toml_table import REQUIRED, TomlTable, checked
from bench_agent.vocabulary import WIFI, is_output_name

_T = TypeVar("_T")

# ---------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------


def load_config(path: str | Path) -> Config:
    """Read and validate `path`. Raises `ConfigError` (one line) on any problem."""
    path = Path(path)
    file = str(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(file, "<file>", "no such file") from None
    except PermissionError:
        raise ConfigError(file, "<file>", "permission denied") from None
    except UnicodeDecodeError:
        raise ConfigError(file, "<file>", "not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(file, "<file>", f"invalid TOML: {exc}") from None
    except RecursionError:  # tomllib recurses on nested arrays: [[[[…
        raise ConfigError(file, "<file>", "invalid TOML: nested too deeply") from None
    except OSError as exc:
        raise ConfigError(file, "<file>", exc.strerror or str(exc)) from None
    return _parse(TomlTable(file, "", raw), path.resolve().parent, path)


def _parse(top: TomlTable, base: Path, source: Path) -> Config:
    bench = _parse_bench(_need(top, "bench"))
    hardware = _parse_hardware(_need(top, "hardware"))
    sensors = tuple(_parse_ina219(name, t) for name, t in top.subtables("ina219"))
    addresses = [s.address for s in sensors]
    if len(set(addresses)) != len(addresses):
        raise top.error("ina219", "two channels share one I2C address")
    outputs = tuple(_parse_output(name, t) for name, t in top.subtables("outputs"))
    pins = [o.pin for o in outputs if o.pin is not None]
    tamper_table = top.table("tamper")
    tamper = _parse_tamper(tamper_table) if tamper_table else None
    if tamper is not None:
        pins.append(tamper.pin)
    if len(set(pins)) != len(pins):
        raise top.error("outputs", "two GPIO devices share one pin")
    sampling = _parse_sampling(_need(top, "sampling"))
    mqtt = _parse_mqtt(_need(top, "mqtt"), bench, base)
    storage = _parse_storage(_need(top, "storage"), base)
    control = _parse_control(_need(top, "control"), base)
    charger_table = top.table("charger")
    charger = _parse_charger(charger_table, base) if charger_table else None
    sim_table = top.table("sim")
    sim = _parse_sim(sim_table, base, bench) if sim_table else None
    if hardware.backend == "sim" and sim is None:
        raise top.error("sim", 'missing table (required when hardware.backend = "sim")')
    battery = _parse_battery(top.table("battery") or TomlTable(top.file, "battery", {}))
    commands = _parse_commands(top.table("commands") or TomlTable(top.file, "commands", {}), base)
    policy = _parse_policy(
        top.table("policy") or TomlTable(top.file, "policy", {}),
        ports=[o.name for o in outputs if o.name != WIFI],
        outputs=[o.name for o in outputs],
        battery=battery,
        battery_measured=battery.channel in {s.name for s in sensors},
    )
    uplink_table = top.table("uplink")
    uplink = _parse_uplink(uplink_table, outputs) if uplink_table else UplinkConfig()
    counters = _parse_counters(
        top.table("counters") or TomlTable(top.file, "counters", {}), sensors, outputs
    )
    top.done()
    return Config(
        source=source,
        bench=bench,
        hardware=hardware,
        sensors=sensors,
        outputs=outputs,
        tamper=tamper,
        sampling=sampling,
        mqtt=mqtt,
        storage=storage,
        control=control,
        charger=charger,
        sim=sim,
        battery=battery,
        policy=policy,
        commands=commands,
        uplink=uplink,
        counters=counters,
    )


def _need(top: TomlTable, name: str) -> TomlTable:
    table = top.table(name, required=True)
    assert table is not None
    return table


def _parse_bench(t: TomlTable) -> BenchConfig:
    with checked(t):
        bench_id = t.get_str("id", REQUIRED)
        if not BENCH_ID_PATTERN.fullmatch(bench_id):
            raise t.error("id", "must match [a-z0-9][a-z0-9-]{0,62}")
        if bench_id == "ops":  # city operations' identities are ops.view and ops.command
            raise t.error("id", "'ops' is reserved for city operations")
        tz = t.get_str("timezone", "Asia/Jakarta")
        try:
            zoneinfo.ZoneInfo(tz)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise t.error("timezone", f"unknown time zone {tz!r}") from None
        return BenchConfig(id=bench_id, timezone=tz)


def _parse_hardware(t: TomlTable) -> HardwareConfig:
    with checked(t):
        return HardwareConfig(
            backend=t.get_choice("backend", ("pi", "sim")),
            i2c_bus=t.get_int("i2c_bus", 1, lo=0, hi=255),
        )


def _parse_ina219(name: str, t: TomlTable) -> Ina219Config:
    if not CHANNEL_NAME_PATTERN.fullmatch(name):
        raise ConfigError(t.file, t.prefix, "channel names are lower-case letters, digits and _")
    with checked(t):
        return Ina219Config(
            name=name,
            address=t.get_int("address", REQUIRED, lo=0x40, hi=0x4F),
            shunt_ohms=t.get_float("shunt_ohms", REQUIRED, lo=0.0001, hi=10.0),
            max_amps=t.get_float("max_amps", REQUIRED, lo=0.001, hi=100.0),
            bus_range_volts=cast(Literal[16, 32], _int_choice(t, "bus_range_volts", (16, 32), 32)),
        )


def _int_choice(t: TomlTable, name: str, choices: tuple[int, ...], default: int) -> int:
    value = cast(int, t.get_int(name, default))
    if value not in choices:
        raise t.error(name, f"must be one of {', '.join(map(str, choices))}")
    return value


def _parse_output(name: str, t: TomlTable) -> OutputConfig:
    if not is_output_name(name):
        raise ConfigError(t.file, t.prefix, 'outputs are named "usb<N>" or "wifi"')
    with checked(t):
        backend = t.get_choice("backend", ("gpio", "nmcli"), "gpio")
        if backend == "nmcli" and name != WIFI:
            raise t.error("backend", 'only the "wifi" output can use nmcli')
        pin = t.get_int("pin", REQUIRED if backend == "gpio" else None, lo=0, hi=53)
        connection = t.get_str("nmcli_connection", REQUIRED if backend == "nmcli" else None)
        return OutputConfig(
            name=name,
            backend=backend,
            pin=pin if backend == "gpio" else None,
            nmcli_connection=connection,
            safe_state_on=t.get_bool("safe_state_on", False),
        )


def _parse_tamper(t: TomlTable) -> TamperConfig:
    with checked(t):
        return TamperConfig(
            pin=t.get_int("pin", REQUIRED, lo=0, hi=53),
            pull_up=t.get_bool("pull_up", True),
            open_when_active=t.get_bool("open_when_active", False),
        )


def _parse_sampling(t: TomlTable) -> SamplingConfig:
    with checked(t):
        sample = t.get_float("sample_interval_s", 1.0, lo=0.05, hi=3600)
        publish = t.get_float("publish_interval_s", 60.0, lo=1, hi=86400)
        if publish < sample:
            raise t.error("publish_interval_s", "must not be shorter than sample_interval_s")
        thermal = t.get_str("cpu_temperature_path", "/sys/class/thermal/thermal_zone0/temp")
        return SamplingConfig(sample, publish, Path(thermal))


def _parse_mqtt(t: TomlTable, bench: BenchConfig, base: Path) -> MqttConfig:
    with checked(t):
        prefix = t.get_str("topic_prefix", "smartbench")
        if not TOPIC_PREFIX_PATTERN.fullmatch(prefix):
            raise t.error("topic_prefix", "must be topic levels of letters, digits, - and _")
        ca = t.get_path("ca_file", None, base)
        cert = t.get_path("cert_file", None, base)
        key = t.get_path("key_file", None, base)
        if (cert is None) != (key is None):
            raise t.error(
                "cert_file" if cert is None else "key_file", "cert_file and key_file go together"
            )
        # The certificate files are not opened here: they are checked where they are
        # used (a failed TLS handshake is a link fault, `selftest` names the file), so
        # the reference config can be validated on a machine that has no secrets yet.
        tls = t.get_bool("tls", ca is not None or cert is not None)
        password_file = t.get_path("password_file", None, base)
        password = _read_secret(t, "password_file", password_file)
        username = t.get_str("username", None)
        if password is not None and username is None:
            raise t.error("username", "missing (password_file is set)")
        rmin = t.get_float("reconnect_min_s", 1.0, lo=0.1, hi=600)
        rmax = t.get_float("reconnect_max_s", 120.0, lo=rmin, hi=3600)
        return MqttConfig(
            host=t.get_str("host", REQUIRED),
            port=t.get_int("port", 8883 if tls else 1883, lo=1, hi=65535),
            topic_prefix=prefix,
            keepalive_s=t.get_int("keepalive_s", 60, lo=5, hi=65535),
            protocol=t.get_choice("protocol", ("5", "3.1.1"), "5"),
            client_id=t.get_str("client_id", f"bench-agent-{bench.id}"),
            ca_file=ca,
            cert_file=cert,
            key_file=key,
            tls=tls,
            username=username,
            password=password,
            reconnect_min_s=rmin,
            reconnect_max_s=rmax,
        )


def _read_secret(t: TomlTable, name: str, path: Path | None) -> str | None:
    if path is None:
        return None
    try:
        secret = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise t.error(name, f"cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise t.error(name, f"{path} is not UTF-8 text") from None
    if not secret:
        raise t.error(name, f"{path} is empty")
    return secret


def _parse_storage(t: TomlTable, base: Path) -> StorageConfig:
    with checked(t):
        directory = t.get_path("dir", "/var/lib/bench-agent", base)
        assert directory is not None
        return StorageConfig(
            dir=directory,
            outbox_max_bytes=t.get_int("outbox_max_bytes", 64 * 1024 * 1024, lo=64 * 1024),
            max_payload_bytes=t.get_int(
                # The shipped broker (deploy/broker) takes packets up to 1 MiB; the
                # topic and headers need the rest. A bigger broker limit is learned
                # from its CONNACK, never assumed.
                "max_payload_bytes",
                64 * 1024,
                lo=2048,
                hi=MAX_PAYLOAD_BYTES,
            ),
            outbox_max_age_s=t.get_float("outbox_max_age_s", None, lo=60),
        )


def _parse_control(t: TomlTable, base: Path) -> ControlConfig:
    with checked(t):
        sock = t.get_path("socket", "/run/bench-agent/control.sock", base)
        assert sock is not None
        if len(bytes(sock)) > 107:  # sun_path is 108 bytes on Linux
            raise t.error("socket", "path longer than 107 bytes")
        return ControlConfig(socket=sock, group=t.get_str("group", None))


def _parse_charger(t: TomlTable, base: Path) -> ChargerConfig:
    with checked(t):
        port = t.get_path("port", REQUIRED, base)
        assert port is not None
        return ChargerConfig(
            port=port,
            baudrate=t.get_int("baudrate", 19200, lo=300, hi=115200),
            stale_after_s=t.get_float("stale_after_s", 10.0, lo=1, hi=3600),
        )


def _parse_sim(t: TomlTable, base: Path, bench: BenchConfig) -> SimConfig:
    with checked(t):
        start_text = t.get_str("start", None)
        tz = zoneinfo.ZoneInfo(bench.timezone)
        if start_text is None:
            start = datetime.now(tz).replace(hour=5, minute=0, second=0, microsecond=0)
        else:
            try:
                start = datetime.fromisoformat(start_text)
            except ValueError:
                raise t.error("start", "must be an ISO 8601 date-time") from None
            if start.tzinfo is None:
                start = start.replace(tzinfo=tz)
        return SimConfig(
            speed=t.get_float("speed", 1.0, lo=0.1, hi=100_000),
            start=start,
            seed=t.get_int("seed", 1),
            scenario=t.get_path("scenario", None, base),
            panel_watts_peak=t.get_float("panel_watts_peak", 200.0, lo=1, hi=10_000),
            battery_ah=t.get_float("battery_ah", 100.0, lo=1, hi=10_000),
            battery_chemistry=t.get_choice("battery_chemistry", ("lifepo4", "agm"), "lifepo4"),
            initial_soc_pct=t.get_float("initial_soc_pct", 70.0, lo=0, hi=100),
            clock_synced_at_start=t.get_bool("clock_synced_at_start", True),
            charger=t.get_bool("charger", True),
        )


def _parse_commands(t: TomlTable, base: Path) -> CommandsConfig:
    with checked(t):
        keys = t.get_path("trusted_keys", "/etc/bench-agent/ops-keys", base)
        assert keys is not None
        return CommandsConfig(
            trusted_keys=keys,
            allow_unsigned=t.get_bool("allow_unsigned", False),
            max_age_s=t.get_float("max_age_s", 300.0, lo=10, hi=86400),
        )


def _parse_battery(t: TomlTable) -> BatteryConfig:
    with checked(t):
        return BatteryConfig(
            capacity_ah=t.get_float("capacity_ah", 50.0, lo=1, hi=10_000),
            chemistry=t.get_choice("chemistry", ("lifepo4", "agm"), "lifepo4"),
            channel=t.get_str("channel", "battery"),
            # C/100 is true rest (the least that makes sense); above C/5 the I·R
            # correction is bigger than LiFePO4's whole plateau.
            rest_current_c=t.get_float("rest_current_c", DEFAULT_REST_CURRENT_C, lo=0.01, hi=0.2),
            internal_resistance_ohm=t.get_float("internal_resistance_ohm", None, lo=0, hi=1),
        )


# Voltage safety net defaults per chemistry, in V of a 12 V battery at rest (the policy
# corrects the measured voltage by I·R first): (Wi-Fi off below, USB off below, both
# back at). They sit BELOW the state-of-charge levels (30 % / 15 %) on purpose: they are
# the net for an estimate gone wrong, not a second opinion on a good one. And ABOVE the
# low-voltage disconnects that protect the battery itself (a BMS at 2.5-2.8 V per cell,
# 10-11.2 V; the load output of a solar controller or a BatteryProtect, typically set
# between 10.5 and 12 V; the simulated bench's controller at 12.0 V for LiFePO4 and
# 11.8 V for AGM), which cut everything, the Pi and the uplink included. The percentages
# below are read off the estimator's charts (bench_agent/power/soc.py), which the simulated
# battery also follows.
_VOLTAGE_NET: dict[str, tuple[float, float, float]] = {
    # LiFePO4 (4S): the plateau ends at ~3.2 V per cell (12.8 V, ~20 %); 3.10 V per
    # cell (12.4 V) is ~15 % left and 3.05 V (12.2 V) ~12 %, on the steep knee where a
    # volt means something (0.08 V per %), unlike the plateau (~0.01 V per %). Back at
    # 3.25 V per cell (13.0 V): on the plateau again, ~40 % at rest, where the Wi-Fi's
    # own state-of-charge level brings it back too.
    "lifepo4": (12.4, 12.2, 13.0),
    # AGM: a sloping curve (~0.013 V per %): 12.0 V is ~27 % and 11.9 V ~20 % at rest;
    # lead-acid is worn by every deep discharge, so the net sits higher in % than
    # LiFePO4's. Back at 12.5 V, ~65 % at rest, which a charging battery passes at
    # once and a resting one only when really recharged.
    "agm": (12.0, 11.9, 12.5),
}


DAY_S = 86400.0


def _parse_uplink(t: TomlTable, outputs: tuple[OutputConfig, ...]) -> UplinkConfig:
    with checked(t):
        # Writing the table means wanting it; `enabled = false` keeps the settings, off.
        enabled = t.get_bool("enabled", True)
        output = t.get_str("output", "wifi")
        if enabled:
            by_name = {o.name: o for o in outputs}
            if output not in by_name:
                known = ", ".join(by_name) or "none"
                raise t.error("output", f"no output {output!r} in [outputs] (configured: {known})")
            if by_name[output].backend == "nmcli":
                # Taking a hotspot profile down does not power-cycle a hung router.
                raise t.error("output", f"{output!r} uses nmcli; a power cycle needs a gpio output")
        initial = t.get_float("backoff_initial_s", 3600.0, lo=60, hi=7 * DAY_S)
        return _build(
            t,
            "backoff_max_s",
            partial(
                UplinkConfig,
                enabled=enabled,
                output=output,
                offline_after_s=t.get_float("offline_after_s", 1800.0, lo=60, hi=7 * DAY_S),
                power_off_s=t.get_float("power_off_s", 30.0, lo=1, hi=3600),
                backoff_initial_s=initial,
                backoff_max_s=t.get_float("backoff_max_s", 21600.0, lo=initial, hi=7 * DAY_S),
                max_attempts_per_day=t.get_int("max_attempts_per_day", 4, lo=1, hi=96),
                backoff_reset_after_s=t.get_float(
                    "backoff_reset_after_s", 3600.0, lo=1, hi=7 * DAY_S
                ),
            ),
        )


def _parse_counters(
    t: TomlTable, sensors: tuple[Ina219Config, ...], outputs: tuple[OutputConfig, ...]
) -> CountersConfig:
    channels = {s.name for s in sensors}
    with checked(t):
        panel = t.get_str("panel_channel", None)
        if panel is None:
            # The reference wiring names the panel's channel "solar"; a bench without
            # one (panel power from the charge controller only) has no solar_wh.
            panel = "solar" if "solar" in channels else None
        elif panel not in channels:
            known = ", ".join(sorted(channels)) or "none"
            raise t.error(
                "panel_channel", f"no channel {panel!r} in [ina219] (configured: {known})"
            )
        output_names = [o.name for o in outputs]
        return _build(
            t,
            "session_min_amps",
            partial(
                CountersConfig,
                panel_channel=panel,
                # A port and the access point are measured by the channel of their name.
                ports=tuple(n for n in output_names if n != WIFI and n in channels),
                ap_channel="wifi" if "wifi" in channels else None,
                hotspot_output="wifi" if "wifi" in output_names else None,
                session_min_amps=t.get_float("session_min_amps", 0.1, lo=0.001, hi=10),
                session_min_s=t.get_float("session_min_s", 120.0, lo=0, hi=DAY_S),
            ),
        )


def _parse_window(t: TomlTable, key: str, text: Any) -> tuple[time, time]:
    if not isinstance(text, str) or "-" not in text:
        raise t.error(key, 'windows are "HH:MM-HH:MM" strings')
    start, _, end = text.partition("-")
    try:
        return time.fromisoformat(start.strip()), time.fromisoformat(end.strip())
    except ValueError:
        raise t.error(key, f"bad time window {text!r}") from None


def _parse_policy_battery(
    t: TomlTable, ports: list[str], battery: BatteryConfig, battery_measured: bool
) -> BatteryThresholds:
    wifi_v, usb_v, restore_v = _VOLTAGE_NET[battery.chemistry]
    with checked(t):
        pct = (
            t.get_float("wifi_off_below_pct", 30.0, lo=0, hi=100),
            t.get_float("wifi_on_above_pct", 40.0, lo=0, hi=100),
            t.get_float("usb_off_below_pct", 15.0, lo=0, hi=100),
            t.get_float("usb_on_above_pct", 25.0, lo=0, hi=100),
        )
        volts = (
            t.get_float("wifi_off_below_volts", wifi_v, lo=8, hi=16),
            t.get_float("usb_off_below_volts", usb_v, lo=8, hi=16),
            t.get_float("restore_above_volts", restore_v, lo=8, hi=16),
        )
        delay = t.get_float("voltage_delay_s", 90.0, lo=0, hi=3600)
    # Without a sensor on the battery there is no voltage to watch; a voltage rule
    # waiting for one would hold every shed load off forever.
    wifi_volts, usb_volts, restore_volts = volts if battery_measured else (None, None, None)
    try:
        # The load classes, in shed order, each with the keys named after it.
        return BatteryThresholds(
            loads=(
                LoadClass(WIFI, (WIFI,), pct[0], pct[1], wifi_volts, label="Wi-Fi"),
                LoadClass("usb", tuple(ports), pct[2], pct[3], usb_volts, label="USB"),
            ),
            restore_above_volts=restore_volts,
            voltage_delay_s=delay,
            internal_resistance_ohm=battery.resistance_ohm,
        )
    except ValueError as exc:
        # "usb_off_below_volts: must be below …": name the key that has to change.
        name, _, problem = str(exc).partition(": ")
        raise t.error(name, problem) from None


def _parse_policy(
    t: TomlTable,
    ports: list[str],
    outputs: list[str],
    battery: BatteryConfig,
    battery_measured: bool,
) -> PolicyConfig:
    with checked(t):
        battery_t = t.table("battery") or TomlTable(t.file, t.key("battery"), {})
        thresholds = _parse_policy_battery(battery_t, ports, battery, battery_measured)
        temp_t = t.table("temperature") or TomlTable(t.file, t.key("temperature"), {})
        with checked(temp_t):
            temperature = (
                temp_t.get_float("enclosure_shed_above_c", 65.0, lo=-40, hi=125),
                temp_t.get_float("enclosure_resume_below_c", 55.0, lo=-40, hi=125),
                temp_t.get_float("cpu_shed_above_c", 80.0, lo=-40, hi=125),
                temp_t.get_float("cpu_resume_below_c", 70.0, lo=-40, hi=125),
            )
        port_t = t.table("ports") or TomlTable(t.file, t.key("ports"), {})
        with checked(port_t):
            limits = (
                port_t.get_float("trip_amps", 2.4, lo=0.01, hi=100),
                port_t.get_float("hard_trip_amps", 3.0, lo=0.01, hi=100),
                port_t.get_int("trip_samples", 3, lo=1, hi=1000),
                port_t.get_float("cooldown_s", 60.0, lo=0, hi=86400),
                port_t.get_int("latch_after_trips", 3, lo=1, hi=1000),
            )
        schedules: dict[str, Schedule] = {}
        schedule_t = t.table("schedule") or TomlTable(t.file, t.key("schedule"), {})
        with checked(schedule_t):
            for name in outputs:
                windows = schedule_t._get(name, list, "an array of windows", None)
                if windows is not None:
                    parsed = tuple(_parse_window(schedule_t, name, w) for w in windows)
                    schedules[name] = _build(schedule_t, name, partial(Schedule, parsed))
        defaults_t = t.table("defaults") or TomlTable(t.file, t.key("defaults"), {})
        with checked(defaults_t):
            defaults = {n: defaults_t.get_bool(n, True) for n in outputs}
        return _build(
            t,
            "battery",
            lambda: PolicyConfig(
                ports={p: PortLimits(*limits) for p in ports},
                battery=thresholds,
                temperature=TemperatureLimits(*temperature),
                schedules=schedules,
                defaults=defaults,
            ),
        )


def _build(t: TomlTable, key: str, make: Callable[[], _T]) -> _T:
    """Build a policy object whose own `__post_init__` checks cross-field rules."""
    try:
        return make()
    except ValueError as exc:
        raise t.error(key, str(exc)) from None
