"""Configuration: the frozen typed objects one TOML file is parsed into, once at start.

`config_loader.load_config` reads the file (through `toml_table.TomlTable`);
nothing past it sees a raw dict. Every problem (unknown key, wrong type,
out-of-range value) becomes a `ConfigError` whose text is ONE line naming the
file, the dotted key and the problem; the CLI exits 78 on it.

Secrets are never values in the file: `password_file` names a file the loader
reads, and the secret is kept in a field that is excluded from `repr`.
"""

from __future__ import annotations

import re
import zoneinfo
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Literal

from bench_agent.power.chemistry import CHEMISTRIES
from bench_agent.power.counters import CountersConfig
from bench_agent.power.policy_config import (
    PolicyConfig,
)
from bench_agent.power.soc import DEFAULT_REST_CURRENT_C
from bench_agent.power.uplink import UplinkConfig

BENCH_ID_PATTERN = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
# 1 MiB, the shipped broker's max_packet_size, less room for the topic and headers.
MAX_PAYLOAD_BYTES = 1024 * 1024 - 4096
TOPIC_PREFIX_PATTERN = re.compile(r"[A-Za-z0-9_\-]+(/[A-Za-z0-9_\-]+)*")
CHANNEL_NAME_PATTERN = re.compile(r"[a-z][a-z0-9_]{0,31}")


# ---------------------------------------------------------------------------
# The typed configuration
# ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BenchConfig:
    id: str
    timezone: str  # IANA name, e.g. "Asia/Jakarta"


@dataclass(frozen=True, slots=True)
class HardwareConfig:
    backend: Literal["pi", "sim"]
    i2c_bus: int


@dataclass(frozen=True, slots=True)
class Ina219Config:
    name: str
    address: int  # 7-bit I2C address
    shunt_ohms: float
    max_amps: float  # the largest current the channel must measure
    bus_range_volts: Literal[16, 32]


@dataclass(frozen=True, slots=True)
class OutputConfig:
    """One switched load: a USB port or the Wi-Fi hotspot."""

    name: str  # "usb1", "usb2", … or "wifi"
    backend: Literal["gpio", "nmcli"]
    pin: int | None  # BCM number, for backend "gpio"
    nmcli_connection: str | None  # NetworkManager profile, for backend "nmcli"
    safe_state_on: bool  # the state at start, stop and before the first decision


@dataclass(frozen=True, slots=True)
class TamperConfig:
    pin: int
    pull_up: bool  # switch to ground with the internal pull-up
    open_when_active: bool  # True: the box is open when the input reads active


@dataclass(frozen=True, slots=True)
class SamplingConfig:
    sample_interval_s: float
    publish_interval_s: float
    cpu_temperature_path: Path


@dataclass(frozen=True, slots=True)
class MqttConfig:
    host: str
    port: int
    topic_prefix: str
    keepalive_s: int
    protocol: Literal["5", "3.1.1"]
    client_id: str
    ca_file: Path | None
    cert_file: Path | None
    key_file: Path | None
    tls: bool
    username: str | None
    password: str | None = field(repr=False)  # read from password_file; never logged
    reconnect_min_s: float
    reconnect_max_s: float
    # The MQTT contract the bench sends records in: 2 (batched, compact, deflated;
    # `bench-ops bridge` turns it into 1 at the city) or 1 (JSON, one message each).
    contract: Literal[1, 2] = 2
    # v2: a record waits at most this long for its batch (0: each record at once).
    telemetry_batch_s: float = 300.0


@dataclass(frozen=True, slots=True)
class StorageConfig:
    dir: Path
    outbox_max_bytes: int
    max_payload_bytes: int  # largest telemetry message when draining the backlog
    # Records older than this (boot-relative seconds) are dropped, counted; None: only the cap.
    outbox_max_age_s: float | None = None


@dataclass(frozen=True, slots=True)
class ControlConfig:
    socket: Path
    group: str | None


@dataclass(frozen=True, slots=True)
class ChargerConfig:
    port: Path
    baudrate: int
    stale_after_s: float


@dataclass(frozen=True, slots=True)
class SimConfig:
    """The simulated bench (backend "sim")."""

    speed: float  # simulated seconds per real second
    start: datetime  # simulated wall time at agent start (aware)
    seed: int
    scenario: Path | None
    panel_watts_peak: float
    battery_ah: float
    battery_chemistry: Literal["lifepo4", "agm"]
    initial_soc_pct: float
    clock_synced_at_start: bool
    charger: bool  # run a simulated VE.Direct controller on a pty


@dataclass(frozen=True, slots=True)
class CommandsConfig:
    trusted_keys: Path  # a directory of <key_id>.pub files (ops' Ed25519 public keys)
    allow_unsigned: bool  # LAB ONLY: accept unsigned commands (logged loudly)
    max_age_s: float  # once the clock is synced, older commands are refused


@dataclass(frozen=True, slots=True)
class BatteryConfig:
    capacity_ah: float
    chemistry: Literal["lifepo4", "agm"]
    channel: str  # the INA219 channel on the battery; positive amps = charging
    # A steady discharge below this fraction of the capacity (A per Ah) counts as rest
    # for the state-of-charge estimator's voltage anchor.
    rest_current_c: float = DEFAULT_REST_CURRENT_C
    # Ω, battery and cabling: the I·R correction of the estimator and of the voltage
    # safety net. None: the chemistry's typical figure for this capacity.
    internal_resistance_ohm: float | None = None

    @property
    def resistance_ohm(self) -> float:
        """The internal resistance in use (configured, or the chemistry's typical one)."""
        if self.internal_resistance_ohm is not None:
            return self.internal_resistance_ohm
        return CHEMISTRIES[self.chemistry].resistance_ohm_ah / self.capacity_ah


@dataclass(frozen=True, slots=True)
class Config:
    source: Path
    bench: BenchConfig
    hardware: HardwareConfig
    sensors: tuple[Ina219Config, ...]
    outputs: tuple[OutputConfig, ...]
    tamper: TamperConfig | None
    sampling: SamplingConfig
    mqtt: MqttConfig
    storage: StorageConfig
    control: ControlConfig
    charger: ChargerConfig | None
    sim: SimConfig | None
    battery: BatteryConfig
    policy: PolicyConfig
    commands: CommandsConfig
    # Defaults so a Config built by hand (tests) needs neither table.
    uplink: UplinkConfig = field(default_factory=UplinkConfig)
    counters: CountersConfig = field(default_factory=CountersConfig)

    @property
    def tz(self) -> zoneinfo.ZoneInfo:
        return zoneinfo.ZoneInfo(self.bench.timezone)

    def topic(self, leaf: str) -> str:
        """The full MQTT topic of `leaf` ("telemetry", "cmd/reply", …) for this bench."""
        return f"{self.mqtt.topic_prefix}/{self.bench.id}/{leaf}"
