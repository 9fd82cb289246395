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

import base64
import binascii
import hashlib
import json
import logging
import math
import os
import re
import threading
import time
import uuid
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Protocol

from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey

from bench_agent.checks import json_nesting_exceeds
from bench_agent.clock import TimeFloor, iso_utc
from bench_agent.errors import BenchAgentError, ConfigError, StorageError
from bench_agent.statefile import replace_atomically

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PrivateKey,
        Ed25519PublicKey,
    )

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

WIFI: Final = "wifi"
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
PORT_PATTERN: Final = re.compile(r"usb[0-9]{1,2}")
FAULT_PATTERN: Final = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
TS_PATTERN: Final = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,6})?(Z|[+-][0-9]{2}:[0-9]{2})"
)
MAX_SIG_CHARS: Final = 200

_ENVELOPE_KEYS: Final = frozenset(
    {"id", "action", "args", "issued_at", "expires_at", "bench", "key_id", "sig"}
)
_LOCAL_KEYS: Final = frozenset({"id", "action", "args"})
_STATES: Final = {"on": True, "off": False, "auto": None}


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


def _short(value: object) -> str:
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
        raise CommandError("malformed", f"unknown field {_short(unknown[0])}")
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
        raise CommandError("unknown_action", f"unknown action {_short(action)}")
    if not isinstance(args, dict):
        raise CommandError("bad_args", "args must be an object")
    allowed = {
        "usb.set": {"port", "state", "duration_s"},
        "wifi.set": {"state", "duration_s"},
        "fault.reset": {"name"},
    }.get(action, set())
    extra = sorted(set(args) - allowed)
    if extra:
        raise CommandError("bad_args", f"{action} takes no argument {_short(extra[0])}")
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
        if not (isinstance(port, str) and PORT_PATTERN.fullmatch(port)):
            raise CommandError("bad_args", "port must be a USB port name, e.g. usb1")
        if port not in outputs:
            raise CommandError("bad_args", f"this bench has no port {port}")
        out["port"] = port
    elif WIFI not in outputs:
        raise CommandError("bad_args", "this bench has no Wi-Fi output")
    state = args.get("state")
    if not isinstance(state, str) or state not in _STATES:
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


# ---------------------------------------------------------------------------
# Signatures
# ---------------------------------------------------------------------------


def canonical_bytes(command: Mapping[str, Any]) -> bytes:
    """What is signed: the command without `sig`, as canonical JSON in UTF-8."""
    unsigned = {k: v for k, v in command.items() if k != "sig"}
    return json.dumps(
        unsigned, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def sign_command(command: Mapping[str, Any], key: Ed25519PrivateKey, key_id: str) -> dict[str, Any]:
    """`command` with `key_id` set and `sig` added."""
    signed = {k: v for k, v in command.items() if k != "sig"}
    signed["key_id"] = key_id
    signed["sig"] = base64.b64encode(key.sign(canonical_bytes(signed))).decode("ascii")
    return signed


def new_command(
    action: str,
    args: Mapping[str, Any],
    *,
    bench: str,
    now: datetime,
    ttl_s: float | None = 120.0,
    command_id: str | None = None,
) -> dict[str, Any]:
    """A fresh, unsigned command (a UUID4 id; expires `ttl_s` seconds after `now`)."""
    cmd: dict[str, Any] = {
        "id": command_id or str(uuid.uuid4()),
        "action": action,
        "args": dict(args),
        "issued_at": iso_utc(now),
        "bench": bench,
    }
    if ttl_s is not None:
        cmd["expires_at"] = iso_utc(datetime.fromtimestamp(now.timestamp() + ttl_s, UTC))
    return cmd


def public_key_text(key: Ed25519PublicKey | VerifyKey) -> str:
    """The one-line base64 form of a public key that `load_trusted_keys` reads."""
    return base64.b64encode(_raw_public_key(key)).decode("ascii")


def _raw_public_key(key: Ed25519PublicKey | VerifyKey) -> bytes:
    if isinstance(key, VerifyKey):
        return bytes(key)
    return key.public_bytes_raw()  # a `cryptography` key (ops' side, tests)


def verify_key(key: Ed25519PublicKey | VerifyKey) -> VerifyKey:
    """A trusted key as the bench verifies with it (PyNaCl), from either library."""
    return key if isinstance(key, VerifyKey) else VerifyKey(_raw_public_key(key))


def parse_public_key(text: str, file: str = "<key>") -> VerifyKey:
    """A raw base64 (32 bytes) or PEM Ed25519 public key. Raises `ConfigError`."""
    text = text.strip()
    if text.startswith("-----BEGIN"):
        if "PRIVATE KEY" in text.split("\n", 1)[0]:
            raise ConfigError(file, "<key>", "is a PRIVATE key; install only the .pub file")
        # PEM is the rarer form: `cryptography` parses it, loaded only for it.
        from cryptography.exceptions import UnsupportedAlgorithm  # noqa: PLC0415
        from cryptography.hazmat.primitives.asymmetric.ed25519 import (  # noqa: PLC0415
            Ed25519PublicKey,
        )
        from cryptography.hazmat.primitives.serialization import (  # noqa: PLC0415
            load_pem_public_key,
        )

        try:
            key = load_pem_public_key(text.encode("ascii", "replace"))
        except (ValueError, UnsupportedAlgorithm) as exc:
            raise ConfigError(file, "<key>", f"not a PEM public key ({exc})") from None
        if not isinstance(key, Ed25519PublicKey):
            raise ConfigError(file, "<key>", "not an Ed25519 key")
        return verify_key(key)
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError(file, "<key>", "neither PEM nor base64") from None
    if len(raw) != 32:
        raise ConfigError(file, "<key>", f"an Ed25519 public key is 32 bytes, not {len(raw)}")
    return VerifyKey(raw)


def load_trusted_keys(
    source: Path | str | Iterable[Path | str],
    on_bad_key: Callable[[ConfigError], None] | None = None,
) -> dict[str, VerifyKey]:
    """The trusted keys, by key id (the file name without `.pub`).

    `source` is a directory (every `*.pub` file in it), one file, or several files.
    An unusable key file or a duplicate id raises `ConfigError` naming the file;
    with `on_bad_key`, that file is skipped and the error handed to it instead
    (the bench: one bad file pushed to a fleet must not stop every bench).
    """
    keys: dict[str, VerifyKey] = {}
    for p in _key_files(source):
        try:
            key_id, key = _load_key_file(p, keys)
        except ConfigError as exc:
            if on_bad_key is None:
                raise
            on_bad_key(exc)
            continue
        keys[key_id] = key
    return keys


def _key_files(source: Path | str | Iterable[Path | str]) -> list[Path]:
    paths: list[Path] = []
    sources = [source] if isinstance(source, str | Path) else list(source)
    for item in sources:
        p = Path(item)
        if p.is_dir():
            paths.extend(sorted(p.glob("*.pub")))
        else:
            paths.append(p)
    return paths


def _load_key_file(p: Path, loaded: Mapping[str, VerifyKey]) -> tuple[str, VerifyKey]:
    key_id = p.name.removesuffix(".pub")
    if not KEY_ID_PATTERN.fullmatch(key_id):
        raise ConfigError(str(p), "<key>", "file name must be <key_id>.pub, key_id A-Za-z0-9._-")
    if key_id in loaded:
        raise ConfigError(str(p), "<key>", f"key id {key_id!r} is defined twice")
    try:
        with p.open("rb") as f:
            data = f.read(8193)
    except OSError as exc:
        raise ConfigError(str(p), "<key>", exc.strerror or str(exc)) from None
    if len(data) > 8192:
        raise ConfigError(str(p), "<key>", "too large for a public key")
    return key_id, parse_public_key(data.decode("ascii", "replace"), str(p))


# ---------------------------------------------------------------------------
# The replay store
# ---------------------------------------------------------------------------


class ReplayStore:
    """Executed command ids, on disk (JSON lines, fsync'ed) and bounded.

    Lines are ``{"id": id, "t": issued_at_epoch_s}``; a compacted file starts with
    ``{"floor": epoch_s}``. A line torn by a power cut (the last one) is dropped:
    the command it was recording had not run yet. Garbage elsewhere raises the
    floor to the newest time in the file, so no lost id can run again.
    The file is rewritten (atomically) when it holds twice `capacity` lines.
    """

    def __init__(self, path: Path, *, capacity: int = DEFAULT_REPLAY_CAPACITY) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.path = path
        self.capacity = capacity
        self.floor: float | None = None  # epoch s; commands issued at or before it are refused
        self._ids: dict[str, float] = {}  # insertion order = execution order
        self._lines = 0
        self.dropped_lines = 0
        self._load()

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, command_id: object) -> bool:
        return command_id in self._ids

    def below_floor(self, issued_at_s: float) -> bool:
        return self.floor is not None and issued_at_s <= self.floor

    def _raise_floor(self, t: float) -> None:
        self.floor = t if self.floor is None else max(self.floor, t)

    def _load(self) -> None:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return
        except OSError as exc:
            raise StorageError(f"{self.path}: {exc.strerror or exc}") from None
        lines = data.split(b"\n")
        torn_tail = lines.pop()  # b"" when the file ends with a newline
        if torn_tail:
            self.dropped_lines += 1
        newest: float | None = None
        corrupt = False
        for line in lines:
            entry = _parse_store_line(line)
            if entry is None:
                corrupt = True
                self.dropped_lines += 1
                continue
            key, t = entry
            newest = t if newest is None else max(newest, t)
            if key is None:
                self._raise_floor(t)
            else:
                self._ids.pop(key, None)
                self._ids[key] = t
        self._lines = len(lines)
        if corrupt and newest is not None:
            log.warning(
                "replay store %s: %d bad lines; floor raised", self.path, self.dropped_lines
            )
            self._raise_floor(newest)
        self._evict(None)

    def add(self, command_id: str, issued_at_s: float, forget_before_s: float | None) -> None:
        """Record `command_id` durably (fsync) before it runs. Raises `StorageError`.

        `forget_before_s` (epoch s, only when the clock is synced): ids issued before
        it may be forgotten, since they would be refused as stale anyway.
        """
        line = json.dumps({"id": command_id, "t": issued_at_s}, separators=(",", ":")) + "\n"
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, line.encode("utf-8"))
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            raise StorageError(f"{self.path}: {exc.strerror or exc}") from None
        self._ids[command_id] = issued_at_s
        self._lines += 1
        self._evict(forget_before_s)
        if self._lines >= 2 * self.capacity:
            self._compact()

    def _evict(self, forget_before_s: float | None) -> None:
        while len(self._ids) > self.capacity:
            self._raise_floor(self._ids.pop(next(iter(self._ids))))
        if forget_before_s is not None:
            while self._ids:
                oldest = next(iter(self._ids))
                if self._ids[oldest] >= forget_before_s:
                    break
                self._raise_floor(self._ids.pop(oldest))

    def _compact(self) -> None:
        lines = []
        if self.floor is not None:
            lines.append(json.dumps({"floor": self.floor}) + "\n")
        lines += [
            json.dumps({"id": k, "t": t}, separators=(",", ":")) + "\n"
            for k, t in self._ids.items()
        ]
        try:
            replace_atomically(self.path, "".join(lines).encode("utf-8"), durable=True)
        except OSError as exc:
            # The old file is still whole; compaction is retried on the next add.
            log.warning("replay store %s: compaction failed: %s", self.path, exc)
            return
        self._lines = len(lines)


def _parse_store_line(line: bytes) -> tuple[str | None, float] | None:
    """(id, t) for an id line, (None, floor) for a floor line, None for garbage."""
    try:
        entry = json.loads(line)
    except ValueError:
        return None
    if not isinstance(entry, dict):
        return None
    t = entry.get("floor", entry.get("t"))
    if not (isinstance(t, int | float) and not isinstance(t, bool) and math.isfinite(t)):
        return None
    if "floor" in entry:
        return None, float(t)
    key = entry.get("id")
    return (key, float(t)) if isinstance(key, str) else None


# ---------------------------------------------------------------------------
# The processor
# ---------------------------------------------------------------------------


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Two "action" keys would let a signer and a verifier see different commands.
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise ValueError("duplicate key")
    return obj


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _encode(obj: Mapping[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def error_reply(command_id: str | None, code: str, message: str) -> dict[str, Any]:
    return {"id": command_id, "ok": False, "error": {"code": code, "message": message}}


def ok_reply(command_id: str, result: Any) -> dict[str, Any]:
    return {"id": command_id, "ok": True, "result": result}


class CommandProcessor:
    """Validates, authenticates and runs commands; returns the replies.

    `handle_mqtt` for the `cmd` topic, `handle_local` for the technician's socket.
    `on_event` is called with one event dict per command that was accepted (it
    passed authentication, replay and age checks), whether it then succeeded or
    was refused by policy: ``{"type": "command", "id", "action", "args", "key_id",
    "source", "ok"}`` plus ``"error_code"`` when not ok.
    """

    def __init__(
        self,
        control: AgentControl,
        *,
        bench_id: str,
        trusted_keys: Mapping[str, Ed25519PublicKey | VerifyKey],
        allow_unsigned: bool,
        replay_store_path: Path,
        clock_synced: Callable[[], bool],
        wall_now: Callable[[], datetime],
        on_event: Callable[[dict[str, Any]], None] | None = None,
        max_age_s: float = 300.0,
        time_floor: TimeFloor | None = None,
        max_payload_bytes: int = 8192,
        replay_capacity: int = DEFAULT_REPLAY_CAPACITY,
        reply_cache_size: int = DEFAULT_REPLY_CACHE,
    ) -> None:
        self._control = control
        self.bench_id = bench_id
        self._keys = {key_id: verify_key(key) for key_id, key in trusted_keys.items()}
        self.allow_unsigned = allow_unsigned
        self._clock_synced = clock_synced
        self._wall_now = wall_now
        self._time_floor = time_floor
        self._on_event = on_event
        self.max_age_s = max_age_s
        self.max_payload_bytes = max_payload_bytes
        self.reply_cache_size = reply_cache_size
        self._replies: OrderedDict[str, tuple[bytes, bytes]] = OrderedDict()  # id -> digest, reply
        self.rejections: Counter[str] = Counter()  # error code -> count (a fixed set of keys)
        self._last_warned: dict[str, float] = {}
        self._lock = threading.Lock()
        self.fault: str | None = None  # set when the replay store is unusable
        self.store: ReplayStore | None
        try:
            self.store = ReplayStore(replay_store_path, capacity=replay_capacity)
        except StorageError as exc:
            # Remote commands are refused until restart; local ones still work.
            self.store = None
            self.fault = f"replay store unusable: {exc}"
            log.error("commands: %s; remote commands refused", self.fault)
        if allow_unsigned:
            log.warning(
                "commands: UNSIGNED REMOTE COMMANDS ARE ACCEPTED (allow_unsigned); "
                "anyone who can publish to the cmd topic controls this bench. Lab use only."
            )

    # -- entry points --------------------------------------------------------

    def reconfigure(
        self,
        *,
        trusted_keys: Mapping[str, Ed25519PublicKey | VerifyKey],
        allow_unsigned: bool,
        max_age_s: float,
    ) -> None:
        """New keys and limits after a configuration reload (SIGHUP); the replay
        store and the reply cache are kept, so nothing runs twice across it."""
        with self._lock:
            self._keys = {key_id: verify_key(key) for key_id, key in trusted_keys.items()}
            self.allow_unsigned = allow_unsigned
            self.max_age_s = max_age_s

    def handle_mqtt(self, payload: bytes, *, retained: bool) -> bytes | None:
        """The reply to publish on `cmd/reply`, or None (retained: ignored)."""
        if retained:
            log.info("commands: ignored a retained message on cmd (%d bytes)", len(payload))
            return None
        with self._lock:
            try:
                return self._handle_mqtt(payload)
            except Exception:  # the last line of defence: bad input never stops the agent
                log.exception("commands: internal error")
                self.rejections["internal"] += 1
                return _encode(error_reply(None, "internal", "internal error"))

    def handle_local(
        self, request: Mapping[str, Any], source: str = SOURCE_TECHNICIAN
    ) -> dict[str, Any]:
        """Run a technician's request ``{"action", "args"?, "id"?}``; return the reply.

        The Unix socket is protected by its file permissions: no signature, no
        replay or age checks. `source`: "technician", or "technician:uid=N(name)"
        with the local user the socket's peer credentials name.
        """
        with self._lock:
            command_id: str | None = None
            try:
                if not isinstance(request, Mapping):
                    raise CommandError("malformed", "a request is an object")
                unknown = sorted(str(k) for k in set(request) - _LOCAL_KEYS)
                if unknown:
                    raise CommandError("malformed", f"unknown field {_short(unknown[0])}")
                if "id" in request:
                    command_id = valid_id(request["id"])
                    if command_id is None:
                        raise CommandError("malformed", "id must be 1-128 of A-Za-z0-9._:-")
                else:
                    command_id = f"local-{uuid.uuid4().hex[:16]}"
                action, args = validate_action(
                    request.get("action"),
                    request.get("args", {}),
                    self._control.outputs(),
                    "action" in request,
                )
            except CommandError as exc:
                self.rejections[exc.code] += 1
                return error_reply(command_id, exc.code, exc.message)
            except Exception:
                log.exception("commands: internal error on a local request")
                return error_reply(command_id, "internal", "internal error")
            return self._execute(command_id, action, args, source, None)

    def stats(self) -> dict[str, int]:
        """Rejected commands by error code, since start (for health telemetry)."""
        return dict(self.rejections)

    # -- MQTT ---------------------------------------------------------------

    def _decode(self, payload: bytes) -> dict[str, Any]:
        """The payload as a JSON object; `CommandError` (no id known yet) otherwise."""
        if len(payload) > self.max_payload_bytes:
            raise CommandError("too_large", f"more than {self.max_payload_bytes} bytes")
        try:
            text = payload.decode("utf-8")
        except UnicodeDecodeError:
            raise CommandError("malformed", "not UTF-8") from None
        if json_nesting_exceeds(text, MAX_NESTING):
            raise CommandError("malformed", f"nested deeper than {MAX_NESTING}")
        try:
            obj = json.loads(
                text, object_pairs_hook=_no_duplicate_keys, parse_constant=_no_constants
            )
        except (ValueError, RecursionError):
            raise CommandError("malformed", "not JSON (or a duplicate key)") from None
        if not isinstance(obj, dict):
            raise CommandError("malformed", "a command is a JSON object")
        return obj

    def _handle_mqtt(self, payload: bytes) -> bytes:
        try:
            obj = self._decode(payload)
        except CommandError as exc:
            return self._reject(None, exc.code, exc.message)
        command_id = valid_id(obj.get("id"))
        if command_id is None:
            return self._reject(None, "malformed", "id must be 1-128 characters of A-Za-z0-9._:-")
        digest = hashlib.sha256(payload).digest()
        cached = self._replies.get(command_id)
        if cached is not None and cached[0] == digest:
            log.info("commands: duplicate of %s; same reply", command_id)
            return cached[1]
        try:
            cmd = validate_command(obj, self._control.outputs())
            if cmd.bench is not None and cmd.bench != self.bench_id:
                raise CommandError("wrong_bench", f"this is bench {self.bench_id}")
            self._authenticate(cmd, obj)
            self._check_fresh(cmd)
            assert cmd.issued_at is not None and self.store is not None
            synced = self._clock_synced()
            forget_before = self._wall_now().timestamp() - 2 * self.max_age_s if synced else None
            try:
                self.store.add(cmd.id, cmd.issued_at.timestamp(), forget_before)
            except StorageError as exc:
                # Not recorded, so not run: running it could let a replay run it again.
                log.error("commands: cannot record %s: %s", cmd.id, exc)
                raise CommandError("internal", "cannot record the command id") from None
            if self._time_floor is not None:
                # Signed by ops, whose clock is synced: that time has passed.
                self._time_floor.observe(cmd.issued_at.timestamp(), save_now=True)
        except CommandError as exc:
            return self._reject(command_id, exc.code, exc.message)
        if cmd.key_id is None:
            log.warning("commands: running UNSIGNED command %s (%s)", cmd.id, cmd.action)
        reply = _encode(self._execute(cmd.id, cmd.action, cmd.args, SOURCE_OPS, cmd.key_id))
        self._replies[cmd.id] = (digest, reply)
        while len(self._replies) > self.reply_cache_size:
            self._replies.popitem(last=False)
        return reply

    def _authenticate(self, cmd: Command, obj: Mapping[str, Any]) -> None:
        if cmd.sig is None:
            if not self.allow_unsigned:
                raise CommandError("unsigned", "commands must be signed")
            return
        assert cmd.key_id is not None
        key = self._keys.get(cmd.key_id)
        if key is None:
            raise CommandError("unknown_key", f"key {cmd.key_id} is not trusted here")
        try:
            sig = base64.b64decode(cmd.sig, validate=True)
        except (binascii.Error, ValueError):
            raise CommandError("bad_signature", "sig is not base64") from None
        if len(sig) != 64:
            raise CommandError("bad_signature", "an Ed25519 signature is 64 bytes")
        # base64 ignores the spare bits of the last character: one signature would
        # have several spellings. Only the canonical one is accepted.
        if base64.b64encode(sig).decode("ascii") != cmd.sig:
            raise CommandError("bad_signature", "sig is not canonical base64")
        try:
            key.verify(canonical_bytes(obj), sig)
        except BadSignatureError:
            raise CommandError("bad_signature", "the signature does not verify") from None

    def _check_fresh(self, cmd: Command) -> None:
        """Replay (always) and age (once the clock is synced)."""
        assert cmd.issued_at is not None
        if self.store is None:
            raise CommandError("internal", "replay store unusable; remote commands refused")
        if cmd.id in self.store:
            raise CommandError("replayed", "this command id was already executed")
        issued_s = cmd.issued_at.timestamp()
        if self.store.below_floor(issued_s):
            raise CommandError("replayed", "issued before the oldest id this bench remembers")
        if not self._clock_synced():
            # The wall clock may be years off before NTP. What has certainly passed
            # (the last synced time, the newest accepted command, kept across
            # reboots) still ends old commands; the id store does the rest.
            floor = None if self._time_floor is None else self._time_floor.now_at_least()
            if floor is None:
                return
            if cmd.expires_at is not None and cmd.expires_at.timestamp() <= floor:
                raise CommandError("expired", "past expires_at (by the last time known)")
            if issued_s < floor - self.max_age_s:
                raise CommandError(
                    "stale", f"issued more than {self.max_age_s:g} s before the last time known"
                )
            return
        now_s = self._wall_now().timestamp()
        if cmd.expires_at is not None and cmd.expires_at.timestamp() <= now_s:
            raise CommandError("expired", "past expires_at")
        if issued_s < now_s - self.max_age_s:
            raise CommandError("stale", f"issued more than {self.max_age_s:g} s ago")
        if issued_s > now_s + FUTURE_SKEW_S:
            raise CommandError("future", f"issued more than {FUTURE_SKEW_S:g} s in the future")

    def _reject(self, command_id: str | None, code: str, message: str) -> bytes:
        self.rejections[code] += 1
        self._warn_rate_limited(code, message)
        return _encode(error_reply(command_id, code, message))

    def _warn_rate_limited(self, code: str, message: str) -> None:
        # A flood of garbage must not flood the journal (and the SD card).
        now = time.monotonic()
        last = self._last_warned.get(code)
        if last is None or now - last >= 600:
            self._last_warned[code] = now
            log.warning(
                "commands: rejected (%s: %s); %d so far", code, message, self.rejections[code]
            )

    # -- running ------------------------------------------------------------

    def _execute(
        self,
        command_id: str,
        action: str,
        args: Mapping[str, Any],
        source: str,
        key_id: str | None,
    ) -> dict[str, Any]:
        # An override remembers who set it: "ops:<key id>", or "technician".
        who = source if key_id is None else f"{source}:{key_id}"
        try:
            reply = ok_reply(command_id, self._dispatch(action, args, who))
            _encode(reply)  # a result that cannot be sent is an internal error, not a crash
        except CommandError as exc:
            reply = error_reply(command_id, exc.code, exc.message)
        except Exception:
            log.exception("commands: %s (%s) failed", command_id, action)
            reply = error_reply(command_id, "internal", "internal error")
        log.info(
            "commands: %s %s from %s%s: %s",
            command_id,
            action,
            source,
            f" ({key_id})" if key_id else "",
            "ok" if reply["ok"] else reply["error"]["code"],
        )
        event: dict[str, Any] = {
            "type": "command",
            "id": command_id,
            "action": action,
            "args": dict(args),
            "key_id": key_id,
            "source": source,
            "ok": reply["ok"],
        }
        if not reply["ok"]:
            event["error_code"] = reply["error"]["code"]
        if self._on_event is not None:
            try:
                self._on_event(event)
            except Exception:  # the reply must still go out
                log.exception("commands: on_event failed")
        return reply

    def _dispatch(self, action: str, args: Mapping[str, Any], source: str) -> Any:
        control = self._control
        if action == "ping":
            return {
                "pong": True,
                "bench": self.bench_id,
                "time": iso_utc(self._wall_now()),
                "clock_synced": bool(self._clock_synced()),
            }
        if action == "state.get":
            return dict(control.state())
        if action in ("usb.set", "wifi.set"):
            output = args["port"] if action == "usb.set" else WIFI
            duration = args.get("duration_s")
            reason = control.set_override(output, _STATES[args["state"]], duration, source)
            if reason is not None:
                raise CommandError("refused", str(reason))
            return {"output": output, "state": args["state"], "duration_s": duration}
        if action == "fault.reset":
            return {"reset": list(control.reset_fault(args.get("name")))}
        if action == "rebirth":
            control.rebirth()
            return {}
        raise CommandError("unknown_action", f"unknown action {_short(action)}")
