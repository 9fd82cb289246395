"""`load_config(path)`: the TOML file read once, every table parsed into the frozen
types of `config.py`; any problem is ONE line naming file, key and problem.

The readers of single tables are `config_tables.py` (the bench's own tables) and
`config_power.py` (battery, policy, uplink, counters); this module reads the file and
checks what spans tables."""

from __future__ import annotations

import tomllib
from pathlib import Path

from bench_agent.config import Config
from bench_agent.config_power import parse_battery, parse_counters, parse_policy, parse_uplink
from bench_agent.config_tables import (
    parse_bench,
    parse_charger,
    parse_commands,
    parse_control,
    parse_hardware,
    parse_ina219,
    parse_mqtt,
    parse_output,
    parse_sampling,
    parse_sim,
    parse_storage,
    parse_tamper,
)
from bench_agent.errors import ConfigError
from bench_agent.power.uplink import UplinkConfig
from bench_agent.toml_table import TomlTable
from bench_agent.vocabulary import WIFI


def load_config(path: str | Path) -> Config:
    """Read and validate `path`. Raises `ConfigError` (one line) on any problem."""
    path = Path(path)
    file = str(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(file, "<file>", "no such file") from None
    except PermissionError:
        raise ConfigError(file, "<file>", "permission denied") from None
    except UnicodeDecodeError:
        raise ConfigError(file, "<file>", "not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(file, "<file>", f"invalid TOML: {exc}") from None
    except RecursionError:  # tomllib recurses on nested arrays: [[[[…
        raise ConfigError(file, "<file>", "invalid TOML: nested too deeply") from None
    except ValueError as exc:  # an integer past Python's digit limit (not a TOMLDecodeError)
        raise ConfigError(file, "<file>", f"invalid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(file, "<file>", exc.strerror or str(exc)) from None
    return _parse(TomlTable(file, "", raw), path.resolve().parent, path)


def _parse(top: TomlTable, base: Path, source: Path) -> Config:
    bench = parse_bench(_need(top, "bench"))
    hardware = parse_hardware(_need(top, "hardware"))
    sensors = tuple(parse_ina219(name, t) for name, t in top.subtables("ina219"))
    addresses = [s.address for s in sensors]
    if len(set(addresses)) != len(addresses):
        raise top.error("ina219", "two channels share one I2C address")
    outputs = tuple(parse_output(name, t) for name, t in top.subtables("outputs"))
    pins = [o.pin for o in outputs if o.pin is not None]
    tamper_table = top.table("tamper")
    tamper = parse_tamper(tamper_table) if tamper_table else None
    if tamper is not None:
        pins.append(tamper.pin)
    if len(set(pins)) != len(pins):
        raise top.error("outputs", "two GPIO devices share one pin")
    sampling = parse_sampling(_need(top, "sampling"))
    mqtt = parse_mqtt(_need(top, "mqtt"), bench, base)
    storage = parse_storage(_need(top, "storage"), base)
    control = parse_control(_need(top, "control"), base)
    charger_table = top.table("charger")
    charger = parse_charger(charger_table, base) if charger_table else None
    sim_table = top.table("sim")
    sim = parse_sim(sim_table, base, bench) if sim_table else None
    if hardware.backend == "sim" and sim is None:
        raise top.error("sim", 'missing table (required when hardware.backend = "sim")')
    battery = parse_battery(top.table("battery") or TomlTable(top.file, "battery", {}))
    commands = parse_commands(top.table("commands") or TomlTable(top.file, "commands", {}), base)
    policy = parse_policy(
        top.table("policy") or TomlTable(top.file, "policy", {}),
        ports=[o.name for o in outputs if o.name != WIFI],
        outputs=[o.name for o in outputs],
        battery=battery,
        battery_measured=battery.channel in {s.name for s in sensors},
    )
    uplink_table = top.table("uplink")
    uplink = parse_uplink(uplink_table, outputs) if uplink_table else UplinkConfig()
    counters = parse_counters(
        top.table("counters") or TomlTable(top.file, "counters", {}), sensors, outputs
    )
    top.done()
    return Config(
        source=source,
        bench=bench,
        hardware=hardware,
        sensors=sensors,
        outputs=outputs,
        tamper=tamper,
        sampling=sampling,
        mqtt=mqtt,
        storage=storage,
        control=control,
        charger=charger,
        sim=sim,
        battery=battery,
        policy=policy,
        commands=commands,
        uplink=uplink,
        counters=counters,
    )


def _need(top: TomlTable, name: str) -> TomlTable:
    table = top.table(name, required=True)
    assert table is not None
    return table
