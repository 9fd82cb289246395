"""The plan as one self-contained HTML page (charts embedded as PNG data URIs, no
script, no outside request) and as JSON. Same inputs and seeds: same bytes.

The plan is a JSON document (`cli.build_report`); this module and charts.py read it
back to draw it, hence `Any` here. A minimal page builder of the planner's own: the
shared `ops/html_page.py` another change is writing had not landed when this was made."""

from __future__ import annotations

import base64
import html
import json
from typing import Any

from bench_agent.ops.planner import charts
from bench_agent.ops.planner.summary import month_label

_STYLE = """
body{font-family:system-ui,sans-serif;max-width:60rem;margin:1rem auto;padding:0 1rem;color:#222}
h1{font-size:1.4rem}h2{font-size:1.1rem;margin-top:1.6rem}
table{border-collapse:collapse;font-size:.85rem}td,th{border:1px solid #ccc;padding:.2rem .5rem;
text-align:right}th:first-child,td:first-child{text-align:left}img{max-width:100%;display:block}
.note{color:#555;font-size:.85rem}
"""


def summary_lines(report: dict[str, Any]) -> list[str]:
    """The plan in a few lines, for the terminal."""
    lines = []
    for name in report["load_classes"]:
        s = report["spread"][name]
        d = s["dark_evenings"]
        lines.append(
            f"{report['labels'][name]}: {d['mean']:g} dark evenings "
            f"(seeds {d['min']}-{d['max']}), {s['hours_lost']['mean']:g} h of service lost"
        )
    sweep = report.get("sweep")
    if sweep is not None:
        best = sweep["cheapest"]
        if best is None:
            lines.append("sweep: no cell meets the target")
        else:
            lines.append(
                f"cheapest meeting the target: {best['panel_w']:g} Wp, {best['battery_ah']:g} Ah"
                f" ({best['dark_evenings']:g} dark evenings)"
            )
    return lines


def to_json(report: dict[str, Any]) -> str:
    return json.dumps(report, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def _img(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img class="chart" alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _table(head: list[str], rows: list[list[str]]) -> str:
    th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table><tr>{th}</tr>{body}</table>"


def to_html(report: dict[str, Any]) -> str:
    inp, classes, labels = report["inputs"], report["load_classes"], report["labels"]
    spread = report["spread"]
    parts = [
        "<!doctype html><html lang=en><head><meta charset=utf-8>",
        f"<title>Bench plan: {html.escape(inp['bench'])}</title>",
        f"<style>{_STYLE}</style></head><body>",
        f"<h1>Bench plan: {html.escape(inp['bench'])}</h1>",
        '<p class="note">'
        + html.escape(
            f"{inp['panel_w']:g} Wp panel, {inp['battery_ah']:g} Ah {inp['chemistry']} battery, "
            f"{inp['usb_ports']} USB ports, Wi-Fi {inp['wifi_hours']}; climate: {inp['climate']} "
            f"({inp['climate_source']}); period {inp['period']}; seeds {report['seeds']}; "
            f"an evening is {inp['evening']}."
        )
        + "</p>",
        "<h2>Dark evenings and service lost</h2>",
        _table(
            ["load", "dark evenings (mean)", "range over seeds", "hours lost (mean)"],
            [
                [
                    labels[n],
                    f"{spread[n]['dark_evenings']['mean']:g}",
                    f"{spread[n]['dark_evenings']['min']}-{spread[n]['dark_evenings']['max']}",
                    f"{spread[n]['hours_lost']['mean']:g}",
                ]
                for n in classes
            ],
        ),
        _img(charts.dark_evenings(report), "dark evenings per month"),
        _img(charts.dark_hours(report), "hour the load went dark"),
        "<h2>Energy</h2>",
        _img(charts.energy(report), "energy per month"),
        "<h2>Battery</h2>",
        _img(charts.soc_envelope(report), "state of charge envelope"),
    ]
    total = report["runs"][0]["total"]
    parts.append(
        '<p class="note">'
        + html.escape(
            f"Seed {report['seeds'][0]}: the battery reached its cut-off (the charge "
            f"controller's low-voltage disconnect) on {total['f_e_pct']:g} % of days (PVGIS's "
            f"f_e), was full on {total['f_f_pct']:g} % (f_f); "
            f"{total['phones']} phones charged."
        )
        + "</p>"
    )
    rows = []
    for m in report["runs"][0]["months"]:
        e = m["energy_wh"]
        rows.append(
            [month_label(m["month"])]
            + [str(m["loads"][n]["dark_evenings"]) for n in classes]
            + [f"{e['harvested'] / 1000:.1f}", f"{e['wasted_battery_full'] / 1000:.1f}",
               f"{m['soc_pct']['min']:g}", f"{m['f_e_pct']:g}"]
        )  # fmt: skip
    head = ["month", *(f"dark: {labels[n]}" for n in classes)]
    head += ["harvested kWh", "wasted kWh", "lowest SoC %", "f_e %"]
    parts += ["<h2>Month by month (first seed)</h2>", _table(head, rows)]
    sweep = report.get("sweep")
    if sweep is not None:
        parts += ["<h2>Sizing sweep</h2>", _img(charts.sweep_map(sweep), "sizing sweep")]
        best = sweep["cheapest"]
        if sweep["target_dark_evenings"] is None:
            text = "No target given (--target-dark-evenings)."
        elif best is None:
            text = f"No cell meets {sweep['target_dark_evenings']:g} dark evenings."
        else:
            text = (
                f"Cheapest cell with at most {sweep['target_dark_evenings']:g} dark evenings: "
                f"{best['panel_w']:g} Wp, {best['battery_ah']:g} Ah "
                f"({best['dark_evenings']:g} dark evenings, cost {best['cost']:,} "
                f"{sweep['currency']} at the usage profile's prices)."
            )
        parts.append(f"<p>{html.escape(text)}</p>")
    parts.append("</body></html>\n")
    return "\n".join(parts)
