"""The command core: validation, signatures, replay and age, dispatch, and hostile input."""

# The case tables read best one case per line.
# ruff: noqa: E501

from __future__ import annotations

import base64
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench_agent.errors import ConfigError
from bench_agent.remote.commands import ERROR_CODES, CommandError, validate_command
from bench_agent.remote.processor import CommandProcessor
from bench_agent.remote.replay_store import ReplayStore
from bench_agent.remote.signing import load_trusted_keys, new_command, public_key_text, sign_command

SCHEMAS = Path(__file__).resolve().parent.parent / "bench_agent" / "schemas"
COMMAND_SCHEMA = jsonschema.Draft202012Validator(
    json.loads((SCHEMAS / "command.schema.json").read_text())
)
REPLY_SCHEMA = jsonschema.Draft202012Validator(
    json.loads((SCHEMAS / "reply.schema.json").read_text())
)
BENCH = "tgk-alun-01"
OUTPUTS = ("usb1", "usb2", "wifi")
T0 = datetime(2025, 1, 31, 8, 0, tzinfo=UTC)
KEY = Ed25519PrivateKey.generate()
OTHER_KEY = Ed25519PrivateKey.generate()
MUTATING = ("set_override", "reset_fault", "rebirth")


class FakeControl:
    """The agent's side, recording every call (no real part exists for it)."""

    def __init__(self, outputs: Sequence[str] = OUTPUTS) -> None:
        self._outputs = tuple(outputs)
        self.calls: list[tuple[Any, ...]] = []
        self.refusal: str | None = None
        self.fail_state = False

    def state(self) -> dict[str, Any]:
        self.calls.append(("state",))
        if self.fail_state:
            raise RuntimeError("boom")
        return {"v": 1, "outputs": {"usb1": {"on": True, "reason": "default"}}}

    def set_override(
        self, output: str, state: bool | None, duration_s: float | None, source: str
    ) -> str | None:
        self.calls.append(("set_override", output, state, duration_s, source))
        return self.refusal

    def reset_fault(self, name: str | None) -> list[str]:
        self.calls.append(("reset_fault", name))
        return ["overcurrent.usb1"] if name in (None, "overcurrent.usb1") else []

    def rebirth(self) -> None:
        self.calls.append(("rebirth",))

    def outputs(self) -> Sequence[str]:
        return self._outputs

    def mutations(self) -> list[tuple[Any, ...]]:
        return [c for c in self.calls if c[0] in MUTATING]


@dataclass
class Clock:
    now: datetime = T0
    synced: bool = True


@dataclass
class Rig:
    proc: CommandProcessor
    control: FakeControl
    clock: Clock
    events: list[dict[str, Any]] = field(default_factory=list)

    def send(self, payload: bytes | dict[str, Any], *, retained: bool = False) -> dict[str, Any]:
        raw = payload if isinstance(payload, bytes) else encode(payload)
        reply = self.proc.handle_mqtt(raw, retained=retained)
        assert reply is not None
        body = json.loads(reply)
        REPLY_SCHEMA.validate(body)
        return dict(body)


def encode(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def make_rig(
    store: Path, clock: Clock | None = None, control: FakeControl | None = None, **kw: Any
) -> Rig:
    clock = clock or Clock()
    control = control or FakeControl()
    events: list[dict[str, Any]] = []
    options: dict[str, Any] = {
        "bench_id": BENCH,
        "trusted_keys": {"ops-alice": KEY.public_key()},
        "allow_unsigned": False,
        "replay_store_path": store,
        "clock_synced": lambda: clock.synced,
        "wall_now": lambda: clock.now,
        "on_event": events.append,
    }
    options.update(kw)
    proc = CommandProcessor(control, **options)
    return Rig(proc, control, clock, events)


@pytest.fixture
def rig(tmp_path: Path) -> Rig:
    return make_rig(tmp_path / "replay.jsonl")


def cmd(action: str, args: dict[str, Any] | None = None, /, **fields: Any) -> dict[str, Any]:
    """A signed command issued at T0 (fields override before signing; None removes)."""
    c = new_command(action, args or {}, bench=BENCH, now=fields.pop("now", T0), ttl_s=120)
    key = fields.pop("key", KEY)
    key_id = fields.pop("key_id", "ops-alice")
    for name, value in fields.items():
        if value is None:
            c.pop(name, None)
        else:
            c[name] = value
    return sign_command(c, key, key_id)


def error_code(reply: dict[str, Any]) -> str:
    assert reply["ok"] is False, reply
    return str(reply["error"]["code"])


# ---------------------------------------------------------------------------
# Every action
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("action", "args", "call", "result"),
    [
        (
            "state.get",
            {},
            ("state",),
            {"v": 1, "outputs": {"usb1": {"on": True, "reason": "default"}}},
        ),
        (
            "usb.set",
            {"port": "usb2", "state": "off", "duration_s": 1800},
            ("set_override", "usb2", False, 1800.0, "ops:ops-alice"),
            {"output": "usb2", "state": "off", "duration_s": 1800.0},
        ),
        (
            "usb.set",
            {"port": "usb1", "state": "on"},
            ("set_override", "usb1", True, None, "ops:ops-alice"),
            {"output": "usb1", "state": "on", "duration_s": None},
        ),
        (
            "wifi.set",
            {"state": "auto"},
            ("set_override", "wifi", None, None, "ops:ops-alice"),
            {"output": "wifi", "state": "auto", "duration_s": None},
        ),
        (
            "wifi.set",
            {"state": "on", "duration_s": 7200.5},
            ("set_override", "wifi", True, 7200.5, "ops:ops-alice"),
            {"output": "wifi", "state": "on", "duration_s": 7200.5},
        ),
        ("fault.reset", {}, ("reset_fault", None), {"reset": ["overcurrent.usb1"]}),
        (
            "fault.reset",
            {"name": "overcurrent.usb1"},
            ("reset_fault", "overcurrent.usb1"),
            {"reset": ["overcurrent.usb1"]},
        ),
        ("rebirth", {}, ("rebirth",), {}),
    ],
)
def test_each_action_runs_once_and_replies_with_its_result(
    rig: Rig, action: str, args: dict[str, Any], call: tuple[Any, ...], result: Any
) -> None:
    c = cmd(action, args)
    reply = rig.send(c)
    assert reply == {"id": c["id"], "ok": True, "result": result}
    assert rig.control.calls == [call]
    assert rig.events == [
        {
            "type": "command",
            "id": c["id"],
            "action": action,
            "args": {k: float(v) if k == "duration_s" else v for k, v in args.items()},
            "key_id": "ops-alice",
            "source": "ops",
            "ok": True,
        }
    ]


def test_ping_reports_the_bench_and_its_clock(rig: Rig) -> None:
    rig.clock.synced = False
    reply = rig.send(cmd("ping"))
    assert reply["result"] == {
        "pong": True,
        "bench": BENCH,
        "time": "2025-01-31T08:00:00.000Z",
        "clock_synced": False,
    }
    assert rig.control.mutations() == []


def test_policy_refusal_is_a_refused_reply_with_the_reason(rig: Rig) -> None:
    rig.control.refusal = "battery_low: battery 18% < 20%"
    c = cmd("usb.set", {"port": "usb1", "state": "on"})
    reply = rig.send(c)
    assert reply["error"] == {"code": "refused", "message": "battery_low: battery 18% < 20%"}
    assert rig.events[0]["ok"] is False and rig.events[0]["error_code"] == "refused"
    # Refused is final: the same id cannot be tried again once it is out of the cache.
    assert rig.proc.store is not None and c["id"] in rig.proc.store


def test_a_failing_agent_is_an_internal_error_not_a_crash(rig: Rig) -> None:
    rig.control.fail_state = True
    reply = rig.send(cmd("state.get"))
    assert error_code(reply) == "internal"
    assert rig.events[0]["error_code"] == "internal"


def test_an_event_callback_that_raises_does_not_lose_the_reply(tmp_path: Path) -> None:
    def explode(_event: dict[str, Any]) -> None:
        raise RuntimeError("outbox full")

    rig = make_rig(tmp_path / "r.jsonl", on_event=explode)
    assert rig.send(cmd("rebirth"))["ok"] is True


# ---------------------------------------------------------------------------
# Every error code
# ---------------------------------------------------------------------------


def _resigned(c: dict[str, Any], **changes: Any) -> dict[str, Any]:
    c = {**c, **changes}
    return sign_command(c, KEY, "ops-alice")


def _sig_of_other_length() -> dict[str, Any]:
    c = cmd("ping")
    c["sig"] = base64.b64encode(b"x" * 63).decode()
    return c


def _noncanonical_sig() -> dict[str, Any]:
    c = cmd("ping")
    raw = base64.b64decode(c["sig"])
    # 64 bytes -> 88 chars ending "==": the last data character carries 4 spare bits.
    last = c["sig"][-3]
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    twin = alphabet[alphabet.index(last) ^ 1]
    c["sig"] = c["sig"][:-3] + twin + "=="
    assert base64.b64decode(c["sig"]) == raw
    return c


ERROR_CASES: list[tuple[str, Callable[[], bytes | dict[str, Any]], str]] = [
    ("not json", lambda: b"usb1 off", "malformed"),
    ("not an object", lambda: b'["ping"]', "malformed"),
    ("no id", lambda: {k: v for k, v in cmd("ping").items() if k != "id"}, "malformed"),
    ("id with a space", lambda: cmd("ping", id="a b"), "malformed"),
    ("id too long", lambda: cmd("ping", id="a" * 129), "malformed"),
    ("unknown field", lambda: cmd("ping", dry_run=True), "malformed"),
    ("no issued_at", lambda: cmd("ping", issued_at=None), "malformed"),
    ("issued_at not a time", lambda: cmd("ping", issued_at="yesterday"), "malformed"),
    ("issued_at without offset", lambda: cmd("ping", issued_at="2025-01-31T08:00:00"), "malformed"),
    ("issued_at month 13", lambda: cmd("ping", issued_at="2025-13-31T08:00:00Z"), "malformed"),
    ("expires before issued", lambda: cmd("ping", expires_at="2025-01-31T07:00:00Z"), "malformed"),
    ("signed without bench", lambda: cmd("ping", bench=None), "malformed"),
    ("key_id without sig", lambda: {k: v for k, v in cmd("ping").items() if k != "sig"}, "malformed"),
    ("duplicate key", lambda: encode(cmd("ping"))[:-1] + b',"action":"rebirth"}', "malformed"),
    ("NaN", lambda: encode(cmd("ping"))[:-1] + b',"x":NaN}', "malformed"),
    ("invalid UTF-8", lambda: encode(cmd("ping")).replace(b"ping", b"p\xffng"), "malformed"),
    ("depth bomb", lambda: b"[" * 4000 + b"]" * 4000, "malformed"),
    ("deep args", lambda: cmd("fault.reset", {"name": {"a": {"b": {"c": {}}}}}), "malformed"),
    ("action not a string", lambda: cmd("ping", action=["ping"]), "malformed"),
    ("too large", lambda: cmd("fault.reset", {"name": "x" * 9000}), "too_large"),
    ("unknown action", lambda: cmd("reboot"), "unknown_action"),
    ("args not an object", lambda: cmd("ping", args=[1]), "bad_args"),
    ("ping with args", lambda: cmd("ping", {"x": 1}), "bad_args"),
    ("no port", lambda: cmd("usb.set", {"state": "on"}), "bad_args"),
    ("port of another bench", lambda: cmd("usb.set", {"port": "usb3", "state": "on"}), "bad_args"),
    ("wifi as a usb port", lambda: cmd("usb.set", {"port": "wifi", "state": "on"}), "bad_args"),
    ("bad state", lambda: cmd("wifi.set", {"state": "ON"}), "bad_args"),
    ("state true", lambda: cmd("wifi.set", {"state": True}), "bad_args"),
    ("duration 0", lambda: cmd("wifi.set", {"state": "on", "duration_s": 0}), "bad_args"),
    ("duration 8 days", lambda: cmd("wifi.set", {"state": "on", "duration_s": 691200}), "bad_args"),
    ("duration bool", lambda: cmd("wifi.set", {"state": "on", "duration_s": True}), "bad_args"),
    ("duration inf", lambda: encode(cmd("wifi.set", {"state": "on", "duration_s": 5})).replace(b'"duration_s":5', b'"duration_s":1e999'), "bad_args"),
    ("duration with auto", lambda: cmd("wifi.set", {"state": "auto", "duration_s": 5}), "bad_args"),
    ("fault name not a name", lambda: cmd("fault.reset", {"name": "../etc"}), "bad_args"),
    ("wrong bench", lambda: cmd("rebirth", bench="tgk-other-02"), "wrong_bench"),
    ("unsigned", lambda: {k: v for k, v in cmd("rebirth").items() if k not in ("sig", "key_id")}, "unsigned"),
    ("unknown key", lambda: cmd("rebirth", key_id="ops-mallory", key=OTHER_KEY), "unknown_key"),
    ("signed by another key", lambda: cmd("rebirth", key=OTHER_KEY), "bad_signature"),
    ("tampered after signing", lambda: {**cmd("usb.set", {"port": "usb1", "state": "on"}), "args": {"port": "usb1", "state": "off"}}, "bad_signature"),
    ("sig not base64", lambda: {**cmd("rebirth"), "sig": "not base64!"}, "bad_signature"),
    ("sig of 63 bytes", _sig_of_other_length, "bad_signature"),
    ("non-canonical base64 sig", _noncanonical_sig, "bad_signature"),
    ("expired", lambda: cmd("rebirth", now=T0 - timedelta(seconds=200)), "expired"),
    ("stale", lambda: _resigned(cmd("rebirth", now=T0 - timedelta(seconds=400)), expires_at="2025-02-01T00:00:00Z"), "stale"),
    ("future", lambda: cmd("rebirth", now=T0 + timedelta(seconds=60)), "future"),
]  # fmt: skip


@pytest.mark.parametrize(("case", "build", "code"), ERROR_CASES, ids=[c[0] for c in ERROR_CASES])
def test_bad_input_gets_its_error_code_and_changes_nothing(
    rig: Rig, case: str, build: Callable[[], bytes | dict[str, Any]], code: str
) -> None:
    payload = build()
    reply = rig.send(payload)
    assert error_code(reply) == code, reply
    assert rig.control.mutations() == []
    assert rig.events == []
    assert rig.proc.store is not None and len(rig.proc.store) == 0
    assert rig.proc.stats() == {code: 1}
    if (
        isinstance(payload, dict)
        and isinstance(payload.get("id"), str)
        and code not in ("malformed", "too_large")
    ):
        assert reply["id"] == payload["id"]


def test_every_documented_error_code_is_exercised() -> None:
    tested = {c[2] for c in ERROR_CASES} | {"refused", "internal", "replayed"}
    assert tested == set(ERROR_CODES)


def test_replies_without_a_usable_id_say_null(rig: Rig) -> None:
    assert rig.send(b"\xff\xfe")["id"] is None
    assert rig.send(cmd("ping", id="a b"))["id"] is None
    assert rig.send(b"x" * 9000)["id"] is None


def test_retained_commands_are_ignored_without_a_reply(rig: Rig) -> None:
    assert rig.proc.handle_mqtt(encode(cmd("rebirth")), retained=True) is None
    assert rig.proc.handle_mqtt(b"garbage", retained=True) is None
    assert rig.control.calls == [] and rig.events == []


# ---------------------------------------------------------------------------
# Unsigned commands (lab only)
# ---------------------------------------------------------------------------


def test_allow_unsigned_accepts_unsigned_and_warns_loudly(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="bench_agent.remote.commands"):
        rig = make_rig(tmp_path / "r.jsonl", allow_unsigned=True)
        assert any("UNSIGNED" in r.message for r in caplog.records)
        caplog.clear()
        c = new_command("usb.set", {"port": "usb1", "state": "off"}, bench=BENCH, now=T0)
        del c["bench"]
        assert rig.send(c)["ok"] is True
        assert any("UNSIGNED" in r.message and c["id"] in r.message for r in caplog.records)
    assert rig.control.calls == [
        ("set_override", "usb1", False, None, "ops")
    ]  # unsigned: no key to name
    assert rig.events[0]["key_id"] is None
    # A signature, when present, is still checked.
    assert error_code(rig.send(cmd("rebirth", key=OTHER_KEY))) == "bad_signature"
    assert error_code(rig.send(cmd("rebirth", key_id="nobody"))) == "unknown_key"


def test_without_allow_unsigned_there_is_no_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="bench_agent.remote.commands"):
        make_rig(tmp_path / "r.jsonl")
    assert not any("UNSIGNED" in r.message for r in caplog.records)


# ---------------------------------------------------------------------------
# Duplicates, replays, age
# ---------------------------------------------------------------------------


def test_a_command_delivered_three_times_runs_once_with_the_same_reply(rig: Rig) -> None:
    raw = encode(cmd("usb.set", {"port": "usb1", "state": "off", "duration_s": 60}))
    replies = [rig.proc.handle_mqtt(raw, retained=False) for _ in range(3)]
    assert replies[0] == replies[1] == replies[2]
    assert json.loads(replies[0] or b"")["ok"] is True
    assert len(rig.control.mutations()) == 1
    assert len(rig.events) == 1


def test_a_rejected_command_does_not_burn_its_id(rig: Rig) -> None:
    good = cmd("rebirth")
    forged = {**good, "sig": cmd("rebirth", key=OTHER_KEY)["sig"]}
    assert error_code(rig.send(forged)) == "bad_signature"
    assert rig.send(good)["ok"] is True
    assert rig.control.mutations() == [("rebirth",)]


def test_same_id_with_other_content_is_replayed(rig: Rig) -> None:
    first = cmd("usb.set", {"port": "usb1", "state": "off"})
    rig.send(first)
    again = _resigned(first, args={"port": "usb1", "state": "on"})
    assert error_code(rig.send(again)) == "replayed"
    assert rig.control.mutations() == [("set_override", "usb1", False, None, "ops:ops-alice")]


def test_replay_is_refused_after_a_restart_even_before_the_clock_syncs(tmp_path: Path) -> None:
    store = tmp_path / "replay.jsonl"
    raw = encode(cmd("usb.set", {"port": "usb1", "state": "off"}))
    first = make_rig(store)
    assert first.send(raw)["ok"] is True
    # A reboot: new process, no clock yet, a wall clock years off.
    second = make_rig(store, clock=Clock(now=datetime(1970, 1, 1, tzinfo=UTC), synced=False))
    assert error_code(second.send(raw)) == "replayed"
    assert second.control.calls == []
    assert second.events == []


def test_age_is_only_judged_once_the_clock_is_synced(rig: Rig) -> None:
    old = cmd("rebirth", now=T0 - timedelta(days=3))
    future = cmd("rebirth", now=T0 + timedelta(days=3))
    rig.clock.synced = True
    assert error_code(rig.send(old)) == "expired"
    assert error_code(rig.send(future)) == "future"
    rig.clock.synced = False
    assert rig.send(old)["ok"] is True
    assert rig.send(future)["ok"] is True
    assert rig.control.mutations() == [("rebirth",), ("rebirth",)]


def test_age_limits_at_their_edges(rig: Rig) -> None:
    no_expiry = {"expires_at": None}
    inside = cmd("rebirth", now=T0 - timedelta(seconds=299), **no_expiry)
    outside = cmd("rebirth", now=T0 - timedelta(seconds=301), **no_expiry)
    ahead = cmd("rebirth", now=T0 + timedelta(seconds=29), **no_expiry)
    too_far = cmd("rebirth", now=T0 + timedelta(seconds=31), **no_expiry)
    assert rig.send(inside)["ok"] is True
    assert error_code(rig.send(outside)) == "stale"
    assert rig.send(ahead)["ok"] is True
    assert error_code(rig.send(too_far)) == "future"


def test_the_replay_store_is_bounded_and_its_floor_refuses_forgotten_ids(tmp_path: Path) -> None:
    store = tmp_path / "replay.jsonl"
    rig = make_rig(store, replay_capacity=3, reply_cache_size=2)
    rig.clock.synced = False
    sent = [cmd("rebirth", now=T0 + timedelta(seconds=i)) for i in range(8)]
    for c in sent:
        assert rig.send(c)["ok"] is True
    assert rig.proc.store is not None
    assert len(rig.proc.store) == 3
    assert len(rig.proc._replies) == 2
    # Forgotten by the id store, refused by the floor; also after a restart. (The
    # last two are still cached here: their duplicates get the original reply.)
    for c in sent[:-2]:
        assert error_code(rig.send(c)) == "replayed", c["id"]
    restarted = make_rig(store, clock=Clock(synced=False))
    for c in sent:
        assert error_code(restarted.send(c)) == "replayed", c["id"]
    # The file is compacted: it never holds more than twice the capacity (+ the floor).
    assert len(store.read_text().splitlines()) <= 2 * 3 + 1
    assert len(rig.control.mutations()) == 8


def test_once_synced_old_ids_are_forgotten_and_the_floor_rises(tmp_path: Path) -> None:
    rig = make_rig(tmp_path / "r.jsonl")
    rig.send(cmd("rebirth"))
    rig.clock.now = T0 + timedelta(seconds=700)  # more than 2 x max_age_s later
    rig.send(cmd("rebirth", now=rig.clock.now))
    assert rig.proc.store is not None
    assert len(rig.proc.store) == 1
    assert rig.proc.store.floor == T0.timestamp()


def test_a_torn_last_line_is_dropped_and_garbage_raises_the_floor(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    path.write_text('{"id":"a","t":100.0}\n{"id":"b","t":200.0}\n{"id":"c","t":3')
    store = ReplayStore(path)
    assert "a" in store and "b" in store and len(store) == 2
    assert store.floor is None and store.dropped_lines == 1
    path.write_text('{"id":"a","t":100.0}\nGARBAGE\n{"id":"b","t":200.0}\n')
    store = ReplayStore(path)
    assert store.floor == 200.0 and store.below_floor(150.0)


def test_an_unusable_replay_store_refuses_remote_commands_but_not_local(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    rig = make_rig(tmp_path / "file" / "replay.jsonl")
    assert rig.proc.fault is not None
    assert error_code(rig.send(cmd("rebirth"))) == "internal"
    assert rig.proc.handle_local({"action": "rebirth"})["ok"] is True
    assert rig.control.mutations() == [("rebirth",)]


def test_a_command_that_cannot_be_recorded_does_not_run(rig: Rig, tmp_path: Path) -> None:
    assert rig.proc.store is not None
    (tmp_path / "ro").write_text("")
    rig.proc.store.path = tmp_path / "ro" / "replay.jsonl"  # the disk went away
    c = cmd("rebirth")
    assert error_code(rig.send(c)) == "internal"
    assert rig.control.calls == []
    rig.proc.store.path = tmp_path / "ok.jsonl"
    assert rig.send(c)["ok"] is True  # not burnt: it runs once the store is back


# ---------------------------------------------------------------------------
# The technician's local commands
# ---------------------------------------------------------------------------


def test_local_commands_need_no_signature_and_say_technician(rig: Rig) -> None:
    reply = rig.proc.handle_local(
        {"action": "usb.set", "args": {"port": "usb2", "state": "on", "duration_s": 1800}}
    )
    assert reply["ok"] is True and reply["id"].startswith("local-")
    REPLY_SCHEMA.validate(reply)
    assert rig.control.calls == [("set_override", "usb2", True, 1800.0, "technician")]
    assert rig.events[0]["source"] == "technician" and rig.events[0]["key_id"] is None
    assert rig.proc.handle_local({"id": "t-1", "action": "ping"})["id"] == "t-1"


@pytest.mark.parametrize(
    ("request_", "code"),
    [
        ({"action": "usb.set", "args": {"port": "usb7", "state": "on"}}, "bad_args"),
        ({"action": "format-disk"}, "unknown_action"),
        ({"args": {}}, "malformed"),
        ({"action": "ping", "sig": "x"}, "malformed"),
        ({"action": "ping", "id": ""}, "malformed"),
        (["ping"], "malformed"),
    ],
)
def test_bad_local_requests_get_an_error_and_change_nothing(
    rig: Rig, request_: Any, code: str
) -> None:
    reply = rig.proc.handle_local(request_)
    assert error_code(reply) == code
    REPLY_SCHEMA.validate(reply)
    assert rig.control.calls == [] and rig.events == []


# ---------------------------------------------------------------------------
# Trusted keys
# ---------------------------------------------------------------------------


def test_trusted_keys_load_from_base64_and_pem(tmp_path: Path) -> None:
    (tmp_path / "ops-alice.pub").write_text(public_key_text(KEY.public_key()) + "\n")
    pem = OTHER_KEY.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    (tmp_path / "ops-bob.pub").write_bytes(pem)
    (tmp_path / "README").write_text("not a key, not loaded")
    keys = load_trusted_keys(tmp_path)
    assert sorted(keys) == ["ops-alice", "ops-bob"]
    c = cmd("rebirth", key=OTHER_KEY, key_id="ops-bob")
    rig = make_rig(tmp_path / "r.jsonl", trusted_keys=keys)
    assert rig.send(c)["ok"] is True


@pytest.mark.parametrize(
    ("name", "content", "problem"),
    [
        ("short.pub", base64.b64encode(b"x" * 31).decode(), "32 bytes"),
        ("junk.pub", "hello world", "neither PEM nor base64"),
        (
            "secret.pub",
            KEY.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()).decode(),
            "PRIVATE",
        ),
        ("bad name!.pub", public_key_text(KEY.public_key()), "file name"),
    ],
    # KEY is made at import: ids from the file names only, the same in every process
    # (pytest-xdist's workers must collect identical test ids).
    ids=["short", "junk", "private", "bad-name"],
)
def test_an_unusable_key_file_is_a_one_line_config_error(
    tmp_path: Path, name: str, content: str, problem: str
) -> None:
    (tmp_path / name).write_text(content)
    with pytest.raises(ConfigError, match=problem) as info:
        load_trusted_keys(tmp_path)
    assert name in str(info.value) and "\n" not in str(info.value)


# ---------------------------------------------------------------------------
# The JSON Schema and the code agree
# ---------------------------------------------------------------------------

GOOD = {
    "id": "c-1",
    "action": "usb.set",
    "args": {"port": "usb1", "state": "off", "duration_s": 60},
    "issued_at": "2025-01-31T08:00:00Z",
}
# (command, the code's verdict, schema-valid?). Where they differ it is a check only
# code can make: the bench's own ports, the calendar, the order of two times.
CORPUS: list[tuple[Any, str | None, bool]] = [
    (GOOD, None, True),
    ({**GOOD, "args": {"port": "usb1", "state": "auto"}}, None, True),
    ({**GOOD, "expires_at": "2025-01-31T15:02:00.5+07:00", "bench": BENCH}, None, True),
    ({**GOOD, "bench": BENCH, "key_id": "k", "sig": "AAAA"}, None, True),
    ({"id": "x", "action": "ping", "issued_at": "2025-01-31T08:00:00Z"}, None, True),
    ({"id": "x", "action": "rebirth", "args": {}, "issued_at": "2025-01-31T08:00:00Z"}, None, True),
    ({"id": "x", "action": "fault.reset", "args": {"name": "a.b"}, "issued_at": GOOD["issued_at"]}, None, True),
    ({"id": "x", "action": "wifi.set", "args": {"state": "on", "duration_s": 604800}, "issued_at": GOOD["issued_at"]}, None, True),
    ({**GOOD, "args": {"port": "usb3", "state": "on"}}, "bad_args", True),
    ({**GOOD, "issued_at": "2025-02-30T08:00:00Z"}, "malformed", True),
    ({**GOOD, "expires_at": "2025-01-31T07:00:00Z"}, "malformed", True),
    ([GOOD], "malformed", False),
    ({**GOOD, "id": ""}, "malformed", False),
    ({**GOOD, "id": 5}, "malformed", False),
    ({**GOOD, "extra": 1}, "malformed", False),
    ({**GOOD, "issued_at": 1738310400}, "malformed", False),
    ({**GOOD, "bench": "Bench 1"}, "malformed", False),
    ({**GOOD, "bench": None}, "malformed", False),
    ({**GOOD, "bench": BENCH, "sig": "AAAA"}, "malformed", False),
    ({**GOOD, "key_id": "k"}, "malformed", False),
    ({**GOOD, "key_id": "k", "sig": "AAAA"}, "malformed", False),
    ({**GOOD, "bench": BENCH, "key_id": "k", "sig": ""}, "malformed", False),
    ({k: v for k, v in GOOD.items() if k != "action"}, "malformed", False),
    ({**GOOD, "action": "usb.off"}, "unknown_action", False),
    ({**GOOD, "args": None}, "bad_args", False),
    ({**GOOD, "args": {"port": "usb1"}}, "bad_args", False),
    ({**GOOD, "args": {"port": "usb1", "state": "auto", "duration_s": 5}}, "bad_args", False),
    ({**GOOD, "args": {"port": "usb1", "state": "on", "duration_s": -1}}, "bad_args", False),
    ({**GOOD, "args": {"port": "usb1", "state": "on", "duration_s": "60"}}, "bad_args", False),
    ({**GOOD, "args": {"port": "usb1", "state": "on", "why": "x"}}, "bad_args", False),
    ({"id": "x", "action": "ping", "args": {"a": 1}, "issued_at": GOOD["issued_at"]}, "bad_args", False),
    ({"id": "x", "action": "wifi.set", "issued_at": GOOD["issued_at"]}, "bad_args", False),
    ({"id": "x", "action": "fault.reset", "args": {"name": 3}, "issued_at": GOOD["issued_at"]}, "bad_args", False),
]  # fmt: skip


def _verdict(obj: Any) -> str | None:
    try:
        validate_command(obj, OUTPUTS)
    except CommandError as exc:
        return exc.code
    return None


@pytest.mark.parametrize(("obj", "code", "schema_ok"), CORPUS)
def test_schema_and_code_agree_on_the_corpus(obj: Any, code: str | None, schema_ok: bool) -> None:
    assert _verdict(obj) == code
    assert COMMAND_SCHEMA.is_valid(obj) is schema_ok


_TEXT = st.text(alphabet="abcu1-_. :Zé", max_size=6)  # no "\n": jsonschema's "$" allows one
_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "id": st.one_of(st.sampled_from(["c-1", "a" * 128, "a" * 129, "", "-x", "a b"]), st.integers()),
    "action": st.one_of(st.sampled_from(["ping", "state.get", "usb.set", "wifi.set", "fault.reset", "rebirth", "x"]), st.none()),
    "issued_at": st.sampled_from(["2025-01-31T08:00:00Z", "2025-01-31T08:00:00", "2025-01-31", 0]),
    "expires_at": st.sampled_from(["2025-01-31T19:00:00.123456+07:00", "2025-01-31T09:00:00.1234567Z", None]),
    "bench": st.one_of(st.sampled_from([BENCH, "UP", "-x", ""]), st.none()),
    "key_id": st.sampled_from(["k", "k.1", "k/1", ""]),
    "sig": st.sampled_from(["AAAA", "", "x" * 201]),
    "args": st.one_of(
        st.dictionaries(
            st.sampled_from(["port", "state", "duration_s", "name", "other"]),
            st.one_of(
                st.sampled_from(["usb1", "usb2", "wifi", "usb", "usb123", "on", "off", "auto", "a.b", "A"]),
                st.integers(-5, 700_000),
                st.floats(allow_nan=False),
                st.booleans(),
                st.none(),
                _TEXT,
            ),
            max_size=4,
        ),
        st.lists(st.integers(), max_size=2),
    ),
    "other": st.integers(),
}  # fmt: skip


@settings(max_examples=600, deadline=None, database=None)
@given(
    st.fixed_dictionaries({}, optional={k: v for k, v in _VALUES.items()} | {"id": _VALUES["id"]})
)
def test_schema_and_code_agree_on_generated_commands(obj: dict[str, Any]) -> None:
    assert (_verdict(obj) is None) is COMMAND_SCHEMA.is_valid(obj), _verdict(obj)


# ---------------------------------------------------------------------------
# A stream of hostile payloads
# ---------------------------------------------------------------------------


def _hostile_strategy(executed: list[bytes], signed_bad: list[bytes]) -> st.SearchStrategy[bytes]:
    json_values = st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
        lambda inner: (
            st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
        ),
        max_leaves=20,
    )
    envelope = st.fixed_dictionaries(
        {},
        optional={
            "id": st.one_of(st.text(max_size=10), json_values),
            "action": st.one_of(
                st.sampled_from(
                    ["ping", "usb.set", "wifi.set", "fault.reset", "rebirth", "reboot", "shell"]
                ),
                json_values,
            ),
            "args": st.one_of(
                st.dictionaries(
                    st.sampled_from(["port", "state", "duration_s", "name"]), json_values
                ),
                json_values,
            ),
            "issued_at": st.one_of(st.just("2025-01-31T08:00:00Z"), json_values),
            "bench": st.sampled_from([BENCH, "tgk-other-02"]),
            "key_id": st.sampled_from(["ops-alice", "ops-mallory"]),
            "sig": st.one_of(st.text(max_size=90), st.just(base64.b64encode(bytes(64)).decode())),
        },
    ).map(encode)

    def flip(raw: bytes, index: int, value: int) -> bytes:
        i = index % len(raw)
        return raw[:i] + bytes([value]) + raw[i + 1 :]

    return st.one_of(
        st.binary(max_size=200),
        json_values.map(encode),
        envelope,
        st.integers(5, 6000).map(lambda n: b'{"id":"d","args":' + b"[" * n + b"]" * n + b"}"),
        st.integers(8193, 50_000).map(lambda n: b'{"id":"big","pad":"' + b"x" * n + b'"}'),
        st.sampled_from(signed_bad),  # wrong bench, unknown key, expired, stale, bad args, ...
        st.sampled_from(executed),  # replays whose reply is no longer cached
        st.tuples(st.sampled_from(executed + signed_bad), st.integers(0, 10_000), st.integers(0, 255)).map(
            lambda t: flip(*t)
        ),
        st.sampled_from(executed).map(lambda raw: raw.replace(b'"action"', b'"\xc3\x28ction"')),
    )  # fmt: skip


def test_a_stream_of_hostile_payloads_never_changes_anything(tmp_path: Path) -> None:
    rig = make_rig(tmp_path / "replay.jsonl", replay_capacity=40, reply_cache_size=4)
    executed = [encode(cmd("rebirth", now=T0 - timedelta(seconds=i))) for i in range(12)]
    for raw in executed:
        assert rig.send(raw)["ok"] is True
    executed = executed[:8]  # the last 4 are still cached: their duplicates would get "ok"
    signed_bad = [
        encode(cmd("rebirth", bench="tgk-other-02")),
        encode(cmd("rebirth", key=OTHER_KEY, key_id="ops-mallory")),
        encode(cmd("rebirth", key=OTHER_KEY)),
        encode(cmd("rebirth", now=T0 - timedelta(hours=1))),
        encode(cmd("usb.set", {"port": "usb9", "state": "on"})),
        encode(cmd("usb.set", {"port": "usb1", "state": "on", "duration_s": 1e9})),
        encode(cmd("shell", {"cmd": "reboot"})),
        encode(cmd("rebirth", now=T0 + timedelta(hours=1))),
        encode({k: v for k, v in cmd("rebirth").items() if k not in ("sig", "key_id")}),
    ]
    rig.control.calls.clear()
    rig.events.clear()
    seen = {"answered": 0, "ignored": 0}
    codes: set[str] = set()

    @settings(
        max_examples=1200,
        deadline=None,
        database=None,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.large_base_example,
        ],
    )
    @given(_hostile_strategy(executed, signed_bad), st.booleans())
    def feed(raw: bytes, retained: bool) -> None:
        reply = rig.proc.handle_mqtt(raw, retained=retained and raw[:1] == b"{")
        if reply is None:
            assert retained
            seen["ignored"] += 1
            return
        body = json.loads(reply)
        REPLY_SCHEMA.validate(body)
        assert body["ok"] is False, (raw[:200], body)
        assert body["error"]["code"] != "internal", body
        codes.add(body["error"]["code"])
        seen["answered"] += 1

    feed()
    assert seen["answered"] + seen["ignored"] >= 1000
    assert rig.control.mutations() == []
    assert rig.events == []
    expected = {"malformed", "too_large", "unknown_action", "bad_args", "wrong_bench"}
    expected |= {"unsigned", "unknown_key", "bad_signature", "replayed", "expired", "future"}
    assert expected <= codes
    # Bounded memory: every cache has its cap.
    assert rig.proc.store is not None and len(rig.proc.store) <= 40
    assert len(rig.proc._replies) <= 4
    assert set(rig.proc.rejections) <= set(ERROR_CODES)


def test_memory_stays_bounded_over_many_executed_commands(tmp_path: Path) -> None:
    store = tmp_path / "replay.jsonl"
    rig = make_rig(store, replay_capacity=50, reply_cache_size=8)
    rig.clock.synced = False
    for i in range(300):
        assert rig.send(cmd("ping", now=T0 + timedelta(seconds=i)))["ok"] is True
    assert rig.proc.store is not None and len(rig.proc.store) == 50
    assert len(rig.proc._replies) == 8
    assert len(store.read_text().splitlines()) <= 2 * 50 + 1


def test_throughput_of_signed_commands(tmp_path: Path) -> None:
    """A figure, not a target: one signed command, verified, recorded with fsync, run."""
    rig = make_rig(tmp_path / "replay.jsonl")
    payloads = [encode(cmd("ping", id=f"p-{i}")) for i in range(100)]
    started = time.perf_counter()
    for raw in payloads:
        rig.proc.handle_mqtt(raw, retained=False)
    per_command_ms = (time.perf_counter() - started) * 1000 / len(payloads)
    print(f"\nsigned command handled in {per_command_ms:.2f} ms (fsync included)")
    assert per_command_ms < 100


# -- the clock is not synced: what time has certainly passed -------------------------


def test_before_ntp_an_old_signed_command_is_refused_by_the_time_floor(tmp_path: Path) -> None:
    from bench_agent.clock import TimeFloor

    # The last run saw the synced time T0 (+ 1 h) and saved it; the Pi rebooted
    # without an RTC and its clock is wrong, unsynced.
    saved = TimeFloor(tmp_path / "time-floor.json")
    saved.observe(T0.timestamp() + 3600, save_now=True)
    clock = Clock(now=datetime(1970, 1, 2, tzinfo=UTC), synced=False)
    rig = make_rig(
        tmp_path / "replay.jsonl", clock, time_floor=TimeFloor(tmp_path / "time-floor.json")
    )
    year_ago = T0 - timedelta(days=365)
    assert error_code(rig.send(cmd("ping", now=year_ago, id="old-1"))) in {"stale", "expired"}
    no_expiry = cmd("ping", now=year_ago, id="old-3", expires_at=None)
    assert error_code(rig.send(no_expiry)) == "stale"
    # Signed 3 minutes before the floor (not stale), but it expired (2 min) before it.
    expired = cmd("ping", now=T0 + timedelta(minutes=57), id="old-2")
    assert error_code(rig.send(expired)) == "expired"
    # A fresh command still runs.
    assert rig.send(cmd("ping", now=T0 + timedelta(hours=1, minutes=1), id="new-1"))["ok"]
    assert rig.control.mutations() == []


def test_an_accepted_command_raises_the_floor_across_a_reboot(tmp_path: Path) -> None:
    from bench_agent.clock import TimeFloor

    clock = Clock(now=datetime(1970, 1, 2, tzinfo=UTC), synced=False)
    path = tmp_path / "time-floor.json"
    rig = make_rig(tmp_path / "replay.jsonl", clock, time_floor=TimeFloor(path))
    # No floor yet (a new bench): only the id store protects.
    assert rig.send(cmd("ping", now=T0, id="first"))["ok"]
    # Reboot: the floor is T0, from the signed command just accepted.
    rig = make_rig(tmp_path / "replay.jsonl", clock, time_floor=TimeFloor(path))
    older = cmd("ping", now=T0 - timedelta(hours=1), id="older", expires_at=None)
    assert error_code(rig.send(older)) == "stale"
    assert rig.send(cmd("ping", now=T0 + timedelta(seconds=10), id="later"))["ok"]


@pytest.mark.parametrize("content", ["", "garbage", '{"t": "soon"}', '{"t": 1e999}', "[1]"])
def test_an_unreadable_time_floor_is_no_floor(tmp_path: Path, content: str) -> None:
    from bench_agent.clock import TimeFloor

    path = tmp_path / "time-floor.json"
    path.write_text(content)
    floor = TimeFloor(path)
    assert floor.now_at_least() is None  # as on a new bench: the id store protects
    floor.observe(T0.timestamp(), save_now=True)
    assert TimeFloor(path).now_at_least() == pytest.approx(T0.timestamp(), abs=1)
