"""Calibration to reference standards, as the runtime applies it (numpy only).

``edgereg calibrate MODEL STANDARDS`` (fitting: :mod:`edgereg.lab.fit.calibration`) stores in the card a
map from the network's reading ``x`` to the reference value, per target, with its provenance. The
runtime applies it after the network (and after TTA):

* ``linear``: ``b0 + b1 x``; ``quadratic``: ``b0 + b1 x + b2 x^2``; ``offset``: ``b0 + x`` (one
  standard level); ``isotonic``: a non-decreasing step-interpolated curve through ``knots``
  (linear interpolation between knots, constant beyond the ends).
* Intervals: the network's conformal interval ``[lo, hi]`` is mapped through the curve (its minimum
  and maximum over ``[lo, hi]``), then widened in quadrature by the calibration's own uncertainty
  ``t * se(x)`` at the same level (``se`` from the coefficient covariance; for isotonic,
  ``residual_sd / sqrt(n / levels)``): ``lo' = f(x) - sqrt((f(x) - f_min)^2 + (t se)^2)`` and
  likewise above. The curve's uncertainty and the network's are independent errors, hence the
  quadrature.

The card section is JSON::

    {"id": "3f1c...", "date": "2026-11-30T10:12:03Z", "fit": "linear", "replaces": null,
     "model_sha256": "...", "standards": {"path": "...", "sha256": "...", "n": 9, "levels": 3},
     "targets": {"conc": {"fit": "linear", "coef": [b0, b1], "cov": [[..], [..]],
                          "residual_sd": s, "dof": 7, "t": {"0.9": 1.89, ...},
                          "reading_range": [x_min, x_max], "reference_range": [y_min, y_max],
                          "knots": null, "n": 9, "levels": 3, ...figures for people}}}
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np

from edgereg.errors import CardError
from edgereg.lab._section import Bad, read_section

FITS = ("linear", "quadratic", "isotonic", "offset")


@dataclass(frozen=True)
class TargetCalibration:
    """The reading -> reference curve of one target.

    Attributes:
        fit: one of FITS.
        coef: (b0, b1, b2) with zeros for unused terms (offset: b1 = 1).
        cov: (3, 3) covariance of ``coef`` (zeros for fixed terms), in reference units squared.
        knots: ((x...), (y...)) of an isotonic curve, else None.
        residual_sd: the fit's residual standard deviation, reference units.
        n_eff: standards per level (isotonic uncertainty), >= 1.
        t: {level: two-sided Student t quantile at the fit's degrees of freedom}.
        reference_range: (lo, hi) of the standards' reference values (outside: ``extrapolated``).
    """

    fit: str
    coef: tuple[float, float, float]
    cov: tuple[tuple[float, ...], ...]
    knots: tuple[tuple[float, ...], tuple[float, ...]] | None
    residual_sd: float
    n_eff: float
    t: Mapping[float, float]
    reference_range: tuple[float, float]

    def apply(self, x: np.ndarray) -> np.ndarray:
        """Reference values for readings ``x`` (any shape, float64); an infinite reading (an open
        interval bound) maps to infinity in the curve's direction, never to NaN."""
        x = np.asarray(x, dtype=np.float64)
        infinite = np.isinf(x)
        finite_x = np.where(infinite, 0.0, x)
        if self.fit == "isotonic":
            xs, ys = cast("tuple[tuple[float, ...], tuple[float, ...]]", self.knots)  # parsed with the fit
            return np.where(infinite, x, np.interp(finite_x, xs, ys))
        b0, b1, b2 = self.coef
        value = b0 + b1 * finite_x + b2 * finite_x * finite_x
        if not infinite.any():
            return value
        if b2 != 0.0:
            limit = np.full(x.shape, math.copysign(math.inf, b2))
        elif b1 != 0.0:
            limit = np.copysign(math.inf, b1 * x)
        else:
            limit = np.full(x.shape, b0)
        return np.where(infinite, limit, value)

    def standard_error(self, x: np.ndarray) -> np.ndarray:
        """Standard error of the fitted curve at readings ``x`` (reference units)."""
        x = np.asarray(x, dtype=np.float64)
        if self.fit == "isotonic":
            return np.full(x.shape, self.residual_sd / math.sqrt(max(self.n_eff, 1.0)))
        basis = np.stack([np.ones_like(x), x, x * x], axis=-1)  # (..., 3)
        cov = np.asarray(self.cov, dtype=np.float64)
        variance = np.einsum("...i,ij,...j->...", basis, cov, basis)
        return np.sqrt(np.maximum(variance, 0.0))

    def t_quantile(self, level: float) -> float:
        for key, value in self.t.items():
            if abs(key - level) < 1e-9:
                return value
        raise CardError(f"field 'calibration': no t quantile for level {level:g}; recalibrate with "
                        "`edgereg calibrate`")

    def map_interval(self, x: np.ndarray, lo: np.ndarray, hi: np.ndarray,
                     level: float) -> tuple[np.ndarray, np.ndarray]:
        """Map a reading's interval ``[lo, hi]`` (readings units, same shape as ``x``) to reference units."""
        centre = self.apply(x)
        candidates = [self.apply(lo), self.apply(hi)]
        b0, b1, b2 = self.coef
        if self.fit == "quadratic" and b2 != 0.0:
            vertex = -b1 / (2.0 * b2)
            inside = (lo < vertex) & (vertex < hi)
            candidates.append(np.where(inside, self.apply(np.full_like(x, vertex)), centre))
        low = np.minimum.reduce(candidates)
        high = np.maximum.reduce(candidates)
        u = self.t_quantile(level) * self.standard_error(x)
        with np.errstate(invalid="ignore"):
            lower = np.where(low == -math.inf, -math.inf, centre - np.sqrt((centre - low) ** 2 + u * u))
            upper = np.where(high == math.inf, math.inf, centre + np.sqrt((high - centre) ** 2 + u * u))
        return lower, upper


@dataclass(frozen=True)
class Calibration:
    """``card.calibration`` parsed: an id, a date and one curve per calibrated target."""

    id: str
    date: str
    targets: Mapping[str, TargetCalibration]
    tta: str = "none"  # the TTA of the readings it was fitted on


def parse_calibration(data: Mapping[str, Any], targets: Sequence[str]) -> Calibration | None:
    """Parse and check ``card.calibration``; None for an empty section.

    Raises:
        CardError: a malformed section.
    """
    def parse(section: Mapping[str, Any], bad: Bad) -> Calibration:
        curves = {}
        for name, entry in section["targets"].items():
            if name not in targets:
                raise bad(f"target {name!r} is not one of the model's {list(targets)}")
            curves[name] = _parse_target(entry, bad)
        calibration = Calibration(id=str(section["id"]), date=str(section["date"]), targets=curves,
                                  tta=str(section.get("tta", "none")))
        if not curves:
            raise bad("no calibrated targets")
        return calibration

    return read_section(data, name="calibration", fix="recalibrate with `edgereg calibrate MODEL STANDARDS`",
                        parse=parse)


def _parse_target(entry: Mapping[str, Any], bad: Bad) -> TargetCalibration:
    fit = entry["fit"]
    if fit not in FITS:
        raise bad(f"unknown fit {fit!r}, expected one of {', '.join(FITS)}")
    coef = tuple(float(c) for c in entry["coef"]) + (0.0,) * (3 - len(entry["coef"]))
    cov = np.zeros((3, 3))
    given = np.asarray(entry.get("cov") or [[0.0]], dtype=np.float64)
    cov[:given.shape[0], :given.shape[1]] = given
    knots = None
    if fit == "isotonic":
        xs, ys = (tuple(float(v) for v in part) for part in entry["knots"])
        if len(xs) != len(ys) or len(xs) < 2 or list(xs) != sorted(xs) or list(ys) != sorted(ys):
            raise bad("isotonic knots must be two ascending lists of the same length >= 2")
        knots = (xs, ys)
    if not all(math.isfinite(c) for c in coef) or not np.all(np.isfinite(cov)):
        raise bad("coefficients must be finite")
    t = {float(level): float(value) for level, value in entry["t"].items()}
    reference_range = tuple(float(v) for v in entry["reference_range"])
    return TargetCalibration(fit=fit, coef=cast("tuple[float, float, float]", coef),
                             cov=tuple(map(tuple, cov.tolist())), knots=knots,
                             residual_sd=float(entry["residual_sd"]), n_eff=float(entry.get("n_eff", 1.0)),
                             t=t, reference_range=(reference_range[0], reference_range[1]))


def calibration_id(section: Mapping[str, Any]) -> str:
    """A short content id (16 hex digits of SHA-256 over the section without ``id``)."""
    content = {k: v for k, v in section.items() if k != "id"}
    return hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()[:16]


__all__ = ["Calibration", "FITS", "TargetCalibration", "calibration_id", "parse_calibration"]
