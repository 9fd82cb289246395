"""Victron VE.Direct text protocol: pure framing, field mapping, and the serial reader thread.

A VE.Direct device (SmartSolar/BlueSolar MPPT, BMV, SmartShunt) sends, unasked, one
block per second at 19200 8N1. A block is a run of fields ``\\r\\n<label>\\t<value>``
ending with ``\\r\\nChecksum\\t<one byte>``; the block is valid when all its bytes
(from the ``\\r\\n`` that starts it through the checksum byte) sum to 0 mod 256.
Devices may also interleave asynchronous HEX-protocol frames (``:`` hex digits
``\\n``) anywhere except in the checksum byte's place; they are not part of the
block and not counted in its checksum.

The 8-bit checksum is weak, so the framer is careful about *where* a block
starts: when it does not know (at attach, after garbage) it only tries starts at
fields that real devices put first (``PID``, and ``H1`` for the BMV's history
block), rather than every line, which would let roughly one truncated block in
twenty through on a noisy line.
"""

from __future__ import annotations

import contextlib
import logging
import math
import queue
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType, TracebackType
from typing import Any, Final, Self

import serial

log = logging.getLogger(__name__)

DEFAULT_BAUDRATE: Final = 19200

# Bounds on anything the framer holds: the longest real block is ~25 fields and
# ~300 bytes; labels are at most 9 characters and values at most 33.
MAX_BLOCK_BYTES: Final = 1024
MAX_BLOCK_FIELDS: Final = 64
MAX_LABEL_BYTES: Final = 16
MAX_VALUE_BYTES: Final = 128
MAX_HEX_FRAME_BYTES: Final = 512

_CR: Final = 0x0D
_LF: Final = 0x0A
_TAB: Final = 0x09
_COLON: Final = 0x3A
_CHECKSUM_LABEL: Final = b"Checksum"
_HEX_DIGITS: Final = frozenset(b"0123456789ABCDEFabcdef")
# Labels a block opens with on every Victron device we know: MPPTs, BMVs,
# SmartShunts and Phoenix inverters start with PID; the BMV history block with H1.
_BLOCK_OPENING_LABELS: Final = frozenset({b"PID", b"H1"})

# Framer states.
_UNSYNCED: Final = 0  # hunting for the '\r' that may start a block
_FIELD_LF: Final = 1  # got the '\r' that starts a field; expect '\n'
_LABEL: Final = 2
_VALUE: Final = 3
_CHECKSUM_BYTE: Final = 4  # the next byte, whatever it is, is the checksum
_BLOCK_CR: Final = 5  # a block just ended; the next '\r' starts the next one


def checksum_byte(block_without_checksum: bytes) -> int:
    """The checksum byte that makes ``block_without_checksum`` + byte sum to 0 mod 256."""
    return (-sum(block_without_checksum)) & 0xFF


def encode_block(fields: Iterable[tuple[str, str]]) -> bytes:
    """Encode fields as one text-protocol block, ``Checksum`` field included, as a device does."""
    body = b"".join(
        b"\r\n" + label.encode("ascii") + b"\t" + value.encode("ascii") for label, value in fields
    )
    body += b"\r\n" + _CHECKSUM_LABEL + b"\t"
    return body + bytes([checksum_byte(body)])


@dataclass(frozen=True, slots=True)
class RawBlock:
    """A block whose checksum is valid: its fields (label -> value) and its exact bytes."""

    fields: dict[str, str]
    raw: bytes  # from the '\r\n' that starts it through the checksum byte


class VEDirectFramer:
    """Turns a VE.Direct byte stream into validated blocks. Pure: no I/O, no clock.

    Counters (cumulative): ``blocks_ok``; ``checksum_errors`` (a block whose start was
    known, or that opened like a block, failed its checksum); ``bytes_discarded`` (every
    byte that ended up in no accepted block and no HEX frame: the partial block at
    attach, garbage, rejected blocks); ``hex_frames`` (HEX frames skipped).
    """

    def __init__(self) -> None:
        self.blocks_ok = 0
        self.checksum_errors = 0
        self.bytes_discarded = 0
        self.hex_frames = 0
        self._state = _UNSYNCED
        self._synced = False  # True when _block starts where the previous block ended
        self._block = bytearray()
        self._fields: list[tuple[int, bytes, bytes]] = []  # (offset of its '\r', label, value)
        self._label_start = 0
        self._value_start = 0
        self._in_hex = False
        self._hex_len = 0
        self._handlers: dict[int, Callable[[int, list[RawBlock]], bool]] = {
            _UNSYNCED: self._on_unsynced,
            _FIELD_LF: self._on_field_lf,
            _LABEL: self._on_label,
            _VALUE: self._on_value,
            _CHECKSUM_BYTE: self._on_checksum_byte,
            _BLOCK_CR: self._on_block_cr,
        }

    def feed(self, data: bytes) -> list[dict[str, str]]:
        """Consume ``data``; return the blocks it completed whose checksum is valid, in order.

        Each block maps label -> value (``Checksum`` excluded). Never raises on any input.
        """
        return [block.fields for block in self.feed_raw(data)]

    def feed_raw(self, data: bytes) -> list[RawBlock]:
        """Like feed(), with each block's exact bytes too (to log or check a block)."""
        out: list[RawBlock] = []
        for byte in data:
            self._feed_byte(byte, out)
        return out

    def _feed_byte(self, byte: int, out: list[RawBlock]) -> None:
        if self._in_hex:
            if byte == _LF:
                self._in_hex = False
                self.hex_frames += 1
                return
            if byte in _HEX_DIGITS and self._hex_len < MAX_HEX_FRAME_BYTES:
                self._hex_len += 1
                return
            # Not a HEX frame after all: the ':' was noise, and so is the block around it.
            self._in_hex = False
            self.bytes_discarded += self._hex_len + 1
            self._abandon()
        if byte == _COLON and self._state != _CHECKSUM_BYTE:
            self._in_hex = True
            self._hex_len = 0
            return
        if not self._handlers[self._state](byte, out):
            # The byte does not fit where it came: drop the block and let the byte
            # start the hunt for the next one (it may be the '\r' that starts it).
            self._abandon()
            self._on_unsynced(byte, out)

    # Each handler returns False when the byte breaks the block's structure.

    def _on_unsynced(self, byte: int, _out: list[RawBlock]) -> bool:
        if byte == _CR:
            self._start_block(synced=False)
        else:
            self.bytes_discarded += 1
        return True

    def _on_field_lf(self, byte: int, _out: list[RawBlock]) -> bool:
        if byte != _LF:
            return False
        self._block.append(byte)
        self._label_start = len(self._block)
        self._state = _LABEL
        return True

    def _on_label(self, byte: int, _out: list[RawBlock]) -> bool:
        block = self._block
        if byte == _TAB and len(block) > self._label_start:
            is_checksum = block[self._label_start :] == _CHECKSUM_LABEL
            block.append(byte)
            self._value_start = len(block)
            self._state = _CHECKSUM_BYTE if is_checksum else _VALUE
            return True
        if 0x21 <= byte <= 0x7E and len(block) - self._label_start < MAX_LABEL_BYTES:
            block.append(byte)
            return True
        return False

    def _on_value(self, byte: int, _out: list[RawBlock]) -> bool:
        if byte == _CR:
            return self._end_field()
        if byte in (_LF, _TAB) or len(self._block) - self._value_start >= MAX_VALUE_BYTES:
            return False
        self._block.append(byte)
        return True

    def _on_checksum_byte(self, byte: int, out: list[RawBlock]) -> bool:
        self._block.append(byte)
        self._finish_block(out)
        return True

    def _on_block_cr(self, byte: int, _out: list[RawBlock]) -> bool:
        if byte == _CR:
            self._start_block(synced=True)
            return True
        self._synced = False
        self._state = _UNSYNCED
        self.bytes_discarded += 1
        return True

    def _start_block(self, *, synced: bool) -> None:
        self._block = bytearray(b"\r")
        self._fields = []
        self._synced = synced
        self._state = _FIELD_LF

    def _end_field(self) -> bool:
        block = self._block
        label = bytes(block[self._label_start : self._value_start - 1])
        value = bytes(block[self._value_start :])
        self._fields.append((self._label_start - 2, label, value))
        if len(self._fields) >= MAX_BLOCK_FIELDS or len(block) >= MAX_BLOCK_BYTES:
            return False
        block.append(_CR)
        self._state = _FIELD_LF
        return True

    def _abandon(self) -> None:
        """Drop the block in progress as garbage and hunt for the next start."""
        self.bytes_discarded += len(self._block)
        self._block = bytearray()
        self._fields = []
        self._synced = False
        self._state = _UNSYNCED

    def _finish_block(self, out: list[RawBlock]) -> None:
        block = self._block
        starts = [0] if self._synced else []
        starts += [
            offset
            for offset, label, _ in self._fields
            if label in _BLOCK_OPENING_LABELS and (offset > 0 or not self._synced)
        ]
        # A block is "known" to have failed when its start was known or looked like one;
        # the unlabelled tail of a block we attached in the middle of is not an error.
        looked_like_a_block = bool(starts)
        for start in starts:
            if sum(memoryview(block)[start:]) & 0xFF == 0:
                self.bytes_discarded += start
                self.blocks_ok += 1
                fields = {
                    label.decode("latin-1"): value.decode("latin-1")
                    for offset, label, value in self._fields
                    if offset >= start
                }
                out.append(RawBlock(fields, bytes(block[start:])))
                break
        else:
            if looked_like_a_block:
                self.checksum_errors += 1
            self.bytes_discarded += len(block)
        # Whatever the verdict, a block boundary is now known.
        self._block = bytearray()
        self._fields = []
        self._synced = True
        self._state = _BLOCK_CR


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


# --------------------------------------------------------------------------- serial reader


@dataclass(frozen=True, slots=True)
class ChargerSample:
    """A merged reading and the time.monotonic() (s) at which its last block arrived."""

    reading: ChargerReading
    monotonic_s: float


@dataclass(frozen=True, slots=True)
class ReaderStats:
    """A snapshot of the reader's counters (cumulative over reconnects)."""

    blocks_ok: int
    checksum_errors: int
    bytes_discarded: int
    hex_frames: int
    value_errors: int  # values that did not parse, per block
    reconnects: int  # successful re-opens after the first open
    open_failures: int
    unexpected_errors: int  # exceptions other than serial/OS errors (logged with traceback)
    sink_errors: int  # the callback raised, or the queue was full
    connected: bool
    last_block_monotonic: float | None  # s, time.monotonic() of the last valid block


ReadingSink = Callable[[ChargerSample], None] | queue.Queue[ChargerSample]


class VEDirectReader:
    """Reads a VE.Direct device on a serial port in its own daemon thread.

    Each valid block is merged (see BlockMerger), mapped and handed, as a ChargerSample,
    to ``sink``: a callable (called on the reader thread; it must be quick) or a
    ``queue.Queue`` (put without blocking; when full the oldest item is dropped).
    When the port errors or disappears the reader closes it and re-opens it with
    capped exponential backoff, forever; it also re-opens a port that has been open
    but silent for ``reopen_after_silence_s``.
    """

    def __init__(
        self,
        port: str,
        sink: ReadingSink,
        *,
        baudrate: int = DEFAULT_BAUDRATE,
        read_timeout_s: float = 1.0,
        reconnect_initial_s: float = 0.5,
        reconnect_max_s: float = 30.0,
        reopen_after_silence_s: float | None = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if read_timeout_s <= 0 or reconnect_initial_s <= 0 or reconnect_max_s < reconnect_initial_s:
            raise ValueError("timeouts must be > 0 and reconnect_max_s >= reconnect_initial_s")
        self._port_name = port
        self._sink = sink
        self._baudrate = baudrate
        self._read_timeout_s = read_timeout_s
        self._reconnect_initial_s = reconnect_initial_s
        self._reconnect_max_s = reconnect_max_s
        self._reopen_after_silence_s = reopen_after_silence_s
        self._clock = clock
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._open_error: str | None = None
        self._serial: Any = None  # serial.Serial while open
        self._merger = BlockMerger()
        self._started_monotonic: float | None = None
        # counters, guarded by _lock
        self._blocks_ok = 0
        self._checksum_errors = 0
        self._bytes_discarded = 0
        self._hex_frames = 0
        self._value_errors = 0
        self._reconnects = 0
        self._open_failures = 0
        self._unexpected_errors = 0
        self._sink_errors = 0
        self._connected = False
        self._ever_connected = False
        self._last_block_monotonic: float | None = None

    # -- lifecycle

    def start(self) -> None:
        """Start the reader thread. Starting twice is an error; after close() it is too."""
        if self._thread is not None:
            raise RuntimeError("VEDirectReader already started")
        self._started_monotonic = self._clock()
        self._thread = threading.Thread(
            target=self._run, name=f"vedirect:{self._port_name}", daemon=True
        )
        self._thread.start()

    def close(self, timeout_s: float = 1.0) -> None:
        """Stop the thread and close the port. Idempotent; waits up to ``timeout_s``."""
        self._stop.set()
        serial_port = self._serial
        if serial_port is not None:
            with contextlib.suppress(Exception):
                serial_port.cancel_read()  # wakes a read() that is waiting for bytes
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout_s)
            if thread.is_alive():
                log.warning("VE.Direct reader thread did not stop within %.1f s", timeout_s)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def open_error(self) -> str | None:
        """Why the port cannot be opened now, with what to do; None once it is open."""
        with self._lock:
            return self._open_error

    @property
    def is_alive(self) -> bool:
        """True while the reader thread runs."""
        return self._thread is not None and self._thread.is_alive()

    # -- observation

    @property
    def stats(self) -> ReaderStats:
        with self._lock:
            return ReaderStats(
                blocks_ok=self._blocks_ok,
                checksum_errors=self._checksum_errors,
                bytes_discarded=self._bytes_discarded,
                hex_frames=self._hex_frames,
                value_errors=self._value_errors,
                reconnects=self._reconnects,
                open_failures=self._open_failures,
                unexpected_errors=self._unexpected_errors,
                sink_errors=self._sink_errors,
                connected=self._connected,
                last_block_monotonic=self._last_block_monotonic,
            )

    def is_stale(self, now_monotonic: float, stale_after_s: float) -> bool:
        """True when no valid block arrived in the last ``stale_after_s`` seconds.

        Before the first block the reader's start time counts as the last block, so a
        freshly started reader gets ``stale_after_s`` of grace; a never-started one is stale.
        """
        with self._lock:
            last = self._last_block_monotonic
        if last is None:
            last = self._started_monotonic
        return last is None or now_monotonic - last > stale_after_s

    # -- the thread

    def _run(self) -> None:
        delay = self._reconnect_initial_s
        while not self._stop.is_set():
            try:
                if self._open():
                    delay = self._reconnect_initial_s
                    self._read_until_error()
            except Exception:  # the thread must survive anything; say what happened
                log.exception("VE.Direct reader on %s: unexpected error", self._port_name)
                with self._lock:
                    self._unexpected_errors += 1
            finally:
                self._close_port()
            if self._stop.wait(delay):
                break
            delay = min(delay * 2.0, self._reconnect_max_s)

    def _open(self) -> bool:
        try:
            port = serial.Serial(
                self._port_name,
                self._baudrate,
                bytesize=serial.EIGHTBITS,
                parity=serial.PARITY_NONE,
                stopbits=serial.STOPBITS_ONE,
                timeout=self._read_timeout_s,
                exclusive=True,
            )
        except (OSError, ValueError) as exc:  # SerialException is an OSError
            with self._lock:
                self._open_failures += 1
                self._open_error = _open_error_text(self._port_name, exc)
            log.debug("VE.Direct: cannot open %s: %s", self._port_name, exc)
            return False
        self._serial = port
        if self._stop.is_set():  # close() ran while we were opening
            return False
        with self._lock:
            if self._ever_connected:
                self._reconnects += 1
            self._ever_connected = True
            self._connected = True
            self._open_error = None
        log.info("VE.Direct: %s open", self._port_name)
        return True

    def _close_port(self) -> None:
        port, self._serial = self._serial, None
        with self._lock:
            self._connected = False
        if port is not None:
            with contextlib.suppress(Exception):
                port.close()

    def _read_until_error(self) -> None:
        # A fresh framer per connection: the partial block at attach is discarded.
        framer = VEDirectFramer()
        counted = (0, 0, 0, 0)
        self._merger.clear()
        last_data = self._clock()
        port = self._serial
        while not self._stop.is_set():
            try:
                data = port.read(max(1, port.in_waiting))
            except OSError as exc:  # SerialException included: unplugged, EIO…
                log.warning("VE.Direct: %s read failed: %s; reconnecting", self._port_name, exc)
                return
            now = self._clock()
            if not data:
                silence = self._reopen_after_silence_s
                if silence is not None and now - last_data > silence:
                    log.warning(
                        "VE.Direct: %s silent for %.0f s; re-opening", self._port_name, silence
                    )
                    return
                continue
            last_data = now
            blocks = framer.feed(data)
            totals = (
                framer.blocks_ok,
                framer.checksum_errors,
                framer.bytes_discarded,
                framer.hex_frames,
            )
            with self._lock:
                self._blocks_ok += totals[0] - counted[0]
                self._checksum_errors += totals[1] - counted[1]
                self._bytes_discarded += totals[2] - counted[2]
                self._hex_frames += totals[3] - counted[3]
                if blocks:
                    self._last_block_monotonic = now
            counted = totals
            for block in blocks:
                self._deliver(block, now)

    def _deliver(self, block: Mapping[str, str], now: float) -> None:
        reading = map_block(self._merger.add(block))
        new_errors = sum(1 for label in reading.invalid_labels if label in block)
        sample = ChargerSample(reading, now)
        ok = True
        if isinstance(self._sink, queue.Queue):
            ok = _put_newest(self._sink, sample)
        else:
            try:
                self._sink(sample)
            except Exception:
                log.exception("VE.Direct: reading callback failed")
                ok = False
        with self._lock:
            self._value_errors += new_errors
            if not ok:
                self._sink_errors += 1


def _put_newest(target: queue.Queue[ChargerSample], sample: ChargerSample) -> bool:
    """Put without blocking; when full, drop the oldest. False when something was dropped."""
    try:
        target.put_nowait(sample)
        return True
    except queue.Full:
        with contextlib.suppress(queue.Empty):
            target.get_nowait()
        with contextlib.suppress(queue.Full):
            target.put_nowait(sample)
        return False


__all__ = [
    "ALARM_REASON_BITS",
    "CHARGE_STATES",
    "DEFAULT_BAUDRATE",
    "ERRORS",
    "MPPT_MODES",
    "OFF_REASON_BITS",
    "PRODUCT_NAMES",
    "BlockMerger",
    "ChargerReading",
    "ChargerSample",
    "RawBlock",
    "ReaderStats",
    "VEDirectFramer",
    "VEDirectReader",
    "checksum_byte",
    "encode_block",
    "map_block",
]


def _open_error_text(port: str, exc: BaseException) -> str:
    """What a technician can do about a serial port that does not open."""
    errno = getattr(exc, "errno", None)
    if isinstance(exc, FileNotFoundError) or errno == 2:
        return f"{port}: no such device — is the VE.Direct USB cable plugged in?"
    if isinstance(exc, PermissionError) or errno == 13:
        return f"{port}: permission denied — is bench-agent in group dialout?"
    return f"{port}: {exc}"
