"""`bench-ops report`'s charts: matplotlib figures of report_data's figures, embedded by
html_page.chart (inline SVG). Long series are drawn per hour or per day, so a chart stays
small whatever the period. Colours are fixed per meaning (harvest, each load, each
reason), the same on every chart and every bench, and readable in greyscale print
(harvest dark, loads light, hatched reasons are not needed: bars are labelled)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, timedelta

from matplotlib.axes import Axes
from matplotlib.dates import AutoDateLocator, ConciseDateFormatter

from bench_agent.ops import html_page
from bench_agent.ops.report_data import BenchFigures, DayFigures, FleetFigures, SocPoint

HARVEST = "#e3a008"
LOADS = ("#1f5f99", "#5fa8d3", "#8cc084", "#c77dff", "#9aa5b1")
REASON_COLOURS = {
    "battery_low": "#b3261e",
    "overcurrent_trip": "#f28e2b",
    "overcurrent_latched": "#8a3b00",
    "over_temperature": "#e15759",
    "schedule": "#4e79a7",
    "schedule_off": "#4e79a7",
    "manual": "#76b7b2",
    "override": "#76b7b2",
    "safe_state": "#9c755f",
    "default": "#bab0ac",
    "not drivable": "#555555",
    "unknown": "#c9c9c9",
}
OTHER_REASONS = ("#af7aa1", "#59a14f", "#edc948", "#ff9da7")
SOC_LINE = "#1e6b35"


def _day_labels(days: Sequence[date]) -> list[str]:
    return [d.strftime("%d %b") for d in days]


def energy_per_day(days: Sequence[DayFigures], *, title: str = "") -> html_page.Markup:
    """Harvested beside delivered (stacked per load) per day, in Wh."""
    fig = html_page.figure(9.0, 3.0)
    ax = fig.subplots()
    x = list(range(len(days)))
    width = 0.38
    ax.bar(
        [i - width / 2 for i in x],
        [d.harvested_wh for d in days],
        width,
        color=HARVEST,
        label="harvested (solar)",
    )
    loads = sorted({name for d in days for name in d.delivered_wh})
    bottom = [0.0] * len(days)
    for k, name in enumerate(loads):
        values = [d.delivered_wh.get(name, 0.0) for d in days]
        ax.bar(
            [i + width / 2 for i in x],
            values,
            width,
            bottom=bottom,
            color=LOADS[k % len(LOADS)],
            label=f"delivered: {name}",
        )
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    _days_axis(ax, [d.day for d in days])
    html_page.plain_axes(ax, "Wh")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False, fontsize=8)
    if title:
        ax.set_title(title, fontsize=10, loc="left")
    total_h = sum(d.harvested_wh for d in days)
    total_d = sum(d.delivered_total_wh for d in days)
    return html_page.chart(
        fig,
        alt=f"Energy per day: {total_h:.0f} Wh harvested, {total_d:.0f} Wh delivered in all",
        caption="Energy per day: harvested by the panel (left bar) and delivered to each "
        "load (right bar, stacked), summed from the telemetry records received.",
    )


def fleet_energy_per_day(fleet: FleetFigures) -> html_page.Markup:
    fig = html_page.figure(9.0, 3.0)
    ax = fig.subplots()
    x = list(range(len(fleet.days)))
    width = 0.38
    harvested = [fleet.harvested_wh.get(d, 0.0) for d in fleet.days]
    delivered = [fleet.delivered_wh.get(d, 0.0) for d in fleet.days]
    ax.bar([i - width / 2 for i in x], harvested, width, color=HARVEST, label="harvested")
    ax.bar([i + width / 2 for i in x], delivered, width, color=LOADS[0], label="delivered")
    _days_axis(ax, fleet.days)
    html_page.plain_axes(ax, "Wh, all benches")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False, fontsize=8)
    return html_page.chart(
        fig,
        alt=f"Fleet energy per day: {sum(harvested):.0f} Wh harvested, "
        f"{sum(delivered):.0f} Wh delivered",
        caption="The fleet's energy per day, all benches together.",
    )


def _days_axis(ax: Axes, days: Sequence[date]) -> None:
    ax.set_xticks(list(range(len(days))))
    labels = _day_labels(days)
    step = max(1, len(days) // 16)  # at most ~16 labels, however long the period
    ax.set_xticklabels([lab if i % step == 0 else "" for i, lab in enumerate(labels)])
    ax.set_xlim(-0.6, len(days) - 0.4)


def state_of_charge(points: Sequence[SocPoint]) -> html_page.Markup:
    """The hourly mean state of charge, with the hour's lowest and highest as a band; a
    gap in the data is a gap in the line."""
    fig = html_page.figure(9.0, 2.6)
    ax = fig.subplots()
    hours: list[object] = []
    means: list[float] = []
    lows: list[float] = []
    highs: list[float] = []
    previous = None
    for point in points:
        if previous is not None and point.hour - previous > timedelta(hours=1):
            hours.append(previous + timedelta(hours=1))
            means.append(float("nan"))
            lows.append(float("nan"))
            highs.append(float("nan"))
        hours.append(point.hour)
        means.append(point.mean)
        lows.append(point.low)
        highs.append(point.high)
        previous = point.hour
    ax.fill_between(hours, lows, highs, color=SOC_LINE, alpha=0.18, linewidth=0)  # type: ignore[arg-type]
    ax.plot(hours, means, color=SOC_LINE, linewidth=1.6)  # type: ignore[arg-type]
    ax.set_ylim(0, 100)
    tz = points[0].hour.tzinfo if points else None
    locator = AutoDateLocator(tz=tz, maxticks=12)  # type: ignore[no-untyped-call]
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(ConciseDateFormatter(locator, tz=tz))  # type: ignore[no-untyped-call]
    html_page.plain_axes(ax, "state of charge, %")
    lowest = min((p.low for p in points), default=None)
    return html_page.chart(
        fig,
        alt="State of charge per hour"
        + (f", lowest {lowest:.0f} %" if lowest is not None else ", no reading"),
        caption="State of charge: the hour's mean (line) and its lowest and highest (band).",
    )


def reason_colour(reason: str, others: dict[str, str]) -> str:
    if reason in REASON_COLOURS:
        return REASON_COLOURS[reason]
    return others.setdefault(reason, OTHER_REASONS[len(others) % len(OTHER_REASONS)])


def hours_off(bench: BenchFigures) -> html_page.Markup:
    """Per output, the hours it was on and the hours it was off, stacked by reason."""
    outputs = sorted(set(bench.off_hours) | set(bench.on_hours))
    fig = html_page.figure(9.0, 0.6 + 0.45 * max(1, len(outputs)))
    ax = fig.subplots()
    others: dict[str, str] = {}
    labelled: set[str] = set()
    for row, output in enumerate(outputs):
        left = bench.on_hours.get(output, 0.0)
        ax.barh(row, left, color="#d9ead3", label="on" if "on" not in labelled else None)
        labelled.add("on")
        for reason, hours in bench.off_hours.get(output, {}).items():
            label = f"off: {reason}" if reason not in labelled else None
            ax.barh(row, hours, left=left, color=reason_colour(reason, others), label=label)
            labelled.add(reason)
            left += hours
    ax.set_yticks(list(range(len(outputs))))
    ax.set_yticklabels(outputs)
    ax.invert_yaxis()
    ax.set_xlabel("hours")
    ax.grid(axis="x", color="#e3e6ea", linewidth=0.8)
    ax.set_axisbelow(True)
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False, fontsize=8)
    shed = bench.shed_hours()
    return html_page.chart(
        fig,
        alt=f"Hours each output was on and off, by reason: {shed:.1f} h off in all",
        caption="Each output's hours on (pale) and off, coloured by why it was off.",
    )


def completeness_by_bench(benches: Sequence[BenchFigures]) -> html_page.Markup:
    """Per bench, data completeness and uptime, in %."""
    fig = html_page.figure(9.0, 0.7 + 0.38 * max(1, len(benches)))
    ax = fig.subplots()
    rows = list(range(len(benches)))
    ax.barh(
        [r - 0.2 for r in rows],
        [100 * b.completeness for b in benches],
        0.38,
        color=LOADS[0],
        label="data completeness",
    )
    ax.barh(
        [r + 0.2 for r in rows],
        [100 * (b.uptime or 0.0) for b in benches],
        0.38,
        color=LOADS[2],
        label="uptime",
    )
    ax.set_yticks(rows)
    ax.set_yticklabels([b.bench for b in benches])
    ax.invert_yaxis()
    ax.set_xlim(0, 100)
    ax.set_xlabel("% of the period")
    ax.grid(axis="x", color="#e3e6ea", linewidth=0.8)
    ax.set_axisbelow(True)
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False, fontsize=8)
    worst = min(benches, key=lambda b: b.completeness, default=None)
    return html_page.chart(
        fig,
        alt="Data completeness and uptime per bench"
        + (f"; least complete: {worst.bench} {100 * worst.completeness:.0f} %" if worst else ""),
        caption="Per bench: the share of the period covered by records received (data "
        "completeness) and the share it was recording (uptime).",
    )
