"""The cross-check in the README ("Planning a bench"): the planner (the real controller
on the simulated battery) against PVGIS's off-grid hourly energy balance
(bench_agent/ops/planner/pvgis.py), on the same sky, bench and one-load case, for a
year and a few seeds. Usage: python bench/pvgis_crosscheck.py [panel_w battery_ah]"""

from __future__ import annotations

import json
import sys
from datetime import date
from pathlib import Path

from bench_agent.config_loader import load_config
from bench_agent.ops.planner.climate import DEFAULT_CLIMATE, load_climate
from bench_agent.ops.planner.model import DEFAULT_USAGE, load_usage, plan_bench
from bench_agent.ops.planner.pvgis import cross_check
from bench_agent.ops.planner.sweep import Cell, resized
from bench_agent.ops.planner.workers import map_jobs
from bench_agent.power.chemistry import CHEMISTRIES

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    panel, battery = (float(a) for a in sys.argv[1:3]) if len(sys.argv) > 2 else (40.0, 25.0)
    bench = plan_bench(load_config(ROOT / "config" / "bench-agent.toml"), load_usage(DEFAULT_USAGE))
    bench = resized(bench, Cell(panel, battery), CHEMISTRIES[bench.chemistry].resistance_ohm_ah)
    climate = load_climate(DEFAULT_CLIMATE)
    seeds = (1, 2, 3)
    results = map_jobs(
        lambda s: cross_check(bench, climate, s, date(2027, 1, 1), date(2028, 1, 1)), seeds
    )
    print(f"{panel:g} Wp, {battery:g} Ah; the hotspot all day, no tiers; a year")
    for seed, result in zip(seeds, results, strict=True):
        print(f"seed {seed}: {json.dumps(result)}")


if __name__ == "__main__":
    main()
