"""The battery chemistries the state-of-charge estimator knows: each one's rested
open-circuit voltage curve (volts -> % charge), full-charge rule, charge efficiency,
rest time and internal resistance, and the two built-in 12 V tables (LiFePO4, AGM).

Data, apart from the estimator (soc.py) that reads it: the tables are sourced from
manufacturers' charts and change when a chart is corrected, the estimator's
arithmetic does not; and the simulated bench (hardware/sim/params.py) and the
config's defaults read these same tables without needing the estimator.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping
from dataclasses import dataclass
from itertools import pairwise
from typing import Any, Final

from bench_agent.checks import require_finite


@dataclass(frozen=True, slots=True)
class Chemistry:
    """What the estimator needs to know about a battery type (12 V nominal here)."""

    name: str
    ocv_curve: tuple[tuple[float, float], ...]  # (rested volts, % SoC), both strictly rising
    charged_volts: float  # V; at or above this with a tapered current, the battery is full
    tail_current_c: float  # fraction of capacity (in A per Ah) below which charge has tapered
    charge_efficiency: float  # Ah retrievable per Ah put in
    rest_s: float  # s at rest (or a light steady load) before the voltage is taken as OCV
    resistance_ohm_ah: float  # internal resistance × capacity, with cabling: R = this / Ah

    def __post_init__(self) -> None:
        if len(self.ocv_curve) < 2:
            raise ValueError(f"ocv_curve: needs at least 2 points (got {self.ocv_curve!r})")
        for volts, pct in self.ocv_curve:
            require_finite("ocv_curve", volts)
            require_finite("ocv_curve", pct)
        volts_list = [v for v, _ in self.ocv_curve]
        pcts = [p for _, p in self.ocv_curve]
        if any(b <= a for a, b in pairwise(volts_list)) or any(b <= a for a, b in pairwise(pcts)):
            raise ValueError("ocv_curve: volts and % must both be strictly rising")
        if pcts[0] != 0.0 or pcts[-1] != 100.0:
            raise ValueError(f"ocv_curve: must run from 0 % to 100 % (got {pcts[0]}..{pcts[-1]})")
        for name in (
            "charged_volts",
            "tail_current_c",
            "charge_efficiency",
            "rest_s",
            "resistance_ohm_ah",
        ):
            require_finite(name, getattr(self, name))
        if not 0.0 < self.charge_efficiency <= 1.0:
            raise ValueError(f"charge_efficiency: must be in (0, 1] (got {self.charge_efficiency})")
        if not 0.0 < self.tail_current_c < 1.0:
            raise ValueError(f"tail_current_c: must be in (0, 1) (got {self.tail_current_c})")
        if self.rest_s <= 0 or self.charged_volts <= 0:
            raise ValueError("rest_s and charged_volts: must be > 0")
        if not 0.0 <= self.resistance_ohm_ah <= 10.0:
            raise ValueError(
                f"resistance_ohm_ah: must be in [0, 10] (got {self.resistance_ohm_ah})"
            )

    def _segment(self, volts: float) -> int:
        """Index i of the curve segment [i, i+1] holding ``volts`` (end segments beyond)."""
        volts_list = [v for v, _ in self.ocv_curve]
        i = bisect.bisect_right(volts_list, volts) - 1
        return min(max(i, 0), len(self.ocv_curve) - 2)

    def pct_at(self, volts: float) -> float:
        """State of charge in % for a rested terminal voltage, linearly interpolated."""
        i = self._segment(volts)
        (v0, p0), (v1, p1) = self.ocv_curve[i], self.ocv_curve[i + 1]
        pct = p0 + (volts - v0) * (p1 - p0) / (v1 - v0)
        return min(max(pct, 0.0), 100.0)

    def volts_at(self, pct: float) -> float:
        """The rested open-circuit voltage at ``pct`` % (the inverse of :meth:`pct_at`)."""
        pcts = [p for _, p in self.ocv_curve]
        i = min(max(bisect.bisect_right(pcts, pct) - 1, 0), len(pcts) - 2)
        (v0, p0), (v1, p1) = self.ocv_curve[i], self.ocv_curve[i + 1]
        pct = min(max(pct, 0.0), 100.0)
        return v0 + (pct - p0) * (v1 - v0) / (p1 - p0)

    def volts_per_pct(self, volts: float) -> float:
        """The curve's slope at ``volts``, in V per % of charge."""
        i = self._segment(volts)
        (v0, p0), (v1, p1) = self.ocv_curve[i], self.ocv_curve[i + 1]
        return (v1 - v0) / (p1 - p0)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Chemistry:
        """Rebuild from ``asdict``; a built-in's name gives today's built-in.

        The stored copy is still checked (a corrupt file is refused), but a curve is
        code, not state: a corrected curve must reach benches that saved the old one.
        """
        try:
            curve = tuple((float(v), float(p)) for v, p in data["ocv_curve"])
            stored = cls(
                name=str(data["name"]),
                ocv_curve=curve,
                charged_volts=float(data["charged_volts"]),
                tail_current_c=float(data["tail_current_c"]),
                charge_efficiency=float(data["charge_efficiency"]),
                rest_s=float(data["rest_s"]),
                # Saved before the field existed: the typical figure of a 12 V battery.
                resistance_ohm_ah=float(data.get("resistance_ohm_ah", 1.0)),
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"chemistry: malformed ({exc!r})") from exc
        return CHEMISTRIES.get(stored.name, stored)


# 12 V LiFePO4 (4S), rested open-circuit voltage, from the usual manufacturer charts
# (Battle Born, Victron, Renogy and similar agree within ~0.05 V at the knee; in the
# plateau published charts differ by up to 10 points, which is why a plateau anchor
# counts for little): 13.6 V rested full, ~13.3-13.4 V at 90-99 %, a flat 13.0-13.2 V
# plateau from 40 to 70 %, 12.8 V at 20 %, 12.0 V at 10 %, 10.0 V empty (2.5 V per
# cell). This curve is also the simulated bench's true battery (hardware/sim/params.py
# takes it from here), so simulated runs test the agent, not a disagreement between two
# charts. Full-charge detection follows Victron's LiFePO4 advice: absorption 14.2 V,
# "charged" at ≥ 14.0 V once the current has tapered below 4 % C. Resistance: 12 V
# LiFePO4 datasheets give 10-25 mΩ for 50-100 Ah (cells, BMS switches, terminals),
# about 1 Ω·Ah; a lower figure under-corrects, which reads low under discharge (safe).
LIFEPO4_12V: Final = Chemistry(
    name="lifepo4",
    ocv_curve=(
        (10.00, 0.0),
        (12.00, 10.0),
        (12.80, 20.0),
        (12.90, 30.0),
        (13.00, 40.0),
        (13.05, 50.0),
        (13.10, 60.0),
        (13.20, 70.0),
        (13.25, 80.0),
        (13.30, 90.0),
        (13.40, 99.0),
        (13.60, 100.0),
    ),
    charged_volts=14.0,
    tail_current_c=0.04,
    charge_efficiency=0.99,  # coulombic efficiency of LiFePO4 is 99 %+
    rest_s=1800.0,  # LiFePO4 relaxes within minutes; 30 min is conservative
    resistance_ohm_ah=1.0,  # 20 mΩ for 50 Ah
)

# 12 V AGM lead-acid, rested open-circuit voltage at 25 °C, from the usual AGM charts
# (Lifeline, Victron, Trojan, within ~0.05 V): 12.85 V full, ~12.3 V at 50 %,
# ~11.6 V empty; close to linear, ~0.012 V per %. Lead-acid needs hours to relax,
# hence 4 h of rest. Victron's defaults for "charged": absorption (14.4 V) − 0.2 V,
# tail current 4 % of capacity. Charge efficiency ~85-90 % (gassing, heat).
# Resistance: AGM datasheets give 6-12 mΩ for 50-100 Ah, but under a steady load
# lead-acid also sags by its polarisation, about as much again: 1.2 Ω·Ah.
AGM_12V: Final = Chemistry(
    name="agm",
    ocv_curve=(
        (11.60, 0.0),
        (11.75, 10.0),
        (11.90, 20.0),
        (12.04, 30.0),
        (12.17, 40.0),
        (12.30, 50.0),
        (12.42, 60.0),
        (12.54, 70.0),
        (12.65, 80.0),
        (12.75, 90.0),
        (12.85, 100.0),
    ),
    charged_volts=14.2,
    tail_current_c=0.04,
    charge_efficiency=0.88,
    rest_s=4 * 3600.0,
    resistance_ohm_ah=1.2,  # 24 mΩ for 50 Ah
)

CHEMISTRIES: Final[Mapping[str, Chemistry]] = {"lifepo4": LIFEPO4_12V, "agm": AGM_12V}


__all__ = ["AGM_12V", "CHEMISTRIES", "LIFEPO4_12V", "Chemistry"]
