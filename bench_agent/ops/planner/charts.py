"""The report's charts, drawn with matplotlib's Agg backend (no display) into PNG
bytes. Deterministic: the same numbers give the same bytes (no date in the PNG)."""

from __future__ import annotations

import io
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from bench_agent.ops.planner.summary import month_label

_COLOURS = {"wifi": "#d95f02", "usb": "#1b9e77"}


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


def _labels(report: dict[str, Any]) -> list[str]:
    return [month_label(m["month"]) for m in report["runs"][0]["months"]]


def dark_evenings(report: dict[str, Any]) -> bytes:
    """Dark evenings per month and load class: the seeds' mean, with their range."""
    labels = _labels(report)
    classes = report["load_classes"]
    fig, ax = plt.subplots(figsize=(8, 3.4))
    width = 0.8 / max(len(classes), 1)
    for i, name in enumerate(classes):
        months = report["spread"][name]["months"]
        x = [j + (i - (len(classes) - 1) / 2) * width for j in range(len(months))]
        mean = [m["mean"] for m in months]
        err = [[m["mean"] - m["min"] for m in months], [m["max"] - m["mean"] for m in months]]
        ax.bar(x, mean, width, yerr=err, capsize=2, label=report["labels"][name],
               color=_COLOURS.get(name))  # fmt: skip
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("dark evenings")
    ax.set_title("Evenings each load went dark (mean of seeds, bars: range)", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _png(fig)


def dark_hours(report: dict[str, Any]) -> bytes:
    """When the evenings went dark: local hour, over all seeds."""
    fig, ax = plt.subplots(figsize=(8, 3))
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
    ax.set_ylabel("evenings")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _png(fig)


def energy(report: dict[str, Any]) -> bytes:
    """Energy per month, first seed: harvested, delivered by load, wasted (full)."""
    labels = _labels(report)
    months = report["runs"][0]["months"]
    fig, ax = plt.subplots(figsize=(8, 3.4))
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
    ax.set_ylabel("kWh")
    ax.set_title(f"Energy per month (seed {report['seeds'][0]})", fontsize=10)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return _png(fig)


def soc_envelope(report: dict[str, Any]) -> bytes:
    """State of charge per month, first seed: lowest, mean daily low and high, highest."""
    labels = _labels(report)
    months = report["runs"][0]["months"]
    x = list(range(len(months)))
    soc = [m["soc_pct"] for m in months]
    fig, ax = plt.subplots(figsize=(8, 3.2))
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
    ax.set_ylabel("state of charge, %")
    ax.legend(fontsize=7, ncol=3)
    fig.tight_layout()
    return _png(fig)


def sweep_map(sweep: dict[str, Any]) -> bytes:
    """Dark evenings per year over panel × battery; the cheapest cell meeting the target."""
    panels, batteries = sweep["panels_w"], sweep["batteries_ah"]
    grid = [[0.0] * len(panels) for _ in batteries]
    for cell in sweep["cells"]:
        grid[batteries.index(cell["battery_ah"])][panels.index(cell["panel_w"])] = cell[
            "dark_evenings"
        ]
    fig, ax = plt.subplots(figsize=(6.5, 4))
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
    ax.set_title(f"Dark evenings ({sweep['load']}) per period", fontsize=10)
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    return _png(fig)
