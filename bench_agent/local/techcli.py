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
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final, TextIO

from bench_agent.errors import UsageError
from bench_agent.local.control import (
    ControlClient,
    ControlError,
    DaemonNotResponding,
    DaemonNotRunning,
    PermissionDenied,
)
from bench_agent.local.i18n import _, ngettext, translate_marked
from bench_agent.local.render import (
    as_map,
    duration_text,
    format_event,
    format_status,
    output_label,
    reason_with_detail,
    state_word,
)
from bench_agent.vocabulary import usb_port

EXIT_OK: Final = 0
EXIT_REFUSED: Final = 1
EXIT_USAGE: Final = 2
EXIT_UNAVAILABLE: Final = 69  # EX_UNAVAILABLE
EXIT_NOPERM: Final = 77  # EX_NOPERM

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
                output=label, reason=reason_with_detail(str(reason or "?"))
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
                state=state_word(args.state),
                duration=duration_text(params["duration_s"]),
            ),
            file=out,
        )
    else:
        print(
            _("{output}: {state} until changed").format(output=label, state=state_word(args.state)),
            file=out,
        )
    if result.get("reason"):
        print(
            _("note: {reason}").format(reason=reason_with_detail(str(result["reason"]))),
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
        check = as_map(item)
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
