"""`bench-ops plan`: the planner's command line.

    bench-ops plan -c BENCH.toml [--usage FILE] [--climate FILE]
                   [--panel-w W] [--battery-ah AH] [--usb-ports N] [--wifi-hours HH:MM-HH:MM]
                   [--months 11-3] [--year 2027] [--seed N] [--seeds K] [--evening 18:00-22:00]
                   [--sweep [--panels 50,100,...] [--batteries 25,50,...]
                    [--target-dark-evenings 3] [--target-load wifi]]
                   [--history ARCHIVE|FILE.jsonl[.gz] ... [--bench ID] [--calibrate]]
                   [--out report.html] [--json]

`--history` checks the model against what a real bench reported (calibrate.py), and
with `--calibrate` scales the climate's clearness and the usage's demand to match it.

Bad inputs (the bench's TOML, the usage or climate file, a what-if flag) are one
line on stderr and exit 78, as `bench-agent config check`.
"""

from __future__ import annotations

import argparse
import sys
from datetime import date
from pathlib import Path
from zoneinfo import ZoneInfo

from bench_agent.config import BENCH_ID_PATTERN, Config
from bench_agent.config_loader import load_config
from bench_agent.errors import EXIT_CONFIG, ConfigError
from bench_agent.json_value import JsonObject
from bench_agent.ops.planner.calibrate import (
    calibrate,
    compare,
    describe,
    model_days,
    scaled_bench,
    scaled_climate,
)
from bench_agent.ops.planner.climate import DEFAULT_CLIMATE, Climate, load_climate
from bench_agent.ops.planner.history import FULL_DAY, read_history
from bench_agent.ops.planner.model import (
    CLI,
    DEFAULT_USAGE,
    Bench,
    Usage,
    load_usage,
    plan_bench,
)
from bench_agent.ops.planner.report import summary_lines, to_html, to_json
from bench_agent.ops.planner.run import DayRecord, simulate
from bench_agent.ops.planner.summary import spread, summarize_run
from bench_agent.ops.planner.sweep import sweep
from bench_agent.ops.planner.workers import map_jobs
from bench_agent.power.chemistry import CHEMISTRIES


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = commands.add_parser("plan", help="what-if planner: a year of weather through the policy")
    p.add_argument("-c", "--config", type=Path, required=True, help="the bench's agent TOML")
    p.add_argument("--usage", type=Path, default=DEFAULT_USAGE, help="usage profile TOML")
    p.add_argument("--climate", type=Path, default=DEFAULT_CLIMATE, help="climate TOML or JSON")
    p.add_argument("--panel-w", type=float, help="panel, Wp (default: the usage profile's)")
    p.add_argument("--battery-ah", type=float, help="battery, Ah (default: the bench's)")
    p.add_argument("--usb-ports", type=int, help="number of USB ports (default: the bench's)")
    p.add_argument("--wifi-hours", help='hotspot hours, e.g. "06:00-24:00"')
    p.add_argument("--months", default="1-12", help="period, e.g. 11-3 for Nov..Mar")
    p.add_argument("--year", type=int, default=2027, help="calendar year the period starts in")
    p.add_argument("--seed", type=int, default=1, help="first weather seed")
    p.add_argument("--seeds", type=int, default=3, help="how many seeds (a spread)")
    p.add_argument("--evening", default="18:00-22:00", help="what counts as the evening")
    p.add_argument("--sweep", action="store_true", help="panel × battery sizing sweep")
    p.add_argument("--panels", default="50,100,150,200", help="sweep: panel sizes, Wp")
    p.add_argument("--batteries", default="25,50,75,100", help="sweep: battery sizes, Ah")
    p.add_argument("--target-dark-evenings", type=float, help="sweep: the most acceptable")
    p.add_argument("--target-load", default="wifi", help="sweep: the load class counted")
    p.add_argument("--sweep-seeds", type=int, default=1, help="sweep: seeds per cell")
    p.add_argument(
        "--history", nargs="+", action="extend", metavar="ARCHIVE|FILE",
        help="a bench's history: the archive (SQLite file or postgresql://…) or v1 messages",
    )  # fmt: skip
    p.add_argument("--bench", help="the bench in --history (default: the config's bench id)")
    p.add_argument("--calibrate", action="store_true", help="scale the model to --history")
    p.add_argument("--out", type=Path, help="write the HTML report here")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(run=_plan)


def _period(text: str, year: int) -> tuple[date, date]:
    first, sep, last = text.partition("-")
    try:
        a = int(first)
        b = int(last) if sep else a
        if not (1 <= a <= 12 and 1 <= b <= 12):
            raise ValueError(text)
    except ValueError:
        raise ConfigError(CLI, "--months", f"{text!r}: months 1-12, e.g. 11-3") from None
    end_year = year + (1 if b < a else 0)
    end = date(end_year + (b == 12), 1 if b == 12 else b + 1, 1)
    return date(year, a, 1), end


def _minutes(text: str, flag: str) -> tuple[int, int]:
    try:
        start, end = (part.strip() for part in text.split("-"))
        out = []
        for part in (start, end):
            h, m = part.split(":")
            out.append(int(h) * 60 + int(m))
        if not 0 <= out[0] < out[1] <= 1440:
            raise ValueError(text)
    except ValueError:
        raise ConfigError(CLI, flag, f"{text!r}: HH:MM-HH:MM within one day") from None
    return out[0], out[1]


def _sizes(text: str, flag: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(","))
        if not values or any(not 1 <= v <= 10_000 for v in values):
            raise ValueError(text)
    except ValueError:
        raise ConfigError(CLI, flag, f"{text!r}: comma-separated sizes, 1-10000") from None
    return tuple(sorted(set(values)))


def _one_seed(args: tuple[Bench, Climate, int, date, date, tuple[int, int]]) -> list[DayRecord]:
    bench, climate, seed, start, end, evening = args
    return simulate(bench, climate, seed, start, end, evening=evening)


def build_report(opts: argparse.Namespace) -> JsonObject:
    """Everything the report says, from the parsed options. Raises ConfigError."""
    cfg = load_config(opts.config)
    usage = load_usage(opts.usage)
    climate = load_climate(opts.climate)
    history: JsonObject | None = None
    if opts.history:
        usage, climate, history = _check_history(opts, cfg, usage, climate)
    elif opts.calibrate or opts.bench:
        raise ConfigError(CLI, "--calibrate" if opts.calibrate else "--bench", "needs --history")
    bench = plan_bench(
        cfg, usage, panel_w=opts.panel_w, battery_ah=opts.battery_ah,
        usb_ports=opts.usb_ports, wifi_hours=opts.wifi_hours,
    )  # fmt: skip
    start, end = _period(opts.months, opts.year)
    evening = _minutes(opts.evening, "--evening")
    if not 1 <= opts.seeds <= 100:
        raise ConfigError(CLI, "--seeds", f"must be 1-100, got {opts.seeds}")
    seeds = tuple(range(opts.seed, opts.seed + opts.seeds))
    jobs = [(bench, climate, s, start, end, evening) for s in seeds]
    runs = map_jobs(_one_seed, jobs)
    loads = bench.policy.battery.loads
    classes = [load.name for load in loads]
    wifi = bench.policy.schedules.get("wifi")
    report: JsonObject = {
        "inputs": {
            "bench": cfg.bench.id, "panel_w": bench.panel_watts_peak,
            "battery_ah": bench.capacity_ah, "chemistry": bench.chemistry,
            "usb_ports": len(bench.ports),
            "wifi_hours": wifi.describe() if wifi is not None else "always",
            "climate": climate.name, "climate_source": climate.source,
            "period": f"{start.isoformat()} to {end.isoformat()}", "evening": opts.evening,
        },
        "load_classes": classes,
        "labels": {load.name: load.title for load in loads},
        "levels": {load.name: load.off_below_pct for load in loads},
        "seeds": list(seeds),
        "runs": [summarize_run(run, classes) for run in runs],
        "spread": spread(runs, classes),
    }  # fmt: skip
    if history is not None:
        report["history"] = history
    if opts.sweep:
        if opts.target_load not in classes:
            raise ConfigError(CLI, "--target-load", f"one of {', '.join(classes)}")
        if not 1 <= opts.sweep_seeds <= 20:
            raise ConfigError(CLI, "--sweep-seeds", f"must be 1-20, got {opts.sweep_seeds}")
        report["sweep"] = sweep(
            bench, climate, tuple(range(opts.seed, opts.seed + opts.sweep_seeds)), start, end,
            panels=_sizes(opts.panels, "--panels"),
            batteries=_sizes(opts.batteries, "--batteries"),
            load=opts.target_load, evening=evening, target=opts.target_dark_evenings,
            resistance_ohm_ah=CHEMISTRIES[bench.chemistry].resistance_ohm_ah,
        )  # fmt: skip
    return report


def _check_history(
    opts: argparse.Namespace, cfg: Config, usage: Usage, climate: Climate
) -> tuple[Usage, Climate, JsonObject]:
    """The model against the bench's history, on the bench as configured (no what-if:
    the panel is the usage profile's, the fitted one); calibrated when asked: the usage
    and climate the plan then runs with."""
    bench_id = opts.bench or cfg.bench.id
    if not BENCH_ID_PATTERN.fullmatch(bench_id):
        raise ConfigError(CLI, "--bench", f"{bench_id!r} is not a bench id")
    fitted = plan_bench(cfg, usage)
    history = read_history(opts.history, bench_id, fitted.ports, ZoneInfo(cfg.bench.timezone))
    seeds = tuple(range(opts.seed, opts.seed + opts.seeds))
    out: JsonObject = {
        "bench": history.bench, "config_bench": cfg.bench.id, "source": history.source,
        "full_day_pct": round(FULL_DAY * 100), "days_with_records": history.days_with_records,
        "days_used": len(history.days), "seeds": list(seeds), "calibrated": None,
    }  # fmt: skip
    if not opts.calibrate:
        out["check"] = compare(history, model_days(fitted, climate, history, seeds))
        return usage, climate, out
    factors, before, after, runs = calibrate(fitted, climate, history, seeds)
    out["check"] = before
    out["calibrated"] = {"runs": runs, **describe(factors, climate, fitted, history),
                         "check": after}  # fmt: skip
    scaled = scaled_bench(fitted, factors.demand).usage
    return scaled, scaled_climate(climate, factors.clearness), out


def _plan(opts: argparse.Namespace) -> int:
    try:
        report = build_report(opts)
    except ConfigError as exc:
        print(f"bench-ops plan: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if opts.out is not None:
        opts.out.write_text(to_html(report), encoding="utf-8")
    if opts.json:
        sys.stdout.write(to_json(report))
    else:
        for line in summary_lines(report):
            print(line)
    return 0
