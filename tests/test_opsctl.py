"""`bench-ops`: key files, and signed commands through a real mosquitto to a responder."""

from __future__ import annotations

import json
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from bench_agent.ops.keys import load_private_key
from bench_agent.ops.opsctl import EXIT_USAGE, main
from bench_agent.ops.send import (
    EXIT_ERROR_REPLY,
    EXIT_NO_CONNECTION,
    EXIT_OK,
    EXIT_TIMEOUT,
    parse_args_pairs,
)
from bench_agent.remote.processor import CommandProcessor
from bench_agent.remote.signing import load_trusted_keys
from tests.ops_support import FakeControl, Responder
from tests.support import Broker, free_port

BENCH = "tgk-alun-01"


# ---------------------------------------------------------------------------
# keygen
# ---------------------------------------------------------------------------


def test_keygen_writes_a_secret_private_key_and_an_installable_public_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "keys"
    assert main(["keygen", "--out", str(out), "--key-id", "ops-alice"]) == EXIT_OK
    private, public = out / "ops-alice.key", out / "ops-alice.pub"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert stat.S_IMODE(public.stat().st_mode) == 0o644
    assert private.read_text().startswith("-----BEGIN PRIVATE KEY-----")
    assert len(public.read_text().splitlines()) == 1
    keys = load_trusted_keys(out)
    assert list(keys) == ["ops-alice"]
    # The pair matches: what the private key signs, the installed public key verifies.
    signature = load_private_key(private).sign(b"x")
    keys["ops-alice"].verify(b"x", signature)  # PyNaCl: message, then signature
    assert "ops-alice.pub" in capsys.readouterr().out


def test_keygen_never_overwrites_a_key(tmp_path: Path) -> None:
    assert main(["keygen", "--out", str(tmp_path)]) == EXIT_OK
    before = (tmp_path / "ops.key").read_bytes()
    assert main(["keygen", "--out", str(tmp_path)]) == EXIT_USAGE
    assert (tmp_path / "ops.key").read_bytes() == before


def test_keygen_refuses_a_bad_key_id(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["keygen", "--out", str(tmp_path), "--key-id", "../evil"]) == EXIT_USAGE
    assert list(tmp_path.iterdir()) == []
    assert capsys.readouterr().err.count("\n") == 1


def test_args_are_numbers_when_they_parse_as_numbers() -> None:
    assert parse_args_pairs(["port=usb1", "duration_s=1800", "x=1.5", "y=inf", "z=a=b"]) == {
        "port": "usb1",
        "duration_s": 1800,
        "x": 1.5,
        "y": "inf",
        "z": "a=b",
    }


@pytest.mark.parametrize("argv", [["send"], ["keygen"], ["frobnicate"], []])
def test_usage_errors_exit_64_not_the_timeout_code(argv: list[str]) -> None:
    assert main(argv) == EXIT_USAGE


# ---------------------------------------------------------------------------
# send, through a real broker
# ---------------------------------------------------------------------------


@dataclass
class Setup:
    broker: Broker
    control: FakeControl
    keys: Path
    events: list[dict[str, Any]]

    def send(self, *extra: str, bench: str = BENCH, key_id: str = "ops-alice") -> list[str]:
        return [
            "send",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.broker.port),
            "--key",
            str(self.keys / f"{key_id}.key"),
            "--key-id",
            key_id,
            "--bench",
            bench,
            "--timeout",
            "5",
            *extra,
        ]


@pytest.fixture
def setup(broker: Broker, tmp_path: Path) -> Iterator[Setup]:
    keys = tmp_path / "keys"
    assert main(["keygen", "--out", str(keys), "--key-id", "ops-alice"]) == EXIT_OK
    assert main(["keygen", "--out", str(tmp_path / "other"), "--key-id", "ops-mallory"]) == 0
    (tmp_path / "other" / "ops-mallory.key").rename(keys / "ops-mallory.key")
    control = FakeControl()
    events: list[dict[str, Any]] = []
    processor = CommandProcessor(
        control,
        bench_id=BENCH,
        trusted_keys=load_trusted_keys(keys / "ops-alice.pub"),
        allow_unsigned=False,
        replay_store_path=tmp_path / "replay.jsonl",
        clock_synced=lambda: True,
        wall_now=lambda: datetime.now(UTC),
        on_event=events.append,
    )
    responder = Responder(broker.port, processor, status=None)
    try:
        yield Setup(broker, control, keys, events)
    finally:
        responder.close()


@pytest.mark.integration
def test_send_signs_publishes_and_prints_the_ok_reply(
    setup: Setup, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = setup.send("usb.set", "port=usb1", "state=off", "duration_s=1800")
    assert main(argv) == EXIT_OK
    reply = json.loads(capsys.readouterr().out)
    assert reply["ok"] is True
    assert reply["result"] == {"output": "usb1", "state": "off", "duration_s": 1800.0}
    assert setup.control.calls == [("set_override", "usb1", False, 1800.0, "ops:ops-alice")]
    assert setup.events[0]["key_id"] == "ops-alice" and setup.events[0]["id"] == reply["id"]


@pytest.mark.integration
def test_an_error_reply_exits_1_and_is_printed(
    setup: Setup, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(setup.send("usb.set", "port=usb9", "state=on")) == EXIT_ERROR_REPLY
    assert json.loads(capsys.readouterr().out)["error"]["code"] == "bad_args"
    # A key the bench does not trust is refused, not obeyed.
    assert main(setup.send("rebirth", key_id="ops-mallory")) == EXIT_ERROR_REPLY
    assert json.loads(capsys.readouterr().out)["error"]["code"] == "unknown_key"
    assert setup.control.calls == []


@pytest.mark.integration
def test_no_reply_exits_2_after_the_timeout(
    setup: Setup, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = setup.send("ping", bench="tgk-nobody-99")
    argv[argv.index("--timeout") + 1] = "0.5"
    assert main(argv) == EXIT_TIMEOUT
    captured = capsys.readouterr()
    assert captured.out == "" and "no reply within 0.5 s" in captured.err


def test_no_broker_exits_3(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["keygen", "--out", str(tmp_path)]) == EXIT_OK
    argv = ["send", "--host", "127.0.0.1", "--port", str(free_port())]
    argv += ["--key", str(tmp_path / "ops.key"), "--key-id", "ops", "--bench", BENCH, "ping"]
    assert main(argv) == EXIT_NO_CONNECTION
    assert "cannot connect" in capsys.readouterr().err


def test_a_missing_or_wrong_signing_key_is_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / "not-a-key").write_text("hello")
    for key in (tmp_path / "absent.key", tmp_path / "not-a-key"):
        argv = ["send", "--host", "127.0.0.1", "--key", str(key), "--key-id", "ops"]
        assert main([*argv, "--bench", BENCH, "ping"]) == EXIT_USAGE


@pytest.mark.parametrize(
    "flags",
    [
        ["--prefix", "smartbench/#"],
        ["--v1-prefix", "$SYS/x"],
        ["--v1-prefix", "smartbench"],  # the same as --prefix: it would mirror onto itself
        ["--group", "a/b"],
        ["--client-id", "a+b"],
        ["--status-interval", "0"],
        ["--max-message-bytes", "10"],
        ["--group", "g", "--no-share"],
    ],
)
def test_the_bridge_refuses_bad_flags_in_one_line(
    flags: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["bridge", "--host", "127.0.0.1", *flags]) == EXIT_USAGE
    assert capsys.readouterr().err.count("\n") == 1


def test_the_bridge_refuses_tls_files_it_cannot_use_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["bridge", "--host", "h", "--tls-ca", str(tmp_path / "none.crt")]) == EXIT_USAGE
    assert "cannot read" in capsys.readouterr().err
    bad = tmp_path / "ca.crt"
    bad.write_text("not a certificate\n")
    assert main(["bridge", "--host", "h", "--tls-ca", str(bad)]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert err.startswith("bench-ops: TLS files:") and err.count("\n") == 1
