"""Commands from city ops (MQTT `cmd`) and from the technician (the local socket).

One core for both: validation, Ed25519 authentication, replay and staleness
protection, dispatch to the agent, and the reply. Bad input gets a reply with a
stable error code; it never raises, never crashes the agent and never changes a
single output.

The command (contract v1, `<prefix>/<bench>/cmd`, QoS 1, not retained)::

    {"id": "3f1c…", "action": "usb.set", "args": {"port": "usb1", "state": "off",
     "duration_s": 1800}, "issued_at": "2025-01-31T08:00:00Z",
     "expires_at": "2025-01-31T08:02:00Z", "bench": "tgk-alun-01",
     "key_id": "ops-alice", "sig": "<base64 Ed25519 signature>"}

- ``id``: 1-128 characters of ``A-Z a-z 0-9 . _ : -``, starting with a letter or
  digit. Unique per bench for ever (a UUID4 is the norm); an id once executed is
  never executed again.
- ``issued_at`` (required) / ``expires_at`` (optional): RFC 3339 date-times with
  an offset (``Z`` or ``+07:00``), e.g. ``2025-01-31T08:00:00.250Z``.
- ``bench`` (optional for unsigned lab commands, required with ``sig``): must be
  this bench's id, so a signed command cannot be replayed to another bench.
- ``key_id`` + ``sig`` (together): the signer, and the base64 (standard alphabet,
  padded) Ed25519 signature of the command's *canonical JSON without `sig`*:
  ``json.dumps(cmd_without_sig, sort_keys=True, separators=(",", ":"),
  ensure_ascii=False)`` encoded as UTF-8, computed on the command as parsed. Signers
  in other languages: use whole numbers for numbers (``duration_s: 1800``, not
  ``1800.0``) so that float formatting cannot differ; all keys are ASCII.
- Unknown top-level fields are refused (``malformed``): a field the bench does
  not understand might carry meaning the sender relies on.

Actions, their ``args`` (``args`` may be omitted when empty) and their ``result``:

- ``ping``: no args; ``{"pong": true, "bench", "time", "clock_synced"}``.
- ``state.get``: no args; the retained ``state`` payload.
- ``usb.set``: ``port`` (``usbN``), ``state`` (on|off|auto), optional ``duration_s``;
  ``{"output", "state", "duration_s"}``.
- ``wifi.set``: ``state`` (on|off|auto), optional ``duration_s``; as ``usb.set``.
- ``fault.reset``: optional ``name`` (every latched fault when absent);
  ``{"reset": [names reset]}``.
- ``rebirth``: no args; ``{}`` (status and state are republished).

``duration_s`` is in seconds, 0 < d <= 604800 (7 days), not allowed with ``auto``
(``auto`` removes the override); without it an on/off override lasts until changed.

Replies (``…/cmd/reply``, QoS 1): ``{"id": id, "ok": true, "result": {…}}`` or
``{"id": id, "ok": false, "error": {"code": code, "message": text}}``. ``id`` is
``null`` when the payload had no usable id (too large, not UTF-8, not JSON, not an
object, id missing or invalid): ops correlate by id, so such a reply is only a
diagnostic. Retained messages are ignored without a reply: a retained command
would be re-delivered on every reconnect, which is never what ops meant.

Error codes (stable; never renamed):

- ``malformed``: not UTF-8, not JSON, nested deeper than 4, duplicate keys, not an
  object, missing/invalid envelope field, unknown field.
- ``too_large``: more than ``max_payload_bytes`` (checked before decoding).
- ``unknown_action``: ``action`` is not one listed above.
- ``bad_args``: wrong, missing or extra args; a port this bench does not have.
- ``wrong_bench``: ``bench`` names another bench.
- ``unsigned``: no signature, and unsigned commands are not allowed.
- ``unknown_key``: ``key_id`` is not a trusted key.
- ``bad_signature``: the signature does not verify (or is not base64 of 64 bytes).
- ``replayed``: the id was executed before and its reply is no longer cached, or
  the command is older than the oldest id the bounded store still remembers.
- ``expired`` / ``stale`` / ``future``: past ``expires_at``; ``issued_at`` older
  than ``max_age_s``; ``issued_at`` more than 30 s ahead of the bench clock. Before
  the clock is synced the first two are checked against the last time known for
  certain (``TimeFloor``: the last synced time and the newest accepted
  ``issued_at``, kept across reboots), and ``future`` is not checked.
- ``refused``: the agent's policy said no; the message is its reason.
- ``internal``: a bug or an unusable replay store; never expected.

Duplicates: QoS 1 may deliver a command more than once. A duplicate (same id, same
bytes) of an executed command gets the very same reply bytes and runs nothing.
Rejected commands are not remembered (a forged command must not be able to burn
the id of a real one); their reply is computed again, identically.

Replay protection survives restarts and needs no clock: every executed id is
written (and fsync'ed) to ``replay_store_path`` *before* the command runs. The
store is bounded (10,000 ids by default; once the clock is synced, ids issued
more than 2 × ``max_age_s`` ago are also forgotten) and keeps a *floor*: the
newest ``issued_at`` of any id it forgot. A command issued at or before the floor
is refused as ``replayed``. So every command ever executed is either still in the
store or at/below the floor: bounded, and still never executed twice. (Once the
clock is synced, anything older than ``max_age_s`` is refused on age anyway.)

Trusted keys: one file per key, named ``<key_id>.pub``, holding either the raw
32-byte Ed25519 public key in base64 on one line (what ``bench-ops keygen``
writes) or a PEM ``PUBLIC KEY`` (SubjectPublicKeyInfo, as ``openssl pkey -pubout``
writes).

Libraries: the bench verifies with PyNaCl (libsodium), which costs the daemon
~2 MB of memory against ~8 MB for `cryptography` (measured: the daemon's peak
RSS target is 40 MB). `cryptography` is still what ops sign with (`bench-ops`,
`sign_command`) and what reads a PEM key; it is imported only there.

Not thread-safe by design: the agent calls this from its one main loop (a lock
guards against misuse anyway).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, Protocol

from bench_agent.errors import BenchAgentError
from bench_agent.vocabulary import USB_PORT, WIFI

log = logging.getLogger(__name__)

ACTIONS: Final = ("ping", "state.get", "usb.set", "wifi.set", "fault.reset", "rebirth")
READ_ONLY_ACTIONS: Final = frozenset({"ping", "state.get"})
"""Actions that change nothing (the agent may choose not to publish their events)."""

ERROR_CODES: Final = (
    "malformed",
    "too_large",
    "unknown_action",
    "bad_args",
    "wrong_bench",
    "unsigned",
    "unknown_key",
    "bad_signature",
    "replayed",
    "expired",
    "stale",
    "future",
    "refused",
    "internal",
)

SOURCE_OPS: Final = "ops"  # MQTT commands; the signer is in the event's key_id
SOURCE_TECHNICIAN: Final = "technician"  # the local socket

MAX_NESTING: Final = 4  # a command is an object holding an args object: depth 2
MAX_OVERRIDE_S: Final = 7 * 24 * 3600.0  # the longest override a command may ask for
FUTURE_SKEW_S: Final = 30.0  # how far ahead of the bench clock issued_at may be
DEFAULT_REPLAY_CAPACITY: Final = 10_000  # ids; about 60 bytes each on disk, 200 in memory
DEFAULT_REPLY_CACHE: Final = 256  # replies kept for duplicates; a few kB each at most

ID_PATTERN: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
KEY_ID_PATTERN: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
BENCH_PATTERN: Final = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
FAULT_PATTERN: Final = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
TS_PATTERN: Final = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,6})?(Z|[+-][0-9]{2}:[0-9]{2})"
)
MAX_SIG_CHARS: Final = 200

_ENVELOPE_KEYS: Final = frozenset(
    {"id", "action", "args", "issued_at", "expires_at", "bench", "key_id", "sig"}
)
LOCAL_KEYS: Final = frozenset({"id", "action", "args"})
OVERRIDE_STATES: Final = {"on": True, "off": False, "auto": None}


# ---------------------------------------------------------------------------
# What the agent offers, and what a command is
# ---------------------------------------------------------------------------


class AgentControl(Protocol):
    """The agent as commands see it (implemented by the agent)."""

    def state(self) -> dict[str, Any]:
        """The retained `state` payload, as a dict."""

    def set_override(
        self, output: str, state: bool | None, duration_s: float | None, source: str
    ) -> str | None:
        """Override `output` on (True), off (False) or back to auto (None) for
        `duration_s` seconds (None: until changed). None when accepted, else the
        reason it was refused, e.g. "battery_low: battery 18% < 20%"."""

    def reset_fault(self, name: str | None) -> list[str]:
        """Reset latched fault `name` (all when None); the names actually reset."""

    def rebirth(self) -> None:
        """Republish status and state."""

    def outputs(self) -> Sequence[str]:
        """The names of this bench's outputs, e.g. ["usb1", "usb2", "wifi"]."""


class CommandError(BenchAgentError, ValueError):
    """A command is refused; `code` is one of `ERROR_CODES`, `message` is for people."""

    def __init__(self, code: str, message: str) -> None:
        assert code in ERROR_CODES, code
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class Command:
    """A command whose shape has been checked (not yet authenticated)."""

    id: str
    action: str
    args: Mapping[str, Any]  # normalised: only the keys the action takes
    issued_at: datetime | None  # aware; None only for local commands
    expires_at: datetime | None
    bench: str | None
    key_id: str | None
    sig: str | None


# ---------------------------------------------------------------------------
# Validation (the code twin of schemas/command.schema.json; tests check they agree)
# ---------------------------------------------------------------------------


def shorten(value: object) -> str:
    """A value quoted for an error message, never long (hostile input is echoed)."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _is_number(value: object) -> bool:
    # bool is an int in Python; JSON true is not a number.
    return isinstance(value, int | float) and not isinstance(value, bool)


def parse_timestamp(value: object, name: str) -> datetime:
    """An RFC 3339 date-time with an offset, as an aware datetime. Raises `malformed`."""
    if not isinstance(value, str) or not TS_PATTERN.fullmatch(value):
        raise CommandError("malformed", f"{name} must be an RFC 3339 date-time with an offset")
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        raise CommandError("malformed", f"{name} is not a valid date-time") from None


def valid_id(value: object) -> str | None:
    return value if isinstance(value, str) and ID_PATTERN.fullmatch(value) else None


def validate_command(obj: object, outputs: Sequence[str]) -> Command:
    """Check a decoded MQTT command's shape, action and args. Raises `CommandError`."""
    if not isinstance(obj, dict):
        raise CommandError("malformed", "a command is a JSON object")
    unknown = sorted(set(obj) - _ENVELOPE_KEYS)
    if unknown:
        raise CommandError("malformed", f"unknown field {shorten(unknown[0])}")
    cmd_id = valid_id(obj.get("id"))
    if cmd_id is None:
        raise CommandError("malformed", "id must be 1-128 characters of A-Za-z0-9._:-")
    if "issued_at" not in obj:
        raise CommandError("malformed", "issued_at is missing")
    issued_at = parse_timestamp(obj["issued_at"], "issued_at")
    expires_at = None
    if "expires_at" in obj:
        expires_at = parse_timestamp(obj["expires_at"], "expires_at")
        if expires_at <= issued_at:
            raise CommandError("malformed", "expires_at must be after issued_at")
    bench = obj.get("bench")
    if "bench" in obj and not (isinstance(bench, str) and BENCH_PATTERN.fullmatch(bench)):
        raise CommandError("malformed", "bench must be a bench id")
    key_id, sig = obj.get("key_id"), obj.get("sig")
    if "key_id" in obj and not (isinstance(key_id, str) and KEY_ID_PATTERN.fullmatch(key_id)):
        raise CommandError("malformed", "key_id must be 1-64 characters of A-Za-z0-9._-")
    if "sig" in obj and not (isinstance(sig, str) and 0 < len(sig) <= MAX_SIG_CHARS):
        raise CommandError("malformed", "sig must be a base64 string")
    if ("sig" in obj) != ("key_id" in obj):
        raise CommandError("malformed", "key_id and sig go together")
    if "sig" in obj and "bench" not in obj:
        raise CommandError("malformed", "a signed command must name its bench")
    action, args = validate_action(obj.get("action"), obj.get("args", {}), outputs, "action" in obj)
    return Command(cmd_id, action, args, issued_at, expires_at, bench, key_id, sig)


def validate_action(
    action: object, args: object, outputs: Sequence[str], present: bool = True
) -> tuple[str, dict[str, Any]]:
    """Check an action and its args; return the action and normalised args."""
    if not present:
        raise CommandError("malformed", "action is missing")
    if not isinstance(action, str):
        raise CommandError("malformed", "action must be a string")
    if action not in ACTIONS:
        raise CommandError("unknown_action", f"unknown action {shorten(action)}")
    if not isinstance(args, dict):
        raise CommandError("bad_args", "args must be an object")
    allowed = {
        "usb.set": {"port", "state", "duration_s"},
        "wifi.set": {"state", "duration_s"},
        "fault.reset": {"name"},
    }.get(action, set())
    extra = sorted(set(args) - allowed)
    if extra:
        raise CommandError("bad_args", f"{action} takes no argument {shorten(extra[0])}")
    if action in ("usb.set", "wifi.set"):
        return action, _validate_set(action, args, outputs)
    if action == "fault.reset" and "name" in args:
        name = args["name"]
        if not (isinstance(name, str) and FAULT_PATTERN.fullmatch(name)):
            raise CommandError("bad_args", "name must be a fault name, e.g. overcurrent.usb1")
        return action, {"name": name}
    return action, {}


def _validate_set(action: str, args: Mapping[str, Any], outputs: Sequence[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if action == "usb.set":
        port = args.get("port")
        if not (isinstance(port, str) and USB_PORT.fullmatch(port)):
            raise CommandError("bad_args", "port must be a USB port name, e.g. usb1")
        if port not in outputs:
            raise CommandError("bad_args", f"this bench has no port {port}")
        out["port"] = port
    elif WIFI not in outputs:
        raise CommandError("bad_args", "this bench has no Wi-Fi output")
    state = args.get("state")
    if not isinstance(state, str) or state not in OVERRIDE_STATES:
        raise CommandError("bad_args", "state must be on, off or auto")
    out["state"] = state
    if "duration_s" in args:
        duration = args["duration_s"]
        if not _is_number(duration) or not (0 < duration <= MAX_OVERRIDE_S):
            raise CommandError("bad_args", f"duration_s must be seconds in (0, {MAX_OVERRIDE_S:g}]")
        if state == "auto":
            raise CommandError("bad_args", "duration_s makes no sense with auto")
        out["duration_s"] = float(duration)
    return out
