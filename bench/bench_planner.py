"""How long `bench-ops plan` takes for a year at one-minute steps, one seed, one core:
the figure in the README ("Planning a bench"). Usage: python bench/bench_planner.py"""

from __future__ import annotations

import platform
import time
from datetime import date
from pathlib import Path

from bench_agent.config_loader import load_config
from bench_agent.ops.planner.climate import DEFAULT_CLIMATE, load_climate
from bench_agent.ops.planner.model import DEFAULT_USAGE, load_usage, plan_bench
from bench_agent.ops.planner.run import simulate

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    bench = plan_bench(
        load_config(ROOT / "config" / "bench-agent.toml"),
        load_usage(DEFAULT_USAGE),
        wifi_hours="06:00-22:00",
    )
    climate = load_climate(DEFAULT_CLIMATE)
    started = time.perf_counter()
    cpu = time.process_time()
    records = simulate(bench, climate, 1, date(2027, 1, 1), date(2028, 1, 1))
    wall, used = time.perf_counter() - started, time.process_time() - cpu
    minutes = (len(records) + 7) * 1440
    print(f"{platform.machine()}, {platform.python_implementation()} {platform.python_version()}")
    print(f"a year (+7 days warm-up) at 1-minute steps: {wall:.1f} s wall, {used:.1f} s CPU")
    print(f"{used / minutes * 1e6:.1f} µs CPU per simulated minute ({minutes} minutes)")


if __name__ == "__main__":
    main()
