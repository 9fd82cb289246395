"""What the policy decides from and what it carries from one sample to the next:
its inputs, the overrides, the per-port faults and the state (serializable)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Final

from bench_agent.checks import require, require_finite
from bench_agent.json_value import JsonObject

if TYPE_CHECKING:  # only read here, never built: no import at run time
    from bench_agent.power.policy_config import PolicyConfig

# --------------------------------------------------------------------------- inputs


@dataclass(frozen=True, slots=True)
class Override:
    """A manual override of one output. ``state`` None means "auto" (no override)."""

    state: bool | None
    expires_mono_s: float | None  # monotonic s at which it ends; None = until cancelled
    source: str  # who set it, e.g. "cli", "mqtt:ops-42"

    def expired(self, mono_s: float) -> bool:
        return self.expires_mono_s is not None and mono_s >= self.expires_mono_s


@dataclass(frozen=True, slots=True)
class PolicyInputs:
    """One sample's worth of everything the policy looks at.

    Sensor values may be None or NaN (unknown). ``now_local`` must be timezone-aware,
    in the bench's timezone; ``mono_s`` is a monotonic clock in s (cooldowns and
    override expiry use it, so a wall-clock jump cannot shorten them).
    """

    now_local: datetime
    mono_s: float
    soc_pct: float | None
    battery_volts: float | None  # V at the battery's terminals, under whatever load
    battery_amps: float | None  # A through the battery, + = charging
    port_amps: Mapping[str, float | None]
    enclosure_c: float | None
    cpu_c: float | None
    overrides: Mapping[str, Override] = field(default_factory=dict)

    def __post_init__(self) -> None:
        require(
            isinstance(self.now_local, datetime) and self.now_local.utcoffset() is not None,
            "now_local",
            "must be a timezone-aware datetime",
            self.now_local,
        )
        require_finite("mono_s", self.mono_s)


# --------------------------------------------------------------------------- state


@dataclass(frozen=True, slots=True)
class PortFault:
    """Over-current bookkeeping of one port."""

    consecutive_over: int = 0  # samples in a row above trip_amps
    trips: int = 0  # trips not yet forgotten
    cooldown_until_mono_s: float | None = None  # off until this monotonic time, then retried
    last_trip_mono_s: float | None = None
    latched: bool = False  # off until reset_fault()


@dataclass(frozen=True, slots=True)
class VoltageWatch:
    """The voltage safety net of one load class (e.g. the Wi-Fi, or the USB ports)."""

    shed: bool = False  # held off by the voltage rule
    low_since_mono_s: float | None = None  # below the shed level, continuously, since
    high_since_mono_s: float | None = None  # (while shed) at/above the restore level since


@dataclass(frozen=True, slots=True)
class PolicyEvent:
    """Something the controller should publish as an MQTT event (kind is a stable code)."""

    kind: str
    output: str | None  # None for events about the whole bench
    detail: str


@dataclass(frozen=True, slots=True)
class Decision:
    """What one output should be, a stable reason code, and a human detail."""

    on: bool
    reason: str
    detail: str


# The "nothing to remember" values, made once: frozen, so one instance serves every
# port and load (decide runs every second on the bench; a fresh one each call was a
# measurable share of its time).
NO_FAULT: Final = PortFault()
CALM: Final = VoltageWatch()


@dataclass(frozen=True, slots=True)
class PolicyState:
    """What the policy remembers between samples. ``PolicyState()`` is the start state.

    The battery protection is kept per load class, by its name (``LoadClass.name``):
    ``battery_shed`` by the state-of-charge rule, ``voltage`` the voltage safety net; a
    class absent from either is not shed by that rule.

    ``events`` are those raised by the call that produced this state (the next call
    replaces them): the controller publishes them right after ``decide``.
    """

    ports: Mapping[str, PortFault] = field(default_factory=dict)
    battery_shed: Mapping[str, bool] = field(default_factory=dict)  # by the state of charge
    over_temperature: bool = False
    voltage: Mapping[str, VoltageWatch] = field(default_factory=dict)
    outputs: Mapping[str, bool] = field(default_factory=dict)
    events: tuple[PolicyEvent, ...] = ()

    def __post_init__(self) -> None:
        for name in ("ports", "battery_shed", "voltage", "outputs"):
            object.__setattr__(self, name, MappingProxyType(dict(getattr(self, name))))

    def port(self, name: str) -> PortFault:
        return self.ports.get(name, NO_FAULT)

    def watch(self, load: str) -> VoltageWatch:
        """The voltage safety net of the load class named ``load``."""
        return self.voltage.get(load, CALM)

    def shed(self, load: str) -> bool:
        """The load class named ``load`` is held off for the battery, by either rule."""
        return self.battery_shed.get(load, False) or self.watch(load).shed

    @property
    def latched_ports(self) -> tuple[str, ...]:
        return tuple(sorted(p for p, f in self.ports.items() if f.latched))

    def to_dict(self, cfg: PolicyConfig) -> JsonObject:
        """JSON-able form for persistence across restarts (latched faults survive a reboot).

        Monotonic times mean nothing after a reboot, so a pending cooldown is stored as
        a flag and restarted in full by :meth:`from_dict`. Two flags per load class of
        ``cfg``, named after it ("wifi_battery_shed", "wifi_voltage_shed"): the keys the
        agent wrote before load classes were data, so either agent reads the other's file.
        """
        names = [load.name for load in cfg.battery.loads]
        return {
            "v": 1,
            "ports": {
                p: {
                    "trips": f.trips,
                    "latched": f.latched,
                    "cooling_down": f.cooldown_until_mono_s is not None,
                }
                for p, f in self.ports.items()
            },
            **{f"{name}_battery_shed": self.battery_shed.get(name, False) for name in names},
            "over_temperature": self.over_temperature,
            # A voltage shed survives a restart (restoring needs the voltage again, for
            # the whole delay); the delays themselves start over.
            **{f"{name}_voltage_shed": self.watch(name).shed for name in names},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], cfg: PolicyConfig, mono_s: float) -> PolicyState:
        """Restore :meth:`to_dict`'s output; ports and load classes no longer configured
        are dropped, a configured class missing from the file is not shed.

        Raises ValueError on data that is not what ``to_dict`` writes.
        """
        require(isinstance(data, Mapping) and data.get("v") == 1, "v", "unknown version", data)
        ports: dict[str, PortFault] = {}
        raw_ports = data.get("ports", {})
        require(isinstance(raw_ports, Mapping), "ports", "must be an object", raw_ports)
        for port, raw in raw_ports.items():
            if port not in cfg.ports:
                continue
            require(isinstance(raw, Mapping), f"ports.{port}", "must be an object", raw)
            trips, latched, cooling = raw.get("trips"), raw.get("latched"), raw.get("cooling_down")
            require(
                isinstance(trips, int) and not isinstance(trips, bool) and trips >= 0,
                f"ports.{port}.trips",
                "must be an integer >= 0",
                trips,
            )
            require(isinstance(latched, bool), f"ports.{port}.latched", "must be bool", latched)
            require(
                isinstance(cooling, bool), f"ports.{port}.cooling_down", "must be bool", cooling
            )
            ports[port] = PortFault(
                trips=trips,
                latched=latched,
                # Keep counting towards the latch: the restart does not prove the fault gone.
                last_trip_mono_s=mono_s if trips else None,
                cooldown_until_mono_s=mono_s + cfg.ports[port].cooldown_s if cooling else None,
            )

        def flag(name: str) -> bool:
            value = data.get(name, False)
            require(isinstance(value, bool), name, "must be bool", value)
            return bool(value)

        names = [load.name for load in cfg.battery.loads]
        battery_shed = {name: flag(f"{name}_battery_shed") for name in names}
        over_temperature = flag("over_temperature")
        # "<name>_voltage_shed" is absent in files written before the voltage rule
        voltage = {name: VoltageWatch(shed=flag(f"{name}_voltage_shed")) for name in names}
        return cls(
            ports=ports,
            battery_shed=battery_shed,
            over_temperature=over_temperature,
            voltage=voltage,
        )
