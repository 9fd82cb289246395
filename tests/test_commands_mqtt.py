"""Remote commands over a real mosquitto: the agent as a process on the simulated bench,
city ops as a paho client publishing on `<prefix>/<bench>/cmd` and reading `cmd/reply`.

The command core itself (every error code, the replay store, the schema) is tested in
test_commands.py; here the seams are real: broker, signatures, the agent's main loop,
its outputs, its events and its retained `state` and `status`.
"""

from __future__ import annotations

import json
import signal
import threading
import time
import tomllib
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import jsonschema
import paho.mqtt.client as paho
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from paho.mqtt.enums import CallbackAPIVersion

from bench_agent.ops.keys import keygen, load_private_key
from bench_agent.remote.commands import ERROR_CODES, valid_id
from bench_agent.remote.signing import new_command, sign_command
from tests.support import SIM_CONFIG, AgentProcess, Broker, Message, Recorder, wait_until
from tests.test_commands import REPLY_SCHEMA, SCHEMAS, _hostile_strategy, encode

pytestmark = pytest.mark.integration

BENCH = "sim-bench-01"
CMD_TOPIC = f"smartbench/{BENCH}/cmd"
KEY_ID = "ops-alice"  # the trusted key; _hostile_strategy's envelopes also claim it
SPEED = float(tomllib.loads(SIM_CONFIG.read_text())["sim"]["speed"])  # sim s per real s
# A day of bench time: at 240x that is 6 real minutes, so every command this file
# signs stays fresh for the whole run while the bench judges ages (its clock is synced).
MAX_AGE_S = 86_400
ISSUE_MARGIN = timedelta(minutes=10)  # issued this long before the bench's now: never "future"
OTHER_KEY = Ed25519PrivateKey.generate()  # not trusted by the bench
UNSHORT_AFTER = timedelta(seconds=450)  # bench time; the scenario pulls the short at 400 s

# usb2 is shorted from the start: the policy trips it three times and latches it off,
# so that fault.reset has something to reset. The short goes before the test resets it.
SHORT_THEN_PULLED_OUT = """
[[event]]
at = 0
action = "port.short"
port = "usb2"

[[event]]
at = 400
action = "port.unshort"
port = "usb2"
"""


# ---------------------------------------------------------------------------
# City ops, as a paho client
# ---------------------------------------------------------------------------


@dataclass
class Ops:
    """Signs and publishes commands, reads replies and events (through the recorder)."""

    recorder: Recorder
    key: Ed25519PrivateKey

    def bench_now(self) -> datetime:
        """The bench's wall clock (simulated, sped up): the latest `ts` it sent, run on."""
        latest = max(
            self.recorder.on("state") + self.recorder.on("status"),
            key=lambda m: m.received_mono,
        )
        elapsed_s = (time.monotonic() - latest.received_mono) * SPEED
        return datetime.fromisoformat(latest.json()["ts"]) + timedelta(seconds=elapsed_s)

    def command(
        self,
        action: str,
        args: dict[str, Any] | None = None,
        *,
        issued: datetime | None = None,
        ttl_s: float = 12 * 3600,
        key: Ed25519PrivateKey | None = None,
        key_id: str = KEY_ID,
        **fields: Any,
    ) -> dict[str, Any]:
        """A signed command, issued a little before the bench's now (fields override)."""
        issued = issued or self.bench_now() - ISSUE_MARGIN
        c = new_command(action, args or {}, bench=BENCH, now=issued, ttl_s=ttl_s)
        c.update(fields)
        return sign_command(c, key or self.key, key_id)

    def publish(
        self, payload: bytes | dict[str, Any], *, retain: bool = False
    ) -> paho.MQTTMessageInfo:
        raw = payload if isinstance(payload, bytes) else encode(payload)
        return self.recorder.client.publish(CMD_TOPIC, raw, qos=1, retain=retain)

    def replies(self) -> list[Message]:
        return self.recorder.on("cmd/reply")

    def reply_to(self, command_id: str, timeout_s: float = 15) -> dict[str, Any]:
        reply: dict[str, Any] = self.recorder.wait_for(
            "cmd/reply", lambda p: p["id"] == command_id, timeout_s
        )
        REPLY_SCHEMA.validate(reply)
        return reply

    def send(self, command: dict[str, Any]) -> dict[str, Any]:
        self.publish(command)
        return self.reply_to(command["id"])

    def events(self, event_type: str) -> list[dict[str, Any]]:
        return [e for e in (m.json() for m in self.recorder.on("event")) if e["type"] == event_type]

    def event(self, predicate: Callable[[dict[str, Any]], bool], timeout_s: float = 15) -> Any:
        return self.recorder.wait_for("event", predicate, timeout_s)

    def state(self) -> dict[str, Any]:
        """The latest retained `state` the bench sent."""
        return dict(self.recorder.on("state")[-1].json())


def validate(name: str, payload: Any) -> None:
    """`payload` against the contract's schema `name` (event, state, status, ...)."""
    schema = json.loads((SCHEMAS / f"{name}.schema.json").read_text())
    jsonschema.Draft202012Validator(
        schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    ).validate(payload)


def retained_now(port: int, topic: str) -> bytes:
    """What the broker holds retained on `topic`, as a client subscribing now sees it."""
    got: list[bytes] = []
    done = threading.Event()
    client = paho.Client(callback_api_version=CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)

    def on_message(_c: Any, _u: Any, msg: paho.MQTTMessage) -> None:
        if msg.retain:
            got.append(bytes(msg.payload))
            done.set()

    client.on_message = on_message
    client.on_connect = lambda c, *_a: c.subscribe(topic, qos=1)
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        if not done.wait(10):
            raise AssertionError(f"nothing retained on {topic}")
    finally:
        client.loop_stop()
        client.disconnect()
    return got[0]


def vm_rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


@dataclass
class Bench:
    agent: AgentProcess
    ops: Ops
    broker: Broker


@pytest.fixture
def start_bench(
    tmp_path: Path, broker: Broker, recorder: Recorder, start_agent: Callable[..., AgentProcess]
) -> Iterator[Callable[..., Bench]]:
    """The agent on the simulated bench trusting one ops key, its clock synced (so ages
    are judged), up and online."""
    private_path, _public = keygen(tmp_path / "keys", KEY_ID)
    key = load_private_key(private_path)

    def start(scenario: str | None = None) -> Bench:
        sim: dict[str, Any] = {"charger": False, "clock_synced_at_start": True}
        if scenario is not None:
            (tmp_path / "scenario.toml").write_text(scenario)
            sim["scenario"] = str(tmp_path / "scenario.toml")
        seen = len(recorder.messages)
        agent = start_agent(
            broker.port,
            {
                "commands": {"trusted_keys": str(tmp_path / "keys"), "max_age_s": MAX_AGE_S},
                "sim": sim,
                "charger": None,  # no VE.Direct pty: not what these tests are about
            },
        )

        # This start's own status and state (a restarted bench finds older ones there).
        def online() -> bool:
            if agent.proc.poll() is not None:
                raise AssertionError(f"the agent exited:\n{agent.log[-2000:]}")
            return {"status", "state"} <= {
                m.topic.rsplit("/", 1)[1] for m in recorder.messages[seen:]
            }

        wait_until(online, 20, "the bench online")
        return Bench(agent, Ops(recorder, key), broker)

    yield start


def assert_accepted_event(ops: Ops, command: dict[str, Any]) -> None:
    """The accepted command became a `command` event: who (the key id), what, result."""
    event = ops.event(lambda e: e["type"] == "command" and e["id"] == command["id"])
    validate("event", event)
    assert event["action"] == command["action"] and event["args"] == command["args"]
    assert event["key_id"] == KEY_ID and event["source"] == "ops"
    assert event["ok"] is True


# ---------------------------------------------------------------------------
# Each action
# ---------------------------------------------------------------------------


def test_each_action_over_mqtt_is_answered_with_its_id_and_recorded_as_an_event(
    start_bench: Callable[..., Bench],
) -> None:
    bench = start_bench(SHORT_THEN_PULLED_OUT)
    ops = bench.ops
    started = ops.bench_now()

    def run(action: str, args: dict[str, Any] | None = None) -> Any:
        """Send a signed command: answered ok with its id, recorded as an event."""
        command = ops.command(action, args)
        reply = ops.send(command)
        assert reply["id"] == command["id"] and reply["ok"] is True, reply
        assert_accepted_event(ops, command)
        return reply["result"]

    # ping: the bench, its (simulated, synced) clock.
    pong = run("ping")
    assert pong["pong"] is True and pong["bench"] == BENCH and pong["clock_synced"] is True
    assert abs((datetime.fromisoformat(pong["time"]) - ops.bench_now()).total_seconds()) < 3600

    # The short on usb2 latches it off after its trips (a few real seconds at 240x).
    ops.recorder.wait_for("state", lambda p: p["latched_faults"] == ["overcurrent.usb2"], 30)

    # state.get: what the retained state says, latched fault included.
    state = run("state.get")
    assert state["latched_faults"] == ["overcurrent.usb2"]
    assert {name: o["on"] for name, o in state["outputs"].items()} == {
        "usb1": True,
        "usb2": False,
        "wifi": True,
    }

    # usb.set off for 600 bench seconds: off at once, by the override, back on by itself.
    result = run("usb.set", {"port": "usb1", "state": "off", "duration_s": 600})
    assert result == {"output": "usb1", "state": "off", "duration_s": 600.0}
    off = ops.event(
        lambda e: e["type"] == "output_switched" and e["output"] == "usb1" and e["to"] == "off"
    )
    assert off["reason"] == "override_off"
    override = ops.recorder.wait_for(
        "state", lambda p: p["outputs"]["usb1"]["override"] is not None
    )["outputs"]["usb1"]["override"]
    assert override["state"] == "off" and 0 < override["expires_in_s"] <= 600
    ops.event(
        lambda e: (
            e["type"] == "output_switched"
            and e["output"] == "usb1"
            and e["to"] == "on"
            and e["seq"] > off["seq"]
        ),
        timeout_s=600 / SPEED + 10,
    )
    assert ops.state()["outputs"]["usb1"]["override"] is None

    # usb.set on (until changed), then auto: the override comes and goes.
    result = run("usb.set", {"port": "usb1", "state": "on"})
    assert result == {"output": "usb1", "state": "on", "duration_s": None}
    # The override remembers who set it: the signer's key id.
    until_changed = {"state": "on", "expires_in_s": None, "source": f"ops:{KEY_ID}"}
    ops.recorder.wait_for("state", lambda p: p["outputs"]["usb1"]["override"] == until_changed)
    result = run("usb.set", {"port": "usb1", "state": "auto"})
    assert result == {"output": "usb1", "state": "auto", "duration_s": None}
    wait_until(lambda: ops.state()["outputs"]["usb1"]["override"] is None, 10, "usb1 on auto")

    # wifi.set off for two hours, then back to auto before it runs out.
    result = run("wifi.set", {"state": "off", "duration_s": 7200})
    assert result == {"output": "wifi", "state": "off", "duration_s": 7200.0}
    wifi_off = ops.event(
        lambda e: e["type"] == "output_switched" and e["output"] == "wifi" and e["to"] == "off"
    )
    assert wifi_off["reason"] == "override_off"
    run("wifi.set", {"state": "auto"})
    ops.event(
        lambda e: (
            e["type"] == "output_switched"
            and e["output"] == "wifi"
            and e["to"] == "on"
            and e["seq"] > wifi_off["seq"]
        )
    )

    # fault.reset, once the cable is pulled out: usb2 comes back.
    wait_until(lambda: ops.bench_now() > started + UNSHORT_AFTER, 30, "the short pulled out")
    result = run("fault.reset", {"name": "overcurrent.usb2"})
    assert result == {"reset": ["overcurrent.usb2"]}
    ops.recorder.wait_for("state", lambda p: p["latched_faults"] == [])
    ops.event(
        lambda e: e["type"] == "output_switched" and e["output"] == "usb2" and e["to"] == "on"
    )

    # rebirth: status and state are published again, before the reply, and retained.
    before = len(ops.recorder.messages)
    assert run("rebirth") == {}
    after = ops.recorder.messages[before:]
    reply_at = next(i for i, m in enumerate(after) if m.topic.endswith("/cmd/reply"))
    republished = {m.topic.rsplit("/", 1)[1]: m for m in after[:reply_at]}
    assert {"status", "state"} <= set(republished), [m.topic for m in after[:reply_at]]
    assert republished["status"].json()["online"] is True
    validate("status", republished["status"].json())
    validate("state", republished["state"].json())
    topic = f"smartbench/{BENCH}/"
    assert retained_now(bench.broker.port, topic + "status") == republished["status"].payload
    retained_state = json.loads(retained_now(bench.broker.port, topic + "state"))
    assert retained_state["ts"] >= republished["state"].json()["ts"]  # this one or newer

    # Every accepted command is exactly one event; no command went unanswered.
    commands = ops.events("command")
    assert len(commands) == len({e["id"] for e in commands}) == 9
    assert len(ops.replies()) == 9


def test_a_command_delivered_three_times_runs_once_and_gets_the_same_reply(
    start_bench: Callable[..., Bench],
) -> None:
    ops = start_bench().ops
    command = ops.command("usb.set", {"port": "usb1", "state": "off"})
    raw = encode(command)
    for _ in range(3):  # what QoS 1 may do after a lost PUBACK
        ops.publish(raw)
    wait_until(lambda: len(ops.replies()) >= 3, 15, "three replies")
    replies = [m.payload for m in ops.replies()]
    assert replies[0] == replies[1] == replies[2], replies
    reply = json.loads(replies[0])
    REPLY_SCHEMA.validate(reply)
    assert reply["id"] == command["id"] and reply["ok"] is True
    assert_accepted_event(ops, command)
    ops.event(
        lambda e: e["type"] == "output_switched" and e["output"] == "usb1" and e["to"] == "off"
    )
    # A later command proves the bench got past the duplicates; they ran nothing more.
    assert ops.send(ops.command("ping"))["ok"] is True
    assert len(ops.replies()) == 3 + 1
    assert len([e for e in ops.events("command") if e["id"] == command["id"]]) == 1
    switched_off = [e for e in ops.events("output_switched") if e["to"] == "off"]
    assert [e["output"] for e in switched_off] == ["usb1"]


# ---------------------------------------------------------------------------
# Retained commands
# ---------------------------------------------------------------------------


def test_a_retained_command_waiting_on_the_broker_is_ignored(
    broker: Broker, recorder: Recorder, start_bench: Callable[..., Bench]
) -> None:
    """Retained on `cmd` before the bench connects: delivered to it flagged retained, so
    it would come again on every reconnect. Ignored: no reply, nothing runs."""
    bench = start_bench()
    ops = bench.ops
    command = ops.command("usb.set", {"port": "usb1", "state": "off"})
    bench.agent.stop()
    ops.publish(command, retain=True).wait_for_publish(10)
    assert retained_now(broker.port, CMD_TOPIC) == encode(command)
    bench = start_bench()
    boot_id = recorder.on("status")[-1].json()["boot_id"]
    # Answered after the retained message was delivered (on subscribing) and handled.
    assert bench.ops.send(bench.ops.command("ping"))["ok"] is True
    replied_to = {m.json()["id"] for m in bench.ops.replies()}
    assert command["id"] not in replied_to
    # This boot's events (the last one's shutdown switches come from its outbox).
    since_restart = [e for e in (m.json() for m in recorder.on("event")) if e["boot_id"] == boot_id]
    assert command["id"] not in {e.get("id") for e in since_restart}
    assert not [e for e in since_restart if e["type"] == "output_switched" and e["to"] == "off"]
    assert ops.state()["outputs"]["usb1"]["on"] is True
    assert "ignored a retained message on cmd" in bench.agent.log


def test_a_retained_command_published_while_the_bench_is_online_is_ignored(
    start_bench: Callable[..., Bench],
) -> None:
    ops = start_bench().ops
    command = ops.command("usb.set", {"port": "usb1", "state": "off"})
    ops.publish(command, retain=True)
    assert ops.send(ops.command("ping"))["ok"] is True  # delivered after the retained one
    assert command["id"] not in {m.json()["id"] for m in ops.replies()}
    assert command["id"] not in {e["id"] for e in ops.events("command")}
    assert [e for e in ops.events("output_switched") if e["to"] == "off"] == []


# ---------------------------------------------------------------------------
# A stream of hostile payloads
# ---------------------------------------------------------------------------

STREAM_LENGTH = 1200
# Payloads between two sentinel pings. The agent answers a burst faster than the broker
# acknowledges, and paho holds at most 50 unacknowledged messages for it (see the xfail
# test below): 20 replies plus its own telemetry and events stay well under that, and
# far under mosquitto's queue of 1000 for the agent's session.
CHUNK = 20
# Memory: nothing the bench keeps grows with rejected commands (they are not remembered;
# the reply cache and the replay store take only executed ones, and both are capped).
# What may remain is allocator slack from transient buffers (payloads up to 50 kB, depth
# bombs, paho's read buffer) and the SQLite page cache filling with the run's events and
# telemetry: measured at about 0.5 MB. The bound is 8 MB (a sane ceiling for a Pi agent of
# ~45 MB) or half the bytes of the stream (about 3 MB), whichever is lower: an agent that
# kept the payloads it refused, or a copy of each, would cross it.
RSS_CEILING_KB = 8 * 1024
# Every refusal a hostile payload can earn: all error codes but a policy refusal
# (no hostile payload is valid enough) and an internal error (which must never happen).
EXPECTED_CODES = set(ERROR_CODES) - {"refused", "internal"}


def hostile_payloads(
    executed: Sequence[bytes], signed_bad: Sequence[bytes], count: int
) -> list[tuple[bytes, bool]]:
    """`count` hostile payloads drawn by hypothesis, each with whether to retain it.

    Drawn up front, then published: a real agent keeps state across examples (the
    replay store, its outputs), so shrinking one payload against it would not
    reproduce. Derandomized instead: the same stream every run, so a failure here is
    reproducible as it is; test_commands.py explores the same strategy at random, with
    shrinking, against the processor alone.
    """
    drawn: list[tuple[bytes, bool]] = []

    @settings(
        max_examples=count,
        deadline=None,
        database=None,
        derandomize=True,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(_hostile_strategy(list(executed), list(signed_bad)), st.integers(0, 9))
    def draw(raw: bytes, one_in_ten: int) -> None:
        drawn.append((raw, one_in_ten == 9))

    draw()
    return drawn


def _claimed_id(raw: bytes) -> str | None:
    """The id a payload claims, if it is JSON at all (the bench may still say null)."""
    try:
        obj = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    return valid_id(obj.get("id")) if isinstance(obj, dict) else None


def test_a_stream_of_hostile_payloads_is_answered_with_errors_and_changes_nothing(
    start_bench: Callable[..., Bench],
) -> None:
    bench = start_bench()
    ops, pid = bench.ops, bench.agent.proc.pid

    # Commands ops really sent: captured, they are what an attacker replays. Each
    # replay is re-encoded (other bytes, same signed content), so it is not a QoS 1
    # duplicate that the bench would answer from its reply cache.
    executed = [
        ops.command("usb.set", {"port": "usb1", "state": "off"}),
        ops.command("usb.set", {"port": "usb1", "state": "auto"}),
        ops.command("wifi.set", {"state": "off"}),
        ops.command("wifi.set", {"state": "auto"}),
        ops.command("rebirth"),
    ]
    for command in executed:
        assert ops.send(command)["ok"] is True
    replays = [json.dumps(c, indent=1).encode() for c in executed]
    replays += [encode(dict(reversed(c.items()))) for c in executed]

    now = ops.bench_now()
    tampered = ops.command("usb.set", {"port": "usb1", "state": "on"})
    tampered["args"] = {"port": "usb1", "state": "off"}
    unsigned = ops.command("usb.set", {"port": "usb1", "state": "off"})
    del unsigned["sig"], unsigned["key_id"]
    signed_bad = [
        ops.command("usb.set", {"port": "usb1", "state": "off"}, bench="sim-bench-02"),
        ops.command("rebirth", key=OTHER_KEY, key_id="ops-mallory"),
        ops.command("usb.set", {"port": "usb1", "state": "off"}, key=OTHER_KEY),
        tampered,
        unsigned,
        ops.command("wifi.set", {"state": "off"}, issued=now - timedelta(hours=2), ttl_s=3600),
        ops.command(
            "wifi.set",
            {"state": "off"},
            issued=now - timedelta(seconds=3 * MAX_AGE_S),
            ttl_s=4 * MAX_AGE_S,
        ),
        ops.command("usb.set", {"port": "usb1", "state": "off"}, issued=now + timedelta(days=1)),
        ops.command("usb.set", {"port": "usb9", "state": "on"}),
        ops.command("usb.set", {"port": "usb1", "state": "on", "duration_s": 1e9}),
        ops.command("shell", {"cmd": "reboot"}),
    ]
    stream = hostile_payloads(replays, [encode(c) for c in signed_bad], STREAM_LENGTH)
    assert len(stream) >= 1000

    rounds = 0

    def sentinel_round(payloads: Sequence[bytes], retain: bool) -> list[dict[str, Any]]:
        """Publish `payloads`, then a good ping; the replies in between, in order."""
        nonlocal rounds
        rounds += 1
        first = len(ops.replies())
        for raw in payloads:
            ops.publish(raw, retain=retain)
        ping = ops.command("ping")
        ops.publish(ping)
        ops.reply_to(ping["id"], timeout_s=30)
        got = [m.json() for m in ops.replies()[first:]]
        assert got[-1]["id"] == ping["id"] and got[-1]["ok"] is True, got[-1]
        return got[:-1]

    sentinel_round([], retain=False)  # warm-up: the first reply's one-off allocations
    rounds = 0
    state_before = ops.state()
    events_before = len(ops.recorder.on("event"))
    rss_before_kb = vm_rss_kb(pid)

    codes: Counter[str] = Counter()
    # Payloads with a usable id: their reply must carry it (ops correlate by it).
    well_formed = {encode(c): c["id"] for c in signed_bad} | {
        raw: c["id"] for raw, c in zip(replays, executed * 2, strict=True)
    }
    matched_by_id = 0
    live = [raw for raw, retain in stream if not retain]
    for start in range(0, len(live), CHUNK):
        chunk = live[start : start + CHUNK]
        replies = sentinel_round(chunk, retain=False)
        # One reply per payload, in the order sent (one publisher, one topic, QoS 1).
        assert len(replies) == len(chunk), (start, len(replies), len(chunk))
        for raw, reply in zip(chunk, replies, strict=True):
            REPLY_SCHEMA.validate(reply)
            assert reply["ok"] is False, (raw[:300], reply)
            assert reply["error"]["code"] != "internal", (raw[:300], reply)
            assert reply["id"] in (None, _claimed_id(raw)), (raw[:300], reply)
            if raw in well_formed:
                assert reply["id"] == well_formed[raw], (raw[:300], reply)
                matched_by_id += 1
            codes[reply["error"]["code"]] += 1
    # Retained: documented as ignored, no reply. While mqtt.py lets the broker clear the
    # retain flag on live delivery (see the xfail test above) they are answered instead:
    # either way, only with errors.
    retained = [raw for raw, retain in stream if retain]
    assert retained
    for start in range(0, len(retained), CHUNK):
        chunk = retained[start : start + CHUNK]
        answered = sentinel_round(chunk, retain=True)
        assert len(answered) in (0, len(chunk)), (start, len(answered), len(chunk))
        assert all(r["ok"] is False and r["error"]["code"] != "internal" for r in answered)

    assert set(codes) >= EXPECTED_CODES, codes
    assert matched_by_id >= 100, matched_by_id
    stream_ended = time.monotonic()

    # Nothing changed: no switch, no accepted command but the sentinel pings, the same
    # retained state (outputs, reasons, overrides).
    during = [m.json() for m in ops.recorder.on("event")[events_before:]]
    assert [e for e in during if e["type"] == "output_switched"] == []
    accepted = [e for e in during if e["type"] == "command"]
    assert {e["action"] for e in accepted} == {"ping"}
    assert len(accepted) == rounds
    state_after = ops.state()
    assert state_after["outputs"] == state_before["outputs"]
    assert state_after["latched_faults"] == state_before["latched_faults"] == []

    # Still healthy: online, telemetry flowing, answering, no crash, memory bounded.
    assert ops.send(ops.command("ping"))["ok"] is True
    wait_until(
        lambda: ops.recorder.on("telemetry")[-1].received_mono > stream_ended,
        10,
        "telemetry after the stream",
    )
    assert all(m.json()["online"] is True for m in ops.recorder.on("status"))
    assert bench.agent.proc.poll() is None
    log = bench.agent.log
    assert "Traceback" not in log and "internal error" not in log
    growth_kb = vm_rss_kb(pid) - rss_before_kb
    stream_kb = sum(len(raw) for raw, _ in stream) // 1024
    print(f"\nagent VmRSS grew {growth_kb} kB over {len(stream)} payloads of {stream_kb} kB")
    assert growth_kb < min(RSS_CEILING_KB, stream_kb // 2), (growth_kb, stream_kb)


BURST = 100  # commands arriving together: twice what paho holds unacknowledged for the agent
NOT_A_COMMAND = b"not a command"


def tcp_rx_queue(local_port: int | None = None, remote_port: int | None = None) -> int:
    """Bytes waiting to be read on the loopback TCP connection with these ports (the
    fullest one when several match)."""
    fullest = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote = (int(f.rsplit(":", 1)[1], 16) for f in fields[1:3])
        if local_port in (None, local) and remote_port in (None, remote):
            fullest = max(fullest, int(fields[4].split(":")[1], 16))
    return fullest


def test_a_burst_of_commands_on_a_slow_link_still_gets_every_reply(
    broker: Broker, recorder: Recorder, start_bench: Callable[..., Bench]
) -> None:
    """A burst reaches the bench while the broker is slow to acknowledge (a congested
    cellular uplink; here a paused broker): every command is still answered once the
    broker catches up."""
    # A broker that hands the whole burst over at once (mosquitto sends 20 at a time by
    # default), so the test does not depend on how fast the agent runs.
    broker.stop()
    with broker.conf.open("a") as conf:
        conf.write("max_inflight_messages 1000\n")
    broker.start()
    wait_until(recorder.client.is_connected, 10, "the recorder back")
    bench = start_bench()
    ops, agent, paused_broker = bench.ops, bench.agent.proc, broker.proc
    assert paused_broker is not None
    ping = ops.command("ping")
    # MQTT 5 PUBLISH of NOT_A_COMMAND at QoS 1: header, topic, packet id, properties.
    message_bytes = 2 + 2 + len(CMD_TOPIC) + 2 + 1 + len(NOT_A_COMMAND)
    agent.send_signal(signal.SIGSTOP)
    try:
        for _ in range(BURST):
            ops.publish(NOT_A_COMMAND)
        ops.publish(ping)
        wait_until(
            lambda: tcp_rx_queue(remote_port=broker.port) >= BURST * message_bytes,
            10,
            "the burst waiting in the paused agent's socket",
        )
        paused_broker.send_signal(signal.SIGSTOP)
        try:
            agent.send_signal(signal.SIGCONT)
            wait_until(
                lambda: tcp_rx_queue(remote_port=broker.port) == 0,
                10,
                "the agent to read the burst",
            )
            time.sleep(0.3)  # its main loop answers 101 messages; no PUBACK can come back
        finally:
            paused_broker.send_signal(signal.SIGCONT)
    finally:
        agent.send_signal(signal.SIGCONT)
    ops.reply_to(ping["id"], timeout_s=3)
    wait_until(lambda: len(ops.replies()) >= BURST + 1, 3, "every reply")
    refused = Counter(m.json()["error"]["code"] for m in ops.replies() if m.json()["id"] is None)
    assert refused == {"malformed": BURST}
