"""`bench-ops fleet`'s rendering: the rows of `fleet.py` as a table on 80 columns
(one line per bench, and an indented line of why when there is something to say),
or as one JSON document."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from datetime import datetime

from bench_agent.json_value import Json, JsonObject
from bench_agent.ops.fleet import duration_text, since_text

WIDTH = 80
# BENCH LINK REC SOC ON FLT T SUNWh USB VERSN CONFIG OBX: 78 columns with their spaces
COLUMNS = (
    ("BENCH", 14, "<"),
    ("LINK", 7, "<"),
    ("REC", 5, ">"),
    ("SOC", 6, ">"),
    ("ON", 7, "<"),
    ("FLT", 3, ">"),
    ("T", 1, "<"),
    ("SUNWh", 5, ">"),
    ("USB", 3, ">"),
    ("VERSN", 6, "<"),
    ("CONFIG", 6, "<"),
    ("OBX", 4, ">"),
)
SOURCES = {"coulomb": "c", "voltage_anchor": "v", "bmv": "b"}
_USB = re.compile(r"usb(\d+)")


def fit(text: str, width: int) -> str:
    """`text` cut to `width` characters, the cut marked with ~."""
    return text if len(text) <= width else text[: width - 1] + "~"


def short_output(name: str) -> str:
    """usb1 -> u1, wifi -> w, anything else its first two letters."""
    usb = _USB.fullmatch(name)
    if usb:
        return f"u{usb.group(1)}"
    return "w" if name == "wifi" else name[:2]


def _strs(value: Json) -> list[str]:
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []


def _num(value: Json) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _link(row: JsonObject, wall: datetime) -> str:
    since = since_text(row["since"] if isinstance(row["since"], str) else None, wall)
    if row["online"] is not True:
        return "OFF " + since if row["online"] is False else "?"
    return "STALE" if row["stale"] is True else ("on " + since).strip()


def _age(age: float | None, quiet: float | None) -> str:
    """The newest record's age; ">1m" when none came in the minute watched."""
    if age is not None:
        return duration_text(age)
    return "-" if quiet is None else ">" + duration_text(quiet)


def _cells(row: JsonObject, wall: datetime) -> list[str]:
    age, soc = _num(row["record_age_s"]), _num(row["soc_pct"])
    solar, sessions, depth = (
        _num(row["solar_wh_today"]),
        row["usb_sessions_today"],
        row["outbox_depth"],
    )
    source = row["soc_source"]
    tamper = row["tamper_open"]
    return [
        str(row["bench"]),
        _link(row, wall),
        _age(age, _num(row["quiet_s"])),
        "-" if soc is None else f"{soc:.0f}%{SOURCES.get(str(source), '?') if source else ''}",
        " ".join(short_output(n) for n in _strs(row["outputs_on"])) or "-",
        str(row["fault_count"]),
        "!" if tamper is True else ("-" if tamper is None else "."),
        "-" if solar is None else f"{solar:.0f}",
        "-" if sessions is None else str(sessions),
        str(row["agent_version"] or "-"),
        str(row["config_hash"] or "-")[:6],
        "-" if depth is None else str(depth),
    ]


def _line(cells: Sequence[str]) -> str:
    parts = [f"{fit(c, w):{a}{w}}" for c, (_, w, a) in zip(cells, COLUMNS, strict=True)]
    return " ".join(parts).rstrip()


def _why(row: JsonObject) -> str:
    """The indented second line: what is off and why, faults, tamper, a stop's reason."""
    words: list[str] = []
    if row["online"] is False and isinstance(row["reason"], str):
        words.append(f"offline: {row['reason']}")
    if row["stale"] is True:
        quiet = _num(row["quiet_s"]) or 0.0
        words.append(f"no record for {duration_text(quiet)}")
    off = row["outputs_off"]
    if isinstance(off, dict) and off:
        words.append("off: " + ", ".join(f"{n} {why}".strip() for n, why in off.items()))
    faults = _strs(row["faults"])
    if faults:
        words.append("faults: " + ", ".join(faults))
    latched = _strs(row["latched_faults"])
    if latched:
        words.append("latched: " + ", ".join(latched))
    if row["tamper_open"] is True:
        words.append("TAMPER OPEN")
    return fit("  " + "; ".join(words), WIDTH) if words else ""


def render_table(rows: Sequence[JsonObject], wall: datetime) -> str:
    """The table, worst first as `rows` come; `wall` is now (UTC), for "since"."""
    counts = {p: sum(1 for r in rows if r["problem"] == p) for p in ("offline", "stale", "faults")}
    title = (
        f"{len(rows)} benches: {counts['offline']} offline, {counts['stale']} stale, "
        f"{counts['faults']} with faults"
    )
    lines = [fit(f"{title}  ({wall:%Y-%m-%d %H:%M:%S} UTC)", WIDTH)]
    lines.append(_line([name for name, _, _ in COLUMNS]))
    for row in rows:
        lines.append(_line(_cells(row, wall)))
        why = _why(row)
        if why:
            lines.append(why)
    if not rows:
        lines.append("(no bench has a retained status or state under this prefix)")
    return "\n".join(lines)


def render_json(rows: Sequence[JsonObject], *, indent: int | None = 2) -> str:
    """One JSON document: the list of rows, worst first (README, "bench-ops fleet")."""
    return json.dumps(list(rows), indent=indent, ensure_ascii=False)
