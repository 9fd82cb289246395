"""The readers of the configuration's own tables, one function per table: `[bench]`,
`[hardware]`, `[ina219.<name>]`, `[outputs.<name>]`, `[tamper]`, `[sampling]`,
`[mqtt]` (with its password file), `[storage]`, `[control]`, `[charger]`, `[sim]` and
`[commands]`, each into its frozen type of `config.py`.

Apart from `config_loader.py`, which reads the file and checks what spans tables
(shared I2C addresses and pins, the tables a backend requires): each reader here sees
one table only, so a key is added or checked in one place. The power side's tables
(battery, policy, uplink, counters) are `config_power.py`.
"""

from __future__ import annotations

import zoneinfo
from datetime import datetime
from pathlib import Path
from typing import Literal, cast

from bench_agent.config import (
    BENCH_ID_PATTERN,
    CHANNEL_NAME_PATTERN,
    MAX_PAYLOAD_BYTES,
    TOPIC_PREFIX_PATTERN,
    BenchConfig,
    ChargerConfig,
    CommandsConfig,
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
from bench_agent.toml_table import REQUIRED, TomlTable, checked
from bench_agent.vocabulary import WIFI, is_output_name


def parse_bench(t: TomlTable) -> BenchConfig:
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


def parse_hardware(t: TomlTable) -> HardwareConfig:
    with checked(t):
        return HardwareConfig(
            backend=t.get_choice("backend", ("pi", "sim")),
            i2c_bus=t.get_int("i2c_bus", 1, lo=0, hi=255),
        )


def parse_ina219(name: str, t: TomlTable) -> Ina219Config:
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


def parse_output(name: str, t: TomlTable) -> OutputConfig:
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


def parse_tamper(t: TomlTable) -> TamperConfig:
    with checked(t):
        return TamperConfig(
            pin=t.get_int("pin", REQUIRED, lo=0, hi=53),
            pull_up=t.get_bool("pull_up", True),
            open_when_active=t.get_bool("open_when_active", False),
        )


def parse_sampling(t: TomlTable) -> SamplingConfig:
    with checked(t):
        sample = t.get_float("sample_interval_s", 1.0, lo=0.05, hi=3600)
        publish = t.get_float("publish_interval_s", 60.0, lo=1, hi=86400)
        if publish < sample:
            raise t.error("publish_interval_s", "must not be shorter than sample_interval_s")
        thermal = t.get_str("cpu_temperature_path", "/sys/class/thermal/thermal_zone0/temp")
        return SamplingConfig(sample, publish, Path(thermal))


def parse_mqtt(t: TomlTable, bench: BenchConfig, base: Path) -> MqttConfig:
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
            keepalive_s=t.get_int("keepalive_s", 540, lo=5, hi=65535),  # README: the link's cost
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
            contract=2 if t.get_int("contract", 2, lo=1, hi=2) == 2 else 1,
            telemetry_batch_s=t.get_float("telemetry_batch_s", 300.0, lo=0, hi=3600),
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


def parse_storage(t: TomlTable, base: Path) -> StorageConfig:
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


def parse_control(t: TomlTable, base: Path) -> ControlConfig:
    with checked(t):
        sock = t.get_path("socket", "/run/bench-agent/control.sock", base)
        assert sock is not None
        if len(bytes(sock)) > 107:  # sun_path is 108 bytes on Linux
            raise t.error("socket", "path longer than 107 bytes")
        return ControlConfig(socket=sock, group=t.get_str("group", None))


def parse_charger(t: TomlTable, base: Path) -> ChargerConfig:
    with checked(t):
        port = t.get_path("port", REQUIRED, base)
        assert port is not None
        return ChargerConfig(
            port=port,
            baudrate=t.get_int("baudrate", 19200, lo=300, hi=115200),
            stale_after_s=t.get_float("stale_after_s", 10.0, lo=1, hi=3600),
        )


def parse_sim(t: TomlTable, base: Path, bench: BenchConfig) -> SimConfig:
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


def parse_commands(t: TomlTable, base: Path) -> CommandsConfig:
    with checked(t):
        keys = t.get_path("trusted_keys", "/etc/bench-agent/ops-keys", base)
        assert keys is not None
        return CommandsConfig(
            trusted_keys=keys,
            allow_unsigned=t.get_bool("allow_unsigned", False),
            max_age_s=t.get_float("max_age_s", 300.0, lo=10, hi=86400),
        )
