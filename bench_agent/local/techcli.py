"""The technician's commands: `status`, `usb`, `wifi`, `fault reset`, `selftest`, `events`.

They talk to the running daemon over the control socket only (see control.py),
so they work with the uplink down. Every message goes through ``i18n._``: with
``LANG=id_ID.UTF-8`` a technician reads Indonesian.

Exit codes (sysexits.h where one fits, like EX_CONFIG 78 for a bad config):
  0   done
  1   the daemon said no: an override refused, a self-test check failed, an
      error answer
  2   bad arguments (one line on stderr), as argparse does
  69  EX_UNAVAILABLE: the daemon is not running, or does not answer
  77  EX_NOPERM: this user may not open the socket
``status --watch`` ends with Ctrl-C and exit 0.

Wiring (cli.py): ``add_subcommands(subparsers)`` adds the parsers;
``dispatch(args, socket_path)`` runs one and returns its exit code, or None when
the command is not one of these. ``python -m bench_agent.local.techcli --socket PATH
COMMAND …`` runs them on their own.
"""

from __future__ import annotations

import argparse
import grp
import json
import math
import os
import re
import sys
import textwrap
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Final, TextIO

from bench_agent.checks import is_finite_number
from bench_agent.errors import UsageError
from bench_agent.local.control import (
    ControlClient,
    ControlError,
    DaemonNotResponding,
    DaemonNotRunning,
    PermissionDenied,
)
from bench_agent.local.i18n import _, decimal_point, ngettext, translate_marked
from bench_agent.vocabulary import WIFI, EventType, Reason, usb_port

EXIT_OK: Final = 0
EXIT_REFUSED: Final = 1
EXIT_USAGE: Final = 2
EXIT_UNAVAILABLE: Final = 69  # EX_UNAVAILABLE
EXIT_NOPERM: Final = 77  # EX_NOPERM

WIDTH: Final = 80  # columns; a phone's SSH client or a bare console
DEFAULT_SOCKET: Final = "/run/bench-agent/control.sock"
DEFAULT_WATCH_S: Final = 2.0
MIN_WATCH_S: Final = 0.5
SELFTEST_TIMEOUT_S: Final = 30.0  # the checks touch the hardware and the broker
DEFAULT_EVENTS_LIMIT: Final = 50
MAX_DURATION_S: Final = 30 * 86400  # a longer override is a typo (3000h), not a plan

_DURATION: Final = re.compile(
    r"(?:([0-9]{1,4})d)?(?:([0-9]{1,5})h)?(?:([0-9]{1,6})m)?(?:([0-9]{1,7})s)?"
)
_PORT: Final = re.compile(r"(?:usb)?([1-9][0-9]?)")
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

_sleep: Callable[[float], None] = time.sleep  # tests replace it to end --watch


# --------------------------------------------------------------------------- parsing


def parse_duration(text: str) -> int:
    """Seconds in `text`: "90s", "30m", "2h", "1h30m", "2d" (d h m s, in that order, lower case).

    Strict: no spaces, no bare numbers, no fractions, > 0 and ≤ 30 days. Raises UsageError.
    """
    match = _DURATION.fullmatch(text)
    if not text or match is None:
        raise UsageError(
            _("invalid duration {text!r}: use e.g. 90s, 30m, 2h or 1h30m").format(text=text)
        )
    days, hours, minutes, seconds = (int(g) if g else 0 for g in match.groups())
    total = ((days * 24 + hours) * 60 + minutes) * 60 + seconds
    if total <= 0:
        raise UsageError(_("invalid duration {text!r}: must be longer than 0").format(text=text))
    if total > MAX_DURATION_S:
        raise UsageError(_("invalid duration {text!r}: at most 30 days").format(text=text))
    return total


def parse_port(text: str) -> str:
    """The output name of a USB port given as "1" or "usb1". Raises UsageError."""
    match = _PORT.fullmatch(text.lower())
    if match is None:
        raise UsageError(
            _("invalid port {port!r}: give its number (1, 2, …) or its name (usb1)").format(
                port=text
            )
        )
    return usb_port(int(match.group(1)))


def _parse_watch(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not math.isfinite(seconds) or seconds < MIN_WATCH_S:
        raise UsageError(
            _("invalid refresh interval {text!r}: seconds, at least {min}").format(
                text=text, min=MIN_WATCH_S
            )
        )
    return seconds


def add_subcommands(subparsers: Any, parents: Sequence[argparse.ArgumentParser] = ()) -> None:
    """Add the technician's commands to `subparsers` (from ``add_subparsers``).

    `parents` hold the options every command takes after its name too (cli.py:
    -c/--config, --socket, --debug).
    """

    def _command(subparsers: Any, name: str, summary: str) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = subparsers.add_parser(
            name, help=summary, description=summary, parents=list(parents)
        )
        return parser

    status = _command(subparsers, "status", _("everything about this bench at a glance"))
    status.add_argument("--json", action="store_true", help=_("print the status object as JSON"))
    status.add_argument(
        "--watch",
        nargs="?",
        const=str(DEFAULT_WATCH_S),
        metavar="SECONDS",
        help=_("refresh every SECONDS (default 2) until Ctrl-C"),
    )
    status.set_defaults(techcli_command="status")

    usb = _command(subparsers, "usb", _("switch a USB charging port"))
    usb.add_argument("port", metavar="PORT", help=_("port number (1, 2, …) or name (usb1)"))
    usb.add_argument("state", choices=("on", "off", "auto"))
    usb.add_argument("--for", dest="duration", metavar="DURATION", help=_("e.g. 30m, 2h, 1h30m"))
    usb.set_defaults(techcli_command="usb")

    wifi = _command(subparsers, "wifi", _("switch the Wi-Fi hotspot"))
    wifi.add_argument("state", choices=("on", "off", "auto"))
    wifi.add_argument("--for", dest="duration", metavar="DURATION", help=_("e.g. 30m, 2h, 1h30m"))
    wifi.set_defaults(techcli_command="wifi")

    fault = _command(subparsers, "fault", _("latched faults"))
    fault_actions = fault.add_subparsers(dest="fault_action", required=True, metavar="ACTION")
    reset = _command(fault_actions, "reset", _("clear a latched fault (all without NAME)"))
    reset.add_argument("name", nargs="?", metavar="NAME", help=_("e.g. usb1"))
    fault.set_defaults(techcli_command="fault")

    selftest = _command(subparsers, "selftest", _("check every part and say what to fix"))
    selftest.set_defaults(techcli_command="selftest")

    events = _command(subparsers, "events", _("recent history, from the bench's own store"))
    events.add_argument(
        "--since", metavar="DURATION", help=_("how far back, e.g. 2h (default all)")
    )
    events.add_argument(
        "-n",
        "--limit",
        type=int,
        default=DEFAULT_EVENTS_LIMIT,
        help=_("at most this many events (default {n})").format(n=DEFAULT_EVENTS_LIMIT),
    )
    events.add_argument("--json", action="store_true", help=_("one JSON event per line"))
    events.set_defaults(techcli_command="events")


# --------------------------------------------------------------------------- running


def dispatch(args: argparse.Namespace, socket_path: Path | str) -> int | None:
    """Run the command in `args` against the daemon at `socket_path`; None if not ours."""
    if getattr(args, "techcli_command", None) is None:
        return None
    return run(args, ControlClient(socket_path))


def run(
    args: argparse.Namespace,
    client: ControlClient,
    *,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """Run one command; print to `out` (stdout) and `err` (stderr); the exit code."""
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    command = _COMMANDS[args.techcli_command]
    try:
        return command(args, client, out)
    except UsageError as exc:
        print(f"bench-agent: {exc}", file=err)
        return EXIT_USAGE
    except (DaemonNotRunning, DaemonNotResponding, PermissionDenied, ControlError) as exc:
        code, line = _failure(exc, client)
        print(line, file=err)
        return code


def _failure(exc: Exception, client: ControlClient) -> tuple[int, str]:
    """The exit code and the one translated line for a failed call."""
    path = client.path
    if isinstance(exc, DaemonNotRunning):
        return EXIT_UNAVAILABLE, _(
            "bench-agent: the daemon is not running (nothing answers on {path}). "
            "Start it: sudo systemctl start bench-agent"
        ).format(path=path)
    if isinstance(exc, DaemonNotResponding):
        return EXIT_UNAVAILABLE, _(
            "bench-agent: the daemon does not answer on {path}. "
            "Check it: systemctl status bench-agent"
        ).format(path=path)
    if isinstance(exc, PermissionDenied):
        group = _socket_group(path)
        if group is None:
            return EXIT_NOPERM, _("bench-agent: permission denied on {path}. Use sudo.").format(
                path=path
            )
        return EXIT_NOPERM, _(
            "bench-agent: permission denied on {path}. "
            "Use sudo, or ask to be added to the group {group!r}."
        ).format(path=path, group=group)
    assert isinstance(exc, ControlError)
    return EXIT_REFUSED, _("bench-agent: the daemon refused: {message} ({code})").format(
        message=exc.message or exc.code, code=exc.code
    )


def _socket_group(path: Path) -> str | None:
    try:
        return grp.getgrgid(os.stat(path).st_gid).gr_name
    except (OSError, KeyError):
        return None


# --------------------------------------------------------------------------- status


def _cmd_status(args: argparse.Namespace, client: ControlClient, out: TextIO) -> int:
    if args.watch is None:
        _print_status(client.call("status"), args.json, out)
        return EXIT_OK
    interval = _parse_watch(args.watch)
    tty = out.isatty()
    try:
        while True:
            try:
                status = client.call("status")
            except PermissionDenied:
                raise
            except (DaemonNotRunning, DaemonNotResponding, ControlError) as exc:
                status, problem = None, _failure(exc, client)[1]
            if tty:
                out.write("\x1b[H\x1b[2J")  # home, clear: redraw in place
            if status is None:
                print(problem, file=out)
            else:
                _print_status(status, args.json, out)
            if not tty:
                print(file=out)  # a blank line between refreshes in a log
            out.flush()
            _sleep(interval)
    except KeyboardInterrupt:
        return EXIT_OK


def _print_status(status: Any, as_json: bool, out: TextIO) -> None:
    if as_json:
        print(json.dumps(status, indent=2, ensure_ascii=False), file=out)
    else:
        print("\n".join(format_status(status)), file=out)


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
            uptime=_duration(status.get("uptime_s")),
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
    return _as_map(status.get(key))


def _as_map(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _number(value: Any, digits: int) -> str:
    if not is_finite_number(value):
        return "?"
    return f"{value:.{digits}f}".replace(".", decimal_point())


def _duration(seconds: Any) -> str:
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
        parts.append(_("connected for {duration}").format(duration=_duration(link.get("since_s"))))
    else:
        parts.append(_("DOWN for {duration}").format(duration=_duration(link.get("down_since_s"))))
    age = link.get("last_publish_age_s")
    if age is None:
        parts.append(_("nothing published yet"))
    else:
        parts.append(_("last publish {age} ago").format(age=_duration(age)))
    reconnects = link.get("reconnects")
    if isinstance(reconnects, int):
        parts.append(ngettext("{n} reconnect", "{n} reconnects", reconnects).format(n=reconnects))
    texts = [" · ".join(parts)]
    if link.get("last_error"):
        texts.append(_("last error: {error}").format(error=link["last_error"]))
    return texts


def _outbox_text(outbox: Mapping[str, Any]) -> str:
    depth = outbox.get("depth")
    parts = [_("{n} waiting").format(n=depth if isinstance(depth, int) else "?")]
    if outbox.get("oldest_age_s") is not None:
        parts.append(_("oldest {age}").format(age=_duration(outbox["oldest_age_s"])))
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
        reading = _as_map(value)
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
    match = _PORT.fullmatch(name)
    return _("USB port {n}").format(n=match.group(1)) if match else name


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


def _reason_with_detail(text: str) -> str:
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
        output = _as_map(value)
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
    state = _state_word(str(override.get("state")))
    source = override.get("source", "?")
    if override.get("expires_in_s") is None:
        return _("override {state} until cleared (by {source})").format(state=state, source=source)
    return _("override {state}, {left} left (by {source})").format(
        state=state, left=_duration(override["expires_in_s"]), source=source
    )


def _state_word(state: str) -> str:
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
    usb_wh = _as_map(today.get("usb_wh"))
    sessions = _as_map(today.get("sessions"))
    ports = sorted(set(usb_wh) | set(sessions))
    for port in ports:
        count = sessions.get(port)
        n = count if isinstance(count, int) else 0
        texts.append(
            f"{port}: {_number(usb_wh.get(port), 1)} Wh · "
            + ngettext("{n} charging session", "{n} charging sessions", n).format(n=n)
        )
    return texts


# --------------------------------------------------------------------------- overrides


def _cmd_usb(args: argparse.Namespace, client: ControlClient, out: TextIO) -> int:
    return _override(parse_port(args.port), args, client, out)


def _cmd_wifi(args: argparse.Namespace, client: ControlClient, out: TextIO) -> int:
    return _override("wifi", args, client, out)


def _override(output: str, args: argparse.Namespace, client: ControlClient, out: TextIO) -> int:
    params: dict[str, Any] = {"output": output, "state": args.state}
    if args.duration is not None:
        if args.state == "auto":
            raise UsageError(_("--for does not apply to auto"))
        params["duration_s"] = parse_duration(args.duration)
    result = client.call("override.set", params)
    label = output_label(output)
    if not isinstance(result, Mapping) or result.get("accepted") is not True:
        reason = result.get("reason") if isinstance(result, Mapping) else None
        print(
            _("{output}: refused: {reason}").format(
                output=label, reason=_reason_with_detail(str(reason or "?"))
            ),
            file=out,
        )
        return EXIT_REFUSED
    if args.state == "auto":
        print(_("{output}: back to automatic").format(output=label), file=out)
    elif "duration_s" in params:
        print(
            _("{output}: {state} for {duration}").format(
                output=label,
                state=_state_word(args.state),
                duration=_duration(params["duration_s"]),
            ),
            file=out,
        )
    else:
        print(
            _("{output}: {state} until changed").format(
                output=label, state=_state_word(args.state)
            ),
            file=out,
        )
    if result.get("reason"):
        print(
            _("note: {reason}").format(reason=_reason_with_detail(str(result["reason"]))),
            file=out,
        )
    return EXIT_OK


# --------------------------------------------------------------------------- faults


def _cmd_fault(args: argparse.Namespace, client: ControlClient, out: TextIO) -> int:
    params = {} if args.name is None else {"name": args.name}
    result = client.call("fault.reset", params)
    names = result.get("reset") if isinstance(result, Mapping) else None
    if not isinstance(names, list) or not names:
        if args.name is None:
            print(_("No latched faults to reset."), file=out)
        else:
            print(_("{name}: no latched fault to reset.").format(name=args.name), file=out)
        return EXIT_OK
    print(_("Reset: {names}").format(names=", ".join(str(n) for n in names)), file=out)
    return EXIT_OK


# --------------------------------------------------------------------------- self-test


def _cmd_selftest(args: argparse.Namespace, client: ControlClient, out: TextIO) -> int:
    result = client.call("selftest", timeout_s=SELFTEST_TIMEOUT_S)
    checks = result.get("checks") if isinstance(result, Mapping) else None
    if not isinstance(checks, list) or not checks:
        print(_("The daemon ran no checks."), file=out)
        return EXIT_REFUSED
    passed, failed = _("PASS"), _("FAIL")
    mark_width = max(len(passed), len(failed))
    failures = 0
    for item in checks:
        check = _as_map(item)
        ok = check.get("ok") is True
        failures += not ok
        # The daemon marks its texts with N_(); the catalogue may know them.
        detail = translate_marked(str(check.get("detail") or ""))
        line = f"{passed if ok else failed:<{mark_width}}  {check.get('name', '?')}"
        if detail:
            line += f": {detail}"
        hint = str(check.get("hint") or "")
        if not ok and hint:
            line += " → " + translate_marked(hint)
        print(line, file=out)
    if failures:
        print(
            ngettext(
                "{n} of {total} check failed.", "{n} of {total} checks failed.", len(checks)
            ).format(n=failures, total=len(checks)),
            file=out,
        )
        return EXIT_REFUSED
    print(_("All {total} checks passed.").format(total=len(checks)), file=out)
    return EXIT_OK


# --------------------------------------------------------------------------- events


def _cmd_events(args: argparse.Namespace, client: ControlClient, out: TextIO) -> int:
    if args.limit < 1:
        raise UsageError(_("--limit must be at least 1"))
    params: dict[str, Any] = {"limit": args.limit}
    if args.since is not None:
        params["since_s"] = parse_duration(args.since)
    result = client.call("events", params)
    events = result.get("events") if isinstance(result, Mapping) else None
    events = events if isinstance(events, list) else []
    if args.json:
        for event in events:
            print(json.dumps(event, ensure_ascii=False, separators=(",", ":")), file=out)
        return EXIT_OK
    if not events:
        print(_("No events."), file=out)
        return EXIT_OK
    for event in events:
        if isinstance(event, Mapping):
            print("\n".join(format_event(event)), file=out)
    return EXIT_OK


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


_COMMANDS: Final[Mapping[str, Callable[[argparse.Namespace, ControlClient, TextIO], int]]] = {
    "status": _cmd_status,
    "usb": _cmd_usb,
    "wifi": _cmd_wifi,
    "fault": _cmd_fault,
    "selftest": _cmd_selftest,
    "events": _cmd_events,
}


# --------------------------------------------------------------------------- standalone


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m bench_agent.local.techcli [--socket PATH] COMMAND …``; the exit code."""
    parser = argparse.ArgumentParser(prog="bench-agent")
    parser.add_argument(
        "--socket",
        default=os.environ.get("BENCH_AGENT_SOCKET", DEFAULT_SOCKET),
        help=_("the daemon's control socket"),
    )
    add_subcommands(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"))
    args = parser.parse_args(argv)
    try:
        result = dispatch(args, args.socket)
    except KeyboardInterrupt:
        return 130
    assert result is not None
    return result


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
