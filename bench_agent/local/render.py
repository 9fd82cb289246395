"""What the technician reads: the daemon's status and events as lines of at most 80
columns, in the current language (English or Indonesian)."""

from __future__ import annotations

import json
import math
import textwrap
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, Final

from bench_agent.checks import is_finite_number
from bench_agent.local.i18n import _, decimal_point, ngettext
from bench_agent.vocabulary import WIFI, EventType, Reason, usb_port_number

WIDTH: Final = 80  # columns; a phone's SSH client or a bare console

_EVENT_ENVELOPE: Final = frozenset(
    {
        "v",
        "bench",
        "seq",
        "seq_epoch",
        "ts",
        "type",
        "time_quality",
        "boot_id",
        "uptime_s",
        "historical",
    }
)


def format_status(status: Mapping[str, Any]) -> list[str]:
    """The status object as lines of at most 80 columns, in the current language.

    Tolerant: a field an older daemon does not send shows as "?", never a crash.
    """
    labels = {
        "clock": _("Clock"),
        "link": _("Uplink"),
        "outbox": _("Outbox"),
        "battery": _("Battery"),
        "charger": _("Charger"),
        "power": _("Power"),
        "outputs": _("Outputs"),
        "faults": _("Faults"),
        "tamper": _("Tamper"),
        "today": _("Today"),
    }
    indent = max(len(label) for label in labels.values()) + 2
    lines = _wrap(
        "",
        _("Bench {bench} · agent {version} · up {uptime}").format(
            bench=status.get("bench", "?"),
            version=status.get("agent_version", "?"),
            uptime=duration_text(status.get("uptime_s")),
        ),
    )

    def row(key: str, texts: Sequence[str | tuple[str, int]]) -> None:
        for i, item in enumerate(texts):
            text, hang = item if isinstance(item, tuple) else (item, 0)
            label = labels[key] if i == 0 else ""
            lines.extend(_wrap(label.ljust(indent), text, hang))

    row("clock", [_clock_text(_obj(status, "clock"))])
    row("link", _link_texts(_obj(status, "link")))
    row("outbox", [_outbox_text(_obj(status, "outbox"))])
    row("battery", [_battery_text(_obj(status, "battery"))])
    row("charger", [_charger_text(status.get("charger"))])
    row("power", _channel_texts(_obj(status, "channels")))
    row("outputs", _output_texts(_obj(status, "outputs")))
    row("faults", _fault_texts(status.get("faults")))
    row("tamper", [_tamper_text(status.get("tamper_open"))])
    row("today", _today_texts(_obj(status, "today")))
    return lines


def _wrap(prefix: str, text: str, hang: int = 0) -> list[str]:
    """`text` after `prefix`, wrapped to WIDTH; continuation lines `hang` columns further in."""
    return textwrap.wrap(
        text,
        width=WIDTH,
        initial_indent=prefix,
        subsequent_indent=" " * (len(prefix) + hang),
        break_on_hyphens=False,
    ) or [prefix.rstrip()]


def _obj(status: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    return as_map(status.get(key))


def as_map(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _number(value: Any, digits: int) -> str:
    if not is_finite_number(value):
        return "?"
    return f"{value:.{digits}f}".replace(".", decimal_point())


def duration_text(seconds: Any) -> str:
    """A human duration, two units at most: 42s, 5m 10s, 2h 3m, 3d 4h."""
    if isinstance(seconds, bool) or not isinstance(seconds, int | float):
        return "?"
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    s = round(seconds)
    if s < 60:
        return _("{s}s").format(s=s)
    if s < 3600:
        m, s = divmod(s, 60)
        return _("{m}m {s}s").format(m=m, s=s) if s else _("{m}m").format(m=m)
    if s < 86400:
        h, m = divmod(s // 60, 60)
        return _("{h}h {m}m").format(h=h, m=m) if m else _("{h}h").format(h=h)
    d, h = divmod(s // 3600, 24)
    return _("{d}d {h}h").format(d=d, h=h) if h else _("{d}d").format(d=d)


def _local_time(iso: Any) -> str:
    if not isinstance(iso, str):
        return "?"
    try:
        moment = datetime.fromisoformat(iso)
    except ValueError:
        return iso
    if moment.tzinfo is None:
        return iso
    return moment.astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")


def _clock_text(clock: Mapping[str, Any]) -> str:
    wall = _local_time(clock.get("wall"))
    if clock.get("synced") is True:
        return _("{time}, synced").format(time=wall)
    return _("{time}, NOT SYNCED (the time may be wrong)").format(time=wall)


def _link_texts(link: Mapping[str, Any]) -> list[str]:
    parts: list[str] = []
    if link.get("connected") is True:
        parts.append(
            _("connected for {duration}").format(duration=duration_text(link.get("since_s")))
        )
    else:
        parts.append(
            _("DOWN for {duration}").format(duration=duration_text(link.get("down_since_s")))
        )
    age = link.get("last_publish_age_s")
    if age is None:
        parts.append(_("nothing published yet"))
    else:
        parts.append(_("last publish {age} ago").format(age=duration_text(age)))
    reconnects = link.get("reconnects")
    if isinstance(reconnects, int):
        parts.append(ngettext("{n} reconnect", "{n} reconnects", reconnects).format(n=reconnects))
    texts = [" · ".join(parts)]
    if link.get("contract") == 2:
        batch = _("contract 2, a batch at most every {duration}").format(
            duration=duration_text(link.get("batch_s"))
        )
        waiting = link.get("batch_waiting")
        if isinstance(waiting, int) and waiting > 0:
            batch += " · " + ngettext(
                "{n} record waiting, the oldest for {age}",
                "{n} records waiting, the oldest for {age}",
                waiting,
            ).format(n=waiting, age=duration_text(link.get("batch_oldest_s")))
        texts.append(batch)
    if link.get("last_error"):
        texts.append(_("last error: {error}").format(error=link["last_error"]))
    return texts


def _outbox_text(outbox: Mapping[str, Any]) -> str:
    depth = outbox.get("depth")
    parts = [_("{n} waiting").format(n=depth if isinstance(depth, int) else "?")]
    if outbox.get("oldest_age_s") is not None:
        parts.append(_("oldest {age}").format(age=duration_text(outbox["oldest_age_s"])))
    drops = outbox.get("drops")
    parts.append(_("{n} dropped").format(n=drops if isinstance(drops, int) else "?"))
    if outbox.get("fault"):
        parts.append(_("STORAGE FAULT: {fault}").format(fault=outbox["fault"]))
    return " · ".join(parts)


def _battery_text(battery: Mapping[str, Any]) -> str:
    soc = battery.get("soc_pct")
    if soc is None:
        return _("charge unknown")
    sources = {
        "coulomb": _("counted current"),
        "voltage_anchor": _("from rest voltage"),
        "bmv": _("battery monitor"),
    }
    source = sources.get(str(battery.get("source")), str(battery.get("source")))
    confidence = battery.get("confidence")
    confidence_pct = confidence * 100 if isinstance(confidence, int | float) else None
    return _("{soc}% ({source}, confidence {confidence}%)").format(
        soc=_number(soc, 0), source=source, confidence=_number(confidence_pct, 0)
    )


def _charger_text(charger: Any) -> str:
    if not isinstance(charger, Mapping):
        return _("none configured")
    parts = [str(charger.get("state") or _("no data"))]
    if charger.get("error"):
        parts.append(_("ERROR: {error}").format(error=charger["error"]))
    parts.append(_("panel {watts} W").format(watts=_number(charger.get("panel_watts"), 0)))
    parts.append(_("today {kwh} kWh").format(kwh=_number(charger.get("yield_today_kwh"), 2)))
    return " · ".join(parts)


def _channel_texts(channels: Mapping[str, Any]) -> list[str | tuple[str, int]]:
    if not channels:
        return [_("no sensors")]
    width = max(len(name) for name in channels)
    texts: list[str | tuple[str, int]] = []
    for name, value in channels.items():
        reading = as_map(value)
        if reading.get("fault"):
            fault = _("no reading: {fault}").format(fault=reading["fault"])
            texts.append((f"{name:<{width}}  {fault}", width + 2))
            continue
        volts = _number(reading.get("volts"), 2)
        amps = _number(reading.get("amps"), 2)
        watts = _number(reading.get("watts"), 1)
        texts.append(f"{name:<{width}}  {volts:>6} V {amps:>6} A {watts:>7} W")
    return texts


def output_label(name: str) -> str:
    """ "USB port 1" for usb1, "Wi-Fi" for wifi, in the current language."""
    if name == WIFI:
        return "Wi-Fi"
    number = usb_port_number(name)
    return _("USB port {n}").format(n=number) if number is not None else name


def reason_texts() -> dict[Reason, str]:
    """Words for every reason code, in the current language (a test checks each one)."""
    return {
        Reason.OVERCURRENT_TRIP: _("over-current, switched off"),
        Reason.OVERCURRENT_LATCHED: _("over-current, latched off"),
        Reason.COOLDOWN: _("cooling down after over-current"),
        Reason.OVER_TEMPERATURE: _("too hot"),
        Reason.BATTERY_LOW: _("battery low"),
        Reason.BATTERY_VOLTAGE_LOW: _("battery voltage low"),
        Reason.SAFE_STATE: _("safe state"),
        Reason.OVERRIDE_ON: _("switched on by hand"),
        Reason.OVERRIDE_OFF: _("switched off by hand"),
        Reason.SCHEDULE_ON: _("on schedule"),
        Reason.SCHEDULE_OFF: _("outside scheduled hours"),
        Reason.DEFAULT: _("default"),
        Reason.UNKNOWN_OUTPUT: _("no such output"),
    }


def reason_text(code: str) -> str:
    """The policy's reason code (stable, English) as words in the current language;
    a code this version does not know (a newer agent's) as it is."""
    try:
        return reason_texts()[Reason(code)]
    except ValueError:
        return code


def reason_with_detail(text: str) -> str:
    """ "battery_low: battery 18% < 20%" → "battery low: battery 18% < 20%" (translated code)."""
    code, sep, detail = text.partition(": ")
    return reason_text(code) + sep + detail if sep else reason_text(text)


def _output_texts(outputs: Mapping[str, Any]) -> list[str | tuple[str, int]]:
    if not outputs:
        return [_("none")]
    width = max(len(name) for name in outputs)
    on_off_width = max(len(_("ON")), len(_("OFF")))
    texts: list[str | tuple[str, int]] = []
    for name, value in outputs.items():
        output = as_map(value)
        on = output.get("on")
        switched = _("ON") if on is True else (_("OFF") if on is False else "?")
        reason = str(output.get("reason", "?"))
        text = f"{name:<{width}}  {switched:<{on_off_width}}  {reason_text(reason)}"
        override = output.get("override")
        if output.get("detail") and not reason.startswith("override_"):
            text += f": {output['detail']}"
        if isinstance(override, Mapping):
            text += " · " + _override_text(override)
        texts.append((text, width + on_off_width + 4))
    return texts


def _override_text(override: Mapping[str, Any]) -> str:
    state = state_word(str(override.get("state")))
    source = override.get("source", "?")
    if override.get("expires_in_s") is None:
        return _("override {state} until cleared (by {source})").format(state=state, source=source)
    return _("override {state}, {left} left (by {source})").format(
        state=state, left=duration_text(override["expires_in_s"]), source=source
    )


def state_word(state: str) -> str:
    return {"on": _("on"), "off": _("off"), "auto": _("automatic")}.get(state, state)


def _fault_texts(faults: Any) -> list[str]:
    if not isinstance(faults, list) or not faults:
        return [_("none")]
    texts = []
    for fault in faults:
        if isinstance(fault, Mapping):
            detail = fault.get("detail")
            name = str(fault.get("name", "?"))
            texts.append(f"{name}: {detail}" if detail else name)
    return texts


def _tamper_text(tamper_open: Any) -> str:
    if tamper_open is None:
        return _("no switch")
    return _("BOX OPEN") if tamper_open else _("box closed")


def _today_texts(today: Mapping[str, Any]) -> list[str]:
    texts = [
        _("solar {wh} Wh · hotspot on {hours} h").format(
            wh=_number(today.get("solar_wh"), 0), hours=_number(today.get("hotspot_h"), 1)
        )
    ]
    usb_wh = as_map(today.get("usb_wh"))
    sessions = as_map(today.get("sessions"))
    ports = sorted(set(usb_wh) | set(sessions))
    for port in ports:
        count = sessions.get(port)
        n = count if isinstance(count, int) else 0
        texts.append(
            f"{port}: {_number(usb_wh.get(port), 1)} Wh · "
            + ngettext("{n} charging session", "{n} charging sessions", n).format(n=n)
        )
    return texts


def event_texts() -> dict[EventType, str]:
    """Words for every event type, in the current language (a test checks each one)."""
    return {
        EventType.FAULT_RAISED: _("fault"),
        EventType.FAULT_CLEARED: _("fault cleared"),
        EventType.FAULT_RESET: _("fault reset"),
        EventType.TAMPER: _("tamper switch"),
        EventType.OUTPUT_SWITCHED: _("switched"),
        EventType.OUTPUT_ERROR: _("output cannot be switched"),
        EventType.OVERCURRENT_TRIP: _("over-current trip"),
        EventType.OVERCURRENT_LATCHED: _("over-current, latched off"),
        EventType.OVERRIDE_EXPIRED: _("override expired"),
        EventType.BATTERY_SHED: _("load shed, battery low"),
        EventType.BATTERY_RESTORED: _("battery recovered"),
        EventType.OVER_TEMPERATURE: _("load shed, too hot"),
        EventType.TEMPERATURE_RESTORED: _("temperature normal again"),
        EventType.CONFIG_RELOADED: _("configuration reloaded"),
        EventType.CONFIG_RELOAD_REFUSED: _("configuration not reloaded"),
        EventType.COMMAND: _("command"),
        EventType.CLOCK_SYNCED: _("clock synced"),
        EventType.OUTBOX_DROPPED: _("outbox full, oldest records dropped"),
        EventType.UPLINK_RECOVERY: _("uplink recovery"),
    }


def event_text(event_type: str) -> str:
    """An event type (stable, English) as words in the current language; a type this
    version does not know (a newer agent's) as it is."""
    try:
        return event_texts()[EventType(event_type)]
    except ValueError:
        return event_type


def format_event(event: Mapping[str, Any]) -> list[str]:
    """One event as lines of at most 80 columns: time, seq, what, then its fields."""
    when = _local_time(event.get("ts"))
    if event.get("time_quality") == "unsynced":
        when = "~" + when  # the clock was not synced: the time may be wrong
    fields = " ".join(
        f"{key}={_field(value)}" for key, value in event.items() if key not in _EVENT_ENVELOPE
    )
    head = f"{when}  #{event.get('seq', '?')}  {event_text(str(event.get('type', '?')))}"
    return _wrap("", f"{head}  {fields}" if fields else head, hang=4)


def _field(value: Any) -> str:
    if isinstance(value, str):
        return value if value and " " not in value else json.dumps(value, ensure_ascii=False)
    return json.dumps(value, ensure_ascii=False)
