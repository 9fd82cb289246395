"""The plan's charts: matplotlib figures made with the shared page builder
(`ops/html_page.py`: bare figures, no pyplot), embedded by `html_page.chart` as inline
SVG with a fixed id per chart, so the same numbers give the same bytes."""

from __future__ import annotations

from typing import Any

from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from bench_agent.ops import html_page
from bench_agent.ops.planner.summary import month_label

_COLOURS = {"wifi": "#d95f02", "usb": "#1b9e77"}


def _labels(report: dict[str, Any]) -> list[str]:
    return [month_label(m["month"]) for m in report["runs"][0]["months"]]


def dark_evenings(report: dict[str, Any]) -> Figure:
    """Dark evenings per month and load class: the seeds' mean, with their range."""
    labels = _labels(report)
    classes = report["load_classes"]
    fig = html_page.figure(9.0, 3.2)
    ax = fig.subplots()
    width = 0.8 / max(len(classes), 1)
    for i, name in enumerate(classes):
        months = report["spread"][name]["months"]
        x = [j + (i - (len(classes) - 1) / 2) * width for j in range(len(months))]
        mean = [m["mean"] for m in months]
        err = [[m["mean"] - m["min"] for m in months], [m["max"] - m["mean"] for m in months]]
        ax.bar(x, mean, width, yerr=err, capsize=2, label=report["labels"][name],
               color=_COLOURS.get(name))  # fmt: skip
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right", fontsize=8)
    html_page.plain_axes(ax, "dark evenings")
    ax.legend(fontsize=8)
    return fig


def dark_hours(report: dict[str, Any]) -> Figure:
    """When the evenings went dark: local hour, over all seeds."""
    fig = html_page.figure(9.0, 2.8)
    ax = fig.subplots()
    classes = report["load_classes"]
    width = 0.8 / max(len(classes), 1)
    for i, name in enumerate(classes):
        counts = [0] * 24
        for run in report["runs"]:
            for h, c in enumerate(run["total"]["loads"][name]["dark_from_hour"]):
                counts[h] += c
        x = [h + (i - (len(classes) - 1) / 2) * width for h in range(24)]
        ax.bar(x, counts, width, label=report["labels"][name], color=_COLOURS.get(name))
    ax.set_xticks(range(0, 24, 2))
    ax.set_xlabel("local hour the load went dark (dark evenings, all seeds)")
    html_page.plain_axes(ax, "evenings")
    ax.legend(fontsize=8)
    return fig


def energy(report: dict[str, Any]) -> Figure:
    """Energy per month, first seed: harvested, delivered by load, wasted (full)."""
    labels = _labels(report)
    months = report["runs"][0]["months"]
    fig = html_page.figure(9.0, 3.2)
    ax = fig.subplots()
    x = range(len(months))
    kwh = [[m["energy_wh"]["delivered"][k] / 1000 for m in months] for k in ("pi", "wifi", "usb")]
    bottom = [0.0] * len(months)
    for values, name, colour in zip(
        kwh, ("Pi", "Wi-Fi", "USB"), ("#7570b3", "#d95f02", "#1b9e77"), strict=True
    ):
        ax.bar(x, values, 0.6, bottom=bottom, label=f"delivered: {name}", color=colour)
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    ax.plot(x, [m["energy_wh"]["harvested"] / 1000 for m in months], "k-o", ms=3, label="harvested")
    ax.plot(
        x,
        [m["energy_wh"]["wasted_battery_full"] / 1000 for m in months],
        "r--",
        label="wasted (battery full)",
    )
    ax.set_xticks(list(x), labels, rotation=45, ha="right", fontsize=8)
    html_page.plain_axes(ax, "kWh")
    ax.legend(fontsize=7, ncol=2)
    return fig


def soc_envelope(report: dict[str, Any]) -> Figure:
    """State of charge per month, first seed: lowest, mean daily low and high, highest."""
    labels = _labels(report)
    months = report["runs"][0]["months"]
    x = list(range(len(months)))
    soc = [m["soc_pct"] for m in months]
    fig = html_page.figure(9.0, 3.0)
    ax = fig.subplots()
    ax.fill_between(x, [s["min"] for s in soc], [s["max"] for s in soc], alpha=0.2, label="min-max")
    ax.plot(x, [s["mean_daily_min"] for s in soc], "b-o", ms=3, label="mean daily low")
    ax.plot(x, [s["mean_daily_max"] for s in soc], "g-o", ms=3, label="mean daily high")
    for name in report["load_classes"]:
        level = report["levels"][name]
        ax.axhline(
            level,
            ls=":",
            color=_COLOURS.get(name, "grey"),
            label=f"{report['labels'][name]} off below {level:g} %",
        )
    ax.set_ylim(0, 100)
    ax.set_xticks(x, labels, rotation=45, ha="right", fontsize=8)
    html_page.plain_axes(ax, "state of charge, %")
    ax.legend(fontsize=7, ncol=3)
    return fig


def sweep_map(sweep: dict[str, Any]) -> Figure:
    """Dark evenings per period over panel × battery; the cheapest cell meeting the target."""
    panels, batteries = sweep["panels_w"], sweep["batteries_ah"]
    grid = [[0.0] * len(panels) for _ in batteries]
    for cell in sweep["cells"]:
        grid[batteries.index(cell["battery_ah"])][panels.index(cell["panel_w"])] = cell[
            "dark_evenings"
        ]
    fig = html_page.figure(6.5, 4.0)
    ax = fig.subplots()
    image = ax.imshow(grid, origin="lower", cmap="magma_r", aspect="auto")
    top = max(max(r) for r in grid)
    for i, row in enumerate(grid):
        for j, value in enumerate(row):
            ax.text(j, i, f"{value:g}", ha="center", va="center", fontsize=8,
                    color="white" if value > top / 2 else "black")  # fmt: skip
    best = sweep.get("cheapest")
    if best is not None:
        j, i = panels.index(best["panel_w"]), batteries.index(best["battery_ah"])
        ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, ec="#00c000", lw=3))
    ax.set_xticks(range(len(panels)), [f"{p:g}" for p in panels])
    ax.set_yticks(range(len(batteries)), [f"{b:g}" for b in batteries])
    ax.set_xlabel("panel, Wp")
    ax.set_ylabel("battery, Ah")
    fig.colorbar(image, ax=ax)
    return fig
