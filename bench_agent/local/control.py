"""The technician's local channel: line-delimited JSON over a Unix stream socket.

It works with the uplink down: `bench-agent status`, `usb`, `wifi`, `fault reset`,
`selftest` and `events` talk to the running daemon through this socket only.

Protocol, version 1. One JSON object per line (UTF-8, ``\\n``-terminated), one
request at a time per connection, in order:

    request   {"v": 1, "id": 7, "method": "status", "params": {}}
    response  {"v": 1, "id": 7, "ok": true, "result": ...}
              {"v": 1, "id": 7, "ok": false, "error": {"code": "...", "message": "..."}}

``id`` (an integer or a string) is echoed; it is null in an error about a line
that could not be read. ``params`` may be left out (= ``{}``). Unknown request
keys are ignored, so a newer client can talk to an older daemon.

Error codes from the server itself: ``bad_request`` (not JSON, not an object,
missing or mistyped field: the connection stays open), ``unsupported_version``,
``line_too_long`` (a line over 64 kB: the connection is closed), ``busy`` (more
than 8 clients: closed), ``idle_timeout`` (nothing for 60 s), ``request_timeout``
(a request line not whole 5 s after its first byte), ``connection_timeout`` (a
connection older than 120 s; all three close it), ``internal`` (the handler
raised, or its result is not JSON). A handler refuses a request by raising
:class:`ControlError` with its own code, e.g. ``unknown_method``, ``bad_params``.

Methods the daemon offers (durations in seconds, energies in Wh unless named):

``status`` {} → the status object, defined by
    ``schemas/control-status.schema.json``: bench, agent_version, uptime_s,
    clock {synced, wall}, link {connected, since_s | down_since_s,
    last_publish_age_s, reconnects, last_error}, outbox {depth, oldest_age_s,
    drops, fault}, channels {name: {volts, amps, watts, fault}}, battery
    {soc_pct, source, confidence}, charger {state, error, panel_watts,
    yield_today_kwh} | null, outputs {name: {on, reason, detail, override:
    {state, expires_in_s, source} | null}}, faults [{name, detail}],
    tamper_open, today {solar_wh, usb_wh: {port: Wh}, sessions: {port: n},
    hotspot_h}.
``override.set`` {output: "usb1" | "wifi" | …, state: "on" | "off" | "auto",
    duration_s?: number > 0} → {accepted: bool, reason?: str}. ``reason``
    (when refused, or accepted but overridden by a safety layer) is
    "code: detail", the code one of the policy's reason codes
    (``battery_low``, ``over_temperature``, ``overcurrent_latched``, …) or
    ``unknown_output``.
``fault.reset`` {name?: str} → {reset: [names of the faults cleared]}; without
    ``name``, every latched fault.
``events`` {since_s?: number, limit?: int} → {events: [event, …]}, oldest
    first, each as published on MQTT (seq, ts, type, … see
    ``schemas/event.schema.json``); ``since_s`` is how far back to look.
``selftest`` {} → {checks: [{name, ok, detail, hint}]}: ``detail`` says what
    was seen, ``hint`` what to do about a failure (may be ""). Mark them with
    ``i18n.N_`` in the daemon: the CLI translates the ones the catalogue knows.

The server is one thread on a selector (no thread per connection). It calls
``handler(method, params, peer)`` on that thread, one request at a time, so a handler
that blocks (the daemon's forwards to its main loop and waits) stalls every
client for that long: the handler must bound its wait (a few seconds).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import pwd
import socket
import struct
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from bench_agent.errors import BenchAgentError

log = logging.getLogger(__name__)

PROTOCOL_VERSION: Final = 1
MAX_LINE_BYTES: Final = 64 * 1024  # a request line, without its newline
MAX_NESTING: Final = 16  # a request is an object of scalars and one level of params
MAX_CLIENTS: Final = 8
IDLE_TIMEOUT_S: Final = 60.0  # a connection that sends nothing for this long is closed
# A client that trickles its bytes (one a second resets any idle timer) must not hold
# one of the MAX_CLIENTS slots: a request line must arrive whole within this time
# of its first byte, and no connection lives longer than MAX_CONNECTION_S (the CLI
# makes one connection per request, answered within seconds).
REQUEST_TIMEOUT_S: Final = 5.0
MAX_CONNECTION_S: Final = 120.0
MAX_RESPONSE_BYTES: Final = 16 * 1024 * 1024  # the client's bound on one response line
MAX_METHOD_CHARS: Final = 64
RECV_BYTES: Final = 16 * 1024


@dataclass(frozen=True, slots=True)
class Peer:
    """Who is at the other end of a connection, from the kernel (SO_PEERCRED): the
    technician's command is recorded with the local user who sent it."""

    pid: int
    uid: int
    gid: int

    @classmethod
    def of(cls, sock: socket.socket) -> Peer | None:
        try:
            raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
        except OSError:
            return None
        return cls(*_UCRED.unpack(raw))

    def user(self) -> str:
        """`uid=1000(budi)`, as id(1) says it; the number alone when it has no name."""
        try:
            return f"uid={self.uid}({pwd.getpwuid(self.uid).pw_name})"
        except KeyError:
            return f"uid={self.uid}"


_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid
Handler = Callable[[str, Mapping[str, Any], Peer | None], Any]


class ControlError(BenchAgentError, RuntimeError):
    """The daemon answered with an error; or a handler refusing a request."""

    def __init__(self, code: str, message: str = "") -> None:
        super().__init__(f"{code}: {message}" if message else code)
        self.code = code
        self.message = message


class DaemonNotRunning(BenchAgentError, ConnectionError):
    """No daemon listens on the socket (no socket file, or nobody accepts on it)."""


class PermissionDenied(BenchAgentError, PermissionError):
    """The socket (or its directory) may not be opened by this user."""


class DaemonNotResponding(BenchAgentError, TimeoutError):
    """The daemon accepted the connection but gave no complete answer in time."""


class ControlSocketError(BenchAgentError, OSError):
    """The server cannot serve at its path (another live server, not a socket, bad group)."""


# --------------------------------------------------------------------------- wire format


def encode(message: Mapping[str, Any]) -> bytes:
    """One protocol line. Strict JSON: NaN and infinities raise ValueError."""
    return (
        json.dumps(message, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()
        + b"\n"
    )


def error_message(request_id: Any, code: str, message: str) -> dict[str, Any]:
    return {
        "v": PROTOCOL_VERSION,
        "id": request_id,
        "ok": False,
        "error": {"code": code, "message": message},
    }


# --------------------------------------------------------------------------- client


class ControlClient:
    """Calls the daemon over its socket; one connection per call (the CLI makes few calls)."""

    def __init__(self, path: Path | str, timeout_s: float = 5.0) -> None:
        self.path = Path(path)
        self.timeout_s = timeout_s
        self._ids = itertools.count(1)

    def call(
        self,
        method: str,
        params: Mapping[str, Any] | None = None,
        *,
        timeout_s: float | None = None,
    ) -> Any:
        """The result of `method`. `timeout_s` (default the client's) bounds the whole call.

        Raises DaemonNotRunning, PermissionDenied, DaemonNotResponding, or
        ControlError(code, message) when the daemon answers with an error.
        """
        request_id = next(self._ids)
        request = {"v": PROTOCOL_VERSION, "id": request_id, "method": method}
        request["params"] = dict(params or {})
        deadline = time.monotonic() + (self.timeout_s if timeout_s is None else timeout_s)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._connect(sock, deadline)
            try:
                sock.settimeout(_remaining(deadline))
                # A server that answered and closed at once (busy) breaks the pipe;
                # its answer is still there to read.
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    sock.sendall(encode(request))
                line = _read_line(sock, deadline)
            except TimeoutError:
                raise DaemonNotResponding(f"{self.path}: no answer in time") from None
            except OSError as exc:
                raise DaemonNotResponding(f"{self.path}: {exc.strerror or exc}") from None
        finally:
            sock.close()
        return _result(line, request_id)

    def _connect(self, sock: socket.socket, deadline: float) -> None:
        try:
            sock.settimeout(_remaining(deadline))
            sock.connect(str(self.path))
        except (FileNotFoundError, ConnectionRefusedError, NotADirectoryError) as exc:
            raise DaemonNotRunning(f"{self.path}: {exc.strerror}") from None
        except PermissionError as exc:
            raise PermissionDenied(f"{self.path}: {exc.strerror}") from None
        except TimeoutError:
            raise DaemonNotResponding(f"{self.path}: connection not accepted in time") from None
        except OSError as exc:
            raise DaemonNotRunning(f"{self.path}: {exc.strerror or exc}") from None


def _remaining(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError
    return left


def _read_line(sock: socket.socket, deadline: float) -> bytes:
    buf = bytearray()
    while True:
        newline = buf.find(b"\n")
        if newline >= 0:
            return bytes(buf[:newline])
        if len(buf) > MAX_RESPONSE_BYTES:
            raise ControlError("bad_response", "response line too long")
        sock.settimeout(_remaining(deadline))
        chunk = sock.recv(64 * 1024)
        if not chunk:
            raise ConnectionResetError(0, "the daemon closed the connection")
        buf += chunk


def _result(line: bytes, request_id: int) -> Any:
    try:
        response = json.loads(line)
    except (UnicodeDecodeError, ValueError):
        raise ControlError("bad_response", "the daemon's answer is not JSON") from None
    if not isinstance(response, dict) or response.get("v") != PROTOCOL_VERSION:
        raise ControlError("bad_response", "the daemon's answer is not protocol v1")
    ok = response.get("ok")
    if ok is False:
        # A server-level error about the connection (busy, idle) carries id null.
        error = response.get("error")
        if not isinstance(error, dict):
            raise ControlError("bad_response", "error without details")
        raise ControlError(str(error.get("code", "unknown")), str(error.get("message", "")))
    if ok is not True or response.get("id") != request_id or "result" not in response:
        raise ControlError("bad_response", "the daemon's answer does not match the request")
    return response["result"]
