"""The sizing sweep: every panel × battery cell run over the same period and seeds
(the same weather: weather.py seeds by date), dark evenings per year of one load
class, and the cheapest cell that meets a target.

Cells run in worker processes (workers.py: independent, CPU-bound runs, one per
core), their results gathered in cell order, so the answer does not depend on which
process finished first."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, replace
from datetime import date

from bench_agent.json_value import Json, JsonObject
from bench_agent.ops.planner.climate import Climate
from bench_agent.ops.planner.model import Bench
from bench_agent.ops.planner.run import simulate
from bench_agent.ops.planner.workers import map_jobs


@dataclass(frozen=True, slots=True)
class Cell:
    panel_w: float
    battery_ah: float


def _run_cell(
    args: tuple[Bench, Climate, tuple[int, ...], date, date, tuple[int, int], str],
) -> tuple[float, float]:
    bench, climate, seeds, start, end, evening, load = args
    dark, lost = [], []
    for seed in seeds:
        records = simulate(bench, climate, seed, start, end, evening=evening)
        dark.append(sum(load in r.dark_from_min for r in records))
        lost.append(sum(r.lost_min.get(load, 0) for r in records) / 60.0)
    return statistics.fmean(dark), statistics.fmean(lost)


def resized(bench: Bench, cell: Cell, chemistry_resistance_ohm_ah: float) -> Bench:
    """The bench with another panel and battery (the battery's own typical resistance)."""
    resistance = chemistry_resistance_ohm_ah / cell.battery_ah
    policy = replace(
        bench.policy, battery=replace(bench.policy.battery, internal_resistance_ohm=resistance)
    )
    return replace(
        bench,
        policy=policy,
        panel_watts_peak=cell.panel_w,
        capacity_ah=cell.battery_ah,
        resistance_ohm=resistance,
    )


def sweep(
    bench: Bench,
    climate: Climate,
    seeds: tuple[int, ...],
    start: date,
    end: date,
    *,
    panels: tuple[float, ...],
    batteries: tuple[float, ...],
    load: str,
    evening: tuple[int, int],
    target: float | None,
    resistance_ohm_ah: float,
) -> JsonObject:
    cells = [Cell(p, b) for b in batteries for p in panels]
    jobs = [
        (resized(bench, c, resistance_ohm_ah), climate, seeds, start, end, evening, load)
        for c in cells
    ]
    results = map_jobs(_run_cell, jobs)
    usage = bench.usage
    grid: list[JsonObject] = []
    costs = [c.panel_w * usage.panel_per_watt + c.battery_ah * usage.battery_per_ah for c in cells]
    for cell, (dark, lost), cost in zip(cells, results, costs, strict=True):
        grid.append({
            "panel_w": cell.panel_w, "battery_ah": cell.battery_ah,
            "dark_evenings": round(dark, 2), "hours_lost": round(lost, 1), "cost": round(cost),
        })  # fmt: skip
    cheapest = None
    if target is not None:
        meeting = [
            (cost, cell, g)
            for cell, (dark, _), g, cost in zip(cells, results, grid, costs, strict=True)
            if round(dark, 2) <= target
        ]
        if meeting:
            cheapest = min(meeting, key=lambda m: (m[0], m[1].panel_w, m[1].battery_ah))[2]
    return {
        "load": load,
        "panels_w": list(panels),
        "batteries_ah": list(batteries),
        "seeds": list(seeds),
        "target_dark_evenings": target,
        "currency": usage.currency,
        "cells": list[Json](grid),
        "cheapest": cheapest,
    }
