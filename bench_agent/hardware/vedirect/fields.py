"""VE.Direct fields: a block's labels and values as a `ChargerReading` in SI units, each
value checked against the device's physical range (pure)."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final

# --------------------------------------------------------------------------- field mapping

CHARGE_STATES: Final[Mapping[int, str]] = MappingProxyType(
    {
        0: "off",
        1: "low_power",
        2: "fault",
        3: "bulk",
        4: "absorption",
        5: "float",
        6: "storage",
        7: "equalize",
        9: "inverting",
        11: "power_supply",
        245: "starting_up",
        246: "repeated_absorption",
        247: "auto_equalize",
        248: "battery_safe",
        252: "external_control",
    }
)

MPPT_MODES: Final[Mapping[int, str]] = MappingProxyType(
    {0: "off", 1: "voltage_or_current_limited", 2: "mppt_active"}
)

ERRORS: Final[Mapping[int, str]] = MappingProxyType(
    {
        0: "no_error",
        2: "battery_voltage_too_high",
        17: "charger_temperature_too_high",
        18: "charger_over_current",
        19: "charger_current_reversed",
        20: "bulk_time_limit_exceeded",
        21: "current_sensor_issue",
        26: "terminals_overheated",
        28: "converter_issue",
        33: "input_voltage_too_high",
        34: "input_current_too_high",
        38: "input_shutdown_battery_voltage",
        39: "input_shutdown_current_flow",
        65: "lost_communication",
        66: "synchronised_charging_config_issue",
        67: "bms_connection_lost",
        68: "network_misconfigured",
        116: "factory_calibration_data_lost",
        117: "invalid_firmware",
        119: "user_settings_invalid",
    }
)

OFF_REASON_BITS: Final[Mapping[int, str]] = MappingProxyType(
    {
        0x001: "no_input_power",
        0x002: "switched_off_power_switch",
        0x004: "switched_off_device_mode",
        0x008: "remote_input",
        0x010: "protection_active",
        0x020: "paygo",
        0x040: "bms",
        0x080: "engine_shutdown",
        0x100: "analysing_input_voltage",
    }
)

ALARM_REASON_BITS: Final[Mapping[int, str]] = MappingProxyType(
    {
        1: "low_voltage",
        2: "high_voltage",
        4: "low_soc",
        8: "low_starter_voltage",
        16: "high_starter_voltage",
        32: "low_temperature",
        64: "high_temperature",
        128: "mid_voltage",
        256: "overload",
        512: "dc_ripple",
        1024: "low_ac_out_voltage",
        2048: "high_ac_out_voltage",
        4096: "short_circuit",
        8192: "bms_lockout",
    }
)

# The common product ids (VE.Direct Protocol document, "PID" table).
PRODUCT_NAMES: Final[Mapping[int, str]] = MappingProxyType(
    {
        0x0203: "BMV-700",
        0x0204: "BMV-702",
        0x0205: "BMV-700H",
        0x0300: "BlueSolar MPPT 70/15",
        0xA040: "BlueSolar MPPT 75/50",
        0xA041: "BlueSolar MPPT 150/35",
        0xA042: "BlueSolar MPPT 75/15",
        0xA043: "BlueSolar MPPT 100/15",
        0xA044: "BlueSolar MPPT 100/30",
        0xA045: "BlueSolar MPPT 100/50",
        0xA046: "BlueSolar MPPT 150/70",
        0xA047: "BlueSolar MPPT 150/100",
        0xA049: "BlueSolar MPPT 100/50 rev2",
        0xA04A: "BlueSolar MPPT 100/30 rev2",
        0xA04B: "BlueSolar MPPT 150/35 rev2",
        0xA04C: "BlueSolar MPPT 75/10",
        0xA04D: "BlueSolar MPPT 150/45",
        0xA04E: "BlueSolar MPPT 150/60",
        0xA04F: "BlueSolar MPPT 150/85",
        0xA050: "SmartSolar MPPT 250/100",
        0xA051: "SmartSolar MPPT 150/100",
        0xA052: "SmartSolar MPPT 150/85",
        0xA053: "SmartSolar MPPT 75/15",
        0xA054: "SmartSolar MPPT 75/10",
        0xA055: "SmartSolar MPPT 100/15",
        0xA056: "SmartSolar MPPT 100/30",
        0xA057: "SmartSolar MPPT 100/50",
        0xA058: "SmartSolar MPPT 150/35",
        0xA059: "SmartSolar MPPT 150/100 rev2",
        0xA05A: "SmartSolar MPPT 150/85 rev2",
        0xA05B: "SmartSolar MPPT 250/70",
        0xA05C: "SmartSolar MPPT 250/85",
        0xA05D: "SmartSolar MPPT 250/60",
        0xA05E: "SmartSolar MPPT 250/45",
        0xA05F: "SmartSolar MPPT 100/20",
        0xA060: "SmartSolar MPPT 100/20 48V",
        0xA061: "SmartSolar MPPT 150/45",
        0xA062: "SmartSolar MPPT 150/60",
        0xA063: "SmartSolar MPPT 150/70",
        0xA064: "SmartSolar MPPT 250/85 rev2",
        0xA065: "SmartSolar MPPT 250/100 rev2",
        0xA066: "BlueSolar MPPT 100/20",
        0xA067: "BlueSolar MPPT 100/20 48V",
        0xA074: "SmartSolar MPPT 75/10 rev2",
        0xA075: "SmartSolar MPPT 75/15 rev2",
        0xA079: "BlueSolar MPPT 75/10 rev2",
        0xA07A: "BlueSolar MPPT 75/15 rev2",
        0xA07B: "BlueSolar MPPT 100/15 rev2",
        0xA381: "BMV-712 Smart",
        0xA382: "BMV-710H Smart",
        0xA383: "BMV-712 Smart Rev2",
        0xA389: "SmartShunt 500A/50mV",
        0xA38A: "SmartShunt 1000A/50mV",
        0xA38B: "SmartShunt 2000A/50mV",
    }
)


def _bit_names(mask: int | None, names: Mapping[int, str]) -> tuple[str, ...]:
    if mask is None:
        return ()
    found = [name for bit, name in names.items() if mask & bit]
    unknown = mask & ~sum(names)
    if unknown:
        found.append(f"unknown_0x{unknown:x}")
    return tuple(found)


@dataclass(frozen=True, slots=True)
class ChargerReading:
    """One (merged) VE.Direct reading. Every field is None when the device did not send it
    or sent a value that did not parse (then its label is in ``invalid_labels``)."""

    # MPPT and BMV
    battery_volts: float | None = None  # V, from mV
    battery_amps: float | None = None  # A, from mA; positive = into the battery
    product_id: int | None = None  # PID
    model: str | None = None  # from the PID table; "unknown 0x…" if not in it
    firmware: str | None = None  # "1.39" from FW "139"; raw when not all digits
    serial_number: str | None = None  # SER#
    # MPPT
    panel_volts: float | None = None  # V, from VPV mV
    panel_watts: int | None = None  # W, PPV
    load_amps: float | None = None  # A, from IL mA
    load_on: bool | None = None  # LOAD ON/OFF
    charge_state: str | None = None  # CS, a CHARGE_STATES name (or "unknown_<n>")
    mppt_mode: str | None = None  # MPPT, a MPPT_MODES name
    error: str | None = None  # ERR, an ERRORS name
    off_reason_mask: int | None = None  # OR, bitmask (see off_reasons)
    yield_total_kwh: float | None = None  # H19, from 0.01 kWh
    yield_today_kwh: float | None = None  # H20
    max_power_today_w: int | None = None  # H21, W
    yield_yesterday_kwh: float | None = None  # H22
    max_power_yesterday_w: int | None = None  # H23, W
    day_sequence: int | None = None  # HSDS, 0..364
    # BMV / SmartShunt live block
    battery_watts: int | None = None  # P, W
    consumed_ah: float | None = None  # CE, Ah from mAh (negative = drawn)
    state_of_charge_pct: float | None = None  # SOC, % from per mille
    time_to_go_min: float | None = None  # TTG, minutes; math.inf when not discharging (-1)
    alarm: bool | None = None  # Alarm ON/OFF
    relay: bool | None = None  # Relay ON/OFF
    alarm_reason_mask: int | None = None  # AR, bitmask (see alarm_reasons)
    # BMV history block (H1..H18)
    deepest_discharge_ah: float | None = None  # H1, Ah from mAh
    last_discharge_ah: float | None = None  # H2
    average_discharge_ah: float | None = None  # H3
    charge_cycles: int | None = None  # H4
    full_discharges: int | None = None  # H5
    cumulative_ah_drawn: float | None = None  # H6, Ah from mAh
    min_battery_volts: float | None = None  # H7, V from mV
    max_battery_volts: float | None = None  # H8, V from mV
    seconds_since_full_charge: int | None = None  # H9, s
    automatic_syncs: int | None = None  # H10
    low_voltage_alarms: int | None = None  # H11
    high_voltage_alarms: int | None = None  # H12
    low_aux_voltage_alarms: int | None = None  # H13
    high_aux_voltage_alarms: int | None = None  # H14
    min_aux_volts: float | None = None  # H15, V from mV
    max_aux_volts: float | None = None  # H16, V from mV
    discharged_energy_kwh: float | None = None  # H17, from 0.01 kWh
    charged_energy_kwh: float | None = None  # H18, from 0.01 kWh
    # Labels this module does not map (never fatal), and labels whose value did not parse.
    extra: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    invalid_labels: tuple[str, ...] = ()

    @property
    def off_reasons(self) -> tuple[str, ...]:
        """Names of the bits set in ``off_reason_mask``."""
        return _bit_names(self.off_reason_mask, OFF_REASON_BITS)

    @property
    def alarm_reasons(self) -> tuple[str, ...]:
        """Names of the bits set in ``alarm_reason_mask``."""
        return _bit_names(self.alarm_reason_mask, ALARM_REASON_BITS)


MAX_TEXT_CHARS: Final = 32  # a serial number or firmware string; anything longer is garbage
MAX_DIGITS: Final = 12  # no VE.Direct value has more; a 120-digit PPV is line noise


def _int(text: str) -> int:
    text = text.strip()
    if len(text.lstrip("-")) > MAX_DIGITS:
        raise ValueError("too many digits")
    return int(text, 10)


def _within(parse: Callable[[str], Any], lo: float, hi: float) -> Callable[[str], Any]:
    """`parse`, refusing values outside what the device can physically report."""

    def parse_within(text: str) -> Any:
        value = parse(text)
        if isinstance(value, int | float) and not math.isinf(value) and not lo <= value <= hi:
            raise ValueError(f"{value} outside [{lo}, {hi}]")
        return value

    return parse_within


def _printable(text: str) -> str:
    """Printable ASCII of bounded length: no escape codes, NUL or markup reach ops."""
    text = text.strip()
    if not text or len(text) > MAX_TEXT_CHARS or not all(" " <= ch <= "~" for ch in text):
        raise ValueError("not printable ASCII of at most 32 characters")
    if any(ch in text for ch in '<>&"\\'):
        raise ValueError("markup characters")
    return text


def _scaled(divisor: float) -> Callable[[str], float]:
    def parse(text: str) -> float:
        return _int(text) / divisor

    return parse


def _on_off(text: str) -> bool:
    upper = text.strip().upper()
    if upper == "ON":
        return True
    if upper == "OFF":
        return False
    raise ValueError(text)


def _named(names: Mapping[int, str]) -> Callable[[str], str]:
    def parse(text: str) -> str:
        code = _int(text)
        if not 0 <= code <= 0xFFFF:
            raise ValueError(text)
        return names.get(code, f"unknown_{code}")

    return parse


def _hex(text: str) -> int:
    if len(text.strip()) > MAX_DIGITS:
        raise ValueError("too many digits")
    value = int(text.strip(), 16)  # accepts "0xA05F" and "A05F"
    if value < 0:
        raise ValueError(text)
    return value


def _firmware(text: str) -> str:
    text = _printable(text)
    # "139" is 1.39 on an MPPT, "0308" is 3.08 on a BMV; other forms (betas) stay raw.
    if text.isdigit():
        number = int(text)
        return f"{number // 100}.{number % 100:02d}"
    return text


def _time_to_go(text: str) -> float:
    minutes = _int(text)
    if minutes == -1:
        return math.inf
    if minutes < 0:
        raise ValueError(text)
    return float(minutes)


_MV = _scaled(1000.0)
_CENTI = _scaled(100.0)

# Physical bounds, generous for every VE.Direct device up to 48 V systems: a value
# outside them is line noise or a hostile device, and becomes null (a bad field).
_VOLTS = (-1.0, 100.0)  # battery and aux, V
_PANEL_VOLTS = (0.0, 300.0)
_AMPS = (-1000.0, 1000.0)
_WATTS = (-100_000.0, 100_000.0)
_KWH = (0.0, 1_000_000.0)
_AH = (-1_000_000.0, 1_000_000.0)
_COUNT = (0, 10_000_000)

# label -> (ChargerReading field, parser)
_FIELD_MAP: Final[Mapping[str, tuple[str, Callable[[str], Any]]]] = MappingProxyType(
    {
        "V": ("battery_volts", _within(_MV, *_VOLTS)),
        "I": ("battery_amps", _within(_MV, *_AMPS)),
        "PID": ("product_id", _within(_hex, 0, 0xFFFF)),
        "FW": ("firmware", _firmware),
        "SER#": ("serial_number", _printable),
        "VPV": ("panel_volts", _within(_MV, *_PANEL_VOLTS)),
        "PPV": ("panel_watts", _within(_int, 0, 100_000)),
        "IL": ("load_amps", _within(_MV, *_AMPS)),
        "LOAD": ("load_on", _on_off),
        "CS": ("charge_state", _named(CHARGE_STATES)),
        "MPPT": ("mppt_mode", _named(MPPT_MODES)),
        "ERR": ("error", _named(ERRORS)),
        "OR": ("off_reason_mask", _within(_hex, 0, 0xFFFFFFFF)),
        "H19": ("yield_total_kwh", _within(_CENTI, *_KWH)),
        "H20": ("yield_today_kwh", _within(_CENTI, *_KWH)),
        "H21": ("max_power_today_w", _within(_int, 0, 100_000)),
        "H22": ("yield_yesterday_kwh", _within(_CENTI, *_KWH)),
        "H23": ("max_power_yesterday_w", _within(_int, 0, 100_000)),
        "HSDS": ("day_sequence", _within(_int, 0, 366)),
        "P": ("battery_watts", _within(_int, *_WATTS)),
        "CE": ("consumed_ah", _within(_MV, *_AH)),
        "SOC": ("state_of_charge_pct", _within(_scaled(10.0), 0, 100)),
        "TTG": ("time_to_go_min", _within(_time_to_go, 0, 10_000_000)),
        "Alarm": ("alarm", _on_off),
        "Relay": ("relay", _on_off),
        "AR": ("alarm_reason_mask", _within(_int, 0, 0xFFFF)),
        "H1": ("deepest_discharge_ah", _within(_MV, *_AH)),
        "H2": ("last_discharge_ah", _within(_MV, *_AH)),
        "H3": ("average_discharge_ah", _within(_MV, *_AH)),
        "H4": ("charge_cycles", _within(_int, *_COUNT)),
        "H5": ("full_discharges", _within(_int, *_COUNT)),
        "H6": ("cumulative_ah_drawn", _within(_MV, *_AH)),
        "H7": ("min_battery_volts", _within(_MV, *_VOLTS)),
        "H8": ("max_battery_volts", _within(_MV, *_VOLTS)),
        "H9": ("seconds_since_full_charge", _within(_int, 0, 10_000_000_000)),
        "H10": ("automatic_syncs", _within(_int, *_COUNT)),
        "H11": ("low_voltage_alarms", _within(_int, *_COUNT)),
        "H12": ("high_voltage_alarms", _within(_int, *_COUNT)),
        "H13": ("low_aux_voltage_alarms", _within(_int, *_COUNT)),
        "H14": ("high_aux_voltage_alarms", _within(_int, *_COUNT)),
        "H15": ("min_aux_volts", _within(_MV, *_VOLTS)),
        "H16": ("max_aux_volts", _within(_MV, *_VOLTS)),
        "H17": ("discharged_energy_kwh", _within(_CENTI, *_KWH)),
        "H18": ("charged_energy_kwh", _within(_CENTI, *_KWH)),
    }
)


def map_block(fields: Mapping[str, str]) -> ChargerReading:
    """Map a block's label -> value to a ChargerReading with SI units. Never raises."""
    values: dict[str, Any] = {}
    extra: dict[str, str] = {}
    invalid: list[str] = []
    for label, text in fields.items():
        mapping = _FIELD_MAP.get(label)
        if mapping is None:
            # Kept for debugging only, and only when harmless to show.
            with contextlib.suppress(ValueError):
                if _printable(label) == label:
                    extra[label] = _printable(text)
            continue
        name, parse = mapping
        try:
            values[name] = parse(text)
        except (ValueError, OverflowError):
            invalid.append(label)
    product_id = values.get("product_id")
    if product_id is not None:
        values["model"] = PRODUCT_NAMES.get(product_id, f"unknown 0x{product_id:04X}")
    return ChargerReading(
        **values, extra=MappingProxyType(extra), invalid_labels=tuple(sorted(invalid))
    )


class BlockMerger:
    """Merges consecutive blocks so the newest value of every label is always present.

    A BMV alternates a live block (V, I, SOC…) and a history block (H1…H18); each is
    kept by its set of labels and the union is returned, newest last. At most
    ``max_kinds`` kinds are kept, so a device that changes its block layout leaves
    no stale labels behind for long.
    """

    def __init__(self, max_kinds: int = 4) -> None:
        if max_kinds < 1:
            raise ValueError("max_kinds must be >= 1")
        self._max_kinds = max_kinds
        self._latest: dict[frozenset[str], dict[str, str]] = {}

    def add(self, fields: Mapping[str, str]) -> dict[str, str]:
        """Record ``fields`` and return the merged view (label -> value)."""
        kind = frozenset(fields)
        self._latest.pop(kind, None)  # re-insert so dict order is recency
        self._latest[kind] = dict(fields)
        while len(self._latest) > self._max_kinds:
            del self._latest[next(iter(self._latest))]
        merged: dict[str, str] = {}
        for block in self._latest.values():
            merged.update(block)
        return merged

    def clear(self) -> None:
        """Forget everything (e.g. another device may be on the port after a replug)."""
        self._latest.clear()
