"""Configuration: the shipped configs load; every broken one is ONE line naming the key, exit 78."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from bench_agent.cli import main
from bench_agent.config_loader import load_config
from bench_agent.errors import EXIT_CONFIG, ConfigError
from tests.support import MINIMAL_CONFIG, dump_toml

REPO = Path(__file__).resolve().parent.parent
REFERENCE = REPO / "config" / "bench-agent.toml"
SIM = REPO / "config" / "sim-bench.toml"


def test_reference_config_describes_the_reference_bench() -> None:
    cfg = load_config(REFERENCE)
    assert cfg.hardware.backend == "pi"
    assert {s.name: s.address for s in cfg.sensors} == {
        "solar": 0x40,
        "battery": 0x41,
        "usb1": 0x44,
        "usb2": 0x45,
    }
    assert [o.name for o in cfg.outputs] == ["usb1", "usb2", "wifi"]
    assert cfg.mqtt.tls and cfg.mqtt.port == 8883 and cfg.mqtt.topic_prefix == "smartbench"
    assert cfg.topic("telemetry") == "smartbench/tgk-alun-alun-01/telemetry"


def test_sim_config_loads() -> None:
    cfg = load_config(SIM)
    assert cfg.hardware.backend == "sim" and cfg.sim is not None and cfg.sim.speed > 1
    assert cfg.charger is not None


@pytest.mark.parametrize(
    ("change", "key", "problem"),
    [
        ('[bench]\nid = "B_1"', "bench.id", "must match"),
        ('[bench]\nid = "b1"\ncolour = "red"', "bench.colour", "unknown key"),
        ('[bench]\nid = "b1"\ntimezone = "Mars/Olympus"', "bench.timezone", "unknown time zone"),
        ('[hardware]\nbackend = "arduino"', "hardware.backend", "must be one of"),
        ("[sampling]\nsample_interval_s = 0", "sampling.sample_interval_s", "at least"),
        ('[sampling]\nsample_interval_s = "1"', "sampling.sample_interval_s", "a number"),
        ("[sampling]\npublish_interval_s = true", "sampling.publish_interval_s", "boolean"),
        (
            "[sampling]\nsample_interval_s = 10\npublish_interval_s = 5",
            "publish_interval_s",
            "shorter",
        ),
        ('[mqtt]\nhost = "b"\nport = 70000', "mqtt.port", "at most"),
        ('[mqtt]\nhost = "b"\ncert_file = "c.pem"', "mqtt.key_file", "go together"),
        (
            '[mqtt]\nhost = "b"\nusername = "u"\npassword_file = "/nonexistent"',
            "mqtt.password_file",
            "cannot read",
        ),
        ('[mqtt]\nhost = "b"\nprotocol = "4"', "mqtt.protocol", "must be one of"),
        ("[mqtt]\nport = 1883", "mqtt.host", "missing"),
        (
            "[ina219.solar]\naddress = 0x70\nshunt_ohms = 0.1\nmax_amps = 2",
            "ina219.solar.address",
            "at most",
        ),
        ("[ina219.solar]\naddress = 0x40\nshunt_ohms = 0.1", "ina219.solar.max_amps", "missing"),
        ("[outputs.lamp]\npin = 4", "outputs.lamp", "usb<N>"),
        (
            '[outputs.usb1]\nbackend = "nmcli"\nnmcli_connection = "x"',
            "outputs.usb1.backend",
            "only",
        ),
        ("[outputs.usb1]\npin = 4\n[outputs.usb2]\npin = 4", "outputs", "share one pin"),
        ('[hardware]\nbackend = "sim"', "sim", "missing table"),
        ("[policy.battery]\nwifi_off_below_pct = 50\nwifi_on_above_pct = 40", "policy", "wifi"),
        (
            "[policy.battery]\nwifi_off_below_volts = 7.5",
            "policy.battery.wifi_off_below_volts",
            "at least 8",
        ),
        (
            "[policy.battery]\nrestore_above_volts = 16.5",
            "policy.battery.restore_above_volts",
            "at most 16",
        ),
        (
            '[policy.battery]\nusb_off_below_volts = "12"',
            "policy.battery.usb_off_below_volts",
            "a number",
        ),
        # the USB ports' level above the hotspot's (12.4 V for LiFePO4 by default)
        (
            "[ina219.battery]\naddress = 0x41\nshunt_ohms = 0.01\nmax_amps = 10\n"
            "[policy.battery]\nusb_off_below_volts = 12.5",
            "policy.battery.usb_off_below_volts",
            "must be below wifi_off_below_volts (12.4)",
        ),
        (
            "[ina219.battery]\naddress = 0x41\nshunt_ohms = 0.01\nmax_amps = 10\n"
            "[policy.battery]\nrestore_above_volts = 12.45",
            "policy.battery.restore_above_volts",
            "at least 0.1 V above",
        ),
        ("[policy.battery]\nvoltage_delay_s = -1", "policy.battery.voltage_delay_s", "at least"),
        ("[policy.battery]\nvoltage_delay_s = 7200", "policy.battery.voltage_delay_s", "at most"),
        ("[policy.battery]\nwifi_off_below_v = 12", "policy.battery.wifi_off_below_v", "unknown"),
        ("[battery]\nrest_current_c = 0.001", "battery.rest_current_c", "at least 0.01"),
        ("[battery]\nrest_current_c = 0.5", "battery.rest_current_c", "at most 0.2"),
        ("[battery]\ninternal_resistance_ohm = -0.1", "battery.internal_resistance_ohm", "least"),
        ("[battery]\ninternal_resistance_ohm = 2", "battery.internal_resistance_ohm", "at most 1"),
        (
            '[outputs.wifi]\npin = 4\n[policy.schedule]\nwifi = ["25:00-22:00"]',
            "policy.schedule.wifi",
            "bad time window",
        ),
        ("[commands]\nmax_age_s = 1", "commands.max_age_s", "at least"),
        ('[uplink]\noutput = "usb9"', "uplink.output", "no output 'usb9' in [outputs]"),
        (
            '[outputs.wifi]\nbackend = "nmcli"\nnmcli_connection = "Hotspot"\n[uplink]',
            "uplink.output",
            "needs a gpio output",
        ),
        ("[outputs.wifi]\npin = 22\n[uplink]\nenabled = 1", "uplink.enabled", "true or false"),
        ("[outputs.wifi]\npin = 22\n[uplink]\nenabeld = true", "uplink.enabeld", "unknown key"),
        (
            "[outputs.wifi]\npin = 22\n[uplink]\noffline_after_s = 5",
            "uplink.offline_after_s",
            "at least",
        ),
        ("[outputs.wifi]\npin = 22\n[uplink]\npower_off_s = 0", "uplink.power_off_s", "at least"),
        ("[outputs.wifi]\npin = 22\n[uplink]\npower_off_s = 7200", "uplink.power_off_s", "at most"),
        (
            "[outputs.wifi]\npin = 22\n[uplink]\nbackoff_initial_s = 7200\nbackoff_max_s = 3600",
            "uplink.backoff_max_s",
            "at least 7200",
        ),
        (
            "[outputs.wifi]\npin = 22\n[uplink]\nbackoff_initial_s = 10",
            "uplink.backoff_initial_s",
            "at least",
        ),
        (
            "[outputs.wifi]\npin = 22\n[uplink]\nmax_attempts_per_day = 0",
            "uplink.max_attempts_per_day",
            "at least",
        ),
        (
            "[outputs.wifi]\npin = 22\n[uplink]\nmax_attempts_per_day = 2.5",
            "uplink.max_attempts_per_day",
            "an integer",
        ),
        (
            "[outputs.wifi]\npin = 22\n[uplink]\nbackoff_reset_after_s = 0",
            "uplink.backoff_reset_after_s",
            "at least",
        ),
        ("[counters]\nsession_min_amps = 0", "counters.session_min_amps", "at least"),
        ("[counters]\nsession_min_amps = 50", "counters.session_min_amps", "at most"),
        ("[counters]\nsession_min_s = -1", "counters.session_min_s", "at least"),
        ('[counters]\nsession_min_s = "2m"', "counters.session_min_s", "a number"),
        ('[counters]\npanel_channel = "sun"', "counters.panel_channel", "no channel 'sun'"),
        ("[counters]\nsessions_min_s = 60", "counters.sessions_min_s", "unknown key"),
    ],
)
def test_broken_config_is_one_line_naming_the_key(
    tmp_path: Path, change: str, key: str, problem: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(_merge_tables(MINIMAL_CONFIG, change))
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(str(path)) and key in message and problem in message
    assert main(["-c", str(path), "config", "check"]) == EXIT_CONFIG
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and key in err


def _merge_tables(base: str, change: str) -> str:
    """Replace the tables named in `change` within `base` (a tiny TOML patcher)."""
    blocks: dict[str, str] = {}
    for text in (base, change):
        current = None
        for line in text.strip().splitlines():
            if line.startswith("["):
                current = line
                blocks[current] = "" if text is change else blocks.get(current, "")
            elif current is not None:
                blocks[current] += line + "\n"
    return "\n".join(f"{name}\n{body}" for name, body in blocks.items())


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (None, "no such file"),
        (b"[bench\nid=1", "invalid TOML"),
        (b"\xff\xfe", "not UTF-8"),
        (b"x = " + b"[" * 5000 + b"]" * 5000, "nested too deeply"),
        # Past Python's limit on integer digits tomllib raises a plain ValueError.
        (b"x = " + b"9" * 5000, "invalid TOML: .*digits"),
    ],
)
def test_unreadable_files(tmp_path: Path, content: bytes | None, problem: str) -> None:
    path = tmp_path / "c.toml"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ConfigError, match=problem):
        load_config(path)


def test_run_with_a_bad_config_exits_78_before_touching_hardware(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(MINIMAL_CONFIG.replace('id = "b1"', 'id = "-bad"'))
    result = subprocess.run(
        [sys.executable, "-m", "bench_agent", "-c", str(path), "run"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 78
    assert result.stderr.strip().count("\n") == 0 and "bench.id" in result.stderr
    assert not (tmp_path / "x").exists()


# The battery channel of MINIMAL_CONFIG + what a table needs, for the voltage rule tests.
WITH_BATTERY = "[ina219.battery]\naddress = 0x41\nshunt_ohms = 0.01\nmax_amps = 10"


@pytest.mark.parametrize(
    ("change", "volts", "resistance_ohm"),
    [
        # per chemistry (where the numbers come from: config_power.py, _VOLTAGE_NET)
        (WITH_BATTERY, (12.4, 12.2, 13.0), 1.0 / 50),
        (WITH_BATTERY + '\n[battery]\nchemistry = "agm"\ncapacity_ah = 100', (12.0, 11.9, 12.5),
         1.2 / 100),
        # set by hand, and a measured resistance
        (WITH_BATTERY + "\n[battery]\ninternal_resistance_ohm = 0.035\n[policy.battery]\n"
         "wifi_off_below_volts = 12.6\nusb_off_below_volts = 12.3\nrestore_above_volts = 13.1",
         (12.6, 12.3, 13.1), 0.035),
        # no sensor on the battery: nothing to watch, the rule is off (it would otherwise
        # hold every shed load off for ever, waiting for a voltage)
        ("", (None, None, None), 1.0 / 50),
        (WITH_BATTERY + '\n[battery]\nchannel = "batt"', (None, None, None), 1.0 / 50),
    ],
)  # fmt: skip
def test_the_voltage_safety_net_defaults_per_chemistry(
    tmp_path: Path,
    change: str,
    volts: tuple[float | None, float | None, float | None],
    resistance_ohm: float,
) -> None:
    path = tmp_path / "bench.toml"
    path.write_text(_merge_tables(MINIMAL_CONFIG, change) if change else MINIMAL_CONFIG)
    cfg = load_config(path)
    b = cfg.policy.battery
    assert (*(load.off_below_volts for load in b.loads), b.restore_above_volts) == volts
    assert b.voltage_rule is (volts[0] is not None)
    assert b.internal_resistance_ohm == pytest.approx(resistance_ohm)
    assert cfg.battery.resistance_ohm == pytest.approx(resistance_ohm)
    assert b.voltage_delay_s == 90.0
    assert cfg.battery.rest_current_c == 0.05


def test_shipped_configs_have_the_voltage_safety_net_on() -> None:
    for path in (REFERENCE, SIM):
        cfg = load_config(path)
        assert cfg.policy.battery.voltage_rule, path
        assert cfg.policy.battery.internal_resistance_ohm > 0, path


def _numeric_keys(data: dict[str, object], prefix: str = "") -> list[str]:
    keys = []
    for name, value in data.items():
        key = f"{prefix}.{name}" if prefix else name
        if isinstance(value, dict):
            keys += _numeric_keys(value, key)
        elif isinstance(value, int | float) and not isinstance(value, bool):
            keys.append(key)
    return keys


def _with_value(data: dict[str, object], key: str, value: float) -> dict[str, object]:
    copy = copy_tree(data)
    *tables, leaf = key.split(".")
    inner = copy
    for table in tables:
        inner = inner[table]  # type: ignore[assignment]
    inner[leaf] = value
    return copy


def copy_tree(data: dict[str, object]) -> dict[str, object]:
    return {k: copy_tree(v) if isinstance(v, dict) else v for k, v in data.items()}  # type: ignore[arg-type]


NUMERIC_KEYS = sorted(
    {
        (path, key)
        for path in (REFERENCE, SIM)
        for key in _numeric_keys(tomllib.loads(path.read_text()))
    }
)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")], ids=str)
@pytest.mark.parametrize(
    ("path", "key"), NUMERIC_KEYS, ids=[f"{p.name}:{k}" for p, k in NUMERIC_KEYS]
)
def test_every_number_is_finite(tmp_path: Path, path: Path, key: str, bad: float) -> None:
    # nan and inf are valid TOML, and nan passes every range comparison.
    data = _with_value(tomllib.loads(path.read_text()), key, bad)
    broken = tmp_path / path.name
    broken.write_text(dump_toml(data))
    (tmp_path / "scenarios").mkdir(exist_ok=True)  # the sim config's relative scenario path
    for scenario in (path.parent / "scenarios").glob("*.toml"):
        (tmp_path / "scenarios" / scenario.name).write_text(scenario.read_text())
    with pytest.raises(ConfigError) as raised:
        load_config(broken)
    assert raised.value.key == key, str(raised.value)


def config_check(path: Path) -> subprocess.CompletedProcess[str]:
    """`bench-agent config check -c PATH`, as a technician runs it."""
    return subprocess.run(
        [sys.executable, "-m", "bench_agent", "config", "check", "-c", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_nan_stops_config_check_with_exit_78(tmp_path: Path) -> None:
    path = tmp_path / "nan.toml"
    path.write_text(MINIMAL_CONFIG.replace("[sampling]", "[sampling]\nsample_interval_s = nan"))
    result = config_check(path)
    assert result.returncode == 78
    assert "sampling.sample_interval_s: must be a finite number, got nan" in result.stderr


def test_enclosure_limits_still_load_and_config_check_says_they_have_no_effect(
    tmp_path: Path,
) -> None:
    """No bench reads an enclosure temperature: the keys are kept (a config that sets
    them must still start the agent) and `config check` warns they do nothing."""
    path = tmp_path / "enclosure.toml"
    path.write_text(
        MINIMAL_CONFIG + "\n[policy.temperature]\nenclosure_shed_above_c = 60.0\n"
        if "[policy" not in MINIMAL_CONFIG
        else MINIMAL_CONFIG.replace(
            "[policy.temperature]", "[policy.temperature]\nenclosure_shed_above_c = 60.0"
        )
    )
    load_config(path)  # still loads
    result = config_check(path)
    assert result.returncode == 0, result.stderr
    assert "policy.temperature.enclosure_shed_above_c: has no effect" in result.stderr
    quiet = tmp_path / "quiet.toml"
    quiet.write_text(MINIMAL_CONFIG)
    assert "has no effect" not in config_check(quiet).stderr
