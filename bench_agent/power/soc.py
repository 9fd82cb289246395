"""Battery state of charge: coulomb counting, re-anchored to the battery's voltage.

Pure arithmetic: the caller passes every current/voltage sample and the time step;
nothing here reads a clock or a sensor. The chemistries' curves and constants are
data, in chemistry.py.

How the estimate is kept honest:
- **Coulomb counting** integrates the battery current (positive = charging; charge
  is multiplied by the chemistry's charge efficiency, since not every amp-hour put
  in can be taken out). It drifts: sensor gain/offset and efficiency errors add up,
  so the uncertainty grows by ``drift_fraction`` of every amp-hour counted.
- **Rest anchor**: after the battery has rested for ``rest_s``, its terminal voltage
  corrected for the current (V − I·R, R the internal resistance) is close to its
  open-circuit voltage, which the chemistry's OCV curve turns into a state of
  charge. "Rest" is |I| < C/100 as before, **or a light steady discharge**: below
  ``rest_current_c`` × C (default C/20), moving by less than half that. A
  bench never truly rests: its own night load (the Pi and the access point, ~0.7 A)
  is above C/100 of a 50 Ah battery, so with true rest only, the estimate could go
  a whole night without meeting the voltage, and a battery holding less than counted
  (ageing, a drifted count) was run flat while the agent still believed 50 %.
  A light *charge* never counts as rest: charging lifts the voltage by more than
  I·R (polarisation; hours of it on lead-acid), so it would read high, the unsafe
  side; a discharge that is under-corrected reads low, the safe side.
  How much a reading is worth depends on the curve's slope there and on the size of
  the I·R correction: a ±``ocv_tolerance_v`` error is 1-2 % on an AGM curve but
  several % on LiFePO4's flat plateau. The reading is therefore fused with the
  running estimate, each weighted by its inverse variance (a one-state Kalman
  update), instead of replacing it. Two refinements keep that fusion honest:
  within one rest period a later (better settled) reading *replaces* the earlier
  one rather than being counted again (the same systematic error would otherwise
  look like new evidence every ``rest_s``); and when reading and estimate disagree
  by more than three of the count's sigmas, the count's uncertainty is raised to a
  third of the gap (a count can be 40 points off after capacity fade, which no
  drift model foresees; within the noise this changes nothing).
- **Full-charge anchor**: voltage at or above the chemistry's ``charged_volts`` with
  the charge current tapered below the tail current (``tail_current_c`` × capacity)
  for ``charged_detect_s`` means full: 100 % (the rule a Victron BMV uses).
- **BMV**: when a battery monitor reports its own SoC, :meth:`SocEstimator.from_bmv`
  takes it as is.

``confidence`` = 1 − uncertainty / 25 %, clamped to [0, 1]: about 1 right after a
full-charge or BMV anchor, lower after a plateau voltage anchor, and falling with
every amp-hour counted since.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict
from typing import Any, Final, Literal

from bench_agent.checks import require_finite
from bench_agent.json_value import JsonObject
from bench_agent.power.chemistry import CHEMISTRIES, Chemistry

Source = Literal["coulomb", "voltage_anchor", "bmv"]

_GUESS_UNCERTAINTY_PCT: Final = 20.0  # an initial_pct given by the caller is a guess
_SEED_UNCERTAINTY_PCT: Final = 25.0  # first voltage seen, possibly under load
_FULL_UNCERTAINTY_PCT: Final = 0.5
_BMV_UNCERTAINTY_PCT: Final = 1.0
_CONFIDENCE_ZERO_AT_PCT: Final = 25.0
_COUNTED_SOURCE_PCT: Final = 1.0  # counted this much (% of capacity) since an anchor: "coulomb"
_TRUE_REST_C: Final = 0.01  # |I| below C/100 is rest, charging or discharging
_GAP_SIGMAS: Final = 3.0  # a reading this many sigmas from the count: the count is wrong
DEFAULT_REST_CURRENT_C: Final = 0.05  # C/20: the bench's own night load on 15 Ah and up


class SocEstimator:
    """State of charge of one battery, in %, from current and voltage samples.

    Not thread-safe; the controller's loop owns it. ``chemistry`` is a
    :class:`Chemistry` or the name of a built-in one ("lifepo4", "agm").
    ``initial_pct`` None means unknown: the first sample's voltage gives a
    low-confidence seed. ``rest_current_c``: a steady discharge below this fraction
    of the capacity (A per Ah) counts as rest. ``resistance_ohm``: the battery's
    internal resistance with its cabling, for the I·R correction (None: the
    chemistry's typical figure for this capacity; 0: no correction).
    """

    def __init__(
        self,
        capacity_ah: float,
        chemistry: Chemistry | str,
        initial_pct: float | None = None,
        *,
        rest_s: float | None = None,
        charged_detect_s: float = 180.0,
        ocv_tolerance_v: float = 0.02,
        drift_fraction: float = 0.02,
        rest_current_c: float = DEFAULT_REST_CURRENT_C,
        resistance_ohm: float | None = None,
    ) -> None:
        require_finite("capacity_ah", capacity_ah)
        if capacity_ah <= 0:
            raise ValueError(f"capacity_ah: must be > 0 (got {capacity_ah})")
        if isinstance(chemistry, str):
            if chemistry not in CHEMISTRIES:
                raise ValueError(
                    f"chemistry: unknown {chemistry!r}; one of {', '.join(CHEMISTRIES)}"
                )
            chemistry = CHEMISTRIES[chemistry]
        for name, value in (
            ("charged_detect_s", charged_detect_s),
            ("ocv_tolerance_v", ocv_tolerance_v),
            ("drift_fraction", drift_fraction),
        ):
            require_finite(name, value)
            if value < 0:
                raise ValueError(f"{name}: must be >= 0 (got {value})")
        if rest_s is not None:
            require_finite("rest_s", rest_s)
            if rest_s <= 0:
                raise ValueError(f"rest_s: must be > 0 (got {rest_s})")
        require_finite("rest_current_c", rest_current_c)
        # Below C/100 it would be stricter than true rest; far above C/5 the I·R
        # correction is larger than the plateau it is meant to read.
        if not _TRUE_REST_C <= rest_current_c <= 0.2:
            raise ValueError(f"rest_current_c: must be in [0.01, 0.2] (got {rest_current_c})")
        if resistance_ohm is None:
            resistance_ohm = chemistry.resistance_ohm_ah / capacity_ah
        require_finite("resistance_ohm", resistance_ohm)
        if not 0.0 <= resistance_ohm <= 1.0:
            raise ValueError(f"resistance_ohm: must be in [0, 1] (got {resistance_ohm})")
        self.capacity_ah = float(capacity_ah)
        self.chemistry = chemistry
        self.rest_s = chemistry.rest_s if rest_s is None else float(rest_s)
        self.charged_detect_s = float(charged_detect_s)
        self.ocv_tolerance_v = float(ocv_tolerance_v)
        self.drift_fraction = float(drift_fraction)
        self.rest_current_c = float(rest_current_c)
        self.resistance_ohm = float(resistance_ohm)

        self._soc: float | None = None
        self._uncertainty = _SEED_UNCERTAINTY_PCT
        self._anchor: Source = "coulomb"
        self._ah_since_anchor = 0.0  # throughput, |Ah|
        self._rested_s = 0.0
        self._rest_ref_amps: float | None = None  # the current this rest period started at
        # The estimate before this rest period's first anchor, as (offset from the
        # current estimate, uncertainty): what a later reading is fused with instead.
        self._rest_prior: tuple[float, float] | None = None
        self._charged_s = 0.0
        if initial_pct is not None:
            self._check_pct("initial_pct", initial_pct)
            self._soc = float(initial_pct)
            self._uncertainty = _GUESS_UNCERTAINTY_PCT

    # ------------------------------------------------------------------ readings

    @property
    def soc_pct(self) -> float | None:
        """State of charge in %, 0-100; None until a guess, a sample or a BMV value."""
        return self._soc

    @property
    def uncertainty_pct(self) -> float:
        """Rough one-sigma uncertainty of ``soc_pct``, in % of capacity."""
        return self._uncertainty

    @property
    def confidence(self) -> float:
        """0 (a guess) .. 1 (just anchored at full or by a BMV)."""
        if self._soc is None:
            return 0.0
        return min(1.0, max(0.0, 1.0 - self._uncertainty / _CONFIDENCE_ZERO_AT_PCT))

    @property
    def source(self) -> Source:
        """What the value rests on: the last anchor, or "coulomb" once counting dominates."""
        counted_pct = 100.0 * self._ah_since_anchor / self.capacity_ah
        if self._anchor != "coulomb" and counted_pct < _COUNTED_SOURCE_PCT:
            return self._anchor
        return "coulomb"

    @property
    def ah_since_anchor(self) -> float:
        """Amp-hours counted (charge and discharge alike) since the last anchor."""
        return self._ah_since_anchor

    # ------------------------------------------------------------------ updates

    def update(self, amps: float, volts: float, dt_s: float) -> None:
        """Account for ``dt_s`` seconds at ``amps`` (A, + = charging) and ``volts`` (V).

        Raises ValueError on a non-finite value or a negative time step; the caller
        skips samples whose sensor failed.
        """
        require_finite("amps", amps)
        require_finite("volts", volts)
        require_finite("dt_s", dt_s)
        if dt_s < 0:
            raise ValueError(f"dt_s: must be >= 0 (got {dt_s})")
        if self._soc is None:
            self._soc = self.chemistry.pct_at(volts)
            self._uncertainty = _SEED_UNCERTAINTY_PCT
            self._anchor = "voltage_anchor"
        self._count(amps, dt_s)

        if not self._is_rest_current(amps):
            self._end_rest()
        elif not self._is_steady(amps):
            # A new rest, or the light load stepped: the voltage has to settle again.
            self._end_rest()
            self._rest_ref_amps = amps
            self._rested_s = dt_s
        else:
            self._rested_s += dt_s
        if self._rest_ref_amps is not None and self._rested_s >= self.rest_s:
            self._rest_anchor(amps, volts)
            self._rested_s = 0.0  # next rest anchor after another rest_s

        tail_amps = self.chemistry.tail_current_c * self.capacity_ah
        if volts >= self.chemistry.charged_volts and amps < tail_amps:
            self._charged_s += dt_s
        else:
            self._charged_s = 0.0
        if self._charged_s >= self.charged_detect_s:
            self._set_anchor(100.0, _FULL_UNCERTAINTY_PCT, "voltage_anchor")

    def from_bmv(self, soc_pct: float) -> None:
        """Take a battery monitor's own SoC (%), which outranks our estimate."""
        self._check_pct("soc_pct", soc_pct)
        self._set_anchor(float(soc_pct), _BMV_UNCERTAINTY_PCT, "bmv")

    def _is_rest_current(self, amps: float) -> bool:
        """True rest either way, or a light discharge (never a light charge: see above)."""
        if amps >= 0:
            return amps < _TRUE_REST_C * self.capacity_ah
        return -amps < self.rest_current_c * self.capacity_ah

    def _is_steady(self, amps: float) -> bool:
        """Whether ``amps`` continues the rest period that started at its reference.

        Between two discharges the current may move by half the rest threshold (C/40
        by default: one phone plugged in or out on a 50 Ah battery): the I·R
        correction takes the step's ohmic part at once, and what remains to settle is
        a few mV, inside the reading's tolerance. Anything involving a charge current
        keeps true rest's C/100: the sun coming up is a ramp, not a rest, and charging
        moves LiFePO4 onto the upper branch of its OCV hysteresis.
        """
        ref = self._rest_ref_amps
        if ref is None:
            return False
        band_c = _TRUE_REST_C
        if ref < 0 and amps < 0:
            band_c = max(band_c, self.rest_current_c / 2.0)
        return abs(amps - ref) <= band_c * self.capacity_ah

    def _end_rest(self) -> None:
        self._rest_ref_amps = None
        self._rested_s = 0.0
        self._rest_prior = None

    def _count(self, amps: float, dt_s: float) -> None:
        assert self._soc is not None
        ah = amps * dt_s / 3600.0
        stored_ah = ah * self.chemistry.charge_efficiency if ah > 0 else ah
        before = self._soc
        delta_pct = 100.0 * stored_ah / self.capacity_ah
        self._soc = min(100.0, max(0.0, before + delta_pct))
        self._ah_since_anchor += abs(ah)
        drift_pct = self.drift_fraction * 100.0 * abs(ah) / self.capacity_ah
        self._uncertainty = min(_SEED_UNCERTAINTY_PCT * 2, self._uncertainty + drift_pct)
        if self._rest_prior is not None:
            # The prior moves with the count, as the estimate does.
            offset, prior_u = self._rest_prior
            prior = min(100.0, max(0.0, before + offset + delta_pct))
            self._rest_prior = (prior - self._soc, prior_u + drift_pct)

    def _rest_anchor(self, amps: float, volts: float) -> None:
        assert self._soc is not None
        # amps < 0 when discharging: the open-circuit voltage is above the terminal's.
        ocv = volts - amps * self.resistance_ohm
        measured = self.chemistry.pct_at(ocv)
        # The I·R correction is taken as known to ±100 % (temperature, age, cabling).
        tolerance_v = self.ocv_tolerance_v + abs(amps) * self.resistance_ohm
        measured_u = max(0.5, tolerance_v / self.chemistry.volts_per_pct(ocv))
        if self._rest_prior is None:
            self._rest_prior = (0.0, self._uncertainty)
        offset, prior_u = self._rest_prior
        prior = min(100.0, max(0.0, self._soc + offset))
        # A gap the two uncertainties do not explain means the count is wrong by
        # about that much (capacity fade, a drifted sensor): say so, and let the
        # reading pull accordingly; within the noise this changes nothing.
        gap_u = abs(measured - prior) / _GAP_SIGMAS
        prior_u_now = max(prior_u, gap_u)
        # Inverse-variance fusion: a flat part of the curve moves the estimate little.
        w_est, w_meas = 1.0 / prior_u_now**2, 1.0 / measured_u**2
        fused = (prior * w_est + measured * w_meas) / (w_est + w_meas)
        self._set_anchor(fused, math.sqrt(1.0 / (w_est + w_meas)), "voltage_anchor")
        self._rest_prior = (prior - self._soc, prior_u)

    def _set_anchor(self, pct: float, uncertainty: float, source: Source) -> None:
        self._rest_prior = None  # a full or BMV anchor supersedes this rest's readings
        self._soc = min(100.0, max(0.0, pct))
        self._uncertainty = uncertainty
        self._anchor = source
        self._ah_since_anchor = 0.0

    @staticmethod
    def _check_pct(name: str, value: float) -> None:
        require_finite(name, value)
        if not 0.0 <= value <= 100.0:
            raise ValueError(f"{name}: must be between 0 and 100 (got {value})")

    # ------------------------------------------------------------------ persistence

    def to_dict(self) -> JsonObject:
        """JSON-able state, to survive a restart (timers restart from zero)."""
        return {
            "v": 1,
            "capacity_ah": self.capacity_ah,
            "chemistry": asdict(self.chemistry),
            "rest_s": self.rest_s,
            "charged_detect_s": self.charged_detect_s,
            "ocv_tolerance_v": self.ocv_tolerance_v,
            "drift_fraction": self.drift_fraction,
            "rest_current_c": self.rest_current_c,
            "resistance_ohm": self.resistance_ohm,
            "soc_pct": self._soc,
            "uncertainty_pct": self._uncertainty,
            "anchor": self._anchor,
            "ah_since_anchor": self._ah_since_anchor,
        }

    def adopt_estimate(self, saved: SocEstimator) -> bool:
        """Take the estimate (not the tuning) of a saved estimator of the same battery:
        the tuning comes from today's configuration. False, and nothing taken, when
        the saved one is for another capacity or chemistry (a different battery)."""
        if (saved.capacity_ah, saved.chemistry.name) != (self.capacity_ah, self.chemistry.name):
            return False
        self._soc = saved._soc
        self._uncertainty = saved._uncertainty
        self._anchor = saved._anchor
        self._ah_since_anchor = saved._ah_since_anchor
        return True

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SocEstimator:
        """Rebuild from :meth:`to_dict`. Raises ValueError on anything else.

        The caller should discard the result if ``capacity_ah`` or ``chemistry`` no
        longer match the configuration (a different battery was fitted).
        """
        if not isinstance(data, Mapping) or data.get("v") != 1:
            raise ValueError("soc state: unknown version")
        try:
            est = cls(
                data["capacity_ah"],
                Chemistry.from_dict(data["chemistry"]),
                data["soc_pct"],
                rest_s=data["rest_s"],
                charged_detect_s=data["charged_detect_s"],
                ocv_tolerance_v=data["ocv_tolerance_v"],
                drift_fraction=data["drift_fraction"],
                # Saved before these existed: today's defaults.
                rest_current_c=data.get("rest_current_c", DEFAULT_REST_CURRENT_C),
                resistance_ohm=data.get("resistance_ohm"),
            )
            uncertainty, anchor, counted = (
                data["uncertainty_pct"],
                data["anchor"],
                data["ah_since_anchor"],
            )
        except KeyError as exc:
            raise ValueError(f"soc state: missing {exc}") from exc
        require_finite("uncertainty_pct", uncertainty)
        require_finite("ah_since_anchor", counted)
        if uncertainty <= 0 or counted < 0 or anchor not in ("coulomb", "voltage_anchor", "bmv"):
            raise ValueError("soc state: uncertainty_pct, ah_since_anchor or anchor out of range")
        est._uncertainty = float(uncertainty)
        est._anchor = anchor
        est._ah_since_anchor = float(counted)
        return est


__all__ = ["DEFAULT_REST_CURRENT_C", "SocEstimator", "Source"]
