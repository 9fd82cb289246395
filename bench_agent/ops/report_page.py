"""`bench-ops report`'s page: report_data's figures as one self-contained HTML document
(html_page), a fleet section first, then one section per bench (each on a new sheet
when printed)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from bench_agent.ops import html_page as h
from bench_agent.ops import report_charts as charts
from bench_agent.ops.report_data import BenchFigures, DayFigures, FleetFigures

DEFINITIONS = (
    "Harvested: the solar channel's Wh in the telemetry records received; delivered: "
    "every other channel's but the battery's (USB ports, the access point). Sessions, "
    "hotspot hours and Wi-Fi clients are the bench's own day counters (its largest "
    "number of clients at once in the day; no client is ever identified). Data "
    "completeness: the share of the period covered by the records received; uptime: the "
    "share in which the bench was recording (records received, or made and lost on the "
    "way, as their missing seq numbers show). Lost: seq numbers never received; dropped: "
    "records the bench itself dropped from a full outbox."
)


def render(fleet: FleetFigures, *, made_by: str) -> str:
    """The whole report as one HTML document."""
    period = fleet.period
    first, last = fleet.days[0], fleet.days[-1]
    span = first.isoformat() if first == last else f"{first.isoformat()} to {last.isoformat()}"
    names = [b.bench for b in fleet.benches]
    return h.page(
        f"Bench report, {span}",
        h.toc([("Fleet", "fleet"), *[(name, _anchor(name)) for name in names]]),
        _fleet_section(fleet),
        *[_bench_section(b, fleet) for b in fleet.benches],
        subtitle=(
            f"{len(names)} bench{'es' if len(names) != 1 else ''}; days in {period.tz.key}; "
            f"from {_local(period.start, fleet)} to {_local(period.end, fleet)}; "
            f"made {_local(fleet.now, fleet)}"
        ),
        footer=f"{DEFINITIONS} Made by {made_by}.",
    )


def _anchor(bench: str) -> str:
    return "bench-" + h.anchor_id(bench)


def _local(when: datetime, fleet: FleetFigures) -> str:
    return when.astimezone(fleet.period.tz).strftime("%Y-%m-%d %H:%M")


def _wh(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value / 1000:.2f} kWh" if abs(value) >= 10_000 else f"{value:.0f} Wh"


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.0f} %"


def _num(value: float | None, digits: int = 0) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _soc(value: float | None) -> str:
    return "–" if value is None else f"{value:.0f} %"


def _pct_cell(value: float | None) -> h.Markup:
    text = _pct(value)
    if value is None:
        return h.esc(text)
    return h.span(text, "bad" if value < 0.9 else "warn" if value < 0.99 else "good")


def _fleet_section(fleet: FleetFigures) -> h.Markup:
    benches = fleet.benches
    with_data = [b for b in benches if b.records]
    lows = [b.soc_min for b in with_data if b.soc_min is not None]
    mean_completeness = sum(b.completeness for b in benches) / len(benches) if benches else None
    parts: list[h.Cell] = [
        h.key_figures(
            [
                ("benches with data", f"{len(with_data)} of {len(benches)}"),
                ("harvested", _wh(sum(fleet.harvested_wh.values()))),
                ("delivered", _wh(sum(fleet.delivered_wh.values()))),
                ("lowest state of charge", "–" if not lows else f"{min(lows):.0f} %"),
                ("mean data completeness", _pct(mean_completeness)),
            ]
        )
    ]
    if not benches:
        parts.append(h.paragraph("No bench had a record in this period."))
        return h.section("Fleet", *parts, anchor="fleet")
    parts += [
        charts.fleet_energy_per_day(fleet),
        charts.completeness_by_bench(benches),
        h.table(
            [
                "bench",
                "harvested",
                "delivered",
                "lowest SoC",
                "hours off",
                "sessions",
                "hotspot h",
                "clients max",
                "uptime",
                "completeness",
                "lost",
                "reboots",
            ],
            [
                [
                    h.Markup(f'<a href="#{_anchor(b.bench)}">{h.esc(b.bench)}</a>'),
                    _wh(b.harvested_wh if b.records else None),
                    _wh(b.delivered_wh if b.records else None),
                    "–" if b.soc_min is None else f"{b.soc_min:.0f} %",
                    _num(b.shed_hours(), 1) if b.records else "–",
                    _num(b.sessions),
                    _num(b.hotspot_h, 1),
                    _num(b.wifi_clients_max),
                    _pct_cell(b.uptime),
                    _pct_cell(b.completeness),
                    b.lost,
                    b.reboots,
                ]
                for b in benches
            ],
            caption="Per bench, over the period (the worst completeness in red).",
            numeric=range(1, 12),
        ),
    ]
    return h.section("Fleet", *parts, anchor="fleet")


def _bench_section(bench: BenchFigures, fleet: FleetFigures) -> h.Markup:
    title = f"Bench {bench.bench}"
    anchor = _anchor(bench.bench)
    if not bench.records and not bench.events:
        return h.section(
            title,
            h.paragraph(h.span("No record and no event from this bench in the period.", "bad")),
            h.paragraph(
                "Data completeness 0 %. Check `bench-ops fleet` for its status and "
                "`bench-ops gaps` for its last records.",
                note=True,
            ),
            anchor=anchor,
            new_page=True,
        )
    parts: list[h.Cell] = [
        h.key_figures(
            [
                ("harvested", _wh(bench.harvested_wh)),
                ("delivered", _wh(bench.delivered_wh)),
                (
                    "lowest state of charge",
                    "–" if bench.soc_min is None else f"{bench.soc_min:.0f} %",
                ),
                ("charging sessions", _num(bench.sessions)),
                ("hotspot hours", _num(bench.hotspot_h, 1)),
                ("uptime", _pct(bench.uptime)),
                ("data completeness", _pct(bench.completeness)),
            ]
        ),
        charts.energy_per_day(bench.days),
    ]
    if bench.soc_hours:
        parts.append(charts.state_of_charge(bench.soc_hours))
    parts += [h.heading("Per day"), _days_table(bench.days)]
    if bench.off_hours or bench.on_hours:
        parts += [h.heading("Outputs: hours on and off, and why"), charts.hours_off(bench)]
        parts.append(_off_table(bench))
    parts += [h.heading("Data and events"), _data_table(bench)]
    return h.section(title, *parts, anchor=anchor, new_page=True)


def _days_table(days: Sequence[DayFigures]) -> h.Markup:
    loads = sorted({name for d in days for name in d.delivered_wh})
    headers = ["day", "harvested Wh", *[f"{n} Wh" for n in loads], "SoC min–max %",
               "sessions", "hotspot h", "clients max", "bench's solar Wh", "records",
               "completeness"]  # fmt: skip
    rows: list[list[h.Cell]] = []
    for d in days:
        c = d.counters
        soc = "–" if d.soc_min is None else f"{d.soc_min:.0f}–{_num(d.soc_max)}"
        rows.append(
            [
                d.day.strftime("%a %d %b"),
                _num(d.harvested_wh, 1) if d.records else "–",
                *[_num(d.delivered_wh.get(n), 1) if d.records else "–" for n in loads],
                soc,
                _num(c.sessions) if c else "–",
                _num(c.hotspot_h, 1) if c else "–",
                _num(c.wifi_clients_max) if c else "–",
                (_num(c.solar_wh, 1) + ("" if c.final else " (so far)")) if c else "–",
                d.records,
                _pct_cell(d.completeness),
            ]
        )
    return h.table(
        headers,
        rows,
        caption="The bench's counters (sessions, hotspot, clients, its own solar Wh) are "
        'per its own day; "so far": the day\'s final count never came.',
        numeric=range(1, len(headers)),
    )


def _off_table(bench: BenchFigures) -> h.Markup:
    rows = []
    for output in sorted(set(bench.off_hours) | set(bench.on_hours)):
        reasons = bench.off_hours.get(output, {})
        why = ", ".join(f"{r} {hours:.1f} h" for r, hours in reasons.items()) or "–"
        rows.append(
            [output, _num(bench.on_hours.get(output, 0.0), 1), _num(sum(reasons.values()), 1), why]
        )
    return h.table(["output", "hours on", "hours off", "off, by reason"], rows, numeric=[1, 2])


def _data_table(bench: BenchFigures) -> h.Markup:
    first = bench.first.isoformat(timespec="seconds") if bench.first else "–"
    last = bench.last.isoformat(timespec="seconds") if bench.last else "–"
    events = ", ".join(f"{t} {n}" for t, n in sorted(bench.event_types.items())) or "–"
    rows: list[list[h.Cell]] = [
        ["telemetry records", bench.records],
        ["events", f"{bench.events} ({events})"],
        ["lost on the way (seq never received)", bench.lost],
        ["dropped by the bench (outbox full)", bench.dropped_by_bench],
        ["reboots", bench.reboots],
        ["seq epochs", ", ".join(bench.epochs)],
        ["records stamped before the clock synced", bench.unsynced],
        ["first and last (UTC)", f"{first} – {last}"],
    ]
    return h.table(["", ""], rows)
