"""A place's solar climate: monthly all-sky and clear-sky irradiation on a
horizontal surface, read from the planner's TOML climate file or straight from a
NASA POWER climatology JSON answer.

The clear-sky index (all-sky / clear-sky) is the month's cloudiness: the weather
draw (weather.py) makes days around it. Any problem is one `ConfigError` line
(file, key, problem), which `bench-ops plan` turns into exit 78.
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from bench_agent.errors import ConfigError
from bench_agent.toml_table import TomlTable, checked

MONTHS: Final = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_POWER_MONTHS: Final = tuple(m.upper() for m in MONTHS)
DATA_DIR: Final = Path(__file__).resolve().parent / "data"
DEFAULT_CLIMATE: Final = DATA_DIR / "trenggalek.toml"


@dataclass(frozen=True, slots=True)
class Climate:
    """Monthly means, index 0 = January. kWh/m²/day on a horizontal surface."""

    name: str
    latitude_deg: float
    longitude_deg: float
    ghi_kwh_m2_day: tuple[float, ...] | None  # all-sky global horizontal irradiation
    clear_sky_kwh_m2_day: tuple[float, ...] | None  # None: the planner's clear-sky model
    daily_sd: float  # spread of one day's clear-sky index around the month's
    persistence: float  # day-to-day correlation of the index (wet spells)
    source: str  # where the numbers come from, one line
    assumed_index: tuple[float, ...] | None = None  # instead of ghi: an assumed cloudiness

    def clear_sky_index(self, month: int, model_clear_kwh: float) -> float:
        """The month's mean clear-sky index (1..12), given the model's clear-sky day."""
        if self.assumed_index is not None:
            return self.assumed_index[month - 1]
        assert self.ghi_kwh_m2_day is not None
        clear = self.clear_sky_kwh_m2_day
        reference = clear[month - 1] if clear is not None else model_clear_kwh
        return min(1.0, self.ghi_kwh_m2_day[month - 1] / reference)


def load_climate(path: Path) -> Climate:
    """A TOML climate file, or a NASA POWER climatology answer (a `.json` file)."""
    file = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(file, "<file>", "no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(file, "<file>", f"unreadable: {exc}") from None
    if path.suffix.lower() == ".json":
        return _parse_power_json(file, text)
    try:
        raw = tomllib.loads(text)
    except (tomllib.TOMLDecodeError, ValueError, RecursionError) as exc:
        raise ConfigError(file, "<file>", f"invalid TOML: {exc}") from None
    return _from_toml(TomlTable(file, "", raw))


def _monthly(t: TomlTable, lo: float, hi: float) -> tuple[float, ...]:
    with checked(t):
        return tuple(float(t.get_float(m, lo=lo, hi=hi)) for m in MONTHS)


def _from_toml(top: TomlTable) -> Climate:
    with checked(top):
        site = top.table("site", required=True)
        assert site is not None
        with checked(site):
            name = site.get_str("name", None) or "unnamed"
            lat = float(site.get_float("latitude", lo=-90, hi=90))
            lon = float(site.get_float("longitude", lo=-180, hi=180))
            source = site.get_str("source", None) or "not given"
            daily_sd = float(site.get_float("daily_sd", 0.15, lo=0.0, hi=0.4))
            persistence = float(site.get_float("persistence", 0.5, lo=0.0, hi=0.95))
        ghi_t = top.table("ghi_kwh_m2_day")
        index_t = top.table("assumed_clear_sky_index")
        if (ghi_t is None) == (index_t is None):
            raise top.error("ghi_kwh_m2_day", "give it, or assumed_clear_sky_index, not both")
        ghi = _monthly(ghi_t, 0.0, 12.0) if ghi_t is not None else None
        index = _monthly(index_t, 0.03, 1.0) if index_t is not None else None
        clear_t = top.table("clear_sky_kwh_m2_day")
        clear = _monthly(clear_t, 0.1, 12.0) if clear_t is not None else None
    if clear is not None and ghi is not None:
        for i, (g, c) in enumerate(zip(ghi, clear, strict=True)):
            if g > c * 1.05:
                raise top.error(f"ghi_kwh_m2_day.{MONTHS[i]}", f"{g} is above clear sky ({c})")
    return Climate(name, lat, lon, ghi, clear, daily_sd, persistence, source, index)


def _parse_power_json(file: str, text: str) -> Climate:
    """NASA POWER's climatology point API answer (GeoJSON): ALLSKY_SFC_SW_DWN, and
    CLRSKY_SFC_SW_DWN when asked for, each with JAN..DEC in kWh/m²/day."""
    try:
        doc: Any = json.loads(text)
        lon, lat = (
            float(doc["geometry"]["coordinates"][0]),
            float(doc["geometry"]["coordinates"][1]),
        )
        params = doc["properties"]["parameter"]
    except (ValueError, KeyError, TypeError, IndexError):
        raise ConfigError(file, "<file>", "not a NASA POWER climatology answer") from None

    def series(name: str, required: bool) -> tuple[float, ...] | None:
        values = params.get(name) if isinstance(params, dict) else None
        if values is None:
            if required:
                raise ConfigError(file, f"properties.parameter.{name}", "missing")
            return None
        out = []
        for m in _POWER_MONTHS:
            v = values.get(m) if isinstance(values, dict) else None
            if not isinstance(v, int | float) or isinstance(v, bool) or not 0 <= v <= 12:
                # POWER writes -999 for a month it has no data for
                raise ConfigError(file, f"properties.parameter.{name}.{m}", f"missing ({v!r})")
            out.append(float(v))
        return tuple(out)

    ghi = series("ALLSKY_SFC_SW_DWN", True)
    assert ghi is not None
    clear = series("CLRSKY_SFC_SW_DWN", False)
    header = doc.get("header", {}) if isinstance(doc, dict) else {}
    period = header.get("range", "") if isinstance(header, dict) else ""
    source = f"NASA POWER climatology API {period}".strip()
    return Climate(f"{lat:.2f}, {lon:.2f}", lat, lon, ghi, clear, 0.15, 0.5, source)
