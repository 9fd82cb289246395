"""The technician's commands against a real ControlServer with an in-test daemon handler."""

from __future__ import annotations

import argparse
import copy
import io
import json
import socket
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from bench_agent.local import i18n, render, techcli
from bench_agent.local.control import ControlClient, ControlError
from bench_agent.local.control_server import ControlServer
from tests.test_control import as_nobody, world_readable_tempdir

SCHEMA_PATH = Path(techcli.__file__).parents[1] / "schemas" / "control-status.schema.json"

# What a bench in trouble looks like: a link error, a dead sensor, a latched port,
# an override, long details. Every line of `status` must still fit 80 columns.
STATUS: dict[str, Any] = {
    "bench": "tgx-alun-alun-01",
    "agent_version": "0.1.0",
    "uptime_s": 273_845.2,
    "clock": {"synced": True, "wall": "2024-06-01T03:22:05Z"},
    "link": {
        "connected": True,
        "since_s": 7_380.0,
        "last_publish_age_s": 12.4,
        "reconnects": 3,
        "last_error": "connection refused by smartbench.trenggalekkab.go.id:8883",
    },
    "outbox": {"depth": 2, "oldest_age_s": 61.0, "drops": 0, "fault": None},
    "channels": {
        "solar": {"volts": 18.41, "amps": 6.52, "watts": 120.03, "fault": None},
        "battery": {"volts": 13.22, "amps": -1.2, "watts": -15.86, "fault": None},
        "usb1": {"volts": 5.1, "amps": 0.48, "watts": 2.45, "fault": None},
        "usb2": {
            "volts": None,
            "amps": None,
            "watts": None,
            "fault": "i2c_error: [Errno 121] Remote I/O error",
        },
    },
    "battery": {"soc_pct": 78.4, "source": "coulomb", "confidence": 0.82},
    "charger": {"state": "bulk", "error": None, "panel_watts": 121.0, "yield_today_kwh": 0.42},
    "outputs": {
        "usb1": {
            "on": True,
            "reason": "schedule_on",
            "detail": "window 05:00-23:00 Asia/Jakarta",
            "override": None,
        },
        "usb2": {
            "on": False,
            "reason": "overcurrent_latched",
            "detail": "3 trips within 3600 s; last 3.10 A > 2.40 A",
            "override": None,
        },
        "wifi": {
            "on": False,
            "reason": "override_off",
            "detail": "override off by cli, 1500 s left",
            "override": {"state": "off", "expires_in_s": 1500.0, "source": "cli"},
        },
    },
    "faults": [
        {"name": "sensor.usb2", "detail": "i2c_error: [Errno 121] Remote I/O error"},
        {
            "name": "overcurrent.usb2",
            "detail": "latched after 3 trips in one hour; reset it once the cable is replaced",
        },
    ],
    "tamper_open": False,
    "today": {
        "date": "2026-03-20",
        "solar_wh": 812.4,
        "usb_wh": {"usb1": 40.2, "usb2": 3.1},
        "ap_wh": 61.0,
        "sessions": {"usb1": 5, "usb2": 1},
        "hotspot_h": 9.5,
        "wifi_clients_max": None,
        "unmeasured_h": {},
    },
}

EVENTS = [
    {
        "v": 1,
        "bench": "tgx-alun-alun-01",
        "seq": 1041,
        "ts": "2024-06-01T02:10:00Z",
        "time_quality": "synced",
        "boot_id": "b1",
        "uptime_s": 100.0,
        "type": "fault_raised",
        "fault": "sensor.usb2",
        "detail": "i2c_error: [Errno 121] Remote I/O error",
    },
    {
        "v": 1,
        "bench": "tgx-alun-alun-01",
        "seq": 1042,
        "ts": "2024-06-01T02:11:00Z",
        "time_quality": "unsynced",
        "boot_id": "b1",
        "uptime_s": 160.0,
        "type": "tamper",
        "open": True,
    },
]

CHECKS_OK = [
    {"name": "i2c.solar", "ok": True, "detail": "INA219 at 0x40 answers", "hint": ""},
    {"name": "broker", "ok": True, "detail": "connected", "hint": ""},
]
CHECK_FAILED = {
    "name": "charger",
    "ok": False,
    "detail": "no VE.Direct frame for 30 s",
    "hint": "check the cable on /dev/ttyUSB0",
}


class FakeDaemon:
    """Answers like the daemon; records every call; `answers` changes what it says."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.status: dict[str, Any] = copy.deepcopy(STATUS)
        self.override: dict[str, Any] = {"accepted": True}
        self.reset: list[str] = ["usb2"]
        self.events: list[dict[str, Any]] = copy.deepcopy(EVENTS)
        self.checks: list[dict[str, Any]] = list(CHECKS_OK)
        self.error: ControlError | None = None

    def __call__(self, method: str, params: Mapping[str, Any], _peer: object = None) -> Any:
        self.calls.append((method, dict(params)))
        if self.error is not None:
            raise self.error
        match method:
            case "status":
                return self.status
            case "override.set":
                return self.override
            case "fault.reset":
                return {"reset": self.reset}
            case "events":
                return {"events": self.events}
            case "selftest":
                return {"checks": self.checks}
        raise ControlError("unknown_method", method)


@pytest.fixture(params=["en", "id"])
def language(request: pytest.FixtureRequest) -> Iterator[str]:
    i18n.set_language(request.param)
    yield request.param
    i18n.set_language(None)


@pytest.fixture
def english() -> Iterator[None]:
    i18n.set_language("en")
    yield
    i18n.set_language(None)


@pytest.fixture
def indonesian() -> Iterator[None]:
    i18n.set_language("id")
    yield
    i18n.set_language(None)


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[tuple[FakeDaemon, Path]]:
    fake = FakeDaemon()
    path = tmp_path / "control.sock"
    with ControlServer(path, fake):
        yield fake, path


def cli(path: Path, *argv: str) -> tuple[int, str, str]:
    """Run the commands as the technician does; (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    args = parse(*argv)
    code = techcli.run(args, ControlClient(path, timeout_s=3), out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def parse(*argv: str) -> argparse.Namespace:
    # The same shape as cli.py's tree: the lead adds these next to `run` and `config`.
    parser = argparse.ArgumentParser(prog="bench-agent")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("run")
    techcli.add_subcommands(commands)
    return parser.parse_args(argv)


# --------------------------------------------------------------------------- status


def test_the_sample_status_is_what_the_schema_defines() -> None:
    schema = json.loads(SCHEMA_PATH.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.validate(STATUS, schema)
    down = copy.deepcopy(STATUS)
    down["link"] = {
        "connected": False,
        "down_since_s": 30.0,
        "last_publish_age_s": None,
        "reconnects": 0,
        "last_error": None,
    }
    down["charger"] = None
    down["tamper_open"] = None
    jsonschema.validate(down, schema)
    for broken in (
        {k: v for k, v in STATUS.items() if k != "battery"},
        {**STATUS, "extra": 1},
        {**STATUS, "link": {**STATUS["link"], "since_s": None, "connected": "yes"}},
        {**STATUS, "link": {k: v for k, v in down["link"].items() if k != "down_since_s"}},
        {**STATUS, "battery": {"soc_pct": 101, "source": "coulomb", "confidence": 1}},
    ):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(broken, schema)


def test_status_in_english(daemon: tuple[FakeDaemon, Path], english: None) -> None:
    fake, path = daemon
    code, out, err = cli(path, "status")
    assert (code, err) == (0, "")
    assert fake.calls == [("status", {})]
    assert out.startswith("Bench tgx-alun-alun-01 · agent 0.1.0 · up 3d 4h\n")
    for expected in (
        "synced",
        "connected for 2h 3m · last publish 12s ago · 3 reconnects",
        "last error: connection refused",
        "2 waiting · oldest 1m 1s · 0 dropped",
        "Battery  78% (counted current, confidence 82%)",
        "bulk · panel 121 W · today 0.42 kWh",
        "solar     18.41 V   6.52 A   120.0 W",
        "usb2     no reading: i2c_error",
        "usb1  ON   on schedule: window 05:00-23:00",
        "usb2  OFF  over-current, latched off: 3 trips",
        "wifi  OFF  switched off by hand · override off, 25m left (by cli)",
        "sensor.usb2: i2c_error",
        "box closed",
        "solar 812 Wh · hotspot on 9.5 h",
        "usb1: 40.2 Wh · 5 charging sessions",
        "usb2: 3.1 Wh · 1 charging session",
    ):
        assert expected in out, expected


def test_status_in_indonesian(daemon: tuple[FakeDaemon, Path], indonesian: None) -> None:
    _, path = daemon
    code, out, _err = cli(path, "status")
    assert code == 0
    assert out.startswith("Bangku tgx-alun-alun-01 · agen 0.1.0 · aktif 3 hari 4 jam\n")
    for expected in (
        "tersinkron",
        "terhubung selama 2 jam 3 mnt",
        "Baterai   78% (dari hitungan arus, keyakinan 82%)",
        "hari ini 0,42 kWh",  # Indonesian decimal comma
        "18,41 V",
        "NYALA  sesuai jadwal",
        "MATI   arus lebih, dikunci mati",
        "dimatikan manual · paksa mati, sisa 25 mnt (oleh cli)",
        "Gangguan  sensor.usb2",
        "5 sesi pengisian",
    ):
        assert expected in out, expected
    assert "Battery" not in out


def test_status_fits_80_columns(daemon: tuple[FakeDaemon, Path], language: str) -> None:
    fake, path = daemon
    fake.status["link"] = {
        "connected": False,
        "down_since_s": 3 * 86400 + 7000,
        "last_publish_age_s": 3 * 86400 + 7100,
        "reconnects": 12345,
        "last_error": "TLS handshake failed: certificate verify failed: " + "x" * 120,
    }
    fake.status["clock"]["synced"] = False
    fake.status["outbox"]["fault"] = "database or disk is full: /var/lib/bench-agent/outbox"
    fake.status["channels"]["a_very_long_channel_name"] = {
        "volts": -12345.678,
        "amps": 99999.99,
        "watts": -1e7,
        "fault": None,
    }
    fake.status["outputs"]["usb2"]["override"] = {
        "state": "on",
        "expires_in_s": None,
        "source": "ops:budi.santoso@diskominfo",
    }
    fake.status["charger"]["error"] = "input_current_too_high_solar_panel_shorted"
    fake.status["tamper_open"] = True
    code, out, _err = cli(path, "status")
    assert code == 0
    lines = out.splitlines()
    assert len(lines) > 20
    too_long = [line for line in lines if len(line) > render.WIDTH]
    assert too_long == []
    assert ("BOX OPEN" if language == "en" else "TERBUKA") in out


def test_status_of_an_older_daemon_with_missing_fields(
    daemon: tuple[FakeDaemon, Path], english: None
) -> None:
    fake, path = daemon
    fake.status = {"bench": "b1", "uptime_s": "soon", "channels": {"solar": None}}
    code, out, _err = cli(path, "status")
    assert code == 0
    assert "Bench b1 · agent ? · up ?" in out
    assert "charge unknown" in out


def test_status_json_prints_the_status_object(daemon: tuple[FakeDaemon, Path]) -> None:
    _, path = daemon
    code, out, _err = cli(path, "status", "--json")
    assert code == 0
    assert json.loads(out) == STATUS


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def watch(
    path: Path, monkeypatch: pytest.MonkeyPatch, out: io.StringIO, *argv: str, refreshes: int = 2
) -> tuple[int, list[float]]:
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        if len(sleeps) >= refreshes:
            raise KeyboardInterrupt  # the technician's Ctrl-C

    monkeypatch.setattr(techcli, "_sleep", sleep)
    code = techcli.run(parse(*argv), ControlClient(path, timeout_s=3), out=out, err=out)
    return code, sleeps


def test_watch_refreshes_until_ctrl_c(
    daemon: tuple[FakeDaemon, Path], monkeypatch: pytest.MonkeyPatch, english: None
) -> None:
    fake, path = daemon
    out = io.StringIO()
    code, sleeps = watch(path, monkeypatch, out, "status", "--watch", "5", refreshes=3)
    assert code == 0
    assert sleeps == [5.0, 5.0, 5.0]
    assert [c[0] for c in fake.calls] == ["status"] * 3
    assert out.getvalue().count("Bench tgx-alun-alun-01") == 3
    assert "\x1b" not in out.getvalue()  # no escape codes into a pipe or a log


def test_watch_clears_the_screen_on_a_terminal(
    daemon: tuple[FakeDaemon, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, path = daemon
    out = Tty()
    code, sleeps = watch(path, monkeypatch, out, "status", "--watch")
    assert code == 0
    assert sleeps == [techcli.DEFAULT_WATCH_S] * 2
    assert out.getvalue().count("\x1b[H\x1b[2J") == 2


def test_watch_keeps_going_while_the_daemon_is_away(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, english: None
) -> None:
    out = io.StringIO()
    code, _ = watch(tmp_path / "none.sock", monkeypatch, out, "status", "--watch", "1")
    assert code == 0
    assert out.getvalue().count("the daemon is not running") == 2


@pytest.mark.parametrize("interval", ["0", "0.1", "-1", "nan", "inf", "soon"])
def test_watch_interval_must_be_sane(tmp_path: Path, interval: str) -> None:
    code, out, err = cli(tmp_path / "none.sock", "status", "--watch", interval)
    assert code == 2
    assert out == ""
    assert len(err.splitlines()) == 1


# --------------------------------------------------------------------------- overrides


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90s", 90),
        ("30m", 1800),
        ("2h", 7200),
        ("1h30m", 5400),
        ("1h0m", 3600),
        ("1d", 86400),
        ("2d12h", 216_000),
        ("1h1m1s", 3661),
        ("0030m", 1800),
        ("30d", 30 * 86400),
    ],
)
def test_durations(text: str, seconds: int) -> None:
    assert techcli.parse_duration(text) == seconds


@pytest.mark.parametrize(
    "text",
    [
        "",
        "30",
        "m",
        "1.5h",
        "1H",
        "30 m",
        "1h 30m",
        " 30m",
        "30m ",
        "1h1h",
        "30m1h",
        "-5m",
        "+5m",
        "0m",
        "0s",
        "0h0m0s",
        "31d",
        "721h",
        "1x",
        "٣m",  # an Arabic-Indic digit: \d would take it, we must not
        "1e3s",
        "1h30",
    ],
)
def test_bad_durations(text: str) -> None:
    with pytest.raises(techcli.UsageError):
        techcli.parse_duration(text)


@pytest.mark.parametrize(
    ("argv", "params"),
    [
        (
            ["usb", "1", "off", "--for", "30m"],
            {"output": "usb1", "state": "off", "duration_s": 1800},
        ),
        (["usb", "usb2", "on"], {"output": "usb2", "state": "on"}),
        (["usb", "USB2", "on"], {"output": "usb2", "state": "on"}),
        (["usb", "1", "auto"], {"output": "usb1", "state": "auto"}),
        (["wifi", "on", "--for", "2h"], {"output": "wifi", "state": "on", "duration_s": 7200}),
        (["wifi", "off"], {"output": "wifi", "state": "off"}),
    ],
)
def test_override_sends_what_was_asked(
    daemon: tuple[FakeDaemon, Path], argv: list[str], params: dict[str, Any]
) -> None:
    fake, path = daemon
    code, out, err = cli(path, *argv)
    assert (code, err) == (0, "")
    assert fake.calls == [("override.set", params)]
    assert len(out.splitlines()) == 1


def test_override_messages_in_english(daemon: tuple[FakeDaemon, Path], english: None) -> None:
    _, path = daemon
    assert cli(path, "usb", "1", "off", "--for", "30m")[1] == "USB port 1: off for 30m\n"
    assert cli(path, "usb", "2", "on")[1] == "USB port 2: on until changed\n"
    assert cli(path, "wifi", "auto")[1] == "Wi-Fi: back to automatic\n"
    assert cli(path, "wifi", "on", "--for", "1h30m")[1] == "Wi-Fi: on for 1h 30m\n"


def test_override_messages_in_indonesian(daemon: tuple[FakeDaemon, Path], indonesian: None) -> None:
    _, path = daemon
    assert cli(path, "usb", "1", "off", "--for", "30m")[1] == "Port USB 1: mati selama 30 mnt\n"
    assert cli(path, "wifi", "auto")[1] == "Wi-Fi: kembali otomatis\n"


def test_a_refused_override_prints_why_and_exits_1(
    daemon: tuple[FakeDaemon, Path], language: str
) -> None:
    fake, path = daemon
    fake.override = {"accepted": False, "reason": "battery_low: battery 18.0% < 20.0%"}
    code, out, _err = cli(path, "wifi", "on")
    assert code == 1
    expected = {
        "en": "Wi-Fi: refused: battery low: battery 18.0% < 20.0%\n",
        "id": "Wi-Fi: ditolak: baterai lemah: battery 18.0% < 20.0%\n",
    }
    assert out == expected[language]


def test_an_accepted_override_that_a_safety_layer_beats_says_so(
    daemon: tuple[FakeDaemon, Path], english: None
) -> None:
    fake, path = daemon
    fake.override = {"accepted": True, "reason": "over_temperature: enclosure 71 °C"}
    code, out, _err = cli(path, "usb", "1", "on")
    assert code == 0
    assert out.splitlines()[1] == "note: too hot: enclosure 71 °C"


@pytest.mark.parametrize(
    "argv",
    [
        ["usb", "1", "auto", "--for", "1h"],
        ["usb", "x", "on"],
        ["usb", "0", "on"],
        ["usb", "usb", "on"],
        ["usb", "1", "on", "--for", "30"],
        ["wifi", "off", "--for", "forever"],
        ["wifi", "off", "--for", "0m"],
    ],
)
def test_bad_arguments_are_one_line_and_exit_2_without_calling(
    daemon: tuple[FakeDaemon, Path], argv: list[str], english: None
) -> None:
    fake, path = daemon
    code, out, err = cli(path, *argv)
    assert code == 2
    assert out == ""
    assert len(err.splitlines()) == 1
    assert err.startswith("bench-agent: ")
    assert fake.calls == []


def test_argparse_rejects_a_bad_state() -> None:
    with pytest.raises(SystemExit) as caught:
        parse("usb", "1", "maybe")
    assert caught.value.code == 2


# --------------------------------------------------------------------------- faults


def test_fault_reset(daemon: tuple[FakeDaemon, Path], english: None) -> None:
    fake, path = daemon
    assert cli(path, "fault", "reset") == (0, "Reset: usb2\n", "")
    assert cli(path, "fault", "reset", "usb2")[1] == "Reset: usb2\n"
    assert fake.calls == [("fault.reset", {}), ("fault.reset", {"name": "usb2"})]
    fake.reset = []
    assert cli(path, "fault", "reset") == (0, "No latched faults to reset.\n", "")
    assert cli(path, "fault", "reset", "usb1")[1] == "usb1: no latched fault to reset.\n"


def test_fault_reset_in_indonesian(daemon: tuple[FakeDaemon, Path], indonesian: None) -> None:
    fake, path = daemon
    assert cli(path, "fault", "reset")[1] == "Di-reset: usb2\n"
    fake.reset = []
    assert cli(path, "fault", "reset")[1] == "Tidak ada gangguan terkunci yang perlu di-reset.\n"


def test_an_error_answer_is_one_line_and_exit_1(
    daemon: tuple[FakeDaemon, Path], english: None
) -> None:
    fake, path = daemon
    fake.error = ControlError("bad_params", "no fault named usb9")
    code, out, err = cli(path, "fault", "reset", "usb9")
    assert (code, out) == (1, "")
    assert err == "bench-agent: the daemon refused: no fault named usb9 (bad_params)\n"


def test_a_daemon_bug_is_one_line_and_exit_1(tmp_path: Path, english: None) -> None:
    def broken(method: str, params: Mapping[str, Any], _peer: object = None) -> Any:
        raise RuntimeError("bug")

    with ControlServer(tmp_path / "c.sock", broken) as srv:
        code, out, err = cli(srv.path, "status")
    assert (code, out) == (1, "")
    assert err.splitlines() == [
        "bench-agent: the daemon refused: status failed in the daemon (internal)"
    ]


# --------------------------------------------------------------------------- self-test


def test_selftest_all_pass(daemon: tuple[FakeDaemon, Path], english: None) -> None:
    fake, path = daemon
    code, out, _err = cli(path, "selftest")
    assert code == 0
    assert fake.calls == [("selftest", {})]
    assert out.splitlines() == [
        "PASS  i2c.solar: INA219 at 0x40 answers",
        "PASS  broker: connected",
        "All 2 checks passed.",
    ]


def test_selftest_failure_says_what_to_do_and_exits_1(
    daemon: tuple[FakeDaemon, Path], language: str
) -> None:
    fake, path = daemon
    fake.checks = [*CHECKS_OK, CHECK_FAILED]
    code, out, _err = cli(path, "selftest")
    assert code == 1
    lines = out.splitlines()
    assert len(lines) == 4
    fail, passed = ("FAIL", "PASS") if language == "en" else ("GAGAL", "LULUS")
    assert lines[0].startswith(passed)
    assert lines[2].startswith(fail)
    assert "charger: no VE.Direct frame for 30 s → check the cable on /dev/ttyUSB0" in lines[2]
    assert lines[3] == (
        "1 of 3 checks failed." if language == "en" else "1 dari 3 pemeriksaan gagal."
    )


def test_selftest_with_no_checks_is_a_failure(
    daemon: tuple[FakeDaemon, Path], english: None
) -> None:
    fake, path = daemon
    fake.checks = []
    assert cli(path, "selftest") == (1, "The daemon ran no checks.\n", "")


# --------------------------------------------------------------------------- events


def test_events(daemon: tuple[FakeDaemon, Path], english: None) -> None:
    fake, path = daemon
    code, out, _err = cli(path, "events", "--since", "2h")
    assert code == 0
    assert fake.calls == [("events", {"since_s": 7200, "limit": techcli.DEFAULT_EVENTS_LIMIT})]
    lines = out.splitlines()
    assert all(len(line) <= render.WIDTH for line in lines)
    starts = [i for i, line in enumerate(lines) if not line.startswith(" ")]
    assert len(starts) == 2  # one event each; a long one continues indented
    first = " ".join(line.strip() for line in lines[: starts[1]])
    assert "#1041  fault  fault=sensor.usb2" in first
    assert 'detail="i2c_error: [Errno 121] Remote I/O error"' in first
    assert lines[starts[1]].startswith("~")  # the clock was not synced
    assert "#1042  tamper switch  open=true" in lines[starts[1]]


def test_events_in_indonesian(daemon: tuple[FakeDaemon, Path], indonesian: None) -> None:
    fake, path = daemon
    code, out, _err = cli(path, "events", "-n", "5")
    assert code == 0
    assert fake.calls == [("events", {"limit": 5})]
    assert "#1041  gangguan" in out
    assert "#1042  sakelar kotak" in out
    fake.events = []
    assert cli(path, "events")[1] == "Tidak ada kejadian.\n"


def test_events_json_is_one_event_per_line(daemon: tuple[FakeDaemon, Path]) -> None:
    _, path = daemon
    code, out, _err = cli(path, "events", "--json")
    assert code == 0
    assert [json.loads(line) for line in out.splitlines()] == EVENTS


@pytest.mark.parametrize("argv", [["events", "--since", "2 hours"], ["events", "-n", "0"]])
def test_events_bad_arguments(daemon: tuple[FakeDaemon, Path], argv: list[str]) -> None:
    fake, path = daemon
    code, out, err = cli(path, *argv)
    assert (code, out, len(err.splitlines())) == (2, "", 1)
    assert fake.calls == []


# --------------------------------------------------------------------------- no daemon


def test_no_daemon_is_one_translated_line_and_exit_69(tmp_path: Path, language: str) -> None:
    path = tmp_path / "none.sock"
    for argv in (["status"], ["usb", "1", "on"], ["selftest"], ["events"], ["fault", "reset"]):
        code, out, err = cli(path, *argv)
        assert (code, out) == (techcli.EXIT_UNAVAILABLE, "")
        assert len(err.splitlines()) == 1
        assert str(path) in err
        expected = "daemon is not running" if language == "en" else "daemon tidak berjalan"
        assert expected in err


def test_a_daemon_that_does_not_answer_exits_69(tmp_path: Path, english: None) -> None:
    path = tmp_path / "mute.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as mute:
        mute.bind(str(path))
        mute.listen(1)
        out, err = io.StringIO(), io.StringIO()
        code = techcli.run(parse("status"), ControlClient(path, timeout_s=0.3), out=out, err=err)
    assert code == techcli.EXIT_UNAVAILABLE
    assert "does not answer" in err.getvalue()
    assert len(err.getvalue().splitlines()) == 1


def test_permission_denied_is_one_translated_line_and_exit_77(world_readable_dir: Path) -> None:
    path = world_readable_dir / "c.sock"
    with ControlServer(path, FakeDaemon(), mode=0o600):
        english = as_nobody(["-m", "bench_agent.local.techcli", "--socket", str(path), "status"])
        bahasa = as_nobody(
            ["-m", "bench_agent.local.techcli", "--socket", str(path), "status"],
            LANG="id_ID.UTF-8",
        )
    assert english.returncode == techcli.EXIT_NOPERM, english.stderr
    assert english.stdout == ""
    assert english.stderr.splitlines() == [
        f"bench-agent: permission denied on {path}. "
        "Use sudo, or ask to be added to the group 'root'."
    ]
    assert bahasa.returncode == techcli.EXIT_NOPERM
    assert "akses ke" in bahasa.stderr and "ditolak" in bahasa.stderr
    assert "Traceback" not in english.stderr + bahasa.stderr


@pytest.fixture
def world_readable_dir() -> Iterator[Path]:
    with world_readable_tempdir() as directory:
        yield directory


# --------------------------------------------------------------------------- wiring


def test_dispatch_only_takes_its_own_commands(daemon: tuple[FakeDaemon, Path]) -> None:
    _, path = daemon
    assert techcli.dispatch(parse("run"), path) is None
    assert techcli.dispatch(argparse.Namespace(command="config"), path) is None
    assert techcli.dispatch(parse("fault", "reset"), path) == 0


def test_help_of_every_command_renders(language: str, capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["--help"], *([c, "--help"] for c in techcli._COMMANDS), ["fault", "reset", "-h"]):
        with pytest.raises(SystemExit) as caught:
            parse(*argv)
        assert caught.value.code == 0
        help_text = capsys.readouterr().out
        assert help_text.startswith("usage: bench-agent")
        if argv[0] in ("--help", "events"):
            assert ("recent history" if language == "en" else "riwayat terbaru") in help_text
