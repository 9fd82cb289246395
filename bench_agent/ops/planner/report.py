"""The plan as one self-contained HTML page, made with the shared page builder
(`ops/html_page.py`: inline CSS with a print style, charts as inline SVG, no script,
nothing fetched), and as JSON. Same inputs and seeds: same bytes (each chart has a fixed
id, html_page draws SVG with a fixed salt).

The plan is a JSON document (`cli.build_report`); this module and charts.py read it
back to draw it, hence `Any` here."""

from __future__ import annotations

import json
from typing import Any

from bench_agent.ops import html_page as h
from bench_agent.ops.planner import charts
from bench_agent.ops.planner.summary import month_label


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
    history = report.get("history")
    if history is not None:
        for m in history["check"]["months"]:
            r = m["solar_wh_per_day"]["model_over_bench"]
            lines.append(
                f"model vs {history['bench']}, {month_label(m['month'])} ({m['days']} full days):"
                f" solar model/bench {r if r is not None else 'n/a'}"
            )
        cal = history["calibrated"]
        if cal is not None:
            lines.append("calibrated: " + "; ".join(_calibrated(cal)))
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


def to_html(report: dict[str, Any]) -> str:
    inp, classes, labels = report["inputs"], report["load_classes"], report["labels"]
    spread = report["spread"]
    total = report["runs"][0]["total"]
    inputs = (
        f"{inp['panel_w']:g} Wp panel, {inp['battery_ah']:g} Ah {inp['chemistry']} battery, "
        f"{inp['usb_ports']} USB ports, Wi-Fi {inp['wifi_hours']}; climate: {inp['climate']} "
        f"({inp['climate_source']}); period {inp['period']}; seeds {report['seeds']}; "
        f"an evening is {inp['evening']}."
    )
    figures = [
        (f"{labels[n]}: dark evenings (mean of seeds)", f"{spread[n]['dark_evenings']['mean']:g}")
        for n in classes
    ]
    figures += [("days at cut-off (f_e), first seed", f"{total['f_e_pct']:g} %")]
    service = h.table(
        ["load", "dark evenings (mean)", "range over seeds", "hours lost (mean)"],
        [
            [labels[n], spread[n]["dark_evenings"]["mean"],
             f"{spread[n]['dark_evenings']['min']}-{spread[n]['dark_evenings']['max']}",
             spread[n]["hours_lost"]["mean"]]
            for n in classes
        ],
        numeric=(1, 2, 3),
    )  # fmt: skip
    rows = []
    for m in report["runs"][0]["months"]:
        e = m["energy_wh"]
        rows.append(
            [month_label(m["month"])]
            + [m["loads"][n]["dark_evenings"] for n in classes]
            + [f"{e['harvested'] / 1000:.1f}", f"{e['wasted_battery_full'] / 1000:.1f}",
               f"{m['soc_pct']['min']:g}", f"{m['f_e_pct']:g}"]
        )  # fmt: skip
    head = ["month", *(f"dark: {labels[n]}" for n in classes)]
    head += ["harvested kWh", "wasted kWh", "lowest SoC %", "f_e %"]
    parts: list[h.Cell] = [
        h.paragraph(inputs, note=True),
        h.key_figures(figures),
        h.section(
            "Dark evenings and service lost",
            service,
            h.chart(charts.dark_evenings(report), alt="dark evenings per month", ident="dark",
                    caption="Evenings each load went dark (mean of seeds, bars: range)"),
            h.chart(charts.dark_hours(report), alt="hour the load went dark", ident="hours",
                    caption="The local hour each dark evening began (all seeds)"),
        ),
        h.section(
            "Energy",
            h.chart(charts.energy(report), alt="energy per month", ident="energy",
                    caption=f"Energy per month (seed {report['seeds'][0]})"),
        ),
        h.section(
            "Battery",
            h.chart(charts.soc_envelope(report), alt="state of charge envelope", ident="soc",
                    caption="State of charge per month (first seed)"),
            h.paragraph(
                f"Seed {report['seeds'][0]}: the battery reached its cut-off (the charge "
                f"controller's low-voltage disconnect) on {total['f_e_pct']:g} % of days "
                f"(PVGIS's f_e), was full on {total['f_f_pct']:g} % (f_f); "
                f"{total['phones']} phones charged.",
                note=True,
            ),
        ),
        h.section("Month by month (first seed)", h.table(head, rows, numeric=range(1, len(head)))),
    ]  # fmt: skip
    if report.get("history") is not None:
        parts.append(_history_section(report["history"], labels))
    sweep = report.get("sweep")
    if sweep is not None:
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
        parts.append(
            h.section(
                "Sizing sweep",
                h.chart(
                    charts.sweep_map(sweep),
                    alt="sizing sweep",
                    ident="sweep",
                    caption=f"Dark evenings ({sweep['load']}) per period, panel × battery",
                ),
                h.paragraph(text),
            )
        )
    return h.page(f"Bench plan: {inp['bench']}", *parts)


def _calibrated(cal: dict[str, Any]) -> list[str]:
    """What calibration changed, a phrase each."""
    out = [
        f"clearness {c['month']} ×{c['factor']:g} (clear-sky index {c['clear_sky_index'][0]:g}"
        f" → {c['clear_sky_index'][1]:g})"
        for c in cal["clearness"]
    ]
    for load, d in cal["demand"].items():
        values = next(v for k, v in d.items() if k not in ("input", "factor"))
        out.append(f"{load} demand ({d['input']}) ×{d['factor']:g}: {values[0]:g} → {values[1]:g}")
    return out or ["nothing could be compared"]


def _check_table(check: dict[str, Any], labels: dict[str, str]) -> h.Cell:
    loads = [k for k in ("usb", "wifi") if k in check["no_shed"]]

    def trio(pair: dict[str, Any]) -> list[Any]:
        return [pair["bench"], pair["model"], pair["model_over_bench"]]

    rows = []
    for m in check["months"]:
        row = [month_label(m["month"]), m["days"], m["shed_days"], *trio(m["solar_wh_per_day"])]
        for load in loads:
            row += trio(m["delivered_wh_per_day"][load])
        rows.append(row)
    calm = check["no_shed"]
    rows.append(
        ["days with no shedding", calm["days"], 0, None, None, None]
        + [x for load in loads for x in trio(calm[load])]
    )
    head = ["month", "full days", "shed days", "solar Wh/day: bench", "model", "model/bench"]
    for load in loads:
        name = labels.get(load, load)
        head += [f"{name} Wh/day: bench", "model", "model/bench"]
    return h.table(head, rows, numeric=range(1, len(head)))


def _history_section(history: dict[str, Any], labels: dict[str, str]) -> h.Cell:
    intro = (
        f"Bench {history['bench']}'s history ({history['source']}): {history['days_used']} full"
        f" days used of {history['days_with_records']} with records (a full day: records cover"
        f" {history['full_day_pct']} % of it), against the planner on the same dates and the"
        f" configuration of {history['config_bench']} with the usage profile's panel, seeds"
        f" {history['seeds']}. Solar: the panel's side of the charge controller. A model/bench"
        " above 1: the planner expects more than the bench saw."
    )
    parts: list[h.Cell] = [h.paragraph(intro, note=True), _check_table(history["check"], labels)]
    cal = history["calibrated"]
    if cal is not None:
        parts += [
            h.paragraph(
                f"Calibrated ({cal['runs']} runs; this plan uses them): "
                + "; ".join(_calibrated(cal))
                + "."
            ),
            h.heading("After calibration"),
            _check_table(cal["check"], labels),
        ]
    return h.section("Model vs this bench", *parts)
