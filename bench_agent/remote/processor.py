"""The command processor: validation, signature, replay and age checks, dispatch
to the agent, the reply. See `commands.py` for what a command is."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import threading
import time
import uuid
from collections import Counter, OrderedDict
from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey

from bench_agent.checks import json_nesting_exceeds
from bench_agent.clock import TimeFloor, iso_utc
from bench_agent.errors import StorageError
from bench_agent.remote.commands import (
    DEFAULT_REPLAY_CAPACITY,
    DEFAULT_REPLY_CACHE,
    FUTURE_SKEW_S,
    LOCAL_KEYS,
    MAX_NESTING,
    OVERRIDE_STATES,
    SOURCE_OPS,
    SOURCE_TECHNICIAN,
    AgentControl,
    Command,
    CommandError,
    shorten,
    valid_id,
    validate_action,
    validate_command,
)
from bench_agent.remote.replay_store import ReplayStore
from bench_agent.remote.signing import canonical_bytes, verify_key
from bench_agent.vocabulary import WIFI

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PublicKey,
    )

log = logging.getLogger(__name__)


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
                unknown = sorted(str(k) for k in set(request) - LOCAL_KEYS)
                if unknown:
                    raise CommandError("malformed", f"unknown field {shorten(unknown[0])}")
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
            reason = control.set_override(output, OVERRIDE_STATES[args["state"]], duration, source)
            if reason is not None:
                raise CommandError("refused", str(reason))
            return {"output": output, "state": args["state"], "duration_s": duration}
        if action == "fault.reset":
            return {"reset": list(control.reset_fault(args.get("name")))}
        if action == "rebirth":
            control.rebirth()
            return {}
        raise CommandError("unknown_action", f"unknown action {shorten(action)}")
