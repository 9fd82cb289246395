"""The domain's words, each in one place: why an output is as it is, what happened,
and the names of the bench's outputs.

Every member is a `str` (StrEnum), so payloads carry it as is and the contract
does not change. The technician's CLI has words for every `Reason` and `EventType` in English
and Indonesian (a test checks each member), and the event schema and the
README name every `EventType` (a test checks that too).

A new reason or event: add the member here, its words in `local/render.py`
and `locale/`, and its fields in `schemas/event.schema.json` and the README.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from enum import StrEnum
from typing import Final

from bench_agent.json_value import JsonObject


class Reason(StrEnum):
    """Why an output is on or off (the policy's decision, in `state` and events)."""

    OVERCURRENT_TRIP = "overcurrent_trip"
    OVERCURRENT_LATCHED = "overcurrent_latched"
    COOLDOWN = "cooldown"
    OVER_TEMPERATURE = "over_temperature"
    BATTERY_LOW = "battery_low"
    BATTERY_VOLTAGE_LOW = "battery_voltage_low"
    OVERRIDE_ON = "override_on"
    OVERRIDE_OFF = "override_off"
    SCHEDULE_ON = "schedule_on"
    SCHEDULE_OFF = "schedule_off"
    DEFAULT = "default"
    SAFE_STATE = "safe_state"  # the agent starts or stops
    UNKNOWN_OUTPUT = "unknown_output"  # a request named an output the bench does not have


class EventType(StrEnum):
    """The `type` of every event the bench records (schemas/event.schema.json)."""

    OUTPUT_SWITCHED = "output_switched"
    OUTPUT_ERROR = "output_error"
    FAULT_RAISED = "fault_raised"
    FAULT_CLEARED = "fault_cleared"
    TAMPER = "tamper"
    OVERCURRENT_TRIP = "overcurrent_trip"
    OVERCURRENT_LATCHED = "overcurrent_latched"
    OVERRIDE_EXPIRED = "override_expired"
    BATTERY_SHED = "battery_shed"
    BATTERY_RESTORED = "battery_restored"
    OVER_TEMPERATURE = "over_temperature"
    TEMPERATURE_RESTORED = "temperature_restored"
    FAULT_RESET = "fault_reset"
    COMMAND = "command"
    UPLINK_RECOVERY = "uplink_recovery"
    OUTBOX_DROPPED = "outbox_dropped"
    CLOCK_SYNCED = "clock_synced"
    CONFIG_RELOADED = "config_reloaded"
    CONFIG_RELOAD_REFUSED = "config_reload_refused"


# -- output names ------------------------------------------------------------------

WIFI: Final = "wifi"
"""The Wi-Fi hotspot output; every other output is a USB port `usb<N>`."""

USB_PORT: Final = re.compile(r"usb([0-9]{1,2})")


def usb_port(number: int) -> str:
    """`usb_port(2)` -> "usb2"."""
    if not 0 <= number <= 99:
        raise ValueError(f"a USB port number is 0-99, got {number}")
    return f"usb{number}"


def usb_port_number(name: str) -> int | None:
    """2 for "usb2"; None for anything that is not a USB port's name."""
    match = USB_PORT.fullmatch(name)
    return int(match.group(1)) if match else None


def is_output_name(name: str) -> bool:
    """What a config may call an output: the hotspot or a USB port."""
    return name == WIFI or usb_port_number(name) is not None


EmitEvent = Callable[[str, JsonObject], None]
"""Records an event: (its `EventType`, its fields). The recorder's `emit_event` is one."""
