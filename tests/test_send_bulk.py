"""`bench-ops send` to several benches and globs, through a real mosquitto to benches'
real CommandProcessors (tests/ops_support.py): the table and `--json`, exit codes,
benches that do not answer, the bench id bound into each signature, bounded concurrency.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from bench_agent.errors import UsageError
from bench_agent.ops.bulk_targets import Targets, expand, parse_targets
from bench_agent.ops.opsctl import EXIT_USAGE, main
from bench_agent.ops.send import EXIT_ERROR_REPLY, EXIT_NO_CONNECTION, EXIT_OK, EXIT_TIMEOUT
from tests.ops_support import CommandLog, FakeControl, Responder, processor_for, status_payload
from tests.support import Broker, Recorder, free_port, wait_until

BENCH_OPS = Path(sys.executable).parent / "bench-ops"


@dataclass
class Fleet:
    broker: Broker
    keys: Path
    workdir: Path
    log: CommandLog = field(default_factory=CommandLog)
    benches: dict[str, Responder] = field(default_factory=dict)
    controls: dict[str, FakeControl] = field(default_factory=dict)

    def bench(
        self, name: str, *, delay_s: float = 0.0, key: str = "ops-alice", online: bool = True
    ) -> Responder:
        """A bench answering commands signed by `key`, with its retained status."""
        control = FakeControl()
        processor = processor_for(name, self.keys / f"{key}.pub", self.workdir, control)
        responder = Responder(
            self.broker.port, processor, delay_s=delay_s, log=self.log, status=online
        )
        self.benches[name], self.controls[name] = responder, control
        return responder

    def status_only(self, name: str, *, online: bool) -> None:
        """A retained status and nobody behind it (a bench gone quiet, or offline)."""
        client = paho.Client(callback_api_version=CallbackAPIVersion.VERSION2)
        client.connect("127.0.0.1", self.broker.port)
        client.loop_start()
        try:
            payload = status_payload(name, online)
            client.publish(
                f"smartbench/{name}/status", payload, qos=1, retain=True
            ).wait_for_publish(5)
        finally:
            client.disconnect()
            client.loop_stop()

    def argv(self, *benches: str, timeout: float = 5, extra: tuple[str, ...] = ()) -> list[str]:
        argv = ["send", "--host", "127.0.0.1", "--port", str(self.broker.port)]
        argv += ["--key", str(self.keys / "ops-alice.key"), "--key-id", "ops-alice"]
        for bench in benches:
            argv += ["--bench", bench]
        return [*argv, "--timeout", str(timeout), *extra]


@pytest.fixture
def fleet(broker: Broker, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Iterator[Fleet]:
    keys = tmp_path / "keys"
    assert main(["keygen", "--out", str(keys), "--key-id", "ops-alice"]) == EXIT_OK
    assert main(["keygen", "--out", str(keys), "--key-id", "ops-bob"]) == EXIT_OK
    capsys.readouterr()  # what keygen said is no test's output
    f = Fleet(broker, keys, tmp_path)
    try:
        yield f
    finally:
        for responder in f.benches.values():
            responder.close()


def run_json(fleet: Fleet, capsys: pytest.CaptureFixture[str], argv: list[str]) -> tuple[int, Any]:
    code = main([*argv, "--json"])
    out = capsys.readouterr().out
    return code, json.loads(out)


# ---------------------------------------------------------------------------
# What --bench means (pure)
# ---------------------------------------------------------------------------


def test_bench_words_are_ids_and_globs_each_once_in_the_order_given() -> None:
    targets = parse_targets(["tgk-b,tgk-a", "pasar-*", " tgk-b , x-0[1-3]"])
    assert targets == Targets(("tgk-b", "tgk-a"), ("pasar-*", "x-0[1-3]"))
    assert not targets.one_bench and parse_targets(["tgk-a"]).one_bench
    known = ["pasar-02", "pasar-01", "x-01", "x-04", "tgk-a", "Bad-Id", "pasar-"]
    assert expand(targets, known, "smartbench") == [
        "tgk-b",  # named: sent whether or not the broker knows it, in the order given
        "tgk-a",
        "pasar-",  # then each glob's matches, sorted; "Bad-Id" is no bench id
        "pasar-01",
        "pasar-02",
        "x-01",
    ]


@pytest.mark.parametrize(
    "value", ["", "a,,b", "a,", "Tgk-01", "tgk/01", "-tgk", "tgk-*/cmd", "tgk-#", "a" * 64]
)
def test_a_bad_bench_word_is_a_usage_error(value: str) -> None:
    with pytest.raises(UsageError):
        parse_targets([value])


def test_a_glob_without_a_match_names_itself_and_the_benches_known() -> None:
    with pytest.raises(UsageError, match=r"'zz-\*' matches no bench under smartbench/ \(2 benches"):
        expand(parse_targets(["tgk-*,zz-*"]), ["tgk-01", "tgk-02"], "smartbench")


@pytest.mark.parametrize(
    "flags", [["--concurrency", "0"], ["--concurrency", "1001"], ["--timeout", "nan"]]
)
def test_bad_send_flags_exit_64(tmp_path: Path, flags: list[str]) -> None:
    assert main(["keygen", "--out", str(tmp_path)]) == EXIT_OK
    argv = ["send", "--host", "127.0.0.1", "--key", str(tmp_path / "ops.key"), "--key-id", "ops"]
    assert main([*argv, "--bench", "a,b", *flags, "ping"]) == EXIT_USAGE


def test_no_broker_exits_3_for_several_benches(tmp_path: Path) -> None:
    assert main(["keygen", "--out", str(tmp_path)]) == EXIT_OK
    argv = ["send", "--host", "127.0.0.1", "--port", str(free_port())]
    argv += ["--key", str(tmp_path / "ops.key"), "--key-id", "ops", "--bench", "tgk-*", "ping"]
    assert main(argv) == EXIT_NO_CONNECTION


# ---------------------------------------------------------------------------
# Through a real broker
# ---------------------------------------------------------------------------


@pytest.mark.integration
def test_a_glob_over_three_benches_gets_a_table_of_replies(fleet: Fleet) -> None:
    for name in ("tgk-alun-01", "tgk-pasar-02", "tgk-taman-03"):
        fleet.bench(name)
    fleet.bench("wlingi-01")  # under the prefix, not matched: never commanded
    argv = fleet.argv("tgk-*", extra=("usb.set", "port=usb1", "state=off", "duration_s=600"))
    done = subprocess.run(
        [str(BENCH_OPS), *argv], capture_output=True, text=True, timeout=30, check=False
    )
    assert done.returncode == EXIT_OK, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split() == ["BENCH", "RESULT", "MS", "REPLY"]
    rows = [line.split(maxsplit=3) for line in lines[1:4]]
    assert [(r[0], r[1]) for r in rows] == [
        ("tgk-alun-01", "ok"),
        ("tgk-pasar-02", "ok"),
        ("tgk-taman-03", "ok"),
    ]
    assert all(r[3] == "output=usb1 state=off duration_s=600.0" for r in rows)
    assert all(0 <= int(r[2]) < 5000 for r in rows)
    assert lines[4] == "3 benches: 3 ok, 0 error, 0 no answer in " + lines[4].split()[-2] + " s"
    assert all(len(line) <= 80 for line in lines)
    for name in ("tgk-alun-01", "tgk-pasar-02", "tgk-taman-03"):
        assert fleet.controls[name].calls == [
            ("set_override", "usb1", False, 600.0, "ops:ops-alice")
        ]
    assert fleet.controls["wlingi-01"].calls == [] and fleet.benches["wlingi-01"].received == []


@pytest.mark.integration
def test_a_silent_bench_is_listed_as_no_answer_and_exits_2(
    fleet: Fleet, capsys: pytest.CaptureFixture[str]
) -> None:
    fleet.bench("tgk-alun-01")
    fleet.bench("tgk-pasar-02")
    fleet.status_only("tgk-sunyi-03", online=True)  # frozen: the broker thinks it is on
    fleet.status_only("tgk-mati-04", online=False)
    argv = fleet.argv("tgk-*", timeout=0.5, extra=("ping",))
    code, doc = run_json(fleet, capsys, argv)
    assert code == EXIT_TIMEOUT
    by_bench = {b["bench"]: b for b in doc["benches"]}
    assert [b["bench"] for b in doc["benches"]] == sorted(by_bench)  # sent in glob order
    assert doc["counts"] == {"benches": 4, "ok": 2, "error": 0, "no_answer": 2}
    for name in ("tgk-alun-01", "tgk-pasar-02"):
        assert by_bench[name]["outcome"] == "ok" and by_bench[name]["online"] is True
        assert by_bench[name]["reply"]["id"] == by_bench[name]["command_id"]
        assert by_bench[name]["round_trip_ms"] >= 0
    for name, online in (("tgk-sunyi-03", True), ("tgk-mati-04", False)):
        silent = by_bench[name]
        assert silent["outcome"] == "no_answer" and silent["reply"] is None
        assert silent["command_id"] and silent["round_trip_ms"] is None
        assert silent["online"] is online
    # The table says the same, the offline one marked.
    assert main(argv) == EXIT_TIMEOUT
    out = capsys.readouterr().out.splitlines()
    assert out[-3:] == [
        "no answer within 0.5 s (2):",
        "  tgk-mati-04 (offline), tgk-sunyi-03",
        out[-1],
    ]
    assert out[-1].startswith("4 benches: 2 ok, 0 error, 2 no answer in ")


@pytest.mark.integration
def test_error_replies_come_first_and_exit_1_when_every_bench_answered(
    fleet: Fleet, capsys: pytest.CaptureFixture[str]
) -> None:
    fleet.bench("tgk-alun-01")
    fleet.bench("tgk-pasar-02", key="ops-bob")  # does not trust ops-alice
    fleet.bench("tgk-taman-03")
    # Named benches (no retained status needed), repeated and comma-separated.
    argv = fleet.argv("tgk-taman-03,tgk-alun-01", "tgk-pasar-02", extra=("rebirth",))
    assert main(argv) == EXIT_ERROR_REPLY
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[:2] for line in lines[1:4]] == [
        ["tgk-pasar-02", "error"],
        ["tgk-alun-01", "ok"],
        ["tgk-taman-03", "ok"],
    ]
    assert lines[1].split(maxsplit=3)[3].startswith("unknown_key: ")
    assert fleet.controls["tgk-pasar-02"].calls == []
    assert fleet.controls["tgk-alun-01"].calls == [("rebirth",)]


@pytest.mark.integration
def test_each_bench_gets_its_own_signed_command_which_another_bench_refuses(
    fleet: Fleet, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    names = ("tgk-alun-01", "tgk-pasar-02", "tgk-taman-03")
    for name in names:
        fleet.bench(name)
        (tmp_path / name).mkdir()  # a fresh replay store for each of the others
    code, doc = run_json(fleet, capsys, fleet.argv(*names, extra=("wifi.set", "state=off")))
    assert code == EXIT_OK and doc["counts"]["ok"] == 3
    sent = {name: json.loads(fleet.benches[name].received[0]) for name in names}
    assert (
        len({c["id"] for c in sent.values()}) == 3 and len({c["sig"] for c in sent.values()}) == 3
    )
    for name, command in sent.items():
        assert command["bench"] == name and command["key_id"] == "ops-alice"
    # The bytes bench A received, delivered to B and C: each refuses them, nothing runs.
    for name, command in sent.items():
        for other in names:
            if other == name:
                continue
            control = FakeControl()
            trusted = fleet.keys / "ops-alice.pub"
            processor = processor_for(other, trusted, tmp_path / name, control)
            reply = json.loads(
                processor.handle_mqtt(fleet.benches[name].received[0], retained=False) or b""
            )
            assert reply["ok"] is False and reply["error"]["code"] == "wrong_bench", reply
            # ...and renamed for B, the signature no longer holds.
            forged = json.dumps({**command, "bench": other}).encode()
            reply = json.loads(processor.handle_mqtt(forged, retained=False) or b"")
            assert reply["error"]["code"] == "bad_signature", reply
            assert control.calls == []


@pytest.mark.integration
def test_a_glob_matching_nothing_is_an_error_and_nothing_is_sent(
    fleet: Fleet, capsys: pytest.CaptureFixture[str]
) -> None:
    fleet.bench("tgk-alun-01")
    commands = Recorder(fleet.broker.port, "smartbench/+/cmd")
    try:
        assert main(fleet.argv("tgk-*", "wlingi-*", extra=("ping",))) == EXIT_USAGE
        err = capsys.readouterr().err
        assert err == (
            "bench-ops: --bench 'wlingi-*' matches no bench under smartbench/ "
            "(1 bench with a retained status)\n"
        )
        # The broker hands over what it has in order: a ping sent now arrives after them.
        assert main(fleet.argv("tgk-alun-01", extra=("ping",))) == EXIT_OK
        assert [m.topic for m in commands.wire] == ["smartbench/tgk-alun-01/cmd"]
    finally:
        commands.close()


@pytest.mark.integration
def test_concurrency_bounds_the_commands_awaiting_a_reply(
    fleet: Fleet, capsys: pytest.CaptureFixture[str]
) -> None:
    names = ("tgk-a-01", "tgk-b-02", "tgk-c-03", "tgk-d-04")
    for name in names:
        fleet.bench(name, delay_s=0.15)  # each bench takes 0.15 s to answer
    code, doc = run_json(
        fleet, capsys, fleet.argv(",".join(names), extra=("--concurrency", "1", "ping"))
    )
    assert code == EXIT_OK and doc["counts"]["ok"] == 4
    assert fleet.log.most_at_once() == 1
    # One at a time, in order: each command reached its bench after the previous reply left.
    assert [(kind, bench) for _t, kind, bench in fleet.log.entries] == [
        (kind, name) for name in names for kind in ("in", "out")
    ]
    fleet.log.entries.clear()
    code, doc = run_json(
        fleet, capsys, fleet.argv(",".join(names), extra=("--concurrency", "2", "ping"))
    )
    assert code == EXIT_OK and doc["counts"]["ok"] == 4
    assert fleet.log.most_at_once() == 2


@pytest.mark.integration
def test_a_broker_restart_mid_run_is_said_and_the_run_still_ends(
    fleet: Fleet, capsys: pytest.CaptureFixture[str]
) -> None:
    fleet.bench("tgk-a-01")
    fleet.bench("tgk-b-02", delay_s=0.5)  # its reply is due while the broker is away
    result: list[int] = []
    argv = fleet.argv("tgk-a-01,tgk-b-02", timeout=2.5, extra=("--json", "ping"))
    sender = threading.Thread(target=lambda: result.append(main(argv)))
    sender.start()
    wait_until(lambda: "tgk-b-02" in {b for _t, _k, b in fleet.log.entries}, 5, "a command")
    fleet.broker.stop()
    fleet.broker.start()
    sender.join(10)
    assert not sender.is_alive() and result[0] in (EXIT_OK, EXIT_TIMEOUT)
    captured = capsys.readouterr()
    assert "the connection to the broker dropped" in captured.err
    doc = json.loads(captured.out)
    assert doc["disconnects"] >= 1
    assert {b["bench"]: b["outcome"] for b in doc["benches"]}["tgk-a-01"] == "ok"
